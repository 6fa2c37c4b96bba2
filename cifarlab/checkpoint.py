"""Checkpoints: Accelerate's state plus the trainer's own position, written atomically and verified.

Layout under the run directory::

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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from cifarlab.errors import UsageError

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
LATEST = "latest"
BEST = "best"
_PREFIX = "step_"
# Test hook: SIGKILL this process in the middle of its N-th save (after Accelerate wrote its files,
# before the manifest and the rename), to prove that a crash mid-save loses nothing.
_KILL_IN_SAVE = "CIFARLAB_TEST_KILL_IN_SAVE"


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

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Published step checkpoints, oldest first (temporary folders and best/ are not listed)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def _sha256(path: Path) -> str:
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
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def resumable_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> Optional[Path]:
    """The newest intact checkpoint of ``run_dir`` (``latest`` first), warning about damaged ones."""
    candidates = list(reversed(list_checkpoints(run_dir)))
    pointer = checkpoint_dir(run_dir) / LATEST
    if pointer.is_file():
        named = checkpoint_dir(run_dir) / pointer.read_text().strip()
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
        files[file.name] = {"size": file.stat().st_size, "sha256": _sha256(file)}
    manifest = {"format": 1, "global_step": state.global_step, "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch, "files": files}
    _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2))


_saves = 0


def _maybe_die_mid_save() -> None:
    global _saves
    _saves += 1
    if os.environ.get(_KILL_IN_SAVE) == str(_saves):
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainState, keep_last: int,
                    protect: Optional[Path] = None, best: bool = False,
                    extra: Optional[dict[str, nn.Module]] = None) -> Path:
    """Save on every rank (each writes its RNG state), then seal, publish and prune on the main process.

    ``protect`` (the checkpoint this run resumed from) is never pruned; ``best`` also makes this
    checkpoint ``checkpoints/best``. ``extra`` modules that Accelerate does not know (the EMA) are
    saved as ``<name>.safetensors`` (identical on every rank: written by the main process).
    """
    root = checkpoint_dir(run_dir)
    final = root / f"{_PREFIX}{state.global_step:08d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        _write_atomic(tmp / STATE_FILE, json.dumps(state.state_dict(), indent=2))
        for name, module in (extra or {}).items():
            # safetensors stores contiguous tensors only (channels_last weights are not).
            save_file({key: value.contiguous() for key, value in module.state_dict().items()},
                      str(tmp / f"{name}.safetensors"))
        _maybe_die_mid_save()
    accelerator.wait_for_everyone()  # save_state has no barrier: every rank's files must be in tmp
    if accelerator.is_main_process:
        _seal(tmp, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
        _write_atomic(root / LATEST, final.name)
        if best:
            _publish_best(final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if protect is None or old.resolve() != protect.resolve():
                shutil.rmtree(old)
    accelerator.wait_for_everyone()  # nobody moves on before the checkpoint is published
    return final


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


def load_checkpoint(accelerator: Accelerator, path: Path, extra: Optional[dict[str, nn.Module]] = None) -> TrainState:
    """Restore model, optimizer, scheduler, scaler, RNG and ``extra`` modules (as saved) from a verified
    checkpoint; return the trainer state."""
    accelerator.load_state(str(path))
    for name, module in (extra or {}).items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise UsageError(f"checkpoint {path} has no {file.name} (saved by a run without it); resume with the "
                             f"config it was saved with, or start a new run")
        module.load_state_dict(load_file(str(file), device=str(accelerator.device)))
    state = TrainState()
    state.load_state_dict(json.loads((path / STATE_FILE).read_text()))
    return state
