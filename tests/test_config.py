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
]
BAD_WORKLOADS = [
    (["--workload", "no-such-workload"], "no-such-workload"),
    (["--workload", "no_such_module:build"], "no_such_module"),
    (["--workload", "json:no_such_function"], "no_such_function"),
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
def test_cli_exits_2_with_one_line(argv: list[str], named: str, cache_dir: Path, tmp_path: Path) -> None:
    result = run_cli([*argv, "--out", str(tmp_path / "run")], cache_dir, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr
