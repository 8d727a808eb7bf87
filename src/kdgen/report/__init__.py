"""Tables and figures from run folders: the demo's table, ``kdgen eval``'s and ``kdgen report``.

:func:`write_report` reads every ``summary.json`` under the given folders (single runs or
``kdgen sweep`` folders), groups the runs by process label (seeds are the replicates) and
writes ``report.md``, ``report.html``, ``accuracy.png`` and ``secondary.png``.

Parts: :mod:`~kdgen.report.collect` finds and groups runs, :mod:`~kdgen.report.stats`
holds the spreads and t-intervals, :mod:`~kdgen.report.tables` and
:mod:`~kdgen.report.differences` the tables, :mod:`~kdgen.report.secondary` the per-class
view, :mod:`~kdgen.report.figures` the plots, :mod:`~kdgen.report.html_page` the HTML page
and :mod:`~kdgen.report.document` puts them together.
"""

from kdgen.report.collect import BASELINE, Run, find_runs, group_runs, process_label
from kdgen.report.differences import paired_differences
from kdgen.report.document import write_report
from kdgen.report.figures import plot_accuracy, plot_secondary
from kdgen.report.secondary import secondary_class_table
from kdgen.report.stats import Interval, Stat, format_stat, summarize, t_interval
from kdgen.report.tables import (
    METRIC_COLUMNS,
    chosen_line,
    generation_rows,
    generations_table,
    markdown_table,
)

__all__: list[str] = [
    "BASELINE",
    "METRIC_COLUMNS",
    "Interval",
    "Run",
    "Stat",
    "chosen_line",
    "find_runs",
    "format_stat",
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
    "t_interval",
    "write_report",
]
