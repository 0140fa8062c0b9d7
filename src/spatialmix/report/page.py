"""The report's page: its building blocks (sections of paragraphs, tables and images) and how they
are written out, as one self-contained HTML file and as Markdown.

The HTML needs nothing else to be read: images are embedded as base64, the style sheet is
inline, there is no script and no external URL, and every table sits in a scrolling wrapper so
that none is wider than the page.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field

from spatialmix.analysis.claims import VERDICT_WORDS
from spatialmix.io.figures import save_png
from spatialmix.ui.display import ResultTable
from spatialmix.version import __version__


@dataclass
class Image:
    """An image embedded in the page."""

    png: bytes
    caption: str
    mime: str = "image/png"


@dataclass
class Section:
    id: str
    title: str
    items: list = field(
        default_factory=list
    )  # str (a paragraph), ResultTable, Image, ("details", ResultTable)
    absent: str | None = None

    @property
    def present(self) -> bool:
        return bool(self.items) and self.absent is None


def figure_image(fig, caption: str) -> Image:
    """A matplotlib figure drawn for the page (at 100 dpi: the page is read on a screen)."""
    return Image(save_png(fig, dpi=100), caption)


# --------------------------------------------------------------------------- tables from JSON


def format_value(value) -> str:
    """A table cell from JSON: ints with separators, floats to 4 significant digits, [mean, std] pairs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        mean, std = value
        return (
            f"{format_value(float(mean))} ± {format_value(float(std))}" if std else format_value(float(mean))
        )
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def rows_table(title: str, rows: list[dict]) -> ResultTable:
    """A ResultTable from JSON rows whose columns nobody told us: the union of their keys, in order."""
    keys: list[str] = []
    for row in sorted(rows, key=len, reverse=True):  # the fullest row sets the order
        keys += [k for k in row if k not in keys]
    table = ResultTable(title, [(k, k.replace("_", " "), "") for k in keys])
    for row in rows:
        table.add(**{k: format_value(row.get(k)) if k in row else None for k in keys})
    return table


def saved_table(title: str, rows: list[dict], columns) -> ResultTable:
    """A table from results.json: with its saved (key, header, format) columns when it has them."""
    if not columns:
        return rows_table(title, rows)
    table = ResultTable(title, [tuple(c) for c in columns])
    for row in rows:
        # JSON turned (mean, std) tuples into lists; ResultTable formats tuples as "mean ± std"
        table.add(**{k: tuple(v) if isinstance(v, list) and len(v) == 2 else v for k, v in row.items()})
    try:
        table.cells()
    except (TypeError, ValueError):  # a saved format that does not fit the saved values
        return rows_table(title, rows)
    return table


# --------------------------------------------------------------------------- HTML

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1300px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
caption { font-weight: bold; text-align: left; padding: 0.3em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; max-width: 32em; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.absent { color: #777; font-style: italic; } .meta { color: #555; font-size: 0.9em; }
nav ul { columns: 2; } code { background: #f4f4f4; padding: 0 0.2em; overflow-wrap: anywhere; }
td.verdict-supports { background: #dff3df !important; font-weight: bold; }
td.verdict-contradicts { background: #f8dcdc !important; font-weight: bold; }
td.verdict-inconclusive { background: #fff4d6 !important; } td.verdict-not-run { color: #777; }
"""


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _td(cell: str, column: str) -> str:
    if column == "verdict" and cell in VERDICT_WORDS:  # the word of a verdict, coloured
        return f'<td class="verdict-{cell.replace(" ", "-")}">{_esc(cell)}</td>'
    return f"<td>{_esc(cell)}</td>"


def html_table(table: ResultTable) -> str:
    """A table in a scrolling wrapper, so that no table is ever wider than the page."""
    head = "".join(f"<th>{_esc(h)}</th>" for _, h, _ in table.columns)
    keys = [k for k, _, _ in table.columns]
    body = "\n".join(
        "<tr>" + "".join(_td(c, k) for c, k in zip(cells, keys)) + "</tr>" for cells in table.cells()
    )
    return (
        f'<div class="table-wrap"><table>\n<caption>{_esc(table.title)}</caption>\n<thead><tr>{head}</tr>'
        f"</thead>\n<tbody>\n{body}\n</tbody>\n</table></div>"
    )


def html_item(item) -> str:
    if isinstance(item, str):
        return f"<p>{_esc(item)}</p>"
    if isinstance(item, ResultTable):
        return html_table(item)
    if isinstance(item, Image):
        data = base64.b64encode(item.png).decode("ascii")
        return (
            f'<figure><img alt="{_esc(item.caption)}" src="data:{item.mime};base64,{data}">'
            f"<figcaption>{_esc(item.caption)}</figcaption></figure>"
        )
    if isinstance(item, tuple) and item[0] == "details":
        table = item[1]
        return (
            f"<details><summary>{_esc(table.title)} ({len(table.rows)} rows)</summary>\n"
            f"{html_table(table)}\n</details>"
        )
    raise TypeError(f"cannot render {type(item).__name__} in a report")


def render_html(sections: list[Section], paths: list[str], created: str) -> str:
    nav = "".join(
        f'<li><a href="#{s.id}">{_esc(s.title)}</a>{"" if s.present else " (absent)"}</li>' for s in sections
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<title>spatialmix report</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<h1>spatialmix report</h1>",
        f'<p class="meta">Written {_esc(created)} by spatialmix {_esc(__version__)} from: '
        + ", ".join(f"<code>{_esc(p)}</code>" for p in paths)
        + "</p>",
        f"<nav><ul>{nav}</ul></nav>",
    ]
    for s in sections:
        state = "present" if s.present else "absent"
        parts.append(f'<section id="{s.id}" class="{state}-section">')
        parts.append(f"<h2>{_esc(s.title)}</h2>")
        if s.absent is not None:
            parts += [html_item(i) for i in s.items if isinstance(i, str)]
            parts.append(f'<p class="absent">Absent: {_esc(s.absent)}.</p>')
        else:
            parts += [html_item(i) for i in s.items]
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- Markdown


def render_markdown(sections: list[Section], paths: list[str], created: str) -> str:
    lines = [
        "# spatialmix report",
        "",
        f"Written {created} by spatialmix {__version__} from: " + ", ".join(f"`{p}`" for p in paths),
        "",
    ]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for item in s.items:
            if isinstance(item, tuple):
                item = item[1]
            if isinstance(item, ResultTable):
                lines.append(item.to_markdown())
            elif isinstance(item, Image):
                lines += [f"_Figure in the HTML report: {item.caption}_", ""]
            elif isinstance(item, str):
                lines += [item, ""]
        if s.absent is not None:
            lines += [f"_Absent: {s.absent}._", ""]
    return "\n".join(lines)
