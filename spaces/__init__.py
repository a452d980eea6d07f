"""The search space: prunable groups of a model, per-group sparsity and method choices, the Policy."""
from spaces.cost_model import CostModel
from spaces.policy import Policy
from spaces.space import SearchSpace, SpaceError

__all__ = ["CostModel", "Policy", "SearchSpace", "SpaceError"]
