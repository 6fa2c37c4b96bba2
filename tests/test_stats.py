"""cifarlab.analysis.stats against hand computations and published tables."""

from __future__ import annotations

import math
import random

import pytest

from cifarlab.analysis import stats

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062047), (2, 4.30265273), (4, 2.77644511), (9, 2.26215716),
                                              (30, 2.04227246)])
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert stats.t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-6)


@pytest.mark.parametrize("t", [-25.0, -2.2, -0.3, 0.0, 0.7, 1.7, 12.7])
def test_t_cdf_matches_closed_forms(t: float) -> None:
    # df=1 is the Cauchy distribution; df=2 has the closed form 1/2 + t / (2 sqrt(2 + t^2)).
    assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("df", [0.7, 1.3, 2.80519, 7.5, 250.0])
def test_t_quantile_inverts_the_cdf_at_fractional_degrees_of_freedom(df: float) -> None:
    for p in (0.6, 0.975, 0.999):
        assert stats.t_cdf(stats.t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)  # SciPy 1.9: ~1e-10


def test_large_degrees_of_freedom_approach_the_normal() -> None:
    assert stats.t_quantile(0.975, 1e7) == pytest.approx(1.959963985, abs=1e-6)


def test_summary_by_hand() -> None:
    # [0.5, 0.6, 0.7]: mean 0.6; squared deviations 0.01 + 0 + 0.01 = 0.02, / (3 - 1) = 0.01, std 0.1;
    # interval 0.6 -+ t(0.975, 2) * 0.1 / sqrt(3) = 0.6 -+ 4.30265273 * 0.0577350 = 0.6 -+ 0.248414.
    summary = stats.summarize([0.5, 0.6, 0.7])
    half = 4.30265273 * 0.1 / math.sqrt(3)
    assert summary.n == 3
    assert summary.mean == pytest.approx(0.6, abs=1e-12)
    assert summary.std == pytest.approx(0.1, abs=1e-12)
    assert summary.ci95 == pytest.approx((0.6 - half, 0.6 + half), abs=1e-7)
    assert half == pytest.approx(0.248414, abs=1e-6)


def test_fewer_than_two_values_have_no_spread() -> None:
    assert stats.summarize([0.42]) == stats.Summary(1, 0.42, None, None)
    assert stats.summarize([]) == stats.Summary(0, None, None, None)
    assert stats.welch([0.5], [0.6, 0.7]) is None


def test_welch_with_equal_variances_by_hand() -> None:
    # a = [0.5, 0.6, 0.7], b = [0.6, 0.7, 0.8]: both variances 0.01, so se^2 = 0.01/3 + 0.01/3 = 0.02/3 and
    # df = (0.02/3)^2 / (2 * (0.01/3)^2 / 2) = 4: diff 0.1 -+ 2.77644511 * sqrt(0.02/3).
    result = stats.welch([0.5, 0.6, 0.7], [0.6, 0.7, 0.8])
    assert result is not None
    se = math.sqrt(0.02 / 3)
    assert result.diff == pytest.approx(0.1, abs=1e-12)
    assert result.se == pytest.approx(se, abs=1e-12)
    assert result.df == pytest.approx(4.0, abs=1e-9)
    assert result.ci95 == pytest.approx((0.1 - 2.77644511 * se, 0.1 + 2.77644511 * se), abs=1e-7)
    # t = 0.1 / 0.0816497 = 1.2247449 on 4 df: two-sided p = 2 * (1 - F(1.2247449)) = 0.2878641
    assert result.p == pytest.approx(2 * stats.t_cdf(-0.1 / se, 4), abs=1e-12)
    assert 0.28 < result.p < 0.29


def test_welch_with_unequal_variances_by_hand() -> None:
    # a = [0.5, 0.6, 0.7]: variance 0.01, n 3; b = [0.70, 0.74, 0.78, 0.82]: mean 0.76, squared deviations
    # 0.0036 + 0.0004 + 0.0004 + 0.0036 = 0.008, variance 0.008/3. se^2 = 0.01/3 + 0.008/12 = 0.004;
    # df = 0.004^2 / ((0.01/3)^2 / 2 + (0.008/12)^2 / 3) = 1.6e-5 / (5.5556e-6 + 1.4815e-7) = 2.80519.
    result = stats.welch([0.5, 0.6, 0.7], [0.70, 0.74, 0.78, 0.82])
    assert result is not None
    df = 0.004 ** 2 / ((0.01 / 3) ** 2 / 2 + (0.008 / 12) ** 2 / 3)
    assert df == pytest.approx(2.80519, abs=1e-5)
    assert result.diff == pytest.approx(0.16, abs=1e-12)
    assert result.se == pytest.approx(math.sqrt(0.004), abs=1e-12)
    assert result.df == pytest.approx(df, abs=1e-9)
    half = stats.t_quantile(0.975, df) * math.sqrt(0.004)
    assert result.ci95 == pytest.approx((0.16 - half, 0.16 + half), abs=1e-12)
    # t(0.975) lies between the tabled 4.30265 (df 2) and 3.18245 (df 3)
    assert 3.18245 < stats.t_quantile(0.975, df) < 4.30265


def test_welch_without_spread_and_no_floor_is_no_test() -> None:
    # Runs that repeat one value exactly (a loss, a time) give no spread to judge a difference by: no test, never
    # p = 0 and an interval [d, d].
    assert stats.welch([0.5, 0.5], [0.5, 0.5]) is None
    assert stats.welch([0.5, 0.5], [0.6, 0.6]) is None
    assert stats.welch([0.5, 0.5], [0.6, 0.7]) is not None  # one side's spread is enough


def test_welch_with_a_floor_by_hand() -> None:
    # Issue 27: two runs at 10 % and two at 11 % on 100 test images (one image apart) gave p = 0, "better". Each
    # accuracy is a sample of 100 images: floors sqrt(0.1 * 0.9 / 100) = 0.03 and sqrt(0.11 * 0.89 / 100) =
    # 0.0312890; se^2 = 0.0009 / 2 + 0.000979 / 2 = 0.0009395, se = 0.0306513; df = se^4 / (0.00045^2 + 0.0004895^2)
    # = 8.82660e-7 / 4.42110e-7 = 1.99647; t = 0.01 / 0.0306513 = 0.326251: p = 0.775, no difference.
    floors = (stats.sampling_floor(0.10, 100), stats.sampling_floor(0.11, 100))
    assert floors == pytest.approx((0.03, 0.0312890), abs=1e-7)
    result = stats.welch([0.10, 0.10], [0.11, 0.11], floor=floors)
    assert result is not None
    assert result.se == pytest.approx(math.sqrt(0.0009395), abs=1e-9)
    assert result.df == pytest.approx(0.0009395 ** 2 / (0.00045 ** 2 + 0.0004895 ** 2), abs=1e-9)
    assert result.df == pytest.approx(1.99647, abs=1e-5)
    assert result.p == pytest.approx(2 * stats.t_cdf(-0.01 / math.sqrt(0.0009395), result.df), abs=1e-12)
    assert 0.77 < result.p < 0.78 and result.ci95[0] < 0 < result.ci95[1]
    # A spread above the floor is the runs' own: the floor changes nothing.
    assert stats.welch([0.5, 0.6, 0.7], [0.6, 0.7, 0.8], floor=(0.05, 0.05)) == stats.welch([0.5, 0.6, 0.7],
                                                                                          [0.6, 0.7, 0.8])


def test_sampling_floor_by_hand() -> None:
    assert stats.sampling_floor(0.64, 10_000) == pytest.approx(0.0048)
    # At 0 or 100 % half an image away: sqrt(0.005 * 0.995 / 100) = 0.00705337; never 0.
    assert stats.sampling_floor(1.0, 100) == pytest.approx(0.00705337, abs=1e-8)
    assert stats.sampling_floor(0.0, 100) == pytest.approx(stats.sampling_floor(1.0, 100))


def test_a_group_interval_never_rests_on_less_than_its_floor() -> None:
    # [0.1, 0.1] on 100 images: 0.1 -+ t(0.975, 1) * 0.03 / sqrt(2) = 0.1 -+ 12.7062047 * 0.0212132.
    summary = stats.summarize([0.1, 0.1], floor=0.03)
    half = 12.7062047 * 0.03 / math.sqrt(2)
    assert summary.std == 0.0 and summary.ci95 == pytest.approx((0.1 - half, 0.1 + half), abs=1e-7)
    assert stats.summarize([0.5, 0.5]).ci95 is None  # no spread and no floor: no interval
    assert stats.summarize([0.5, 0.6, 0.7], floor=0.01) == stats.summarize([0.5, 0.6, 0.7])


def test_mcnemar_exact_by_hand() -> None:
    # B right on 30 images where A is wrong, A right on 10 where B is wrong, 100 images:
    # p = 2 * P(X <= 10 | n = 40, 1/2) = 2 * sum_{k<=10} C(40, k) / 2^40.
    result = stats.mcnemar(only_a=10, only_b=30, images=100)
    expected = 2 * sum(math.comb(40, k) for k in range(11)) / 2 ** 40
    assert result.p == pytest.approx(expected, rel=1e-12)
    assert result.p == pytest.approx(0.0022214, abs=1e-7)
    assert result.diff == pytest.approx(0.2)
    # Wald: se = sqrt(10 + 30 - 20^2/100) / 100 = sqrt(36) / 100 = 0.06; 0.2 -+ 1.959964 * 0.06
    assert result.ci95 == pytest.approx((0.2 - 1.959964 * 0.06, 0.2 + 1.959964 * 0.06), abs=1e-6)


def test_mcnemar_symmetric_and_empty() -> None:
    assert stats.mcnemar(12, 12, 50).p == 1.0
    assert stats.mcnemar(0, 0, 50).p == 1.0
    assert stats.binomial_two_sided_p(0, 5) == pytest.approx(2 / 32)


def test_holm_and_benjamini_hochberg_by_hand() -> None:
    ps = [0.01, 0.04, 0.03]
    # Holm, k = 3: sorted 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> 0.06 (never below the step before).
    assert stats.adjust(ps, "holm") == pytest.approx([0.03, 0.06, 0.06])
    # BH: 0.01 * 3/1 = 0.03, 0.03 * 3/2 = 0.045, 0.04 * 3/3 = 0.04; from the largest down, the running minimum.
    assert stats.adjust(ps, "bh") == pytest.approx([0.03, 0.04, 0.04])
    assert stats.adjust(ps, "none") == ps
    assert stats.adjust([0.6, 0.7], "holm") == [1.0, 1.0] and stats.adjust([0.02], "holm") == [0.02]
    # Holm tests the smallest p at 0.05/3 (found: 0.01 < 0.0167), the next at 0.05/2 (0.03: not found) and stops
    # there: the last keeps that step's level, not its own 0.95 (at which 0.04 would exclude 0).
    assert stats.interval_levels(ps, "holm") == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 2, 1 - 0.05 / 2])
    assert stats.interval_levels(ps, "bh") == pytest.approx([1 - 0.05 * 3 / 3] * 3)  # all three found at BH
    assert stats.interval_levels(ps, "none") == pytest.approx([0.95] * 3)
    with pytest.raises(ValueError, match="one of holm, bh, none"):
        stats.adjust(ps, "bonferroni")


def test_holm_levels_after_the_first_failing_step_are_that_steps() -> None:
    # The case: p 0.0309 and 0.0410, k = 2. Step 1: 2 * 0.0309 = 0.0619, not below 0.05: Holm stops at once
    # and both keep step 1's level, 1 - 0.05 / 2 (each step's own level gave the second 0.95, excluding 0).
    assert stats.adjust([0.0309, 0.0410], "holm") == pytest.approx([0.0618, 0.0618])
    assert stats.interval_levels([0.0309, 0.0410], "holm") == pytest.approx([0.975, 0.975])
    # Found at steps 1 and 2, stopped at 3: the fourth gets step 3's level 1 - 0.05 / 2.
    assert stats.interval_levels([0.001, 0.01, 0.03, 0.04], "holm") == pytest.approx(
        [1 - 0.05 / 4, 1 - 0.05 / 3, 1 - 0.05 / 2, 1 - 0.05 / 2])
    # Every step found: each its own level.
    assert stats.interval_levels([0.001, 0.002, 0.003], "holm") == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 2, 0.95])
    assert stats.interval_levels([0.02, 0.02], "holm") == pytest.approx([0.975, 0.95])  # both found
    # A p exactly on a threshold is not found (p < 0.05 after adjusting): 2 * 0.025 = 0.05 stops at step 1.
    assert stats.adjust([0.025, 0.5], "holm")[0] == 0.05 and stats.interval_levels([0.025, 0.5], "holm") == [
        0.975, 0.975]
    assert stats.interval_levels([0.025, 0.5], "bh") == pytest.approx([0.975, 0.975])  # R = 0: 1 - 0.05 / 2


@pytest.mark.parametrize("method", stats.ADJUSTMENTS)
def test_adjusted_levels_agree_with_the_adjusted_p_values(method: str) -> None:
    # For tests that invert to intervals (p < 1 - L exactly when the level-L interval excludes 0): each
    # comparison found (adjusted p < 0.05) has p below its interval's miss rate, and no other has, over many
    # random families, with ties.
    rng = random.Random(27)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        k = rng.randint(1, 8)
        ps = [rng.choice([rng.uniform(0, 0.1), rng.uniform(0, 1), 10 ** rng.uniform(-5, -1)]) for _ in range(k)]
        ps += rng.sample(ps, rng.randint(0, k // 2))  # ties
        found = [p < stats.ALPHA for p in stats.adjust(ps, method)]
        levels = stats.interval_levels(ps, method)
        for p, level, significant in zip(ps, levels, found):
            assert (p < 1 - level) == significant, (method, ps)
            seen[significant] += 1
    assert min(seen.values()) > 1000


def test_welch_interval_at_another_level() -> None:
    # The equal-variance case above at 99 %: t(0.995, 4) = 4.60409487.
    result = stats.welch([0.5, 0.6, 0.7], [0.6, 0.7, 0.8], level=0.99)
    assert result is not None
    se = math.sqrt(0.02 / 3)
    assert result.ci95 == pytest.approx((0.1 - 4.60409487 * se, 0.1 + 4.60409487 * se), abs=1e-7)


def test_test_set_std_by_hand() -> None:
    # 64 % right on 10,000 images: sqrt(0.64 * 0.36 / 10,000) = 0.48 / 100.
    assert stats.test_set_std(0.64, 10_000) == pytest.approx(0.0048)
    assert stats.test_set_std(1.0, 100) == 0.0


def test_seeds_needed_matches_cohens_table() -> None:
    # Cohen (1988), two-sample t, two-sided 5 %, 80 % power: d = 0.5 -> 64 a group, 0.8 -> 26, 1.0 -> 17.
    assert [stats.seeds_needed(d, 1.0) for d in (0.5, 0.8, 1.0)] == [64, 26, 17]
    assert stats.seeds_needed(0.3, 0.6) == stats.seeds_needed(0.5, 1.0)  # only delta / std counts
    assert stats.seeds_needed(1e-4, 1.0) is None
    with pytest.raises(ValueError, match="a plan needs a spread above 0"):
        stats.seeds_needed(1.0, 0.0)  # runs that repeat exactly: no plan (it said 2 seeds suffice)
    assert stats.seeds_needed(1.0, 1.0, alpha=0.01) > 17


def test_power_and_detectable_difference() -> None:
    assert stats.t_test_power(0.0, 1.0, 5) == pytest.approx(0.05)  # no difference: the test's level
    # Large df: the normal approximation (1.959964 + 0.841621) * se.
    assert stats.detectable(1.0, 1e6) == pytest.approx(1.959964 + 0.841621, abs=1e-3)
    assert stats.t_test_power(stats.detectable(0.3, 4), 0.3, 4) == pytest.approx(0.8)
    assert stats.detectable(0.3, 4) > stats.detectable(0.3, 40)
    with pytest.raises(ValueError, match="a plan needs a spread above 0"):
        stats.detectable(0.0, 4)  # it said any difference is found
