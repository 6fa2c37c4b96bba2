"""Comparing groups of finished runs: which runs form a group (the config keys they differ in, or --by keys,
env.* from environment.json), each group's mean, spread and 95 % interval of a metric and how much of its spread
test-set sampling explains, each group's difference from a baseline (Welch's t on the runs: the verdict about
settings; McNemar on per-image predictions when each side has one run: a statement about two trained models),
adjusted for several comparisons, and the warnings and notes that go with them. Copies of one measurement are
counted once (cifarlab.analysis.repeats), and an accuracy's spread is never taken below its test-set sampling
error. The statistics and what they mean: docs/compare.md."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from cifarlab.analysis import repeats, stats
from cifarlab.analysis.confounds import ENV_PREFIX, environment_warnings
from cifarlab.analysis.metric import Metric
from cifarlab.analysis.results import Predictions, Run
from cifarlab.config import shown
from cifarlab.errors import UsageError
from cifarlab.files import typed
from cifarlab.identity import VOLATILE

IGNORED: tuple[str, ...] = ("train.seed", *VOLATILE)
"""Config keys (or prefixes, ending in a dot) that never form groups by themselves: the seed, which is what repeats
of one experiment vary, and the keys that never change what a run computes (cifarlab.identity.VOLATILE: names,
folders, resumption, threads, logging, checkpoints, where the data lives). ``--by`` can still name them."""

SIGNIFICANCE = stats.ALPHA
"""A difference is significant when p < 0.05."""


# --- grouping -------------------------------------------------------------------------------------------


@dataclass
class Group:
    label: str
    overrides: dict[str, Any]
    """The grouping keys' values shared by this group's runs."""
    runs: list[Run]


def value_of(run: Run, key: str) -> Any:
    return run.env(key[len(ENV_PREFIX):]) if key.startswith(ENV_PREFIX) else run.config.get(key)


def _identity(value: Any) -> str:
    """A hashable, type-exact stand-in for a value (lists are values too; 1 and 1.0 and true stay apart)."""
    return json.dumps(value, sort_keys=True)


def ignored(key: str) -> bool:
    return any(key == item or (item.endswith(".") and key.startswith(item)) for item in IGNORED)


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys, in config order, whose values are not the same in every run (IGNORED keys excepted)."""
    keys = list(dict.fromkeys(key for run in runs for key in run.config))
    return [key for key in keys if not ignored(key) and len({_identity(run.config.get(key)) for run in runs}) > 1]


def check_keys(runs: Sequence[Run], keys: Sequence[str]) -> None:
    """Every ``--by`` key must exist in some run's config or environment.json."""
    config_keys = sorted({key for run in runs for key in run.config})
    env_keys = sorted({ENV_PREFIX + key for run in runs for key in run.environment})
    for key in keys:
        if key.startswith(ENV_PREFIX):
            if key not in env_keys:
                have = f"fields: {', '.join(env_keys)}" if env_keys else "no run has an environment.json"
                raise UsageError(f"--by {key}: no run's environment.json has it ({have})")
        elif key not in config_keys:
            close = difflib.get_close_matches(key, config_keys, n=3, cutoff=0.8)
            hint = (f"; did you mean {' or '.join(close)}?" if close
                    else " (a dotted config key such as optim.lr, or env.processes)")
            raise UsageError(f"--by {key}: not a config key{hint}")


def _sort_key(values: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    """Numbers in numeric order, then text; null first."""
    def one(value: Any) -> tuple[int, Any]:
        if value is None:
            return (0, 0)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (1, value)
        return (2, shown(value))
    return tuple(one(value) for value in values)


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """Runs with equal values of ``keys`` form a group; groups ordered by those values."""
    buckets: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        buckets.setdefault(tuple(_identity(value_of(run, key)) for key in keys), []).append(run)
    groups = []
    for members in buckets.values():
        overrides = {key: value_of(members[0], key) for key in keys}
        label = ", ".join(f"{key}={shown(value)}" for key, value in overrides.items()) or "all"
        groups.append(Group(label, overrides, members))
    return sorted(groups, key=lambda g: _sort_key(tuple(g.overrides.values())))


def pick_baseline(groups: Sequence[Group], spec: Optional[str]) -> int:
    """The baseline's index: ``spec`` is a group number as the table shows it (1 = first), a label, or the
    key=value parts that pick out one group; None = the first group."""
    if spec is None:
        return 0
    labels = [group.label for group in groups]
    if spec.isdigit() and 1 <= int(spec) <= len(groups):
        return int(spec) - 1
    if spec in labels:
        return labels.index(spec)
    parts = {part.strip() for part in spec.split(",") if part.strip()}
    matching = [i for i, label in enumerate(labels) if parts <= {part.strip() for part in label.split(",")}]
    if len(matching) == 1:
        return matching[0]
    raise UsageError(f"--baseline {spec}: {'matches several groups' if matching else 'no such group'}; "
                     f"give a number 1-{len(groups)} or one of: {'; '.join(labels)}")


# --- comparing ------------------------------------------------------------------------------------------


@dataclass
class Spread:
    """Where a group's run-to-run spread of an accuracy comes from: the part test-set sampling alone gives
    (binomial, sqrt(p (1 - p) / images)) and what is left for seed luck (variances subtract)."""

    images: int
    test_set_std: float
    seed_std: float
    """sqrt(max(0, std^2 - test_set_std^2))."""
    explained: float
    """test_set_std^2 / std^2, at most 1 (1 when the runs do not differ at all)."""


@dataclass
class GroupResult:
    group: Group
    counted: list[Run]
    """The group's runs that have a value of the metric."""
    values: list[float]
    summary: stats.Summary
    per_class: dict[str, Optional[float]]
    """Mean final accuracy per class over the counted runs (None where no run has the class)."""
    spread: Optional[Spread] = None
    """For accuracies of groups of 2 or more runs whose evaluation recorded its image count."""
    floor: Optional[float] = None
    """The smallest standard deviation of one run's value that the group's interval and tests use: an accuracy's
    sampling error at the group's mean (stats.sampling_floor, on the fewest evaluated images of its runs:
    Metric.images); None for other metrics and for runs that did not record their number of images."""


@dataclass
class Difference:
    group: GroupResult
    baseline: GroupResult
    diff: Optional[float]
    welch: Optional[stats.Welch]
    """Welch's t on the runs' values: the test of a verdict about settings (both sides 2 runs or more)."""
    paired: Optional[stats.McNemar]
    """McNemar on the predictions when each side has exactly one run: do these two trained models differ?"""
    per_class: dict[str, Optional[float]]
    p_adjusted: Optional[float] = None
    """The p of the test behind the verdict (Welch, else McNemar), adjusted for the call's comparisons."""
    ci_adjusted: Optional[tuple[float, float]] = None
    """Welch's interval at the level that agrees with the adjusted test (stats.interval_levels): it excludes 0
    exactly when the verdict finds a difference."""
    ci_withheld: bool = False
    """No adjusted interval is shown because, at a p on the 5 % threshold itself, floating-point rounding made it
    disagree with the verdict (the tables say so)."""
    verdict: str = ""

    @property
    def p(self) -> Optional[float]:
        return self.welch.p if self.welch else self.paired.p if self.paired else None


@dataclass
class Report:
    metric: Metric
    keys: list[str]
    groups: list[GroupResult]
    baseline: int
    differences: list[Difference]
    adjust: str = "holm"
    missing: list[dict[str, str]] = field(default_factory=list)
    merged: list[repeats.Merged] = field(default_factory=list)
    """Copies of a measurement another run of their group holds: counted once (cifarlab.analysis.repeats)."""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _mean_per_class(runs: Sequence[Run]) -> dict[str, Optional[float]]:
    names = list(dict.fromkeys(name for run in runs for name in run.per_class()))
    means: dict[str, Optional[float]] = {}
    for name in names:
        present = [v for v in (run.per_class().get(name) for run in runs) if v is not None]
        means[name] = stats.mean(present) if present else None
    return means


def spread_of(runs: Sequence[Run], summary: stats.Summary, metric: Metric) -> Optional[Spread]:
    counts = {metric.images(run) for run in runs}
    images = counts.pop() if len(counts) == 1 else None
    if summary.std is None or summary.mean is None or images is None:
        return None
    test_set = stats.test_set_std(summary.mean, images)
    total = summary.std ** 2
    return Spread(images, test_set, math.sqrt(max(0.0, total - test_set ** 2)),
                  min(1.0, test_set ** 2 / total) if total > 0 else 1.0)


def floor_of(runs: Sequence[Run], values: Sequence[float], metric: Metric) -> Optional[float]:
    """The group's floor (GroupResult.floor): the sampling error of its mean on its runs' fewest evaluated images (the
    test set's, or the validation split's for a validation metric: Metric.images)."""
    images = [count for count in (metric.images(run) for run in runs) if count]
    return stats.sampling_floor(stats.mean(values), min(images)) if metric.proportion and images else None


def summarize_group(group: Group, metric: Metric) -> GroupResult:
    read = [(run, metric.read(run)) for run in group.runs]
    counted = [run for run, value in read if value is not None]
    values = [value for _, value in read if value is not None]
    floor = floor_of(counted, values, metric)
    summary = stats.summarize(values, floor or 0.0)
    return GroupResult(group, counted, values, summary, _mean_per_class(counted),
                       spread_of(counted, summary, metric) if metric.proportion else None, floor)


class PairedTests:
    """McNemar between two single runs, on their per-image predictions."""

    def run(self, base: GroupResult, other: GroupResult, notes: list[str]) -> Optional[stats.McNemar]:
        """McNemar when each side has exactly one run, else None; None (with a note saying why) when a run has
        no predictions. Runs on different test sets are an error: pairing them is meaningless."""
        if len(base.counted) != 1 or len(other.counted) != 1:
            return None
        runs = base.counted + other.counted
        lacking = [str(run.path) for run in runs if not run.has_predictions()]
        if lacking:
            notes.append(f"McNemar {other.group.label} vs {base.group.label} skipped: {len(lacking)} run(s) "
                         f"without predictions.safetensors: {', '.join(lacking)}")
            return None
        (run_a, first), (run_b, second) = [(run, run.predictions()) for run in runs]
        if not first.test_set or not second.test_set:
            undigested = [str(r.path) for r, p in ((run_a, first), (run_b, second)) if not p.test_set]
            notes.append(f"McNemar {other.group.label} vs {base.group.label} skipped: no test_set digest in "
                         f"the predictions of {', '.join(undigested)}")
            return None
        if second.test_set != first.test_set or not _same_labels(second, first):
            raise UsageError(
                f"{typed(run_b.path)} and {typed(run_a.path)} were evaluated on different test sets "
                f"({second.test_set} vs {first.test_set}): a paired test needs the same test images; "
                "compare the runs of each test set in a call of their own")
        a, b = first.correct(), second.correct()
        return stats.mcnemar(int((a & ~b).sum()), int((~a & b).sum()), int(a.numel()))


def _same_labels(a: Predictions, b: Predictions) -> bool:
    return a.labels.shape == b.labels.shape and bool((a.labels == b.labels).all())


def verdict(d: Difference, higher_is_better: bool, adjust: str, tests: int = 1) -> str:
    """The line that says what the comparison shows: about settings only from Welch's t on 2+ runs a side;
    with one run each only whether the two trained models differ on this test set (McNemar). ``tests``: how
    many comparisons of the call have a test (their p-values are adjusted together when more than one)."""
    label, base = d.group.group.label, d.baseline.group.label
    adjusted = "" if adjust == "none" or tests < 2 else f", {adjust}-adjusted"
    sizes = (len(d.baseline.values), len(d.group.values))
    if d.welch is None and min(sizes) >= 2:
        return f"{label} vs {base}: runs repeat exactly: no spread to judge a difference by (no test)"
    if d.welch is not None and d.p_adjusted is not None:
        if d.p_adjusted >= SIGNIFICANCE:
            return f"{label} vs {base}: no significant difference (Welch t on runs, p = {d.p_adjusted:.3g}{adjusted})"
        better = (d.welch.diff > 0) == higher_is_better
        return (f"{label} {'better' if better else 'worse'} than {base} at the 5 % level "
                f"(Welch t on runs, p = {d.p_adjusted:.3g}{adjusted})")
    if 0 in sizes:
        return f"{label} vs {base}: no runs with a value: no test"
    why = "no verdict about the settings: that needs 2 or more runs (seeds) in each group"
    if d.paired is not None and d.p_adjusted is not None:
        differ = "differ" if d.p_adjusted < SIGNIFICANCE else "do not differ significantly"
        return (f"{label} vs {base}: one run each: these two trained models {differ} on this test set "
                f"(McNemar p = {d.p_adjusted:.3g}{adjusted}); {why}")
    return f"{label} vs {base}: {' and '.join(str(n) for n in sizes)} run(s): {why}"


def _minus(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a - b if a is not None and b is not None else None


def welch(base: GroupResult, other: GroupResult, level: float = stats.LEVEL) -> Optional[stats.Welch]:
    """Welch's t of ``other - base`` on the runs, each side's spread floored (GroupResult.floor)."""
    return stats.welch(base.values, other.values, level, (base.floor or 0.0, other.floor or 0.0))


def difference(other: GroupResult, base: GroupResult, paired: Optional[stats.McNemar]) -> Difference:
    """The difference without its adjustment and verdict (see :func:`decide`)."""
    diff = _minus(other.summary.mean, base.summary.mean)
    per_class = {name: _minus(other.per_class.get(name), value) for name, value in base.per_class.items()}
    return Difference(other, base, diff, welch(base, other), paired, per_class)


def decide(differences: Sequence[Difference], metric: Metric, adjust: str) -> None:
    """Adjusts the p-values of the comparisons that have a test, for their number, and writes each verdict. Each
    Welch comparison's adjusted interval excludes 0 exactly when its adjusted p is significant (the levels of
    stats.interval_levels); where rounding at a p on the threshold itself breaks that, none is shown."""
    tested = [d for d in differences if d.p is not None]
    ps = [float(d.p) for d in tested if d.p is not None]
    for d, p, level in zip(tested, stats.adjust(ps, adjust), stats.interval_levels(ps, adjust)):
        d.p_adjusted = p
        at_level = welch(d.baseline, d.group, level) if d.welch is not None else None
        if at_level is not None:
            low, high = at_level.ci95
            agrees = (low > 0 or high < 0) == (p < SIGNIFICANCE)
            d.ci_adjusted, d.ci_withheld = (at_level.ci95, False) if agrees else (None, True)
    for d in differences:
        d.verdict = verdict(d, metric.higher_is_better, adjust, len(tested))


def mixed_warnings(groups: Sequence[GroupResult], keys: Sequence[str]) -> list[str]:
    """Config keys that differ inside a group that --by chose (runs compared as repeats that are not)."""
    lines = []
    for result in groups:
        inside = [key for key in differing_keys(result.group.runs) if key not in keys]
        if inside:
            lines.append(f"group {result.group.label} mixes runs that differ in {', '.join(inside)}")
    return lines


def compare(runs: Sequence[Run], by: Sequence[str], metric: Metric, baseline: Optional[str],
            adjust: str = "holm") -> Report:
    finished = [run for run in runs if run.finished]
    unfinished = [run for run in runs if not run.finished]
    if not finished:
        raise UsageError(f"none of the {len(runs)} run(s) has finished (no model.safetensors): "
                         f"{', '.join(str(run.path) for run in runs)}")
    check_keys(finished, by)
    keys = list(by) if by else differing_keys(finished)
    groups = group_runs(finished, keys)
    merged: list[repeats.Merged] = []
    for group in groups:  # within a group: runs that --by keeps apart stay apart
        group.runs, copies = repeats.merge(group.runs)
        merged += copies
    base = pick_baseline(groups, baseline)
    results = [summarize_group(group, metric) for group in groups]
    report = Report(metric, keys, results, base, [], adjust, merged=merged)
    report.missing = [{"run": str(run.path), "reason": "not finished"} for run in unfinished]
    report.missing += [{"run": str(run.path), "reason": metric.absent}
                       for result in results for run in result.group.runs if run not in result.counted]
    if unfinished:
        report.notes.append(f"{len(unfinished)} of {len(runs)} runs not finished: "
                            f"{', '.join(str(run.path) for run in unfinished)}")
    absent = len(report.missing) - len(unfinished)
    if absent:
        report.notes.append(f"{absent} finished run(s) left out: {metric.absent}")
    report.notes += _measurement_notes(report)
    if metric.name != "final_acc" and len(groups) > 1:
        report.notes.append("McNemar compares two final models' predictions: only with --metric final_acc")
    tests = PairedTests()
    for i, result in enumerate(results):
        if i != base:
            paired = tests.run(results[base], result, report.notes) if metric.name == "final_acc" else None
            report.differences.append(difference(result, results[base], paired))
    decide(report.differences, metric, adjust)
    report.warnings = (environment_warnings([(g.group.label, g.counted) for g in results], keys)
                       + (mixed_warnings(results, keys) if by else []))
    return report


def _measurement_notes(report: Report) -> list[str]:
    """One line naming the copies counted once, one naming the groups whose runs spread less than their floor."""
    lines = []
    if report.merged:
        lines.append(f"counted once: {len(report.merged)} run(s) repeat a measurement that another run of their "
                     f"group holds: " + "; ".join(f"{m.run} as {m.kept} ({m.reason})" for m in report.merged))
    metric, unit = report.metric, " points" if report.metric.unit == "%" else ""
    low = [f"{g.group.label} ({metric.scale * g.summary.std:.2f} < {metric.scale * g.floor:.2f}{unit})"
           for g in report.groups if g.floor is not None and g.summary.std is not None and g.summary.std < g.floor]
    if low:
        lines.append(f"runs spread less than {metric.sample} sampling alone makes an accuracy vary, sqrt(p (1 - p) / "
                     "images); their intervals and tests use that instead: " + "; ".join(low))
    return lines
