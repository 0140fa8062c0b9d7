"""What the user sees: the console and result tables (terminal, Markdown, CSV, JSON, pandas).

Progress bars are in `spatialmix.ui.progress`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
import sys

import pandas as pd
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def say(message: str) -> None:
    """One line of news on stderr (rich markup allowed), never wrapped: a piped log keeps one line
    per event, whole, for grep."""
    console.print(message, highlight=False, soft_wrap=True)


# The width of a table written to a pipe or a log file: what an editor or a pager shows whole.
PIPE_WIDTH = 100


def fit_width(out: Console) -> int:
    """The width a table must fit: ``COLUMNS`` when set, the terminal's when printing to one, else
    `PIPE_WIDTH` (a pipe or a log file)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return out.width if out.is_terminal else PIPE_WIDTH


def _render(renderable, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width).print(renderable)
    return out.getvalue()


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_cell(value, fmt: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:{fmt}} ± {std:{fmt}}" if std else f"{mean:{fmt}}"
    return f"{value:{fmt}}" if fmt and isinstance(value, (int, float)) else str(value)


class ResultTable:
    """Rows of named columns that render to the terminal, Markdown and CSV alike."""

    def __init__(self, title: str, columns: list[tuple[str, str, str]]):
        """``columns``: (key, header, format spec) triples."""
        self.title = title
        self.columns = columns
        self.rows: list[dict] = []

    def add(self, **row) -> None:
        self.rows.append(row)

    def cells(self) -> list[list[str]]:
        return [[format_cell(row.get(key), fmt) for key, _, fmt in self.columns] for row in self.rows]

    def to_rich(self) -> Table:
        table = Table(title=self.title)
        for _, header, _ in self.columns:
            table.add_column(header, overflow="fold")
        for cells in self.cells():
            table.add_row(*cells)
        return table

    def to_records(self) -> Table:
        """The rows as blocks of ``header  value`` lines, one block per row: what a terminal too
        narrow for the table's columns shows, so that no word is cut or truncated."""
        grid = Table.grid(padding=(0, 2))
        grid.title = self.title
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for n, cells in enumerate(self.cells()):
            if n:
                grid.add_row("", "")
            for (_, header, _), cell in zip(self.columns, cells):
                grid.add_row(header, cell)
        return grid

    def to_markdown(self) -> str:
        headers = [h for _, h, _ in self.columns]
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(headers) + " |",
            "|" + "|".join("---" for _ in headers) + "|",
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in self.cells()]
        return "\n".join(lines) + "\n"

    def to_pandas(self) -> pd.DataFrame:
        """The rows as a DataFrame, one column per column of the table, named by its header, holding the
        values as they were added (numbers stay numbers, unformatted; None where a row has none). A
        column of (mean, std) pairs is two: ``HEADER`` (the mean) and ``HEADER std``."""
        frame = {}
        for key, header, _ in self.columns:
            values = [row.get(key) for row in self.rows]
            if any(isinstance(v, tuple) for v in values):
                frame[header] = [v[0] if isinstance(v, tuple) else v for v in values]
                frame[f"{header} std"] = [v[1] if isinstance(v, tuple) else None for v in values]
            else:
                frame[header] = values
        return pd.DataFrame(frame)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([h for _, h, _ in self.columns])
        writer.writerows(self.cells())
        return out.getvalue()

    def _words(self) -> set[str]:
        """Every word of the headers and cells: what a rendering must show whole."""
        headers = [header for _, header, _ in self.columns]
        return {word for cells in [headers, *self.cells()] for cell in cells for word in cell.split()}

    def print(self, file=None) -> None:
        """The table at the width of the terminal (``COLUMNS``; `PIPE_WIDTH` in a pipe or a log);
        where its columns cannot fit without cutting a word, one block of ``header  value`` lines per
        row."""
        file = file or sys.stdout
        out = Console(file=file)
        width = fit_width(out)
        table = self.to_rich()
        if not all(word in _render(table, width) for word in self._words()):  # rich had to cut a word
            table = self.to_records()
        if out.is_terminal:
            Console(file=file, width=width).print(table)
        else:  # without the blanks that pad each line to the width
            file.write("\n".join(line.rstrip() for line in _render(table, width).splitlines()) + "\n")
