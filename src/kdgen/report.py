"""Tables and figures from run folders: the demo's table, ``kdgen eval``'s and ``kdgen report``.

:func:`write_report` reads every ``summary.json`` under the given folders (single runs or
``kdgen sweep`` folders), groups the runs by process label (seeds are the replicates) and
writes ``report.md``, ``report.html``, ``accuracy.png`` and ``secondary.png``.
"""

from __future__ import annotations

import html
import json
import math
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdgen.errors import KdgenError, RunDirError
from kdgen.runs import RunFolder, atomic_write_text

BASELINE = "D(1.0,0.0)"


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 4, left: int = 0
) -> str:
    """A Markdown table with right-aligned number columns, readable in a terminal too;
    the first ``left`` columns (labels) are left-aligned."""
    cells = [[_cell(v, digits) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]

    def pad(i: int, value: str) -> str:
        return value.ljust(widths[i]) if i < left else value.rjust(widths[i])

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(pad(i, v) for i, v in enumerate(values)) + " |"

    rule = (
        "|"
        + "|".join(
            (":" + "-" * (w + 1)) if i < left else ("-" * (w + 1) + ":")
            for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


GENERATION_COLUMNS = ("test top-1", "Dist^C", "Dist^S", "mean top-1 prob")


def process_label(summary: dict[str, Any]) -> str:
    """``process``, plus ``:regularizer`` for a tolerant patriarch not using TSD."""
    regularizer = summary.get("regularizer", "tsd")
    if summary.get("eta", 1.0) < 1.0 and regularizer != "tsd":
        return f"{summary['process']}:{regularizer}"
    return str(summary["process"])


def generation_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """One row per generation of a run: process, generation and its test metrics."""
    rows = []
    for entry in summary["generations"]:
        test = entry.get("test") or {}
        rows.append(
            [
                process_label(summary),
                entry["generation"],
                test.get("top1"),
                test.get("dist_c"),
                test.get("dist_s"),
                test.get("mean_max_prob"),
            ]
        )
    return rows


def generations_table(summaries: Iterable[dict[str, Any]]) -> str:
    """The test metrics of every generation of the given runs, one row each."""
    rows = [row for summary in summaries for row in generation_rows(summary)]
    return markdown_table(("process", "gen", *GENERATION_COLUMNS), rows)


# --- finding and grouping runs ----------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run folder and its summary."""

    folder: RunFolder
    summary: dict[str, Any]

    @property
    def label(self) -> str:
        return process_label(self.summary)

    @property
    def seed(self) -> int:
        return int(self.summary.get("seed", 0))

    def generation(self, g: int) -> dict[str, Any] | None:
        return next((e for e in self.summary["generations"] if e["generation"] == g), None)


def find_runs(dirs: Sequence[Path]) -> list[Run]:
    """Every run folder (one holding ``summary.json``) at or below the given folders."""
    paths: dict[Path, None] = {}
    for directory in dirs:
        for path in sorted(Path(directory).rglob("summary.json")):
            paths[path.parent.resolve()] = None
    runs = []
    for path in paths:
        folder = RunFolder(path)
        summary = folder.read_summary()
        if summary and summary.get("generations"):
            runs.append(Run(folder, summary))
    if not runs:
        where = ", ".join(str(d) for d in dirs) or "(no folders given)"
        raise RunDirError(f"no run folder with a summary.json (with results) under {where}")
    return runs


def _process_order(label: str) -> tuple[int, float, float, str]:
    match = re.match(r"D\(([\d.]+),([\d.]+)\)", label)
    eta, lam = (float(match.group(1)), float(match.group(2))) if match else (0.0, 0.0)
    return (label != BASELINE, -eta, lam, label)


def group_runs(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs by process label (baseline first, then strict, then tolerant), sorted by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return {
        label: sorted(groups[label], key=lambda r: (r.seed, str(r.folder.path)))
        for label in sorted(groups, key=_process_order)
    }


def _generations(runs: Sequence[Run]) -> list[int]:
    return sorted({e["generation"] for run in runs for e in run.summary["generations"]})


# --- statistics and cells -----------------------------------------------------------------


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
    kept = np.array([v for v in values if v is not None], dtype=float)
    if kept.size == 0:
        return None
    std = float(kept.std(ddof=1)) if kept.size > 1 else None
    return Stat(float(kept.mean()), std, int(kept.size))


def format_stat(stat: Stat | None, scale: float, digits: int, spread: str = "std") -> str:
    """``mean ± std`` (or ``± se``) scaled and rounded; the mean alone when n = 1."""
    if stat is None:
        return "-"
    width = stat.std if spread == "std" else stat.se
    text = f"{stat.mean * scale:.{digits}f}"
    return text if width is None else f"{text} ± {width * scale:.{digits}f}"


@dataclass(frozen=True)
class Column:
    """A metric column: where to read it, how to show it and which end is best."""

    header: str
    key: str
    scale: float
    digits: int
    best: str | None  # "max", "min" or None
    split: str = "test"


METRIC_COLUMNS = (
    Column("test top-1 (%)", "top1", 100.0, 2, "max"),
    Column("test top-5 (%)", "top5", 100.0, 2, "max"),
    Column("Dist^C", "dist_c", 1.0, 3, "min"),
    Column("Dist^S", "dist_s", 1.0, 3, "min"),
    Column("mean top-1 prob", "mean_max_prob", 1.0, 3, None),
    Column("train top-1 (%)", "top1", 100.0, 2, None, split="train"),
)


def _metric(entry: dict[str, Any] | None, column: Column) -> float | None:
    block = (entry or {}).get(column.split) or {}
    return block.get(column.key)


def _bold_best(stats: list[list[Stat | None]], cells: list[list[str]]) -> None:
    """Bold, in place, the best mean of each column (ties on the shown digits all bold)."""
    for j, column in enumerate(METRIC_COLUMNS):
        if column.best is None:
            continue
        shown = [
            (i, round(row[j].mean * column.scale, column.digits))
            for i, row in enumerate(stats)
            if row[j] is not None
        ]
        if not shown:
            continue
        pick = max if column.best == "max" else min
        best = pick(v for _, v in shown)
        for i, value in shown:
            if value == best:
                cells[i][j] = f"**{cells[i][j]}**"


# --- tables ---------------------------------------------------------------------------------


@dataclass
class Table:
    """Headers and rows of text cells (``**x**`` marks bold); rendered to Markdown or HTML."""

    headers: list[str]
    rows: list[list[str]]
    left: int = 2

    def markdown(self) -> str:
        return markdown_table(self.headers, self.rows, left=self.left)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="{"l" if i < self.left else "r"}">{_html_cell(c)}</td>'
                for i, c in enumerate(row)
            )
            + "</tr>\n"
            for row in self.rows
        )
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _html_cell(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _metric_table(keys: list[list[str]], entries: list[list[dict[str, Any] | None]]) -> Table:
    """Rows of leading key cells, then n and each metric column as mean ± std over seeds."""
    stats = [[summarize(_metric(e, c) for e in group) for c in METRIC_COLUMNS] for group in entries]
    cells = [
        [format_stat(s, c.scale, c.digits) for s, c in zip(row, METRIC_COLUMNS, strict=True)]
        for row in stats
    ]
    _bold_best(stats, cells)
    rows = [
        [*key, str(len(group)), *row] for key, group, row in zip(keys, entries, cells, strict=True)
    ]
    return Table([], rows)


def generations_summary_table(groups: dict[str, list[Run]]) -> Table:
    """One row per process and generation: each metric as mean ± std over seeds."""
    keys, entries = [], []
    for label, runs in groups.items():
        for g in _generations(runs):
            keys.append([label, str(g)])
            entries.append([e for e in (run.generation(g) for run in runs) if e is not None])
    table = _metric_table(keys, entries)
    table.headers = ["process", "gen", "n", *(c.header for c in METRIC_COLUMNS)]
    table.left = 1
    return table


def ensembles_table(groups: dict[str, list[Run]]) -> Table | None:
    """One row per process and ensemble (softmax average of generations); None if none."""
    keys, entries = [], []
    for label, runs in groups.items():
        names: dict[str, list[int]] = {}
        for run in runs:
            for ens in run.summary.get("ensembles") or []:
                names.setdefault(ens["name"], ens.get("members", []))
        for name, members in names.items():
            keys.append([label, f"{name} [{','.join(map(str, members))}]"])
            found = [
                next((e for e in run.summary.get("ensembles") or [] if e["name"] == name), None)
                for run in runs
            ]
            entries.append([e for e in found if e is not None])
    if not keys:
        return None
    table = _metric_table(keys, entries)
    table.headers = ["process", "ensemble", "n", *(c.header for c in METRIC_COLUMNS[:-1])]
    table.rows = [row[:-1] for row in table.rows]  # ensembles have no training accuracy
    return table


def paired_differences(
    runs: Sequence[Run], baseline: Sequence[Run], generation: int, column: Column
) -> list[float]:
    """Per seed, run minus the baseline run of that seed, at one generation (seeds in both)."""
    base = {run.seed: _metric(run.generation(generation), column) for run in baseline}
    out = []
    for run in runs:
        value = _metric(run.generation(generation), column)
        if value is not None and base.get(run.seed) is not None:
            out.append(value - base[run.seed])
    return out


DIFFERENCE_COLUMNS = (
    Column("Δ test top-1 (pp)", "top1", 100.0, 2, None),
    Column("Δ Dist^C", "dist_c", 1.0, 3, None),
)


def _difference_cell(values: list[float], column: Column) -> str:
    stat = summarize(values)
    text = format_stat(stat, column.scale, column.digits, spread="se")
    text = "-" if stat is None else ("+" if stat.mean >= 0 else "") + text
    if stat is not None and stat.se is not None and abs(stat.mean) > 2 * stat.se:
        return f"**{text}**"
    return text


def differences_table(groups: dict[str, list[Run]]) -> Table | None:
    """Paired (same seed, same generation) differences from the baseline: mean ± SE."""
    baseline = groups.get(BASELINE)
    if not baseline:
        return None
    rows = []
    for label, runs in groups.items():
        if label == BASELINE:
            continue
        for g in _generations(runs):
            diffs = [paired_differences(runs, baseline, g, c) for c in DIFFERENCE_COLUMNS]
            cells = [_difference_cell(d, c) for d, c in zip(diffs, DIFFERENCE_COLUMNS, strict=True)]
            rows.append([label, str(g), str(len(diffs[0])), *cells])
    headers = ["process", "gen", "pairs", *(c.header for c in DIFFERENCE_COLUMNS)]
    return Table(headers, rows, left=1)


# --- secondary classes per class ------------------------------------------------------------


@dataclass(frozen=True)
class Secondary:
    """One secondary class of a true class: how many of its images had it in S."""

    index: int
    name: str
    count: int
    frequency: float
    sibling: bool | None


@dataclass(frozen=True)
class SecondaryRow:
    """A true class, its image count, its most frequent secondary classes and the share of
    all its secondary slots that are siblings (None without coarse labels)."""

    index: int
    name: str
    images: int
    top: list[Secondary]
    sibling_fraction: float | None


def secondary_sets(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """S per image: the K-1 highest-scoring classes other than the true one, (N, K-1)."""
    scores = logits.float().clone()
    scores[torch.arange(len(labels)), labels] = -math.inf
    return scores.topk(k - 1, dim=1).indices


def secondary_class_table(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    coarse_of_fine: Sequence[int] | None,
    k: int,
    top: int = 3,
    classes: Sequence[int] | None = None,
) -> list[SecondaryRow]:
    """For each true class (all present, or ``classes``), its ``top`` most frequent
    secondary classes over its images (ties: lower class index first)."""
    sets = secondary_sets(logits, labels, k)
    num_classes = logits.shape[1]
    chosen = sorted(set(labels.tolist())) if classes is None else list(classes)
    rows = []
    for c in chosen:
        mine = sets[labels == c]
        counts = torch.bincount(mine.flatten(), minlength=num_classes).tolist()
        order = sorted((i for i in range(num_classes) if counts[i] > 0), key=lambda i: -counts[i])
        rows.append(
            SecondaryRow(
                index=c,
                name=class_names[c],
                images=len(mine),
                top=[
                    _secondary(i, counts[i], len(mine), c, class_names, coarse_of_fine)
                    for i in order[:top]
                ],
                sibling_fraction=_sibling_fraction(mine, c, coarse_of_fine),
            )
        )
    return rows


def _secondary(
    index: int,
    count: int,
    images: int,
    true_class: int,
    names: Sequence[str],
    coarse: Sequence[int] | None,
) -> Secondary:
    sibling = None if coarse is None else coarse[index] == coarse[true_class]
    return Secondary(index, names[index], count, count / images, sibling)


def _sibling_fraction(
    sets: torch.Tensor, true_class: int, coarse: Sequence[int] | None
) -> float | None:
    if coarse is None or sets.numel() == 0:
        return None
    coarse_t = torch.as_tensor(list(coarse))
    return float((coarse_t[sets] == coarse[true_class]).float().mean())


def example_classes(num_classes: int, count: int) -> list[int]:
    """``count`` evenly spaced class indices (deterministic), first and last included."""
    if count <= 0 or num_classes <= 0:
        return []
    return sorted(
        {round(float(x)) for x in np.linspace(0, num_classes - 1, min(count, num_classes))}
    )


@dataclass(frozen=True)
class ClassInfo:
    names: list[str]
    coarse_of_fine: list[int] | None


def class_info(run: Run) -> ClassInfo:
    """Class names and coarse labels: ``classes.json``, else the data set itself, else
    placeholder names."""
    path = run.folder.path / "classes.json"
    if path.is_file():
        value = json.loads(path.read_text())
        return ClassInfo(list(value["class_names"]), value.get("coarse_of_fine"))
    try:
        from kdgen.config import build_config
        from kdgen.generations import load_data

        dataset = load_data(build_config(str(run.folder.config_path)))
        return ClassInfo(list(dataset.class_names), dataset.coarse_of_fine)
    except (KdgenError, OSError, ValueError):
        count = int(run.summary.get("num_classes", 0))
        return ClassInfo([f"class {i}" for i in range(count)], None)


def _secondary_text(item: Secondary) -> str:
    mark = " †" if item.sibling else ""
    return f"{item.name}{mark} ({item.count}, {item.frequency:.0%})"


def per_class_table(groups: dict[str, list[Run]], examples: int) -> tuple[Table | None, str]:
    """Patriarch (first seed) secondary classes for a few classes, and a note on gaps."""
    rows: list[list[str]] = []
    notes: list[str] = []
    infos: dict[str, ClassInfo] = {}
    per_process: dict[str, list[SecondaryRow]] = {}
    for label, runs in groups.items():
        run = runs[0]
        try:
            logits, labels = run.folder.load_logits(0)["test"]
        except (KdgenError, KeyError):
            notes.append(f"{label}: no test logits of generation 0 in {run.folder.path}")
            continue
        info = infos.setdefault(run.summary.get("data", ""), class_info(run))
        chosen = example_classes(logits.shape[1], examples)
        k = int(run.summary.get("k", 5))
        per_process[label] = secondary_class_table(
            logits, labels, info.names, info.coarse_of_fine, k, classes=chosen
        )
    if not per_process:
        return None, "; ".join(notes)
    for position in range(max(len(v) for v in per_process.values())):
        for label, found in per_process.items():
            if position < len(found):
                rows.append(_per_class_row(label, found[position]))
    headers = ["class", "process", "images", "1st", "2nd", "3rd", "siblings in S"]
    return Table(headers, rows, left=2), "; ".join(notes)


def _per_class_row(label: str, row: SecondaryRow) -> list[str]:
    tops = [_secondary_text(s) for s in row.top] + ["-"] * (3 - len(row.top))
    share = "-" if row.sibling_fraction is None else f"{row.sibling_fraction:.0%}"
    return [f"{row.index} {row.name}", label, str(row.images), *tops[:3], share]


# --- figures --------------------------------------------------------------------------------


def _series(runs: Sequence[Run], column: Column) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Generations, mean and std (0 where undefined) of one metric, scaled."""
    gens, means, stds = [], [], []
    for g in _generations(runs):
        stat = summarize(_metric(run.generation(g), column) for run in runs)
        if stat is not None:
            gens.append(g)
            means.append(stat.mean * column.scale)
            stds.append((stat.std or 0.0) * column.scale)
    return gens, np.array(means), np.array(stds)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _style(position: int, label: str) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    if label == BASELINE:
        return {"color": "black", "linestyle": "--", "marker": "o"}
    colors = plt.get_cmap("tab10").colors
    return {
        "color": colors[position % len(colors)],
        "linestyle": "-",
        "marker": MARKERS[position % len(MARKERS)],
    }


def _plot_metric(ax: Any, groups: dict[str, list[Run]], column: Column) -> bool:
    """One line per process with a ±1 std band; False when no process has the metric."""
    from matplotlib.ticker import MaxNLocator

    drawn = False
    for position, (label, runs) in enumerate(groups.items()):
        gens, mean, std = _series(runs, column)
        if not gens:
            continue
        n = len(runs)
        style = _style(position, label)
        ax.plot(gens, mean, label=f"{label} (n={n})", linewidth=1.8, markersize=5, **style)
        ax.fill_between(gens, mean - std, mean + std, color=style["color"], alpha=0.15, linewidth=0)
        drawn = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return drawn


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def plot_accuracy(groups: dict[str, list[Run]], path: Path) -> Path:
    """Test top-1 (%) against generation per process, mean ± 1 std band (cf. Figure 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _plot_metric(ax, groups, METRIC_COLUMNS[0])
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("Test top-1 accuracy over generations (mean ± 1 std over seeds)")
    ax.legend(title="process", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    _save(fig, path)
    return path


SECONDARY_PANELS = (
    (METRIC_COLUMNS[2], r"Dist$^C$ (lower: more sibling secondaries)", r"Dist$^C$"),
    (METRIC_COLUMNS[3], r"Dist$^S$ (lower: semantically closer)", r"Dist$^S$"),
    (METRIC_COLUMNS[4], "mean top-1 probability", "mean top-1 probability"),
)


def plot_secondary(groups: dict[str, list[Run]], path: Path) -> Path:
    """Dist^C, Dist^S and mean top-1 probability against generation, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (column, title, ylabel) in zip(axes, SECONDARY_PANELS, strict=True):
        _plot_metric(ax, groups, column)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    handles, labels = _legend_entries(axes)
    fig.suptitle("Secondary information of each generation (test set, mean ± 1 std over seeds)")
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(labels), 5) or 1,
        frameon=False,
    )
    fig.tight_layout()
    _save(fig, path)
    return path


def _legend_entries(axes: Sequence[Any]) -> tuple[list[Any], list[str]]:
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


# --- the report -----------------------------------------------------------------------------


@dataclass
class Section:
    """A report section: a title, lines of text before and after, and maybe a table."""

    title: str
    intro: str = ""
    table: Table | None = None
    outro: str = ""


def _header_lines(dirs: Sequence[Path], out: Path, runs: list[Run], groups: dict) -> list[str]:
    def values(key: str) -> str:
        return ", ".join(sorted({str(r.summary.get(key, "?")) for r in runs}))

    seeds = sorted({r.seed for r in runs})
    command = " ".join(["kdgen", "report", *(shlex.quote(str(d)) for d in dirs)])
    return [
        f"{len(runs)} runs: {len(groups)} processes, seeds {', '.join(map(str, seeds))}.",
        f"Data: {values('data')}; model: {values('model')}; K = {values('k')}.",
        f"Regenerate: `{command} --out {shlex.quote(str(out))}`",
    ]


def _sections(groups: dict[str, list[Run]], per_class_examples: int) -> list[Section]:
    sections = [
        Section(
            "Per generation",
            "Test metrics (and the final training top-1), mean ± std over seeds "
            "(sample std; the mean alone when n = 1). Bold: best in its column "
            "(highest accuracy, lowest Dist^C and Dist^S).",
            generations_summary_table(groups),
        )
    ]
    ensembles = ensembles_table(groups)
    if ensembles is not None:
        sections.append(
            Section(
                "Ensembles",
                "Softmax averages of the listed generations, mean ± std over seeds.",
                ensembles,
            )
        )
    differences = differences_table(groups)
    if differences is not None:
        sections.append(
            Section(
                f"Difference from {BASELINE}",
                f"Paired by seed and generation against {BASELINE}: mean ± standard error "
                "(sd / sqrt(n)) over seeds. Bold: |mean| > 2 SE.",
                differences,
            )
        )
    table, notes = per_class_table(groups, per_class_examples)
    sections.append(
        Section(
            "Secondary classes of the patriarch, per class",
            "Generation 0 of each process on the test split (first seed). S = the K-1 "
            "highest-scoring classes other than the true one; for each true class, the 3 "
            "classes most often in S: name (images with it in S, share of the class's "
            "images). † = sibling (same coarse class); *siblings in S* = share of all of "
            "the class's secondary slots held by siblings.",
            table,
            notes,
        )
    )
    return sections


FIGURES = (
    ("accuracy.png", "Test top-1 accuracy over generations"),
    ("secondary.png", "Dist^C, Dist^S and mean top-1 probability over generations"),
)


def _markdown(header: list[str], sections: list[Section]) -> str:
    parts = ["# kdgen report", "", *(f"{line}  " for line in header), ""]
    for file, caption in FIGURES:
        parts += [f"![{caption}]({file})", ""]
    for section in sections:
        parts += [f"## {section.title}", "", section.intro, ""]
        if section.table is not None:
            parts += [section.table.markdown(), ""]
        if section.outro:
            parts += [section.outro, ""]
    return "\n".join(parts)


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f0f0f0; }
td.r { text-align: right; white-space: nowrap; }
td.l { text-align: left; }
img { max-width: 100%; display: block; margin: 1em 0; }
code { background: #f4f4f4; padding: 0.1em 0.3em; }
"""


def _html_text(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", escaped)


def _html(header: list[str], sections: list[Section]) -> str:
    body = ["<h1>kdgen report</h1>", "<p>" + "<br>\n".join(_html_text(h) for h in header) + "</p>"]
    for file, caption in FIGURES:
        body.append(f'<img src="{file}" alt="{html.escape(caption)}">')
    for section in sections:
        body += [f"<h2>{html.escape(section.title)}</h2>", f"<p>{_html_text(section.intro)}</p>"]
        if section.table is not None:
            body.append(section.table.html())
        if section.outro:
            body.append(f"<p>{_html_text(section.outro)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>kdgen report</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_report(dirs: Sequence[Path], out: Path, *, per_class_examples: int = 6) -> Path:
    """Write report.md, report.html, accuracy.png and secondary.png into ``out`` from every
    run folder under ``dirs``; return the path of report.md.

    Raises :class:`RunDirError` when no ``summary.json`` is found under ``dirs``.
    """
    dirs = [Path(d) for d in dirs]
    out = Path(out)
    runs = find_runs(dirs)
    groups = group_runs(runs)
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(groups, out / "accuracy.png")
    plot_secondary(groups, out / "secondary.png")
    header = _header_lines(dirs, out, runs, groups)
    sections = _sections(groups, per_class_examples)
    atomic_write_text(out / "report.html", _html(header, sections))
    path = out / "report.md"
    atomic_write_text(path, _markdown(header, sections))
    return path


__all__: list[str] = [
    "BASELINE",
    "find_runs",
    "generation_rows",
    "generations_table",
    "group_runs",
    "markdown_table",
    "paired_differences",
    "plot_accuracy",
    "plot_secondary",
    "process_label",
    "secondary_class_table",
    "summarize",
    "write_report",
]
