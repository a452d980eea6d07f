"""Reports of a pruning-policy search, built from its Optuna study alone.

Pareto front, the pick (min cost with loss <= epsilon within budget), HTML/Markdown/CSV/JSON and best/.
"""

from reports.build import write_report
from reports.records import ReportError, StudyRecords, TrialRecord, load_records
from reports.selection import pareto_front, select_best, sizes_count

__all__ = [
    "ReportError", "StudyRecords", "TrialRecord", "load_records", "pareto_front", "select_best", "sizes_count",
    "write_report",
]
