"""A search folder as ``compare`` shows it: the trials read from their run directories (``trial-NNNN``; no Optuna
needed), the completed ones best first with their settings, how many were pruned; with ``--png`` the best-so-far
curve over the trials and each searched setting against the metric, pruned trials marked. The best of many noisy
trials overstates its score (the winner's curse): the table says where the confirmation on fresh seeds is."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.analysis.comparison import differing_keys
from cifarlab.analysis.metric import DEFAULT, METRICS, Metric
from cifarlab.analysis.rendering import fits, number
from cifarlab.analysis.results import Run, read_run
from cifarlab.analysis.sweepdir import SweepDir, read_yaml, trial_name
from cifarlab.errors import UsageError
from cifarlab.files import typed
from cifarlab.report import console, figures

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SHOWN = 15
"""Completed trials the table shows, best first."""


@dataclass(frozen=True)
class SearchTrial:
    number: int
    run: Run
    value: Optional[float]
    settings: dict[str, Any]

    @property
    def state(self) -> str:
        if not self.run.finished:
            return "unfinished"
        return f"pruned at epoch {self.run.pruned['prune/epoch']}" if self.run.pruned else "complete"


@dataclass(frozen=True)
class Objective:
    """What a search folder's trials are ranked by."""

    metric: Metric
    maximize: bool
    keys: Optional[list[str]]
    """The searched keys, as the search's space lists them; None where the folder does not say what its search
    optimizes (no search.yaml: a search from before it was written)."""
    space: Optional[dict[str, Any]] = None
    """The search's space as search.yaml has it (``{key: {kind: values}}``); None where keys is."""


def is_search(path: str) -> bool:
    return SweepDir(Path(path)).is_search()


def described(folder: Path, remedy: str) -> Optional[dict[str, Any]]:
    """The folder's search.yaml (written when its study was opened: what the search optimizes, its space, metric and
    direction), the one reader of it; None for a folder from before it was written. Refused, with ``remedy``, where
    it is not what a search writes."""
    path = SweepDir(folder).description
    found = read_yaml(path) if path.is_file() else None
    if found is None:
        return None
    space = found.get("space") if isinstance(found, dict) else None
    metric = found.get("metric") if isinstance(found, dict) else None
    if (not isinstance(space, dict) or not isinstance(metric, str) or metric not in METRICS  # a mapping: unhashable
            or found.get("direction") not in ("maximize", "minimize")):
        raise UsageError(f"{path}: not what a search writes (metric, direction, space); {remedy}")
    return {"space": space, "metric": found["metric"], "direction": found["direction"]}


def objective(folder: Path, metric: Optional[str]) -> Objective:
    """The search's metric and direction, from the folder's search.yaml (final_acc, maximized, for a folder from
    before); ``metric``, given, replaces the search's, in its own direction unless it is the search's."""
    found = described(folder, "move it away to rank by --metric")
    if found is None:
        chosen = METRICS[metric or DEFAULT]
        return Objective(chosen, chosen.higher_is_better, None)
    keys, space = [str(key) for key in found["space"]], found["space"]
    if metric is not None and metric != found["metric"]:
        return Objective(METRICS[metric], METRICS[metric].higher_is_better, keys, space)
    return Objective(METRICS[found["metric"]], found["direction"] == "maximize", keys, space)


def read_trials(folder: Path, goal: Objective) -> tuple[list[SearchTrial], list[str]]:
    """The folder's trials by number, and the searched keys (the search's; else those whose values differ)."""
    runs = [(number, read_run(run.root)) for number, run in SweepDir(folder).search_trials()]
    keys = goal.keys if goal.keys is not None else differing_keys([run for _, run in runs]) if len(runs) > 1 else []
    metric = goal.metric
    return [SearchTrial(number, run, metric.read(run) if run.finished else None,
                        {key: run.config.get(key) for key in keys}) for number, run in runs], keys


def ranked(trials: list[SearchTrial], goal: Objective) -> list[SearchTrial]:
    """The completed trials with a value, best first in the search's direction (ties: the earlier trial)."""
    done = [t for t in trials if t.state == "complete" and t.value is not None and not math.isnan(t.value)]
    sign = -1.0 if goal.maximize else 1.0
    return sorted(done, key=lambda t: (sign * (t.value or 0.0), t.number))


def summary(folder: Path, trials: list[SearchTrial], goal: Objective) -> list[str]:
    pruned = [t for t in trials if t.state.startswith("pruned")]
    lines = [f"search {typed(folder)}: {len(trials)} trials: {len(ranked(trials, goal))} complete, {len(pruned)} "
             f"pruned, {sum(t.state == 'unfinished' for t in trials)} unfinished"]
    confirm = SweepDir(folder).confirmation.root
    lines.append("the best of many noisy trials overstates its score; the confirmation on fresh seeds: "
                 + (shlex.join(["python", "-m", "cifarlab.compare", typed(confirm)]) if confirm.is_dir()
                    else "none yet (a search file's search: confirm: runs one when the trials are done)"))
    return lines


def render(folder: Path, trials: list[SearchTrial], keys: list[str], goal: Objective, width: Optional[int]) -> None:
    """The best completed trials as a table, then :func:`summary`. Where the searched keys as column names would not
    fit the console (80 columns: four dotted keys), the columns are numbered (``k1``) under a line a key that names
    them; where even that does not fit, each trial is a line of its own, its settings wrapped at spaces. Nothing is
    cut: a value is the one the trial trained with (cifarlab.experiments.space.rounded: 4 significant digits)."""
    from rich.console import Console

    best = ranked(trials, goal)
    out = Console(highlight=False, markup=False, width=width)
    if best:
        _print_best(out, best, keys, goal, len(trials))
    else:  # not an empty table: the summary below counts the trials by state
        out.print(f"{goal.metric.title}: no trial has completed yet")
    for line in summary(folder, trials, goal):  # wrapped at spaces on a terminal; a pipe gets one line a message
        print(console.terminal_line(line, indent=0), flush=True)


def _print_best(out: Any, best: list[SearchTrial], keys: list[str], goal: Objective, of: int) -> None:
    """The first SHOWN of ``best`` as a table that fits ``out``: keys as column names, else numbered, else a line a
    trial."""
    metric = goal.metric
    title = f"{metric.title}: the best completed trials of {of} ({'highest' if goal.maximize else 'lowest'} first)"
    table = _table(title, best[:SHOWN], keys, keys, metric)
    if not fits(out, table):
        numbered = [f"k{i}" for i in range(1, len(keys) + 1)]
        table = _table(title, best[:SHOWN], keys, numbered, metric)
        if fits(out, table):
            out.print("searched keys by number:")
            for name, key in zip(numbered, keys):
                out.print(f"  {name} {key}")
        else:
            table = None
    if table is not None:
        out.print(table)
    else:
        out.print(title)
        for rank, trial in enumerate(best[:SHOWN], 1):
            text = (f"{rank}. {trial_name(trial.number)} {number(metric, trial.value)}: "
                    + " ".join(f"{key}={trial.settings.get(key)}" for key in keys))
            for line in console.wrapped(text, out.width, "  ", "      "):
                out.print(line)
    if len(best) > SHOWN:
        out.print(f"... and {len(best) - SHOWN} more completed trials")


def _table(title: str, best: list[SearchTrial], keys: list[str], names: list[str], metric: Metric) -> Any:
    """The ranked trials with their settings of ``keys``, whose columns are named ``names``."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("rank", "trial", metric.name, *names):
        table.add_column(column, justify="right" if column != "trial" else "left", no_wrap=True)
    for rank, trial in enumerate(best, 1):
        table.add_row(str(rank), trial_name(trial.number), number(metric, trial.value),
                      *[str(trial.settings.get(key)) for key in keys])
    return table


def to_json(folder: Path, trials: list[SearchTrial], keys: list[str], goal: Objective) -> dict[str, Any]:
    order = {t.number: rank for rank, t in enumerate(ranked(trials, goal), 1)}
    return {"search": str(folder), "metric": goal.metric.name,
            "direction": "maximize" if goal.maximize else "minimize", "keys": keys,
            "trials": [{"number": t.number, "run": str(t.run.path), "state": t.state, "value": t.value,
                        "rank": order.get(t.number), "settings": t.settings} for t in trials]}


# --- the picture -------------------------------------------------------------------------------------------


def picture(trials: list[SearchTrial], keys: list[str], goal: Objective) -> Figure:
    """Left: each trial's value by trial number (dots; pruned: red crosses at their last evaluation) and the best
    so far (a line). Then one panel per searched key: its values (a log scale where they span 20x or more, all
    positive; names on their own ticks where they are not numbers) against the metric."""
    metric = goal.metric
    read = [(t, _value(t, metric)) for t in trials if t.value is not None or t.run.pruned]
    points = [(t, value * metric.scale) for t, value in read if value is not None]
    chart = figures.figure(3.6 * (1 + len(keys)), 3.6, dpi=150)  # 540 pixels a panel
    axes = chart.subplots(1, 1 + len(keys), sharey=True, squeeze=False)[0]
    history = axes[0]
    figures.panel(history, f"{metric.name} by trial; the best so far")
    best = _best_so_far(points, goal.maximize)
    if len(best) > 1:
        history.step(*zip(*best), where="post", color="black", linewidth=1.5, label="the best so far")
    for trial, value in points:
        _mark(history, trial.number, value, trial)
    history.set_xlabel("trial")
    history.xaxis.get_major_locator().set_params(integer=True)
    history.set_ylabel(metric.title)
    for ax, key in zip(axes[1:], keys):
        figures.panel(ax, f"{key} vs {metric.name}")
        values = [_setting(t.settings.get(key)) for t, _ in points]
        numeric = all(isinstance(v, float) for v in values)
        for (trial, value), setting in zip(points, values if numeric else [str(v) for v in values]):
            _mark(ax, setting, value, trial)
        if numeric and values and min(values) > 0 and max(values) / min(values) >= 20:
            ax.set_xscale("log")
        ax.set_xlabel(key + (" (log scale)" if ax.get_xscale() == "log" else ""))
    chart.legend(handles=_legend(history), loc="outside lower center", ncols=3, frameon=False)
    return chart


def _value(trial: SearchTrial, metric: Metric) -> Optional[float]:
    """A trial's value, or a pruned trial's at its last evaluation."""
    if trial.value is not None:
        return trial.value
    return metric.read(trial.run) if trial.run.evaluations else None


def _best_so_far(points: list[tuple[SearchTrial, float]], maximize: bool) -> list[tuple[int, float]]:
    """(trial number, the best value of the completed trials up to it), one per completed trial."""
    best: list[tuple[int, float]] = []
    for trial, value in points:
        if trial.state == "complete":
            if best and (value <= best[-1][1] if maximize else value >= best[-1][1]):
                value = best[-1][1]
            best.append((trial.number, value))
    return best


def _setting(value: Any) -> Any:
    """A number as a float (a bool is a name: true/false), anything else as it is."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _mark(ax: Any, x: Any, y: float, trial: SearchTrial) -> None:
    if trial.run.pruned:
        ax.scatter([x], [y], marker="x", s=30, color=figures.RED, linewidths=1.5, zorder=3)
    else:
        ax.scatter([x], [y], s=16, color="black", zorder=3)


def _legend(ax: Any) -> list[Any]:
    from matplotlib.lines import Line2D

    return [Line2D([], [], marker="o", linestyle="", color="black", label="completed trial"),
            Line2D([], [], marker="x", linestyle="", color=figures.RED, markeredgewidth=2,
                   label="pruned trial, at its last evaluation"),
            *ax.get_lines()[:1]]
