"""Bad input exits 2 with one line naming the flag and the fix, never a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from search.config import ConfigError, parse_config
from tests.conftest import run_cli

BAD_FLAGS = [
    (["--budget", "0"], "--budget"),
    (["--budget", "1.5"], "--budget"),
    (["--budget", "abc"], "--budget"),
    (["--epsilon", "-1"], "--epsilon"),
    (["--methods", "magnitude,bogus"], "bogus"),
    (["--sampler", "bayes"], "--sampler"),
    (["--cost", "energy"], "--cost"),
    (["--trials", "0"], "--trials"),
    (["--data-dir", "/no/such/dir"], "--data-dir"),
    (["--budget", "0.01"], "--budget"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2 ** 32)], "--seed"),
    (["--cost", "latency", "--backend", "ray"], "--latency-on"),
    (["--methods", "dynamic", "--backend", "ray", "--latency-on", "target_device"], "--latency-on"),
    (["--out", "/proc/prune-search-test/run"], "--out"),
    (["--cache-dir", "/proc/prune-search-test"], "--cache-dir"),
]
BAD_WORKLOADS = [
    (["--workload", "no-such-workload"], "no-such-workload"),
    (["--workload", "no_such_module:build"], "no_such_module"),
    (["--workload", "json:no_such_function"], "no_such_function"),
    (["--workload", "tests.user_workloads:raising"], "failed to build"),
    (["--workload", "tests.user_workloads:model_is_not_a_module"], "not a torch.nn.Module"),
    (["--workload", "tests.user_workloads:scores_are_not_logits"], "(batch, classes)"),
    (["--workload", "tests.user_workloads:untrained"], "near chance"),
]


@pytest.mark.parametrize("argv, named", BAD_FLAGS)
def test_bad_flags_raise_one_line_naming_the_offender(argv: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(argv)
    message = str(caught.value)
    assert named in message and "\n" not in message


def test_defaults_are_the_documented_main_job() -> None:
    config = parse_config([])
    assert (config.workload, config.budget, config.epsilon, config.cost, config.sampler, config.backend) == \
        ("fashion-resnet20", 0.5, 0.01, "flops", "tpe", "optuna")
    assert config.out.parent == Path("runs") and config.out.name.startswith("fashion-resnet20-")


@pytest.mark.parametrize("argv, named", BAD_FLAGS[::3] + BAD_WORKLOADS)
def test_cli_exits_2_with_one_line_and_leaves_no_run_folder(argv: list[str], named: str, run_main, tmp_path: Path
                                                              ) -> None:
    out = [] if "--out" in argv else ["--out", str(tmp_path / "run")]
    code, stderr = run_main([*argv, *out])  # an uncaught exception (a traceback in a shell) fails the test here
    assert code == 2
    errors = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0], stderr
    assert not (tmp_path / "run").exists()


def test_the_entry_point_exits_2_with_one_line_and_no_traceback(cache_dir: Path, tmp_path: Path) -> None:
    result = run_cli(["--workload", "tests.user_workloads:raising", "--out", str(tmp_path / "run")], cache_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "failed to build" in errors[0], result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: --device cuda is valid")
def test_cuda_without_a_gpu_is_refused_before_anything_is_written(run_main, tmp_path: Path) -> None:
    code, stderr = run_main(["--workload", "digits-cnn", "--device", "cuda", "--out", str(tmp_path / "run")])
    assert code == 2 and "--device cuda" in stderr
    assert not (tmp_path / "run").exists()


def test_out_or_cache_dir_naming_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("mine")
    for flag in ("--out", "--cache-dir"):
        with pytest.raises(ConfigError, match=f"^{flag} .* is a file"):
            parse_config([flag, str(file)])
        with pytest.raises(ConfigError, match=f"^{flag} .* is a file"):
            parse_config([flag, str(file / "below")])
    assert file.read_text() == "mine"


def test_a_near_chance_dense_model_is_searched_only_when_allowed(cache_dir: Path, tmp_path: Path) -> None:
    result = run_cli(["--workload", "tests.user_workloads:untrained", "--allow-weak-dense", "--trials", "1",
                      "--finetune-epochs", "0.2", "--final-epochs", "0", "--out", str(tmp_path / "run")], cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "near chance" in result.stderr and "--allow-weak-dense" in result.stderr
