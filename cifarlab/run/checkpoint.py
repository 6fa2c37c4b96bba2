"""Checkpoints: Accelerate's state plus the trainer's own position, written atomically and verified.

Layout under the run directory (names in :mod:`cifarlab.run.rundir`)::

    checkpoints/step_00001200/   model.safetensors, optimizer.bin, scheduler.bin, random_states_{rank}.pkl,
                                 trainer_state.json, [ema.safetensors,] manifest.json
    checkpoints/best/            hard-linked copy of the epoch-end checkpoint with the best accuracy (on the
                                 validation split where there is one, else on the test set)
    checkpoints/latest           name of the newest complete checkpoint, updated last

A save writes ``checkpoints/.tmp-step_N``, waits for every rank's files, fsyncs them, writes
``manifest.json`` (each file's size and SHA-256) and only then renames the folder into place and
updates ``latest``. A process killed at any moment therefore leaves the previous checkpoints
untouched, and a checkpoint damaged later (truncated copy, full disk) fails its manifest check.

The trainer's state (:class:`cifarlab.run.state.TrainState`) is JSON, not a ``register_for_checkpointing`` object
(Accelerate unpickles those with weights_only=False); Accelerate's own files are pickles, loaded as
:mod:`cifarlab.run.pickles` says.

:class:`Checkpointer` owns the cadence (every ``checkpoint.every_n_steps`` steps and every epoch end),
retention and ``best/``; the train loop only tells it where training is.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file
from torch import nn

from cifarlab import files
from cifarlab.config import CheckpointConfig
from cifarlab.errors import RunFailed, UsageError
from cifarlab.run.pickles import require_safe_torch
from cifarlab.run.rundir import BEST, MANIFEST, TRAINER_STATE, WEIGHTS, RunDir, resume_command
from cifarlab.run.state import TrainState
from cifarlab.run.verify import first_line, model_mismatch, problem, saved_model, sha256, unloadable


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
        warn(f"checkpoint {files.typed(candidate)} is damaged ({reason}); falling back to an older one")
    return None


def latest_name(run: RunDir) -> Optional[str]:
    """The path of the run's newest complete checkpoint, as ``latest`` names it; None before the first."""
    return str(run.checkpoints / run.latest.read_text().strip()) if run.latest.is_file() else None


def _seal(folder: Path, state: TrainState) -> None:
    """fsync every file in ``folder`` and write its manifest last."""
    listed: dict[str, dict[str, Any]] = {}
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        files.share(file)  # safetensors writes model.safetensors 0600: colleagues could not read the weights
        files.sync(file)  # other ranks wrote some of these: flush them all before publishing
        listed[file.name] = {"size": file.stat().st_size, "sha256": sha256(file)}
    manifest = {"format": 1, "global_step": state.global_step, "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch, "files": listed}
    files.write_whole(folder / MANIFEST, json.dumps(manifest, indent=2), durable=True)


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
    checkpoint the run resumed from) is never pruned. ``healthy(state)`` runs before every save and raises
    to stop one (the loss guard: weights after a non-finite loss are never saved). A save that fails on any
    rank (a full disk) stops the run on every rank with :class:`RunFailed`, the earlier checkpoints and
    ``latest`` untouched. Call every method on all ranks.
    """

    def __init__(self, accelerator: Accelerator, run: RunDir, config: CheckpointConfig, steps_per_epoch: int,
                 extra: Optional[dict[str, nn.Module]] = None, protect: Optional[Path] = None,
                 healthy: Optional[Callable[[TrainState], None]] = None) -> None:
        self.accelerator = accelerator
        self.run = run
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.extra = extra or {}
        self.protect = protect
        self.healthy = healthy
        self._failure: Optional[str] = None  # this rank's part of the current save failed: why
        self._last: Optional[tuple[int, Path]] = None  # (global step, folder) of the newest save

    def after_step(self, state: TrainState) -> None:
        """Save every ``checkpoint.every_n_steps`` steps; the last batch of an epoch is left to :meth:`after_epoch`."""
        every = self.config.every_n_steps
        if every and state.global_step % every == 0 and state.step_in_epoch < self.steps_per_epoch:
            self.save(state)

    def after_epoch(self, state: TrainState) -> Optional[Path]:
        """Every epoch end is saved (unless ``checkpoint.every_epoch`` is false: then None); it becomes ``best/`` when
        it set the best accuracy."""
        if not self.config.every_epoch:
            return None
        return self.save(state, best=state.best_epoch == state.epoch)

    def ensure_saved(self, state: TrainState) -> Path:
        """A checkpoint of exactly this step: the one just saved, or a new one."""
        if self._last is not None and self._last[0] == state.global_step:
            return self._last[1]
        return self.save(state)

    def save(self, state: TrainState, best: bool = False) -> Path:
        """Save on every rank (each writes its RNG state), then seal, publish and prune on the main process."""
        if self.healthy is not None:
            self.healthy(state)
        state.read_back_loss(lambda total: self.accelerator.reduce(total, reduction="mean"))
        main = self.accelerator.is_main_process
        final = self.run.checkpoint(state.global_step)
        tmp = final.with_name(f".tmp-{final.name}")
        if main:
            self._attempt(self._start, tmp)
        self._agree(final, tmp)  # also the barrier: tmp exists before anyone writes to it
        self._attempt(self._write, tmp, state)
        self._agree(final, tmp)  # save_state has no barrier: every rank's files must be in tmp
        if main:
            self._attempt(self._publish, tmp, final, state, best)
        self._agree(final, tmp)  # nobody moves on before the checkpoint is published
        self._last = (state.global_step, final)
        return final

    def save_weights(self, model: nn.Module) -> None:
        """The run's final weights (``model.safetensors``: written last, its presence means the run finished), saved
        into a new folder and renamed into place: a kill while saving leaves no partial file that would say the run
        finished."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            # Only the main process writes (Accelerate's save); the others only make the folder they are given.
            self.accelerator.save_model(model, str(self.run.root), safe_serialization=True)
            return
        folder = Path(tempfile.mkdtemp(prefix=f"{files.TEMPORARY}{WEIGHTS}.", dir=self.run.root))
        try:
            self.accelerator.save_model(model, str(folder), safe_serialization=True)
            files.publish(folder / WEIGHTS, self.run.weights)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _start(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        tmp.mkdir(parents=True)

    def _write(self, tmp: Path, state: TrainState) -> None:
        self.accelerator.save_state(str(tmp))
        if self.accelerator.is_main_process:
            files.write_whole(tmp / TRAINER_STATE, json.dumps(state.state_dict(), indent=2), durable=True)
            for name, module in self.extra.items():
                # safetensors stores contiguous tensors only (channels_last weights are not).
                save_file({key: value.contiguous() for key, value in module.state_dict().items()},
                          str(tmp / f"{name}.safetensors"))

    def _publish(self, tmp: Path, final: Path, state: TrainState, best: bool) -> None:
        _seal(tmp, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        files.sync(final.parent)
        files.write_whole(self.run.latest, final.name, durable=True)
        if best:
            _publish_best(final)
        for old in self.run.step_checkpoints()[:-self.config.keep_last]:
            if self.protect is None or old.resolve() != self.protect.resolve():
                shutil.rmtree(old)

    def _attempt(self, action: Callable[..., None], *args: Any) -> None:
        """Run one part of a save, keeping its failure for :meth:`_agree` instead of raising it here (the other
        ranks would wait for this one forever). torch.save reports a full disk as a RuntimeError."""
        try:
            action(*args)
        except (OSError, RuntimeError) as error:
            self._failure = _why(error, self.run.checkpoints)

    def _agree(self, final: Path, tmp: Path) -> None:
        """A collective: every rank learns whether any rank's part failed; if one did, the main process removes
        the half-written folder and every rank raises :class:`RunFailed`."""
        failures = [self._failure] if self.accelerator.num_processes == 1 else gather_object([self._failure])
        failure = next((f for f in failures if f), None)
        if failure is None:
            return
        self._failure = None
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed write_whole (latest) removes its own temporary file
        raise RunFailed(f"could not save checkpoint {files.typed(final)} ({failure}); the earlier checkpoints and "
                        f"`latest` are intact: free space, then continue with {resume_command(self.run)}")

    def load(self, path: Path, model: nn.Module) -> TrainState:
        """Restore ``model``, optimizer, scheduler, scaler, RNG and the extra modules from a verified checkpoint;
        return the trainer state. A checkpoint of another model is refused first, naming the first tensor that does
        not fit. Nothing pickled is ever executed (:mod:`cifarlab.run.pickles`): one line names the file."""
        require_safe_torch(path)
        shown = files.typed(path)
        misfit = model_mismatch(path, model)
        if misfit is not None:
            raise UsageError(f"checkpoint {shown} does not fit this run's model: {misfit} (saved by "
                             f"{saved_model(path)}); resume it with the settings it was saved with, or start a new "
                             f"run (a new train.run_name, without train.resume)")
        # Accelerate skips an RNG file it cannot load with a note at INFO level: check the pickled files first
        # (safetensors files cannot hold code; they are read once, below).
        refused = unloadable(path, pickled_only=True)
        if refused is not None:
            raise UsageError(f"checkpoint {shown}: {refused} cannot be loaded safely; nothing in it was executed. "
                             f"Resume from another checkpoint (train.resume=<folder>) or start a new run")
        try:
            self.accelerator.load_state(str(path))
            for name, module in self.extra.items():
                file = path / f"{name}.safetensors"
                if not file.is_file():
                    raise UsageError(f"checkpoint {shown} has no {file.name} (saved by a run without it); resume "
                                     f"with the config it was saved with, or start a new run")
                # A rank's CPU device prints as "cpu:0", which safetensors refuses; load_state_dict copies the
                # CPU tensors onto the module's own device.
                module.load_state_dict(load_file(str(file)))
            state = TrainState()
            state.load_state_dict(json.loads((path / TRAINER_STATE).read_text()))
        except UsageError:
            raise
        except Exception as error:  # whatever refused to load, the user gets one line
            refused = unloadable(path)
            if refused is not None:  # a file torch's safe loader refuses (or that is no safetensors file)
                raise UsageError(f"checkpoint {shown}: {refused} cannot be loaded safely; nothing in it was "
                                 f"executed. Resume from another checkpoint (train.resume=<folder>) or start a new "
                                 f"run") from None
            raise UsageError(f"checkpoint {shown} does not fit this run ({first_line(error)}); resume it with the "
                             f"settings it was saved with, or start a new run") from None
        return state


def out_of_space(error: OSError, run: RunDir) -> RunFailed:
    """A run stopped by a full (or read-only) filesystem outside a checkpoint save (a metrics.jsonl record, a
    run file), in one line with the command that continues it."""
    if not run.config.is_file():  # the run had written nothing yet
        return RunFailed(f"{files.failed_write(error)}; {files.NO_SPACE_AGAIN}")
    return RunFailed(f"{files.failed_write(error)}; the last complete checkpoint is intact: free space, then "
                     f"continue with {resume_command(run)}")


def _why(error: BaseException, folder: Path) -> str:
    """A failed write in a few words: a full filesystem said plainly, else the error's first line."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or (free is not None
                                                                                       and free < 1 << 20):
        return f"No space left on device: {free} bytes free in {files.typed(folder)}"
    if isinstance(error, OSError):
        return f"{error.strerror or error}" + (f": {files.error_file(error)}" if error.filename else "")
    return first_line(error)

