"""`python -m search.replay RUN_DIR`: a stream through a dynamic pick's runtime, its cost and loss per window.

The pick is read from RUN_DIR/best (weights and exits files, loaded with weights_only=True) with its runtime
settings (best/runtime.json); `--trial N` replays another dynamic trial, with the settings a pick would get. Settings
without a starting scale (a search's) are calibrated on the validation split first (DynamicRuntime.calibrate).
The stream: test images in order, the first --clean of them as they are, then Gaussian noise whose standard
deviation grows linearly to --noise (in the inputs' normalised units); each label arrives after its answer.
Per window the runtime logs its mean cost (a ratio to the dense model's FLOPs, dense checks included) and the loss
it learnt from its checks (disagreement with dense, or with --loss accuracy the accuracy lost against dense); the
replay adds that loss over every input, which the runtime itself never sees, and the worst over sliding windows.
With --fit-checks the runtime's checks are first fitted on a validation stream (search.stream_replay.fit_checks:
the cheapest of its grid that holds the budget there), so the test stream measures them on inputs the fit never saw.
Writes RUN_DIR/replay/replay.json and replay.html.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dynamic import EarlyExitModel
from dynamic.runtime import LOSSES, DynamicRuntime
from reports import ReportError, load_records
from reports.atomic import write_text
from reports.best import BEST_RUNTIME, runtime_settings
from reports.plots import replay_figure
from search.measure import count_flops
from search.model_files import load_pruned
from search.run import configure_logging
from search.stream_replay import fit_checks, mean_cost, noisy_stream, replay, worst_window
from search.study import storage_url
from search.workloads import WorkloadError, run_workload

log = logging.getLogger("search.replay")


class ReplayError(ValueError):
    """The run folder has nothing to replay; the message says what to do."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m search.replay", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder whose pick (best/) is dynamic")
    parser.add_argument("--trial", type=int, default=None, help="a dynamic trial to replay (default: the pick)")
    parser.add_argument("--length", type=int, default=6000, help="inputs in the stream")
    parser.add_argument("--clean", type=int, default=None, help="inputs before the noise starts (default: half)")
    parser.add_argument("--noise", type=float, default=1.0, help="standard deviation of the noise at the stream's end")
    parser.add_argument("--window", type=int, default=1000,
                        help="inputs per logged window, and per sliding window of the worst loss")
    parser.add_argument("--warmup", type=int, default=None,
                        help="inputs before the worst loss is counted (default: 200, or a tenth of a shorter stream)")
    parser.add_argument("--epsilon", type=float, default=None, help="the loss budget (default: the run's)")
    parser.add_argument("--loss", choices=list(LOSSES), default=None,
                        help="the loss the runtime holds within epsilon: disagreement with dense, or accuracy lost "
                             "against dense from labels (default: the saved runtime's)")
    parser.add_argument("--sample-rate", type=float, default=None,
                        help="share of inputs checked against the dense model (default: the saved runtime's)")
    parser.add_argument("--max-scale", type=float, default=None,
                        help="how far the runtime may loosen the exits' thresholds, as a multiple of the search's "
                             "(default: the saved runtime's)")
    parser.add_argument("--margin", type=float, default=None,
                        help="the loss the runtime aims at, as a share of epsilon (default: the saved runtime's)")
    parser.add_argument("--unsure-checks", type=float, default=None,
                        help="extra chance of a check for an unsure answer, times one minus its confidence (default: "
                             "the saved runtime's)")
    parser.add_argument("--alarm-checks", type=float, default=None,
                        help="extra share of inputs checked after each loss, decaying (default: the saved runtime's)")
    parser.add_argument("--fit-checks", action="store_true",
                        help="fit the checks (sample rate, unsure and alarm checks) on a validation stream first: the "
                             "cheapest that hold the budget there, for this loss; flags that set them win")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and of the runtime's sampling")
    args = parser.parse_args(argv)
    args.clean = args.length // 2 if args.clean is None else args.clean
    args.warmup = min(200, args.length // 10) if args.warmup is None else args.warmup
    if args.max_scale is not None and not args.max_scale > 0:
        raise ReplayError(f"--max-scale {args.max_scale}: it multiplies the search's distance from certainty, so it "
                          "must be above 0 (1 keeps the search's thresholds at most)")
    if (args.length < 1 or not 0 <= args.clean <= args.length or args.window < 1 or args.noise < 0
            or not 0 <= args.warmup < args.length):
        raise ReplayError(f"--length {args.length}, --clean {args.clean}, --window {args.window}, --noise "
                          f"{args.noise}, --warmup {args.warmup}: need length >= 1, 0 <= clean <= length, "
                          "window >= 1, noise >= 0, 0 <= warmup < length")
    return args


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        args = parse_args(argv)
        result = run_replay(args)
    except (ReplayError, ReportError, WorkloadError, FileNotFoundError) as error:  # ModelFileError: a ReportError
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.run_dir / "replay"
    write_text(out / "replay.json", json.dumps(result, indent=2))
    figure = replay_figure(result["windows"], result["settings"]["epsilon"], result["static_cost"],
                           result["settings"]["loss"], result["static_pick_cost"])
    write_text(out / "replay.html", figure.to_html(include_plotlyjs="cdn"))
    clean = "" if result["clean_cost"] is None else f", {result['clean_cost']:.3f} on the clean part"
    if result["fitted_checks"] is not None:
        kept = result["fitted_checks"]["settings"]
        print("checks fitted on validation: " + ", ".join(f"{k} {v:g}" for k, v in kept.items()))
    pick_cost = result["static_pick_cost"]
    at_budget = "" if pick_cost is None else f", a static model at the budget {pick_cost:g}"
    print(f"replayed {args.length} inputs: mean cost {result['mean_cost']:.3f} of dense{clean} (static backbone "
          f"{result['static_cost']:.3f}{at_budget}); worst loss over {args.window} inputs after {args.warmup}: "
          f"{result['worst_loss']:.4f} (epsilon {result['settings']['epsilon']:.4f}) -> {out}/replay.html")
    return 0


def run_replay(args: argparse.Namespace) -> dict:
    """Load the run's dynamic pick and its runtime, replay the stream; replay.json's dict."""
    if not (args.run_dir / "study.db").is_file():
        raise ReplayError(f"{args.run_dir} holds no study.db: give the folder of a `python -m search.run` run")
    records = load_records(storage_url(args.run_dir))
    workload = run_workload(records.info.config)
    overrides = {k: v for k, v in {"epsilon": args.epsilon, "sample_rate": args.sample_rate, "loss": args.loss,
                                   "max_scale": args.max_scale, "margin": args.margin,
                                   "unsure_checks": args.unsure_checks, "alarm_checks": args.alarm_checks}.items()
                 if v is not None}
    if args.trial is None:
        saved_path = args.run_dir / "best" / BEST_RUNTIME
        if not saved_path.is_file():
            raise ReplayError(f"{saved_path} is missing: the pick of {args.run_dir} is not dynamic; give a dynamic "
                              "trial with --trial N, or search with --methods dynamic (or dynamic,channel)")
        model = load_pruned(args.run_dir, "best/model.pt", workload.model)
        saved = json.loads(saved_path.read_text())
    else:
        record = next((r for r in records.trials if r.number == args.trial and r.is_complete), None)
        saved = None if record is None else runtime_settings(record, records.info.epsilon)
        if record is None or saved is None or not record.model_path:
            raise ReplayError(f"--trial {args.trial}: no complete dynamic trial of that number in {args.run_dir}")
        model = load_pruned(args.run_dir, record.model_path, workload.model)
    if not isinstance(model, EarlyExitModel):
        raise ReplayError(f"{args.run_dir}: the model holds no exits to adapt")
    settings = {**saved, **overrides}
    fitted = None
    try:
        if args.fit_checks:
            log.info("fitting the runtime's checks on a validation stream (%s loss)", settings.get("loss", "default"))
            fitted = fit_checks(model, workload.model, settings, workload.val, fixed=overrides)
            settings = {**settings, **fitted.settings, **overrides}
        runtime = DynamicRuntime(model, workload.model, **{**settings, "window": args.window, "seed": args.seed})
        stream = noisy_stream(workload.test, args.length, args.clean, args.noise, args.seed)
    except ValueError as error:  # a setting the runtime cannot serve with, from the command line; an empty split
        raise ReplayError(str(error)) from error
    if "scale" not in saved:  # a search's settings: start where the validation split says the budget holds
        runtime.calibrate(workload.val)
    dense_flops = count_flops(workload.model, workload.example_inputs)
    static_cost = count_flops(model.backbone, workload.example_inputs) / dense_flops
    windows, losses = replay(runtime, stream)
    clean = [w for w in windows if w["start"] + w["inputs"] <= args.clean]
    info = records.info  # a static model at a FLOPs budget costs at most the budget on every input
    return {"settings": runtime.settings(), "static_cost": static_cost,
            "static_pick_cost": info.budget if info.cost_metric == "flops" else None,
            "stream": {"split": "test", "length": args.length, "clean": args.clean, "noise": args.noise,
                       "seed": args.seed, "warmup": args.warmup},
            "mean_cost": mean_cost(windows), "clean_cost": mean_cost(clean) if clean else None,
            "worst_loss": worst_window(losses, args.window, args.warmup), "windows": windows,
            "fitted_checks": None if fitted is None else fitted.as_dict()}


if __name__ == "__main__":
    sys.exit(main())
