"""Properties of the statistics behind compare (Hypothesis; profiles in conftest.py), on random groups of 1 to 10
runs with any spread, zero included, ties, and accuracies of exactly 0 and 1: every interval holds its estimate,
adjusted p-values are monotone and never below the raw ones, every verdict agrees with its interval, Welch's test is
SciPy's, counting copies once is idempotent, and the seeds a plan asks for never grow with the difference."""

from __future__ import annotations

import json
import math
import random
import tempfile
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from cifarlab.analysis import comparison, planning, repeats, stats
from cifarlab.analysis.metric import METRICS
from cifarlab.analysis.results import Run
from cifarlab.run.rundir import RunDir

pytestmark = pytest.mark.unit

# Accuracies with ties and the ends: a few values recur often, and 0 and 1 are as likely as any.
accuracies = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.9, 0.1]), st.floats(0.0, 1.0))
groups = st.lists(accuracies, min_size=1, max_size=10)
# Any metric: losses, seconds, images per second; spreads from none to large.
scaled = st.one_of(groups, st.lists(st.one_of(st.sampled_from([0.0, 3.0]), st.floats(-1e3, 1e3)), min_size=1,
                                    max_size=10))
floors = st.one_of(st.just(0.0), st.floats(1e-6, 0.5))  # an accuracy's: sqrt(p (1 - p) / images), p >= 0.5 / images


def holds(interval: Optional[tuple[float, float]], value: float) -> bool:
    return interval is None or interval[0] <= value <= interval[1]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@given(scaled, floors)
@example([1.0, 1.0], 0.0)
@example([0.0, 0.0, 0.0], 0.01)
def test_a_groups_interval_holds_its_mean(values: list[float], floor: float) -> None:
    summary = stats.summarize(values, floor)
    assert summary.mean is not None and holds(summary.ci95, summary.mean)
    spread = len(values) >= 2 and max(stats.sample_std(values), floor) > 0
    assert (summary.ci95 is not None) == spread


def tiny(values: list[float]) -> bool:
    """Whether the values spread so little (below 1e-150, though not at all) that their variance is subnormal: digits
    are lost there, in SciPy's variance as in ours."""
    return len(values) >= 2 and 0 < stats.sample_std(values) < 1e-150


@given(scaled, scaled, floors, floors)
@example([0.0, 0.0, 1e-90], [0.0, 0.1], 0.0, 0.0)  # found: Welch's degrees of freedom were 0 / 0 (NaN), p 1
def test_welchs_interval_holds_its_difference_and_agrees_with_its_p(a: list[float], b: list[float], floor_a: float,
                                                                   floor_b: float) -> None:
    assume(not tiny(a) and not tiny(b))
    found = stats.welch(a, b, floor=(floor_a, floor_b))
    if found is None:
        assert min(len(a), len(b)) < 2 or max(stats.sample_std(a), floor_a, stats.sample_std(b), floor_b) == 0
        return
    low, high = found.ci95
    assert low <= found.diff <= high and 0.0 <= found.p <= 1.0 and found.df >= 1
    if abs(found.p - stats.ALPHA) > 1e-9:  # at the threshold itself floats may fall either way
        assert (found.p < stats.ALPHA) == (low > 0 or high < 0)


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # SciPy's, on nearly equal values
@given(scaled.filter(lambda v: len(v) >= 2), scaled.filter(lambda v: len(v) >= 2))
@example([0.5, 0.5], [0.5, 0.6])  # one side without spread
@example([0.0, 0.0, 1.96e-90], [0.0, 0.0, 1.96e-90])  # found: NaN interval and p = 1 (SciPy: p = 1, interval 1e-89)
@example([0.0, 0.0], [0.0, 1e-100])  # found: p = 1 (SciPy: 0.5)
def test_welch_is_scipys_welch_where_no_floor_applies(a: list[float], b: list[float]) -> None:
    assume(not tiny(a) and not tiny(b))
    ours = stats.welch(a, b)
    theirs = scipy_stats.ttest_ind(b, a, equal_var=False)
    if ours is None:
        assert stats.sample_std(a) == stats.sample_std(b) == 0
        return
    assert abs(ours.p - theirs.pvalue) <= 1e-9
    if hasattr(theirs, "confidence_interval"):  # SciPy >= 1.11 (the lowest supported, 1.9.2, has none)
        interval = theirs.confidence_interval(stats.LEVEL)
        assert close(ours.ci95[0], interval.low) and close(ours.ci95[1], interval.high)


p_values = st.lists(st.one_of(st.sampled_from([0.0, 1.0, stats.ALPHA, 0.01]), st.floats(0.0, 1.0)), max_size=12)


@given(p_values, st.sampled_from(stats.ADJUSTMENTS))
@example([stats.ALPHA, stats.ALPHA], "holm")
@example([0.0, 0.0, 0.8305079667506365], "bh")  # found: 3 p / 3 rounded an ulp below p
@example([], "bh")  # found: a division by zero (compare --adjust bh with no test among its comparisons)
def test_adjusted_p_values_are_monotone_at_least_the_raw_ones_and_agree_with_their_intervals(
        ps: list[float], method: str) -> None:
    adjusted = stats.adjust(ps, method)
    levels = stats.interval_levels(ps, method)
    for p, q, level in zip(ps, adjusted, levels):
        assert p <= q <= 1.0 and (q == p or method != "none")
        assert all(q <= other for raw, other in zip(ps, adjusted) if raw >= p)  # ties adjust alike
        # The level-L interval excludes 0 exactly when p < 1 - L; the verdict exactly when the adjusted p < 5 %.
        if abs(p - (1 - level)) > 1e-12:
            assert (q < stats.ALPHA) == (p < 1 - level), (p, q, level)


def run(path: str, group: float, seed: int, accuracy: float, images: int) -> Run:
    return Run(Path(path), {"optim.lr": group, "train.seed": seed}, [{"test/acc": accuracy, "test/images": images}],
               None, finished=True)


@given(st.lists(groups, min_size=2, max_size=4), st.integers(1, 10_000), st.sampled_from(stats.ADJUSTMENTS))
@example([[0.5, 0.5], [0.5, 0.5]], 100, "holm")  # no spread: the floor decides
@example([[1.0, 1.0, 1.0], [0.0, 0.0]], 10, "bh")
@example([[0.0], [0.0]], 1, "bh")  # found: one run a group and no predictions: no test, and bh divided by 0
def test_every_verdict_agrees_with_its_interval(values: list[list[float]], images: int, adjust: str) -> None:
    runs = [run(f"/runs/{g}-{i}", 0.01 * (g + 1), i, value, images)
            for g, group in enumerate(values) for i, value in enumerate(group)]
    report = comparison.compare(runs, [], METRICS["final_acc"], None, adjust)
    for result in report.groups:
        assert result.summary.mean is not None and holds(result.summary.ci95, result.summary.mean)
    for d in report.differences:
        assert d.diff is not None
        if d.welch is None:
            assert d.p_adjusted is None and "better" not in d.verdict and "worse" not in d.verdict
            continue
        assert d.p_adjusted is not None and d.welch.p <= d.p_adjusted <= 1.0 and holds(d.welch.ci95, d.welch.diff)
        assert close(d.welch.diff, d.diff)
        significant = d.p_adjusted < comparison.SIGNIFICANCE
        if d.ci_adjusted is not None:
            low, high = d.ci_adjusted
            assert low <= d.welch.diff <= high and (low > 0 or high < 0) == significant
        else:
            assert d.ci_withheld
        better = (d.welch.diff > 0) == report.metric.higher_is_better
        expected = ("better" if better else "worse") if significant else "no significant difference"
        assert f" {expected} " in f" {d.verdict} ", d.verdict


# --- copies counted once ----------------------------------------------------------------------------------------


def digest_file(folder: Path, content: int) -> None:
    """A predictions.safetensors of its own bytes: what Run.predictions_digest reads (its header, then its data)."""
    header = json.dumps({"__metadata__": {"content": str(content)}}).encode()
    RunDir(folder).predictions.write_bytes(len(header).to_bytes(8, "little") + header + bytes([content]))


copies = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.one_of(st.none(), st.integers(0, 3))),
                  max_size=8)
"""Runs as (configuration, seed, predictions file's content or none): few of each, so that copies occur."""


@given(copies, st.randoms(use_true_random=False))
@example([(0, 0, None), (0, 0, 1), (1, 1, 1)], random.Random(0))  # a chain: the same config, then the same predictions
def test_counting_copies_once_is_idempotent_and_independent_of_order(specs: list[tuple[int, int, Optional[int]]],
                                                                    shuffler: random.Random) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        runs = []
        for index, (config, seed, content) in enumerate(specs):
            folder = Path(scratch) / f"run{index:02d}"
            folder.mkdir()
            if content is not None:
                digest_file(folder, content)
            runs.append(Run(folder, {"optim.lr": config, "train.seed": seed, "logging.every_n_steps": index},
                            [], None, finished=True))
        kept, merged = repeats.merge(runs)
        assert {str(r.path) for r in kept} | {str(m.run) for m in merged} == {str(r.path) for r in runs}
        assert len(kept) + len(merged) == len(runs)
        assert {m.kept for m in merged} <= {r.path for r in kept}
        assert repeats.merge(kept) == (kept, [])  # merging what was merged changes nothing
        shuffled = list(runs)
        shuffler.shuffle(shuffled)
        assert repeats.merge(shuffled) == (kept, merged)
        # No two runs that count share a configuration or a predictions file.
        identities = [repeats.identity(r) for r in kept]
        digests = [r.predictions_digest() for r in kept if r.predictions_digest() is not None]
        assert len(set(identities)) == len(identities) and len(set(digests)) == len(digests)


# --- planning ---------------------------------------------------------------------------------------------------


@given(st.floats(1e-4, 0.5), st.floats(1e-4, 0.5), st.floats(1e-3, 0.3))
@example(0.01, 0.02, 0.05)
def test_the_seeds_a_plan_asks_for_never_grow_with_the_difference(smaller: float, larger: float, std: float) -> None:
    smaller, larger = sorted((smaller, larger))
    needed = [stats.seeds_needed(delta, std) for delta in (smaller, larger)]
    fewer = [math.inf if n is None else n for n in needed]
    assert fewer[0] >= fewer[1] and all(n is None or n >= 2 for n in needed)


@given(st.lists(groups.filter(lambda v: len(v) >= 2), min_size=2, max_size=3), st.integers(10, 10_000),
       st.floats(1e-3, 0.2), st.floats(1e-3, 0.2))
def test_the_planner_asks_for_no_more_seeds_for_a_larger_difference(values: list[list[float]], images: int,
                                                                   first: float, second: float) -> None:
    runs = [run(f"/runs/{g}-{i}", 0.01 * (g + 1), i, value, images)
            for g, group in enumerate(values) for i, value in enumerate(group)]
    report = comparison.compare(runs, [], METRICS["final_acc"], None, "holm")
    smaller, larger = (planning.plan(report, delta) for delta in sorted((first, second)))
    assert smaller.std == larger.std > 0  # the floor keeps every accuracy's spread above 0
    assert (math.inf if smaller.seeds is None else smaller.seeds) >= (math.inf if larger.seeds is None
                                                                       else larger.seeds)
