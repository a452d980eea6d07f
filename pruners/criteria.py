"""Channel importance criteria: torch-pruning importance estimators, and the calibration some need."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from .graph import forward

CALIBRATED = ("taylor", "activation")
CHANNEL_CRITERIA = ("l1", "l2", "bn_scale", "taylor", "activation", "fpgm", "random")

Calibration = tuple[torch.Tensor, torch.Tensor]


def make_importance(criterion: str) -> tp.importance.Importance:
    """The torch-pruning estimator for `criterion` (one of CHANNEL_CRITERIA)."""
    factories = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance,
        "taylor": tp.importance.GroupTaylorImportance,
        "activation": tp.importance.ActivationImportance,
        "fpgm": tp.importance.FPGMImportance,
        "random": tp.importance.RandomImportance,
    }
    return factories[criterion]()


def check_calibration(criterion: str, calibration: object) -> Calibration | None:
    """The (inputs, labels) pair a data-driven criterion needs; ValueError if it is missing or malformed."""
    if criterion not in CALIBRATED:
        return None
    if not (isinstance(calibration, tuple) and len(calibration) == 2
            and all(isinstance(t, torch.Tensor) for t in calibration)):
        raise ValueError(
            f"criterion {criterion!r} needs option calibration=(inputs, labels) as two tensors, "
            f"got {type(calibration).__name__}"
        )
    return calibration


@contextmanager
def calibrated(importance: tp.importance.Importance, model: nn.Module,
               calibration: Calibration | None) -> Iterator[None]:
    """Gather what a data-driven estimator reads (gradients, activations) and clean it off the model after."""
    if isinstance(importance, tp.importance.GroupTaylorImportance) and calibration is not None:
        inputs, labels = calibration
        model.zero_grad()
        F.cross_entropy(forward(model, inputs), labels).backward()
    elif isinstance(importance, tp.importance.ActivationImportance) and calibration is not None:
        with torch.no_grad(), importance.compute_importance(model):
            forward(model, calibration[0])
    try:
        yield
    finally:
        for module in model.modules():
            if "_importance" in module.__dict__:
                del module._importance
        for p in model.parameters():
            p.grad = None
