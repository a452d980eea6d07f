"""Nothing lost, nothing mixed: resume refuses other settings, the final stage cannot cost the report, trials repeat
whatever ran before them, and a user's workload built the usual way (DataLoaders, torchvision) runs."""
from __future__ import annotations

import copy
import json
import sqlite3
import threading
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from pruners import prune
from search.baselines import baseline_points
from search.config import parse_config
from search.export import main as export_main
from search.pipeline import finish, prepare, run_backend
from search.study import open_study
from search.training import train
from search.trial import calibration_options, evaluate_point
from search.workloads import Workload, build_workload
from tests.conftest import run_cli

QUICK = ["--workload", "digits-cnn", "--budget", "0.5", "--threads", "1", "--finetune-epochs", "0.5",
         "--final-epochs", "0"]
VOLATILE = {"seconds", "screen_seconds", "latency_ms", "latency_p90_ms", "dense_latency_ms", "latency_ratio",
            "predicted_latency_ratio"}  # timings: the only trial metrics allowed to differ between equal runs


def study_of(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="search", storage=f"sqlite:///{run / 'study.db'}")


def trial_metrics(run: Path) -> list[dict]:
    return [{key: value for key, value in t.user_attrs.items() if key not in VOLATILE} | {"state": t.state.name}
            for t in study_of(run).trials]


@pytest.fixture(scope="module")
def short_run(cache_dir: Path, digits: Workload, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reliability") / "run"
    result = run_cli([*QUICK, "--trials", "3", "--out", str(out)], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


CHANGED_SETTINGS = [(["--seed", "1"], "--seed"), (["--finetune-epochs", "0.25"], "--finetune-epochs"),
                    (["--methods", "channel,magnitude"], "--methods"), (["--target-floor", "0.9"], "--target-floor"),
                    (["--batch-size", "4"], "--batch-size")]


@pytest.mark.parametrize("change, flag", CHANGED_SETTINGS)
def test_resume_with_a_changed_setting_is_refused_naming_it(short_run: Path, run_main, change: list[str],
                                                           flag: str) -> None:
    before = trial_metrics(short_run)
    code, stderr = run_main([*QUICK, *change, "--trials", "4", "--out", str(short_run)])
    assert code == 2, stderr[-2000:]
    assert flag in stderr
    assert trial_metrics(short_run) == before  # nothing ran, nothing was rewritten


def test_resume_of_another_dense_model_is_refused(short_run: Path, cache_dir: Path, tmp_path: Path) -> None:
    copied = tmp_path / "copy"
    copied.mkdir()
    (copied / "study.db").write_bytes((short_run / "study.db").read_bytes())
    study = study_of(copied)
    study.set_user_attr("dense", {**study.user_attrs["dense"], "fingerprint": "0123456789abcdef"})
    result = run_cli([*QUICK, "--trials", "4", "--out", str(copied)], cache_dir)
    assert result.returncode == 2 and "another dense digits-cnn" in result.stderr, result.stderr[-2000:]


def test_a_corrupt_study_is_a_one_line_error_and_stays_as_it_was(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "study.db").write_bytes(b"not a database, just bytes" * 40)
    result = run_cli([*QUICK, "--trials", "1", "--out", str(out)], cache_dir)
    assert result.returncode == 2 and "study.db is not a readable study" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (out / "study.db").read_bytes() == b"not a database, just bytes" * 40


class NaNBatches:
    """Training batches whose inputs are NaN: any fine-tune on them hits a non-finite loss."""

    def __init__(self, loader) -> None:  # noqa: ANN001 - any iterable of batches
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):  # noqa: ANN204
        for inputs, labels in self.loader:
            yield torch.full_like(inputs, float("nan")), labels


def test_study_db_is_never_seen_half_made(tmp_path: Path) -> None:
    """A reader opening study.db while Optuna creates its tables made the run fail ("table studies already exists");
    the file must appear whole, with Optuna's schema version, or not at all."""
    config = parse_config([*QUICK, "--out", str(tmp_path / "run")])
    half_made: list[str] = []
    done = threading.Event()

    def watch(path: Path) -> None:
        while not done.is_set():
            if path.exists():
                try:
                    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                        if not db.execute("SELECT version_num FROM alembic_version").fetchall():
                            half_made.append("no schema version")
                except sqlite3.OperationalError as error:
                    half_made.append(str(error))
    for attempt in range(3):
        run_dir = tmp_path / f"run{attempt}"
        done.clear()
        watcher = threading.Thread(target=watch, args=(run_dir / "study.db",))
        watcher.start()
        try:
            open_study(config, run_dir)
        finally:
            done.set()
            watcher.join()
    assert not half_made, half_made[:3]


def test_an_error_in_the_final_stage_still_writes_the_report(digits: Workload, tmp_path: Path) -> None:
    config = parse_config([*QUICK[:-2], "--trials", "3", "--final-epochs", "1", "--out", str(tmp_path / "run")])
    workload = copy.copy(digits)
    study, ctx = prepare(config, workload)
    run_backend(study, ctx)
    workload.train = NaNBatches(digits.train)  # the search is done; the final fine-tune will see NaN losses
    pareto = finish(study, ctx, show=False)
    assert "FloatingPointError" in pareto["final_stage_errors"]["final fine-tune"]
    assert (ctx.run_dir / "report.html").is_file() and (ctx.run_dir / "pareto.json").is_file()
    assert "final stage: final fine-tune" in (ctx.run_dir / "report.md").read_text()
    assert pareto["pareto"] and all(m["test_accuracy"] is not None for m in pareto["pareto"])  # later steps ran


def test_a_point_gives_the_same_metrics_whatever_ran_before_it(digits: Workload, tmp_path: Path) -> None:
    config = parse_config([*QUICK, "--trials", "1", "--out", str(tmp_path / "run")])
    _, ctx = prepare(config, digits)
    points = list(baseline_points(ctx.space).values())
    first = evaluate_point(ctx, points[0], 0)
    evaluate_point(ctx, points[1], 1)  # another fine-tune in between draws from every generator
    again = evaluate_point(ctx, points[0], 2)
    for key in ("accuracy", "accuracy_after_finetune", "flops", "params"):
        assert again[key] == first[key], key


def test_two_runs_with_the_same_seed_record_the_same_trials(short_run: Path, cache_dir: Path, tmp_path: Path) -> None:
    result = run_cli([*QUICK, "--trials", "3", "--out", str(tmp_path / "twin")], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert trial_metrics(tmp_path / "twin") == trial_metrics(short_run)


@pytest.fixture(scope="module")
def mobilenet() -> Workload:
    return build_workload("tests.user_workloads:mobilenet_dataloaders", seed=0, cache_dir=Path("unused"),
                          data_dir=None, device="cpu")


@pytest.mark.slow(reason="MobileNetV3-small trains, about 20 s")
def test_taylor_ranks_with_a_dataloader_batch_on_a_torchvision_model(mobilenet: Workload) -> None:
    extra = calibration_options(mobilenet, "channel", "taylor", {})
    assert isinstance(extra["calibration"], list)  # a DataLoader batch, as the user's loader yields it
    pruned = prune(mobilenet.model, mobilenet.example_inputs, method="channel", sparsity=0.3, criterion="taylor",
                   **extra)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in mobilenet.model.parameters())


@pytest.mark.slow(reason="MobileNetV3-small trains and searches, about 2.5 minutes")
def test_a_user_workload_with_dataloaders_and_a_torchvision_model_searches(mobilenet: Workload, run_main,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "run"
    # --no-sensitivity: the map would prune each of MobileNetV3's many groups three times (85 s of the suite's time);
    # in process, the workload reuses the fixture's training
    code, stderr = run_main(["--workload", "tests.user_workloads:mobilenet_dataloaders", "--trials", "3", "--threads",
                             "1", "--finetune-epochs", "0.3", "--final-epochs", "0", "--no-sensitivity", "--out",
                             str(out)])
    assert code == 0, stderr[-3000:]
    trials = study_of(out).trials
    assert not [t.user_attrs.get("failure") for t in trials if t.state == TrialState.FAIL]
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["trials"]["complete"] >= 1
    # the torchvision model ships: each format written only after its outputs matched the pruned model's
    assert export_main([str(out), "--trial", str(pareto["pareto"][0]["trial"]), "--format", "all"]) == 0
    assert len(list((out / "export").iterdir())) == 4  # onnx, pt2, state_dict and its policy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the teacher moves between devices")
def test_the_teacher_goes_back_to_its_device_after_a_distilled_fine_tune(digits: Workload) -> None:
    teacher = digits.model
    student = prune(teacher, digits.example_inputs, method="channel", sparsity=0.5)
    train(student, digits.train, epochs=0.1, lr=0.01, device="cuda", teacher=teacher)
    assert next(teacher.parameters()).device.type == "cpu"
