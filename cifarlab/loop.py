"""The training run: build -> prepare -> resume -> for each epoch: train, evaluate, record, checkpoint.

``train(config)`` works in-process too (tests, notebooks): signal handlers are restored and the
Accelerator's trackers and process group torn down when it returns or fails.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch import nn

from cifarlab import checkpoint, console, data, engine, environment, models, preemption
from cifarlab.config import Config, differences, load_config, to_yaml, with_run_name
from cifarlab.errors import UsageError
from cifarlab.metrics import EvalResult
from cifarlab.recorder import Recorder
from cifarlab.rundir import RunDir


def train(config: Config, preset: Optional[str] = None) -> Path:
    """Train as configured (``preset``: the --config file it came from, for the start-up line); return the
    run directory."""
    accelerator = engine.build_accelerator(config, trackers=True)
    out = console.Console(accelerator.is_main_process, quiet=config.logging.level == "warning")
    # From here on SIGUSR1/SIGTERM mean "checkpoint and exit", also while tearing down: a signal that follows a
    # stop (SLURM cancels a job it requeues) must not kill the process before it has finished W&B.
    with preemption.StopRequest(accelerator, out.log) as stop:
        try:
            return run(accelerator, config, out, stop, preset)
        finally:
            accelerator.end_training()  # finishes W&B (also after an error) and leaves the process group


def run(accelerator: Accelerator, config: Config, out: console.Console, stop: preemption.StopRequest,
        preset: Optional[str] = None) -> Path:
    started = time.perf_counter()
    config, new_wandb_id = resolve_run(config)
    run_dir = RunDir.of(config.train.output_dir, config.train.run_name or "")
    resume_from = resume_point(accelerator, config.train.resume, run_dir, out.warn)

    # --- build: data, model, optimizer ---
    set_seed(config.train.seed)
    datasets = data.build_data(config.data, config.train.seed, accelerator.main_process_first(), out.warn,
                               device=accelerator.device)
    models.check_input_size(config.model.name, *datasets.input_shape())
    model = models.build_model(config.model, num_classes=len(datasets.classes))
    if models.has_whitening(model):  # fastnet's first layer is computed from the data, not trained
        models.init_whitening(model, datasets.sample(train=True, count=5000, augmented=False)[0])
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    ema = engine.build_ema(model, config.train.ema, accelerator.device) if config.train.ema else None
    steps_per_epoch = datasets.prepare(accelerator, config.train.batch_size, config.train.eval_batch_size)
    optimizer = engine.build_optimizer(config.optim, model)
    optimizer_steps_per_epoch = -(-steps_per_epoch // config.train.grad_accum_steps)
    scheduler = engine.build_scheduler(config.optim, optimizer, config.train.epochs, optimizer_steps_per_epoch)

    # --- prepare ---
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if config.train.compile:
        accelerator.unwrap_model(model).compile()  # in place: parameter names and checkpoints stay the same
    learner = engine.Learner(accelerator, model, optimizer, scheduler,
                             nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing), ema,
                             config.optim.grad_clip, memory_format)

    # --- run directory: written only once the data and model are known to work ---
    accelerator.wait_for_everyone()  # every rank has checked the run directory before anyone writes to it
    record: Optional[dict[str, Any]] = None  # the run record (main process)
    if accelerator.is_main_process:
        record = environment.collect(accelerator, config.data)
        run_dir.root.mkdir(parents=True, exist_ok=True)
        run_dir.config.write_text(to_yaml(config))
        run_dir.classes.write_text(json.dumps(list(datasets.classes)))
        environment.write(run_dir, record)
    changed = differences(config, load_config(preset))
    out.log(f"config: {preset or 'built-in defaults'}" + (f" with {' '.join(changed)}" if changed else "")
            + f"; resolved config in {run_dir.config}")
    out.log(f"run directory {run_dir.root}; {accelerator.num_processes} process(es) on {accelerator.device.type}, "
            f"mixed precision {accelerator.mixed_precision}; {data.size(datasets.train)} training and "
            f"{data.size(datasets.test)} test images")

    # --- resume ---
    checkpointer = checkpoint.Checkpointer(accelerator, run_dir, config.checkpoint, steps_per_epoch,
                                           {"ema": ema} if ema is not None else {}, protect=resume_from)
    state = checkpoint.TrainState(wandb_run_id=new_wandb_id)
    if resume_from is not None:
        state = checkpointer.load(resume_from)
        out.log(f"resumed from {resume_from}: epoch {state.epoch + 1}, step {state.global_step}")
    state.wall.start(started)  # on top of the time the run had spent before this start
    recorder = Recorder(accelerator, run_dir, config, out, steps_per_epoch)
    recorder.start(state, state.wandb_run_id or new_wandb_id, continuing=resume_from is not None, environment=record)
    recorder.training_images(datasets, state)

    # --- train: every epoch, or until an evaluation reaches train.target_accuracy ---
    result: Optional[EvalResult] = None
    while state.epoch < config.train.epochs and state.target is None:
        stats = engine.train_epoch(learner, datasets, state, recorder, checkpointer, stop)
        result = learner.evaluate(datasets, config.train.tta)
        state.end_epoch(result.accuracy)
        recorder.evaluation(state, result, stats)
        if state.reached(config.train.target_accuracy, result.accuracy):
            recorder.target(state)
        checkpointer.after_epoch(state)
        if state.epoch < config.train.epochs and state.target is None:
            stop.stop_if_agreed(state, checkpointer)  # a signal during evaluation: the epoch is saved, stop here

    # --- finish ---
    if result is None:  # resumed after the last evaluation (stopped while finishing): evaluate the model again
        result = learner.evaluate(datasets, config.train.tta)
    recorder.final_pictures(datasets, learner, state, result)
    recorder.predictions(result, config.data, datasets.classes)
    accelerator.wait_for_everyone()
    accelerator.save_model(learner.evaluated, str(run_dir.root), safe_serialization=True)
    recorder.model_artifact(state)
    out.log(f"done in {time.perf_counter() - started:.0f}s: best test accuracy {100 * state.best_accuracy:.2f} % "
            f"(epoch {state.best_epoch}); weights in {run_dir.weights}, checkpoints in {run_dir.checkpoints}")
    return run_dir.root


def resolve_run(config: Config) -> tuple[Config, str]:
    """Fill in the run name (chosen on the main process, shared with all) and a new W&B run id."""
    chosen = [config.train.run_name or f"{config.model.name}-{datetime.now():%Y%m%d-%H%M%S}", uuid.uuid4().hex[:12]]
    broadcast_object_list(chosen)
    return with_run_name(config, chosen[0]), chosen[1]


def resume_point(accelerator: Accelerator, resume: Optional[str], run_dir: RunDir,
                 warn: Callable[[str], None]) -> Optional[Path]:
    """The checkpoint to continue from, or None for a fresh start. Never trains over a finished run.

    Decided on the main process (verifying a checkpoint reads all of it) and shared with the others.
    """
    decision: list[Optional[str]] = [None, None]  # checkpoint path, error
    if accelerator.is_main_process:
        try:
            found = _find_resume_point(resume, run_dir, warn)
            decision[0] = str(found) if found else None
        except UsageError as error:
            decision[1] = str(error)
    broadcast_object_list(decision)
    if decision[1] is not None:
        raise UsageError(decision[1])
    return Path(decision[0]) if decision[0] else None


def _find_resume_point(resume: Optional[str], run_dir: RunDir, warn: Callable[[str], None]) -> Optional[Path]:
    if resume is None:
        if run_dir.holds_a_run():
            raise UsageError(f"run directory {run_dir.root} already holds a run; continue it with train.resume=auto "
                             f"or start another with a new train.run_name")
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
