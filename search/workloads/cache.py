"""Dense models of built-in workloads are trained once and cached with their metrics, keyed by workload and seed."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from reports.atomic import write_with

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$PRUNE_SEARCH_CACHE, else $XDG_CACHE_HOME/prune-search, else ~/.cache/prune-search."""
    if "PRUNE_SEARCH_CACHE" in os.environ:
        return Path(os.environ["PRUNE_SEARCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prune-search"


def cached_dense(model: nn.Module, key: str, cache_dir: Path, train_fn: Callable[[nn.Module], dict]) -> dict:
    """Load `model`'s trained weights from the cache, or train it with `train_fn` (returns metrics) and cache both."""
    path = cache_dir / f"{key}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        log.info("dense model %s loaded from %s", key, path)
        return saved["metrics"]
    metrics = train_fn(model)
    write_with(path, lambda file: torch.save({"state_dict": model.state_dict(), "metrics": metrics}, file))
    log.info("dense model %s trained and cached at %s", key, path)
    return metrics
