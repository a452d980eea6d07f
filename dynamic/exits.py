"""Early exits (BranchyNet, MSDNet): small classifier heads after stages of a network; an input leaves at the first
head confident enough, and the stages after it never run.

At batch 1 in eval mode the backbone runs as segments cut at its exit points (dynamic/segments.py), so a confident head
ends the forward where it stands, and the later stages never run; where torch.fx cannot cut the backbone, the heads
hang on forward hooks instead and a confident head stops the forward by raising, so any network whose stages are
modules works. For a batch (evaluation, training),
`exit_logits` runs the whole network once and returns every head's logits, and the per-input decisions are made on
them; the result is the same as feeding the inputs one at a time.
"""
from __future__ import annotations

import torch
from torch import nn

from dynamic.segments import Segment, split_at_exits

NEVER = 2.0  # a threshold no softmax confidence reaches: the head never takes an input


class _Exit(Exception):
    """Raised from a hook when a head takes the input: carries its logits and the exit's index."""

    def __init__(self, logits: torch.Tensor, index: int) -> None:
        super().__init__(index)
        self.logits = logits
        self.index = index


HEAD_LAYOUT = "pool-conv"  # the layout exit_head builds; "conv-pool" only rebuilds heads saved before it


def exit_head(channels: int, num_classes: int, layout: str = HEAD_LAYOUT) -> nn.Module:
    """A head for a feature map of `channels`. "pool-conv": pooled to 4x4, one 3x3 convolution of stride 2 widening
    to 2 x `channels` (batch-normed, 2x2 out), flattened into a linear classifier. "conv-pool", the earlier layout:
    the strided convolution on the full map, keeping `channels`, then pooled to 2x2.

    Pooling first costs the same batch-1 time (36-50 us a head on fashion-resnet20) and exits far more inputs at the
    same accuracy: there, heads after the first two stages of the dense backbone, trained alike, at a shared
    threshold fitted to 0.6 of the backbone's FLOPs, keep 92.56% of validation accuracy against 90.28% (backbone
    92.74%), the first head alone 83.9% against 74.2%. (A pooled linear or MLP head without the convolution is 2-3x
    faster but keeps 91.4-91.8%; an MLP on globally pooled features stayed unconfident.) "pool-linear": a trained
    "pool-conv" head as it runs (as_linear_head): its convolution and norm as one linear layer."""
    if layout == "pool-linear":
        return PoolLinearHead(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * channels, 8 * channels),
                              nn.ReLU(), nn.Linear(8 * channels, num_classes))
    if layout == "pool-conv":
        return nn.Sequential(nn.AdaptiveAvgPool2d(4),
                             nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(2 * channels), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * channels, num_classes))
    if layout == "conv-pool":
        return nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(4 * channels, num_classes))
    raise ValueError(f"head layout {layout!r} is unknown: use 'pool-conv', 'pool-linear' or 'conv-pool'")


class PoolLinearHead(nn.Sequential):
    """The "pool-linear" head (pool, flatten, linear, ReLU, linear), run as one call of functional operators: at
    batch 1 the Sequential's dispatch of five modules costs about as much as their arithmetic (fashion-resnet20: 12
    against 22 us a head). Its layers and saved keys are the Sequential's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, last = self[2], self[4]
        pooled = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return nn.functional.linear(nn.functional.linear(pooled, first.weight, first.bias).relu_(), last.weight,
                                    last.bias)


def head_channels(head: nn.Module) -> int:
    """The channels of the feature map an exit_head reads: what exit_head was built with (a saved head's shape)."""
    first = next(m for m in head.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return first.in_channels if isinstance(first, nn.Conv2d) else first.in_features // 16


@torch.no_grad()
def as_linear_head(head: nn.Module) -> nn.Module:
    """The "pool-linear" head computing exactly what a trained "pool-conv" `head` computes in eval mode.

    Its convolution always reads the same 4x4 pooled map, so with the batch norm after it, it is one linear map of
    the flattened map (found by convolving the map's basis): one matrix product, where a convolution and a norm
    are two operators whose fixed cost at batch 1 dwarfs their arithmetic (a head on fashion-resnet20: 44 against
    65 us at 16 channels, 61 against 82 at 32, BN folded into the convolution in both; about a hundredth of the
    dense model's time per head consulted). It has more multiply-adds (16c x 8c against 72c^2), a few thousand."""
    pool, conv, norm, relu, flatten, classifier = head
    if not isinstance(conv, nn.Conv2d) or not isinstance(norm, nn.BatchNorm2d):
        raise ValueError("as_linear_head takes a 'pool-conv' head (pool, convolution, norm, ReLU, flatten, linear)")
    inputs = conv.in_channels * 16
    weight = conv.weight
    basis = torch.eye(inputs, dtype=weight.dtype, device=weight.device).view(inputs, conv.in_channels, 4, 4)
    matrix = nn.functional.conv2d(basis, weight, None, conv.stride, conv.padding).flatten(1).T  # out x in
    positions = matrix.shape[0] // conv.out_channels  # each channel's outputs, adjacent once flattened
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.bias)
    linear = nn.Linear(inputs, matrix.shape[0]).to(weight)
    linear.weight.copy_(matrix * scale.repeat_interleave(positions)[:, None])
    linear.bias.copy_((norm.bias + (conv_bias - norm.running_mean) * scale).repeat_interleave(positions))
    return PoolLinearHead(pool, flatten, linear, relu, classifier).eval()


class EarlyExitModel(nn.Module):
    """`backbone` with heads after the modules named in `exits` (in forward order) and one confidence threshold per
    head: an input exits at the first head whose largest softmax probability reaches its threshold, else it gets the
    backbone's own output. Thresholds of NEVER give exactly the backbone. `head_layout` names exit_head's layout of
    the heads, so that a saved model's heads are rebuilt as they were."""

    def __init__(self, backbone: nn.Module, exits: list[str], heads: list[nn.Module],
                 thresholds: list[float] | None = None, head_layout: str = HEAD_LAYOUT) -> None:
        super().__init__()
        if len(exits) != len(heads):
            raise ValueError(f"{len(exits)} exits but {len(heads)} heads: give one head per exit")
        modules = dict(backbone.named_modules())
        missing = [name for name in exits if name not in modules]
        if missing:
            raise ValueError(f"exit point(s) {missing} are not modules of the backbone; name modules it calls")
        self.backbone = backbone
        self.exits = list(exits)
        self._points = tuple(modules[name] for name in exits)  # looked up once: every batch-1 call hooks them
        self.heads = nn.ModuleList(heads)
        self.head_layout = head_layout
        self.register_buffer("thresholds", torch.tensor(thresholds or [NEVER] * len(exits), dtype=torch.float32))
        self.forced_exit: int | None = None  # take every input at this head (cost counting); None: by confidence
        self._segments: list[Segment] | None = None  # the backbone cut at its exits, once cut (_segments_for)
        self._segmented = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits per input. One input: the forward stops at the first confident head. A batch: every head runs
        and each input takes the logits of its own exit (as if fed alone)."""
        if x.shape[0] != 1:
            logits = self.exit_logits(x)
            return taken_logits(logits, exit_index(logits, self.thresholds))
        return self._one(x)[0]

    def head_logits(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Head `index`'s logits on a batch; the backbone runs only up to that exit (for training the head)."""
        self.forced_exit = index
        try:
            return self._one(x)[0]
        finally:
            self.forced_exit = None

    def forward_with_exit(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """One input's logits and the index of the exit that took it (len(exits): the backbone's own output)."""
        if x.shape[0] != 1:
            raise ValueError(f"forward_with_exit takes one input, got a batch of {x.shape[0]}")
        return self._one(x)

    def _one(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Hooks go only on the exit points whose head can take the input (thresholds read once, as floats): at batch
        1 every tensor read and hook call is time that the FLOPs do not count."""
        if self.forced_exit is None:
            limits = self.thresholds.tolist()
            takers = [index for index, limit in enumerate(limits) if limit <= 1]
        else:
            limits, takers = None, [self.forced_exit]
        segments = None if self.backbone.training else self._segments_for()
        if segments is not None:
            return self._through(segments, x, limits, takers)
        hooks = [self._points[index].register_forward_hook(self._stopper(index, limits)) for index in takers]
        try:
            return self.backbone(x), len(self.exits)
        except _Exit as taken:
            return taken.logits, taken.index
        finally:
            for hook in hooks:
                hook.remove()

    def _segments_for(self) -> list[Segment] | None:
        """The backbone's segments (split_at_exits), cut at the first batch-1 call in eval mode, so the trace sees the
        forward that eval mode runs; None: the hooks serve. The trace runs no module (a hook that counts calls, as
        exit_costs does, sees only the input's own forward)."""
        if not self._segmented:
            self._segmented = True
            self._segments = split_at_exits(self.backbone, self.exits)
        return self._segments

    def _through(self, segments: list[Segment], x: torch.Tensor, limits: list[float] | None,
                 takers: list[int]) -> tuple[torch.Tensor, int]:
        """One input through the segments, each taker head consulted after its own, up to the first confident one."""
        for index, segment in enumerate(segments[:-1]):
            x = segment(self.backbone, x)
            if index in takers:
                logits = self.heads[index](x)
                if limits is None or float(logits.detach().softmax(1).max()) >= limits[index]:
                    return logits, index
        return segments[-1](self.backbone, x), len(self.exits)

    def __getstate__(self) -> dict:
        """Pickled (torch.save of the whole model, a deep copy) without its segments: compiled functions do not
        pickle, and a copy cuts its own on its first batch-1 call."""
        return {**super().__getstate__(), "_segments": None, "_segmented": False}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__({"_segments": None, "_segmented": False, **state})  # files saved before segments

    def _stopper(self, index: int, limits: list[float] | None):  # noqa: ANN202 - a forward hook
        """The hook at exit `index`: its head runs and raises _Exit when confident enough (limits None: always)."""
        head = self.heads[index]

        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            logits = head(output)
            if limits is None or float(logits.detach().softmax(1).max()) >= limits[index]:
                raise _Exit(logits, index)
        return hook

    def run_heads_as_linear(self) -> "EarlyExitModel":
        """Swap every trained "pool-conv" head, in place, for its exact "pool-linear" form (as_linear_head), the
        form that is timed, saved and shipped; heads of other layouts stay as they are."""
        if self.head_layout == "pool-conv":
            self.heads = nn.ModuleList(as_linear_head(head.eval()) for head in self.heads)
            self.head_layout = "pool-linear"
        return self

    def exit_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every head's logits on the batch, then the backbone's: one full forward."""
        features: dict[int, torch.Tensor] = {}
        hooks = [point.register_forward_hook(lambda _m, _a, out, i=index: features.__setitem__(i, out))
                 for index, point in enumerate(self._points)]
        try:
            final = self.backbone(x)
        finally:
            for hook in hooks:
                hook.remove()
        return [head(features[index]) for index, head in enumerate(self.heads)] + [final]


def exit_index(logits: list[torch.Tensor], thresholds: torch.Tensor) -> torch.Tensor:
    """Per input, the first head whose confidence reaches its threshold (len(thresholds): none did)."""
    return first_confident([head.softmax(1).amax(1) for head in logits[:len(thresholds)]], thresholds)


def first_confident(confidence: list[torch.Tensor], thresholds: torch.Tensor) -> torch.Tensor:
    """Per input, the first head whose confidence (largest softmax probability, one tensor per head) reaches its
    threshold, len(thresholds) where none did: the exit rule, on confidences computed once (threshold fits)."""
    taken = torch.full((confidence[0].shape[0],), len(thresholds), dtype=torch.long)
    for index in reversed(range(len(thresholds))):
        taken = torch.where(confidence[index] >= thresholds[index], torch.full_like(taken, index), taken)
    return taken


def taken_logits(logits: list[torch.Tensor], taken: torch.Tensor) -> torch.Tensor:
    """Each input's logits at the exit that took it."""
    stacked = torch.stack(logits)  # exits x batch x classes
    return stacked[taken, torch.arange(stacked.shape[1])]


def exit_points(model: nn.Module, example_inputs: torch.Tensor, count: int = 2) -> list[str]:
    """Up to `count` exit points: the outputs of the network's top-level stages (its direct children that are
    containers, else its activations), spread evenly over those that produce a feature map and leave weighted layers
    after them beyond the classifier."""
    children = list(model.named_children())
    if len(children) == 1 and isinstance(children[0][1], nn.Sequential):
        prefix, model = children[0][0] + ".", children[0][1]
        children = [(prefix + n, m) for n, m in model.named_children()]
    else:
        prefix = ""
    shapes = _output_shapes(model, example_inputs, [m for _, m in children])
    weighted = [i for i, (_, m) in enumerate(children) if any(p.dim() > 1 for p in m.parameters())]
    containers = [i for i, (_, m) in enumerate(children) if len(list(m.children())) > 0]
    activations = [i for i, (_, m) in enumerate(children) if not list(m.parameters()) and isinstance(
        m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish))]
    candidates = containers or activations
    usable = [i for i in candidates if len(shapes.get(i, ())) == 4 and len([w for w in weighted if w > i]) >= 2]
    if len(usable) > count:
        step = len(usable) / count
        usable = [usable[int(step * k + step / 2)] for k in range(count)]
    return [children[i][0] for i in usable]


def _output_shapes(model: nn.Module, example_inputs: torch.Tensor, modules: list[nn.Module]) -> dict[int, tuple]:
    shapes: dict[int, tuple] = {}
    hooks = [m.register_forward_hook(lambda _m, _a, out, i=i: shapes.__setitem__(i, tuple(out.shape)))
             for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes
