"""`python -m search.run`: search pruning policies for a workload under a budget, then report the Pareto front.

Flow (search.pipeline): RunConfig -> Workload -> prepare (study, dense, space) -> backend trials -> finish (final
stage, reports); docs/architecture.md has the whole map.
"""
from __future__ import annotations

import logging
import sys
import warnings

import optuna

from search.config import RunConfig, parse_config
from search.pipeline import USER_ERRORS, finish, prepare, removed_if_new, run_backend
from search.workloads import build_workload

log = logging.getLogger("search")


def configure_logging() -> None:
    """Our messages on stderr, one line each; libraries' chatter (Optuna's per-trial INFO, fvcore) kept quiet."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("search").setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", module="torch_pruning")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def execute(config: RunConfig) -> int:
    """Run (or resume) the search described by `config`; returns the exit status."""
    workload = build_workload(config.workload, seed=config.seed, cache_dir=config.cache_dir,
                              data_dir=config.data_dir, device=config.device)
    with removed_if_new(config.out):
        study, ctx = prepare(config, workload)
    log.info("searching %s: budget %.2f of dense %s, epsilon %.3f, %d trials -> %s",
             config.workload, config.budget, config.cost, config.epsilon, config.trials, config.out)
    try:
        run_backend(study, ctx)
        finish(study, ctx)
    except KeyboardInterrupt:
        log.warning("interrupted: finished trials are kept in %s; rerun the same command to resume", config.out)
        finish(study, ctx, finalists=0)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        config = parse_config(argv)
        return execute(config)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
