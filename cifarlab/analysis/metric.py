"""What a comparison or a search can judge runs by: each metric's name, how it is read from a finished run, its
direction, unit and display (:data:`METRICS`). Reading it needs only the run reader (a sweep file's search: section
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
    """A fraction of the test images (accuracy): test-set sampling explains part of its spread, and puts a floor
    under the spread a verdict is judged by (stats.sampling_floor)."""

    def with_unit(self, value: float) -> str:
        """``61.20 %``: one value with its unit, as a sentence shows it (a search's trial, a confirmed mean)."""
        return f"{value * self.scale:.{self.digits}f}{' ' + self.unit if self.unit else ''}"


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("final_acc", "final test accuracy (%)", Run.final_accuracy, True, 100.0, "%", 2, "no evaluation record",
           True),
    Metric("best_acc", "best test accuracy (%)", Run.best_accuracy, True, 100.0, "%", 2, "no evaluation record",
           True),
    Metric("final_top5", "final top-5 test accuracy (%)", Run.final_top5, True, 100.0, "%", 2,
           "no top-5 accuracy recorded (5 classes or fewer, or an older run)", True),
    Metric("test_loss", "final test loss", Run.final_loss, False, 1.0, "", 4, "no evaluation record"),
    Metric("time_to_target", "wall seconds to train.target_accuracy", Run.time_to_target, False, 1.0, "s", 1,
           "did not reach train.target_accuracy"),
    Metric("train_time_to_target", "training seconds to train.target_accuracy", Run.train_time_to_target, False,
           1.0, "s", 1, "did not reach train.target_accuracy"),
    Metric("images_per_s", "training images/s", Run.images_per_s, True, 1.0, "", 0, "no epoch throughput recorded"),
)}
