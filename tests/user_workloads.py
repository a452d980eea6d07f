"""Workloads as a user writes them, for `--workload tests.user_workloads:NAME`: plain DataLoaders, a torchvision
model, and the mistakes the CLI must turn into one-line errors."""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from search.training import recalibrate_batchnorm, train
from search.workloads import Workload
from search.workloads.digits import load_digits_tensors
from search.workloads.models import digits_cnn

MOBILENET_EPOCHS = 6


def _loaders(size: int = 8, channels: int = 1) -> dict[str, DataLoader]:
    """The digits splits as DataLoaders over TensorDatasets (batches are [inputs, labels] lists), at `size` pixels."""
    def images(x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False) if size != 8 else x
        return x.expand(-1, channels, -1, -1).contiguous()

    splits = load_digits_tensors(seed=0)
    generator = torch.Generator().manual_seed(0)
    return {name: DataLoader(TensorDataset(images(x), y), batch_size=64, shuffle=name == "train",
                             generator=generator if name == "train" else None)
            for name, (x, y) in splits.items()}


def _workload(model: nn.Module, loaders: dict[str, DataLoader], name: str) -> Workload:
    example = next(iter(loaders["val"]))[0][:1]
    return Workload(name, model, loaders["train"], loaders["val"], loaders["test"], example_inputs=example,
                    calibration=loaders["train"], finetune_lr=0.02)


def raising() -> Workload:
    raise RuntimeError("the data server is down")


def model_is_not_a_module() -> Workload:
    loaders = _loaders()
    workload = _workload(digits_cnn(), loaders, "broken")
    workload.model = "resnet"  # type: ignore[assignment]
    return workload


def scores_are_not_logits() -> Workload:
    return _workload(nn.Sequential(digits_cnn(), nn.Flatten(0)), _loaders(), "flat")


def untrained() -> Workload:
    """A digits CNN whose last layer outputs zeros: every image is classed 0, about one in ten right."""
    torch.manual_seed(0)
    model = digits_cnn()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return _workload(model.eval(), _loaders(), "untrained")


def _mobilenet() -> nn.Module:
    import torchvision  # here: the other workloads of this module start without its seconds of imports

    return torchvision.models.mobilenet_v3_small(weights=None, num_classes=10, width_mult=0.5)


@functools.cache
def _trained_mobilenet_state() -> dict[str, torch.Tensor]:
    """MobileNetV3-small's weights after its brief training, trained once per process: the tests that use it and the
    searches they run in process share one training."""
    torch.manual_seed(0)
    loaders = _loaders(size=32, channels=3)
    model = _mobilenet()
    train(model, loaders["train"], epochs=MOBILENET_EPOCHS, lr=0.05)
    recalibrate_batchnorm(model, loaders["train"])  # its BN momentum of 0.01 leaves running stats far behind
    return {key: value.clone() for key, value in model.state_dict().items()}


def mobilenet_dataloaders() -> Workload:
    """torchvision's MobileNetV3-small (half width) trained briefly on digits at 32x32, with plain DataLoaders."""
    model = _mobilenet()
    model.load_state_dict(_trained_mobilenet_state())
    return _workload(model.eval(), _loaders(size=32, channels=3), "mobilenet-digits")

