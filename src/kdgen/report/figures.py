"""The report's figures: metrics against generation, one line per process, each with the
95% t-interval of its mean over seeds as a band (no band where n = 1)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdgen.report.collect import BASELINE, Run, generations_of
from kdgen.report.stats import CONFIDENCE, t_interval
from kdgen.report.tables import METRIC_COLUMNS, Column

BAND = f"mean over seeds; band: {CONFIDENCE:.0%} t-interval of the mean"


def _series(runs: Sequence[Run], column: Column) -> tuple[list[int], np.ndarray]:
    """Generations, and the scaled mean with its interval's bounds (the mean itself where
    n = 1) as rows of a (3, generations) array."""
    gens, points = [], []
    for g in generations_of(runs):
        values = [v for v in (column.read(run.generation(g)) for run in runs) if v is not None]
        interval = t_interval(values)
        if interval is None:
            continue
        low = interval.mean if interval.low is None else interval.low
        high = interval.mean if interval.high is None else interval.high
        gens.append(g)
        points.append([interval.mean * column.scale, low * column.scale, high * column.scale])
    array = np.array(points, dtype=np.float64).reshape(-1, 3).T
    return gens, array


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _style(position: int, label: str, baseline: str) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    if label == baseline:
        return {"color": "black", "linestyle": "--", "marker": "o"}
    colors = plt.get_cmap("tab10").colors
    return {
        "color": colors[position % len(colors)],
        "linestyle": "-",
        "marker": MARKERS[position % len(MARKERS)],
    }


def _plot_metric(ax: Any, groups: dict[str, list[Run]], column: Column, baseline: str) -> bool:
    """One line per process with its interval band; False when no process has the metric."""
    from matplotlib.ticker import MaxNLocator

    drawn = False
    for position, (label, runs) in enumerate(groups.items()):
        gens, (mean, low, high) = _series(runs, column)
        if not gens:
            continue
        style = _style(position, label, baseline)
        ax.plot(gens, mean, label=f"{label} (n={len(runs)})", linewidth=1.8, markersize=5, **style)
        ax.fill_between(gens, low, high, color=style["color"], alpha=0.15, linewidth=0)
        drawn = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation (or snapshot cycle)")
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return drawn


def new_figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def plot_accuracy(groups: dict[str, list[Run]], path: Path, baseline: str = BASELINE) -> Path:
    """Test top-1 (%) against generation per process, with 95% t-interval bands (Figure 2)."""
    fig, ax = new_figure(figsize=(7.5, 4.5))
    _plot_metric(ax, groups, METRIC_COLUMNS[0], baseline)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"Test top-1 accuracy over generations\n({BAND})", fontsize=11)
    ax.legend(title="process", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    save_figure(fig, path)
    return path


SECONDARY_PANELS = (
    (METRIC_COLUMNS[2], r"Dist$^C$ (lower: more sibling secondaries)", r"Dist$^C$"),
    (METRIC_COLUMNS[3], r"Dist$^S$ (lower: semantically closer)", r"Dist$^S$"),
    (METRIC_COLUMNS[4], "mean top-1 probability", "mean top-1 probability"),
)


def plot_secondary(groups: dict[str, list[Run]], path: Path, baseline: str = BASELINE) -> Path:
    """Dist^C, Dist^S and mean top-1 probability against generation, side by side."""
    fig, axes = new_figure(1, 3, figsize=(14, 4.2))
    for ax, (column, title, ylabel) in zip(axes, SECONDARY_PANELS, strict=True):
        _plot_metric(ax, groups, column, baseline)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    handles, labels = _legend_entries(axes)
    fig.suptitle(f"Secondary information of each generation (test set; {BAND})")
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(labels), 5) or 1,
        frameon=False,
    )
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _legend_entries(axes: Sequence[Any]) -> tuple[list[Any], list[str]]:
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)
