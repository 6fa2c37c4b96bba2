"""The training loop in-process: one epoch with the real recorder, checkpointer and stop request on a tiny
model and fake data; and a whole run through ``cifarlab.run.loop.train``, as a notebook would call it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

from cifarlab import train as train_command
from cifarlab.config import Config, load_config, to_yaml
from cifarlab.data import build_data
from cifarlab.data.path import DataPath
from cifarlab.errors import Preempted, RunFailed, UsageError
from cifarlab.models import build_model
from cifarlab.report.console import Console
from cifarlab.run import engine, loop
from cifarlab.run.checkpoint import Checkpointer, problem
from cifarlab.run.epoch import train_epoch
from cifarlab.run.preemption import StopRequest
from cifarlab.run.recorder import Recorder
from cifarlab.run.rundir import RunDir
from cifarlab.run.state import Pace, TrainState

from conftest import CONFIGS, records

pytestmark = pytest.mark.unit

# 64 images in global batches of 16: 4 steps per epoch; logged and checkpointed every 2 steps.
TINY = ("data.train_size=64", "data.test_size=20", "data.loader=tensor", "train.batch_size=16",
        "train.eval_batch_size=10", "logging.every_n_steps=2", "checkpoint.every_n_steps=2", "train.ema=0.9",
        "logging.wandb.mode=disabled", "logging.level=warning")


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    return load_config(str(CONFIGS / "smoke.yaml"), [*TINY, f"train.output_dir={tmp_path}", "train.run_name=tiny",
                                                    *overrides])


def parts(config: Config) -> tuple[engine.Learner, DataPath, Pace, Recorder, Checkpointer, RunDir]:
    accelerator = engine.build_accelerator(config)
    data = build_data(config.data, config.train.seed, device=accelerator.device)
    steps = data.prepare(accelerator, config.train.batch_size, config.train.eval_batch_size)
    model = build_model(config.model, len(data.classes))
    ema = engine.build_ema(model, 0.9, accelerator.device)
    optimizer = engine.build_optimizer(config.optim, model)
    scheduler = engine.build_scheduler(config.optim, optimizer, config.train.epochs, steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    learner = engine.Learner(accelerator, model, optimizer, scheduler, torch.nn.CrossEntropyLoss(), ema)
    run = RunDir(Path(config.train.output_dir) / "tiny")
    run.root.mkdir(parents=True)
    pace = Pace(config.train.batch_size, steps)
    recorder = Recorder(accelerator, run, Console(True, quiet=True), pace, config.train.epochs,
                        config.logging.every_n_steps)
    return learner, data, pace, recorder, Checkpointer(accelerator, run, config.checkpoint, steps, {"ema": ema}), run


def no_nan(learner: engine.Learner, every: int = 2) -> engine.LossGuard:
    return engine.LossGuard(learner.accelerator, lambda: None, every)


def test_a_non_finite_loss_stops_the_epoch_before_anything_is_saved(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    learner, data, pace, recorder, _, run = parts(config)
    guard = engine.LossGuard(learner.accelerator, lambda: "runs/tiny/checkpoints/step_00000000", every=100)
    checkpointer = Checkpointer(learner.accelerator, run, config.checkpoint, 4, healthy=guard.check)
    with torch.no_grad():
        next(learner.model.parameters())[0].fill_(float("nan"))  # every loss from step 1 on is NaN
    state = TrainState()
    with StopRequest(learner.accelerator, lambda message: None) as stop, \
            pytest.raises(RunFailed, match=r"not finite \(NaN or inf\) at step 1; .* last good checkpoint is "
                                           r"runs/tiny/checkpoints/step_00000000"):
        train_epoch(learner, data, pace, state, recorder, checkpointer, stop, guard)
    # checkpoint.every_n_steps=2: the save at step 2 asked the guard first and was never written.
    assert state.global_step == 2 and run.step_checkpoints() == [] and not run.latest.exists()


def test_an_epoch_records_checkpoints_and_stops_on_a_signal(tmp_path: Path) -> None:
    learner, data, pace, recorder, checkpointer, run = parts(tiny_config(tmp_path))
    state = TrainState()
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest(learner.accelerator, lambda message: None) as stop:
        stats = train_epoch(learner, data, pace, state, recorder, checkpointer, stop, no_nan(learner))
        assert (state.epoch, state.step_in_epoch, state.global_step) == (0, 4, 4)
        assert stats.batches == 4 and 2.0 < stats.loss < 2.6 and stats.images_per_s > 0
        # The recorder logged every 2 steps; the checkpointer saved step 2 (step 4 is the epoch end's to save).
        logged = records(run.root)
        assert [r["step"] for r in logged] == [2, 4]
        assert [r["train/epoch"] for r in logged] == [0.5, 1.0]
        assert all({"train/loss", "train/lr", "train/images_per_s", "time"} <= r.keys() for r in logged)
        assert [p.name for p in run.step_checkpoints()] == ["step_00000002"]

        state.end_epoch(0.5)
        checkpointer.after_epoch(state)
        assert run.latest.read_text() == "step_00000004" and problem(run.best) is None
        # A stop signal mid-epoch: the next step is checkpointed, then Preempted.
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Preempted):
            train_epoch(learner, data, pace, state, recorder, checkpointer, stop, no_nan(learner))
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    assert (state.epoch, state.step_in_epoch, state.global_step) == (1, 1, 5)
    assert problem(run.checkpoint(5)) is None and run.latest.read_text() == "step_00000005"
    assert json.loads((run.checkpoint(5) / "trainer_state.json").read_text())["step_in_epoch"] == 1

    # Resumed from step 5 in a fresh set of parts, the rest of the epoch gives the uninterrupted run's weights.
    resumed, data2, pace2, recorder2, checkpointer2, _ = parts(tiny_config(tmp_path / "again"))
    state2 = checkpointer2.load(run.checkpoint(5), resumed.model)
    with StopRequest(resumed.accelerator, lambda message: None) as stop:
        train_epoch(resumed, data2, pace2, state2, recorder2, checkpointer2, stop, no_nan(resumed))
        train_epoch(learner, data, pace, state, recorder, checkpointer, stop, no_nan(learner))
    assert state2.global_step == state.global_step == 8
    for a, b in zip(resumed.model.state_dict().values(), learner.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("recipe", [("optim.name=adamw",), ("optim.name=adamw", "data.mixup=0.4", "data.cutmix=1.0")],
                         ids=["adamw", "adamw-mixup-cutmix"])
def test_adamw_saves_its_moments_and_resumes_to_the_same_weights(tmp_path: Path, recipe: tuple[str, ...]) -> None:
    learner, data, pace, recorder, checkpointer, run = parts(tiny_config(tmp_path, *recipe))
    assert isinstance(learner.optimizer.optimizer, torch.optim.AdamW)
    state = TrainState()
    with StopRequest(learner.accelerator, lambda message: None) as stop:
        train_epoch(learner, data, pace, state, recorder, checkpointer, stop, no_nan(learner))  # saves step 2
        resumed, data2, pace2, recorder2, checkpointer2, _ = parts(tiny_config(tmp_path / "again", *recipe))
        state2 = checkpointer2.load(run.checkpoint(2), resumed.model)
        assert state2.global_step == 2 and resumed.optimizer.state_dict()["state"][0]["step"] == 2
        train_epoch(resumed, data2, pace2, state2, recorder2, checkpointer2, stop, no_nan(resumed))
    assert state2.global_step == state.global_step == 4
    for a, b in zip(resumed.model.state_dict().values(), learner.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    moments, again = learner.optimizer.state_dict()["state"][0], resumed.optimizer.state_dict()["state"][0]
    assert torch.equal(moments["exp_avg_sq"], again["exp_avg_sq"])


def test_training_on_mixed_batches_lowers_the_loss(tmp_path: Path) -> None:
    # 32 fixed images, 4 steps an epoch, evaluated at the end only; from ~ln 10 = 2.30 (slowly: the targets are mixed,
    # and unmixed the same run falls to 2.02 in these 8 epochs).
    run = RunDir(loop.train(tiny_config(tmp_path, *RECORD_MODE, "data.mixup=0.4", "data.cutmix=1.0",
                                        "data.train_size=32", "train.batch_size=8", "train.epochs=8",
                                        "optim.schedule=none", "optim.lr=0.03", "optim.warmup_epochs=0",
                                        "train.ema=null")))
    losses = [r["train/epoch_loss"] for r in records(run.root) if "train/epoch_loss" in r]
    assert len(losses) == 8 and losses[-1] < min(losses[:3]) - 0.05 and losses[-1] < losses[0] - 0.08, losses


def test_evaluate_counts_every_test_image_once(tmp_path: Path) -> None:
    learner, data, *_ = parts(tiny_config(tmp_path, "data.test_size=23", "train.eval_batch_size=5"))
    result = engine.evaluate(learner.evaluated, data.test_batches(), learner.accelerator, data.classes, "flip")
    assert result.count == 23 == sum(result.per_class_count.values())
    assert 0.0 <= result.accuracy <= 1.0 and result.loss > 0


def test_train_in_process_writes_the_run_and_restores_signal_handlers(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "train.epochs=3", "optim.lr=0.05", "data.augment=none", "train.ema=null")
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)}
    run_dir = loop.train(config, preset=str(CONFIGS / "smoke.yaml"))
    assert {signum: signal.getsignal(signum) for signum in before} == before
    run = RunDir(run_dir)
    assert run.weights.is_file() and run.config.is_file() and json.loads(run.classes.read_text())[3] == "cat"
    evaluations = [r for r in records(run_dir) if "test/acc" in r]
    assert [(r["step"], r["train/epoch"], r["test/images"]) for r in evaluations] == [(4, 1.0, 20), (8, 2.0, 20),
                                                                                     (12, 3.0, 20)]
    losses = [r["train/epoch_loss"] for r in evaluations]
    assert losses[-1] < losses[0]  # it learns (the same 64 images each epoch)
    with pytest.raises(UsageError, match="already holds a run"):
        loop.train(config)


# --- a run directory is its run: every start is held to its config.yaml (cifarlab.identity.run_changes) ----------

def _files(run: RunDir) -> dict[str, int]:
    """Each file under the run directory (the trainers' lock aside) and when it was last written."""
    return {str(path.relative_to(run.root)): path.stat().st_mtime_ns for path in run.root.rglob("*")
            if path.is_file() and path != run.lock}


def test_a_finished_run_is_known_by_its_final_weights_and_refuses_another_configuration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir(loop.train(tiny_config(tmp_path, "train.epochs=1")))
    shutil.rmtree(run.checkpoints)
    written = _files(run)
    # Its checkpoints are gone, its final weights say it finished: the same run (where it runs aside) is done.
    again = tiny_config(tmp_path, "train.epochs=1", "train.resume=auto", "logging.level=info", "data.root=/moved",
                        "checkpoint.keep_last=1")
    assert loop.train(again) == run.root
    assert "has already finished" in capsys.readouterr().out and _files(run) == written
    # Another evaluation is another experiment, with or without a checkpoint: refused, every difference named.
    with pytest.raises(UsageError, match=r"another configuration.*: train\.eval_batch_size=20 \(was 10\), "
                                         r"train\.tta=flip \(was none\); "):
        loop.train(tiny_config(tmp_path, "train.epochs=1", "train.resume=auto", "train.tta=flip",
                               "train.eval_batch_size=20"))
    assert _files(run) == written  # nothing written, no history


def test_a_finished_run_continues_with_more_epochs_and_records_allowed_changes(tmp_path: Path) -> None:
    run = RunDir(loop.train(tiny_config(tmp_path, "train.epochs=1")))
    with pytest.raises(UsageError, match=r"train\.tta=flip \(was none\)"):
        loop.train(tiny_config(tmp_path, "train.epochs=2", "train.resume=auto", "train.tta=flip"))
    assert not run.history.exists()
    loop.train(tiny_config(tmp_path, "train.epochs=2", "train.resume=auto", "train.tta=flip",
                           "train.allow_changes=true"))
    (change,) = [json.loads(line) for line in run.history.read_text().splitlines()]
    assert (change["step"], change["changes"]) == (4, {"train.tta": ["none", "flip"], "train.epochs": [1, 2]})
    assert [r["step"] for r in records(run.root) if "test/acc" in r] == [4, 8]
    assert load_config(str(run.config)).train.tta == "none"  # config.yaml stays the experiment


def test_a_run_stopped_before_its_first_checkpoint_starts_afresh_only_as_itself(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "train.epochs=1", "train.resume=auto")
    run = RunDir(tmp_path / "tiny")
    run.root.mkdir()
    run.config.write_text(to_yaml(config))  # what a start leaves that is killed before its first checkpoint
    for resume in ("train.resume=auto", "train.resume=null"):
        with pytest.raises(UsageError, match=r"optim\.lr=0\.3 \(was 0\.02\)"):
            loop.train(tiny_config(tmp_path, "train.epochs=1", resume, "optim.lr=0.3"))
        assert list(_files(run)) == ["config.yaml"]
    loop.train(tiny_config(tmp_path, "train.epochs=1", "train.resume=null", "optim.lr=0.3", "train.allow_changes=true"))
    (change,) = [json.loads(line) for line in run.history.read_text().splitlines()]
    assert (change["step"], change["changes"]) == (0, {"optim.lr": [0.02, 0.3]})
    assert run.finished() and run.config.read_text() == to_yaml(config)

    same = RunDir(tmp_path / "same" / "tiny")
    same.root.mkdir(parents=True)
    same.config.write_text(to_yaml(config))
    loop.train(tiny_config(tmp_path / "same", "train.epochs=1", "train.resume=auto"))
    assert same.finished() and not same.history.exists()


def stop_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """SIGTERM to this process once training has taken ``step`` (as SLURM warns a job): the run stops there with a
    checkpoint. The signal comes from a wrapper around the checkpointer's per-step call; the stop is the trainer's."""
    after_step = Checkpointer.after_step

    def then_signal(self: Checkpointer, state: TrainState) -> None:
        after_step(self, state)
        if state.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Checkpointer, "after_step", then_signal)


def test_a_stopped_run_continues_with_the_command_it_prints_and_its_epoch_loss_is_the_whole_epochs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A preset with overrides: the preset again with train.resume=auto alone would differ from the run's config.
    overrides = ("train.epochs=2", "optim.lr=0.05", "data.augment=none", "logging.level=info")
    preset = str(CONFIGS / "smoke.yaml")
    whole = RunDir(loop.train(tiny_config(tmp_path / "whole", *overrides), preset=preset))
    stop_at(monkeypatch, 5)  # mid-epoch 2 (4 steps per epoch)
    monkeypatch.chdir(tmp_path)  # the paths it prints are relative to where the command ran
    with pytest.raises(Preempted):
        loop.train(tiny_config(tmp_path / "stopped", *overrides), preset=preset)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    run = RunDir(tmp_path / "stopped" / "tiny")
    printed = re.search(r"stopped on SIGTERM at step 5: checkpoint (\S+) saved; continue with "
                        r"python -m cifarlab\.train (.*)$", capsys.readouterr().out, re.MULTILINE)
    assert printed is not None
    assert printed.group(1) == str(run.checkpoint(5).relative_to(tmp_path))
    arguments = shlex.split(printed.group(2))
    assert arguments == ["--config", str(run.config.relative_to(tmp_path)), "train.resume=auto"]
    assert train_command.main(arguments) == 0  # the printed arguments through the trainer's own command line
    assert "resumed from" in capsys.readouterr().out

    # The resumed epoch's loss covers all its batches, as the uninterrupted run's does (the weights are equal).
    def epoch_losses(path: Path) -> list[float]:
        return [r["train/epoch_loss"] for r in records(path) if "test/acc" in r]

    assert epoch_losses(run.root) == pytest.approx(epoch_losses(whole.root), rel=1e-6, abs=0)
    first, second = load_file(str(whole.weights)), load_file(str(run.weights))
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_a_torn_last_metrics_line_is_left_out_when_the_run_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stop_at(monkeypatch, 5)
    with pytest.raises(Preempted):
        loop.train(tiny_config(tmp_path, "train.epochs=2"))
    monkeypatch.undo()
    run = RunDir(tmp_path / "tiny")
    with open(run.metrics, "a") as handle:
        handle.write('{"step": 6, "time": 1765000000.5, "train/lo')  # killed while appending a record
    capsys.readouterr()
    loop.train(tiny_config(tmp_path, "train.epochs=2", "train.resume=auto"))
    notes = [line for line in capsys.readouterr().err.splitlines() if "torn last line" in line]
    assert notes == [f"cifarlab: note: {run.metrics}:4: left out a torn last line (a trainer killed while writing it); "
                     f"the file is rewritten without it"]
    written = [json.loads(line) for line in run.metrics.read_text().splitlines()]  # every line whole
    assert [r["step"] for r in written] == [2, 4, 4, 6, 8, 8]  # steps logged and evaluated, each once


def test_the_batch_loop_reads_nothing_back_per_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The epoch's running loss stays on the device: host reads (item, tolist) do not grow with the batches."""
    reads: list[str] = []
    item, tolist = torch.Tensor.item, torch.Tensor.tolist
    counts = []
    for images in (64, 128):  # 4 and 8 steps; no logging, no saves inside the epoch
        learner, data, pace, recorder, checkpointer, _ = parts(tiny_config(
            tmp_path / str(images), f"data.train_size={images}", "logging.every_n_steps=1000",
            "checkpoint.every_n_steps=null"))
        reads.clear()
        monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append("item") or item(self))
        monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append("tolist") or tolist(self))
        with StopRequest(learner.accelerator, lambda message: None) as stop:
            stats = train_epoch(learner, data, pace, TrainState(), recorder, checkpointer, stop, no_nan(learner, 1000))
        monkeypatch.undo()
        counts.append((stats.batches, len(reads)))
    assert counts[0][0] == 4 and counts[1][0] == 8 and counts[0][1] == counts[1][1]


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts what makes the host wait for the device: a tensor read back (item, tolist, bool, int, float,
    index, numpy), copied to the CPU, moved to another device, or indexed with indices on another device. On the
    CPU every tensor is a host tensor: this counts the reads that would wait for a GPU."""

    READS: ClassVar[set[object]] = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
             torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu}

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.seen: list[tuple[int, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func in self.READS:
            # The sampler draws the order with a CPU generator: host tensors in every run, read on the host.
            if f"torch{os.sep}utils{os.sep}data{os.sep}" not in sys._getframe(1).f_code.co_filename:
                self.seen.append((self.step, name))
        elif func is torch.Tensor.to and isinstance(args[0], torch.Tensor):
            target = next((a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))), None)
            if target is not None and torch.device(target).type != args[0].device.type:
                self.seen.append((self.step, f"to({target})"))
        elif func is torch.Tensor.__getitem__ and isinstance(args[1], torch.Tensor) \
                and args[1].device != args[0].device:
            self.seen.append((self.step, "indexed from another device"))
        return func(*args, **kwargs)


def test_steps_of_the_default_preset_make_no_host_device_syncs_between_logging_boundaries(tmp_path: Path) -> None:
    """The default preset (tensor path, EMA on) over 8 steps: a host read only at the logging steps (every 4th)."""
    config = load_config(None, ["data.name=fake", "data.train_size=128", "data.test_size=20", "train.batch_size=16",
                                "logging.every_n_steps=4", "checkpoint.every_n_steps=null",
                                "logging.wandb.mode=disabled", "logging.level=warning",
                                f"train.output_dir={tmp_path}", "train.run_name=tiny"])
    assert config.data.loader == "tensor" and config.train.ema
    learner, data, pace, recorder, checkpointer, _ = parts(config)
    counter = HostReads()
    step = learner.step

    def counted_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        counter.step += 1
        return step(images, labels)

    learner.step = counted_step  # type: ignore[method-assign]
    with StopRequest(learner.accelerator, lambda message: None) as stop, counter:
        stats = train_epoch(learner, data, pace, TrainState(), recorder, checkpointer, stop,
                            engine.LossGuard(learner.accelerator, lambda: None, 4))
    assert stats.batches == 8
    per_step = {step: [name for at, name in counter.seen if at == step] for step in range(1, 9)}
    assert all(not reads for step, reads in per_step.items() if step % 4), str(per_step)
    assert per_step[4], "the logging step reads the loss back"


def test_compile_makes_one_graph_for_training_and_reports_its_seconds(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile compiles the training forward once (static shapes); evaluation (eval mode, no_grad, the flip
    views, a partial last test batch) runs eagerly: the trained model itself, no EMA. Dynamo's "eager" backend: graphs
    counted, nothing compiled, and the weights are the eager run's, bitwise (test_speed_switches.py trains with
    torch's own backend on 2 processes)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setattr(engine, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    # 20 test images in batches of 8: a partial last batch; flip TTA: two views, one with other strides.
    options = ("train.ema=null", "train.epochs=2", "train.tta=flip", "train.eval_batch_size=8", "data.test_size=20")
    run_dir = loop.train(tiny_config(tmp_path / "compiled", "train.compile=true", *options))
    assert counters["stats"]["unique_graphs"] == 1
    evaluations = [r for r in records(run_dir) if "test/acc" in r]
    assert len(evaluations) == 2 and evaluations[0]["test/images"] == 20
    assert evaluations[0]["train/compile_seconds"] > 0 and "train/compile_seconds" not in evaluations[1]
    torch._dynamo.reset()
    eager = RunDir(loop.train(tiny_config(tmp_path / "eager", *options)))
    first, second = load_file(str(eager.weights)), load_file(str(RunDir(run_dir).weights))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert [r["test/acc"] for r in records(eager.root) if "test/acc" in r] == [r["test/acc"] for r in evaluations]


# --- a speed record's settings: evaluated only at the end, no epoch-end checkpoints ----------------------------

RECORD_MODE = ("train.epochs=3", "train.eval_every_epoch=false", "checkpoint.every_epoch=false",
               "checkpoint.every_n_steps=null", "optim.lr=0.05", "data.augment=none")


def test_record_mode_evaluates_once_saves_no_epoch_checkpoints_and_still_finishes(tmp_path: Path) -> None:
    run = RunDir(loop.train(tiny_config(tmp_path / "record", *RECORD_MODE)))
    evaluations = [r for r in records(run.root) if "test/acc" in r]
    assert [(r["step"], r["train/epoch"], r["test/images"]) for r in evaluations] == [(12, 3.0, 20)]
    trained = [r for r in records(run.root) if "train/epoch_loss" in r and "test/acc" not in r]
    assert [r["train/epoch"] for r in trained] == [1.0, 2.0]  # the epochs not evaluated still say how they went
    assert run.step_checkpoints() == [] and not run.best.exists()
    assert run.weights.is_file() and run.predictions.is_file()

    # The same training, evaluated and saved every epoch, ends with the same weights: the mode changes only those.
    usual = RunDir(loop.train(tiny_config(tmp_path / "usual", *RECORD_MODE[:1], *RECORD_MODE[3:])))
    first, second = load_file(str(usual.weights)), load_file(str(run.weights))
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_record_mode_still_saves_on_a_stop_and_resumes_to_the_same_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = RunDir(loop.train(tiny_config(tmp_path / "whole", *RECORD_MODE)))
    stop_at(monkeypatch, 6)  # mid-epoch 2
    with pytest.raises(Preempted):
        loop.train(tiny_config(tmp_path / "stopped", *RECORD_MODE))
    monkeypatch.undo()
    run = RunDir(tmp_path / "stopped" / "tiny")
    assert [p.name for p in run.step_checkpoints()] == ["step_00000006"]  # the stop's save, and only it
    loop.train(tiny_config(tmp_path / "stopped", *RECORD_MODE, "train.resume=auto"))
    assert [r["step"] for r in records(run.root) if "test/acc" in r] == [12]
    first, second = load_file(str(whole.weights)), load_file(str(run.weights))
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_a_target_accuracy_needs_every_epoch_evaluated(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="train.target_accuracy needs train.eval_every_epoch"):
        tiny_config(tmp_path, "train.eval_every_epoch=false", "train.target_accuracy=0.5")


# --- a validation split (data.val_size): every choice on it, the test set touched once, at the end (issue 30) ------

def _evaluated(run: RunDir) -> list[tuple[int, bool, bool]]:
    return [(r["step"], "val/acc" in r, "test/acc" in r) for r in records(run.root)
            if "val/acc" in r or "test/acc" in r]


def test_with_a_validation_split_every_choice_is_made_on_it_and_the_test_set_is_evaluated_at_the_end(
        tmp_path: Path) -> None:
    split = ("data.val_size=16", "train.epochs=3", "optim.lr=0.05", "data.augment=none")
    run = RunDir(loop.train(tiny_config(tmp_path / "split", *split)))
    assert _evaluated(run) == [(4, True, False), (8, True, False), (12, True, True)]
    final = [r for r in records(run.root) if "test/acc" in r][-1]
    assert final["val/images"] == 16 and final["test/images"] == 20  # 64 training images left after the split
    assert load_file(str(run.predictions))["labels"].numel() == 20  # compare's paired tests: the test images

    # Every evaluation on the test set too: the choices stay on the validation split.
    every = RunDir(loop.train(tiny_config(tmp_path / "every", *split, "train.test_every_epoch=true")))
    assert _evaluated(every) == [(4, True, True), (8, True, True), (12, True, True)]
    evaluations = [r for r in records(every.root) if "val/acc" in r]
    best = json.loads((every.best / "trainer_state.json").read_text())
    chosen = max(range(3), key=lambda i: (evaluations[i]["val/acc"], -i))  # the first of equals
    assert (best["epoch"], best["best_epoch"], best["best_accuracy"]) == (chosen + 1, chosen + 1,
                                                                          evaluations[chosen]["val/acc"])
    weights = [load_file(str(run.weights)), load_file(str(every.weights))]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])  # evaluating trains nothing

    # A target is reached on the validation split: the run ends there, with the test set evaluated then.
    early = RunDir(loop.train(tiny_config(tmp_path / "early", *split, "train.target_accuracy=0.01")))
    assert _evaluated(early) == [(4, True, True)]
    reached = [r for r in records(early.root) if "target/epoch" in r]
    assert [r["target/epoch"] for r in reached] == [1]
