"""Sequential sweeps, ``python -m cifarlab.sweep SWEEP.yaml --until-decided``: seeds are added in rounds until each
group of trials is decided against the baseline group, or the cap on seeds per group is reached, by a rule that
stays valid although the results are looked at after every round (docs/sweeps.md, "Until decided").

The rule: repeated confidence intervals with Pocock's boundary. After each round, each comparison's difference of
mean final test accuracy (group minus baseline) gets a Welch interval whose two-sided level is the same at every
look and chosen (:func:`pocock_level`) so that over all the planned looks together the intervals miss the true
difference with probability about 5 %. No group's spread is taken below its test-set sampling error (a run's
accuracy is itself a sample: cifarlab.analysis.stats.sampling_floor): runs that repeat one score are not a
measurement without error. A comparison is decided when its interval lies above 0 (better), below 0 (worse) or
inside ±margin (equivalent); a decision can be wrong only where some interval missed the truth.
tests/test_sequential.py simulates the false-positive rate and the power. numpy and scipy are imported inside the
functions that compute: the sweep CLI imports neither for its other modes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.analysis import stats
from cifarlab.analysis.results import read_run
from cifarlab.analysis.sweepdir import read_yaml
from cifarlab.errors import UsageError
from cifarlab.experiments.record import Trial
from cifarlab.experiments.runner import Runner, finished, say, write_record
from cifarlab.experiments.spec import SEED, TRAINER, Sweep, read_sweep

if TYPE_CHECKING:
    import numpy as np

ALPHA = 0.05
"""The chance, over all looks together, that some interval misses the true difference."""
GRID = 201
"""Points per look of the numerical integration in :func:`pocock_level` (its constant to about 5e-4)."""
POINTS = 100.0
"""Accuracy is a fraction in metrics.jsonl; differences and margins are in accuracy points (%)."""
DECISIONS = ("better", "worse", "equivalent")
MAX_SEEDS = 10
"""--max-seeds by default: seeds per group at most."""


# --- the rule ---------------------------------------------------------------------------------------------------


def pocock_level(looks: Sequence[int], alpha: float = ALPHA) -> float:
    """The nominal two-sided level used at every look of Pocock's boundary for looks after ``looks`` runs per group
    (increasing; the last is the cap): ``2 (1 - Φ(c))`` with the constant c for which a standard Brownian motion's
    standardised values ``W(t_k) / sqrt(t_k)`` at the information times ``t_k = looks[k] / looks[-1]`` reach ±c at
    some look with probability ``alpha`` (one look: c = 1.96; 5 equally spaced: 2.413, Pocock 1977)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    times = [n / looks[-1] for n in looks]
    c = brentq(lambda c: _crossing(c, times) - alpha, 1.0, 8.0, xtol=1e-9)
    return float(2 * norm.sf(c))


def _crossing(c: float, times: Sequence[float]) -> float:
    """P(|W(t_k)| >= c sqrt(t_k) at some k): the density of W(t_k) on the paths still inside the boundary is carried
    from look to look by the Gaussian increments (trapezoidal rule on GRID points), and what is left is 1 - that."""
    import numpy as np

    def grid(t: float) -> tuple[np.ndarray, np.ndarray]:
        edge = c * math.sqrt(t)
        points = np.linspace(-edge, edge, GRID)
        weights = np.full(GRID, 2 * edge / (GRID - 1))
        weights[[0, -1]] /= 2
        return points, weights

    x, w = grid(times[0])
    density = np.exp(-x**2 / (2 * times[0])) / math.sqrt(2 * math.pi * times[0])
    for before, now in itertools.pairwise(times):
        y, v = grid(now)
        step = now - before
        kernel = np.exp(-((y[:, None] - x[None, :]) ** 2) / (2 * step)) / math.sqrt(2 * math.pi * step)
        density, x, w = kernel @ (density * w), y, v
    return float(1 - (density * w).sum())


def welch_intervals(base: Any, other: Any, level: float,
                    images: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along the last axis (each group's runs, at least 2): the difference of means ``other - base`` and the ends of
    its Welch interval at two-sided level ``level`` (Student's t, Welch–Satterthwaite degrees of freedom). Leading
    axes are independent comparisons (the simulations in tests/test_sequential.py pass thousands at once).
    ``images``: the number of test images the accuracies (in points) were measured on, one number or one per
    comparison; each group's standard deviation is then at least its test-set sampling error at its mean
    (stats.sampling_floor). None: no floor. Where neither group spreads and no floor applies, the interval is
    unbounded: runs that repeat one score exactly decide nothing."""
    import numpy as np

    base, other = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    floors = (0.0, 0.0) if images is None else (
        POINTS * stats.sampling_floors(base.mean(axis=-1) / POINTS, images),
        POINTS * stats.sampling_floors(other.mean(axis=-1) / POINTS, images))
    diff, _, _, half = stats.welch_many(base, other, 1 - level, *floors)  # stats' level is the coverage
    return diff, diff - half, diff + half


def decide(low: Any, high: Any, margin: Optional[float]) -> np.ndarray:
    """Each interval's decision: "better" (above 0), "worse" (below 0), "equivalent" (inside ±``margin``, when one
    is given; a difference shown to be real wins over a margin that would also hold it), else "" (undecided)."""
    import numpy as np

    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    inside = (low > -margin) & (high < margin) if margin is not None else np.zeros(low.shape, dtype=bool)
    return np.select([low > 0, high < 0, inside], list(DECISIONS), default="")


# --- the rounds -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    max_seeds: int
    """Seeds per group at most (the last look)."""
    margin: Optional[float]
    """Differences within ±margin accuracy points count as equivalent; None: no equivalence is decided."""
    parallel: int = 1


@dataclass
class Comparison:
    label: str
    seeds: int = 0
    """Runs per group at its last look."""
    diff: float = math.nan
    """Mean final test accuracy, group minus baseline, in accuracy points; then the interval's ends."""
    low: float = math.nan
    high: float = math.nan
    decision: str = ""

    def shown(self) -> str:
        return f"{self.diff:+.2f} points, interval [{self.low:+.2f}, {self.high:+.2f}]"


def run_round(sweep: Sweep, trials: Sequence[Trial], parallel: int) -> int:
    """Runs one round's trials, ``parallel`` at a time (each with its share of the cores); the sweep's exit code."""
    return Runner(sweep, min(parallel, len(trials))).run(trials)


def until_decided(path: str, overrides: Sequence[str], launch: Sequence[str], plan: Plan,
                  trainer: tuple[str, ...] = TRAINER) -> int:
    """Runs the sweep in ``path`` round by round (the file's seeds, then one seed more per round for the baseline
    and each undecided group) until every comparison with the baseline is decided or has ``plan.max_seeds`` seeds.
    0 when the rounds ran, whatever was decided; a round's exit code when some of its trials did not finish.
    ``trainer``: what the trials run (cifarlab.experiments.spec.TRAINER)."""
    sweep = read_sweep(path, overrides, launch, trainer=trainer)
    if sweep.search is not None:
        raise UsageError(f"--until-decided: {path} is a search; its search: confirm: re-runs the best settings on "
                         f"seeds and compares them (docs/sweeps.md)")
    seeds = _first_seeds(sweep, path, plan)
    level = pocock_level(range(len(seeds), plan.max_seeds + 1))
    groups = _groups(sweep)
    base = next(iter(groups))
    label = {key: " ".join(key) or "base" for key in groups}
    comparisons = {key: Comparison(label[key]) for key in list(groups)[1:]}
    say(sweep, f"until decided: {len(comparisons)} comparison(s) with the baseline {label[base]}; seeds {seeds}, "
                f"then one more per round, up to {plan.max_seeds} per group; each look's interval at the "
                f"{100 * (1 - level):.2f} % level (Pocock: 95 % over all looks)"
                + (f"; equivalent within ±{plan.margin:g} points" if plan.margin is not None else ""))
    while True:
        undecided = [key for key, comparison in comparisons.items() if not comparison.decision]
        todo = [t for key in (base, *undecided) for t in groups[key] if not finished(sweep, t)]
        say(sweep, f"{len(seeds)} seeds: {len(todo)} trial(s) to run for the baseline and {len(undecided)} "
                    f"undecided group(s)")
        if todo:
            write_record(sweep)
            code = run_round(sweep, todo, plan.parallel)
            if code != 0:
                say(sweep, f"not every trial of this round finished: nothing decided with {len(seeds)} seeds; "
                            f"run the same command again to continue")
                return code
        baseline = _accuracies(sweep, groups[base])
        for key in undecided:
            comparison = _look(comparisons[key], baseline, _accuracies(sweep, groups[key]), level, plan.margin)
            say(sweep, f"after {len(seeds)} seeds: {comparison.label} vs {label[base]}: {comparison.shown()}: "
                        f"{comparison.decision or 'undecided'}")
        if all(c.decision for c in comparisons.values()) or len(seeds) >= plan.max_seeds:
            break
        seeds = [*seeds, max(seeds) + 1]
        sweep = read_sweep(path, overrides, launch, seeds, trainer)
        groups = _groups(sweep)
    for comparison in comparisons.values():
        outcome = (f"{comparison.decision} after {comparison.seeds} seeds" if comparison.decision
                   else f"undecided at the cap of {plan.max_seeds} seeds")
        say(sweep, f"{comparison.label} vs {label[base]}: {outcome} ({comparison.shown()})")
    return 0


def _first_seeds(sweep: Sweep, path: str, plan: Plan) -> list[int]:
    """The file's seeds (the first round), after checking the plan against them; nothing has run yet."""
    seeds = read_yaml(Path(path)).get("seeds")
    if not isinstance(seeds, list) or len(seeds) < 2:
        raise UsageError(f"--until-decided adds seeds to {path}'s seeds:, which needs at least 2 (a group's runs "
                         f"must show their spread before anything is decided), e.g. seeds: [0, 1]")
    if plan.max_seeds < len(seeds):
        raise UsageError(f"--max-seeds {plan.max_seeds}: {path} starts with {len(seeds)} seeds; give at least "
                         f"{len(seeds)}")
    if plan.margin is not None and not plan.margin > 0:
        raise UsageError(f"--margin {plan.margin:g}: give a positive number of accuracy points (e.g. 0.5)")
    if len(_groups(sweep)) < 2:
        raise UsageError(f"--until-decided compares groups of trials (settings other than the seed) with the first; "
                         f"{path} has one group: add trials: or grid:")
    return [int(seed) for seed in seeds]


def _groups(sweep: Sweep) -> dict[tuple[str, ...], list[Trial]]:
    """The trials by their settings other than the seed, the group of the first trial (lowest index) first."""
    groups: dict[tuple[str, ...], list[Trial]] = {}
    for trial in sorted(sweep.trials, key=lambda t: t.index):
        key = tuple(setting for setting in trial.settings if not setting.startswith(f"{SEED}="))
        groups.setdefault(key, []).append(trial)
    return groups


@dataclass(frozen=True)
class Scores:
    """A group's final test accuracies, in points, and the fewest test images they were measured on (None when no
    run recorded its count: then no floor applies)."""

    points: list[float]
    images: Optional[int]


def _accuracies(sweep: Sweep, trials: Sequence[Trial]) -> Scores:
    values, images = [], []
    for trial in trials:
        run = read_run(sweep.run_dir(trial).root)
        accuracy = run.final_accuracy()
        if accuracy is None:
            raise UsageError(f"trial {trial.index} {trial.name} finished without a test accuracy (no test/acc in its "
                             f"metrics.jsonl); --until-decided compares final test accuracies")
        values.append(accuracy * POINTS)
        images.append(run.test_images())
    counts = [count for count in images if count]
    return Scores(values, min(counts) if counts else None)


def _look(comparison: Comparison, base: Scores, other: Scores, level: float,
          margin: Optional[float]) -> Comparison:
    counts = [count for count in (base.images, other.images) if count]
    diff, low, high = welch_intervals(base.points, other.points, level, min(counts) if counts else None)
    comparison.seeds, comparison.diff = len(other.points), float(diff)
    comparison.low, comparison.high = float(low), float(high)
    comparison.decision = str(decide(low, high, margin))
    return comparison
