"""The patriarch against its tolerance weight eta: generation 0 of every run, grouped by
regulariser and eta, with 95% t-intervals of the means over seeds.

docs/method.md "Tolerance threshold": for TSD with K classes a one-hot output stays a
local minimum of the teacher loss exactly when eta >= K/(2K-1); the curve shows whether the
patriarch's confidence, secondary information and accuracy change at that threshold.
A strict patriarch (eta = 1) has no regulariser and starts every regulariser's curve; a
patriarch shared by several runs of one seed counts once. Which patriarchs are the same
is policy.patriarch_loss_key's rule: ``regularizer=none`` below eta = 1 is a curve of its
own (eta * CE), not the strict patriarch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdgen.policy import patriarch_loss_key
from kdgen.report.collect import Run
from kdgen.report.figures import new_figure, save_figure
from kdgen.report.stats import Interval, t_interval
from kdgen.report.tables import METRIC_COLUMNS, Column, Table

MIN_ETAS = 3  # a curve needs at least this many values of eta
COLUMNS = (METRIC_COLUMNS[4], METRIC_COLUMNS[2], METRIC_COLUMNS[3], METRIC_COLUMNS[0])


def threshold(k: int) -> float:
    """K/(2K-1): at and above it one-hot is a local minimum of the TSD teacher loss."""
    return k / (2 * k - 1)


def _key(run: Run) -> tuple[Any, ...]:
    """What makes two runs' patriarchs the same training (policy.patriarch_loss_key, the
    seed included)."""
    s = run.summary
    loss = patriarch_loss_key(
        float(s.get("eta", 1.0)),
        s.get("regularizer", "tsd"),
        s.get("k", 5),
        s.get("regularizer_form", "convex"),
    )
    return (*loss, run.seed)


def patriarch_curves(runs: Sequence[Run]) -> dict[str, dict[float, list[Run]]]:
    """{regulariser: {eta: runs, one per seed}} for regularisers with >= MIN_ETAS etas
    (eta = 1, the strict patriarch, in every curve)."""
    unique: dict[tuple[Any, ...], Run] = {}
    for run in runs:
        if run.generation(0) is not None and not run.is_snapshot:  # cycle 0 is no patriarch
            unique.setdefault(_key(run), run)
    strict = [run for key, run in unique.items() if key[0] == "strict"]
    curves: dict[str, dict[float, list[Run]]] = {}
    for key, run in unique.items():
        if key[0] != "strict":
            eta, regularizer = key[0], key[1]
            curves.setdefault(str(regularizer), {}).setdefault(float(eta), []).append(run)
    for curve in curves.values():
        if strict:
            curve[1.0] = strict
    return {
        name: dict(sorted(curve.items(), reverse=True))
        for name, curve in sorted(curves.items())
        if len(curve) >= MIN_ETAS
    }


def _interval(runs: Sequence[Run], column: Column) -> Interval | None:
    values = [v for v in (column.read(run.generation(0)) for run in runs) if v is not None]
    return t_interval(values)


def _format(interval: Interval | None, column: Column) -> str:
    if interval is None:
        return "-"
    digits, scale = column.digits, column.scale
    text = f"{interval.mean * scale:.{digits}f}"
    if interval.low is None or interval.high is None:
        return text
    return f"{text} [{interval.low * scale:.{digits}f}, {interval.high * scale:.{digits}f}]"


def _k(runs: Sequence[Run]) -> int:
    return int(runs[0].summary.get("k", 5))


def tolerance_table(runs: Sequence[Run]) -> Table | None:
    """One row per (regulariser, eta): n, the side of the threshold (TSD) and the
    patriarchs' test metrics as mean [95% t-interval]; None without a curve."""
    curves = patriarch_curves(runs)
    if not curves:
        return None
    headers = ["regulariser", "eta", "eta vs K/(2K-1)", "n", *(c.header for c in COLUMNS)]
    rows = []
    for name, curve in curves.items():
        for eta, members in curve.items():
            side = "-"
            if name == "tsd":
                side = ">=" if eta >= threshold(_k(members)) else "<"
            cells = [_format(_interval(members, column), column) for column in COLUMNS]
            rows.append([name, f"{eta:g}", side, str(len(members)), *cells])
    note = (
        "Cells: mean over seeds [95% t-interval of the mean, n-1 degrees of freedom]; the "
        "mean alone when n = 1. Generation 0 on the test split, last epoch."
    )
    return Table(headers, rows, left=3, notes=[note])


def plot_tolerance(runs: Sequence[Run], path: Path) -> Path | None:
    """Mean top-1 probability, Dist^C, Dist^S and test top-1 of the patriarch against eta,
    with 95% t-interval error bars and the TSD threshold marked; None without a curve."""
    curves = patriarch_curves(runs)
    if not curves:
        return None
    fig, axes = new_figure(1, len(COLUMNS), figsize=(4.2 * len(COLUMNS), 4.0))
    for ax, column in zip(axes, COLUMNS, strict=True):
        for name, curve in curves.items():
            etas, means, errors = [], [], [[], []]
            for eta, members in curve.items():
                interval = _interval(members, column)
                if interval is None:
                    continue
                low = interval.mean if interval.low is None else interval.low
                high = interval.mean if interval.high is None else interval.high
                etas.append(eta)
                means.append(interval.mean * column.scale)
                errors[0].append((interval.mean - low) * column.scale)
                errors[1].append((high - interval.mean) * column.scale)
            ax.errorbar(etas, means, yerr=errors, marker="o", capsize=3, label=name)
            if name == "tsd":
                k = _k(next(iter(curve.values())))
                ax.axvline(threshold(k), color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("eta (patriarch's cross-entropy weight)")
        ax.set_title(column.header)
        ax.grid(True, alpha=0.3)
    axes[0].legend(title="regulariser", frameon=False)
    fig.suptitle(
        "The patriarch against eta (test set; mean over seeds, bars: 95% t-interval; "
        "dashed: TSD threshold K/(2K-1))"
    )
    fig.tight_layout()
    save_figure(fig, path)
    return path
