"""cifarlab.experiments.stats against hand computations and published tables."""

from __future__ import annotations

import math

import pytest

from cifarlab.experiments import stats

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


def test_welch_without_spread() -> None:
    same = stats.welch([0.5, 0.5], [0.5, 0.5])
    apart = stats.welch([0.5, 0.5], [0.6, 0.6])
    assert same is not None and same.p == 1.0 and same.ci95 == (0.0, 0.0)
    assert apart is not None and apart.p == 0.0 and apart.ci95 == pytest.approx((0.1, 0.1))


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
    # Holm tests the smallest p at 0.05/3, the next at 0.05/2, the last at 0.05: the intervals' levels.
    assert stats.interval_levels(ps, "holm") == pytest.approx([1 - 0.05 / 3, 1 - 0.05, 1 - 0.05 / 2])
    assert stats.interval_levels(ps, "bh") == pytest.approx([1 - 0.05 * 3 / 3] * 3)  # all three found at BH
    assert stats.interval_levels(ps, "none") == pytest.approx([0.95] * 3)
    with pytest.raises(ValueError, match="one of holm, bh, none"):
        stats.adjust(ps, "bonferroni")


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
    assert stats.seeds_needed(1.0, 0.0) == 2 and stats.seeds_needed(1e-4, 1.0) is None
    assert stats.seeds_needed(1.0, 1.0, alpha=0.01) > 17


def test_power_and_detectable_difference() -> None:
    assert stats.t_test_power(0.0, 1.0, 5) == pytest.approx(0.05)  # no difference: the test's level
    # Large df: the normal approximation (1.959964 + 0.841621) * se.
    assert stats.detectable(1.0, 1e6) == pytest.approx(1.959964 + 0.841621, abs=1e-3)
    assert stats.t_test_power(stats.detectable(0.3, 4), 0.3, 4) == pytest.approx(0.8)
    assert stats.detectable(0.3, 4) > stats.detectable(0.3, 40) and stats.detectable(0.0, 4) == 0.0
