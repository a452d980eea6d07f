"""RunConfig: the validated command line of `python -m search.run`; bad values fail here, in one line naming the
flag."""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pruners import available_methods, default_methods, get_method
from search.workloads.cache import default_cache_dir

COST_METRICS = ("flops", "latency", "params", "size")
SAMPLERS = ("tpe", "nsga2", "random")
BACKENDS = ("optuna", "ray")
DEVICES = ("cpu", "cuda")
MIN_BUDGET = 0.02  # below it no pruning method in the registry can fit a trial: every trial would fail
SEED_LIMIT = 2 ** 32  # numpy and torch generators take seeds in [0, 2**32)
DEFAULT_METHODS = tuple(default_methods())  # what runs faster with dense kernels (masked methods are opt-in)


class ConfigError(ValueError):
    """A bad command-line value; the message names the flag and the fix."""


@dataclass
class RunConfig:
    """Everything one search run needs; `out` holds the study, so the same `out` resumes the run."""

    workload: str = "fashion-resnet20"
    budget: float = 0.5
    epsilon: float = 0.01
    cost: str = "flops"
    methods: tuple[str, ...] = DEFAULT_METHODS
    trials: int = 20
    timeout: float | None = None
    finetune_epochs: float = 0.15
    target_floor: float = 0.6  # the lowest cost target a trial aims at, as a fraction of the budget
    final_epochs: float = 1.5  # after the search: longer fine-tune of Pareto models within budget; 0 = none
    finalists: int | None = 2  # at most this many get it (None: every one), bisecting toward the cheapest feasible
    sampler: str = "tpe"
    backend: str = "optuna"
    address: str | None = None
    workers: int | None = None  # concurrent Ray trials; None: as many as the cluster's CPUs/GPUs fit at start
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    latency_on: str | None = None  # a Ray custom resource: latency is measured on a node that advertises it
    device: str = "cpu"
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("runs"))
    data_dir: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    batch_size: int = 1
    threads: int | None = None
    allow_weak_dense: bool = False  # search a dense model that scores near chance (normally refused)
    sensitivity: bool = True  # measure a new study's sensitivity map (search.sensitivity): 3 prunes per group
    quantize: bool = False  # offer int8 post-training quantisation of each static point (search.quantize)

    def to_json(self) -> dict:
        """A JSON-friendly copy, stored with the study so a report shows what was run."""
        data = asdict(self)
        data["methods"] = list(self.methods)
        for key in ("out", "data_dir", "cache_dir"):
            data[key] = None if data[key] is None else str(data[key])
        return data


def _fraction(flag: str, low: float, high: float, low_open: bool, high_open: bool):  # noqa: ANN202 - argparse type
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a number") from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if math.isnan(value) or too_low or too_high:
            bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{flag} {text} is out of range: give a value in {bounds}")
        return value
    return parse


def _positive(flag: str, kind: type):  # noqa: ANN202 - argparse type
    def parse(text: str):  # noqa: ANN202
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{flag} {text} must be greater than 0")
        return value
    return parse


def _count(flag: str):  # noqa: ANN202 - argparse type
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a whole number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{flag} {text} must be 0 or more")
        return value
    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed {text!r} is not a whole number") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"--seed {text} is out of range: give a whole number in [0, 2**32)")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2 at the CLI) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message.replace("argument ", ""))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m search.run", description="Search per-layer pruning policies under a cost budget "
                     "and an accuracy-loss bound; writes the Pareto front, the pick and a report to --out.")
    parser.add_argument("--workload", default=RunConfig.workload,
                        help="built-in name (fashion-resnet20, digits-cnn) or package.module:function returning "
                             "a Workload")
    parser.add_argument("--budget", type=_fraction("--budget", MIN_BUDGET, 1, False, False), default=RunConfig.budget,
                        help=f"upper bound on cost(pruned)/cost(dense), in [{MIN_BUDGET:g}, 1]; default 0.5")
    parser.add_argument("--epsilon", type=_fraction("--epsilon", 0, 1, False, False), default=RunConfig.epsilon,
                        help="largest allowed drop in validation accuracy, absolute fraction; default 0.01 (one point)")
    parser.add_argument("--cost", choices=COST_METRICS, default=RunConfig.cost,
                        help="what the budget bounds: FLOPs, measured latency, non-zero parameters, or size (bytes "
                             "of the deployable model: int8 with --quantize); default flops")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated pruning methods to search over, of {', '.join(available_methods())} "
                             f"(default {','.join(DEFAULT_METHODS)}: runs faster with dense kernels, and removes "
                             "blocks too)")
    parser.add_argument("--trials", type=_positive("--trials", int), default=RunConfig.trials,
                        help="trials in the study")
    parser.add_argument("--timeout", type=_positive("--timeout", float), default=None,
                        help="stop starting new trials after this many seconds")
    parser.add_argument("--finetune-epochs", type=_fraction("--finetune-epochs", 0, 1000, False, True),
                        default=RunConfig.finetune_epochs, help="fine-tuning per trial, in epochs (fractions allowed)")
    parser.add_argument("--target-floor", type=_fraction("--target-floor", 0, 1, True, False),
                        default=RunConfig.target_floor,
                        help="each trial aims at a cost between this fraction of the budget and the budget (default "
                             "0.6; 1 aims every trial at the budget, for the most accurate model at that cost)")
    parser.add_argument("--final-epochs", type=_fraction("--final-epochs", 0, 1000, False, True),
                        default=RunConfig.final_epochs,
                        help="after the search, re-prune every Pareto model within budget and fine-tune it this many "
                             f"epochs; the pick is made on these (default {RunConfig.final_epochs:g}; 0: none)")
    parser.add_argument("--finalists", type=_count("--finalists"), default=RunConfig.finalists,
                        help="at most this many Pareto models get the final fine-tune, chosen by bisection toward the "
                             "cheapest one that meets epsilon after it (default 3; 0: every one within budget)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=RunConfig.sampler)
    parser.add_argument("--backend", choices=BACKENDS, default=RunConfig.backend)
    parser.add_argument("--address", default=None, help="Ray cluster address for --backend ray")
    parser.add_argument("--workers", type=_positive("--workers", int), default=None,
                        help="concurrent Ray trials (default: as many as the cluster's CPUs/GPUs fit)")
    parser.add_argument("--cpus-per-trial", type=_positive("--cpus-per-trial", float), default=None,
                        help="CPUs each Ray trial reserves; default 1")
    parser.add_argument("--gpus-per-trial", type=_fraction("--gpus-per-trial", 0, 64, False, False), default=None,
                        help="GPUs each Ray trial reserves; default 1 with --device cuda, else 0")
    parser.add_argument("--latency-on", metavar="RESOURCE", default=None,
                        help="measure latency as a Ray task on a node advertising this custom resource")
    parser.add_argument("--device", choices=DEVICES, default=RunConfig.device)
    parser.add_argument("--seed", type=_seed, default=RunConfig.seed,
                        help="seeds the dense model, the data split, the sampler and each trial; default 0")
    parser.add_argument("--out", type=Path, default=None, help="run folder; the same folder resumes the run "
                        "(default runs/<workload>-<timestamp>)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the workload's data files")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where trained dense models are cached")
    parser.add_argument("--batch-size", type=_positive("--batch-size", int), default=1, help="batch size for latency")
    parser.add_argument("--threads", type=_positive("--threads", int), default=None,
                        help="CPU threads for latency measurement (default: torch's)")
    parser.add_argument("--allow-weak-dense", action="store_true",
                        help="search a dense model whose validation accuracy is near chance (refused by default)")
    parser.add_argument("--no-sensitivity", dest="sensitivity", action="store_false",
                        help="skip the sensitivity map (each channel group pruned alone at 3 ratios and screened) "
                             "and the allocation it offers the search")
    parser.add_argument("--quantize", action="store_true",
                        help="also search int8 post-training quantisation of each pruned model (CPU, x86 kernels; "
                             "calibrated on training images); pairs with --cost size or latency")
    return parser


def parse_config(argv: list[str] | None = None) -> RunConfig:
    """Parse and validate the command line; raises ConfigError with a one-line message."""
    args = build_parser().parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in available_methods()]
    if not methods or unknown:
        raise ConfigError(f"--methods: unknown method {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(available_methods())}")
    if args.cost in ("params", "size") and any(get_method(m).dynamic for m in methods):
        raise ConfigError(f"--methods dynamic with --cost {args.cost}: early exits save work per input, not weights; "
                          "use --cost flops or --cost latency")
    if args.quantize and args.device != "cpu":
        raise ConfigError(f"--quantize with --device {args.device}: the int8 kernels run on the CPU; use --device cpu")
    ray_flags = {"--address": args.address, "--workers": args.workers, "--cpus-per-trial": args.cpus_per_trial,
                 "--gpus-per-trial": args.gpus_per_trial, "--latency-on": args.latency_on}
    given = [flag for flag, value in ray_flags.items() if value is not None]
    if args.backend == "optuna" and given:
        raise ConfigError(f"{given[0]} is for --backend ray; add --backend ray or drop {given[0]}")
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else float(args.device == "cuda")
    if (gpus > 0) != (args.device == "cuda") or (gpus > 1 and not gpus.is_integer()):
        raise ConfigError(f"--gpus-per-trial {gpus:g} does not fit --device {args.device}: give a value in (0, 1] "
                          "or a whole number with --device cuda, 0 with --device cpu")
    if args.latency_on is not None and not args.latency_on.strip():
        raise ConfigError("--latency-on needs the name of a Ray custom resource, e.g. --latency-on target_device")
    if args.latency_on is not None and any(get_method(m).dynamic for m in methods):
        raise ConfigError("--methods dynamic with --latency-on: a dynamic model's latency is a mean over a stream of "
                          "inputs, which the target does not time yet (it would time one input's path); drop one")
    if args.cost == "latency" and args.backend == "ray" and args.latency_on is None:
        raise ConfigError("--cost latency with --backend ray needs --latency-on RESOURCE: latency timed on busy "
                          "workers is not the target's; advertise a custom resource on the target node and name it")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch here; use --device cpu or run on a GPU "
                          "machine")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise ConfigError(f"--data-dir {args.data_dir} is not a readable directory; give the folder holding the data "
                          "files")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workload_slug = args.workload.replace(":", "-").replace(".", "-")
    out = args.out if args.out is not None else Path("runs") / f"{workload_slug}-{stamp}"
    check_writable_folder("--out", out)
    cache_dir = args.cache_dir or default_cache_dir()
    check_writable_folder("--cache-dir", cache_dir)
    return RunConfig(
        workload=args.workload, budget=args.budget, epsilon=args.epsilon, cost=args.cost, methods=methods,
        trials=args.trials, timeout=args.timeout, finetune_epochs=args.finetune_epochs,
        target_floor=args.target_floor, final_epochs=args.final_epochs, finalists=args.finalists or None,
        sampler=args.sampler,
        backend=args.backend, address=args.address, workers=args.workers,
        cpus_per_trial=args.cpus_per_trial or RunConfig.cpus_per_trial, gpus_per_trial=gpus, latency_on=args.latency_on,
        device=args.device, seed=args.seed,
        out=out, data_dir=args.data_dir, cache_dir=cache_dir,
        batch_size=args.batch_size, threads=args.threads, allow_weak_dense=args.allow_weak_dense,
        sensitivity=args.sensitivity, quantize=args.quantize,
    )


def check_writable_folder(flag: str, path: Path) -> None:
    """A folder the run can write to: an existing directory we may write in, or a missing one whose nearest existing
    parent is; checked before anything is trained or written, so a bad path costs nothing."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder; give a folder path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder; give a folder path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(f"{flag} {path}: cannot write in {existing} ({error.strerror}); "
                          "give a writable folder") from None
