"""Dense models of built-in workloads are trained once and cached with their metrics, keyed by workload and seed.

The default workload's dense model (fashion-resnet20, seed 0) ships in checkpoints/, so a first run starts searching
at once; it is used only where its SHA-256 matches the one recorded here, else the model is trained as for any other
seed. `PRUNE_SEARCH_NO_SHIPPED=1 python -m search.run --cache-dir EMPTY_DIR` trains it again instead.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from reports.atomic import write_with

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent / "checkpoints"
SHIPPED_SHA256 = {  # key -> checksum of the shipped checkpoint (val 92.74%, test 92.39%)
    "fashion-resnet20-seed0": "f37e353c2c9acc5050cc67529fa1a185312f732ae1e6f4c4ca6ee077860cd480",
}


def shipped_checkpoint(key: str) -> Path | None:
    """The checkpoint shipped with the package for `key`, if there is one, its checksum matches, and
    $PRUNE_SEARCH_NO_SHIPPED is unset."""
    path = SHIPPED_DIR / f"{key}.pt"
    if key not in SHIPPED_SHA256 or not path.is_file() or os.environ.get("PRUNE_SEARCH_NO_SHIPPED"):
        return None
    if hashlib.sha256(path.read_bytes()).hexdigest() != SHIPPED_SHA256[key]:
        log.warning("the shipped checkpoint %s does not match its checksum: training the dense model instead", path)
        return None
    return path


def default_cache_dir() -> Path:
    """$PRUNE_SEARCH_CACHE, else $XDG_CACHE_HOME/prune-search, else ~/.cache/prune-search."""
    if "PRUNE_SEARCH_CACHE" in os.environ:
        return Path(os.environ["PRUNE_SEARCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prune-search"


def cached_dense(model: nn.Module, key: str, cache_dir: Path, train_fn: Callable[[nn.Module], dict]) -> dict:
    """Load `model`'s trained weights from the cache or the shipped checkpoint, or train it with `train_fn` (returns
    metrics) and cache both."""
    path = cache_dir / f"{key}.pt"
    source = path if path.exists() else shipped_checkpoint(key)
    if source is not None:
        saved = torch.load(source, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        log.info("dense model %s loaded from %s", key, source)
        return saved["metrics"]
    metrics = train_fn(model)
    write_with(path, lambda file: torch.save({"state_dict": model.state_dict(), "metrics": metrics}, file))
    log.info("dense model %s trained and cached at %s", key, path)
    return metrics
