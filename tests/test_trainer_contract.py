"""The trainer's outside contract, one table held against both trainers: the real one (python -m cifarlab.train) and
tests/fake_trainer.py, the stand-in the sweep's bookkeeping tests run (cifarlab.sweep --trainer). What the sweep
runner relies on: the run directory's files, refusals (exit 2, one line, nothing written), a failure (exit 1), stop
signals and a dead parent (a checkpoint, exit 75 or 130, a resume that goes on counting), a search's pruner.

Rows that need no signal run the command in-process (``cifarlab.train.main(argv, train=...)``: the same code the
command runs); the others run it as a process. The fake trainer's in-process rows are unit tests; everything the
real trainer does here is integration."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fake_trainer
import pytest
from safetensors import safe_open

from cifarlab import train as trainer_command
from cifarlab.analysis.results import read_run
from cifarlab.config import CIFAR10_CLASSES, load_config
from cifarlab.errors import UsageError
from cifarlab.experiments.runner import checkpoint_step
from cifarlab.run import pruning
from cifarlab.run.rundir import TRAINER_STATE, RunDir
from cifarlab.run.runlock import RunLock
from cifarlab.run.state import TrainState
from cifarlab.run.verify import problem

from conftest import FAKE_TRAINER, Background, error_lines, per_class, records, smoke, wait_until

REAL, FAKE = "real", "fake"
COMMANDS = {REAL: [sys.executable, "-m", "cifarlab.train"], FAKE: [sys.executable, FAKE_TRAINER]}
FAST = ("data.loader=tensor",)
"""The real trainer's faster data path (the fake trains nothing either way)."""
STEP_KEYS = {"step", "time", "elapsed_s", "train/loss", "train/lr", "train/images_per_s", "train/epoch"}
EVALUATION_KEYS = {"step", "time", "elapsed_s", "train/epoch", "test/acc", "test/acc_top5", "test/loss", "test/images",
                   "train/epoch_loss", "train/epoch_images_per_s", "train/epoch_seconds"}


@pytest.fixture(autouse=True)
def _no_parent_death_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's main asks the kernel to stop its process when the parent dies (stop_when_orphaned): not pytest,
    which runs it in-process here; the parent-death row checks it on a trainer process."""
    monkeypatch.setattr(trainer_command, "stop_when_orphaned", lambda: None)


def main(trainer: str, argv: list[str]) -> int:
    """The trainer's command, in-process."""
    return trainer_command.main(argv, train=fake_trainer.train if trainer == FAKE else None)


def one_error(err: str, *fragments: str) -> None:
    (line,) = err.splitlines()
    assert line in error_lines(err) and all(fragment in line for fragment in fragments), err


# --- the rows ---------------------------------------------------------------------------------------------------


def finishes_with_its_files(trainer: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], **_: Any) -> None:
    """Exit 0; config.yaml (the resolved config, without train.resume), classes.json, metrics.jsonl's step and
    evaluation records, step checkpoints (keep_last of them, intact, TrainState's fields, `latest` on the last),
    model.safetensors. Started again: auto has nothing to do; a fresh start is refused."""
    args = smoke(tmp_path, "run", *FAST)  # 2 epochs of 8 steps, a checkpoint every 5, a record every 4, 100 images
    assert main(trainer, args) == 0
    run = RunDir(tmp_path / "runs" / "run")
    assert run.finished()
    assert load_config(str(run.config)) == load_config(args[1], args[2:])
    assert json.loads(run.classes.read_text()) == list(CIFAR10_CLASSES)
    found = records(run.root)
    steps = [record for record in found if "train/loss" in record]
    assert [record["step"] for record in steps] == [4, 8, 12, 16] and all(set(r) == STEP_KEYS for r in steps)
    evaluations = [record for record in found if "test/acc" in record]
    assert [(record["step"], record["train/epoch"]) for record in evaluations] == [(8, 1.0), (16, 2.0)]
    for record in evaluations:
        assert set(record) >= EVALUATION_KEYS and record["test/images"] == 100 and 0 <= record["test/acc"] <= 1
        assert sorted(per_class(record)) == sorted(CIFAR10_CLASSES)
    assert [folder.name for folder in run.step_checkpoints()] == ["step_00000015", "step_00000016"]
    assert run.latest.read_text() == "step_00000016" and checkpoint_step(run) == 16
    assert all(problem(folder) is None for folder in run.step_checkpoints())
    state = json.loads((run.checkpoint(16) / TRAINER_STATE).read_text())
    assert set(state) == {field.name for field in dataclasses.fields(TrainState)}
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 0, 16)
    with safe_open(str(run.weights), "pt") as weights:
        assert list(weights.keys())
    read = read_run(run.root)
    assert read.finished and read.final_accuracy() == evaluations[-1]["test/acc"] and read.pruned is None
    written = run.metrics.read_text()
    capsys.readouterr()
    assert main(trainer, [*args, "train.resume=auto"]) == 0
    assert "has already finished" in capsys.readouterr().out and run.metrics.read_text() == written
    assert main(trainer, args) == 2
    one_error(capsys.readouterr().err, f"run directory {run.root} already holds a run")


def refuses_a_bad_override(trainer: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], **_: Any) -> None:
    """Exit 2, one line naming the key, nothing written."""
    assert main(trainer, smoke(tmp_path, "run", "optim.lr=-1")) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    one_error(captured.err, "optim.lr=-1.0 must be positive")
    assert not (tmp_path / "runs").exists()


HOLD = ("import sys; from pathlib import Path; from cifarlab.run.rundir import RunDir; "
        "from cifarlab.run.runlock import RunLock; RunLock(RunDir(Path(sys.argv[1]))).acquire(); print('held', "
        "flush=True); sys.stdin.read()")
"""Another process holding a run's lock (until its stdin closes)."""


def refuses_a_busy_run_directory(trainer: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], **_: Any) -> None:
    """Another trainer's process holds the run lock: exit 2, one line naming it, nothing written."""
    run = RunDir(tmp_path / "runs" / "run")
    with subprocess.Popen([sys.executable, "-c", HOLD, str(run.root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert main(trainer, smoke(tmp_path, "run", *FAST, "train.resume=auto")) == 2
        one_error(capsys.readouterr().err, f"run directory {run.root} is in use by another trainer (host ",
                  f"PID {holder.pid}")
        assert [path.name for path in run.root.iterdir()] == [".lock"]
        holder.communicate("")


def fails_when_the_loss_diverges(trainer: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], **_: Any) -> None:
    """A run that cannot go on: exit 1, one line, no final weights (a sweep counts the trial failed)."""
    assert main(trainer, smoke(tmp_path, "run", *FAST, "optim.lr=1e9")) == 1
    one_error(capsys.readouterr().err, "the training loss is not finite (NaN or inf) at step ")
    assert not RunDir(tmp_path / "runs" / "run").finished()


def is_pruned_by_its_search(trainer: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch, **_: Any) -> None:
    """Under a search (CIFARLAB_SEARCH) the trainer reports each evaluation to the study; pruned there, it writes the
    prune record and its final weights and exits 0. Only its worker tells the study how the trial ended."""
    from test_search import SMOKE, TRIAL, doomed_trial

    sweep, study, trial, order = doomed_trial(tmp_path)
    monkeypatch.setenv(pruning.VARIABLE, json.dumps(order))
    assert main(trainer, ["--config", SMOKE, *TRIAL, *FAST, f"train.output_dir={sweep.folder}",
                          f"train.run_name=trial-{trial.number:04d}", "train.resume=auto"]) == 0
    run = RunDir(sweep.folder / f"trial-{trial.number:04d}")
    assert run.finished() and "pruned by the search at epoch 1 (step 8)" in capsys.readouterr().out
    pruned = [record for record in records(run.root) if "prune/epoch" in record]
    assert [(record["prune/epoch"], record["prune/step"]) for record in pruned] == [(1, 8)]
    assert len([record for record in records(run.root) if "test/acc" in record]) == 1
    assert read_run(run.root).pruned is not None
    frozen = study.get_trials()[trial.number]
    assert list(frozen.intermediate_values) == [1] and frozen.state.name == "RUNNING"


def chooses_on_its_validation_split(trainer: str, tmp_path: Path, **_: Any) -> None:
    """With data.val_size every evaluation record holds val/* (val/images: the held-out count), the last one test/*
    too; the best (trainer_state.json's best_accuracy and best_epoch, which choose the real trainer's best/) is the
    best val/acc; compare reads the split's figures. A target reached on the validation split ends the run with the
    test set scored there."""
    assert main(trainer, smoke(tmp_path, "run", *FAST, "data.val_size=40", "train.epochs=3")) == 0
    run = RunDir(tmp_path / "runs" / "run")
    evaluations = [record for record in records(run.root) if "val/acc" in record or "test/acc" in record]
    assert [("val/acc" in r, "test/acc" in r, r.get("val/images")) for r in evaluations] == [
        (True, False, 40), (True, False, 40), (True, True, 40)]
    best = max(range(3), key=lambda i: (evaluations[i]["val/acc"], -i))
    state = json.loads((run.step_checkpoints()[-1] / TRAINER_STATE).read_text())  # the fake keeps no best/
    assert (state["best_epoch"], state["best_accuracy"]) == (best + 1, evaluations[best]["val/acc"])
    found = read_run(run.root)
    assert found.final_val_accuracy() == evaluations[-1]["val/acc"] and found.final_accuracy() == evaluations[-1][
        "test/acc"]
    assert main(trainer, smoke(tmp_path, "early", *FAST, "data.val_size=40", "train.epochs=3",
                               "train.target_accuracy=0.01")) == 0
    early = [record for record in records(tmp_path / "runs" / "early") if "val/acc" in record]
    assert [("test/acc" in r, r["train/epoch"]) for r in early] == [(True, 1.0)]


def stops_on_signals_and_goes_on_counting(trainer: str, tmp_path: Path, **_: Any) -> None:
    """Ctrl-C: a checkpoint of the step reached, exit 130; SIGTERM (what a sweep passes on): the same, exit 75; each
    start resumes from the newest checkpoint, and the finished run's records count every step once."""
    args = [*COMMANDS[trainer], *smoke(tmp_path, "run", *FAST, "data.train_size=512", "train.batch_size=16",
                                       "train.epochs=1", "logging.every_n_steps=1", "train.resume=auto")]
    run = RunDir(tmp_path / "runs" / "run")
    last = 0
    for number, (signum, code) in enumerate([(signal.SIGINT, 130), (signal.SIGTERM, 75)]):
        started = Background(args, tmp_path, tmp_path / f"{number}.log")
        if last:
            # the trainer runs in tmp_path and names the checkpoint relative to it (files.typed)
            started.wait_for(rf"resumed from {re.escape(str(run.checkpoint(last).relative_to(tmp_path)))}: epoch 1, "
                             rf"step {last}")
        started.wait_for(rf"epoch 1 step {last + 2}/32")
        started.signal(signum)
        assert started.finish() == code, started.output()[-3000:]
        step = int(started.wait_for(rf"stopped on {signum.name} at step (\d+): checkpoint \S+ saved; continue with "
                                    rf"python -m cifarlab.train --config {run.config.relative_to(tmp_path)} "
                                    r"train.resume=auto").group(1))
        assert step > last and checkpoint_step(run) == step and problem(run.checkpoint(step)) is None
        assert not run.finished()
        last = step
    finished = Background(args, tmp_path, tmp_path / "last.log")
    assert finished.finish() == 0 and f"resumed from {run.checkpoint(last).relative_to(tmp_path)}" in finished.output()
    assert [record["step"] for record in records(run.root) if "train/loss" in record] == list(range(1, 33))
    assert [record["step"] for record in records(run.root) if "test/acc" in record] == [32]
    assert run.finished()


def stops_when_its_parent_dies(trainer: str, tmp_path: Path, **_: Any) -> None:
    """A trainer whose parent (a sweep, a launcher) is killed gets SIGTERM from the kernel: it saves and stops."""
    parent = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(300)"
    args = [*COMMANDS[trainer], *smoke(tmp_path, "run", *FAST, "data.train_size=512", "train.batch_size=16",
                                       "train.epochs=1", "logging.every_n_steps=1")]
    started = Background([sys.executable, "-c", parent, *args], tmp_path, tmp_path / "parent.log")
    started.wait_for(r"epoch 1 step 2/32")
    run = RunDir(tmp_path / "runs" / "run")
    started.signal(signal.SIGKILL)  # the parent alone
    started.finish()
    stopped = r"stopped on SIGTERM at step (\d+): checkpoint \S+ saved"
    wait_until(lambda: re.search(stopped, started.output()) is not None, "the trainer to stop", timeout=60)
    wait_until(lambda: _free(run), "the trainer to exit", timeout=60)
    step = int(re.findall(stopped, started.output())[0])
    assert checkpoint_step(run) == step and not run.finished()


def _free(run: RunDir) -> bool:
    """Whether no trainer holds the run's lock (taken and let go at once)."""
    lock = RunLock(run)
    try:
        lock.acquire()
    except UsageError:
        return False
    lock.release()
    return True


ROWS: dict[str, tuple[Callable[..., None], bool]] = {
    # name: (the row, whether it runs in-process)
    "finishes with its files": (finishes_with_its_files, True),
    "refuses a bad override": (refuses_a_bad_override, True),
    "refuses a busy run directory": (refuses_a_busy_run_directory, True),
    "fails when the loss diverges": (fails_when_the_loss_diverges, True),
    "is pruned by its search": (is_pruned_by_its_search, True),
    "chooses on its validation split": (chooses_on_its_validation_split, True),
    "stops on signals and goes on counting": (stops_on_signals_and_goes_on_counting, False),
    "stops when its parent dies": (stops_when_its_parent_dies, False),
}
CASES = [pytest.param(trainer, row, id=f"{trainer}: {row}",
                      marks=pytest.mark.unit if trainer == FAKE and ROWS[row][1] else pytest.mark.integration)
         for row in ROWS for trainer in (REAL, FAKE)]


@pytest.mark.parametrize("trainer, row", CASES)
def test_the_trainer_honours_the_contract(trainer: str, row: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ROWS[row][0](trainer, tmp_path, capsys=capsys, monkeypatch=monkeypatch)



@pytest.mark.integration
def test_the_real_trainer_refuses_a_model_that_cannot_take_the_images(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A refusal only the real trainer can make (the fake builds no model): once the data is built, LeNet cannot take
    64x64 images: exit 2, one line (a sweep counts the trial failed, as any exit 2: test_sweep's fake-trainer tests)."""
    assert main(REAL, smoke(tmp_path, "run", *FAST, "data.image_size=64")) == 2
    one_error(capsys.readouterr().err, "model.name=lenet cannot take 3x64x64 inputs")
    assert not RunDir(tmp_path / "runs" / "run").finished()
