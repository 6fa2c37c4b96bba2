"""Fault tolerance through the real CLI: kills at any moment, damaged checkpoints, stop signals."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from cifarlab.run.checkpoint import problem

from conftest import (
    KILL_IN_SAVE,
    SMALL,
    Background,
    assert_same_weights,
    check,
    crashed_copy,
    error_lines,
    in_process,
    launch_command,
    metrics,
    per_class,
    run_python,
    smoke,
)
from wandb_offline import find_run_files, read_history, read_run_id, wait_for_exit

pytestmark = pytest.mark.integration

# The session's SMALL reference keeps every checkpoint; these runs keep the last 3 (SMALL's schedule otherwise).
KEEP_3 = (*SMALL, "checkpoint.keep_last=3")
# What an exact resume reproduces: every evaluation value (the epoch's training loss and speed cover only the
# batches a resumed process ran).
EXACT = ("train/epoch", "step", "test/images", "test/acc", "test/loss")


def _python(tmp_path: Path, name: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "cifarlab.train", *smoke(tmp_path, name, *KEEP_3, *overrides)]


def _evals(run_dir: Path) -> list[list[object]]:
    return [[record[key] for key in EXACT] + [per_class(record)] for record in metrics(run_dir)]


@pytest.fixture
def uninterrupted(small_reference: Path) -> Path:
    """The session's SMALL run, trained in-process (conftest): what every interrupted SMALL run must end as."""
    return small_reference


def test_killed_three_times_then_resumed_matches_the_uninterrupted_run(tmp_path: Path, uninterrupted: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "runs" / "chain"
    latest = run_dir / "checkpoints" / "latest"

    # 1. SIGKILL mid-epoch 1, wherever the run is (possibly inside a save).
    first = Background(_python(tmp_path, "chain", "logging.wandb.mode=offline"), tmp_path, tmp_path / "1.log")
    first.wait_for(r"epoch 1 step 10/16")
    first.signal(signal.SIGKILL, tree=True)
    assert first.finish() == -signal.SIGKILL

    # 2. SIGKILL inside this process's second save, after Accelerate wrote its files.
    second = Background([sys.executable, KILL_IN_SAVE, "2", *_python(tmp_path, "chain", "logging.wandb.mode=offline",
                                                                     "train.resume=auto")[3:]],
                        tmp_path, tmp_path / "2.log")
    resumed_at = int(second.wait_for(r"resumed from \S+: epoch 1, step (\d+)").group(1))
    assert 4 <= resumed_at <= 12
    assert second.finish() == -signal.SIGKILL
    half_written = [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-step_")]
    assert len(half_written) == 1  # the killed save never became a checkpoint ...
    published = latest.read_text()
    assert int(published.removeprefix("step_")) == resumed_at + 4  # ... latest is the save before it
    assert problem(run_dir / "checkpoints" / published) is None

    # 3. SIGTERM mid-epoch 2: a graceful stop with a checkpoint at the step it stopped, exit code 75.
    third = Background(_python(tmp_path, "chain", "logging.wandb.mode=offline", "train.resume=auto"),
                       tmp_path, tmp_path / "3.log")
    third.wait_for(r"epoch 2 step 6/16")
    third.signal(signal.SIGTERM)
    assert third.finish() == 75
    stopped_at = int(third.wait_for(r"stopped on SIGTERM at step \d+: checkpoint \S+step_(\d+) saved").group(1))
    assert latest.read_text() == f"step_{stopped_at:08d}"

    # 4. Finish (in this process: nothing to interrupt).
    last = check(in_process(smoke(tmp_path, "chain", *KEEP_3, "logging.wandb.mode=offline", "train.resume=auto"),
                            capsys))
    assert f"epoch 2, step {stopped_at}" in last.stdout
    assert_same_weights(uninterrupted / "model.safetensors", run_dir / "model.safetensors")
    assert _evals(run_dir) == _evals(uninterrupted)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")]

    # One W&B run across the four processes, never logging a step below one already logged. (SIGKILL
    # also takes W&B's writer down before it flushes: the killed sessions' files may hold nothing.)
    files = find_run_files(run_dir / "wandb")
    assert len(files) == 4
    wait_for_exit(files[-1])  # the last start's: wandb-core closes it after the in-process run has returned
    assert {f.parent.name.rsplit("-", 1)[1] for f in files} == {read_run_id(files[-1])}
    highest = -1
    for file in files:
        steps = [row["_step"] for row in read_history(file)]
        assert all(step >= highest for step in steps)
        highest = max(steps, default=highest)
    assert highest == 32
    expected = {record["step"]: record["test/acc"] for record in metrics(uninterrupted)}
    evals = {row["_step"]: row["test/acc"] for f in files for row in read_history(f) if "test/acc" in row}
    assert 32 in evals and all(evals[step] == expected[step] for step in evals)


def test_damaged_checkpoints_are_detected(tmp_path: Path, uninterrupted: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = crashed_copy(uninterrupted, tmp_path / "runs" / "damaged", "step_00000032")
    last = run_dir / "checkpoints" / "step_00000032"
    optimizer = last / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # a truncated copy

    explicit = in_process(smoke(tmp_path, "other", *KEEP_3, f"train.resume={last}"), capsys)
    assert explicit.returncode == 2
    (line,) = error_lines(explicit.stderr)
    assert f"train.resume={last}: this checkpoint is damaged (optimizer.bin has 100 bytes" in line

    # auto says so in one line and falls back to the newest intact checkpoint, losing nothing else.
    fallback = check(in_process(smoke(tmp_path, "damaged", *KEEP_3, "train.resume=auto"), capsys))
    warnings = [line for line in fallback.stderr.splitlines() if line.startswith("cifarlab: warning:")]
    assert warnings == [f"cifarlab: warning: checkpoint {last} is damaged (optimizer.bin has 100 bytes, expected "
                        f"{(uninterrupted / 'checkpoints/step_00000032/optimizer.bin').stat().st_size}); "
                        f"falling back to an older one"]
    assert "resumed from" in fallback.stdout and "step_00000028" in fallback.stdout
    assert_same_weights(uninterrupted / "model.safetensors", run_dir / "model.safetensors")

    (run_dir / "checkpoints" / "step_00000024" / "manifest.json").unlink()
    assert problem(run_dir / "checkpoints" / "step_00000024") == "no manifest.json"


def test_retention_keeps_best_and_the_resumed_checkpoint_and_a_subprocess_run_is_the_in_process_reference(
        tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The uninterrupted run as `python -m cifarlab.train` runs it, keeping the last 3 checkpoints. It also proves
    # what every test comparing a subprocess run with the session's in-process references relies on: 1 CPU
    # process, the same config and seed, and the two are bitwise one run.
    check(run_python(smoke(tmp_path, "kept", *KEEP_3), tmp_path))
    run_dir = tmp_path / "runs" / "kept"
    assert_same_weights(uninterrupted / "model.safetensors", run_dir / "model.safetensors")
    assert _evals(run_dir) == _evals(uninterrupted)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best", "latest", "step_00000024", "step_00000028", "step_00000032"]
    best = run_dir / "checkpoints" / "best"
    assert problem(best) is None
    records = metrics(run_dir)
    best_epoch = max(records, key=lambda r: r["test/acc"])["train/epoch"]
    state = json.loads((best / "trainer_state.json").read_text())
    assert state["best_epoch"] == best_epoch and state["epoch"] == best_epoch

    run_dir = crashed_copy(uninterrupted, tmp_path / "runs" / "resumed", "step_00000024")
    check(in_process(smoke(tmp_path, "resumed", *KEEP_3, "train.resume=auto", "checkpoint.keep_last=1"), capsys))
    left = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert left == ["best", "latest", "step_00000024", "step_00000032"]  # 24: resumed from, never pruned


def test_sigusr1_reaches_the_trainer_through_the_accelerate_agent(tmp_path: Path, uninterrupted: Path) -> None:
    # Without SIGUSR1 in PET_SIGNALS_TO_HANDLE, torchrun's agent dies of it and the trainer never hears of it.
    bare = Background([*launch_command(2), *smoke(tmp_path, "bare", *KEEP_3)], tmp_path, tmp_path / "bare.log",
                      PET_SIGNALS_TO_HANDLE="SIGTERM,SIGINT,SIGHUP,SIGQUIT")
    bare.wait_for(r"epoch 1 step 6/16")
    workers = bare.descendants()
    bare.signal(signal.SIGUSR1)
    assert bare.finish() == -signal.SIGUSR1
    # The workers never hear of SIGUSR1, but their agent's death: each gets SIGTERM from the kernel and stops
    # with a checkpoint instead of training on as an orphan.
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in workers):
        assert time.monotonic() < deadline, "workers left running"
        time.sleep(0.1)
    assert re.search(r"stopped on SIGTERM at step \d+: checkpoint", bare.output()), bare.output()[-2000:]
    assert "stopped on SIGUSR1" not in bare.output()

    handled = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    run = Background([*launch_command(2), *smoke(tmp_path, "agent", *KEEP_3)], tmp_path, tmp_path / "agent.log",
                     PET_SIGNALS_TO_HANDLE=handled)
    run.wait_for(r"epoch 1 step 6/16")
    run.signal(signal.SIGUSR1)  # the agent only: it must pass the signal on
    assert run.finish() != 0
    step = int(run.wait_for(r"stopped on SIGUSR1 at step \d+: checkpoint \S+step_(\d+) saved").group(1))
    saved = tmp_path / "runs" / "agent" / "checkpoints" / f"step_{step:08d}"
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["global_step"] == step  # both ranks stopped at this step and wrote their RNG state:
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(manifest["files"])
    assert (tmp_path / "runs" / "agent" / "checkpoints" / "latest").read_text() == saved.name

    resumed = Background([*launch_command(2), *smoke(tmp_path, "agent", *KEEP_3, "train.resume=auto")], tmp_path,
                         tmp_path / "resumed.log")
    assert resumed.finish() == 0, resumed.output()[-2000:]
    assert f"step {step}" in resumed.output()
    assert_same_weights(uninterrupted / "model.safetensors", tmp_path / "runs" / "agent" / "model.safetensors",
                        atol=1e-6)


def test_two_processes_killed_mid_epoch_and_mid_save_then_resumed(tmp_path: Path, uninterrupted: Path) -> None:
    command = [*launch_command(2), *smoke(tmp_path, "two", *KEEP_3, "train.resume=auto")]
    killed = Background(command, tmp_path, tmp_path / "1.log")
    killed.wait_for(r"epoch 1 step 7/16")
    killed.signal(signal.SIGKILL, tree=True)  # launcher and both ranks, wherever they are
    killed.finish()
    # Rank 0 dies inside its first save, after every rank wrote its files; the agent takes rank 1 down.
    in_save = Background([*launch_command(2, KILL_IN_SAVE), "1", *smoke(tmp_path, "two", *KEEP_3, "train.resume=auto")],
                         tmp_path, tmp_path / "2.log")
    assert in_save.finish() != 0
    checkpoints = tmp_path / "runs" / "two" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp-step_")]
    finished = Background(command, tmp_path, tmp_path / "3.log")
    assert finished.finish() == 0, finished.output()[-2000:]
    assert "2 process(es)" in finished.output() and "resumed from" in finished.output()
    assert_same_weights(uninterrupted / "model.safetensors", tmp_path / "runs" / "two" / "model.safetensors",
                        atol=1e-6)
    for got, want in zip(metrics(tmp_path / "runs" / "two"), metrics(uninterrupted), strict=True):
        assert (got["train/epoch"], got["step"], got["test/images"]) == (want["train/epoch"], want["step"], 100)
        assert got["test/loss"] == pytest.approx(want["test/loss"], abs=1e-5)
