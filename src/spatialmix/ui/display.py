"""What the user sees: the console and result tables (terminal, Markdown, CSV, JSON).

Progress bars are in :mod:`spatialmix.ui.progress`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


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
            table.add_column(header)
        for cells in self.cells():
            table.add_row(*cells)
        return table

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

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([h for _, h, _ in self.columns])
        writer.writerows(self.cells())
        return out.getvalue()

    def print(self, file=None) -> None:
        out = Console(file=file or sys.stdout)
        if not out.is_terminal:  # logs and pipes: do not squeeze the table into 80 columns
            out = Console(file=file or sys.stdout, width=160)
        out.print(self.to_rich())
