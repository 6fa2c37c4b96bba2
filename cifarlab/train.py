"""Train an image classifier with Accelerate: one loop for CPU, one or many GPUs, and mixed precision.

    accelerate launch -m cifarlab.train                                      # default preset, CIFAR-10
    accelerate launch -m cifarlab.train --config configs/smoke.yaml          # fake data, seconds on a CPU
    accelerate launch -m cifarlab.train --config configs/tutorial.yaml data.name=imagefolder data.root=/data/cifar10-jpeg
    accelerate launch --multi_gpu --num_processes 2 -m cifarlab.train --config configs/smoke.yaml
    accelerate launch -m cifarlab.train train.run_name=exp1 train.resume=auto   # continue a run
    python -m cifarlab.train --config configs/resnet18.yaml --print-config    # resolved config, then exit

Configuration: schema defaults <- --config FILE.yaml <- key=value overrides (see cifarlab/config.py).
User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch import nn

from cifarlab import checkpoint, console, data, engine, loading, models, plots, preemption, tracking
from cifarlab.config import Config, load_config, to_dict, to_yaml, with_run_name
from cifarlab.errors import UsageError
from cifarlab.metrics import EvalResult


def resolve_run(config: Config) -> tuple[Config, str]:
    """Fill in the run name (chosen on the main process, shared with all) and a new W&B run id."""
    chosen = [config.train.run_name or f"{config.model.name}-{datetime.now():%Y%m%d-%H%M%S}", uuid.uuid4().hex[:12]]
    broadcast_object_list(chosen)
    return with_run_name(config, chosen[0]), chosen[1]


def resume_point(accelerator: Accelerator, resume: Optional[str], run_dir: Path,
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


def _find_resume_point(resume: Optional[str], run_dir: Path, warn: Callable[[str], None]) -> Optional[Path]:
    if resume is None:
        if checkpoint.list_checkpoints(run_dir) or (run_dir / "model.safetensors").exists():
            raise UsageError(f"run directory {run_dir} already holds a run; continue it with train.resume=auto "
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


def train(config: Config) -> Path:
    """Train as configured; return the run directory."""
    accelerator = engine.build_accelerator(config, trackers=True)
    try:
        return run(accelerator, config)
    finally:
        accelerator.end_training()  # finishes W&B (also after an error) and leaves the process group


def run(accelerator: Accelerator, config: Config) -> Path:
    stop = preemption.StopRequest()  # from here on SIGUSR1/SIGTERM mean "checkpoint and exit"
    started = time.perf_counter()
    config, new_wandb_id = resolve_run(config)
    run_dir = Path(config.train.output_dir) / config.train.run_name  # type: ignore[operator]
    out = console.Console(accelerator.is_main_process, quiet=config.logging.level == "warning")
    resume_from = resume_point(accelerator, config.train.resume, run_dir, out.warn)

    # --- data and model ---
    set_seed(config.train.seed)
    datasets = data.build_datasets(config.data, config.train.seed, accelerator.main_process_first(), out.warn,
                                   device=accelerator.device)
    models.check_input_size(config.model.name, *datasets.input_shape())
    train_loader, test_loader = data.build_loaders(datasets, config.train.batch_size, config.train.eval_batch_size)
    model = models.build_model(config.model, num_classes=len(datasets.classes))
    if models.has_whitening(model):  # fastnet's first layer is computed from the data, not trained
        models.init_whitening(model, data.sample_images(datasets, train=True, count=5000, augmented=False)[0])
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)  # type: ignore[call-overload]
    ema = engine.build_ema(model, config.train.ema, accelerator.device) if config.train.ema else None
    extra_state = {"ema": ema} if ema is not None else {}  # saved in checkpoints beside Accelerate's state
    optimizer = engine.build_optimizer(config.optim, model)
    # Built from the unprepared loader: its length is the number of global batches per epoch.
    optimizer_steps_per_epoch = -(-len(train_loader) // config.train.grad_accum_steps)
    scheduler = engine.build_scheduler(config.optim, optimizer, config.train.epochs, optimizer_steps_per_epoch)
    model, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, test_loader, scheduler)
    if config.train.compile:
        accelerator.unwrap_model(model).compile()  # in place: parameter names and checkpoints stay the same
    evaluated = ema.module if ema is not None else model  # what is tested, picked as best and saved at the end
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)

    def inputs(batch: object, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = datasets.to_model(batch, train)
        return images.contiguous(memory_format=memory_format), labels

    # --- run directory: written only once the data and model are known to work ---
    accelerator.wait_for_everyone()  # every rank has checked the run directory before anyone writes to it
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(config))
        (run_dir / loading.CLASSES_FILE).write_text(json.dumps(list(datasets.classes)))
    out.print_config(to_yaml(config))
    out.log(f"run directory {run_dir}; {accelerator.num_processes} process(es) on {accelerator.device.type}, "
            f"mixed precision {accelerator.mixed_precision}; {len(datasets.train)} training and "
            f"{len(datasets.test)} test images")

    # --- resume ---
    state = checkpoint.TrainState(wandb_run_id=new_wandb_id)
    if resume_from is not None:
        state = checkpoint.load_checkpoint(accelerator, resume_from, extra_state)
        out.log(f"resumed from {resume_from}: epoch {state.epoch + 1}, step {state.global_step}")
    metrics_file = tracking.MetricsFile(run_dir / "metrics.jsonl", accelerator.is_main_process)
    metrics_file.truncate_after(state.global_step)
    step_log = tracking.StepLog(accelerator, run_dir, continuing=resume_from is not None)
    tracking.start_tracking(accelerator, config.logging.wandb, run_dir, config.train.run_name,  # type: ignore[arg-type]
                            state.wandb_run_id or new_wandb_id, to_dict(config))
    wandb_run = tracking.wandb_run(accelerator)  # None but on the main process with W&B on
    if wandb_run is not None:
        datasets.train.set_epoch(state.epoch)
        images, labels = data.sample_images(datasets, train=True, count=32)
        tracking.log_images(step_log, "media/train_images",
                            plots.labelled_grid(images, labels, datasets.classes, config.data.mean, config.data.std),
                            "training images after augmentation: what the model sees", state.global_step)

    steps_per_epoch = len(train_loader)
    batch_size = config.train.batch_size
    log_every = config.logging.every_n_steps
    save_every = config.checkpoint.every_n_steps

    def save(best: bool = False) -> Path:
        return checkpoint.save_checkpoint(accelerator, run_dir, state, config.checkpoint.keep_last, resume_from, best,
                                          extra_state)

    def stop_now(saved: Optional[Path]) -> None:
        """After a stop signal: make sure this step is checkpointed, requeue under SLURM, exit."""
        path = saved or save()
        out.log(f"stopping on {stop.received or 'a signal to another process'}: checkpoint {path} saved")
        if accelerator.is_main_process:
            preemption.requeue_slurm_job(out.log)
        raise preemption.Preempted()

    previous: Optional[EvalResult] = None  # the last evaluation, for the change per class
    for epoch in range(state.epoch, config.train.epochs):
        # --- train one epoch ---
        train_loader.set_epoch(epoch)
        datasets.train.set_epoch(epoch)
        skipped = state.step_in_epoch
        loader = accelerator.skip_first_batches(train_loader, skipped) if skipped else train_loader
        model.train()
        window_loss = torch.zeros((), device=accelerator.device)  # summed on device: no sync per step
        epoch_loss = torch.zeros((), device=accelerator.device)
        window_steps, window_start = 0, time.perf_counter()
        epoch_start = time.perf_counter()
        with out.epoch_bar(f"epoch {epoch + 1}/{config.train.epochs}", steps_per_epoch, skipped) as bar:
            for batch in loader:
                images, labels = inputs(batch, train=True)
                with accelerator.accumulate(model):
                    loss = loss_fn(model(images), labels)
                    accelerator.backward(loss)
                    if config.optim.grad_clip is not None and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    if accelerator.sync_gradients:  # what Accelerate's zero_grad does, less its per-call
                        optimizer.optimizer.zero_grad(set_to_none=True)  # signature inspection (~0.1 ms)
                if ema is not None and accelerator.sync_gradients:  # once per optimizer step
                    ema.update_parameters(accelerator.unwrap_model(model))
                state.global_step += 1
                state.step_in_epoch += 1
                window_loss += loss.detach()
                epoch_loss += loss.detach()
                window_steps += 1
                bar.update(state.step_in_epoch)

                if state.global_step % log_every == 0:
                    mean_loss = accelerator.reduce(window_loss, reduction="mean").item() / window_steps
                    images_per_s = window_steps * batch_size / (time.perf_counter() - window_start)
                    lr = scheduler.get_last_lr()[0]
                    step_log.log({"train/loss": mean_loss, "train/lr": lr, "train/images_per_s": images_per_s,
                                  "train/epoch": epoch + state.step_in_epoch / steps_per_epoch},
                                 step=state.global_step)
                    stats = f"loss {mean_loss:.4f} lr {lr:.5f} {images_per_s:,.0f} images/s"
                    out.progress_line(f"epoch {epoch + 1} step {state.step_in_epoch}/{steps_per_epoch} {stats}")
                    bar.update(state.step_in_epoch, stats)
                    window_loss.zero_()
                    window_steps, window_start = 0, time.perf_counter()

                # Mid-epoch checkpoint; the last batch is covered by the epoch-end save just below.
                mid_epoch = state.step_in_epoch < steps_per_epoch
                saved = save() if save_every and state.global_step % save_every == 0 and mid_epoch else None
                # Stop between optimizer steps, where the state is complete, all ranks at the same one; a
                # signal during the last batch is handled after the epoch-end checkpoint instead.
                if mid_epoch and accelerator.sync_gradients and stop.agreed(accelerator, state.global_step):
                    stop_now(saved)
        train_seconds = time.perf_counter() - epoch_start
        trained = state.step_in_epoch - skipped
        train_loss = accelerator.reduce(epoch_loss, reduction="mean").item() / max(trained, 1)
        images_per_s = trained * batch_size / train_seconds

        # --- evaluate ---
        result = engine.evaluate(evaluated, test_loader, accelerator, datasets.classes,
                                 lambda batch: inputs(batch, train=False), config.train.tta)
        state.epoch, state.step_in_epoch = epoch + 1, 0
        if result.accuracy > state.best_accuracy:
            state.best_accuracy, state.best_epoch = result.accuracy, epoch + 1
        step_log.log({**result.wandb_values(), "train/epoch_loss": train_loss,
                      "train/epoch_images_per_s": images_per_s, "train/epoch": float(epoch + 1)},
                     step=state.global_step)
        metrics_file.append({
            "epoch": epoch + 1, "global_step": state.global_step, "test_images": result.count,
            "accuracy": result.accuracy, "per_class_accuracy": result.json_per_class(), "test_loss": result.loss,
            "train_loss": train_loss, "train_images_per_s": images_per_s, "train_seconds": train_seconds,
        })
        out.eval_table(f"epoch {epoch + 1}/{config.train.epochs}: test accuracy {100 * result.accuracy:.2f} % "
                       f"({result.count} images), loss {result.loss:.4f}", result, previous)
        previous = result
        if wandb_run is not None:
            wandb_run.summary.update({"best/accuracy": state.best_accuracy, "best/epoch": state.best_epoch})
        out.log(f"epoch {epoch + 1}: train loss {train_loss:.4f}, {images_per_s:,.0f} images/s over "
                f"{train_seconds:.1f}s; test accuracy {100 * result.accuracy:.2f} %")

        # --- checkpoint ---
        saved = save(best=state.best_epoch == epoch + 1)
        # A signal during evaluation: the epoch is saved, stop here (after the last epoch: just finish).
        if epoch + 1 < config.train.epochs and stop.agreed(accelerator):
            stop_now(saved)

    # --- finish ---
    if wandb_run is not None and previous is not None:
        images, labels = data.sample_images(datasets, train=False, count=32)
        with torch.no_grad():
            views = images.to(accelerator.device).contiguous(memory_format=memory_format)
            with accelerator.autocast():
                preds = engine.tta_logits(accelerator.unwrap_model(evaluated).eval(), views, config.train.tta).argmax(dim=1)
        tracking.log_images(step_log, "media/test_predictions",
                            plots.labelled_grid(images, labels, datasets.classes, config.data.mean, config.data.std,
                                                preds=preds),
                            "test images: prediction (true class), red where wrong", state.global_step)
        tracking.log_confusion(step_log, previous.confusion, datasets.classes, state.global_step)
        tracking.log_images(step_log, "media/confusion_matrix", plots.confusion_image(previous.confusion, datasets.classes),
                            "rows: true class, columns: predicted", state.global_step)
    accelerator.wait_for_everyone()
    accelerator.save_model(evaluated, str(run_dir), safe_serialization=True)
    out.log(f"done in {time.perf_counter() - started:.0f}s: best test accuracy {100 * state.best_accuracy:.2f} % "
            f"(epoch {state.best_epoch}); weights in {run_dir / 'model.safetensors'}, checkpoints in "
            f"{checkpoint.checkpoint_dir(run_dir)}")
    return run_dir


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cifarlab.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset merged over the defaults, e.g. configs/smoke.yaml")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--quiet", action="store_true", help="print only warnings and errors (logging.level=warning)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.01")
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, [*args.overrides, *(["logging.level=warning"] if args.quiet else [])])
        if args.print_config:
            sys.stdout.write(to_yaml(config))
            return 0
        train(config)
    except UsageError as error:
        console.error(str(error))
        return error.exit_code
    except preemption.Preempted as stopped:
        return stopped.exit_code
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
