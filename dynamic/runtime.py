"""The runtime a user deploys with a dynamic pick: it serves a stream one input at a time and adapts how eagerly the
early exits take inputs, so that the loss over the stream stays within epsilon at the least cost (the seed's
min sum_t C(G_t) s.t. sum_t L(G_t) <= epsilon).

The loss it watches is learnt from checks, a sampled fraction of inputs that the dense model also answers (that cost
is counted): by default disagreement with dense, which needs no labels and bounds the accuracy lost from above; or
(loss="accuracy") the accuracy lost against dense, learnt from the checked inputs as their labels arrive
(`observe_label`, which also logs every answer given against its label). Control is a stochastic-approximation step
on one scale that moves every head's threshold together:
    threshold_k = 1 - (1 - base_k) * scale,   scale <- scale * exp(gain * (target - loss sample))
which settles where the mean loss on checks equals `target` (a margin under epsilon).

Under MIN_SCALE the heads are off, and where the pruned backbone alone still disagrees too often (inputs far from
its training data) the scale goes on falling into a fallback tier (a cascade): an input whose backbone answer has a
logit margin (top-1 minus top-2) under MARGIN * depth / (1 - depth) is answered by the dense model, which the runtime
holds for its checks anyway; depth runs from 0 at MIN_SCALE to 1 at ALL_TO_DENSE on a log scale. Margins rather
than softmax confidence, since a confidently wrong backbone saturates the confidence at 1.0 in float32. So the loss
budget holds on any stream, at a cost up to backbone + dense on the hardest inputs.

Before a stream, `calibrate(validation batches)` sets the starting scale to the loosest at which the runtime, checks
aside, loses at most `target` on them in its own loss (disagreement, or accuracy lost against dense on their labels);
otherwise the stream starts at `scale` and pays for the guess over its first windows while the checks find the level.

Checks are drawn at `sample_rate`, more often for unsure answers (`unsure_checks`: an answer of confidence c gets
unsure_checks * (1 - c) more chance) and for a while after a loss (`alarm_checks`: each loss raises the share checked
by that much, decaying with ALARM_DECAY): a shift in the stream shows in the checks within tens of inputs rather than
hundreds, and each extra check answers with the dense model. Loss-free samples from those extra checks move the
scale up by less (weighed by sample_rate over the check's chance), so they cannot loosen the exits faster than plain
sampling would.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dynamic.exits import NEVER, EarlyExitModel, exit_index, taken_logits

MIN_SCALE = 0.05  # under this scale no head takes an input: on inputs where the heads are confidently wrong (heavy
# noise), any threshold below 1 lets some through, so the controller switches the exits off
ALL_TO_DENSE = MIN_SCALE * 1e-4  # at or under this scale the fallback tier sends every input to the dense model
MARGIN = 2.0  # the fallback tier's logit margin at half depth
LOSSES = {"disagreement": "disagreement with dense", "accuracy": "accuracy lost against dense"}  # name -> meaning
ALARM_DECAY = 0.98  # the alarm's extra share of checks decays by this per input (half-life 34)
CALIBRATION_GRID = 80  # scales tried by calibrate, log-spaced from ALL_TO_DENSE to max_scale


def fallback_margin(scale: float) -> float:
    """The logit margin under which the fallback tier sends a backbone answer to dense at `scale`: 0 (none) at or
    above MIN_SCALE, infinite (every answer) at or under ALL_TO_DENSE."""
    if scale >= MIN_SCALE:
        return 0.0
    depth = math.log(MIN_SCALE / scale) / math.log(MIN_SCALE / ALL_TO_DENSE)
    return math.inf if depth >= 1.0 else MARGIN * depth / (1.0 - depth)


@dataclass
class Window:
    """What the runtime saw over one window of inputs."""

    start: int
    inputs: int = 0
    cost: float = 0.0  # summed per-input cost (the exit's path, plus the dense model where checked)
    checks: int = 0
    disagreements: int = 0
    labelled: int = 0
    errors: int = 0  # answers given that missed a label that arrived
    exits: list[int] = field(default_factory=list)  # inputs taken per exit (the last: the backbone's output)
    fallbacks: int = 0  # inputs the fallback tier answered with the dense model
    loss_samples: int = 0  # loss samples learnt from in this window (checks; under the accuracy loss, labelled ones)
    loss_total: float = 0.0
    scale: float = 0.0  # the scale at the window's end

    @property
    def mean_cost(self) -> float:
        return self.cost / max(self.inputs, 1)

    @property
    def disagreement(self) -> float | None:
        return self.disagreements / self.checks if self.checks else None

    @property
    def loss(self) -> float | None:
        return self.loss_total / self.loss_samples if self.loss_samples else None


class DynamicRuntime:
    """Serve `model` (an EarlyExitModel) one input at a time within `epsilon` of `dense`, adapting its thresholds.

    `exit_costs`: the cost of leaving at each exit (the last: the whole backbone), e.g. FLOPs, and `dense_cost`
    that of one check; `base_thresholds` the thresholds at scale 1 (the search's pick; default the model's own).
    `loss`: "disagreement" with dense (needs no labels; bounds the accuracy lost from above) or "accuracy": the
    accuracy lost against dense, learnt from checked inputs as their labels arrive (`observe_label`): the search's
    own epsilon, looser than disagreement since many disagreements are inputs dense gets wrong too.

    Defaults (`sample_rate` 0.05, `gain` 0.5, `max_scale` 4), measured on fashion-resnet20's dynamic pick at 0.5 of
    the FLOPs under the accuracy loss (`python -m search.replay runs/dyn-fl0.5-head --loss accuracy --seed S`, seeds
    0-2): the clean part cost 0.600, 0.642, 0.650 of dense, worst 1,000-input window 0.008, 0.004, 0.005 (epsilon
    0.01), against 0.673, 0.705, 0.745 and 0.008, 0.004, 0.004 at the earlier 0.1, 2 and 2. At gain 2 one loss cut
    the scale sevenfold, so the exits swung between eager and off; checks cost about 0.19 of dense per clean input
    at a 10% base rate and 0.15-0.17 at 5%, the unsure and alarm checks catching the losses either way. Under
    disagreement the same replays were level (1.07-1.10 against 1.06-1.12: that backbone alone disagrees too often
    for the exits to pay).
    """

    def __init__(self, model: EarlyExitModel, dense: nn.Module, epsilon: float, *, exit_costs: list[float],
                 dense_cost: float, base_thresholds: list[float] | None = None, sample_rate: float = 0.05,
                 margin: float = 0.5, gain: float = 0.5, scale: float = 0.5, max_scale: float = 4.0,
                 unsure_checks: float = 0.5, alarm_checks: float = 0.5, window: int = 1000,
                 loss: str = "disagreement", seed: int = 0) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss {loss!r} is not one of {', '.join(LOSSES)}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate {sample_rate} must be in (0, 1]: the runtime learns only from checks")
        if not max_scale > 0:
            raise ValueError(f"max_scale {max_scale} must be above 0: it bounds how far the thresholds loosen, as a "
                             "multiple of the base thresholds' distance from certainty")
        if not 0 < margin <= 1:
            raise ValueError(f"margin {margin} must be in (0, 1]: the runtime aims its loss at margin * epsilon")
        if not (0 <= unsure_checks <= 1 and 0 <= alarm_checks <= 1):
            raise ValueError(f"unsure_checks {unsure_checks} and alarm_checks {alarm_checks} must be in [0, 1]: each "
                             "is a share of inputs checked beyond sample_rate")
        if len(exit_costs) != len(model.exits) + 1:
            raise ValueError(f"exit_costs has {len(exit_costs)} entries; give one per exit plus the backbone's")
        self.model, self.dense = model.eval(), dense.eval()
        self.epsilon, self.target = epsilon, epsilon * margin
        self.exit_costs, self.dense_cost = list(exit_costs), dense_cost
        base = base_thresholds if base_thresholds is not None else model.thresholds.tolist()
        self.base = [min(b, 1.0) for b in base]
        self.sample_rate, self.gain, self.max_scale, self.window = sample_rate, gain, max_scale, window
        self.unsure_checks, self.alarm_checks = unsure_checks, alarm_checks
        self.scale = scale
        self.alarm = 0.0  # the share checked beyond sample_rate after a loss, decaying
        self.random = random.Random(seed)
        self.seen = 0
        self.windows: list[Window] = []
        self.loss = loss
        self._answers: dict[int, int] = {}  # input number -> class answered, until its label arrives
        self._checked: dict[int, tuple[int, int, float, float]] = {}  # checked input -> (model, dense answers,
        # its chance of a check, the chance every input had then)
        self._apply()

    def _thresholds(self, scale: float) -> torch.Tensor:
        off = scale < MIN_SCALE  # the heads stay out until checks pull the scale back up
        return torch.tensor([NEVER if off else max(0.0, 1.0 - (1.0 - b) * scale) for b in self.base])

    def _apply(self) -> None:
        self.model.thresholds.copy_(self._thresholds(self.scale))

    @torch.inference_mode()
    def calibrate(self, batches: Iterable) -> float:
        """Start from the scale at which the runtime, checks aside, would lose at most `target` on `batches`
        (validation inputs, or (inputs, labels) pairs) in its own loss: disagreement with dense, or, under the
        accuracy loss, accuracy lost against dense on the labels (which the batches must then carry): the largest
        scale on a log grid below which every scale does too. A stream then starts within budget instead of at a
        guess (a pick whose backbone alone already lost about epsilon broke it over its first windows) and the checks
        loosen it from there. Returns the scale."""
        parts, dense_parts, label_parts = [], [], []
        for batch in batches:
            labelled = isinstance(batch, (tuple, list))
            inputs = batch[0] if labelled else batch
            parts.append(self.model.exit_logits(inputs))
            dense_parts.append(self.dense(inputs).argmax(1))
            if labelled:
                label_parts.append(batch[1])
        if self.loss == "accuracy" and len(label_parts) != len(parts):
            raise ValueError("calibrate under the accuracy loss needs (inputs, labels) batches: give the labels, or "
                             "use loss='disagreement'")
        logits = [torch.cat(chunk) for chunk in zip(*parts)]
        dense = torch.cat(dense_parts)
        labels = torch.cat(label_parts) if self.loss == "accuracy" else None
        top = logits[-1].topk(2, dim=1).values
        margins = top[:, 0] - top[:, 1]
        low, high = math.log(ALL_TO_DENSE), math.log(self.max_scale)
        chosen = ALL_TO_DENSE
        for step in range(CALIBRATION_GRID):
            scale = math.exp(low + (high - low) * step / (CALIBRATION_GRID - 1))
            taken = exit_index(logits[:-1], self._thresholds(scale))
            answers = taken_logits(logits, taken).argmax(1)
            falls_back = (taken == len(self.model.exits)) & (margins < fallback_margin(scale))
            answers = torch.where(falls_back, dense, answers)
            lost = (answers != dense).float() if labels is None else (
                (answers != labels).float() - (dense != labels).float())
            if float(lost.mean()) > self.target:
                break
            chosen = scale
        self.scale = chosen
        self._apply()
        return chosen

    def _current(self) -> Window:
        if not self.windows or self.windows[-1].inputs >= self.window:
            self.windows.append(Window(start=self.seen, exits=[0] * (len(self.exit_costs))))
        return self.windows[-1]

    def _falls_back(self, logits: torch.Tensor) -> bool:
        """Whether the fallback tier sends this backbone answer to the dense model at the current scale."""
        bound = fallback_margin(self.scale)
        if bound == 0.0:
            return False
        if bound == math.inf:
            return True
        top = logits.topk(2, dim=1).values[0]
        return float(top[0] - top[1]) < bound

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits for one input (a batch of one); a checked or fallen-back input gets the dense model's."""
        logits, taken = self.model.forward_with_exit(x)
        window = self._current()
        window.inputs += 1
        window.exits[taken] += 1
        window.cost += self.exit_costs[taken]
        reference = None
        if taken == len(self.model.exits) and self._falls_back(logits):
            logits = reference = self.dense(x)
            window.cost += self.dense_cost
            window.fallbacks += 1
        self.alarm *= ALARM_DECAY
        unsure = 1.0 - float(logits.softmax(1).max())
        uniform = min(1.0, self.sample_rate + self.alarm)  # the chance every input had, unsure or not
        chance = min(1.0, uniform + self.unsure_checks * unsure)
        if self.random.random() < chance:
            if reference is None:
                reference = self.dense(x)
                window.cost += self.dense_cost
            window.checks += 1
            answer, dense_answer = int(logits.argmax(1).item()), int(reference.argmax(1).item())
            window.disagreements += int(answer != dense_answer)
            if self.loss == "disagreement":
                self._learn(window, float(answer != dense_answer), chance, uniform)
            else:
                self._checked[self.seen] = (answer, dense_answer, chance, uniform)
            logits = reference
        window.scale = self.scale
        self._answers[self.seen] = int(logits.argmax(1).item())
        self.seen += 1
        return logits

    def _learn(self, window: Window, loss: float, chance: float, uniform: float) -> None:
        """One loss sample from a check (1: the model's answer lost against dense; 0: it did not; -1, under the
        accuracy loss: it was right where dense was wrong) moves the scale, and a loss raises the alarm.

        The check had `chance`, of which `uniform` every input had (sample_rate and the alarm) and the rest was for an
        unsure answer. A sample counts in proportion to how often plain sampling would have drawn it: a loss-free one
        by sample_rate / chance (extra checks must not speed the climb), a loss by uniform / chance. Losses found by
        the alarm's checks count in full, so a shift tightens fast; losses found by the unsure answers' checks do not,
        since unsure answers are where the losses are: counting those in full made the runtime see several times the
        loss there was and pay for dense answers a clean stream did not need."""
        window.loss_samples += 1
        window.loss_total += loss
        if loss > 0:
            self.alarm = min(1.0 - self.sample_rate, self.alarm + self.alarm_checks)
        weight = (uniform if loss > 0 else self.sample_rate) / chance
        step = self.gain * (self.target - loss) * weight
        self.scale = max(ALL_TO_DENSE, min(self.max_scale, self.scale * math.exp(step)))
        self._apply()

    def observe_label(self, number: int, label: int) -> None:
        """The label of input `number` (counted from 0) arrived: log whether the answer given was wrong and, under
        the accuracy loss, learn from it if the input was checked."""
        answer = self._answers.pop(number, None)
        if answer is None:
            return
        window = next((w for w in reversed(self.windows) if w.start <= number), self.windows[0])
        window.labelled += 1
        window.errors += int(answer != label)
        checked = self._checked.pop(number, None)
        if checked is not None:
            model_answer, dense_answer, chance, uniform = checked
            self._learn(window, float(int(model_answer != label) - int(dense_answer != label)), chance, uniform)

    def log(self) -> list[dict]:
        """Per window: inputs, mean cost, checks, disagreement, loss learnt, errors against labels, exits taken,
        fallbacks, scale."""
        return [{**asdict(w), "mean_cost": w.mean_cost, "disagreement": w.disagreement, "loss": w.loss}
                for w in self.windows]

    def settings(self) -> dict:
        """What the runtime needs to be rebuilt on a loaded model (saved with the pick)."""
        return {"epsilon": self.epsilon, "exit_costs": self.exit_costs, "dense_cost": self.dense_cost,
                "base_thresholds": self.base, "sample_rate": self.sample_rate, "margin": self.target / self.epsilon,
                "gain": self.gain, "scale": self.scale, "max_scale": self.max_scale,
                "unsure_checks": self.unsure_checks, "alarm_checks": self.alarm_checks, "window": self.window,
                "loss": self.loss}

    def save(self, path: Path) -> None:
        """Write settings() as JSON (a search writes best/runtime.json beside a dynamic pick)."""
        Path(path).write_text(json.dumps(self.settings(), indent=2))

    @classmethod
    def load(cls, path: Path, model: EarlyExitModel, dense: nn.Module, **overrides: object) -> "DynamicRuntime":
        """The runtime saved at `path` (JSON, never a pickle) on `model` and `dense`; `overrides` replace settings."""
        return cls(model, dense, **{**json.loads(Path(path).read_text()), **overrides})
