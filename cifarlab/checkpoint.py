"""Checkpoints: Accelerate's state plus the trainer's own position, written atomically and verified.

Layout under the run directory (names in :mod:`cifarlab.rundir`)::

    checkpoints/step_00001200/   model.safetensors, optimizer.bin, scheduler.bin, random_states_{rank}.pkl,
                                 trainer_state.json, [ema.safetensors,] manifest.json
    checkpoints/best/            hard-linked copy of the epoch-end checkpoint with the best test accuracy
    checkpoints/latest           name of the newest complete checkpoint, updated last

A save writes ``checkpoints/.tmp-step_N``, waits for every rank's files, fsyncs them, writes
``manifest.json`` (each file's size and SHA-256) and only then renames the folder into place and
updates ``latest``. A process killed at any moment therefore leaves the previous checkpoints
untouched, and a checkpoint damaged later (truncated copy, full disk) fails its manifest check.

The trainer's state is JSON, not a ``register_for_checkpointing`` object: Accelerate loads those
with weights_only=False, i.e. by unpickling, which can execute code stored in the checkpoint.
Accelerate's own files are loaded with ``weights_only=True`` (its ``load`` default).

:class:`Checkpointer` owns the cadence (every ``checkpoint.every_n_steps`` steps and every epoch end),
retention and ``best/``; the train loop only tells it where training is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from cifarlab.config import CheckpointConfig
from cifarlab.errors import UsageError
from cifarlab.rundir import BEST, MANIFEST, TRAINER_STATE, RunDir


class Stopwatch:
    """Seconds counted over a run's segments: ``seconds`` saved in a checkpoint plus the running part."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self._since: Optional[float] = None

    def start(self, since: Optional[float] = None) -> None:
        """Count from ``since`` (a ``time.perf_counter()`` value; default now)."""
        self._since = time.perf_counter() if since is None else since

    def stop(self) -> None:
        self.seconds, self._since = self.read(), None

    def read(self) -> float:
        return self.seconds + (time.perf_counter() - self._since if self._since is not None else 0.0)


@dataclass
class TrainState:
    """Where training is; everything Accelerate does not save itself."""

    epoch: int = 0
    """Epoch in progress, 0-based (after the last epoch: train.epochs)."""
    step_in_epoch: int = 0
    """Training batches already taken in that epoch (skipped on resume)."""
    global_step: int = 0
    """Training batches taken since the start of the run; the W&B step."""
    best_accuracy: float = 0.0
    """Best test accuracy so far, as a fraction."""
    best_epoch: int = -1
    """Epoch (1-based) that reached best_accuracy; -1 before the first evaluation."""
    wandb_run_id: Optional[str] = None
    """The W&B run to continue on resume."""
    elapsed_s: float = 0.0
    """Wall seconds of the run so far, summed over its segments (time lost to a crash after the last
    checkpoint is not counted); read it live from :attr:`wall`."""
    train_s: float = 0.0
    """Of those, seconds in training batches (no set-up, evaluation or saving); live in :attr:`training`."""
    target: Optional[dict[str, float]] = None
    """Where ``train.target_accuracy`` was reached (``target/*`` names, see :mod:`cifarlab.recorder`); None before."""

    def __post_init__(self) -> None:
        self.wall, self.training = Stopwatch(self.elapsed_s), Stopwatch(self.train_s)

    def state_dict(self) -> dict[str, Any]:
        return {**asdict(self), "elapsed_s": self.wall.read(), "train_s": self.training.read()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        self.__post_init__()

    def end_epoch(self, accuracy: float) -> None:
        """The epoch in progress has been trained and evaluated at ``accuracy``."""
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, self.epoch

    def reached(self, target: Optional[float], accuracy: float) -> bool:
        """Whether the evaluation just ended (at ``accuracy``) is the first to reach ``target``; if so,
        :attr:`target` records where."""
        if target is None or self.target is not None or accuracy < target:
            return False
        self.target = {"target/accuracy": target, "target/epoch": self.epoch, "target/step": self.global_step,
                       "target/elapsed_s": round(self.wall.read(), 3),
                       "target/train_seconds": round(self.training.read(), 3)}
        return True


def sha256(path: Path) -> str:
    """A file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def problem(path: Path) -> Optional[str]:
    """Why the checkpoint at ``path`` cannot be resumed from, or None when it is intact."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable {MANIFEST} ({error})"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["size"]:
            return f"{name} has {file.stat().st_size} bytes, expected {expected['size']}"
        if sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def resumable_checkpoint(run: RunDir, warn: Callable[[str], None]) -> Optional[Path]:
    """The newest intact checkpoint of ``run`` (``latest`` first), warning about damaged ones."""
    candidates = list(reversed(run.step_checkpoints()))
    if run.latest.is_file():
        named = run.checkpoints / run.latest.read_text().strip()
        candidates = [named] + [c for c in candidates if c != named]
    for candidate in candidates:
        if not candidate.is_dir():
            continue
        reason = problem(candidate)
        if reason is None:
            return candidate
        warn(f"checkpoint {candidate} is damaged ({reason}); falling back to an older one")
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _seal(folder: Path, state: TrainState) -> None:
    """fsync every file in ``folder`` and write its manifest last."""
    files: dict[str, dict[str, Any]] = {}
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        _fsync(file)  # other ranks wrote some of these: flush them all before publishing
        files[file.name] = {"size": file.stat().st_size, "sha256": sha256(file)}
    manifest = {"format": 1, "global_step": state.global_step, "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch, "files": files}
    _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2))


def _publish_best(source: Path) -> None:
    """Make ``checkpoints/best`` a hard-linked copy of ``source`` (no extra disk space)."""
    root = source.parent
    tmp, old = root / f".tmp-{BEST}", root / f".old-{BEST}"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(source, tmp, copy_function=os.link)
    if (root / BEST).exists():
        os.replace(root / BEST, old)
    os.replace(tmp, root / BEST)
    shutil.rmtree(old, ignore_errors=True)


class Checkpointer:
    """Saves the run's checkpoints at its own cadence and loads them back.

    ``extra`` modules that Accelerate does not know (the EMA) are saved beside its state as
    ``<name>.safetensors`` (identical on every rank: written by the main process). ``protect`` (the
    checkpoint the run resumed from) is never pruned. Call every method on all ranks.
    """

    def __init__(self, accelerator: Accelerator, run: RunDir, config: CheckpointConfig, steps_per_epoch: int,
                 extra: Optional[dict[str, nn.Module]] = None, protect: Optional[Path] = None) -> None:
        self.accelerator = accelerator
        self.run = run
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.extra = extra or {}
        self.protect = protect
        self._last: Optional[tuple[int, Path]] = None  # (global step, folder) of the newest save

    def after_step(self, state: TrainState) -> None:
        """Save every ``checkpoint.every_n_steps`` steps; the last batch of an epoch is left to :meth:`after_epoch`."""
        every = self.config.every_n_steps
        if every and state.global_step % every == 0 and state.step_in_epoch < self.steps_per_epoch:
            self.save(state)

    def after_epoch(self, state: TrainState) -> Path:
        """Every epoch end is saved; it becomes ``best/`` when it set the best accuracy."""
        return self.save(state, best=state.best_epoch == state.epoch)

    def ensure_saved(self, state: TrainState) -> Path:
        """A checkpoint of exactly this step: the one just saved, or a new one."""
        if self._last is not None and self._last[0] == state.global_step:
            return self._last[1]
        return self.save(state)

    def save(self, state: TrainState, best: bool = False) -> Path:
        """Save on every rank (each writes its RNG state), then seal, publish and prune on the main process."""
        accelerator = self.accelerator
        final = self.run.checkpoint(state.global_step)
        tmp = final.with_name(f".tmp-{final.name}")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            _write_atomic(tmp / TRAINER_STATE, json.dumps(state.state_dict(), indent=2))
            for name, module in self.extra.items():
                # safetensors stores contiguous tensors only (channels_last weights are not).
                save_file({key: value.contiguous() for key, value in module.state_dict().items()},
                          str(tmp / f"{name}.safetensors"))
        accelerator.wait_for_everyone()  # save_state has no barrier: every rank's files must be in tmp
        if accelerator.is_main_process:
            _seal(tmp, state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync(final.parent)
            _write_atomic(self.run.latest, final.name)
            if best:
                _publish_best(final)
            for old in self.run.step_checkpoints()[:-self.config.keep_last]:
                if self.protect is None or old.resolve() != self.protect.resolve():
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()  # nobody moves on before the checkpoint is published
        self._last = (state.global_step, final)
        return final

    def load(self, path: Path) -> TrainState:
        """Restore model, optimizer, scheduler, scaler, RNG and the extra modules from a verified checkpoint;
        return the trainer state."""
        self.accelerator.load_state(str(path))
        for name, module in self.extra.items():
            file = path / f"{name}.safetensors"
            if not file.is_file():
                raise UsageError(f"checkpoint {path} has no {file.name} (saved by a run without it); resume with "
                                 f"the config it was saved with, or start a new run")
            module.load_state_dict(load_file(str(file), device=str(self.accelerator.device)))
        state = TrainState()
        state.load_state_dict(json.loads((path / TRAINER_STATE).read_text()))
        return state
