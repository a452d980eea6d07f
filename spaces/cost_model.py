"""An analytical FLOPs model of a pruned network, from the dense per-layer FLOPs and the channel groups.

It predicts before pruning, so the space can aim a sampled allocation at the budget; the trial then
measures the real count with fvcore and corrects.
"""
from __future__ import annotations

from dataclasses import dataclass

from pruners import PrunableGroup


@dataclass(frozen=True)
class CostModel:
    """Dense FLOPs per prunable layer plus the rest (BN, pooling, output layers), and which group feeds which layer."""

    layer_flops: dict[str, int]
    total_flops: int
    out_group: dict[str, str]  # layer -> group whose channels are its outputs
    in_group: dict[str, str]  # layer -> group whose channels are its inputs
    channels: dict[str, int]  # group -> its dense width

    @classmethod
    def build(cls, layer_flops: dict[str, int], total_flops: int, groups: list[PrunableGroup]) -> "CostModel":
        out_group = {layer: g.name for g in groups for layer in g.out_layers}
        in_group = {layer: g.name for g in groups for layer in g.in_layers}
        return cls(dict(layer_flops), int(total_flops), out_group, in_group, {g.name: g.channels for g in groups})

    def prunable_share(self) -> float:
        """Fraction of the dense FLOPs in layers that some group prunes."""
        return sum(f for name, f in self.layer_flops.items() if name in self.out_group) / self.total_flops

    def masked_ratio(self, group_sparsity: dict[str, float]) -> float:
        """Predicted FLOPs ratio when each group's output layers keep (1 - ratio) of their weights (unstructured)."""
        saved = sum(f * group_sparsity.get(self.out_group.get(name, ""), 0.0) for name, f in self.layer_flops.items())
        return 1.0 - saved / self.total_flops

    def channel_ratio(self, group_sparsity: dict[str, float], round_to: int = 1) -> float:
        """Predicted FLOPs ratio when each group loses `ratio` of its channels (inputs and outputs of layers shrink),
        its kept width rounded down to a multiple of `round_to` but never below it, as the channel pruner does."""
        group_sparsity = {g: self.rounded(g, r, round_to) for g, r in group_sparsity.items()}
        saved = 0.0
        for name, f in self.layer_flops.items():
            keep_out = 1.0 - group_sparsity.get(self.out_group.get(name, ""), 0.0)
            keep_in = 1.0 - group_sparsity.get(self.in_group.get(name, ""), 0.0)
            saved += f * (1.0 - keep_out * keep_in)
        return 1.0 - saved / self.total_flops

    def rounded(self, group: str, ratio: float, round_to: int) -> float:
        """The ratio of `group` that channel pruning really removes once whole channels and round_to are applied."""
        width = self.channels.get(group)
        if not width or ratio <= 0:
            return ratio
        kept = int(width * (1.0 - ratio))
        kept = max(kept - kept % round_to, min(round_to, width))
        return 1.0 - kept / width
