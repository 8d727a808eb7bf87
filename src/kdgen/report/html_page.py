"""The report as one HTML page: the same header, figures, sections and tables as
``report.md``."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from kdgen.report.tables import Section, Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f0f0f0; }
td.r { text-align: right; white-space: nowrap; }
td.l { text-align: left; }
img { max-width: 100%; display: block; margin: 1em 0; }
code { background: #f4f4f4; padding: 0.1em 0.3em; }
p.note { color: #444; font-size: 0.9em; margin: 0.4em 0; }
"""


def _cell(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _text(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", escaped)


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"l" if i < table.left else "r"}">{_cell(c)}</td>'
            for i, c in enumerate(row)
        )
        + "</tr>\n"
        for row in table.rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def page(header: Sequence[str], figures: Sequence[tuple[str, str]], sections: list[Section]) -> str:
    """The whole page: header lines, figures (file, caption) and sections."""
    body = ["<h1>kdgen report</h1>", "<p>" + "<br>\n".join(_text(h) for h in header) + "</p>"]
    for file, caption in figures:
        body.append(f'<figure><img src="{file}" alt="{html.escape(caption)}">')
        body.append(f"<figcaption>{_text(caption)}</figcaption></figure>")
    for section in sections:
        body += [f"<h2>{html.escape(section.title)}</h2>", f"<p>{_text(section.intro)}</p>"]
        if section.table is not None:
            body += [f'<p class="note">{_text(note)}</p>' for note in section.table.notes]
            body.append(table_html(section.table))
        if section.outro:
            body.append(f"<p>{_text(section.outro)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>kdgen report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
