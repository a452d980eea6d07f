"""Channel importance criteria: torch-pruning importance estimators, and the calibration some need."""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from .graph import forward

CALIBRATED = ("taylor", "activation")
CHANNEL_CRITERIA = ("l1", "l2", "bn_scale", "taylor", "activation", "fpgm", "random")
SEARCH_CRITERIA = ("l1", "l2", "fpgm", "bn_scale", "taylor", "activation")  # random is a control, not a choice

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
    """The (inputs, labels) pair a data-driven criterion needs, as a tuple (a DataLoader's batch is a list: accepted);
    ValueError if it is missing or malformed."""
    if criterion not in CALIBRATED:
        return None
    if not (isinstance(calibration, (tuple, list)) and len(calibration) == 2
            and all(isinstance(t, torch.Tensor) for t in calibration)):
        raise ValueError(
            f"criterion {criterion!r} needs option calibration=(inputs, labels) as two tensors, "
            f"got {type(calibration).__name__}"
        )
    return tuple(calibration)


def gather_signals(importance: tp.importance.Importance, model: nn.Module, calibration: Calibration | None) -> None:
    """Leave on `model` what a data-driven estimator reads: gradients (taylor) or mean |activation|."""
    if calibration is None:
        return
    inputs, labels = calibration
    if isinstance(importance, tp.importance.GroupTaylorImportance):
        model.zero_grad()
        F.cross_entropy(forward(model, inputs), labels).backward()
    elif isinstance(importance, tp.importance.ActivationImportance):
        with torch.no_grad(), importance.compute_importance(model):
            forward(model, inputs)


def clean_signals(model: nn.Module) -> None:
    """Remove gradients and stored activations so the pruned model carries nothing stale."""
    for module in model.modules():
        if "_importance" in module.__dict__:
            del module.__dict__["_importance"]
    for p in model.parameters():
        p.grad = None
