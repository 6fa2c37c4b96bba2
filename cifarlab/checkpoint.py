"""Checkpoints: Accelerate's state plus the trainer's own position, written atomically.

Layout under the run directory::

    checkpoints/step_00001200/   model.safetensors, optimizer.bin, scheduler.bin, random_states_{rank}.pkl,
                                 trainer_state.json
    checkpoints/latest           name of the newest complete checkpoint, updated last

A checkpoint is written to ``checkpoints/.tmp-step_N`` and renamed into place once every rank's
files are there, so a crash mid-save never leaves a half-written ``step_N`` or a ``latest``
that points at one.

The trainer's state is JSON, not a ``register_for_checkpointing`` object: Accelerate loads those
with ``torch.load(weights_only=False)``, which would execute pickled code from the checkpoint.
Accelerate's own files are loaded with ``weights_only=True`` (its ``load`` default).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from accelerate import Accelerator

from cifarlab.errors import UsageError

STATE_FILE = "trainer_state.json"
LATEST = "latest"
_PREFIX = "step_"


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
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    pointer = checkpoint_dir(run_dir) / LATEST
    if pointer.is_file():
        target = checkpoint_dir(run_dir) / pointer.read_text().strip()
        if (target / STATE_FILE).is_file():
            return target
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainState, keep_last: int,
                    protect: Optional[Path] = None) -> Path:
    """Save on every rank (each writes its RNG state), then publish and prune on the main process.

    ``protect`` (the checkpoint this run resumed from) is never pruned.
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
    accelerator.wait_for_everyone()  # save_state has no barrier: every rank's files must be in tmp
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(root / LATEST, final.name)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if protect is None or old.resolve() != protect.resolve():
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> TrainState:
    """Restore model, optimizer, scheduler, scaler and RNG from ``path``; return the trainer state."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise UsageError(
            f"train.resume={path}: not a cifarlab checkpoint (no {STATE_FILE}); point it at a folder under "
            f"<run>/checkpoints/ or use train.resume=auto"
        )
    accelerator.load_state(str(path))
    state = TrainState()
    state.load_state_dict(json.loads(state_file.read_text()))
    return state
