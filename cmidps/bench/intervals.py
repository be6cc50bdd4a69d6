"""Confidence intervals for every benchmark report and doc table: one helper, Student-t quantiles.

A benchmark compares methods on the same units (images x seeds, or problem seeds), so the quantity of
interest is a mean of per-unit values or of paired differences ``a_i - b_i``. Its 95% interval is

    mean +- t_{0.975, n-1} sd / sqrt(n)        (sd with n - 1; Student t with n - 1 degrees of freedom),

not ``1.96 sd / sqrt(n)``, which is too narrow at the small n of the committed runs (t_{0.975,5} = 2.571,
t_{0.975,3} = 3.182). With fewer than :data:`MIN_N` units no verdict is given: the interval is still
computed, but reported as "too few to test" (an sd estimated from 2-4 values is itself unreliable).

* :func:`t_quantile` -- the Student-t quantile (scipy),
* :func:`interval` -- ``Interval(mean, half_width, n)`` of a list of values,
* :func:`paired` -- the interval of the paired differences of two mappings unit -> value,
* ``Interval.verdict`` -- ``"excludes 0"``, ``"includes 0"`` or ``"too few to test"``,
* :func:`format_interval` -- ``"+0.43 ± 0.48 (n=6)"``, with the verdict where it matters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95
MIN_N = 5  # fewer units than this: "too few to test"
TOO_FEW = "too few to test"


def t_quantile(dof: int, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``dof`` degrees of freedom, t_{(1+level)/2, dof}."""
    if dof < 1:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2.0, dof))


@dataclass(frozen=True)
class Interval:
    """A mean with the half width of its t interval over ``n`` units. Unpacks as ``(mean, half_width, n)``."""

    mean: float
    half_width: float
    n: int

    def __iter__(self):
        return iter((self.mean, self.half_width, self.n))

    def __getitem__(self, k):
        return (self.mean, self.half_width, self.n)[k]

    def __len__(self):
        return 3

    @property
    def testable(self) -> bool:
        """Enough units (n >= MIN_N) and a finite half width."""
        return self.n >= MIN_N and math.isfinite(self.half_width)

    @property
    def excludes_zero(self) -> bool:
        """The interval excludes 0 and there are enough units to say so."""
        return self.testable and abs(self.mean) > self.half_width

    @property
    def verdict(self) -> str:
        if not self.testable:
            return TOO_FEW
        return "excludes 0" if self.excludes_zero else "includes 0"


def _clean(values) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def interval(values, level: float = LEVEL) -> Interval:
    """Mean and t half width ``t_{(1+level)/2, n-1} sd / sqrt(n)`` (sd with n - 1) of the non-missing
    values; half width ``nan`` for n < 2, mean ``nan`` for n = 0."""
    vals = _clean(values)
    n = len(vals)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = math.fsum(vals) / n
    if n < 2:
        return Interval(mean, math.nan, n)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    return Interval(mean, t_quantile(n - 1, level) * sd / math.sqrt(n), n)


def paired(a: dict, b: dict, level: float = LEVEL) -> Interval:
    """The interval of ``a[u] - b[u]`` over the units ``u`` both have (missing or nan values left out)."""
    diffs = [a[u] - b[u] for u in a if u in b and _clean([a[u]]) and _clean([b[u]])]
    return interval(diffs, level)


def format_interval(iv, fmt: str = ".2f", sign: bool = True, verdict: bool = True) -> str:
    """``"+0.43 ± 0.48 (n=6)"``; for n < MIN_N ``"... (n=4, too few to test)"``; ``"*"`` appended where
    the interval excludes 0 (with ``verdict``)."""
    iv = iv if isinstance(iv, Interval) else Interval(*iv)
    text = format(iv.mean, ("+" if sign else "") + fmt)
    if math.isfinite(iv.half_width):
        text += f" ± {format(iv.half_width, fmt)}"
    note = f"n={iv.n}" + (f", {TOO_FEW}" if verdict and not iv.testable else "")
    return f"{text} ({note})" + (" *" if verdict and iv.excludes_zero else "")
