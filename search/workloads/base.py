"""The Workload: everything a search needs about one model and its data, and the registry of built-in ones."""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Workload:
    """A trained dense model with its train/val/test batches and an example input of batch size 1.

    `train` should shuffle (and may augment); `calibration` is a few unaugmented training batches
    for batch-norm recalibration. `finetune_lr` is the peak learning rate for recovering a pruned model, and
    `finetune_cycle_momentum` whether that fine-tune's momentum cycles against it (torch's one-cycle default) or
    stays at 0.9: a choice of the workload's recipe, since neither is better everywhere (fashion-resnet20 and
    digits-cnn, search/workloads/fashion.py).
    """

    name: str
    model: nn.Module
    train: Batches
    val: Batches
    test: Batches
    example_inputs: torch.Tensor
    calibration: Batches
    finetune_lr: float = 0.01
    finetune_cycle_momentum: bool = True
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
        raise WorkloadError(f"unknown workload {name!r}: use one of {', '.join(builtin_workloads())} "
                            "or package.module:function")
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
    """Build a workload by name; built-ins get the cache and data options, user factories get none.

    Whatever the factory raises or returns wrong becomes a WorkloadError naming the workload and the fix.
    """
    factory = resolve_factory(name)
    try:
        if name in _BUILTINS:
            workload = factory(seed=seed, cache_dir=cache_dir, data_dir=data_dir, device=device)
        else:
            workload = factory()
    except WorkloadError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure inside the factory is the workload's
        raise WorkloadError(f"workload {name!r} failed to build ({type(error).__name__}: {error}); "
                            "fix the factory or its data") from error
    check_workload(name, workload)
    return workload


def check_workload(name: str, workload: object) -> None:
    """A Workload with a module, iterable splits, a tensor example input the model maps to (batch, classes) logits
    and a positive learning rate; anything else is a WorkloadError saying which field is wrong."""
    if not isinstance(workload, Workload):
        raise WorkloadError(f"workload {name!r} returned {type(workload).__name__}, not search.workloads.Workload")
    if not isinstance(workload.model, nn.Module):
        raise WorkloadError(f"workload {name!r}: model is a {type(workload.model).__name__}, not a torch.nn.Module")
    if not isinstance(workload.example_inputs, torch.Tensor):
        raise WorkloadError(f"workload {name!r}: example_inputs is a {type(workload.example_inputs).__name__}, "
                            "not a tensor of batch size 1")
    for split in ("train", "val", "test", "calibration"):
        if not isinstance(getattr(workload, split), Iterable):
            raise WorkloadError(f"workload {name!r}: {split} is a {type(getattr(workload, split)).__name__}, not an "
                                "iterable of (inputs, labels) batches, e.g. a DataLoader")
    if not (isinstance(workload.finetune_lr, (int, float)) and workload.finetune_lr > 0):
        raise WorkloadError(f"workload {name!r}: finetune_lr {workload.finetune_lr!r} must be a number above 0")
    if not isinstance(workload.finetune_cycle_momentum, bool):
        raise WorkloadError(f"workload {name!r}: finetune_cycle_momentum {workload.finetune_cycle_momentum!r} must "
                            "be True or False")
    device = next(workload.model.parameters(), torch.empty(0)).device
    try:
        with torch.no_grad():
            logits = workload.model.eval()(workload.example_inputs.to(device))
    except Exception as error:  # noqa: BLE001 - the user's model on the user's example input
        raise WorkloadError(f"workload {name!r}: the model fails on example_inputs of shape "
                            f"{list(workload.example_inputs.shape)} ({type(error).__name__}: {error})") from error
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise WorkloadError(f"workload {name!r}: the model maps example_inputs to {shape}, not (batch, classes) "
                            "logits; wrap it so it returns class scores")


def run_workload(config: dict) -> Workload:
    """The workload a run searched, from its stored config (the study's `config` attribute), on the CPU."""
    return build_workload(str(config["workload"]), seed=int(config.get("seed", 0)),
                          cache_dir=Path(config["cache_dir"]),
                          data_dir=Path(config["data_dir"]) if config.get("data_dir") else None, device="cpu")
