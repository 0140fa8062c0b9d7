"""Progress on the terminal: one live bar implementation, used by training and by attacks.

`LiveBar` owns the rich display on stderr and decides when it is worth redrawing (a few
times a second: reading a running loss syncs the device, so redrawing every step would slow the
work down). `TrainProgress` and `AttackProgress` only say what to show.
"""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

from spatialmix.ui.display import console, say

# A terminal too narrow for one line wraps the texts (the run's name, its loss and speed) onto a second
# line, never the bar, the elapsed time or the ETA: each keeps its width.
MIN_BAR = 10


def time_columns() -> tuple[ProgressColumn, ...]:
    """Elapsed time and ETA, never wrapped (new columns per display: rich caches in them per task)."""
    return (
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        TextColumn("ETA", table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True)),
    )


class LiveBar:
    """A transient rich progress display, or nothing at all when ``enabled`` is false."""

    def __init__(self, enabled: bool, columns: tuple[ProgressColumn, ...], interval: float):
        self.enabled = enabled
        self.columns = columns
        self.interval = interval
        self.progress: Progress | None = None
        self._last = 0.0

    def __enter__(self):
        if self.enabled:
            self.progress = Progress(*self.columns, console=console, transient=True)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def due(self, force: bool = False) -> bool:
        """Whether to redraw now: a display is shown and ``interval`` has passed (or ``force``)."""
        if self.progress is None:
            return False
        now = time.monotonic()
        if now - self._last < self.interval and not force:
            return False
        self._last = now
        return True


class TrainProgress(LiveBar):
    """A bar per epoch with loss, score, images/s and ETA; one summary line per epoch."""

    def __init__(
        self, enabled: bool, total_epochs: int, steps_per_epoch: int, title: str = "train", score: str = "acc"
    ):
        columns = (
            TextColumn("[bold]{task.description}", table_column=Column(overflow="fold")),
            BarColumn(bar_width=None, table_column=Column(min_width=MIN_BAR)),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[stats]}", table_column=Column(overflow="fold")),
            *time_columns(),
        )
        super().__init__(enabled, columns, interval=0.25)
        self.score = score
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.title = title
        self._task = None

    def start_epoch(self, epoch: int) -> None:
        if self.progress is not None:
            if self._task is not None:
                self.progress.remove_task(self._task)
            self._task = self.progress.add_task(
                f"{self.title} epoch {epoch + 1}/{self.total_epochs}", total=self.steps_per_epoch, stats=""
            )

    def update(self, step: int, loss_sum, score_sum, seen: int, elapsed: float) -> None:
        if not self.due(force=step >= self.steps_per_epoch):
            return
        stats = (
            f"loss {loss_sum.item() / seen:.3f} {self.score} {score_sum.item() / seen:.3f} "
            f"{seen / max(elapsed, 1e-9):.0f} img/s"
        )
        self.progress.update(self._task, completed=step, stats=stats)

    def end_epoch(self, m: dict) -> None:
        if self.enabled:
            tests = " ".join(f"{k[5:]} {v:.4f}" for k, v in m.items() if k.startswith("test_"))
            say(
                f"{self.title} epoch {m['epoch']}/{self.total_epochs}: train loss {m['train_loss']:.4f} "
                f"{self.score} {m[f'train_{self.score}']:.4f} | test {tests} | "
                f"{m['images_per_s']:.0f} img/s, {m['epoch_time']:.1f} s"
            )


class AttackProgress(LiveBar):
    """The progress callback of an adversarial evaluation: what runs, gradient steps spent, steps/s.

    The attack engine only says what it is doing; how that is shown is decided here. Use it as
    ``with AttackProgress.for_setting(progress, label) as callback``: ``progress`` is True (this
    bar), False (nothing) or a callable ``(stage, gradient_steps)`` of the caller's own.
    """

    def __init__(self, label: str, enabled: bool = True):
        columns = (
            TextColumn("[bold]{task.description}", table_column=Column(overflow="fold")),
            TimeElapsedColumn(table_column=Column(no_wrap=True)),
        )
        super().__init__(enabled, columns, interval=0.2)
        self.label = label
        self._started = time.perf_counter()

    @classmethod
    def for_setting(cls, progress, label: str):
        if callable(progress) and not isinstance(progress, bool):
            return _Given(progress)
        return cls(label, enabled=bool(progress))

    def __enter__(self):
        super().__enter__()
        self._started = time.perf_counter()
        if self.progress is not None:
            self._task = self.progress.add_task(self.label, total=None)
        return self if self.enabled else None

    def __call__(self, stage: str, gradient_steps: int) -> None:
        if not self.due():
            return
        rate = gradient_steps / max(time.perf_counter() - self._started, 1e-9)
        self.progress.update(
            self._task, description=f"{self.label}: {stage} ({gradient_steps:,} steps, {rate:,.0f} steps/s)"
        )


class _Given:
    """A caller's own progress callback, in the shape of a bar (entered, it is the callback)."""

    def __init__(self, callback):
        self.callback = callback

    def __enter__(self):
        return self.callback

    def __exit__(self, *exc):
        return None
