"""Replicate statistics: a row of the report is the mean over seeds, with its spread and a confidence
interval, so that a difference between rows can be told from seed noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats


def number(v: Any) -> float | None:
    """A finite int or float as float; None for anything else (bool, str, nan, inf, missing)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def t95(df: int) -> float:
    """The two-sided 95% Student-t quantile for df degrees of freedom (nan below 1)."""
    if df < 1:
        return math.nan
    return float(stats.t.ppf(0.975, df))


@dataclass(frozen=True)
class Stat:
    """Mean over replicates with sample std (ddof=1) and a 95% t confidence interval for the mean."""

    mean: float
    std: float  # nan for n == 1
    n: int
    lo: float
    hi: float

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat | None:
        """None when no value is finite; None, nan and inf are ignored."""
        xs = [x for x in values if x is not None and math.isfinite(x)]
        if not xs:
            return None
        n = len(xs)
        mean = sum(xs) / n
        if n == 1:
            return cls(mean, math.nan, 1, math.nan, math.nan)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
        half = t95(n - 1) * std / math.sqrt(n)
        return cls(mean, std, n, mean - half, mean + half)
