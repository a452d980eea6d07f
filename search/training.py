"""Training, evaluation and batch-norm recalibration: the loops every workload and every trial share."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from pruners.layer_types import BATCH_NORM

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def evaluate(model: nn.Module, loader: Batches, device: str = "cpu") -> float:
    """Top-1 accuracy (a fraction) of `model` over `loader` on `device`; the model ends in eval mode where it was."""
    correct, total = count_correct(model, loader, device)
    return correct / max(total, 1)


def count_correct(model: nn.Module, loader: Batches, device: str = "cpu") -> tuple[int, int]:
    """(correctly classified, seen) over `loader`: counts add up across parts of a split, fractions do not.

    The moves between devices happen outside inference mode: parameters moved inside it would become
    inference tensors that no later training step or dependency trace could use.
    """
    home = next(model.parameters(), torch.empty(0)).device
    model.eval().to(device)
    counts = _count_correct(model, loader, device)
    model.to(home)
    return counts


@torch.inference_mode()
def _count_correct(model: nn.Module, loader: Batches, device: str) -> tuple[int, int]:
    correct = total = 0
    for inputs, labels in loader:
        logits = model(inputs.to(device))
        correct += int((logits.argmax(1).cpu() == labels).sum().item())
        total += len(labels)
    return correct, total


def leading_batches(loader: Batches, samples: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], Batches]:
    """The first batches of `loader` holding at least `samples` samples, and an iterator over the rest of it."""
    rest = iter(loader)
    head: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen = 0
    while seen < samples:
        batch = next(rest, None)
        if batch is None:
            break
        head.append(batch)
        seen += len(batch[1])
    return head, rest


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: Batches, device: str = "cpu",
                          max_batches: int | None = None) -> nn.Module:
    """Adaptive BN (EagleEye): re-estimate batch-norm running statistics on training data, no gradient step."""
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORM)]
    if not norms:
        return model
    saved = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches seen
    model.train().to(device)
    for index, (inputs, _) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        model(inputs.to(device))
    for m, momentum in saved.items():
        m.momentum = momentum
    return model.eval()


def train(model: nn.Module, loader: Batches, *, epochs: float, lr: float, device: str = "cpu",
          weight_decay: float = 5e-4, teacher: nn.Module | None = None, distill_weight: float = 0.5,
          temperature: float = 4.0, progress: bool = False, cycle_momentum: bool = True) -> nn.Module:
    """SGD with momentum and a one-cycle schedule for `epochs` (fractions allowed: that share of the steps); the
    momentum cycles 0.95 -> 0.85 -> 0.95 against the learning rate (torch's default) or, without `cycle_momentum`,
    stays at 0.9.

    With a `teacher`, the loss mixes cross-entropy with Hinton distillation (KL at `temperature`); the teacher (the
    dense model every trial shares) goes back to the device it came from, whatever happens.
    """
    if teacher is None:
        return _train(model, loader, epochs, lr, device, weight_decay, None, distill_weight, temperature, progress,
                      cycle_momentum)
    home = next(teacher.parameters(), torch.empty(0)).device
    try:
        return _train(model, loader, epochs, lr, device, weight_decay, teacher.eval().to(device), distill_weight,
                      temperature, progress, cycle_momentum)
    finally:
        teacher.to(home)


def _train(model: nn.Module, loader: Batches, epochs: float, lr: float, device: str, weight_decay: float,
           teacher: nn.Module | None, distill_weight: float, temperature: float, progress: bool,
           cycle_momentum: bool) -> nn.Module:
    steps = max(1, math.ceil(epochs * len(loader)))  # type: ignore[arg-type]
    model.train().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15,
                                                   cycle_momentum=cycle_momentum)
    bar = _progress_bar(steps) if progress else None
    step = 0
    while step < steps:
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            logits = model(inputs)
            loss = nn.functional.cross_entropy(logits, labels)
            if teacher is not None:
                with torch.no_grad():
                    soft = (teacher(inputs) / temperature).softmax(1)
                kd = nn.functional.kl_div((logits / temperature).log_softmax(1), soft, reduction="batchmean")
                loss = (1 - distill_weight) * loss + distill_weight * kd * temperature ** 2
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= steps:
                break
    if bar is not None:
        bar.close()
    return model.eval()


def _progress_bar(total: int):  # noqa: ANN202 - tqdm's type
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="training", unit="step", leave=False)
