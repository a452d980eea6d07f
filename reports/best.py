"""The best/ folder: copies of the pick's saved model (whole module, weights file, and a dynamic pick's exits file or
an int8 pick's int8 file) and its policy, or no folder when there is no pick."""

from __future__ import annotations

import enum
import shutil
from pathlib import Path

from reports.atomic import copy_file, write_text
from reports.records import TrialRecord
from reports.run_files import confined_path, exits_path, int8_path, weights_path
from reports.summary import to_json

BEST_WEIGHTS = str(weights_path("model.pt"))  # best/model.weights.pt: the pick as tensors, safe to load
BEST_EXITS = str(exits_path("model.pt"))  # best/model.exits.pt: a dynamic pick's heads and thresholds, tensors only
BEST_INT8 = str(int8_path("model.pt"))  # best/model.int8.pt: an int8 pick's quantised tensors
BEST_RUNTIME = "runtime.json"  # a dynamic pick's DynamicRuntime settings: dynamic.runtime.DynamicRuntime.load reads it


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


def runtime_settings(best: TrialRecord, epsilon: float) -> dict | None:
    """A dynamic pick's runtime settings (DynamicRuntime keyword arguments): the run's epsilon, the cost of leaving at
    each exit as a ratio to the dense FLOPs (a dense check costs 1), and the checks fitted for it on validation where
    the final stage fitted them; None for a static pick."""
    if not best.exit_flops or not best.flops or not best.flops_ratio:
        return None
    dense_flops = best.flops / best.flops_ratio
    fitted = best.runtime_checks["settings"] if best.runtime_checks else {}
    return {"epsilon": epsilon, "exit_costs": [f / dense_flops for f in best.exit_flops], "dense_cost": 1.0, **fitted}


def write_best(run_dir: Path, best: TrialRecord | None, epsilon: float) -> BestFiles:
    """Refresh best/ for `best` (a dynamic pick with its runtime settings at `epsilon`); removes a stale best/ when
    there is no pick."""
    folder = run_dir / "best"
    if best is None:
        shutil.rmtree(folder, ignore_errors=True)
        return BestFiles.NO_PICK
    write_text(folder / "policy.json", to_json(best.policy or {}))
    runtime = runtime_settings(best, epsilon)
    if runtime is None:
        (folder / BEST_RUNTIME).unlink(missing_ok=True)
    else:
        write_text(folder / BEST_RUNTIME, to_json(runtime))
    source = model_file(run_dir, best)
    if source is None:
        for name in ("model.pt", BEST_WEIGHTS, BEST_EXITS, BEST_INT8):
            (folder / name).unlink(missing_ok=True)
        return BestFiles.MODEL_MISSING
    copy_file(source, folder / "model.pt")
    for companion, name in ((weights_path, BEST_WEIGHTS), (exits_path, BEST_EXITS), (int8_path, BEST_INT8)):
        saved = confined_path(run_dir, str(companion(best.model_path or "")))
        if saved.is_file():  # a weights file is missing only in folders written before they existed
            copy_file(saved, folder / name)
        else:
            (folder / name).unlink(missing_ok=True)
    return BestFiles.WRITTEN
