"""What a person sees: one progress bar and table per epoch in a 2-process run, plain lines off a
terminal, nothing but warnings with --quiet."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import check, cli_env, launch_command, run_cli, run_python, smoke

pytestmark = pytest.mark.integration


def test_two_process_run_prints_once_in_plain_lines_off_a_terminal(tmp_path: Path) -> None:
    result = check(run_cli(smoke(tmp_path, "plain"), tmp_path, processes=2))
    out = result.stdout
    assert out.count("resolved config") == 1 and out.count("done in") == 1
    assert out.count("┏") == 2  # one per-class table per epoch, from the main process only
    assert out.count("change") == 1  # the second table shows the change since the first
    assert "epoch 1 step 4/8 loss" in out  # periodic plain lines instead of a bar
    assert "\r" not in out and "\x1b[" not in out  # no control characters in logs


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a pseudo-terminal")
def test_a_terminal_gets_a_progress_bar_per_epoch(tmp_path: Path) -> None:
    command = shlex.join([*launch_command(2), *smoke(tmp_path, "tty")])
    result = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=tmp_path, env=cli_env(COLUMNS="150"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    out = result.stdout
    assert "8/8" in out and "epoch 1/2" in out and "epoch 2/2" in out  # the bars, run to the end
    assert "epoch 1 step 4/8 loss" not in out  # the bar replaces the plain lines
    assert out.count("┏") == 2 and out.count("done in") == 1


def test_quiet_prints_nothing_but_keeps_errors(tmp_path: Path) -> None:
    quiet = check(run_python([*smoke(tmp_path, "quiet"), "--quiet"], tmp_path))
    assert quiet.stdout == ""
    assert (tmp_path / "runs" / "quiet" / "model.safetensors").is_file()
    failing = run_python([*smoke(tmp_path, "quiet"), "--quiet"], tmp_path)  # the run exists already
    assert failing.returncode == 2 and "already holds a run" in failing.stderr
