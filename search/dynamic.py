"""Early exits on a (pruned) model: attach the heads, train them with distillation from the dense model while the
backbone stays as it is, and measure what a dynamic model costs per input (fvcore's FLOPs along each exit's path,
averaged over a split with the exits the inputs really take)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from dynamic import EarlyExitModel, exit_head, exit_points
from dynamic.exits import exit_index, taken_logits
from pruners.graph import observe
from search.measure import count_flops, leaf_flops
from search.training import Batches, train


def attach_exits(model: nn.Module, example_inputs: torch.Tensor, count: int = 2) -> EarlyExitModel:
    """`model` (left as it is, shared) with `count` untrained heads at its stage outputs, thresholds at NEVER."""
    names = exit_points(model, example_inputs, count)
    if not names:
        raise ValueError(f"{type(model).__name__} has no stage output with weighted layers after it: no exit fits")
    with torch.no_grad():
        classes = model.eval()(example_inputs).shape[1]
    probe = EarlyExitModel(model, names, [nn.Identity() for _ in names])
    return EarlyExitModel(model, names, [exit_head(shape[1], classes)
                                         for shape in exit_feature_shapes(probe, example_inputs)])


class _HeadPath(nn.Module):
    """The backbone up to one exit, then that exit's head: what search.training.train fits for one head, with the
    backbone frozen and kept in eval mode (its batch-norm statistics untouched)."""

    def __init__(self, exits: EarlyExitModel, index: int) -> None:
        super().__init__()
        self.exits, self.index = exits, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exits.head_logits(x, self.index)

    def train(self, mode: bool = True) -> "_HeadPath":
        super().train(mode)
        self.exits.backbone.eval()
        return self


def train_heads(exits: EarlyExitModel, loader: Batches, *, epochs: float, lr: float, teacher: nn.Module,
                device: str = "cpu", distill: float = 0.5) -> EarlyExitModel:
    """Fit every head for `epochs`, distilling from `teacher` (the dense model); the backbone does not change."""
    frozen = {p: p.requires_grad for p in exits.backbone.parameters()}
    for p in frozen:
        p.requires_grad_(False)
    try:
        for index in range(len(exits.heads)):
            train(_HeadPath(exits, index), loader, epochs=epochs, lr=lr, device=device, teacher=teacher,
                  distill_weight=distill)
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
    return exits.eval()


def exit_costs(exits: EarlyExitModel, example_inputs: torch.Tensor) -> list[int]:
    """FLOPs of one input leaving at each exit (the backbone up to it, and every head on the way, since each was
    consulted), then of one that no head took (the whole backbone and every head).

    fvcore traces with torch.jit, which cannot follow a forward that an exit stops by raising; so the backbone's part
    is the sum of its leaf modules' FLOPs (fvcore, one full trace) over the calls made before the exit fired."""
    per_leaf = leaf_flops(exits.backbone, example_inputs)
    full = _leaf_calls(exits, example_inputs, None)
    per_call = {name: flops / full[name] for name, flops in per_leaf.items() if full.get(name)}
    head_flops = [count_flops(head.eval(), torch.zeros(shape))
                  for head, shape in zip(exits.heads, exit_feature_shapes(exits, example_inputs))]
    costs = []
    for index in range(len(exits.exits)):
        calls = _leaf_calls(exits, example_inputs, index)
        costs.append(round(sum(per_call.get(name, 0.0) * n for name, n in calls.items())) + sum(head_flops[:index + 1]))
    return costs + [count_flops(exits.backbone, example_inputs) + sum(head_flops)]


def _leaf_calls(exits: EarlyExitModel, example_inputs: torch.Tensor, index: int | None) -> Counter[str]:
    """How often each leaf module of the backbone ran: in a full forward (None), or up to exit `index`."""
    calls: Counter[str] = Counter()
    leaves = {m: name for name, m in exits.backbone.named_modules() if not list(m.children()) and name}
    hooks = [m.register_forward_hook(lambda mod, _a, _o: calls.update([leaves[mod]])) for m in leaves]
    try:
        with torch.no_grad():
            if index is None:
                exits.backbone.eval()(example_inputs)
            else:
                exits.eval().head_logits(example_inputs, index)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def exit_feature_shapes(exits: EarlyExitModel, example_inputs: torch.Tensor) -> list[torch.Size]:
    """The shape of the feature map each exit's head reads."""
    seen: dict[int, torch.Size] = {}
    modules = dict(exits.backbone.named_modules())
    hooks = {modules[name]: lambda _m, _a, out, i=i: seen.__setitem__(i, out.shape)
             for i, name in enumerate(exits.exits)}
    observe(exits.backbone, example_inputs, hooks)
    return [seen[i] for i in range(len(exits.exits))]


@dataclass
class DynamicEvaluation:
    """A dynamic model over a split: accuracy, mean and per-exit cost, how many inputs each exit took."""

    accuracy: float
    mean_cost: float
    exit_counts: list[int]
    exit_costs: list[int]

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "mean_cost": self.mean_cost, "exit_counts": self.exit_counts,
                "exit_costs": self.exit_costs}


@torch.inference_mode()
def evaluate_dynamic(exits: EarlyExitModel, loader: Batches, costs: list[int],
                     thresholds: torch.Tensor | None = None) -> DynamicEvaluation:
    """Accuracy and expected cost per input at `thresholds` (default the model's own), each input at its own exit."""
    thresholds = exits.thresholds if thresholds is None else thresholds
    correct = total = 0
    taken_count: Counter[int] = Counter()
    for inputs, labels in loader:
        logits = exits.eval().exit_logits(inputs)
        taken = exit_index(logits, thresholds)
        correct += int((taken_logits(logits, taken).argmax(1) == labels).sum())
        total += len(labels)
        taken_count.update(taken.tolist())
    counts = [taken_count.get(i, 0) for i in range(len(costs))]
    mean = sum(c * n for c, n in zip(costs, counts)) / max(total, 1)
    return DynamicEvaluation(correct / max(total, 1), mean, counts, list(costs))
