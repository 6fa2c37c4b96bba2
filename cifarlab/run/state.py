"""The trainer's own state: where training is (:class:`TrainState`, saved in every checkpoint as
trainer_state.json), the clocks it keeps (:class:`Stopwatch`), and the pace of its batches (:class:`Pace`).

No torch at import: tests/fake_trainer.py, the sweep's stand-in trainer, keeps its state in this same
:class:`TrainState` without importing torch; the trainer's running loss sum is a tensor made on demand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Pace:
    """How a run's training batches go, fixed once its data is prepared: the global batch (``train.batch_size``,
    read by the loop where the data is prepared) and the batches per epoch. Passed by the loop to what needs them."""

    batch_size: int
    steps_per_epoch: int

    def images_per_s(self, batches: int, seconds: float) -> float:
        """Training images per second: ``batches`` global batches in ``seconds`` (the one place it is computed)."""
        return batches * self.batch_size / max(seconds, 1e-9)


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
    """Best accuracy so far, as a fraction: on the validation split where there is one (data.val_size), else on
    the test set; the best checkpoint is the epoch that reached it."""
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
    """Where ``train.target_accuracy`` was reached (``target/*`` names, see :mod:`cifarlab.run.recorder`); None
    before."""
    pruned: Optional[dict[str, float]] = None
    """Where a search's pruner stopped the run (``prune/*`` names, see :mod:`cifarlab.run.pruning`); None before."""
    epoch_loss_sum: float = 0.0
    """Training loss of the epoch in progress summed over :attr:`epoch_loss_batches` batches (each batch's loss
    averaged over the ranks), so that a resumed epoch's ``train/epoch_loss`` covers the whole epoch. The batches
    since the last save are summed on the device (:attr:`running_loss`) and added in by :meth:`read_back_loss`."""
    epoch_loss_batches: int = 0
    """The batches :attr:`epoch_loss_sum` covers: all of the epoch's so far; only those after the resume when the
    run resumed from a checkpoint saved without these fields (older versions)."""
    epoch_start_train_s: float = 0.0
    """:attr:`train_s` when the epoch in progress began: the epoch's training seconds (over every segment) are
    ``train_s`` minus this. A checkpoint saved without it counts from the resume."""

    def __post_init__(self) -> None:
        self.wall, self.training = Stopwatch(self.elapsed_s), Stopwatch(self.train_s)
        self.running_loss: Optional[torch.Tensor] = None
        """This rank's training loss summed on its device since :attr:`epoch_loss_sum` was last read back (no
        host sync per step); None outside an epoch's batch loop."""
        self._running_from = self.step_in_epoch  # step_in_epoch when running_loss was last zeroed

    def state_dict(self) -> dict[str, Any]:
        """Plain values for trainer_state.json; call :meth:`read_back_loss` first (the checkpointer does)."""
        return {**asdict(self), "elapsed_s": self.wall.read(), "train_s": self.training.read()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        if "epoch_start_train_s" not in state:  # saved by an older version: the epoch's figures start here
            self.epoch_start_train_s = self.train_s
        self.__post_init__()

    def start_running_loss(self, device: torch.device) -> torch.Tensor:
        """A zero sum on ``device`` for the batch loop to add each batch's loss to (:attr:`running_loss`)."""
        import torch  # here, not at the top: the module stays torch-free for tests/fake_trainer.py

        self.running_loss, self._running_from = torch.zeros((), device=device), self.step_in_epoch
        return self.running_loss

    def read_back_loss(self, mean_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Add :attr:`running_loss`, averaged over the ranks, into :attr:`epoch_loss_sum` and zero it: a host sync,
        and with ``mean_over_ranks`` a collective (call on every rank). Only at saves and at the epoch's end."""
        if self.running_loss is None:
            return
        self.epoch_loss_sum += float(mean_over_ranks(self.running_loss).item())
        self.epoch_loss_batches += self.step_in_epoch - self._running_from
        self.running_loss.zero_()
        self._running_from = self.step_in_epoch

    def epoch_loss(self) -> float:
        """Mean training loss over the epoch's batches so far (as read back)."""
        return self.epoch_loss_sum / max(self.epoch_loss_batches, 1)

    def end_epoch(self, accuracy: Optional[float]) -> None:
        """The epoch in progress has been trained and evaluated at ``accuracy`` (None: not evaluated)."""
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.epoch_loss_sum, self.epoch_loss_batches, self.running_loss = 0.0, 0, None
        self._running_from, self.epoch_start_train_s = 0, self.training.read()
        if accuracy is not None and accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, self.epoch

    @property
    def ended_early(self) -> bool:
        """The run stops before train.epochs: it reached train.target_accuracy, or a search pruned it."""
        return self.target is not None or self.pruned is not None

    def reached(self, target: Optional[float], accuracy: float) -> bool:
        """Whether the evaluation just ended (at ``accuracy``) is the first to reach ``target``; if so,
        :attr:`target` records where."""
        if target is None or self.target is not None or accuracy < target:
            return False
        self.target = {"target/accuracy": target, "target/epoch": self.epoch, "target/step": self.global_step,
                       "target/elapsed_s": round(self.wall.read(), 3),
                       "target/train_seconds": round(self.training.read(), 3)}
        return True
