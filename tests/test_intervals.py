"""The one interval helper (cmidps.bench.intervals): Student-t quantiles, paired differences, verdicts."""
import math

import pytest

from cmidps.bench.intervals import MIN_N, TOO_FEW, Interval, format_interval, interval, paired, t_quantile


@pytest.mark.parametrize("dof,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (5, 2.5706), (9, 2.2622),
                                          (19, 2.0930), (39, 2.0227), (1000, 1.9623)])
def test_t_quantile_matches_tables(dof, expected):
    assert t_quantile(dof) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_other_levels():
    assert t_quantile(10, 0.90) == pytest.approx(1.8125, abs=1e-4)
    assert t_quantile(10, 0.99) == pytest.approx(3.1693, abs=1e-4)
    assert math.isnan(t_quantile(0))


def test_interval_is_t_times_sd_over_sqrt_n():
    vals = [1.0, 2.0, 4.0, 7.0, 11.0, 16.0]
    iv = interval(vals)
    mean = sum(vals) / 6
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / 5)
    assert iv.mean == pytest.approx(mean) and iv.n == 6
    assert iv.half_width == pytest.approx(2.5706 * sd / math.sqrt(6), rel=1e-4)
    mean_, hw, n = iv  # unpacks like the old (mean, half width, n) tuples
    assert (mean_, hw, n) == (iv.mean, iv.half_width, 6)


def test_the_issue_example_becomes_insignificant():
    """A paired difference of +0.43 with a 1.96-interval of +-0.37 at n = 6 has a t-interval of +-0.48."""
    hw_t = 0.37 / 1.96 * t_quantile(5)
    assert hw_t == pytest.approx(0.485, abs=0.005)
    assert not Interval(0.43, hw_t, 6).excludes_zero and Interval(0.43, 0.37, 6).excludes_zero


def test_paired_uses_common_units_only():
    a = {"s0": 1.0, "s1": 2.0, "s2": 3.5, "s3": None, "s4": 5.0, "s5": 6.0, "s6": 9.0}
    b = {"s0": 0.5, "s1": 1.0, "s2": 3.0, "s3": 1.0, "s4": 4.0, "s5": 5.0}
    iv = paired(a, b)
    assert iv.n == 5
    assert iv.mean == pytest.approx((0.5 + 1.0 + 0.5 + 1.0 + 1.0) / 5)
    assert iv.verdict == "excludes 0"


def test_fewer_than_five_is_too_few_to_test():
    iv = interval([1.0, 1.1, 0.9, 1.05])
    assert iv.n == 4 < MIN_N and math.isfinite(iv.half_width)
    assert abs(iv.mean) > iv.half_width  # it would "exclude 0" ...
    assert iv.verdict == TOO_FEW and not iv.excludes_zero  # ... but n = 4 gives no verdict
    assert "too few to test" in format_interval(iv) and "*" not in format_interval(iv)
    assert math.isnan(interval([2.0]).half_width) and interval([]).n == 0


def test_format_interval():
    assert format_interval(Interval(0.43, 0.485, 6)) == "+0.43 ± 0.48 (n=6)"
    assert format_interval(Interval(-1.0, 0.2, 8)) == "-1.00 ± 0.20 (n=8) *"
    assert format_interval(Interval(-1.0, 0.2, 8), fmt=".3f", sign=False, verdict=False) == "-1.000 ± 0.200 (n=8)"
