"""Recovery after pruning: adaptive batch-norm recalibration, then fine-tuning; keeps the better of the two.

Measured on fashion-resnet20 (DESIGN.md): fine-tuning can make a lightly pruned model worse, so the
validation split decides whether the fine-tuned weights replace the recalibrated ones.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from search.training import evaluate, recalibrate_batchnorm, train
from search.workloads import Workload


@dataclass
class Recovery:
    """Validation accuracy after BN recalibration alone, after fine-tuning, and which one was kept."""

    accuracy_before_finetune: float
    accuracy_after_finetune: float | None
    kept: str

    @property
    def accuracy(self) -> float:
        return self.accuracy_before_finetune if self.kept == "recalibrated" else float(self.accuracy_after_finetune)


def recover(model: nn.Module, workload: Workload, *, epochs: float, lr: float, device: str = "cpu") -> Recovery:
    """Recalibrate BN and fine-tune `model` in place for `epochs`; restores the recalibrated weights if they validate better."""
    recalibrate_batchnorm(model, workload.calibration, device)
    before = evaluate(model, workload.val, device)
    if epochs <= 0:
        return Recovery(before, None, "recalibrated")
    saved = copy.deepcopy(model.state_dict())
    train(model, workload.train, epochs=epochs, lr=lr, device=device)
    after = evaluate(model, workload.val, device)
    if after >= before:
        return Recovery(before, after, "finetuned")
    model.load_state_dict(saved)
    return Recovery(before, after, "recalibrated")
