"""write_report: rebuild every report file of a run folder from its Optuna study alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reports.atomic import write_bytes, write_text
from reports.best import write_best
from reports.content import ReportInputs, build_sections, report_title
from reports.html import render_html
from reports.markdown import PLOTS_DIR, render_markdown
from reports.records import ReportError, open_study, study_records
from reports.selection import pareto_front, select_best, sizes_count
from reports.summary import build_summary, to_json
from reports.trials_csv import trials_csv

SQLITE_PREFIX = "sqlite:///"
REPLAY_FILE = "replay/replay.json"  # written by python -m search.replay
OUTPUTS = ("report.html", "report.md", "trials.csv", "pareto.json", "best/model.pt", "best/policy.json")


def storage_for(run_dir: Path, storage: str | None) -> str:
    """The storage URL; a SQLite file must already exist (opening one would silently create it)."""
    url = storage or f"{SQLITE_PREFIX}{run_dir / 'study.db'}"
    if url.startswith(SQLITE_PREFIX) and not Path(url[len(SQLITE_PREFIX):]).is_file():
        raise ReportError(f"no study storage at {url[len(SQLITE_PREFIX):]}")
    return url


def read_replay(run_dir: Path) -> dict[str, Any] | None:
    """The last `python -m search.replay` of this run (replay/replay.json, plain JSON), if any and readable."""
    path = run_dir / REPLAY_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def write_report(run_dir: Path, storage: str | None = None, study_name: str = "search") -> dict[str, Any]:
    """Write report.html, report.md (with its PNGs in report-plots/), trials.csv, pareto.json and best/ into run_dir;
    return pareto.json's dict."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder {run_dir} does not exist")
    study = open_study(storage_for(run_dir, storage), study_name)  # one read serves the records and Optuna's plots
    records = study_records(study)
    info, trials = records.info, records.trials
    front = pareto_front(trials, by_size=sizes_count(info.config))
    best = select_best(trials, info.budget, info.epsilon)
    best_files = write_best(run_dir, best, info.epsilon)
    summary = build_summary(info, trials, front, best)
    sections = build_sections(ReportInputs(info, trials, front, best, best_files, read_replay(run_dir), study))
    title = report_title(info)
    for image in (image for section in sections for image in section.images):
        write_bytes(run_dir / PLOTS_DIR / image.name, image.draw())
    write_text(run_dir / "trials.csv", trials_csv(trials))
    write_text(run_dir / "report.md", render_markdown(title, sections))
    write_text(run_dir / "report.html", render_html(title, sections))
    write_text(run_dir / "pareto.json", to_json(summary))
    return summary
