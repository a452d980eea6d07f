"""The Policy: one point of the search space, JSON-serialisable, that pruners.prune can apply."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Policy:
    """What to prune and how: the method, its criterion, per-layer (or global) sparsity and method options.

    `group_sparsity` keeps the per-group knobs the space searched (for reading); `sparsity` is what prune() takes.
    `finetune_lr` is the recovery learning rate and `distill` the weight of distillation from the dense model in
    its loss (0: plain cross-entropy), at temperature `distill_temperature`; `quantize` is "int8" where the
    recovered model is quantised after training (search.quantize), "none" otherwise; `label` marks warm-start
    baselines ("search" otherwise).
    """

    method: str
    criterion: str
    sparsity: float | dict[str, float]
    options: dict[str, Any] = field(default_factory=dict)
    group_sparsity: dict[str, float] = field(default_factory=dict)
    finetune_lr: float = 0.01
    label: str = "search"
    distill: float = 0.0
    distill_temperature: float = 4.0
    quantize: str = "none"

    def prune_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for pruners.prune (model and example inputs aside)."""
        return {"method": self.method, "sparsity": self.sparsity, "criterion": self.criterion, **self.options}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Policy":
        return cls(**data)
