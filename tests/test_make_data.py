"""`make data` installs Fashion-MNIST as root, or through sudo only when sudo needs no password; it never prompts."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make, as the README's commands do")


def fake_tools(folder: Path, uid: int, sudo_without_password: bool) -> Path:
    """`id`, `sudo` and `apt-get` stand-ins that log how they were called."""
    folder.mkdir()
    log = folder / "calls.log"
    scripts = {
        "id": f'echo {uid}',
        "sudo": f'echo "sudo $*" >> {log}; if [ "$1" = "-n" ] && [ "$2" = "true" ]; then exit '
                f'{0 if sudo_without_password else 1}; fi; shift; "$@"',
        "apt-get": f'echo "apt-get $*" >> {log}',
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return log


def make_data(tools: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    return subprocess.run(["make", "-s", "data", f"FASHION_DIR={tmp_path / 'missing'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_without_passwordless_sudo_it_says_how_and_prompts_nothing(tmp_path: Path) -> None:
    log = fake_tools(tmp_path / "bin", uid=1000, sudo_without_password=False)
    result = make_data(tmp_path / "bin", tmp_path)
    assert result.returncode == 0 and "sudo apt-get install dataset-fashion-mnist" in result.stdout
    assert log.read_text().splitlines() == ["sudo -n true"]  # asked non-interactively, then nothing installed


def test_with_passwordless_sudo_or_as_root_it_installs(tmp_path: Path) -> None:
    log = fake_tools(tmp_path / "bin", uid=1000, sudo_without_password=True)
    assert make_data(tmp_path / "bin", tmp_path).returncode == 0
    calls = log.read_text().splitlines()
    assert "sudo -n apt-get install -y -qq dataset-fashion-mnist" in calls
    assert all(c.startswith("sudo -n ") for c in calls if c.startswith("sudo"))
    root_log = fake_tools(tmp_path / "root-bin", uid=0, sudo_without_password=False)
    assert make_data(tmp_path / "root-bin", tmp_path).returncode == 0
    assert not any(c.startswith("sudo") for c in root_log.read_text().splitlines())
    assert "apt-get install -y -qq dataset-fashion-mnist" in root_log.read_text()
