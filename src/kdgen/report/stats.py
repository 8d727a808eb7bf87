"""Spreads over seeds, paired differences and their 95% t-intervals.

Two spreads appear in the report and each is named where it is shown: the sample standard
deviation of single runs (:class:`Stat`, the per-generation tables) and the 95% Student-t
interval of a mean (:class:`Interval`, the paired differences and the figures' bands).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdgen.report.collect import Run

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1; None when n < 2) of n values."""

    mean: float
    std: float | None
    n: int

    @property
    def se(self) -> float | None:
        return None if self.std is None else self.std / math.sqrt(self.n)


def summarize(values: Iterable[float | None]) -> Stat | None:
    """The :class:`Stat` of the values that are not None; None when there are none."""
    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    if kept.size == 0:
        return None
    std = float(kept.std(ddof=1)) if kept.size > 1 else None
    return Stat(float(kept.mean()), std, int(kept.size))


def format_stat(stat: Stat | None, scale: float, digits: int) -> str:
    """``mean ± sample std`` scaled and rounded; the mean alone when n = 1."""
    if stat is None:
        return "-"
    text = f"{stat.mean * scale:.{digits}f}"
    return text if stat.std is None else f"{text} ± {stat.std * scale:.{digits}f}"


@dataclass(frozen=True)
class Interval:
    """The mean of n values and its t-interval (n - 1 degrees of freedom); no bounds when
    n = 1, where the spread, and so the interval, is undefined."""

    mean: float
    n: int
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the interval lies wholly above or below 0; None without an interval."""
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval | None:
    """The mean of ``values`` with its ``confidence`` Student-t interval; None if empty."""
    kept = np.asarray(values, dtype=np.float64)
    if kept.size == 0:
        return None
    mean = float(kept.mean())
    if kept.size < 2:
        return Interval(mean, 1, None, None)
    from scipy import stats  # imported here: the demo's and eval's tables need no scipy

    standard_error = float(kept.std(ddof=1)) / math.sqrt(kept.size)
    half_width = float(stats.t.ppf(0.5 + confidence / 2, df=kept.size - 1)) * standard_error
    return Interval(mean, int(kept.size), mean - half_width, mean + half_width)


def pair_by_seed(
    runs: Sequence[Run],
    baseline: Sequence[Run],
    read: Callable[[Run], float | None],
    skip_seeds: Collection[int] = (),
) -> list[float]:
    """Per seed that both sides ran (and not skipped), ``read(run) - read(baseline run)``;
    seeds where either value is missing are left out."""
    base = {run.seed: read(run) for run in baseline}
    out = []
    for run in runs:
        value, reference = read(run), base.get(run.seed)
        if run.seed not in skip_seeds and value is not None and reference is not None:
            out.append(value - reference)
    return out


def metric(entry: dict[str, Any] | None, split: str, key: str) -> float | None:
    """``entry[split][key]``, None where any part is missing (e.g. no validation split)."""
    block = (entry or {}).get(split) or {}
    value = block.get(key)
    return None if value is None else float(value)
