"""The Workload: everything a search needs about one model and its data, and the registry of built-in ones."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Workload:
    """A trained dense model with its train/val/test batches and an example input of batch size 1.

    `train` should shuffle (and may augment); `calibration` is a few unaugmented training batches
    for batch-norm recalibration. `finetune_lr` is the peak learning rate for recovering a pruned model.
    """

    name: str
    model: nn.Module
    train: Batches
    val: Batches
    test: Batches
    example_inputs: torch.Tensor
    calibration: Batches
    finetune_lr: float = 0.01
    notes: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> list[int]:
        return list(self.example_inputs.shape)


class WorkloadError(ValueError):
    """A workload cannot be built from what the user gave; the message says how to fix it."""


WorkloadFactory = Callable[..., Workload]
_BUILTINS: dict[str, str] = {
    "fashion-resnet20": "search.workloads.fashion:fashion_resnet20",
    "digits-cnn": "search.workloads.digits:digits_cnn_workload",
}


def builtin_workloads() -> list[str]:
    return sorted(_BUILTINS)


def resolve_factory(name: str) -> WorkloadFactory:
    """A built-in name, or `package.module:function` returning a Workload."""
    target = _BUILTINS.get(name, name)
    if ":" not in target:
        raise WorkloadError(f"unknown workload {name!r}: use one of {', '.join(builtin_workloads())} or package.module:function")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any import failure is the user's module
        raise WorkloadError(f"cannot import workload module {module_name!r} ({type(error).__name__}: {error}); "
                            "check the name and that it is on PYTHONPATH") from error
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise WorkloadError(f"workload {name!r}: {module_name} has no callable {attr!r}")
    return factory


def build_workload(name: str, *, seed: int, cache_dir: Path, data_dir: Path | None, device: str) -> Workload:
    """Build a workload by name; built-ins get the cache and data options, user factories get none."""
    factory = resolve_factory(name)
    if name in _BUILTINS:
        return factory(seed=seed, cache_dir=cache_dir, data_dir=data_dir, device=device)
    workload = factory()
    if not isinstance(workload, Workload):
        raise WorkloadError(f"workload {name!r} returned {type(workload).__name__}, not search.workloads.Workload")
    return workload
