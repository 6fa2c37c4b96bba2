"""Console output: on the main process only; other ranks stay silent unless they fail."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, TextIO

from rich import box
from rich.console import Console as RichConsole
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cifarlab.data.classes import FULL_TABLE, Groups, most_confused, superclasses
from cifarlab.errors import printable

if TYPE_CHECKING:  # metrics imports torch; the CLI's error path must not
    from cifarlab.report.metrics import EvalResult


_STAMP = len("[    0.0s] ")
"""The width of a log line's time stamp: a wrapped line's continuation starts under its message."""
STAMPED = re.compile(r"\[ *[0-9.]+s\] ")
"""The time stamp :meth:`Console.log` starts a line with (a sweep finds it in a trial's log: experiments.runner)."""


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
            line = f"[{time.perf_counter() - self._start:7.1f}s] {message}"
            if self.interactive:  # logs and pipes keep one line a message, for grep
                line = at_spaces(line, self._rich.width, _STAMP)
            self._rich.print(line, markup=False)

    def progress_line(self, message: str) -> None:
        """Periodic training numbers: a log line, unless a live progress bar shows them already."""
        if not self.interactive:
            self.log(message)

    def warn(self, message: str) -> None:
        if self._warnings:
            warning(message)

    def note(self, message: str) -> None:
        """A remark on something done for the user (a torn file repaired): :func:`note` on the main process."""
        if self._warnings:
            note(message)

    def epoch_bar(self, title: str, total: int, done: int) -> EpochBar:
        return EpochBar(self._rich if self.interactive else None, title, total, done)

    @contextmanager
    def progress(self, title: str, total: int) -> Iterator[Callable[[int], None]]:
        """Long one-off work on ``total`` items (decoding a dataset; :class:`cifarlab.data.path.Progress`): what it
        gives is called with the count of items just done. On a terminal a bar with the time left, gone when the
        work is; in logs a plain line at each quarter once the work has taken 2 s (short work prints none). The
        caller says when it is done (:meth:`log`)."""
        if self._rich is None:
            yield lambda count: None
        elif self.interactive:
            with Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=self._rich, transient=True) as bar:
                task = bar.add_task(title, total=total)
                yield lambda count: bar.advance(task, count)
        else:
            yield _QuarterLines(self.log, title, total).advance

    def eval_table(self, title: str, result: EvalResult, previous: Optional[EvalResult] = None) -> None:
        """Accuracy (and top-5) per class, or, beyond :data:`FULL_TABLE` classes, per CIFAR-100 superclass or
        for the best and worst classes; with ``previous``, the change since that evaluation (in points)."""
        if self._rich is None:
            return
        kind, rows, caption = report_rows(result, previous)
        table = Table(title=title, caption=caption)
        table.add_column(kind)
        table.add_column("accuracy", justify="right")
        if result.top5 is not None:
            table.add_column("top-5", justify="right")
        if kind == "superclass":
            table.add_column("in superclass", justify="right")
        if previous is not None:
            table.add_column("change", justify="right")
        table.add_column("images", justify="right")
        for row in rows:
            if row.section:
                table.add_section()
            cells = [row.name, _percent(row.accuracy)]
            cells += [_percent(row.top5 if row.top5 is not None else math.nan)] if result.top5 is not None else []
            cells += [_percent(row.in_group if row.in_group is not None else math.nan)] if kind == "superclass" else []
            cells += [_points(row.change)] if previous is not None else []
            table.add_row(*cells, str(row.images))
        self._rich.print(table)

    def confusion_table(self, result: EvalResult) -> None:
        """Rows: true class, each named whole and numbered; columns: predicted class, headed by that number (a whole
        name in every column would not fit 80 columns). Beyond :data:`FULL_TABLE` classes, the most-confused pairs
        instead (the whole matrix: a training run's W&B test/confusion_matrix, or predictions.safetensors)."""
        if self._rich is None:
            return
        names = list(result.per_class)
        if len(names) > FULL_TABLE:
            self._rich.print(_pairs_table(result, names))
            return
        table = Table(title="confusion matrix (rows: true class; columns: predicted, by the row's number)",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("true class", no_wrap=True)
        for number in range(len(names)):
            table.add_column(str(number), justify="right", no_wrap=True)
        for number, (name, row) in enumerate(zip(names, result.confusion)):
            table.add_row(f"{number} {name}", *[str(count) for count in row])
        self._rich.print(table)


def print_columns(header: list[str], rows: list[list[str]]) -> None:
    """A listing on stdout: on a terminal, aligned columns that fit it (the last column wraps at its spaces); piped,
    one tab-separated line a row with the header first, for cut, grep and scripts."""
    if not sys.stdout.isatty():
        print("\n".join("\t".join(cells) for cells in [header, *rows]), flush=True)
        return
    table = Table(box=None, pad_edge=False, show_edge=False)
    for number, name in enumerate(header):
        table.add_column(name, no_wrap=number < len(header) - 1, overflow="fold")
    for cells in rows:
        table.add_row(*cells)
    RichConsole(highlight=False, markup=False).print(table)


_BEST_WORST = 5  # rows each for the best and the worst classes, without superclasses
_PAIRS = 10  # most-confused pairs in evaluate's console report


SPLITS = {"test": "test", "val": "validation"}
"""How the console names each evaluated split (its recorded prefix: test/*, val/*)."""


def accuracy_summary(result: EvalResult, split: str = "test") -> str:
    """``test accuracy 61.20 % (10000 images), top-5 95.10 %, loss 1.1234`` (top-5 beyond 5 classes); ``split="val"``
    says ``validation accuracy``."""
    top5 = f", top-5 {100 * result.top5:.2f} %" if result.top5 is not None else ""
    return (f"{SPLITS[split]} accuracy {100 * result.accuracy:.2f} % ({result.count} images){top5}, "
            f"loss {result.loss:.4f}")


@dataclass
class Row:
    """One row of the accuracy table: a class, a superclass, or one of the best or worst classes."""

    name: str
    accuracy: float
    images: int
    top5: Optional[float] = None
    in_group: Optional[float] = None
    """Superclass rows: the fraction of its images predicted as any class of the right superclass."""
    change: float = math.nan
    """Accuracy change since the previous evaluation, a fraction (NaN: none, or no images either time)."""
    section: bool = False
    """Rule a line above this row (between the best and the worst classes)."""


def report_rows(result: EvalResult, previous: Optional[EvalResult] = None) -> tuple[str, list[Row], Optional[str]]:
    """(what a row is, the rows, a caption) of the accuracy table: every class up to :data:`FULL_TABLE`;
    beyond, CIFAR-100's superclasses, or else the best and the worst classes."""
    names = list(result.per_class)
    groups = superclasses(names) if len(names) > FULL_TABLE else None

    def rows_of(evaluation: EvalResult) -> list[Row]:
        return _group_rows(evaluation, groups) if groups is not None else _class_rows(evaluation)

    rows = rows_of(result)
    if previous is not None:
        before = {row.name: row.accuracy for row in rows_of(previous)}
        for row in rows:
            row.change = row.accuracy - before.get(row.name, math.nan)
    if groups is not None:
        return "superclass", rows, f"{len(names)} classes in {len(groups)} superclasses; every class: test/acc/<class>"
    if len(names) <= FULL_TABLE:
        return "class", rows, None
    ranked = sorted((row for row in rows if not math.isnan(row.accuracy)), key=lambda row: -row.accuracy)
    best, worst = ranked[:_BEST_WORST], ranked[max(len(ranked) - _BEST_WORST, _BEST_WORST):]
    if worst:
        worst[0].section = True
    caption = f"the {len(best)} best and {len(worst)} worst of {len(names)} classes; every class: test/acc/<class>"
    return "class", best + worst, caption


def _class_rows(result: EvalResult) -> list[Row]:
    return [Row(name, accuracy, result.per_class_count[name], result.per_class_top5.get(name))
            for name, accuracy in result.per_class.items()]


def _group_rows(result: EvalResult, groups: Groups) -> list[Row]:
    """Per group: accuracy and top-5 over its images, and how many were put in the right group."""
    names, confusion = list(result.per_class), result.confusion
    rows = []
    for group, members in groups:
        images = sum(sum(confusion[i]) for i in members)
        hits = sum(confusion[i][i] for i in members)
        within = sum(confusion[i][j] for i in members for j in members)
        top5 = None
        if result.top5 is not None:  # per-class fractions back to counts: exact integers up to rounding
            top5_hits = sum(round(result.per_class_top5[names[i]] * sum(confusion[i])) for i in members
                            if sum(confusion[i]))
            top5 = top5_hits / images if images else math.nan
        rows.append(Row(group, hits / images if images else math.nan, images, top5,
                        within / images if images else math.nan))
    return rows


def _pairs_table(result: EvalResult, names: list[str]) -> Table:
    table = Table(title=f"most confused pairs of {len(names)} classes")
    table.add_column("true class")
    table.add_column("predicted as")
    table.add_column("images", justify="right")
    table.add_column("of the true class", justify="right")
    for true, predicted, count, fraction in most_confused(result.confusion, _PAIRS):
        table.add_row(names[true], names[predicted], str(count), _percent(fraction))
    return table


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


class _QuarterLines:
    """Progress as plain lines: one at each quarter of the work passed after the first :data:`QUIET_FOR` seconds."""

    QUIET_FOR = 2.0

    def __init__(self, log: Callable[[str], None], title: str, total: int) -> None:
        self.log, self.title, self.total = log, title, total
        self.done, self.quarters, self.started = 0, 0, time.perf_counter()

    def advance(self, count: int) -> None:
        self.done += count
        passed = min(4 * self.done // max(self.total, 1), 3)  # the last quarter is the caller's done line
        if passed > self.quarters:
            self.quarters = passed
            elapsed = time.perf_counter() - self.started
            if elapsed >= self.QUIET_FOR:
                left = elapsed * (self.total - self.done) / self.done
                self.log(f"{self.title}: {self.done:,}/{self.total:,} done, about {left:.0f} s left")


def _percent(fraction: float) -> str:
    return "-" if math.isnan(fraction) else f"{100 * fraction:.1f} %"


def _points(change: float) -> str:
    return "-" if math.isnan(change) else f"{100 * change:+.1f}"


def is_rank_zero() -> bool:
    """Rank 0 of the job, read from the launcher's environment (usable before Accelerate starts)."""
    return os.environ.get("RANK", "0") == "0"


def error(message: str) -> None:
    """A user error: one line on stderr, from rank 0 only (the same bad input fails on every rank)."""
    _stderr_line("error", message)


# A figure and its name or unit stay on one line: "p = 0.684", "61.20 %", "5 % level".
_GLUED = re.compile(r" (?==)|(?<==) | (?=%)")


def wrapped(text: str, width: int, first: str, rest: str) -> list[str]:
    """``text`` in lines of at most ``width`` columns, the first starting with ``first`` and the others with ``rest``,
    broken only at spaces and never inside a figure with its name or unit (a terminal would wrap it at its edge,
    inside words). A word longer than a line (a long path) stays whole."""
    lines = textwrap.wrap(_GLUED.sub("\u00a0", text), width, initial_indent=first, subsequent_indent=rest,
                          break_long_words=False, break_on_hyphens=False)  # textwrap breaks at ASCII spaces only
    return [line.replace("\u00a0", " ") for line in lines]


def at_spaces(line: str, width: int, indent: int) -> str:
    """``line`` :func:`wrapped` to ``width`` columns, its continuations indented by ``indent`` (under the message,
    past its prefix)."""
    return "\n".join(wrapped(line, width, "", " " * indent))


def terminal_line(line: str, indent: int, stream: Optional[TextIO] = None) -> str:
    """``line`` as ``stream`` (stdout) should get it: wrapped at spaces to a terminal's width (:func:`at_spaces`), or
    one line where it is a file or a pipe (logs, grep)."""
    if not (stream or sys.stdout).isatty():
        return line
    return at_spaces(line, shutil.get_terminal_size().columns, indent)


def warning(message: str) -> None:
    """Something the user should know that does not stop the command: one line on stderr, rank 0 only."""
    _stderr_line("warning", message)


def note(message: str) -> None:
    """A remark on what a command did (a conversion, a file written): one line on stderr, rank 0 only."""
    _stderr_line("note", message)


def _stderr_line(kind: str, message: str) -> None:
    if is_rank_zero():  # one line, whatever user text the message quotes (a line break in a file's value)
        print(f"cifarlab: {kind}: {printable(message)}", file=sys.stderr, flush=True)
