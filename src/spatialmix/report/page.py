"""The report's page: its building blocks (sections of paragraphs, tables and images) and how they
are written out, as one self-contained HTML file and as Markdown.

The HTML needs nothing else to be read: images are embedded as base64, the style sheet is
inline, there is no script and no external URL, and no table is wider than the page
(`spatialmix.report.html_tables`).
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field

import numpy as np

from spatialmix.io.figures import save_png
from spatialmix.report.html_tables import TABLE_STYLE, esc, html_table, stacked_style, whole_words
from spatialmix.ui.display import ResultTable
from spatialmix.version import __version__


@dataclass
class Image:
    """An image embedded in the page; ``width`` and ``height`` in pixels (0: unknown)."""

    png: bytes
    caption: str
    mime: str = "image/png"
    width: int = 0
    height: int = 0

    def __post_init__(self):
        if not self.width and self.mime == "image/png":
            self.width, self.height = png_size(self.png)

    @property
    def strip(self) -> bool:
        """A long row of panels (an older study's figure, one panel per run): at page width its text
        would be a few pixels tall, and past 16,384 pixels browsers do not draw it at all."""
        return (
            self.mime == "image/png"
            and self.width > STRIP_MIN_WIDTH
            and self.width > STRIP_ASPECT * self.height
        )

    @property
    def tall(self) -> bool:
        """Many rows of panels (one per run of a study): behind its caption, opened on request, so that
        it does not push the rest of its section a few screens down."""
        return self.height > TALL_ASPECT * self.width


@dataclass
class Details:
    """Something long behind a one-line summary the reader clicks open: a table, or a list of lines."""

    summary: str
    content: ResultTable | list[str]


@dataclass
class Bullets:
    """A list of short lines (the headline of each claim)."""

    lines: list[str]


@dataclass
class Section:
    id: str
    title: str
    items: list = field(default_factory=list)  # str (a paragraph), ResultTable, Image, Details, Bullets
    absent: str | None = None

    @property
    def present(self) -> bool:
        return bool(self.items) and self.absent is None


STRIP_MIN_WIDTH, STRIP_ASPECT, TALL_ASPECT = 1600, 5, 1.5
LONG_TABLE = 40  # rows; a longer table is folded behind its title (a summary stands above it)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header, (0, 0) when it is not a PNG."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return 0, 0
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def wrap_strip(image: Image, per_row: int = 4) -> Image:
    """A strip of panels cut into rows about ``per_row`` panels long, stacked: the same panels at their
    own size, now a page wide. A panel is taken to be as wide as the strip is tall (the square panels
    of ``plot_robustness`` before it wrapped them); each cut falls on the blank column between two
    panels nearest to where a row would end."""
    from matplotlib.image import imread, imsave

    pixels = imread(io.BytesIO(image.png), format="png")
    height, width = pixels.shape[:2]
    row = per_row * height
    blank = (pixels[..., :3] > 0.99).all(axis=(0, 2))  # columns of background only
    pieces, start = [], 0
    while start < width:
        end = min(start + row, width)
        if end < width:  # back up to a gap between panels, at most one panel
            gaps = np.flatnonzero(blank[max(start + 1, end - height) : end + 1])
            end = max(start + 1, end - height) + int(gaps[-1]) if gaps.size else end
        pieces.append(pixels[:, start:end])
        start = end
    wrapped = np.ones(
        (len(pieces) * height, max(p.shape[1] for p in pieces), *pixels.shape[2:]), pixels.dtype
    )
    for r, piece in enumerate(pieces):
        wrapped[r * height : (r + 1) * height, : piece.shape[1]] = piece
    buffer = io.BytesIO()
    imsave(buffer, wrapped, format="png")
    caption = f"{image.caption} (a row of panels {width:,} pixels long, cut into rows of {per_row} panels.)"
    return Image(buffer.getvalue(), caption)


def figure_image(fig, caption: str) -> Image:
    """A matplotlib figure drawn for the page (at 100 dpi: the page is read on a screen)."""
    return Image(save_png(fig, dpi=100), caption)


def details_table(table: ResultTable) -> Details:
    """A table behind its title and its number of rows."""
    return Details(f"{table.title} ({len(table.rows)} rows)", table)


def fold(table: ResultTable) -> ResultTable | Details:
    """``table``, or behind its title when it is longer than `LONG_TABLE` rows."""
    return details_table(table) if len(table.rows) > LONG_TABLE else table


def hide_paths(sections: list[Section], names: dict[str, str]) -> None:
    """Replace, in every text of ``sections``, each path of ``names`` by its name on the page (the
    messages, commands and tables the sections quote name the folders they read)."""

    def clean(value):
        if not isinstance(value, str):
            return value
        for path, name in names.items():
            value = value.replace(path, name)
        return value

    def clean_table(table: ResultTable) -> None:
        table.title = clean(table.title)
        table.rows = [{k: clean(v) for k, v in row.items()} for row in table.rows]

    for section in sections:
        section.absent = clean(section.absent)
        for i, item in enumerate(section.items):
            if isinstance(item, str):
                section.items[i] = clean(item)
            elif isinstance(item, ResultTable):
                clean_table(item)
            elif isinstance(item, Image):
                item.caption = clean(item.caption)
            elif isinstance(item, Bullets):
                item.lines = [clean(line) for line in item.lines]
            elif isinstance(item, Details):
                item.summary = clean(item.summary)
                if isinstance(item.content, ResultTable):
                    clean_table(item.content)
                else:
                    item.content = [clean(line) for line in item.content]


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

# A figure wider than the page is scaled down to it (a strip of panels was cut into rows). The tables'
# style is in spatialmix.report.html_tables.
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1300px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.absent { color: #777; font-style: italic; } .meta { color: #555; font-size: 0.9em; }
nav ul { columns: 2; } code { background: #f4f4f4; padding: 0 0.2em; overflow-wrap: anywhere; }
details { margin: 0.5em 0 1em; } summary { cursor: pointer; color: #333; }
ul.headlines { padding-left: 1.2em; } ul.headlines li { margin: 0.2em 0; }
"""


def html_image(image: Image) -> str:
    data = base64.b64encode(image.png).decode("ascii")
    img = f'<img alt="{esc(image.caption)}" src="data:{image.mime};base64,{data}">'
    figure = f"<figure>{img}<figcaption>{esc(image.caption)}</figcaption></figure>"
    if image.tall:
        return f"<details><summary>Figure (open it): {esc(image.caption)}</summary>\n{figure}\n</details>"
    return figure


def html_item(item) -> str:
    if isinstance(item, str):
        return f"<p>{esc(item)}</p>"
    if isinstance(item, ResultTable):
        return html_table(item)
    if isinstance(item, Image):
        return html_image(item)
    if isinstance(item, Bullets):
        lines = "".join(f"<li>{whole_words(line)}</li>" for line in item.lines)
        return f'<ul class="headlines">{lines}</ul>'
    if isinstance(item, Details):
        if isinstance(item.content, ResultTable):
            inner = html_table(item.content)
        else:
            inner = "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in item.content) + "</ul>"
        return f"<details><summary>{esc(item.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"cannot render {type(item).__name__} in a report")


def render_html(sections: list[Section], sources: list[str], created: str) -> str:
    """The page; ``sources``: the inputs as the page names them (no path of the machine it was made on)."""
    nav = "".join(
        f'<li><a href="#{s.id}">{esc(s.title)}</a>{"" if s.present else " (absent)"}</li>' for s in sections
    )
    body = []
    for s in sections:
        state = "present" if s.present else "absent"
        body.append(f'<section id="{s.id}" class="{state}-section">')
        body.append(f"<h2>{esc(s.title)}</h2>")
        if s.absent is not None:
            body += [html_item(i) for i in s.items if isinstance(i, str)]
            body.append(f'<p class="absent">Absent: {esc(s.absent)}.</p>')
        else:
            body += [html_item(i) for i in s.items]
        body.append("</section>")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>spatialmix report</title>",
        f"<style>{STYLE}{TABLE_STYLE}{stacked_style(chr(10).join(body))}</style>",
        "</head>",
        "<body>",
        "<h1>spatialmix report</h1>",
        f'<p class="meta">Written {esc(created)} by spatialmix {esc(__version__)} from: '
        + ", ".join(f"<code>{esc(p)}</code>" for p in sources)
        + "</p>",
        f"<nav><ul>{nav}</ul></nav>",
        *body,
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


# --------------------------------------------------------------------------- Markdown


def markdown_item(item) -> list[str]:
    if isinstance(item, ResultTable):
        return [item.to_markdown()]
    if isinstance(item, Image):
        return [f"_Figure in the HTML report: {item.caption}_", ""]
    if isinstance(item, Bullets):
        return [f"- {line}" for line in item.lines] + [""]
    if isinstance(item, Details):
        if isinstance(item.content, ResultTable):
            return [item.content.to_markdown()]
        return [f"{item.summary}:", ""] + [f"- {line}" for line in item.content] + [""]
    return [str(item), ""]


def render_markdown(sections: list[Section], sources: list[str], created: str) -> str:
    lines = [
        "# spatialmix report",
        "",
        f"Written {created} by spatialmix {__version__} from: " + ", ".join(f"`{p}`" for p in sources),
        "",
    ]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for item in s.items:
            lines += markdown_item(item)
        if s.absent is not None:
            lines += [f"_Absent: {s.absent}._", ""]
    return "\n".join(lines)
