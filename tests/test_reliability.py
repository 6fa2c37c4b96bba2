"""Faults people actually hit, through the real CLI: two trainers on one run directory, a launcher that dies,
Ctrl-C, resuming with another config, unsafe checkpoints, a full disk, a loss that is not finite, bad paths. What
needs no process of its own (refusals, failures, resumes) runs the command's main(argv) in this process."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from cifarlab.errors import Aborted, Interrupted, Preempted
from cifarlab.run.checkpoint import problem
from cifarlab.run.preemption import StopRequest
from cifarlab.run.rundir import RunDir

from conftest import (
    CONFIGS,
    SMALL,
    Background,
    assert_same_weights,
    check,
    crashed_copy,
    error_lines,
    in_process,
    launch_command,
    records,
    smoke,
)
from wandb_offline import find_run_files, read_config, read_records, wait_for_exit

pytestmark = pytest.mark.integration


def _python(tmp_path: Path, name: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "cifarlab.train", *smoke(tmp_path, name, *overrides)]


def _one_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The run exited with ``code`` after printing exactly one error line (no traceback) holding ``fragments``."""
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.fixture
def reference(small_reference: Path) -> Path:
    """The session's SMALL run (conftest, trained in-process): what every interrupted one must end as."""
    return small_reference


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def _wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pids), f"trainers still running: {_alive(pids)}"


# --- 1. one trainer per run directory -----------------------------------------------------------------------

def test_a_second_trainer_on_a_busy_run_directory_is_refused_and_writes_nothing(
        tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = Background(_python(tmp_path, "busy", *SMALL), tmp_path, tmp_path / "first.log")
    first.wait_for(r"epoch 1 step 2/16")
    # Paused mid-run, holding its lock: the second start cannot come after the first has finished, however slow the
    # machine. (The second starts in this process: a refusal needs no process of its own; the lock is the first's.)
    first.signal(signal.SIGSTOP)
    try:
        run = RunDir(tmp_path / "runs" / "busy")
        second = in_process(smoke(tmp_path, "busy", *SMALL, "train.resume=auto"), capsys)
        _one_error(second, 2, f"run directory {run.root} is in use by another trainer (host ",
                   f"PID {first.process.pid}")
    finally:
        first.signal(signal.SIGCONT)
    assert first.finish() == 0, first.output()[-2000:]
    assert len(json.loads(run.environment.read_text())["starts"]) == 1  # the second one never started
    assert_same_weights(reference / "model.safetensors", run.weights)  # nor disturbed the first
    # The lock went with its holder: the finished run is resumable (and says it has nothing to do).
    assert "has already finished" in check(in_process(smoke(tmp_path, "busy", *SMALL, "train.resume=auto"),
                                                      capsys)).stdout


# --- 2. no orphans -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("processes,signum", [(1, signal.SIGTERM), (1, signal.SIGKILL), (2, signal.SIGTERM),
                                              (2, signal.SIGKILL)])
def test_a_trainer_stops_with_a_checkpoint_when_its_launcher_dies(tmp_path: Path, reference: Path, processes: int,
                                                                  signum: int, capsys: pytest.CaptureFixture[str]
                                                                  ) -> None:
    name = f"orphan{processes}"
    launched = Background([*launch_command(processes), *smoke(tmp_path, name, *SMALL)], tmp_path,
                          tmp_path / "launch.log")
    launched.wait_for(r"epoch 1 step 6/16")
    trainers = launched.descendants()
    launched.signal(signum)  # the launcher (or torchrun's agent) only, as a job manager or `timeout` would
    launched.finish()
    _wait_gone(trainers)
    run = RunDir(tmp_path / "runs" / name)
    # Under a launcher the command leaves its options to the user.
    config = run.config.relative_to(tmp_path)  # the trainer ran in tmp_path: its paths are relative to it
    step = int(launched.wait_for(r"stopped on SIGTERM at step (\d+): checkpoint \S+ saved; continue with accelerate "
                                 rf"launch <launch options> -m cifarlab.train --config {config} train.resume=auto",
                                 timeout=30).group(1))
    assert run.latest.read_text() == f"step_{step:08d}" and problem(run.checkpoint(step)) is None
    if processes == 1:  # the resumed run (in this process) ends exactly where the uninterrupted one did
        check(in_process(smoke(tmp_path, name, *SMALL, "train.resume=auto"), capsys))
        assert_same_weights(reference / "model.safetensors", run.weights)


# --- 3. Ctrl-C -----------------------------------------------------------------------------------------------

def test_ctrl_c_saves_a_checkpoint_says_how_to_continue_and_marks_the_wandb_run(
        tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    run = Background(_python(tmp_path, "ctrlc", *SMALL, "logging.wandb.mode=offline"), tmp_path, tmp_path / "c.log")
    run.wait_for(r"epoch 1 step 6/16")
    os.killpg(run.process.pid, signal.SIGINT)  # what a terminal sends to the foreground process group
    assert run.finish() == Interrupted.exit_code == 130
    output = run.output()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    stopped = run.wait_for(r"stopped on SIGINT at step (\d+): checkpoint \S+ saved; continue with python -m "
                           r"cifarlab.train (.*)")
    step, arguments = int(stopped.group(1)), shlex.split(stopped.group(2))
    (segment,) = find_run_files(tmp_path / "runs" / "ctrlc" / "wandb")
    (exit_record,) = [r["exit"] for r in read_records(segment) if r["type"] == "exit"]
    assert exit_record.get("exit_code") == 130  # not "finished (exit code 0)"
    monkeypatch.chdir(tmp_path)  # where the command ran: its paths are relative to it
    check(in_process(arguments, capsys))  # the printed command continues the run
    assert_same_weights(reference / "model.safetensors", tmp_path / "runs" / "ctrlc" / "model.safetensors")
    assert step > 0



def test_a_second_ctrl_c_aborts_but_a_forwarded_copy_of_the_first_does_not(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    from accelerate import Accelerator

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.config.write_text("{}\n")  # the run has started: a second Ctrl-C names the command that continues it
    with StopRequest(Accelerator(cpu=True), lambda message: None, run) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a launcher passing the same Ctrl-C on, moments later
        assert stop.received == "SIGINT"
        monkeypatch.setattr("cifarlab.run.preemption.SECOND_CTRL_C_AFTER", 0.0)
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt) as aborted:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises here
    assert isinstance(aborted.value, Aborted) and str(aborted.value) == (
        f"aborted by Ctrl-C; continue from the last checkpoint with python -m cifarlab.train --config "
        f"{tmp_path / 'run' / 'config.yaml'} train.resume=auto")
    assert Interrupted.exit_code == 130 and issubclass(Interrupted, Preempted)


def test_an_abort_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    import cifarlab.run.loop
    from cifarlab import train

    def second_ctrl_c(*args: object, **kwargs: object) -> None:
        raise Aborted("aborted by Ctrl-C; continue from the last checkpoint with python -m cifarlab.train ...")

    def before_the_run(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # Python's own, before the trainer's handlers are in place: no run to continue

    previous = signal.getsignal(signal.SIGINT)
    try:
        for interrupt in (second_ctrl_c, before_the_run):
            monkeypatch.setattr(cifarlab.run.loop, "train", interrupt)
            assert train.main(smoke(tmp_path, "abort")) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert error_lines(capsys.readouterr().err) == [
        "cifarlab: error: aborted by Ctrl-C; continue from the last checkpoint with python -m cifarlab.train ...",
        "cifarlab: error: aborted by Ctrl-C"]


# --- 4. a run keeps its identity -----------------------------------------------------------------------------

def test_resume_refuses_changes_of_course_records_allowed_ones_and_never_rewrites_config(
        tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_text = (reference / "config.yaml").read_text()
    assert yaml.safe_load(config_text)["train"]["resume"] is None  # the experiment, not how it was started
    copy = crashed_copy(reference, tmp_path / "runs" / "changed", "step_00000020")

    refused = in_process(smoke(tmp_path, "changed", *SMALL, "train.resume=auto", "optim.lr=0.1", "train.epochs=4"),
                         capsys)
    _one_error(refused, 2, "optim.lr=0.1 (was 0.02)", "train.epochs=4 (was 2)", "train.allow_changes=true")
    assert not RunDir(copy).history.exists()

    # 1 process now, 2 in the start it continues (as if saved by a 2-process run): recorded, not refused.
    environment = json.loads((copy / "environment.json").read_text())
    environment["starts"][-1]["processes"] = 2
    (copy / "environment.json").write_text(json.dumps(environment))
    allowed = check(in_process(smoke(tmp_path, "changed", *SMALL, "train.resume=auto", "optim.lr=0.01",
                                     "train.allow_changes=true", "logging.wandb.mode=offline"), capsys))
    assert "changed on resume, from step 20: optim.lr 0.02 -> 0.01, processes 2 -> 1" in allowed.stdout
    (change,) = [json.loads(line) for line in RunDir(copy).history.read_text().splitlines()]
    assert (change["step"], change["changes"]) == (20, {"optim.lr": [0.02, 0.01], "processes": [2, 1]})
    (segment,) = find_run_files(copy / "wandb")
    wait_for_exit(segment)  # wandb-core writes an in-process run's file after the run has returned
    assert read_config(segment)["history"] == [change]
    assert (copy / "config.yaml").read_text() == config_text  # never rewritten

    # Finished: a resume says so and starts nothing (no W&B segment).
    again = check(in_process(smoke(tmp_path, "changed", *SMALL, "train.resume=auto", "logging.wandb.mode=offline"),
                             capsys))
    assert "has already finished" in again.stdout and len(find_run_files(copy / "wandb")) == 1

    # The saved config reruns the experiment as a new run.
    check(in_process(["--config", str(reference / "config.yaml"), f"train.output_dir={tmp_path / 'runs'}",
                      "train.run_name=rerun"], capsys))
    assert_same_weights(reference / "model.safetensors", tmp_path / "runs" / "rerun" / "model.safetensors")


def test_a_finished_run_whose_checkpoints_were_removed_is_still_that_run(
        tmp_path: Path, smoke_reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = smoke(tmp_path, "b")
    run = RunDir(tmp_path / "runs" / "b")
    shutil.copytree(smoke_reference, run.root)  # a finished run of configs/smoke.yaml (conftest)
    shutil.rmtree(run.checkpoints)
    weights, config_text = run.weights.read_bytes(), run.config.read_text()
    # Another learning rate is another experiment: refused before anything is trained or written.
    refused = in_process([*args, "train.resume=auto", "optim.lr=0.3"], capsys)
    _one_error(refused, 2, f"run directory {run.root} holds a run of another configuration", "optim.lr=0.3 (was 0.02)",
               "train.allow_changes=true")
    assert run.weights.read_bytes() == weights and run.config.read_text() == config_text
    assert not run.history.exists() and not run.checkpoints.exists()
    # Its own config: finished, by its final weights.
    same = check(in_process([*args, "train.resume=auto"], capsys))
    assert "has already finished" in same.stdout and "nothing to do" in same.stdout
    assert run.weights.read_bytes() == weights and not run.checkpoints.exists()


def test_more_epochs_on_resume_stretch_the_schedule_from_where_the_run_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cifarlab.config import load_config
    from cifarlab.run import engine

    args = smoke(tmp_path, "longer", "optim.schedule=onecycle")
    check(in_process(args, capsys))
    # One-cycle is stretched over all epochs: more of them change the course, so it takes the explicit switch.
    _one_error(in_process([*args, "train.resume=auto", "train.epochs=4"], capsys), 2, "train.epochs=4 (was 2)")
    longer = check(in_process([*args, "train.resume=auto", "train.epochs=4", "train.allow_changes=true"], capsys))
    assert "changed on resume, from step 16: train.epochs 2 -> 4" in longer.stdout
    run = tmp_path / "runs" / "longer"
    assert [r["step"] for r in records(run) if "test/acc" in r] == [8, 16, 24, 32]
    # The learning rate continues on the 4-epoch schedule at step 20, not on the saved 2-epoch one (which ends
    # at step 16).
    config = load_config(str(CONFIGS / "smoke.yaml"), ["optim.schedule=onecycle", "train.epochs=4"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.optim.lr)
    schedule = engine.build_scheduler(config.optim, optimizer, 4, 8)
    for _ in range(20):
        optimizer.step()
        schedule.step()
    (logged,) = [r["train/lr"] for r in records(run) if r["step"] == 20 and "train/lr" in r]
    assert logged == pytest.approx(schedule.get_last_lr()[0], rel=1e-9)


# --- 5. unsafe checkpoints -----------------------------------------------------------------------------------

class _Payload:
    """Unpickling this would create a file: proof that nothing ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("victim", ["optimizer.bin", "random_states_0.pkl"])
def test_a_checkpoint_holding_pickled_code_is_refused_in_one_line(tmp_path: Path, reference: Path, victim: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    copy = crashed_copy(reference, tmp_path / "runs" / "unsafe", "step_00000020")
    folder = copy / "checkpoints" / "step_00000020"
    marker = tmp_path / "executed"
    (folder / victim).write_bytes(pickle.dumps({"state": _Payload(marker)}))
    manifest = json.loads((folder / "manifest.json").read_text())  # rewritten to match, as a shared one would be
    data = (folder / victim).read_bytes()
    manifest["files"][victim] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = in_process(smoke(tmp_path, "unsafe", *SMALL, "train.resume=auto"), capsys)
    _one_error(result, 2, f"checkpoint {folder}: {victim} (", "cannot be loaded safely", "nothing in it was executed")
    assert not marker.exists()


# --- 6. a full disk ------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (room for about three SMALL checkpoints), unmounted afterwards; needs root."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(
        tmp_path: Path, small_disk: Path, reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*smoke(tmp_path, "full", *SMALL), f"train.output_dir={small_disk}"]
    full = in_process(args, capsys)
    line = _one_error(full, 1, "No space left on device", "train.resume=auto")
    run = RunDir(small_disk / "full")
    assert run.latest.is_file() and problem(run.checkpoints / run.latest.read_text()) is None, line
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".tmp")]
    subprocess.run(["mount", "-o", "remount,size=64M", str(small_disk)], check=True)  # space freed
    check(in_process([*args, "train.resume=auto"], capsys))
    assert_same_weights(reference / "model.safetensors", run.weights)


# --- 7. a loss that is not finite ----------------------------------------------------------------------------

def test_a_non_finite_loss_stops_at_its_step_and_keeps_the_good_checkpoints(
        tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = crashed_copy(reference, tmp_path / "runs" / "nan", "step_00000020")
    before = {p.name: (p / "manifest.json").read_text() for p in RunDir(copy).step_checkpoints()}
    best = (copy / "checkpoints" / "best" / "manifest.json").read_text()
    # Resumed with a normalisation that overflows float32: every loss from the first resumed step on is NaN.
    result = in_process(smoke(tmp_path, "nan", *SMALL, "train.resume=auto", "data.std=[1e-40,1e-40,1e-40]",
                              "train.allow_changes=true"), capsys)
    line = _one_error(result, 1, "the training loss is not finite (NaN or inf) at step ",
                      f"last good checkpoint is {copy / 'checkpoints' / 'step_00000020'}")
    assert " at step 21;" in line
    assert RunDir(copy).latest.read_text() == "step_00000020"
    assert {p.name: (p / "manifest.json").read_text() for p in RunDir(copy).step_checkpoints()} == before
    assert (copy / "checkpoints" / "best" / "manifest.json").read_text() == best
    assert all(r["step"] <= 20 for r in records(copy) if "train/loss" in r)  # nothing logged past it
    assert all(torch.isfinite(t).all() for t in load_file(str(copy / "checkpoints" / "step_00000020" /
                                                               "model.safetensors")).values())


# --- 8. bad paths --------------------------------------------------------------------------------------------

def test_bad_output_paths_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    result = in_process([*smoke(tmp_path, "x"), f"train.output_dir={tmp_path / 'a-file'}"], capsys)
    _one_error(result, 2, f"train.output_dir {tmp_path / 'a-file'} is a file, not a folder")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "taken").write_text("")
    taken = tmp_path / "runs" / "taken"
    _one_error(in_process(smoke(tmp_path, "taken"), capsys), 2, f"run directory {taken} is a file")

    readonly = tmp_path / "readonly"
    readonly.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(readonly)],
                                            capture_output=True).returncode == 0:
        try:
            result = in_process([*smoke(tmp_path, "x"), f"train.output_dir={readonly}"], capsys)
            _one_error(result, 2, "cannot create run directory", "Read-only file system", "writable train.output_dir")
        finally:
            subprocess.run(["umount", "-l", str(readonly)], check=False)
    shutil.rmtree(tmp_path / "runs")
