"""Dynamic pruning: computation that adapts to each input (early exits), and the runtime that holds a loss budget
over a stream. Needs only torch, so a deployed model carries no search dependencies."""
from dynamic.exits import NEVER, EarlyExitModel, exit_head, exit_points

__all__ = ["NEVER", "EarlyExitModel", "exit_head", "exit_points"]
