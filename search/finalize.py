"""After the search: the Pareto models are evaluated once on the test split (search decisions never saw it)."""
from __future__ import annotations

import logging

import optuna
import torch

from reports import TrialRecord
from search.study import record_test_accuracy
from search.training import evaluate
from search.trial import TrialContext

log = logging.getLogger(__name__)


def evaluate_front_on_test(study: optuna.Study, front: list[TrialRecord], ctx: TrialContext) -> None:
    """Measure `test_accuracy` for every Pareto trial that lacks it, from its saved model."""
    measured = {}
    for record in front:
        if record.test_accuracy is not None or record.model_path is None:
            continue
        path = ctx.run_dir / record.model_path
        if not path.exists():
            log.warning("trial %d's model %s is missing; its test accuracy stays unknown", record.number, path)
            continue
        model = torch.load(path, map_location="cpu", weights_only=False)
        measured[record.number] = evaluate(model, ctx.workload.test, ctx.config.device)
    if measured:
        record_test_accuracy(study, measured)
