"""A stand-in for ``python -m cifarlab.train`` that trains nothing, for the sweep runner's bookkeeping tests: sweeps and
searches of dozens of trials, killed and resumed many times, in seconds (no torch is imported: a trial takes a
fraction of a second). It is cifarlab.train's own command (``cifarlab.train.main(train=...)``: arguments, the
config loaded and refused as there, signal handling, exit codes, death of the parent) around a loop that pretends:

    python tests/fake_trainer.py --config configs/smoke.yaml train.output_dir=/tmp/runs train.run_name=x
    python -m cifarlab.sweep SWEEP.yaml --trainer tests/fake_trainer.py    # the sweep's hidden option (tests/README.md)

What it keeps of the real trainer's outside contract (tests/test_trainer_contract.py holds both to one table):

- the run directory and its lock (cifarlab.run.runlock itself): a second trainer on a busy run is refused (exit 2,
  one line, nothing written). ``train.resume`` as the real trainer takes it: null refuses a folder holding a run;
  ``auto`` continues from the newest intact checkpoint (a finished run: nothing to do, exit 0); a checkpoint folder
  is resumed from. A config.yaml of another configuration is refused (cifarlab.identity.run_changes), exit 2;
- config.yaml (by the first start, without train.resume), classes.json and metrics.jsonl: a step record every
  ``logging.every_n_steps`` steps (train/loss, train/lr, train/images_per_s, train/epoch), an evaluation record after
  each epoch (every epoch with ``train.eval_every_epoch``, else the last; test/acc, test/acc_top5 beyond 5 classes,
  test/loss, test/images, test/acc/<class>, train/epoch_loss, train/epoch_images_per_s, train/epoch_seconds,
  train/epoch), and the target/ and prune/ records; a resumed start drops the records past its checkpoint (and a
  torn last line);
- checkpoints/step_XXXXXXXX/ (trainer_state.json with TrainState's fields, manifest.json with each file's size and
  SHA-256), written as a .tmp- folder and renamed into place, every ``checkpoint.every_n_steps`` steps and at every
  epoch end (``checkpoint.every_epoch``), the newest ``checkpoint.keep_last`` kept (and the one resumed from), then
  ``checkpoints/latest``. No best/, no optimizer or RNG files, no history.jsonl or environment.json;
- model.safetensors written last (a valid safetensors file of one small tensor, the same for the same config and
  seed): its presence means the run finished. No predictions.safetensors (compare's McNemar test needs real runs);
- SIGUSR1/SIGTERM, or the death of its parent: a checkpoint of the step reached, ``scontrol requeue`` under SLURM,
  exit 75; Ctrl-C: exit 130, a second one aborts. cifarlab.run.preemption's StopRequest itself, asked between steps
  and after each epoch's checkpoint, as the real loop asks it;
- a search's trial (``CIFARLAB_SEARCH``): after each evaluation the search's figure goes to the study and its pruner
  may end the run there, with a prune record and the final weights (cifarlab.run.pruning's Pruning itself);
  ``train.target_accuracy`` ends a run the same way, with a target record.

One process: no launcher, no process group (a sweep with ``launch:`` options needs the real trainer).

Pacing: ``data.train_size`` (null: 50,000) // ``train.batch_size`` steps an epoch (at least 1), ``train.epochs``
epochs, each step sleeping ``CIFARLAB_FAKE_STEP_S`` seconds (an environment variable; default 0.01): long enough
for a test to stop or kill a trial mid-run, short enough for dozens of trials a second or two each.

Results: a deterministic function of the config and the seed (:func:`accuracy`), so confirmations, compare and
--until-decided see real differences between settings and seed-to-seed noise: 60 % at optim.lr 0.05 and
optim.weight_decay 5e-4, less 3 points per squared decade of optim.lr away from 0.05 and 1 point per squared decade
of optim.weight_decay away from 5e-4; every other key of the run's identity (cifarlab.identity.VOLATILE aside) moves
it by up to ±1 point; each seed by up to ±0.5 points; earlier epochs lower. Counted on ``data.test_size`` images
(null: 10,000): a whole number of them is correct.

Failing: ``optim.lr`` of 10 or more "diverges": at the first logged step the run stops with the real trainer's
message (the training loss is not finite), exit 1, its final weights never written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from cifarlab import files
from cifarlab.config import Config, flatten, load_config, shown, to_dict, to_yaml, with_run_name
from cifarlab.data.classes import config_classes
from cifarlab.errors import RunFailed, UsageError
from cifarlab.identity import BOOKKEEPING, VOLATILE, differences, run_changes
from cifarlab.report import console
from cifarlab.run.preemption import StopRequest
from cifarlab.run.pruning import Pruning
from cifarlab.run.rundir import MANIFEST, TRAINER_STATE, RunDir, read_metrics
from cifarlab.run.runlock import RunLock
from cifarlab.run.state import Pace, TrainState

STEP_S = float(os.environ.get("CIFARLAB_FAKE_STEP_S", "0.01"))
DIVERGES = 10.0
"""optim.lr from which a run fails as a diverged one does."""
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000
"""Images when data.train_size or data.test_size is null (CIFAR's)."""


class Solo:
    """What StopRequest and Pruning ask of Accelerate, answered for one process (no torch)."""

    num_processes = 1
    is_main_process = True


# --- results: a function of the config and the seed ------------------------------------------------------------


def _unit(*parts: Any) -> float:
    """A number in [0, 1) fixed by ``parts``."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


ADDED_LATER = {"data.val_size": 0, "data.val_seed": 0}
"""Config keys newer than the numbers the tests expect of this trainer, with their defaults: at those values they are
left out of :func:`identity`, so a new key leaves every test's numbers as they were (set otherwise, it counts)."""


def identity(config: Config) -> dict[str, Any]:
    """What the run computes (cifarlab.identity.VOLATILE aside), less the seed, optim.lr and optim.weight_decay."""
    tree = flatten(to_dict(config))
    skipped = ("train.seed", "optim.lr", "optim.weight_decay")
    return {key: value for key, value in tree.items() if not key.startswith(VOLATILE) and key not in skipped
            and not (key in ADDED_LATER and ADDED_LATER[key] == value)}


def accuracy(config: Config, epoch: int) -> float:
    """Test accuracy (a fraction of :func:`test_images`, a whole number of them correct) after ``epoch`` (1-based)."""
    lr, decay = config.optim.lr, config.optim.weight_decay
    points = 60.0 - 3.0 * math.log10(lr / 0.05) ** 2
    points -= math.log10(decay / 5e-4) ** 2 if decay > 0 else 2.0
    points += 2 * _unit(identity(config)) - 1
    points += _unit(identity(config), lr, decay, config.train.seed) - 0.5
    points -= 10 * (0.5**epoch - 0.5**config.train.epochs)  # lower before the last epoch
    images = test_images(config)
    return round(min(max(points, 1.0), 99.0) / 100 * images) / images


def test_images(config: Config) -> int:
    return config.data.test_size or TEST_IMAGES


def steps_per_epoch(config: Config) -> int:
    return max(1, (config.data.train_size or TRAIN_IMAGES) // config.train.batch_size)


def train_loss(config: Config, step: int) -> float:
    return round(2.3 * math.exp(-step / (4 * steps_per_epoch(config) * config.train.epochs)) + 0.01, 6)


def evaluation(config: Config, epoch: int, classes: tuple[str, ...], split: str = "test") -> dict[str, Any]:
    """The evaluation record's figures of ``split`` after ``epoch``: the test set's, or the validation split's
    (data.val_size images, an accuracy a little off the test set's: other images)."""
    fraction, images = accuracy(config, epoch), test_images(config)
    if split == "val":
        images = config.data.val_size
        shifted = fraction + 0.04 * (_unit(identity(config), "val", config.train.seed, epoch) - 0.5)
        fraction = round(min(max(shifted, 0.0), 1.0) * images) / images
    values: dict[str, Any] = {f"{split}/acc": fraction, f"{split}/loss": round(2.3 - 2 * fraction, 6),
                              f"{split}/images": images}
    if len(classes) > 5:
        values[f"{split}/acc_top5"] = min(1.0, round(fraction + 0.3, 6))
    spread = [(i - (len(classes) - 1) / 2) / len(classes) * 0.1 for i in range(len(classes))]
    values.update({f"{split}/acc/{name}": round(min(max(fraction + d, 0.0), 1.0), 6)
                   for name, d in zip(classes, spread)})
    return values


def weights(config: Config) -> bytes:
    """A safetensors file of one float32 tensor (the format by hand: 8-byte header length, JSON header, data)."""
    data = struct.pack("<8f", *(_unit(identity(config), config.optim.lr, config.train.seed, i) for i in range(8)))
    header = json.dumps({"fc.weight": {"dtype": "F32", "shape": [8], "data_offsets": [0, len(data)]},
                         "__metadata__": {"format": "pt"}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


# --- checkpoints ----------------------------------------------------------------------------------------------


class Checkpointer:
    """What StopRequest needs of cifarlab.run.checkpoint.Checkpointer (``run``, ``ensure_saved``), and the saves."""

    def __init__(self, run: RunDir, config: Config, protect: Optional[Path]) -> None:
        self.run, self.config, self.protect = run, config, protect
        self.last: Optional[tuple[int, Path]] = None

    def ensure_saved(self, state: TrainState) -> Path:
        if self.last is not None and self.last[0] == state.global_step:
            return self.last[1]
        return self.save(state)

    def save(self, state: TrainState) -> Path:
        final = self.run.checkpoint(state.global_step)
        tmp = final.with_name(f"{files.TEMPORARY}{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / TRAINER_STATE).write_text(json.dumps(state.state_dict(), indent=2))
        listed = {path.name: {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
                  for path in sorted(tmp.iterdir())}
        manifest = {"format": 1, "global_step": state.global_step, "epoch": state.epoch,
                    "step_in_epoch": state.step_in_epoch, "files": listed}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        files.write_whole(self.run.latest, final.name)
        for old in self.run.step_checkpoints()[:-self.config.checkpoint.keep_last]:
            if self.protect is None or old.resolve() != self.protect.resolve():
                shutil.rmtree(old)
        self.last = (state.global_step, final)
        return final


def intact(folder: Path) -> bool:
    """Every file its manifest lists, of that size and SHA-256 (cifarlab.run.verify.problem, less torch)."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
        return all((folder / name).is_file() and hashlib.sha256((folder / name).read_bytes()).hexdigest()
                   == entry["sha256"] for name, entry in listed.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def newest_checkpoint(run: RunDir, warn: Any) -> Optional[Path]:
    """cifarlab.run.checkpoint.resumable_checkpoint: ``latest``, else the newest intact step folder."""
    candidates = list(reversed(run.step_checkpoints()))
    if run.latest.is_file():
        named = run.checkpoints / run.latest.read_text().strip()
        candidates = [named, *(c for c in candidates if c != named)]
    for candidate in candidates:
        if candidate.is_dir():
            if intact(candidate):
                return candidate
            warn(f"checkpoint {candidate} is damaged; falling back to an older one")
    return None


def resume_point(config: Config, run: RunDir, warn: Any) -> tuple[Optional[Path], bool]:
    """The checkpoint this start continues from, and whether the run has finished (cifarlab.run.loop.resume_point)."""
    if run.config.is_file():
        refused = run_changes(load_config(str(run.config)), config).refused
        if refused:
            raise UsageError(f"run directory {run.root} holds a run of another configuration; its config.yaml "
                             f"differs in: " + ", ".join(f"{key}={shown(new)} (was {shown(old)})"
                                                         for key, (old, new) in refused.items()))
    resume = config.train.resume
    if resume is None:
        if run.holds_a_run():
            raise UsageError(f"run directory {run.root} already holds a run; continue it with train.resume=auto "
                             f"or start another with a new train.run_name")
        found = None
    elif resume == "auto":
        found = newest_checkpoint(run, warn)
    else:
        found = Path(resume)
        if not found.is_dir():
            raise UsageError(f"train.resume={resume}: no such checkpoint directory; use train.resume=auto or a "
                             f"folder under <run>/checkpoints/")
    if found is None:
        return None, run.finished()
    position = json.loads((found / TRAINER_STATE).read_text())
    ended = position.get("target") is not None or position.get("pruned") is not None
    return found, run.finished() and (position["epoch"] >= config.train.epochs or ended)


# --- the run --------------------------------------------------------------------------------------------------


def train(config: Config, preset: Optional[str] = None) -> Path:
    """cifarlab.run.loop.train's outside contract (see the module docstring); returns the run directory."""
    out = console.Console(True, quiet=config.logging.level == "warning")
    config = with_run_name(config, config.train.run_name or f"{config.model.name}-{datetime.now():%Y%m%d-%H%M%S}")
    run = RunDir.of(config.train.output_dir, config.train.run_name or "")
    lock = RunLock(run)
    lock.acquire()  # a second trainer stops here, having written nothing
    try:
        with StopRequest(Solo(), out.log, run) as stop:  # type: ignore[arg-type]
            return _train(config, preset, run, out, stop)
    finally:
        lock.release()


def _train(config: Config, preset: Optional[str], run: RunDir, out: console.Console, stop: StopRequest) -> Path:
    resume_from, finished = resume_point(config, run, out.warn)
    if finished:
        out.log(f"run {run.root} has already finished (final weights in {run.weights}); nothing to do. Rerun the "
                f"experiment as a new run with --config {run.config} train.run_name=<new name>")
        return run.root
    state = TrainState()  # the real trainer's (cifarlab.run.state: no torch)
    if resume_from is not None:
        state.load_state_dict(json.loads((resume_from / TRAINER_STATE).read_text()))
    state.wall.start()
    state.training.start()  # all the time it runs: it does nothing else
    classes = config_classes(config.data)
    # --- the run directory, as the real trainer leaves it at its start ---
    for folder in (run.root, run.checkpoints):
        files.remove_leftovers(folder)
    if not run.config.is_file():
        files.write_whole(run.config, to_yaml(with_resume(config, None)))
    files.write_whole(run.classes, json.dumps(list(classes)))
    if run.metrics.is_file():
        written = read_metrics(run.metrics, tail_may_be_torn=True)
        if written.torn is not None:
            out.note(f"{run.metrics}:{written.torn}: left out a torn last line (a trainer killed while writing it); "
                     f"the file is rewritten without it")
        kept = [line for line, record in zip(written.lines, written.records) if record["step"] <= state.global_step]
        files.write_whole(run.metrics, "".join(f"{line}\n" for line in kept))
    changed = differences(config, load_config(preset), leaving_out=BOOKKEEPING)
    out.log(f"config: {preset or 'built-in defaults'}" + (f" with {' '.join(changed)}" if changed else "")
            + f"; resolved config in {run.config}")
    out.log(f"run directory {run.root}; 1 process(es) on cpu (tests/fake_trainer.py: nothing is trained)")
    if resume_from is not None:
        out.log(f"resumed from {files.typed(resume_from)}: epoch {state.epoch + 1}, step {state.global_step}")

    checkpointer = Checkpointer(run, config, resume_from)
    pruning = Pruning.from_environment(Solo())  # type: ignore[arg-type]
    steps, epochs, every = steps_per_epoch(config), config.train.epochs, config.logging.every_n_steps
    pace = Pace(config.train.batch_size, steps)

    def record(values: dict[str, Any], step: int) -> None:
        line = {"step": step, "time": round(time.time(), 3), "elapsed_s": round(state.wall.read(), 3), **values}
        files.append(run.metrics, json.dumps(line) + "\n")

    # --- train: every epoch, or until the target is reached or the search prunes the run ---
    while state.epoch < epochs and not state.ended_early:
        while state.step_in_epoch < steps:
            time.sleep(STEP_S)
            state.global_step += 1
            state.step_in_epoch += 1
            loss = train_loss(config, state.global_step)
            state.epoch_loss_sum += loss
            state.epoch_loss_batches += 1
            if state.global_step % every == 0:
                if config.optim.lr >= DIVERGES:
                    latest = str(run.checkpoints / run.latest.read_text().strip()) if run.latest.is_file() else None
                    raise RunFailed(f"the training loss is not finite (NaN or inf) at step {state.global_step}; "
                                    f"stopped without saving its weights. The last good checkpoint is "
                                    f"{latest or 'none (none saved yet)'}: lower optim.lr or set optim.grad_clip")
                rate = config.train.batch_size / max(STEP_S, 1e-3)
                record({"train/loss": loss, "train/lr": config.optim.lr, "train/images_per_s": rate,
                        "train/epoch": state.epoch + state.step_in_epoch / steps}, state.global_step)
                out.progress_line(f"epoch {state.epoch + 1} step {state.step_in_epoch}/{steps} loss {loss:.4f} "
                                  f"lr {config.optim.lr:.5f} {rate:,.0f} images/s")
            every_n = config.checkpoint.every_n_steps
            if every_n and state.global_step % every_n == 0 and state.step_in_epoch < steps:
                checkpointer.save(state)
            if state.step_in_epoch < steps:
                stop.stop_if_agreed(state, checkpointer, step=state.global_step)  # type: ignore[arg-type]
        end_epoch(config, pace, state, classes, record, pruning, out)
        if config.checkpoint.every_epoch:
            checkpointer.save(state)
        if state.epoch < epochs and not state.ended_early:
            stop.stop_if_agreed(state, checkpointer)  # type: ignore[arg-type]

    # --- finish: the final weights last ---
    with files.replacing(run.weights) as tmp:
        tmp.write_bytes(weights(config))
    out.log(f"done in {state.wall.read():.1f}s: best test accuracy {100 * state.best_accuracy:.2f} % (epoch "
            f"{state.best_epoch}); weights in {run.weights}, checkpoints in {run.checkpoints}")
    return run.root


def end_epoch(config: Config, pace: Pace, state: TrainState, classes: tuple[str, ...], record: Any,
              pruning: Optional[Pruning], out: console.Console) -> None:
    """The epoch just trained: its evaluation record (or its training figures alone), then the target or the pruner
    may end the run (cifarlab.run.loop.evaluate_epoch)."""
    epoch_loss = state.epoch_loss()
    seconds = max(state.training.read() - state.epoch_start_train_s, 1e-9)
    trained = {"train/epoch_loss": round(epoch_loss, 6), "train/epoch_seconds": round(seconds, 3),
               "train/epoch_images_per_s": round(pace.images_per_s(state.epoch_loss_batches, seconds), 1)}
    last = state.epoch + 1 == config.train.epochs
    if not (config.train.eval_every_epoch or last):
        state.end_epoch(None)
        record({"train/epoch": float(state.epoch), **trained}, state.global_step)
        out.log(f"epoch {state.epoch}: train loss {epoch_loss:.4f}; not evaluated (train.eval_every_epoch=false)")
        return
    # As the real loop: every choice on the validation split where there is one, the test set scored at the end.
    chooser = "val" if config.data.val_size else "test"
    figures = evaluation(config, state.epoch + 1, classes, chooser)
    chosen = figures[f"{chooser}/acc"]
    state.end_epoch(chosen)
    reached = state.reached(config.train.target_accuracy, chosen)
    pruned = not reached and pruning is not None and pruning.stops(state, figures, config.train.epochs)
    if chooser == "val" and (last or reached or pruned or config.train.test_every_epoch):
        figures.update(evaluation(config, state.epoch, classes))
    record({"train/epoch": float(state.epoch), **figures, **trained}, state.global_step)
    out.log(f"epoch {state.epoch}: train loss {epoch_loss:.4f}; " + "; ".join(
        f"{name} accuracy {100 * figures[f'{split}/acc']:.2f} %" for split, name in (("val", "validation"),
                                                                                     ("test", "test"))
        if f"{split}/acc" in figures))
    if reached:
        assert state.target is not None
        record(state.target, state.global_step)
        out.log(f"reached the target accuracy {100 * state.target['target/accuracy']:.2f} % at epoch {state.epoch} "
                f"(step {state.global_step}); finishing the run")
    elif pruned:
        assert state.pruned is not None
        record(state.pruned, state.global_step)
        out.log(f"pruned by the search at epoch {state.epoch} (step {state.global_step}): its pruner expects no "
                f"better result than other trials'; finishing the run")


def with_resume(config: Config, resume: Optional[str]) -> Config:
    return replace(config, train=replace(config.train, resume=resume))


if __name__ == "__main__":
    from cifarlab.train import main

    sys.exit(main(train=train))
