"""Markdown tables: one run's generations (the demo, ``kdgen eval``) and the report's
per-generation and ensemble tables (mean ± sample std over seeds)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdgen.report.collect import (
    Run,
    ensemble_names,
    generations_of,
    process_label,
    stage_key,
)
from kdgen.report.stats import Stat, format_stat, metric, summarize


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

    rule = "|" + "|".join(
        (":" + "-" * (w + 1)) if i < left else ("-" * (w + 1) + ":") for i, w in enumerate(widths)
    )
    return "\n".join([line(headers), rule + "|", *(line(r) for r in cells)])


@dataclass
class Table:
    """Headers and rows of text cells (``**x**`` marks bold), with a line saying what
    the cells' spread is; rendered to Markdown here and to HTML by the page."""

    headers: list[str]
    rows: list[list[str]]
    left: int = 2
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        return markdown_table(self.headers, self.rows, left=self.left)


@dataclass
class Section:
    """A report section: a title, text before and after, and maybe a table (whose notes
    follow the intro)."""

    title: str
    intro: str = ""
    table: Table | None = None
    outro: str = ""


# --- one run (demo, kdgen eval) ---------------------------------------------------------------

GENERATION_COLUMNS = ("test top-1", "Dist^C", "Dist^S", "mean top-1 prob")


def generation_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """One row per generation of a run (``c0``, ``c1``...: snapshot cycles): process,
    generation (with its model where the generations are not all one model) and its test
    metrics."""
    models = {e["generation"]: e.get("model", summary.get("model")) for e in summary["generations"]}
    mixed = len(set(models.values())) > 1
    rows = []
    for entry in summary["generations"]:
        test = entry.get("test") or {}
        g = entry["generation"]
        cycle = entry.get("stage") == "cycle"
        key = f"c{g}" if cycle else g
        rows.append(
            [
                process_label(summary),
                f"{key} ({models[g]})" if mixed else key,
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


# --- many runs: mean ± sample std over seeds --------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A metric column: where to read it, how to show it and which end is best."""

    header: str
    key: str
    scale: float
    digits: int
    best: str | None  # "max", "min" or None
    split: str = "test"

    def read(self, entry: dict[str, Any] | None) -> float | None:
        return metric(entry, self.split, self.key)


METRIC_COLUMNS = (
    Column("test top-1 (%)", "top1", 100.0, 2, "max"),
    Column("test top-5 (%)", "top5", 100.0, 2, "max"),
    Column("Dist^C", "dist_c", 1.0, 3, "min"),
    Column("Dist^S", "dist_s", 1.0, 3, "min"),
    Column("mean top-1 prob", "mean_max_prob", 1.0, 3, None),
    Column("train top-1 (%)", "top1", 100.0, 2, None, split="train"),
)

SPREAD_NOTE = (
    "Cells: mean ± sample standard deviation (ddof = 1) over the n seeds of the row; the "
    "mean alone when n = 1. The std is the spread of single runs, not the uncertainty of "
    "the mean: for differences between processes see the paired 95% intervals below."
)


def _bold_best(
    stats: list[list[Stat | None]], cells: list[list[str]], columns: Sequence[Column]
) -> None:
    """Bold, in place, the best mean of each column (ties on the shown digits all bold)."""
    for j, column in enumerate(columns):
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


def _metric_rows(
    keys: list[list[str]],
    entries: list[list[dict[str, Any] | None]],
    columns: Sequence[Column] = METRIC_COLUMNS,
) -> list[list[str]]:
    """Rows of leading key cells, then n and each metric column as mean ± std over seeds."""
    stats = [[summarize(c.read(e) for e in group) for c in columns] for group in entries]
    cells = [
        [format_stat(s, c.scale, c.digits) for s, c in zip(row, columns, strict=True)]
        for row in stats
    ]
    _bold_best(stats, cells, columns)
    return [
        [*key, str(len(group)), *row] for key, group, row in zip(keys, entries, cells, strict=True)
    ]


def _models_of(runs: Sequence[Run], g: int) -> str:
    """Generation g's model in these runs (several joined by /, where runs differ)."""
    return "/".join(dict.fromkeys(str(run.model_of(g)) for run in runs if run.generation(g)))


def _per_generation(groups: dict[str, list[Run]]) -> tuple[list[list[str]], list[list[Any]]]:
    """Key cells (process, generation, with its model where a run's generations are not all
    one model) and the runs' summary entries, one row each."""
    keys, entries = [], []
    for label, runs in groups.items():
        mixed = any(run.mixed_models for run in runs)
        for g in generations_of(runs):
            key = stage_key(runs, g)
            keys.append([label, f"{key} ({_models_of(runs, g)})" if mixed else key])
            entries.append([e for e in (run.generation(g) for run in runs) if e is not None])
    return keys, entries


def generations_summary_table(
    groups: dict[str, list[Run]], shared: dict[tuple[str, int], str] | None = None
) -> Table:
    """One row per process and generation (c0, c1, ...: snapshot cycles): each metric as
    mean ± sample std over seeds."""
    keys, entries = _per_generation(groups)
    headers = ["process", "gen", "n", *(c.header for c in METRIC_COLUMNS)]
    notes = [SPREAD_NOTE, *_shared_notes(groups, shared or {})]
    if any(run.is_snapshot for runs in groups.values() for run in runs):
        notes.append("gen cN: the model at the end of snapshot cycle N.")
    return Table(headers, _metric_rows(keys, entries), left=1, notes=notes)


def _shared_notes(groups: dict[str, list[Run]], shared: dict[tuple[str, int], str]) -> list[str]:
    notes = []
    for label, runs in groups.items():
        sharing = [r for r in runs if (label, r.seed) in shared]
        if not sharing:
            continue
        owners = sorted({shared[(label, r.seed)] for r in sharing})
        inferred = sorted(r.seed for r in sharing if not r.records_patriarch)
        source = (
            f" (seeds {', '.join(map(str, inferred))}: inferred from equal generation-0 test "
            "metrics or config.yaml, as their summaries predate kdgen's patriarch record)"
            if inferred
            else ""
        )
        notes.append(
            f"{label} generation 0 is the patriarch of {', '.join(owners)} loaded, not "
            f"trained again: the same models, not new evidence{source}."
        )
    return notes


def ensembles_table(groups: dict[str, list[Run]]) -> Table | None:
    """One row per process and ensemble (softmax average of generations); None if none."""
    keys, entries = [], []
    for label, runs in groups.items():
        mixed = any(run.mixed_models for run in runs)
        for name, members in ensemble_names(runs).items():
            models = f" ({', '.join(_models_of(runs, g) for g in members)})" if mixed else ""
            keys.append([label, f"{name} [{','.join(map(str, members))}]{models}"])
            entries.append([e for e in (run.ensemble(name) for run in runs) if e is not None])
    if not keys:
        return None
    rows = [row[:-1] for row in _metric_rows(keys, entries)]  # ensembles are not trained
    headers = ["process", "ensemble", "n", *(c.header for c in METRIC_COLUMNS[:-1])]
    spread = "Cells: mean ± sample standard deviation (ddof = 1) over the n seeds of the row."
    return Table(headers, rows, left=2, notes=[spread])


FIT_COLUMNS = (
    Column("clean train top-1 (%)", "top1", 100.0, 2, None, split="train_eval"),
    Column("clean train NLL", "nll", 1.0, 4, None, split="train_eval"),
    Column("running train top-1 (%)", "top1", 100.0, 2, None, split="train"),
    Column("val top-1 (%)", "top1", 100.0, 2, None, split="val"),
    Column("test top-1 (%)", "top1", 100.0, 2, None),
)


def fit_table(groups: dict[str, list[Run]]) -> Table | None:
    """How well each generation fits its training images: the clean evaluation of a seeded
    subset of them (``train_eval``, no augmentation) beside the running training accuracy,
    validation and test; None when no run evaluated its training images (older runs)."""
    keys, entries = _per_generation(groups)
    if not any((e or {}).get("train_eval") for group in entries for e in group):
        return None
    headers = ["process", "gen", "n", *(c.header for c in FIT_COLUMNS)]
    note = "Cells: mean ± sample standard deviation (ddof = 1) over the n seeds of the row."
    return Table(headers, _metric_rows(keys, entries, FIT_COLUMNS), left=1, notes=[note])


def chosen_table(groups: dict[str, list[Run]]) -> Table | None:
    """Per process, the single model and the ensemble each run chose on validation
    (``"chosen"`` in its summary), with their test metrics as mean ± sample std over
    seeds; None when no run chose (no validation split)."""
    keys, entries = [], []
    for label, runs in groups.items():
        chosen = [run.summary["chosen"] for run in runs if run.summary.get("chosen")]
        if not chosen:
            continue
        picks = ",".join(str(c["generation"]) for c in chosen)
        keys.append([label, f"single ({picks})", chosen[0]["metric"]])
        entries.append(chosen)
        ensembles = [c["ensemble"] for c in chosen if c.get("ensemble")]
        if ensembles:
            names = ",".join(e["name"] for e in ensembles)
            keys.append([label, f"ensemble ({names})", chosen[0]["metric"]])
            entries.append(ensembles)
    if not keys:
        return None
    rows = [row[:-1] for row in _metric_rows(keys, entries)]  # no training metrics here
    headers = ["process", "chosen (per seed)", "on", "n", *(c.header for c in METRIC_COLUMNS[:-1])]
    note = "Cells: mean ± sample standard deviation (ddof = 1) over the n seeds of the row."
    return Table(headers, rows, left=3, notes=[note])


def chosen_line(summary: dict[str, Any]) -> str | None:
    """One line on what a run chose on validation (None: it chose nothing)."""
    chosen = summary.get("chosen")
    if not chosen:
        return None
    test = (chosen.get("test") or {}).get("top1")
    line = (
        f"chosen on {chosen['metric']}: {chosen.get('stage', 'generation')} "
        f"{chosen['generation']} (test top-1 {_cell(test, 4)})"
    )
    ensemble = chosen.get("ensemble")
    if ensemble:
        test = (ensemble.get("test") or {}).get("top1")
        members = ",".join(map(str, ensemble["members"]))
        line += f"; ensemble {ensemble['name']} [{members}] (test top-1 {_cell(test, 4)})"
    return f"{line}. {chosen['reason']}."


LOSS_COLUMNS = (
    Column("loss", "loss", 1.0, 4, None, split="train"),
    Column("loss_ce", "loss_ce", 1.0, 4, None, split="train"),
    Column("loss_reg", "loss_reg", 1.0, 4, None, split="train"),
    Column("loss_kd", "loss_kd", 1.0, 4, None, split="train"),
)


def training_loss_table(groups: dict[str, list[Run]]) -> Table | None:
    """The last epoch's training loss and its parts per process and generation, mean ±
    sample std over seeds; None when no run logged the parts (older runs)."""
    keys, entries = _per_generation(groups)
    found = {key for group in entries for e in group for key in (e or {}).get("train") or {}}
    if not found & {"loss_ce", "loss_reg", "loss_kd"}:
        return None
    columns = [c for c in LOSS_COLUMNS if c.key in found]
    headers = ["process", "gen", "n", *(c.header for c in columns)]
    note = "Cells: mean ± sample standard deviation (ddof = 1) over the n seeds of the row."
    return Table(headers, _metric_rows(keys, entries, columns), left=1, notes=[note])
