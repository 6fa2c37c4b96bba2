"""How many seeds: the runs per group that Welch's t needs to find a given difference with 80 % power at the
spread the runs show (never below an accuracy's test-set sampling error, the floor compare's tests use), and the
smallest difference the runs at hand can find (noncentral t; docs/compare.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from cifarlab.analysis import stats
from cifarlab.analysis.comparison import Report
from cifarlab.errors import UsageError


@dataclass(frozen=True)
class Plan:
    delta: float
    """The difference to detect, in the metric's units (a fraction for accuracies)."""
    std: float
    """Run-to-run standard deviation pooled over the groups of 2 or more runs (weights: n - 1), each group's at least
    its floor (analysis.GroupResult.floor)."""
    alpha: float
    """The level each comparison is planned at: 5 %, divided by the number of comparisons when adjusted."""
    seeds: Optional[int]
    """Runs per group (None: more than 10,000)."""
    detectable: list[tuple[str, Optional[float]]]
    """(group label, the smallest difference from the baseline its runs find with 80 % power; None when a side
    has fewer than 2 runs or neither spreads: Welch's t has no test there)."""


def pooled_std(report: Report) -> float:
    spread = [(g.summary.n - 1, max(g.summary.std, g.floor or 0.0)) for g in report.groups
              if g.summary.std is not None]
    if not spread:
        raise UsageError("--plan: no group has 2 or more runs, so there is no run-to-run spread to plan with; "
                         "run at least 2 seeds of a setting first")
    pooled = math.sqrt(sum(df * std ** 2 for df, std in spread) / sum(df for df, _ in spread))
    if pooled == 0.0:
        raise UsageError(f"--plan: the runs of every group repeat exactly ({report.metric.name} does not spread at "
                         f"all), so there is no run-to-run spread to plan with; run other seeds (train.seed)")
    return pooled


def plan(report: Report, delta: float) -> Plan:
    """``delta`` in the metric's units. With several comparisons and an adjustment each is planned at
    0.05 / k (Bonferroni: what the first step of Holm's procedure asks)."""
    if not delta > 0:
        raise UsageError(f"--plan {delta * report.metric.scale:g}: the difference to detect must be positive")
    k = len(report.differences)
    alpha = stats.ALPHA / (k if report.adjust != "none" and k > 1 else 1)
    std = pooled_std(report)
    found = [(d.group.group.label, stats.detectable(d.welch.se, d.welch.df, alpha) if d.welch else None)
             for d in report.differences]
    return Plan(delta, std, alpha, stats.seeds_needed(delta, std, alpha), found)
