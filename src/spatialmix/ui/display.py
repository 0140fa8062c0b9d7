"""What the user sees: progress bars and result tables (terminal, Markdown, CSV, JSON)."""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)


class TrainProgress:
    """A progress bar per epoch with loss, accuracy, images/s and ETA; one summary line per epoch.

    Redraws at most a few times a second, so reading the running loss (a device sync) does not
    slow training down.
    """

    def __init__(
        self, enabled: bool, total_epochs: int, steps_per_epoch: int, title: str = "train", score: str = "acc"
    ):
        self.enabled = enabled
        self.score = score
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.title = title
        self._progress = None
        self._task = None
        self._last = 0.0

    def __enter__(self):
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(
                f"{self.title} epoch {epoch + 1}/{self.total_epochs}", total=self.steps_per_epoch, stats=""
            )

    def update(self, step: int, loss_sum, score_sum, seen: int, elapsed: float) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if now - self._last < 0.25 and step < self.steps_per_epoch:
            return
        self._last = now
        stats = (
            f"loss {loss_sum.item() / seen:.3f} {self.score} {score_sum.item() / seen:.3f} "
            f"{seen / max(elapsed, 1e-9):.0f} img/s"
        )
        self._progress.update(self._task, completed=step, stats=stats)

    def end_epoch(self, m: dict) -> None:
        if self.enabled:
            tests = " ".join(f"{k[5:]} {v:.4f}" for k, v in m.items() if k.startswith("test_"))
            console.print(
                f"{self.title} epoch {m['epoch']}/{self.total_epochs}: train loss {m['train_loss']:.4f} "
                f"{self.score} {m[f'train_{self.score}']:.4f} | test {tests} | "
                f"{m['images_per_s']:.0f} img/s, {m['epoch_time']:.1f} s",
                highlight=False,
            )


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


class ProgressBar:
    """The progress callback of :func:`evaluate_robustness`: what runs, gradient steps spent, steps/s.

    The engine only says what it is doing; how that is shown (and any estimate of the time left)
    is decided here.
    """

    def __init__(self, label: str):
        self.label = label
        self._bar = None
        self._last = 0.0

    @classmethod
    def for_setting(cls, progress, label: str):
        if callable(progress) and not isinstance(progress, bool):
            return _Passthrough(progress)
        return cls(label) if progress else _Passthrough(None)

    def __enter__(self):
        from rich.progress import Progress, TextColumn, TimeElapsedColumn

        self._started = time.perf_counter()
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console, transient=True
        )
        self._bar.__enter__()
        self._task = self._bar.add_task(self.label, total=None)
        return self

    def __exit__(self, *exc):
        self._bar.__exit__(*exc)

    def __call__(self, stage: str, gradient_steps: int) -> None:
        now = time.perf_counter()
        if now - self._last < 0.2:
            return
        self._last = now
        rate = gradient_steps / max(now - self._started, 1e-9)
        self._bar.update(
            self._task, description=f"{self.label}: {stage} ({gradient_steps:,} steps, {rate:,.0f} steps/s)"
        )


class _Passthrough:
    def __init__(self, callback):
        self.callback = callback

    def __enter__(self):
        return self.callback

    def __exit__(self, *exc):
        return None
