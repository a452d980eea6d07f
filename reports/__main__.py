"""`python -m reports RUN_DIR`: rebuild a run's reports from its study storage and print their paths."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reports.build import OUTPUTS, write_report
from reports.records import ReportError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="the run folder (holds study.db)")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///RUN_DIR/study.db)")
    parser.add_argument("--study-name", default="search", help="study name (default: search)")
    args = parser.parse_args(argv)
    try:
        write_report(args.run_dir, storage=args.storage, study_name=args.study_name)
    except ReportError as error:
        print(f"python -m reports: error: {error}", file=sys.stderr)
        return 2
    for name in OUTPUTS:
        path = args.run_dir / name
        if path.exists():
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
