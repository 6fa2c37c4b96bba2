"""Console output: on the main process only; other ranks stay silent unless they fail."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING, Optional

from rich.console import Console as RichConsole
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:  # metrics imports torch; the CLI's error path must not
    from cifarlab.metrics import EvalResult


class Console:
    """Rich output on the main process. ``quiet`` keeps only warnings (and errors, see :func:`error`).

    On a terminal each epoch gets a live progress bar; elsewhere (SLURM logs, CI) the same numbers
    come as plain periodic lines, with no control characters.
    """

    def __init__(self, enabled: bool, quiet: bool = False) -> None:
        # Logs are not terminals: give tables room instead of rich's 80-column default.
        width = None if sys.stdout.isatty() else 120
        self._rich = RichConsole(highlight=False, soft_wrap=True, width=width) if enabled and not quiet else None
        self._warnings = enabled
        self.interactive = self._rich is not None and self._rich.is_terminal
        self._start = time.perf_counter()

    def log(self, message: str) -> None:
        if self._rich is not None:
            elapsed = time.perf_counter() - self._start
            self._rich.print(f"[{elapsed:7.1f}s] {message}", markup=False)

    def progress_line(self, message: str) -> None:
        """Periodic training numbers: a log line, unless a live progress bar shows them already."""
        if not self.interactive:
            self.log(message)

    def warn(self, message: str) -> None:
        if self._warnings:
            print(f"cifarlab: warning: {message}", file=sys.stderr, flush=True)

    def epoch_bar(self, title: str, total: int, done: int) -> EpochBar:
        return EpochBar(self._rich if self.interactive else None, title, total, done)

    def eval_table(self, title: str, result: EvalResult, previous: Optional[EvalResult] = None) -> None:
        """Per-class accuracy; with ``previous``, the change since that evaluation (in points)."""
        if self._rich is None:
            return
        table = Table(title=title)
        table.add_column("class")
        table.add_column("accuracy", justify="right")
        if previous is not None:
            table.add_column("change", justify="right")
        table.add_column("images", justify="right")
        for name, accuracy in result.per_class.items():
            row = [name, _percent(accuracy)]
            if previous is not None:
                row.append(_points(accuracy - previous.per_class[name]))
            table.add_row(*row, str(result.per_class_count[name]))
        self._rich.print(table)

    def confusion_table(self, result: EvalResult) -> None:
        """Rows: true class; columns: predicted class (names cut to 5 letters to fit a terminal)."""
        if self._rich is None:
            return
        names = list(result.per_class)
        table = Table(title="confusion matrix (rows: true class, columns: predicted)")
        table.add_column("")
        for name in names:
            table.add_column(name[:5], justify="right")
        for name, row in zip(names, result.confusion):
            table.add_row(name, *[str(count) for count in row])
        self._rich.print(table)


class EpochBar:
    """A live bar for one epoch: steps done, loss, lr, images/s and time left. A no-op off terminals."""

    def __init__(self, console: Optional[RichConsole], title: str, total: int, done: int) -> None:
        self._progress = None
        if console is not None:
            self._progress = Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console)
            self._task = self._progress.add_task(title, total=total, completed=done, stats="")

    def __enter__(self) -> EpochBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int, stats: Optional[str] = None) -> None:
        if self._progress is not None:
            if stats is None:
                self._progress.update(self._task, completed=done)
            else:
                self._progress.update(self._task, completed=done, stats=stats)


def _percent(fraction: float) -> str:
    return "-" if math.isnan(fraction) else f"{100 * fraction:.1f} %"


def _points(change: float) -> str:
    return "-" if math.isnan(change) else f"{100 * change:+.1f}"


def is_rank_zero() -> bool:
    """Rank 0 of the job, read from the launcher's environment (usable before Accelerate starts)."""
    return os.environ.get("RANK", "0") == "0"


def error(message: str) -> None:
    """A user error: one line on stderr, from rank 0 only (the same bad input fails on every rank)."""
    if is_rank_zero():
        print(f"cifarlab: error: {message}", file=sys.stderr)
