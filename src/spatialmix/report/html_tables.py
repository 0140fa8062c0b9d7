"""The report's tables in HTML: cells that never break a word, notes under the table, and one block of
``header  value`` lines per row in a window narrower than the table's columns need.

Words are never broken inside (a verdict cut into "suppor/ts" reads as two words): a cell wraps at
spaces only and the verdict stays on one line. A table whose columns cannot fit side by side in the
window shows each row as a block instead (the verdict table's ten columns at 800 pixels); past that,
a table too wide for the window scrolls inside its wrapper rather than widen the page.
"""

from __future__ import annotations

import html
import math
import re

from spatialmix.analysis.claims import VERDICT_WORDS
from spatialmix.ui.display import ResultTable

TABLE_STYLE = """
.table-wrap { max-width: 100%; overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
caption { font-weight: bold; text-align: left; padding: 0.3em 0;
          width: max-content; max-width: min(60em, 90vw); }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top;
         overflow-wrap: normal; word-break: normal; hyphens: none; max-width: 32em; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
tr[title] { cursor: help; } td.note { color: #555; text-align: right; }
ol.notes { font-size: 0.85em; color: #444; }
td[class^="verdict-"], td.nowrap, .nb { white-space: nowrap; }
td.verdict-supports { background: #dff3df !important; font-weight: bold; }
td.verdict-contradicts { background: #f8dcdc !important; font-weight: bold; }
td.verdict-inconclusive { background: #fff4d6 !important; } td.verdict-not-run { color: #777; }
"""
# A row as a block: each cell on its own line after its column's header (the cell's data-label).
# TABLE stands for the selector of the tables it applies to.
STACKED_STYLE = """
TABLE, TABLE caption, TABLE tbody, TABLE tr { display: block; }
TABLE thead { position: absolute; left: -9999px; }
TABLE tr { border: 1px solid #ccc; margin: 0 0 0.8em; }
TABLE td { display: flow-root; border: none; border-bottom: 1px solid #eee; max-width: none;
           padding-left: 12.6em; text-align: left; overflow-wrap: anywhere; }
TABLE td::before { content: attr(data-label); float: left; width: 11.5em; margin-left: -12em;
                   font-weight: bold; color: #222; overflow-wrap: normal; }
"""
# What a character of a table needs, at most, in the page's 0.85em sans-serif (measured in Chromium:
# 7.0 to 8.4 pixels over the report's tables, bold headers included), and the page's side margins.
PIXELS_PER_CHARACTER = 8.5
PAGE_MARGINS = 32
# A column shown as a numbered note under its table and as the tooltip of its row (the verdict
# table's long "how": intervals, McNemar per seed), not as a column squeezed beside the others.
NOTE_COLUMNS = ("how",)
# A number with its unit ("+0.52 pts/σ") is one word: never cut after its slash.
NOWRAP_COLUMNS = ("estimate",)


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def whole_words(text) -> str:
    """``text`` escaped, each word with a slash in it ("pts/σ", "2/255") kept on one line: browsers may
    break a line after a slash, which cut units and budgets in two."""
    return re.sub(r"\S*/\S*", lambda m: f'<span class="nb">{m.group(0)}</span>', esc(text))


def _td(cell: str, column: str, header: str) -> str:
    label = f' data-label="{esc(header)}"'
    if column == "verdict" and cell in VERDICT_WORDS:  # the word of a verdict, coloured
        return f'<td class="verdict-{cell.replace(" ", "-")}"{label}>{esc(cell)}</td>'
    if column in NOWRAP_COLUMNS:
        return f'<td class="nowrap"{label}>{esc(cell)}</td>'
    return f"<td{label}>{whole_words(cell)}</td>"


def _longest_word(text: str) -> int:
    return max(map(len, text.split()), default=0)


def narrowest_width(table: ResultTable, shown: list[int]) -> int:
    """The characters the ``shown`` columns need side by side when every cell wraps at each space (an
    estimate or a verdict word does not wrap at all), with two for each cell's padding."""
    cells = table.cells()
    width = 0
    for i in shown:
        key, header, _ = table.columns[i]
        whole = key in NOWRAP_COLUMNS or key == "verdict"
        longest = [len(c[i]) if whole else _longest_word(c[i]) for c in cells]
        width += 2 + max([_longest_word(header), *longest])
    return width


def stacking_width(characters: int) -> int:
    """The window width in pixels below which a table ``characters`` wide shows a block per row."""
    return math.ceil(characters * PIXELS_PER_CHARACTER) + PAGE_MARGINS


def stacked_style(page: str) -> str:
    """The style that stacks each table of ``page`` in a window narrower than its columns need."""
    widths = sorted({int(w) for w in re.findall(r'<table class="stack-below-(\d+)">', page)})
    return "".join(
        f"@media (max-width: {w - 1}px) {{{STACKED_STYLE.replace('TABLE', f'table.stack-below-{w}')}}}\n"
        for w in widths
    )


def html_table(table: ResultTable) -> str:
    """A table in a scrolling wrapper, so that no table is ever wider than the page; a note column
    (`NOTE_COLUMNS`) becomes a numbered list under it and each row's tooltip."""
    keys = [k for k, _, _ in table.columns]
    shown = [i for i, k in enumerate(keys) if k not in NOTE_COLUMNS]
    noted = [i for i, k in enumerate(keys) if k in NOTE_COLUMNS]
    notes: list[str] = []
    rows = []
    for cells in table.cells():
        note = "; ".join(cells[i] for i in noted if cells[i] not in ("", "-"))
        tds = "".join(_td(cells[i], keys[i], table.columns[i][1]) for i in shown)
        if noted:
            if note:
                notes.append(note)
            tds += f'<td class="note" data-label="note">{len(notes) if note else ""}</td>'
        rows.append(f'<tr title="{esc(note)}">{tds}</tr>' if note else f"<tr>{tds}</tr>")
    head = "".join(f"<th>{esc(table.columns[i][1])}</th>" for i in shown) + ("<th>note</th>" if noted else "")
    note_width = 2 + max(len("note"), len(str(len(notes)))) if noted else 0
    stack_below = stacking_width(narrowest_width(table, shown) + note_width)
    body = "\n".join(rows)
    page = (
        f'<div class="table-wrap"><table class="stack-below-{stack_below}">\n<caption>{esc(table.title)}'
        f"</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table></div>"
    )
    if notes:
        headers = " and ".join(table.columns[i][1] for i in noted)
        items = "".join(f"<li>{esc(n)}</li>" for n in notes)
        page += (
            f"\n<details><summary>Notes: {esc(headers)} of each line (also shown when the pointer "
            f'rests on a row)</summary>\n<ol class="notes">{items}</ol>\n</details>'
        )
    return page
