"""Checkpoints in-process: sealed with a manifest, damage detected, retention, best/ as hard links, and
everything restored on load."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from cifarlab import train as train_command
from cifarlab.config import CheckpointConfig
from cifarlab.run.checkpoint import Checkpointer, out_of_space, problem, resumable_checkpoint
from cifarlab.run.rundir import RunDir
from cifarlab.run.state import TrainState

from conftest import CONFIGS, error_lines

pytestmark = pytest.mark.unit


def checkpointer(tmp_path: Path, keep_last: int = 2,
                 protect: Path | None = None) -> tuple[Checkpointer, torch.nn.Module]:
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    average = torch.nn.Linear(3, 2)
    config = CheckpointConfig(every_n_steps=2, keep_last=keep_last)
    return Checkpointer(accelerator, RunDir(tmp_path / "run"), config, 4, {"ema": average}, protect), model


def test_saves_are_sealed_pruned_and_restored(tmp_path: Path) -> None:
    saver, model = checkpointer(tmp_path)
    run, state = saver.run, TrainState(wandb_run_id="abc")
    for step in range(1, 9):
        state.global_step, state.step_in_epoch = step, (step - 1) % 4 + 1
        saver.after_step(state)  # every 2 steps, but not the epoch's last batch
        if state.step_in_epoch == 4:
            state.end_epoch(accuracy=0.5 if step == 4 else 0.4)  # epoch 1 stays the best
            saver.after_epoch(state)
    assert [p.name for p in run.step_checkpoints()] == ["step_00000006", "step_00000008"]  # keep_last=2
    assert run.latest.read_text() == "step_00000008"
    assert all(problem(p) is None for p in [*run.step_checkpoints(), run.best])
    best_state = (run.best / "trainer_state.json").read_text()
    assert '"global_step": 4' in best_state and '"best_epoch": 1' in best_state
    assert saver.ensure_saved(state) == run.checkpoint(8)  # no second save of the same step

    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    restored = saver.load(run.checkpoint(8), model)
    assert (restored.global_step, restored.epoch, restored.wandb_run_id) == (8, 2, "abc")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".tmp-")]


def test_damage_is_detected_and_auto_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the warning names the checkpoint relative to where the command ran
    saver, _ = checkpointer(tmp_path, keep_last=3)
    run, state = saver.run, TrainState()
    for step in (2, 4, 6):
        state.global_step = step
        saver.save(state)
    optimizer = run.checkpoint(6) / "optimizer.bin"
    size = optimizer.stat().st_size
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    assert problem(run.checkpoint(6)) == f"optimizer.bin has 100 bytes, expected {size}"
    warnings: list[str] = []
    assert resumable_checkpoint(run, warnings.append) == run.checkpoint(4)
    assert warnings == [f"checkpoint {run.checkpoint(6).relative_to(tmp_path)} is damaged (optimizer.bin has 100 "
                        f"bytes, expected {size}); falling back to an older one"]
    (run.checkpoint(4) / "manifest.json").unlink()
    assert problem(run.checkpoint(4)) == "no manifest.json"
    (run.checkpoint(2) / "ema.safetensors").write_bytes(b"x" * (run.checkpoint(2) / "ema.safetensors").stat().st_size)
    assert problem(run.checkpoint(2)) == "ema.safetensors does not match its checksum"
    assert resumable_checkpoint(run, warnings.append) is None


def test_the_checkpoint_resumed_from_is_never_pruned(tmp_path: Path) -> None:
    saver, _ = checkpointer(tmp_path, keep_last=1)
    state = TrainState(global_step=2)
    saver.save(state)
    saver.protect = saver.run.checkpoint(2)
    for step in (4, 6):
        state.global_step = step
        saver.save(state)
    assert [p.name for p in saver.run.step_checkpoints()] == ["step_00000002", "step_00000006"]


def test_the_epoch_loss_is_carried_and_old_trainer_states_still_load() -> None:
    state = TrainState()
    running = state.start_running_loss(torch.device("cpu"))
    for loss in (2.0, 1.0, 3.0):  # three batches: the loop adds on the device, nothing is read back
        running += loss
        state.step_in_epoch += 1
    state.read_back_loss(lambda total: total)  # a save (one process: the mean over ranks is the sum itself)
    assert (state.epoch_loss_sum, state.epoch_loss_batches, float(running)) == (6.0, 3, 0.0)
    saved = state.state_dict()
    assert saved["epoch_loss_sum"] == 6.0 and saved["epoch_loss_batches"] == 3 and "running_loss" not in saved
    resumed = TrainState()
    resumed.load_state_dict(saved)
    running = resumed.start_running_loss(torch.device("cpu"))
    running += 4.0
    resumed.step_in_epoch += 1
    resumed.read_back_loss(lambda total: total)
    assert resumed.epoch_loss() == pytest.approx(10.0 / 4)  # the whole epoch, across the resume
    resumed.end_epoch(accuracy=0.5)
    assert (resumed.epoch_loss_sum, resumed.epoch_loss_batches, resumed.running_loss) == (0.0, 0, None)

    # A trainer_state.json from before these fields, saved mid-epoch: it loads, and the epoch's loss and training
    # seconds then cover the batches after the resume.
    old = TrainState()
    old.load_state_dict({"epoch": 1, "step_in_epoch": 3, "global_step": 7, "best_accuracy": 0.5, "best_epoch": 1,
                         "wandb_run_id": None, "elapsed_s": 9.0, "train_s": 6.5, "target": None})
    assert (old.epoch_loss_sum, old.epoch_loss_batches, old.epoch_start_train_s) == (0.0, 0, 6.5)
    running = old.start_running_loss(torch.device("cpu"))
    running += 2.5
    old.step_in_epoch += 1
    old.read_back_loss(lambda total: total)
    assert old.epoch_loss() == 2.5 and old.epoch_loss_batches == 1


def test_a_full_disk_before_the_run_starts_is_the_train_commands_one_line_with_the_file_as_typed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "x" / "config.yaml"))

    def train(config: object, preset: object) -> None:
        raise full

    assert train_command.main(["--config", str(CONFIGS / "smoke.yaml")], train=train) == 1
    assert error_lines(capsys.readouterr().err) == [
        "cifarlab: error: No space left on device writing runs/x/config.yaml; free space, then run the command again"]


def test_a_full_disk_outside_a_save_names_the_command_that_continues_the_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    full = OSError(errno.ENOSPC, "No space left on device", str(run.metrics))
    assert str(out_of_space(full, run)) == (f"No space left on device writing {run.metrics}; free space, then run the "
                                            f"command again")  # nothing written yet: nothing to continue
    run.root.mkdir()
    run.config.write_text("{}\n")
    assert str(out_of_space(full, run)) == (f"No space left on device writing {run.metrics}; the last complete "
                                            f"checkpoint is intact: free space, then continue with python -m "
                                            f"cifarlab.train --config {run.config} train.resume=auto")
