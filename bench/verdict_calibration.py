"""How often compare's verdict claims a difference, old rule against new (issue 20) and the new with the test-set
floor (issue 27), on simulated runs with per-image predictions: no training, numpy and scipy only.

A simulated run classifies each of IMAGES test images correctly with probability ACCURACY + the setting's true
difference + its seed's luck (normal), independently: test-set sampling gives a run-to-run spread of
sqrt(p (1 - p) / IMAGES) = 0.48 points at 64 %, seed luck adds what it adds.

Old rule (before issue 20): one run each, McNemar's exact test; otherwise the paired bootstrap over images and runs
(here with RESAMPLES resamples instead of 10,000). New rule: Welch's t on the runs' accuracies, 2 or more runs a
side; one run on a side, no verdict about settings. With the floor (compare's rule since issue 27): each group's
spread taken at least as large as its test-set sampling error, cifarlab.analysis.stats.sampling_floor.

    python bench/verdict_calibration.py            # prints a Markdown table (a few minutes on 2 cores)
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

from cifarlab.analysis import stats

IMAGES, ACCURACY, RESAMPLES, DATASETS = 10_000, 0.64, 1000, 400
TEST_SET_STD = math.sqrt(ACCURACY * (1 - ACCURACY) / IMAGES)
SIZES = [(1, 1), (1, 3), (2, 2), (3, 3), (5, 5)]


def runs(rng: np.random.Generator, count: int, seed_std: float, shift: float) -> np.ndarray:
    """bool [count, IMAGES]: which images each run got right."""
    rates = ACCURACY + shift + rng.normal(0, seed_std, (count, 1))
    return rng.random((count, IMAGES)) < rates


def old_rule(rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == len(b) == 1:
        only_a, only_b = int((a[0] & ~b[0]).sum()), int((~a[0] & b[0]).sum())
        return min(1.0, float(2 * scipy_stats.binom.cdf(min(only_a, only_b), only_a + only_b, 0.5)))
    # Resampled images: only the pattern of right/wrong over all runs matters per image (at most 2^runs patterns),
    # so a resample of the images is a resample of pattern counts: Poisson counts (the Poisson bootstrap, the
    # large-N equivalent of drawing IMAGES images with replacement, and vectorised); then each run's accuracy.
    both = np.concatenate([a, b]).astype(np.int64)
    codes = (both.T << np.arange(len(both))).sum(1)
    unique, frequency = np.unique(codes, return_counts=True)
    patterns = ((unique[:, None] >> np.arange(len(both))) & 1).astype(np.float64)  # [patterns, runs]
    counts = rng.poisson(frequency, size=(RESAMPLES, len(frequency))).astype(np.float64)
    accuracy = counts @ patterns / counts.sum(1, keepdims=True)
    acc_a, acc_b = accuracy[:, :len(a)], accuracy[:, len(a):]
    # Resampled runs: each group's runs drawn with replacement, as many as it has.
    pick_a = rng.integers(len(a), size=(RESAMPLES, len(a)))
    pick_b = rng.integers(len(b), size=(RESAMPLES, len(b)))
    diffs = (np.take_along_axis(acc_b, pick_b, 1).mean(1) - np.take_along_axis(acc_a, pick_a, 1).mean(1))
    below, above = int((diffs <= 1e-12).sum()), int((diffs >= -1e-12).sum())
    return min(1.0, 2 * (min(below, above) + 1) / (RESAMPLES + 1))


def new_rule(a: np.ndarray, b: np.ndarray, floor: bool) -> float:
    if len(a) < 2 or len(b) < 2:
        return 1.0  # no verdict about settings
    if not floor:
        return float(scipy_stats.ttest_ind(b.mean(1), a.mean(1), equal_var=False).pvalue)
    result = stats.welch(list(a.mean(1)), list(b.mean(1)), floor=(stats.sampling_floor(a.mean(), IMAGES),
                                                                   stats.sampling_floor(b.mean(), IMAGES)))
    return 1.0 if result is None else result.p


def rates(seed_std: float, shift: float, n_a: int, n_b: int, seed: int) -> tuple[float, float, float]:
    """(old, new, new with the floor): the share of data sets in which the verdict says the second group is
    different."""
    rng = np.random.default_rng(seed)
    old = new = floored = 0
    for _ in range(DATASETS):
        a, b = runs(rng, n_a, seed_std, 0.0), runs(rng, n_b, seed_std, shift)
        old += old_rule(rng, a, b) < 0.05
        new += new_rule(a, b, floor=False) < 0.05
        floored += new_rule(a, b, floor=True) < 0.05
    return old / DATASETS, new / DATASETS, floored / DATASETS


def main() -> None:
    print("| runs | seed luck 0: old / new / floored | seed luck = test-set noise | seed luck 3x | "
          "power, +1 point, seed luck 0.6 |")
    print("|---|---|---|---|---|")
    for n_a, n_b in SIZES:
        cells = [rates(spread * TEST_SET_STD, 0.0, n_a, n_b, 100 * n_a + n_b) for spread in (0.0, 1.0, 3.0)]
        cells.append(rates(0.006, 0.01, n_a, n_b, 7 + n_a + n_b))
        print(f"| {n_a} v {n_b} | " + " | ".join(" / ".join(f"{100 * rate:.1f} %" for rate in cell) for cell in cells)
              + " |", flush=True)


if __name__ == "__main__":
    main()
