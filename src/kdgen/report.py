"""Tables from run summaries: the demo's table and ``kdgen eval``'s."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 4) -> str:
    """A Markdown table with right-aligned number columns, readable in a terminal too."""
    cells = [[_cell(v, digits) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


GENERATION_COLUMNS = ("test top-1", "Dist^C", "Dist^S", "mean top-1 prob")


def generation_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """One row per generation of a run: process, generation and its test metrics."""
    rows = []
    for entry in summary["generations"]:
        test = entry.get("test") or {}
        rows.append(
            [
                summary["process"]
                + (
                    ""
                    if summary["regularizer"] == "tsd" or summary["eta"] == 1.0
                    else f" {summary['regularizer'].upper()}"
                ),
                entry["generation"],
                test.get("top1"),
                test.get("dist_c"),
                test.get("dist_s"),
                test.get("mean_max_prob"),
            ]
        )
    return rows


def generations_table(summaries: Iterable[dict[str, Any]]) -> str:
    rows = [row for summary in summaries for row in generation_rows(summary)]
    return markdown_table(("process", "gen", *GENERATION_COLUMNS), rows)
