"""What a comparison or a search can judge runs by: each metric's name, how it is read from a finished run, which
evaluated split it reads (the test set, or the validation split held out of the training set), its direction, unit
and display (:data:`METRICS`). Reading it needs only the run reader (a sweep file's search: section
names its metric here without loading the comparison engine)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from cifarlab.analysis.results import Run


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    read: Callable[[Run], Optional[float]]
    higher_is_better: bool
    scale: float
    """Display factor: fractions are shown in %."""
    unit: str
    digits: int
    absent: str
    """Why a finished run has no value."""
    proportion: bool = False
    """A fraction of the evaluated images (accuracy): the sampling of those images explains part of its spread, and
    puts a floor under the spread a verdict is judged by (stats.sampling_floor, on :meth:`images`)."""
    split: Optional[str] = None
    """The evaluated split it reads: ``test`` (``test/*``), ``val`` (``val/*``: the validation split,
    ``data.val_size``), or None (not a figure of one split: times, throughput)."""
    on_test: Optional[str] = None
    """A validation metric's test-set counterpart (val_acc: final_acc): what reports a choice made on it."""

    def images(self, run: Run) -> Optional[int]:
        """How many images the run's figure is a fraction of: its split's (``test/images`` or ``val/images``)."""
        return run.images(self.split) if self.split is not None else None

    @property
    def sample(self) -> str:
        """The images whose sampling spreads an accuracy, as a table or note names them."""
        return "validation-split" if self.split == "val" else "test-set"

    def with_unit(self, value: float) -> str:
        """``61.20 %``: one value with its unit, as a sentence shows it (a search's trial, a confirmed mean)."""
        return f"{value * self.scale:.{self.digits}f}{' ' + self.unit if self.unit else ''}"


DEFAULT = "final_acc"
"""compare's metric where --metric is not given (and a search folder's that does not say which it chose on)."""
NO_VAL = "no validation record (data.val_size 0: no validation split held out)"

METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("final_acc", "final test accuracy (%)", Run.final_accuracy, True, 100.0, "%", 2, "no evaluation record",
           True, "test"),
    Metric("best_acc", "best test accuracy (%)", Run.best_accuracy, True, 100.0, "%", 2, "no evaluation record",
           True, "test"),
    Metric("final_top5", "final top-5 test accuracy (%)", Run.final_top5, True, 100.0, "%", 2,
           "no top-5 accuracy recorded (5 classes or fewer, or an older run)", True, "test"),
    Metric("test_loss", "final test loss", Run.final_loss, False, 1.0, "", 4, "no evaluation record", split="test"),
    Metric("val_acc", "final validation accuracy (%)", Run.final_val_accuracy, True, 100.0, "%", 2, NO_VAL, True,
           "val", "final_acc"),
    Metric("best_val_acc", "best validation accuracy (%)", Run.best_val_accuracy, True, 100.0, "%", 2, NO_VAL, True,
           "val", "final_acc"),
    Metric("val_loss", "final validation loss", Run.final_val_loss, False, 1.0, "", 4, NO_VAL, split="val",
           on_test="test_loss"),
    Metric("time_to_target", "wall seconds to train.target_accuracy", Run.time_to_target, False, 1.0, "s", 1,
           "did not reach train.target_accuracy"),
    Metric("train_time_to_target", "training seconds to train.target_accuracy", Run.train_time_to_target, False,
           1.0, "s", 1, "did not reach train.target_accuracy"),
    Metric("images_per_s", "training images/s", Run.images_per_s, True, 1.0, "", 0, "no epoch throughput recorded"),
)}
