"""A search folder as ``compare`` shows it: the trials read from their run directories (``trial-NNNN``; no Optuna
needed), the completed ones best first with their settings, how many were pruned; with ``--png`` the best-so-far
curve over the trials and each searched setting against the metric, pruned trials marked. The best of many noisy
trials overstates its score (the winner's curse): the table says where the confirmation on fresh seeds is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.analysis.comparison import METRICS, Metric, differing_keys
from cifarlab.analysis.rendering import _BLACK, _GREY, _RED, _TEXT, _WHITE, _font, _number
from cifarlab.analysis.results import Run, read_run
from cifarlab.analysis.sweepdir import SweepDir, read_yaml, trial_name
from cifarlab.errors import UsageError

if TYPE_CHECKING:
    from PIL import Image

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
    if (not isinstance(space, dict) or found.get("metric") not in METRICS
            or found.get("direction") not in ("maximize", "minimize")):
        raise UsageError(f"{path}: not what a search writes (metric, direction, space); {remedy}")
    return {"space": space, "metric": found["metric"], "direction": found["direction"]}


def objective(folder: Path, metric: Optional[str]) -> Objective:
    """The search's metric and direction, from the folder's search.yaml (final_acc, maximized, for a folder from
    before); ``metric``, given, replaces the search's, in its own direction unless it is the search's."""
    found = described(folder, "move it away to rank by --metric")
    if found is None:
        chosen = METRICS[metric or "final_acc"]
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
    lines = [f"search {folder}: {len(trials)} trials: {len(ranked(trials, goal))} complete, {len(pruned)} pruned, "
             f"{sum(t.state == 'unfinished' for t in trials)} unfinished"]
    confirm = SweepDir(folder).confirmation.root
    lines.append(f"the best of many noisy trials overstates its score; the confirmation on fresh seeds: "
                 f"{'cifarlab.compare ' + str(confirm) if confirm.is_dir() else 'add search: confirm: to the file'}")
    return lines


def render(folder: Path, trials: list[SearchTrial], keys: list[str], goal: Objective, width: Optional[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    best, metric = ranked(trials, goal), goal.metric
    table = Table(title=f"{metric.title}: the best completed trials of {len(trials)} "
                        f"({'highest' if goal.maximize else 'lowest'} first)")
    for column in ("rank", "trial", metric.name, *keys):
        table.add_column(column, justify="right" if column != "trial" else "left")
    for rank, trial in enumerate(best[:SHOWN], 1):
        # The values as the trial trained with them (cifarlab.experiments.space.rounded: inside the range).
        table.add_row(str(rank), trial_name(trial.number), _number(metric, trial.value),
                      *[str(trial.settings.get(key)) for key in keys])
    out = Console(highlight=False, markup=False, width=width)
    out.print(table)
    if len(best) > SHOWN:
        out.print(f"... and {len(best) - SHOWN} more completed trials")
    for line in summary(folder, trials, goal):
        out.print(line)


def to_json(folder: Path, trials: list[SearchTrial], keys: list[str], goal: Objective) -> dict[str, Any]:
    order = {t.number: rank for rank, t in enumerate(ranked(trials, goal), 1)}
    return {"search": str(folder), "metric": goal.metric.name,
            "direction": "maximize" if goal.maximize else "minimize", "keys": keys,
            "trials": [{"number": t.number, "run": str(t.run.path), "state": t.state, "value": t.value,
                        "rank": order.get(t.number), "settings": t.settings} for t in trials]}


# --- the picture -------------------------------------------------------------------------------------------

_SIDE = 560  # each panel's plot area, pixels


def picture(trials: list[SearchTrial], keys: list[str], goal: Objective) -> Image.Image:
    """Left: each trial's value by trial number (dots; pruned: red crosses at their last evaluation) and the best
    so far (a line). Then one panel per searched key: its values (log scale where they span 20x or more, all
    positive) against the metric."""
    from PIL import Image, ImageDraw

    metric = goal.metric
    font = _font(_TEXT)
    image = Image.new("RGB", (60 + (_SIDE + 120) * (1 + len(keys)), _SIDE + 190), _WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((80, _SIDE + 150), "black dots: completed trials; red crosses: pruned trials, at their last evaluation; "
              "line: the best so far", fill=_GREY, font=font)
    shown = [t for t in trials if t.value is not None or t.run.pruned]
    values = [_value(t, metric) for t in shown]
    y = _Scale([v for v in values if v is not None], 70 + _SIDE, -_SIDE)
    best: list[tuple[float, float]] = []  # (trial number, the best value up to it)
    for trial, value in zip(shown, values):
        if trial.state == "complete" and value is not None:
            if best and (value <= best[-1][1] if goal.maximize else value >= best[-1][1]):
                value = best[-1][1]
            best.append((trial.number, value))
    x = _Scale([float(t.number) for t in trials] or [0.0], 80, _SIDE)
    _panel(draw, font, 80, f"{metric.title} by trial; best so far", "trial", x, y, metric)
    if len(best) > 1:
        draw.line([(x(n), y(v)) for n, v in best], fill=_BLACK, width=3)
    for trial, value in zip(shown, values):
        if value is not None:
            _mark(draw, x(float(trial.number)), y(value), trial)
    for i, key in enumerate(keys, 1):
        left = 80 + i * (_SIDE + 120)
        points = [(t, float(t.settings[key]), v) for t, v in zip(shown, values)
                  if isinstance(t.settings.get(key), (int, float)) and v is not None]
        if not points:
            draw.text((left, 90), f"{key}: not numeric", fill=_GREY, font=font)
            continue
        kx = _Scale([p for _, p, _ in points], left, _SIDE)
        _panel(draw, font, left, f"{key} vs {metric.name}" + (" (log)" if kx.log else ""), key, kx, y, metric)
        for trial, setting, value in points:
            _mark(draw, kx(setting), y(value), trial)
    return image


def _value(trial: SearchTrial, metric: Metric) -> Optional[float]:
    """A trial's value, or a pruned trial's at its last evaluation."""
    if trial.value is not None:
        return trial.value
    return metric.read(trial.run) if trial.run.evaluations else None


class _Scale:
    """Values to pixels: ``start`` + ``length`` * position, padded by a tenth; log where they span 20x (positive)."""

    def __init__(self, values: list[float], start: int, length: int) -> None:
        self.log = bool(values) and min(values) > 0 and max(values) / min(values) >= 20
        ends = [self._t(v) for v in values] or [0.0, 1.0]
        low, high = min(ends), max(ends)
        pad = (high - low) * 0.1 or abs(high) * 0.05 or 1.0
        self.low, self.high, self.start, self.length = low - pad, high + pad, start, length

    def _t(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def __call__(self, value: float) -> int:
        return int(self.start + (self._t(value) - self.low) / (self.high - self.low) * self.length)

    def ends(self) -> tuple[float, float]:
        return (10 ** self.low, 10 ** self.high) if self.log else (self.low, self.high)


def _panel(draw: Any, font: Any, left: int, title: str, label: str, x: _Scale, y: _Scale, metric: Metric) -> None:
    top, bottom = 70, 70 + _SIDE
    draw.text((left, 20), title, fill=_BLACK, font=font)
    draw.rectangle([left, top, left + _SIDE, bottom], outline=_GREY, width=2)
    low, high = x.ends()
    draw.text((left, bottom + 8), f"{low:.3g}", fill=_GREY, font=font)
    draw.text((left + _SIDE - 80, bottom + 8), f"{high:.3g}", fill=_GREY, font=font)
    draw.text((left + _SIDE // 2 - 40, bottom + 36), label, fill=_BLACK, font=font)
    for value in y.ends():
        draw.text((left - 70, y(value) - _TEXT), _number(metric, value), fill=_GREY, font=font)


def _mark(draw: Any, x: int, y: int, trial: SearchTrial) -> None:
    if trial.run.pruned:
        draw.line([x - 7, y - 7, x + 7, y + 7], fill=_RED, width=3)
        draw.line([x - 7, y + 7, x + 7, y - 7], fill=_RED, width=3)
    else:
        draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=_BLACK)
