"""Console output: on the main process only; other ranks stay silent unless they fail."""

from __future__ import annotations

import math
import sys
import time

from rich.console import Console as RichConsole
from rich.table import Table

from cifarlab.metrics import EvalResult


class Console:
    def __init__(self, enabled: bool) -> None:
        self._rich = RichConsole(highlight=False, soft_wrap=True) if enabled else None
        self._start = time.perf_counter()

    def log(self, message: str) -> None:
        if self._rich is not None:
            elapsed = time.perf_counter() - self._start
            self._rich.print(f"[{elapsed:7.1f}s] {message}", markup=False)

    def warn(self, message: str) -> None:
        if self._rich is not None:
            print(f"cifarlab: warning: {message}", file=sys.stderr, flush=True)

    def eval_table(self, epoch: int, epochs: int, result: EvalResult) -> None:
        if self._rich is None:
            return
        table = Table(title=f"epoch {epoch}/{epochs}: test accuracy {100 * result.accuracy:.2f} % "
                            f"({result.count} images), loss {result.loss:.4f}")
        table.add_column("class")
        table.add_column("accuracy", justify="right")
        table.add_column("images", justify="right")
        for name, accuracy in result.per_class.items():
            shown = "-" if math.isnan(accuracy) else f"{100 * accuracy:.1f} %"
            table.add_row(name, shown, str(result.per_class_count[name]))
        self._rich.print(table)


def error(message: str) -> None:
    """A user error: one line on stderr."""
    print(f"cifarlab: error: {message}", file=sys.stderr)
