"""Statistics for comparing runs: means with Student-t intervals, Welch's difference of means, the exact
McNemar test and a paired bootstrap over test images and seeds.

Pure Python (the standard library's ``math``) except :func:`paired_bootstrap`, which imports torch when it
is called: the comparison CLI answers its usage errors without loading torch. Every interval is two-sided at
95 %; a group of fewer than 2 runs has no spread and so no interval (None here, null in JSON).

Student's t distribution is computed here rather than taken from SciPy (not a dependency): its CDF is the
regularized incomplete beta function, evaluated by its continued fraction, and its quantile is found by
bisection on the CDF (accurate to about 1e-12, see tests/test_stats.py for the checks against tables).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

LEVEL = 0.95
"""Coverage of every interval; tests are two-sided at 1 - LEVEL = 5 %."""


# --- Student's t distribution -------------------------------------------------------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, evaluated by the modified Lentz method.
    Converges quickly for x < (a + 1) / (a + b + 2); callers use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)
    otherwise."""
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 10_000):
        # Each step folds in the even term d_{2m} and then the odd term d_{2m+1} of the fraction.
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            return result
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    # x^a (1-x)^b / B(a, b), in logs: the powers underflow for large degrees of freedom.
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (not necessarily an integer)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    # P(|T| > |t|) = I_{df/(df+t^2)}(df/2, 1/2); each tail holds half of it.
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t such that P(T <= t) = p, for 0 < p < 1: bisection on :func:`t_cdf` (monotone, so it cannot
    miss), to about 1e-12 relative."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:  # the upper tail of t(df=1) is heavy: double until it brackets p
        low, high = high, 2.0 * high
    while high - low > 1e-13 * max(1.0, high):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|)."""
    return min(1.0, 2.0 * t_cdf(-abs(t), df))


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
    """mean -+ t(0.975, n-1) * std / sqrt(n); None when n < 2."""


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


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None)
    centre = mean(values)
    if n < 2:
        return Summary(n, centre, None, None)
    spread = sample_std(values)
    half = t_quantile(0.5 + LEVEL / 2, n - 1) * spread / math.sqrt(n)
    return Summary(n, centre, spread, (centre - half, centre + half))


# --- two groups: Welch ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Welch:
    """Difference of two means, ``b - a``, with unequal variances (Welch's t)."""

    diff: float
    se: float
    """sqrt(s_a^2 / n_a + s_b^2 / n_b)."""
    df: float
    """Welch-Satterthwaite degrees of freedom."""
    ci95: tuple[float, float]
    p: float
    """Two-sided p-value of the hypothesis that the two means are equal."""


def welch(a: Sequence[float], b: Sequence[float]) -> Optional[Welch]:
    """Welch's difference of means ``mean(b) - mean(a)``; None when either side has fewer than 2 values."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = mean(b) - mean(a)
    va, vb = sample_std(a) ** 2 / len(a), sample_std(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        # Every run of both groups scored the same: no spread to scale by. The difference is what it is.
        return Welch(diff, 0.0, float(len(a) + len(b) - 2), (diff, diff), 1.0 if diff == 0 else 0.0)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(0.5 + LEVEL / 2, df) * se
    return Welch(diff, se, df, (diff - half, diff + half), t_two_sided_p(diff / se, df))


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
    low = min(k, n - k)
    term, total = 1, 1  # C(n, 0); exact integers: no rounding however large n is
    for i in range(1, low + 1):
        term = term * (n - i + 1) // i
        total += term
    return min(1.0, 2 * total / 2 ** n)


def mcnemar(only_a: int, only_b: int, images: int) -> McNemar:
    """McNemar's exact test from the discordant counts, with a Wald interval of the accuracy difference:
    diff -+ 1.96 * sqrt(only_a + only_b - (only_b - only_a)^2 / images) / images."""
    diff = (only_b - only_a) / images
    z = _normal_quantile(0.5 + LEVEL / 2)
    half = z * math.sqrt(max(only_a + only_b - (only_b - only_a) ** 2 / images, 0.0)) / images
    return McNemar(only_a, only_b, images, diff, (diff - half, diff + half),
                   binomial_two_sided_p(only_b, only_a + only_b))


def _normal_quantile(p: float) -> float:
    """The standard normal quantile: t with infinite degrees of freedom, by bisection on erf."""
    low, high = -40.0, 40.0
    while high - low > 1e-14:
        middle = 0.5 * (low + high)
        if 0.5 * math.erfc(-middle / math.sqrt(2.0)) < p:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


# --- groups of runs on the same test images: paired bootstrap -------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """Paired bootstrap of the difference in mean accuracy, group B minus group A."""

    diff: float
    """The observed difference: mean accuracy of B's runs minus mean accuracy of A's runs."""
    ci95: tuple[float, float]
    """Percentile interval: the 2.5 % and 97.5 % points of the resampled differences."""
    p: float
    """Two-sided p-value estimate: 2 * min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (resamples + 1), at most 1."""
    resamples: int
    seed: int
    images: int


def paired_bootstrap(correct_a: torch.Tensor, correct_b: torch.Tensor, resamples: int = 10_000,
                     seed: int = 0, chunk: int = 200) -> Bootstrap:
    """``correct_a`` [runs_a, N] and ``correct_b`` [runs_b, N] (bool: run r got test image n right), on the
    same N images in the same order. Each resample draws N images with replacement (the same images for both
    groups: that is the pairing) and, independently in each group, as many runs as it has with replacement
    (so seed-to-seed variation counts too), and takes the difference of the groups' mean accuracies on those
    images. A fixed ``seed`` makes the numbers reproducible."""
    import torch

    a, b = correct_a.to(torch.float64), correct_b.to(torch.float64)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"need [runs, images] tensors over the same images, got {tuple(a.shape)} and {tuple(b.shape)}")
    images = a.shape[1]
    diff = float(b.mean() - a.mean())  # equal images per run: the mean of run accuracies
    generator = torch.Generator().manual_seed(seed)
    draws: list[torch.Tensor] = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        # Run weights: how often each run was drawn, over the group's size (each row sums to 1).
        weight_a = _draw_counts(a.shape[0], size, generator) / a.shape[0]
        weight_b = _draw_counts(b.shape[0], size, generator) / b.shape[0]
        per_image = weight_b @ b - weight_a @ a  # [size, N]: each resample's difference on each image
        picked = torch.randint(images, (size, images), generator=generator)
        draws.append(per_image.gather(1, picked).mean(dim=1))
    resampled = torch.cat(draws)
    low, high = torch.quantile(resampled, torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=torch.float64))
    # Tolerance: sums of float weights can leave a difference of exactly 0 at -1e-17.
    below, above = int((resampled <= 1e-12).sum()), int((resampled >= -1e-12).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
    return Bootstrap(diff, (float(low), float(high)), p, resamples, seed, images)


def _draw_counts(runs: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[size, runs]: for each of ``size`` resamples, how many times each run was drawn in ``runs`` draws."""
    import torch

    picked = torch.randint(runs, (size, runs), generator=generator)
    counts = torch.zeros(size, runs, dtype=torch.float64)
    return counts.scatter_add_(1, picked, torch.ones(size, runs, dtype=torch.float64))
