"""Recovery after pruning: adaptive batch-norm recalibration (the screen), then fine-tuning; keeps the better.

Measured on fashion-resnet20 (DESIGN.md): fine-tuning can make a lightly pruned model worse, so the
validation split decides whether the fine-tuned weights replace the recalibrated ones.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from torch import nn

from search.training import count_correct, evaluate, leading_batches, recalibrate_batchnorm, train
from search.workloads import Workload

SCREEN_SAMPLES = 2000  # validation samples that screen a candidate: enough to tell hopeless from promising


class ScreenedOut(Exception):
    """The candidate's screened accuracy cannot reach the Pareto front: it is not worth fine-tuning."""

    def __init__(self, accuracy: float, threshold: float, seconds: float) -> None:
        super().__init__(f"screened accuracy {accuracy:.4f} after batch-norm recalibration is below {threshold:.4f}: "
                         "a finished trial at the same or lower cost screened clearly better, or the largest "
                         "fine-tuning gain seen so far could not lift it to that trial's accuracy")
        self.accuracy = accuracy
        self.seconds = seconds  # recalibration plus the screening samples
        self.attrs: dict = {}  # what the trial knew when it stopped, filled in by the trial


@dataclass
class Recovery:
    """Validation accuracy after BN recalibration alone, after fine-tuning, and which one was kept."""

    accuracy_before_finetune: float
    accuracy_after_finetune: float | None
    kept: str
    screen_seconds: float  # batch-norm recalibration plus the validation samples that screen the candidate

    @property
    def accuracy(self) -> float:
        return self.accuracy_before_finetune if self.kept == "recalibrated" else float(self.accuracy_after_finetune)


def recover(model: nn.Module, workload: Workload, *, epochs: float, lr: float, device: str = "cpu",
            stop_below: float | None = None, distill: float = 0.0, temperature: float = 4.0) -> Recovery:
    """Recalibrate BN, screen, and fine-tune `model` in place for `epochs`; the better validated weights stay.

    With `distill` > 0 the fine-tune also learns from the dense model's outputs (Hinton distillation, that weight, at
    `temperature`).
    With `stop_below`, a candidate whose recalibrated accuracy on the first SCREEN_SAMPLES validation samples
    is under it raises ScreenedOut before fine-tuning; the rest of the validation split is seen only by
    candidates that go on, so screening costs a fraction of a validation pass.
    """
    started = time.perf_counter()
    recalibrate_batchnorm(model, workload.calibration, device)
    head, rest = leading_batches(workload.val, SCREEN_SAMPLES)
    correct, seen = count_correct(model, head, device)
    screened = time.perf_counter() - started
    if stop_below is not None and correct / max(seen, 1) < stop_below:
        raise ScreenedOut(correct / max(seen, 1), stop_below, screened)
    more_correct, more_seen = count_correct(model, rest, device)
    before = (correct + more_correct) / max(seen + more_seen, 1)
    if epochs <= 0:
        return Recovery(before, None, "recalibrated", screened)
    saved = copy.deepcopy(model.state_dict())
    train(model, workload.train, epochs=epochs, lr=lr, device=device, cycle_momentum=workload.finetune_cycle_momentum,
          teacher=workload.model if distill > 0 else None, distill_weight=distill, temperature=temperature)
    after = evaluate(model, workload.val, device)
    if after >= before:
        return Recovery(before, after, "finetuned", screened)
    model.load_state_dict(saved)
    return Recovery(before, after, "recalibrated", screened)
