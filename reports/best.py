"""The best/ folder: copies of the pick's saved model (whole module and weights file) and its policy, or no folder
when there is no pick."""

from __future__ import annotations

import enum
import shutil
from pathlib import Path

from reports.atomic import copy_file, write_text
from reports.records import TrialRecord
from reports.run_files import confined_path, weights_path
from reports.summary import to_json

BEST_WEIGHTS = str(weights_path("model.pt"))  # best/model.weights.pt: the pick as tensors, safe to load


class BestFiles(enum.Enum):
    """What write_best left in best/, so the reports can say so."""

    WRITTEN = "written"
    MODEL_MISSING = "model_missing"
    NO_PICK = "no_pick"


def model_file(run_dir: Path, record: TrialRecord) -> Path | None:
    """The trial's saved model (model_path is relative to the run folder, and must stay in it), if it exists."""
    if not record.model_path:
        return None
    path = confined_path(run_dir, record.model_path)
    return path if path.is_file() else None


def write_best(run_dir: Path, best: TrialRecord | None) -> BestFiles:
    """Refresh best/ for `best`; removes a stale best/ when there is no pick."""
    folder = run_dir / "best"
    if best is None:
        shutil.rmtree(folder, ignore_errors=True)
        return BestFiles.NO_PICK
    write_text(folder / "policy.json", to_json(best.policy or {}))
    source = model_file(run_dir, best)
    if source is None:
        for name in ("model.pt", BEST_WEIGHTS):
            (folder / name).unlink(missing_ok=True)
        return BestFiles.MODEL_MISSING
    copy_file(source, folder / "model.pt")
    weights = confined_path(run_dir, str(weights_path(best.model_path or "")))
    if not weights.is_file():  # a run folder written before weights files existed: the model is still the user's
        (folder / BEST_WEIGHTS).unlink(missing_ok=True)
        return BestFiles.WRITTEN
    copy_file(weights, folder / BEST_WEIGHTS)
    return BestFiles.WRITTEN
