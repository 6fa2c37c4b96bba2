"""The training run: build -> prepare -> resume -> for each epoch: train, evaluate, record, checkpoint.

``train(config)`` works in-process too (tests, notebooks): signal handlers are restored and the
Accelerator's trackers and process group torn down when it returns or fails.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, TypeVar, cast

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch import nn

from cifarlab import data, files, models
from cifarlab.config import Config, load_config, shown, to_yaml, with_run_name
from cifarlab.data.path import DataPath, size
from cifarlab.errors import UsageError
from cifarlab.identity import BOOKKEEPING, FIXED, differences, run_changes
from cifarlab.report import console
from cifarlab.report.metrics import EpochStats, EvalResult
from cifarlab.run import checkpoint, engine, environment, preemption, tracking, versions
from cifarlab.run.epoch import train_epoch
from cifarlab.run.pruning import Pruning
from cifarlab.run.recorder import Recorder
from cifarlab.run.rundir import RunDir, drop_torn_tail, read_records
from cifarlab.run.runlock import RunLock
from cifarlab.run.state import Pace, TrainState

T = TypeVar("T")


def train(config: Config, preset: Optional[str] = None) -> Path:
    """Train as configured (``preset``: the --config file it came from, for the start-up line); return the
    run directory."""
    versions.guard_torchvision()  # a mismatched torch/torchvision pair: one line, not a traceback mid-run
    accelerator = engine.build_accelerator(config, trackers=True)
    out = console.Console(accelerator.is_main_process, quiet=config.logging.level == "warning")
    config, new_wandb_id = resolve_run(config)
    run_dir = RunDir.of(config.train.output_dir, config.train.run_name or "")
    lock = RunLock(run_dir)
    on_main(accelerator, lock.acquire)  # one trainer per run directory: a second one stops here, having written nothing
    try:
        # From here on SIGUSR1/SIGTERM/SIGINT mean "checkpoint and exit", also while tearing down: a signal that
        # follows a stop (SLURM cancels a job it requeues) must not kill the process before it has finished W&B.
        with preemption.StopRequest(accelerator, out.log, run_dir) as stop:
            try:
                return run(accelerator, config, run_dir, new_wandb_id, out, stop, preset)
            except BaseException as error:
                tracking.finish(accelerator, getattr(error, "exit_code", 130 if isinstance(error, KeyboardInterrupt)
                                                     else 1))  # W&B records the run as failed or stopped
                if isinstance(error, OSError) and error.errno in files.OUT_OF_SPACE:
                    raise checkpoint.out_of_space(error, run_dir) from error
                raise
            finally:
                accelerator.end_training()  # finishes W&B (also after an error) and leaves the process group
    finally:
        lock.release()


def run(accelerator: Accelerator, config: Config, run_dir: RunDir, new_wandb_id: str, out: console.Console,
        stop: preemption.StopRequest, preset: Optional[str] = None) -> Path:
    started = time.perf_counter()
    resumed = resume_point(accelerator, config, run_dir, out.warn)
    resume_from = resumed.checkpoint
    if resumed.finished:
        out.log(finished_line(run_dir))
        return run_dir.root

    # --- build: data, model, optimizer, prepared for the launch ---
    set_seed(config.train.seed)
    datasets = data.build_data(config.data, config.train.seed, engine.data_first(accelerator), out.warn,
                               device=accelerator.device, progress=out)
    learner, pace = build_learner(accelerator, config, datasets)

    # --- resume: the checkpoint is restored before anything is written, so a refused one leaves the run as it was ---
    guard = engine.LossGuard(accelerator, lambda: checkpoint.latest_name(run_dir), config.logging.every_n_steps,
                             run_dir)

    def before_save(state: TrainState) -> None:
        guard.check(state)
        learner.sync_average()  # the EMA's BatchNorm statistics are saved as their mean over ranks

    checkpointer = checkpoint.Checkpointer(accelerator, run_dir, config.checkpoint, pace.steps_per_epoch,
                                           {"ema": learner.ema} if learner.ema is not None else {},
                                           protect=resume_from, healthy=before_save)
    state = restore(learner, checkpointer, resumed, out, new_wandb_id)

    # --- run directory: written only once the data, the model and the checkpoint are known to work ---
    record = start_run_directory(accelerator, config, run_dir, datasets, out, preset, resumed, state)
    state.wall.start(started)  # on top of the time the run had spent before this start
    tracker = tracking.start(accelerator, config, run_dir, state.wandb_run_id or new_wandb_id, record,
                             continuing=resume_from is not None, out=out)
    recorder = Recorder(accelerator, run_dir, out, pace, config.train.epochs, config.logging.every_n_steps, tracker,
                        config.logging.per_class_every_epoch)
    recorder.start(state)
    recorder.training_images(datasets, state)

    # --- train: every epoch, or until an evaluation reaches train.target_accuracy or a search prunes the run ---
    result: Optional[EvalResult] = None
    pruning = Pruning.from_environment(accelerator)
    while state.epoch < config.train.epochs and not state.ended_early:
        stats = train_epoch(learner, datasets, pace, state, recorder, checkpointer, stop, guard)
        result = evaluate_epoch(config, learner, datasets, state, recorder, stats, pruning) or result
        checkpointer.after_epoch(state)
        if state.epoch < config.train.epochs and not state.ended_early:
            stop.stop_if_agreed(state, checkpointer)  # a signal during evaluation: the epoch is saved, stop here

    # --- finish ---
    if result is None:  # resumed after the last evaluation (stopped while finishing): evaluate the model again
        result = learner.evaluate(datasets, config.train.tta)
    recorder.final_table(result)
    recorder.final_pictures(datasets, functools.partial(learner.predict, tta=config.train.tta), state, result)
    recorder.predictions(result, config.data, datasets.classes)
    checkpointer.save_weights(learner.evaluated)
    recorder.model_artifact(state)
    out.log(f"done in {time.perf_counter() - started:.0f}s: {outcome(state, result, datasets.val is not None)}; "
            f"weights in {files.typed(run_dir.weights)}, checkpoints in {files.typed(run_dir.checkpoints)}")
    return run_dir.root


def finished_line(run_dir: RunDir) -> str:
    """What a start of a finished run says: nothing to do, and how to run the experiment again."""
    config = shlex.quote(files.typed(run_dir.config))
    return (f"run {files.typed(run_dir.root)} has already finished (final weights in {files.typed(run_dir.weights)});"
            f" nothing to do. Rerun the experiment as a new run with --config {config} train.run_name=<new name>")


def outcome(state: TrainState, test: EvalResult, held_out: bool) -> str:
    """What the run's last line says it reached: the best accuracy (by which the best checkpoint was chosen) and,
    with a validation split, the final test accuracy beside it."""
    if not held_out:
        return f"best test accuracy {100 * state.best_accuracy:.2f} % (epoch {state.best_epoch})"
    return (f"best validation accuracy {100 * state.best_accuracy:.2f} % (epoch {state.best_epoch}), final test "
            f"accuracy {100 * test.accuracy:.2f} %")


def evaluate_epoch(config: Config, learner: engine.Learner, datasets: DataPath, state: TrainState,
                   recorder: Recorder, stats: EpochStats, pruning: Optional[Pruning] = None) -> Optional[EvalResult]:
    """End the epoch ``state`` has just trained: evaluate and record it (every epoch, or with
    train.eval_every_epoch=false only the last: a speed record's), or record its training figures alone; return
    the test set's evaluation, where the test set was evaluated.

    Every choice is made on the held-out validation split where there is one (data.val_size), else on the test set:
    the best checkpoint, train.target_accuracy, and a search's pruner, to which a search's trial reports the figure.
    With a split the test set is evaluated once, at the end: after the last epoch, or the epoch the run ends early
    at (every epoch with train.test_every_epoch)."""
    last = state.epoch + 1 == config.train.epochs
    if not (config.train.eval_every_epoch or last):
        state.end_epoch(None)
        recorder.trained(state, stats)
        return None
    chooser = "val" if datasets.val is not None else "test"
    results = {chooser: learner.evaluate(datasets, config.train.tta, chooser)}
    chosen = results[chooser]
    state.end_epoch(chosen.accuracy)
    reached = state.reached(config.train.target_accuracy, chosen.accuracy)
    pruned = not reached and pruning is not None and pruning.stops(state, chosen.values(chooser),
                                                                   config.train.epochs)
    if chooser == "val" and (last or reached or pruned or config.train.test_every_epoch):
        results["test"] = learner.evaluate(datasets, config.train.tta, "test")
    recorder.evaluation(state, results, stats)
    if reached:
        recorder.target(state)
    elif pruned:
        recorder.pruned(state)
    return results.get("test")


def build_learner(accelerator: Accelerator, config: Config, datasets: DataPath) -> tuple[engine.Learner, Pace]:
    """The model for ``datasets``, its weight average, optimizer and schedule, prepared by Accelerate (the loaders
    too); and the pace of the training batches (the one place the trainer reads train.batch_size for them)."""
    models.check_input_size(config.model.name, *datasets.input_shape())
    model = models.build_model(config.model, num_classes=len(datasets.classes))
    if models.has_whitening(model):  # fastnet's first layer is computed from the data, not trained
        models.init_whitening(model, datasets.sample(train=True, count=5000, augmented=False)[0])
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    ema = engine.build_ema(model, config.train.ema, accelerator.device) if config.train.ema else None
    batch_size = config.train.batch_size
    steps_per_epoch = datasets.prepare(accelerator, batch_size, config.train.eval_batch_size)
    optimizer = engine.build_optimizer(config.optim, model)
    optimizer_steps_per_epoch = -(-steps_per_epoch // config.train.grad_accum_steps)
    scheduler = engine.build_scheduler(config.optim, optimizer, config.train.epochs, optimizer_steps_per_epoch)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    forward = engine.compile_training_forward(model) if config.train.compile else None
    learner = engine.Learner(accelerator, model, optimizer, scheduler,
                             nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing), ema,
                             config.optim.grad_clip, memory_format, forward)
    return learner, Pace(batch_size, steps_per_epoch)


def start_run_directory(accelerator: Accelerator, config: Config, run_dir: RunDir, datasets: DataPath,
                        out: console.Console, preset: Optional[str], resumed: Resume,
                        state: TrainState) -> Optional[dict[str, Any]]:
    """Write the run's files (main process), the changes this start makes among them (history.jsonl, from the step
    ``state`` is at), and say where the run is; the run record on the main process, else None."""
    accelerator.wait_for_everyone()  # every rank has checked the run directory before anyone writes to it
    record: Optional[dict[str, Any]] = None
    if accelerator.is_main_process:
        record = environment.collect(accelerator, datasets.source_keys())
        write_run_files(run_dir, config, datasets.classes, record)
        drop_torn_tail(run_dir.history, out.note)  # before a new line would continue it
        if resumed.changes:
            note_changes(run_dir, resumed.changes, state.global_step, out.log)
    changed = differences(config, load_config(preset), leaving_out=BOOKKEEPING)
    out.log(f"config: {preset or 'built-in defaults'}" + (f" with {' '.join(changed)}" if changed else "")
            + f"; resolved config in {files.typed(run_dir.config)}")
    out.log(f"run directory {files.typed(run_dir.root)}; {accelerator.num_processes} process(es) on "
            f"{accelerator.device.type}, mixed precision {accelerator.mixed_precision}; {size(datasets.train)} "
            f"training "
            + (f"({size(datasets.val)} held out for validation, data.val_seed={config.data.val_seed}) "
               if datasets.val is not None else "") + f"and {size(datasets.test)} test images")
    return record


def restore(learner: engine.Learner, checkpointer: checkpoint.Checkpointer, resumed: Resume, out: console.Console,
            new_wandb_id: str) -> TrainState:
    """The state this start begins from: a fresh one, or the checkpoint the run resumes from (with allowed changes
    to the optimizer or the schedule, the config's learning rates and schedule at the step it reached). Writes
    nothing: a checkpoint that does not fit the model is refused with the run directory as it was."""
    if resumed.checkpoint is None:
        return TrainState(wandb_run_id=new_wandb_id)
    configured = engine.Schedule.of(learner)
    state = checkpointer.load(resumed.checkpoint, learner.model)
    if any(key.startswith("optim.") or key == "train.epochs" for key in resumed.changes or {}):
        configured.restore(learner)
    out.log(f"resumed from {files.typed(resumed.checkpoint)}: epoch {state.epoch + 1}, step {state.global_step}")
    return state


def resolve_run(config: Config) -> tuple[Config, str]:
    """Fill in the run name (chosen on the main process, shared with all) and a new W&B run id."""
    chosen = [config.train.run_name or f"{config.model.name}-{datetime.now():%Y%m%d-%H%M%S}", uuid.uuid4().hex[:12]]
    broadcast_object_list(chosen)
    return with_run_name(config, chosen[0]), chosen[1]


def on_main(accelerator: Accelerator, action: Callable[[], T]) -> T:
    """``action()`` on the main process, its result (or its :class:`UsageError`) handed to every rank."""
    outcome: list[Any] = [None, None]  # result, error message
    if accelerator.is_main_process:
        try:
            outcome[0] = action()
        except UsageError as error:
            outcome[1] = str(error)
    broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise UsageError(outcome[1])
    return cast(T, outcome[0])


@dataclass(frozen=True)
class Resume:
    """How a start relates to the run directory's earlier starts."""

    checkpoint: Optional[Path] = None
    """The checkpoint to continue from; None for a fresh start."""
    finished: bool = False
    """The run has finished already: nothing to do."""
    changes: Optional[dict[str, list[Any]]] = None
    """What this start changes, {key: [before, now]}, for history.jsonl (``processes`` among them)."""


def resume_point(accelerator: Accelerator, config: Config, run_dir: RunDir, warn: Callable[[str], None]) -> Resume:
    """Where this start continues from. A run directory with a config.yaml is that run: every start in it is held
    to it first (cifarlab.identity.run_changes), so it never trains over a finished run, nor continues or restarts a
    run as another experiment (unless train.allow_changes).

    Decided on the main process (verifying a checkpoint reads all of it) and shared with the others.
    """
    def decide() -> Resume:
        found = _find_resume_point(config.train.resume, run_dir, warn)
        changes = {key: list(pair) for key, pair in _identity_changes(config, run_dir).items()}
        if not run_dir.finished():  # damage in the files a start rewrites is refused before anything is written
            for appended in (run_dir.metrics, run_dir.history):
                read_records(appended, tail_may_be_torn=True)
        if found is None:
            if not run_dir.finished():  # a fresh start, or a run stopped before its first checkpoint: afresh
                return Resume(changes=changes or None)
            # Finished, its checkpoints removed: its final files say so; more epochs would need a checkpoint.
            old, new = changes.get("train.epochs", [0, 0])
            if new > old:
                raise UsageError(f"run {files.typed(run_dir.root)} has finished and has no checkpoint to continue "
                                 f"from to train.epochs={new}; start a new run (new train.run_name) to train longer")
            return Resume(finished=True)
        position = json.loads((found / checkpoint.TRAINER_STATE).read_text())
        ended_early = position.get("target") is not None or position.get("pruned") is not None
        if run_dir.finished() and (position["epoch"] >= config.train.epochs or ended_early):
            return Resume(found, finished=True)
        before = environment.last_process_count(run_dir)
        if before is not None and before != accelerator.num_processes:
            changes["processes"] = [before, accelerator.num_processes]
        return Resume(found, changes=changes)

    return on_main(accelerator, decide)


def _identity_changes(config: Config, run_dir: RunDir) -> dict[str, tuple[Any, Any]]:
    """The allowed changes this start makes to the run in ``run_dir`` ({} where it has no config.yaml yet);
    refused ones stop it here, all of them named in one line."""
    if not run_dir.config.is_file():
        return {}
    try:
        saved = load_config(str(run_dir.config))
    except UsageError as error:
        raise UsageError(f"run directory {files.typed(run_dir.root)}: its config.yaml does not load ({error}); move "
                         f"the run away or start a new one (new train.run_name)") from None
    compared = run_changes(saved, config)
    if compared.refused:
        anyway = ("" if compared.refused.keys() & set(FIXED)
                  else ", or pass train.allow_changes=true to record the changes and go on anyway")
        raise UsageError(f"run directory {files.typed(run_dir.root)} holds a run of another configuration; its "
                         f"config.yaml differs in: " + ", ".join(f"{key}={shown(new)} (was {shown(old)})"
                                                     for key, (old, new) in compared.refused.items())
                         + "; use the run's own settings, start a new run (new train.run_name)" + anyway)
    return compared.recorded


def _find_resume_point(resume: Optional[str], run_dir: RunDir, warn: Callable[[str], None]) -> Optional[Path]:
    if resume is None:
        if run_dir.holds_a_run():
            raise UsageError(f"run directory {files.typed(run_dir.root)} already holds a run; continue it with "
                             f"train.resume=auto or start another with a new train.run_name")
        return None
    if resume == "auto":
        return checkpoint.resumable_checkpoint(run_dir, warn)
    path = Path(resume)
    if not path.is_dir():
        raise UsageError(f"train.resume={resume}: no such checkpoint directory; use train.resume=auto or a "
                         f"folder under <run>/checkpoints/")
    reason = checkpoint.problem(path)
    if reason is not None:
        raise UsageError(f"train.resume={resume}: this checkpoint is damaged ({reason}); use train.resume=auto "
                         f"to take the newest intact one, or another folder under <run>/checkpoints/")
    return path


def write_run_files(run_dir: RunDir, config: Config, classes: Sequence[str], record: dict[str, Any]) -> None:
    """The run's identity and record (main process), each file replaced whole (cifarlab.files: a kill leaves the old
    one). config.yaml is written by the first start only, without train.resume: it is the experiment, and reruns it
    as a new run under a new train.run_name. What a killed start left half-written is removed first."""
    for folder in (run_dir.root, run_dir.checkpoints):
        files.remove_leftovers(folder)
    if not run_dir.config.is_file():
        identity = dataclasses.replace(config, train=dataclasses.replace(config.train, resume=None))
        files.write_whole(run_dir.config, to_yaml(identity))
    files.write_whole(run_dir.classes, json.dumps(list(classes)))
    environment.write(run_dir, record)


def note_changes(run_dir: RunDir, changes: dict[str, list[Any]], step: int, log: Callable[[str], None]) -> None:
    """Record in history.jsonl what this start changed, from which step (main process)."""
    files.append(run_dir.history, json.dumps({"step": step, "time": round(time.time(), 3), "changes": changes}) + "\n")
    log(f"changed on resume, from step {step}: "
        + ", ".join(f"{key} {shown(old)} -> {shown(new)}" for key, (old, new) in changes.items()))
