"""Statistics for comparing runs: means with Student-t intervals, Welch's difference of means (the test behind
every verdict about settings: the runs are its units), the exact McNemar test of two single trained models,
Holm's and Benjamini-Hochberg's adjustments for several comparisons with intervals that agree with them, how much
of a group's spread test-set sampling explains (and the floor it puts under an accuracy's spread), and the seeds a
difference needs (power of the t test).

The distributions come from SciPy, imported inside the functions that need them: the comparison CLI's --help
and usage errors load neither SciPy nor torch. Every interval is two-sided at 95 % unless a level is given; a
group of fewer than 2 runs has no spread and so no interval (None here, null in JSON), nor has a group whose runs
repeat one value exactly where no floor applies (an accuracy's floor: :func:`sampling_floor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

LEVEL = 0.95
"""Coverage of every interval; tests are two-sided at 1 - LEVEL = 5 %."""
ALPHA = round(1 - LEVEL, 12)
"""A test is significant when its (adjusted) p < ALPHA = 0.05: rounded, as 1 - 0.95 is 0.05000000000000004 in floats,
so that a p of exactly 0.05 is not significant, here and in every verdict."""


# --- distributions (SciPy, imported when first needed) --------------------------------------------------


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (not necessarily an integer)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    from scipy import special  # what scipy.stats.t computes with, without its checks per call (40 -> 1 us)

    return float(special.stdtr(df, t))


def t_quantile(p: float, df: float) -> float:
    """The t such that P(T <= t) = p, for 0 < p < 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    from scipy import special

    return float(special.stdtrit(df, p))


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|)."""
    from scipy import special

    return min(1.0, float(2.0 * special.stdtr(df, -abs(t))))


def normal_quantile(p: float) -> float:
    """The standard normal quantile."""
    from scipy import stats as scipy_stats

    return float(scipy_stats.norm.ppf(p))


# --- one group ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One group's values: n, mean, sample standard deviation and the 95 % Student-t interval of the mean."""

    n: int
    mean: Optional[float]
    """None when n = 0."""
    std: Optional[float]
    """Sample standard deviation (divisor n - 1); None when n < 2."""
    ci95: Optional[tuple[float, float]]
    """mean -+ t(0.975, n-1) * max(std, floor) / sqrt(n); None when n < 2 or when the values do not spread at all
    (and no floor is given): no spread, no interval."""


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("the mean of no values")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float:
    """sqrt(sum (x - mean)^2 / (n - 1)): the unbiased variance's root, as the t interval needs."""
    if len(values) < 2:
        raise ValueError("a sample standard deviation needs at least 2 values")
    centre = mean(values)
    return math.sqrt(math.fsum((x - centre) ** 2 for x in values) / (len(values) - 1))


def summarize(values: Sequence[float], floor: float = 0.0) -> Summary:
    """``floor``: the smallest standard deviation one value can have (an accuracy's, :func:`sampling_floor`); the
    interval never rests on a smaller spread. ``std`` is the values' own."""
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None)
    centre = mean(values)
    if n < 2:
        return Summary(n, centre, None, None)
    spread = sample_std(values)
    if max(spread, floor) == 0.0:
        return Summary(n, centre, spread, None)
    half = t_quantile(0.5 + LEVEL / 2, n - 1) * max(spread, floor) / math.sqrt(n)
    return Summary(n, centre, spread, (centre - half, centre + half))


# --- two groups: Welch ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Welch:
    """Difference of two means, ``b - a``, with unequal variances (Welch's t)."""

    diff: float
    se: float
    """sqrt(s_a^2 / n_a + s_b^2 / n_b), each s at least its side's floor."""
    df: float
    """Welch-Satterthwaite degrees of freedom."""
    ci95: tuple[float, float]
    p: float
    """Two-sided p-value of the hypothesis that the two means are equal."""


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL,
          floor: tuple[float, float] = (0.0, 0.0)) -> Optional[Welch]:
    """Welch's difference of means ``mean(b) - mean(a)`` with its interval at ``level``. ``floor``: the smallest
    standard deviation a value of ``a`` and of ``b`` can have (an accuracy's test-set sampling error,
    :func:`sampling_floor`): a side whose values spread less is taken to spread that much, since its runs' scores
    are themselves samples (two runs of 10 % on 100 images are not a measurement without error). None when either
    side has fewer than 2 values, and when neither side spreads at all with no floor to use: no spread to judge a
    difference by, so no test (never p = 0)."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff, se, df, half = (float(x) for x in welch_many(a, b, level, *floor))
    if se == 0.0:
        return None
    return Welch(diff, se, df, (diff - half, diff + half), t_two_sided_p(diff / se, df))


def welch_many(a: Any, b: Any, level: float = LEVEL, floor_a: Any = 0.0, floor_b: Any = 0.0) -> tuple[Any, ...]:
    """Welch along the last axis, every leading axis an independent comparison (the sequential rule's simulations
    pass thousands at once; :func:`welch` one): the difference of means ``b - a``, its standard error, the
    Welch-Satterthwaite degrees of freedom and the half-width of its interval at ``level`` (infinite where neither
    side spreads: nothing is decided). ``floor_a``, ``floor_b``: each side's smallest standard deviation, one number
    or one per comparison. Each side needs at least 2 values."""
    import numpy as np
    from scipy import special  # Student's t without scipy.stats' checks per call (:func:`t_quantile`)

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va = np.maximum(a.std(axis=-1, ddof=1), floor_a) ** 2 / a.shape[-1]
    vb = np.maximum(b.std(axis=-1, ddof=1), floor_b) ** 2 / b.shape[-1]
    se = np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        # The floored variances count as estimates with n - 1 degrees of freedom: at most n_a + n_b - 2, conservative.
        # Written with each side's share of the variance: squared variances underflow (0 / 0) below spreads of 1e-77.
        share_a, share_b = va / (va + vb), vb / (va + vb)
        df = 1.0 / (share_a ** 2 / (a.shape[-1] - 1) + share_b ** 2 / (b.shape[-1] - 1))
        half = np.where(se > 0, special.stdtrit(np.where(se > 0, df, 1.0), 0.5 + level / 2) * se, np.inf)
    return b.mean(axis=-1) - a.mean(axis=-1), se, df, half


# --- two single runs on the same test images: McNemar ---------------------------------------------------


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two classifiers on the same images: only the images where they disagree count."""

    only_a: int
    """Images that run A classified correctly and run B did not."""
    only_b: int
    """Images that run B classified correctly and run A did not."""
    images: int
    diff: float
    """Accuracy of B minus accuracy of A: (only_b - only_a) / images."""
    ci95: tuple[float, float]
    """Wald interval of the paired difference of proportions."""
    p: float
    """Exact two-sided p-value: 2 * P(X <= min(only_a, only_b)) for X ~ Binomial(only_a + only_b, 1/2)."""


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips: 2 * P(X <= min(k, n - k)), at most 1."""
    if n == 0:
        return 1.0
    from scipy import stats as scipy_stats

    return min(1.0, float(2.0 * scipy_stats.binom.cdf(min(k, n - k), n, 0.5)))


def mcnemar(only_a: int, only_b: int, images: int) -> McNemar:
    """McNemar's exact test from the discordant counts, with a Wald interval of the accuracy difference:
    diff -+ 1.96 * sqrt(only_a + only_b - (only_b - only_a)^2 / images) / images."""
    diff = (only_b - only_a) / images
    z = normal_quantile(0.5 + LEVEL / 2)
    half = z * math.sqrt(max(only_a + only_b - (only_b - only_a) ** 2 / images, 0.0)) / images
    return McNemar(only_a, only_b, images, diff, (diff - half, diff + half),
                   binomial_two_sided_p(only_b, only_a + only_b))


# --- several comparisons in one call --------------------------------------------------------------------

ADJUSTMENTS = ("holm", "bh", "none")


def adjust(ps: Sequence[float], method: str) -> list[float]:
    """Adjusted p-values, in the order given. holm: Holm's step-down (family-wise error <= 5 % whatever the
    dependence), max over the i smallest of (k - rank + 1) * p; bh: Benjamini-Hochberg (false discovery
    rate), min over the larger of k * p / rank; none: the p-values as they are. Each at most 1."""
    if method not in ADJUSTMENTS:
        raise ValueError(f"adjustment {method!r}: one of {', '.join(ADJUSTMENTS)}")
    k, order = len(ps), sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted = list(ps)
    if method == "holm":
        running = 0.0
        for rank, i in enumerate(order, start=1):
            running = max(running, min(1.0, (k - rank + 1) * ps[i]))
            adjusted[i] = running
    elif method == "bh":
        running = 1.0
        for rank, i in reversed(list(enumerate(order, start=1))):
            running = min(running, ps[i] * (k / rank))  # k / rank >= 1 first: never an ulp below p (k p / k can be)
            adjusted[i] = running
    return adjusted


def interval_levels(ps: Sequence[float], method: str, alpha: float = ALPHA) -> list[float]:
    """The coverage of each comparison's interval that agrees with its adjusted test (found significant, adjusted
    p < alpha, exactly when the interval excludes 0), for p-values of tests that invert to intervals (a test at
    level 1 - L rejects exactly when the level-L interval excludes 0).

    holm: the p-values sorted, p(1) <= ... <= p(k); Holm's procedure rejects at step r while
    p(r) < alpha / (k - r + 1) and stops at the first step f where it does not. A step r < f keeps its own level
    1 - alpha / (k - r + 1): its p is below that step's alpha, so its interval excludes 0. Step f and every later
    step get step f's level 1 - alpha / (k - f + 1): p(j) >= p(f) >= alpha / (k - f + 1), so their intervals include
    0. (Each step's own level, after the stop, would let a later step's interval exclude 0 beside "no significant
    difference".) bh: Benjamini-Hochberg rejects the R smallest, R the largest rank r with k p(r) / r < alpha; the
    false-coverage-rate level 1 - alpha R / k (Benjamini & Yekutieli 2005; R = 1 when none are found): a rejected
    p(r) <= p(R) < alpha R / k excludes 0, a kept one p(j) >= alpha j / k > alpha R / k does not. none: 1 - alpha.
    Ties in p fall on the same side of every threshold. At a p exactly on a threshold the agreement is exact
    arithmetic's; floats can miss it by an ulp, which the caller checks (cifarlab.analysis.comparison.decide)."""
    k = len(ps)
    found = [p < alpha for p in adjust(ps, method)]
    if method == "holm":
        levels = [0.0] * k
        stop: Optional[int] = None  # the rank of Holm's first failing step
        for rank, i in enumerate(sorted(range(k), key=lambda i: ps[i]), start=1):
            if stop is None and not found[i]:
                stop = rank
            levels[i] = 1 - alpha / (k - (stop or rank) + 1)
        return levels
    if method == "bh":
        return [1 - alpha * max(sum(found), 1) / k] * k if k else []  # no tests: no levels (not a division by 0)
    return [1 - alpha] * k


# --- where a group's spread comes from ------------------------------------------------------------------


def test_set_std(accuracy: float, images: int) -> float:
    """The run-to-run standard deviation of an accuracy that test-set sampling alone gives: each of ``images``
    test images right or wrong as a coin with the run's accuracy, sqrt(p (1 - p) / n) (Jordan, "Calibrated
    Chaos", ICLR 2024, finds seed-to-seed spread of trained networks close to this)."""
    return float(_test_set_stds(accuracy, images))


def sampling_floor(accuracy: float, images: int) -> float:
    """The smallest run-to-run standard deviation that an accuracy measured on ``images`` test images can be judged
    by: its test-set sampling error :func:`test_set_std`, with the accuracy kept half an image away from 0 and 1 (a
    run that got every image right still measured its accuracy on a sample), so always above 0. A verdict never
    rests on a smaller spread: runs that repeat one score exactly do not measure it without error."""
    return float(sampling_floors(accuracy, images))


def sampling_floors(accuracies: Any, images: Any) -> Any:
    """:func:`sampling_floor` elementwise, on numpy arrays (of accuracies, and of image counts or one count): the
    simulations judge millions of groups at once."""
    import numpy as np

    edge = 0.5 / np.asarray(images, dtype=float)
    return _test_set_stds(np.clip(accuracies, edge, 1 - edge), images)


def _test_set_stds(accuracies: Any, images: Any) -> Any:
    import numpy as np

    return np.sqrt(np.maximum(np.multiply(accuracies, np.subtract(1, accuracies)), 0.0) / np.asarray(images))


# --- how many seeds -------------------------------------------------------------------------------------

POWER = 0.8


def _spread(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} {value}: a plan needs a spread above 0 (runs that repeat exactly measure none)")


def t_test_power(delta: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """The chance that a two-sided t test at ``alpha`` finds a true difference ``delta`` whose estimate has
    standard error ``se`` > 0 (noncentral t with ``df`` degrees of freedom)."""
    from scipy import stats as scipy_stats

    _spread("standard error", se)
    shift = abs(delta) / se
    if df > 1e4:  # SciPy's noncentral t gives NaN at huge df; there it is the normal
        critical = float(scipy_stats.norm.ppf(1 - alpha / 2))
        return float(scipy_stats.norm.sf(critical - shift) + scipy_stats.norm.cdf(-critical - shift))
    critical = float(scipy_stats.t.ppf(1 - alpha / 2, df))
    # Far in the tails SciPy's noncentral t can give NaN where the probability is 0 (or 1).
    upper, lower = float(scipy_stats.nct.sf(critical, df, shift)), float(scipy_stats.nct.cdf(-critical, df, shift))
    upper = upper if not math.isnan(upper) else float(shift > critical)
    return upper + (lower if not math.isnan(lower) else 0.0)


def seeds_needed(delta: float, std: float, alpha: float = ALPHA, power: float = POWER,
                 most: int = 10_000) -> Optional[int]:
    """Runs per group (equal groups, both with spread ``std`` > 0) for Welch's t at ``alpha`` to find ``delta``
    with ``power``: the smallest n >= 2 (None when more than ``most`` are needed)."""
    _spread("standard deviation", std)
    low, high = 2, 2
    def enough(n: int) -> bool:
        return t_test_power(delta, std * math.sqrt(2 / n), 2 * n - 2, alpha) >= power
    while not enough(high):
        if high >= most:
            return None
        low, high = high, min(2 * high, most)
    while high - low > 1:  # power grows with n: bisection
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high if not enough(low) else low


def detectable(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference that a t test with standard error ``se`` > 0 and ``df`` degrees of freedom
    finds with ``power``."""
    _spread("standard error", se)
    from scipy.optimize import brentq

    high = se
    while t_test_power(high, se, df, alpha) < power:
        high *= 2
    return float(brentq(lambda d: t_test_power(d, se, df, alpha) - power, 0.0, high))
