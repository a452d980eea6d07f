"""Trace a model into torch-pruning's DependencyGraph and read structural facts off it.

Tracing is shared by every method that needs the graph (output-layer protection, channel groups),
so the quirks of tracing (eval mode, gradients on, mode restored afterwards) live in one place.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn

from .layer_types import CONV, PRUNABLE_LAYERS, WEIGHT_LAYERS


def forward(model: nn.Module, example_inputs: torch.Tensor) -> torch.Tensor:
    """Call the model on one tensor; torch-pruning's default would unpack the batch as arguments."""
    return model(example_inputs)


@contextmanager
def eval_mode_restored(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block; every module's own training flag restored after (model.train() would not)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no gradients for a look at the model's forward; every module's mode restored after."""
    with eval_mode_restored(model), torch.no_grad():
        yield model


def observe(model: nn.Module, inputs: torch.Tensor, hooks: dict[nn.Module, Callable[..., None]],
            pre: bool = False) -> None:
    """One eval-mode forward of `model` with `hooks` attached to modules, removed afterwards.

    pre=True attaches forward-pre-hooks called as hook(module, args, kwargs); otherwise forward
    hooks called as hook(module, args, output).
    """
    handles = [m.register_forward_pre_hook(h, with_kwargs=True) if pre else m.register_forward_hook(h)
               for m, h in hooks.items()]
    try:
        with evaluating(model):
            forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def traceable(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, gradients on and every parameter requiring grad while tracing; restore all after.

    torch-pruning traces through autograd, and calls model.eval() without restoring the mode.
    """
    grads = {p: p.requires_grad for p in model.parameters()}
    for p in grads:
        p.requires_grad_(True)
    try:
        with eval_mode_restored(model), torch.enable_grad():
            yield model
    finally:
        for p, flag in grads.items():
            p.requires_grad_(flag)


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """The dependency graph of `model` traced on `example_inputs`."""
    with traceable(model):
        return bound_index_mappings(tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, forward_fn=forward, verbose=False
        ))


def input_coupled_layers(graph: tp.DependencyGraph) -> list[str]:
    """Grouped convs fed straight from the traced module's input: pruning their outputs would prune that input.

    Only needed when a submodule is traced alone, where its input has no producer in the graph.
    """
    names = {m: n for n, m in graph.model.named_modules()}
    found = []
    for module, node in graph.module2node.items():
        if isinstance(module, CONV) and module.groups > 1 and _reaches_input(node):
            found.append(names[module])
    return found


def _reaches_input(start: tp.dependency.Node) -> bool:
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if not node.inputs and node.type != tp.ops.OPTYPE.PARAMETER:
            return True
        for prev in node.inputs:
            if prev not in seen and not isinstance(prev.module, WEIGHT_LAYERS):
                seen.add(prev)
                stack.append(prev)
    return False


class IndexExplosion(RuntimeError):
    """torch-pruning's index mapping grew past any real channel count (it misreads a reshape)."""


class _Budget:
    """Limits on what the graph's index mappings may produce: a total over all groups, and a width.

    A flatten mapping legitimately receives at most one layer's channels (a conv's, flattened into a
    classifier); receiving more means it is being fed an earlier flatten's output, the runaway case.
    """

    def __init__(self, total: int, width: int) -> None:
        self.left, self.width = total, width

    def spend(self, received: int, produced: int) -> None:
        if produced > received and received > self.width:
            raise IndexExplosion(f"a flatten mapping received {received} indices, "
                                 f"more than the widest layer's {self.width}")
        self.left -= produced
        if self.left < 0:
            raise IndexExplosion("index mappings exceeded their budget of channel indices")


class _Bounded:
    """An index mapping that draws what it produces from a shared budget.

    torch-pruning reads some reshapes (Swin's window partition, MaxViT's grid attention) as flattens
    and multiplies indices through each of them until memory runs out; the budget stops that early.
    """

    def __init__(self, inner: object, budget: _Budget) -> None:
        self.inner, self.budget = inner, budget

    def __call__(self, idxs: list) -> list:
        forward = not getattr(self.inner, "reverse", True)
        stride = getattr(self.inner, "_stride", 1) if forward else 1
        self.budget.spend(len(idxs), len(idxs) * stride)
        return self.inner(idxs)


INDEX_BUDGET = 1 << 23
"""Three times the heaviest real use measured (densenet201: 2.6M), small enough to fail in seconds."""


class _BoundedMappings(list):
    """A dependency's index-mapping list that bounds every mapping stored in it.

    torch-pruning recomputes the mappings each time it forms a group and stores them by item
    assignment, so the bound has to live in the list itself.
    """

    def __init__(self, items: list, budget: _Budget) -> None:
        super().__init__()
        self.budget = budget
        for item in items:
            self.append(self._wrap(item))

    def _wrap(self, value: object) -> object:
        return value if value is None or isinstance(value, _Bounded) else _Bounded(value, self.budget)

    def __setitem__(self, index: int, value: object) -> None:
        super().__setitem__(index, self._wrap(value))


def bound_index_mappings(graph: tp.DependencyGraph, budget: int = INDEX_BUDGET) -> tp.DependencyGraph:
    """Bound the index mappings of `graph` so that a runaway expansion raises IndexExplosion."""
    width = max((max(p.shape) for p in graph.model.parameters() if p.dim()), default=1)
    shared = _Budget(budget, width)
    for node in graph.module2node.values():
        for dep in node.dependencies:
            dep.index_mapping = _BoundedMappings(dep.index_mapping, shared)
    return graph


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """The conv/linear layers whose output reaches a model output through no other weight layer.

    These are the classifier(s); no method ever prunes them. Found by walking autograd back from
    the outputs rather than from torch-pruning's graph, so it works on models that graph cannot hold.
    """
    layer_of: dict[object, str] = {}

    def recorder(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, _args: tuple, out: object) -> None:
            first = next(iter(_tensors(out)), None)
            if first is not None and first.grad_fn is not None:
                layer_of[first.grad_fn] = name
        return record

    hooks = [m.register_forward_hook(recorder(n)) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    try:
        with traceable(model):
            outputs = _tensors(forward(model, example_inputs))
    finally:
        for h in hooks:
            h.remove()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen, found = set(stack), set()
    while stack:
        fn = stack.pop()
        if fn in layer_of:
            found.add(layer_of[fn])
            continue
        for nxt, _ in fn.next_functions:
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    modules = dict(model.named_modules())
    return [n for n in modules if n in found and isinstance(modules[n], PRUNABLE_LAYERS)]


def _tensors(value: object) -> list[torch.Tensor]:
    """Every tensor inside a (nested) model output: tensor, tuple, list, dict or named tuple."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []
