"""Files of a run folder named by the study: every such path stays inside the folder, and each model file has its
weights file beside it, a dynamic model its exits file and an int8 model its int8 file (search.model_files writes
them)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any


class ReportError(Exception):
    """The study cannot be reported on (missing storage, study or required attributes, or a file outside it)."""


def weights_path(model_path: str | Path) -> Path:
    """The weights file that goes with a model file: trials/00007/model.pt -> trials/00007/model.weights.pt."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.weights.pt")


def exits_path(model_path: str | Path) -> Path:
    """The early exits that go with a dynamic model's file: trials/00007/model.pt -> trials/00007/model.exits.pt."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.exits.pt")


def int8_path(model_path: str | Path) -> Path:
    """The quantised state that goes with an int8 model's file: trials/00007/model.pt -> trials/00007/model.int8.pt."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.int8.pt")


def saved_files(model_path: str | Path) -> list[Path]:
    """Every file a saved model may have: the whole module, its weights file, and its exits file (dynamic models) or
    int8 file (int8 models)."""
    return [Path(model_path), weights_path(model_path), exits_path(model_path), int8_path(model_path)]


def run_relative(value: Any) -> str | None:
    """A path the study gives relative to the run folder; ReportError if it could lead out of the folder."""
    if value is None:
        return None
    text = str(value)
    path = PurePosixPath(text.replace("\\", "/"))
    if path.is_absolute() or PureWindowsPath(text).drive or ".." in path.parts:
        raise ReportError(f"the study points to the file {text!r}, outside its run folder: refused (was study.db "
                          "edited?); only open run folders you trust")
    return text


def confined_path(run_dir: Path, relative: str) -> Path:
    """run_dir/relative, resolved; ReportError if it (through a link, say) lies outside the run folder."""
    root = run_dir.resolve()
    path = (root / (run_relative(relative) or "")).resolve()
    if not path.is_relative_to(root):
        raise ReportError(f"{relative!r} leads to {path}, outside the run folder {root}: refused")
    return path
