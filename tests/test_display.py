"""What the terminal shows: tables that fit the terminal (COLUMNS; 100 columns in a pipe) without
cutting a word, a progress bar that keeps its elapsed time and ETA, and news lines that stay whole."""

from __future__ import annotations

import io
import re

import pytest
import torch
from rich.console import Console

import spatialmix as sm
from spatialmix.ui import display, progress
from spatialmix.ui.display import ResultTable, say
from test_verdicts import make_study

VERDICT_WORDS = ("supports", "inconclusive", "contradicts")


def verdict_like_table() -> ResultTable:
    """A table as wide as the verdict table: eleven columns, some of them long sentences."""
    columns = [("claim", "claim", ""), ("paper", "the paper says", "")]
    columns += [(f"c{i}", f"column {i}", "") for i in range(7)]
    columns += [("verdict", "verdict", ""), ("how", "how", "")]
    table = ResultTable("Verdicts", columns)
    for claim, verdict in zip(("1a", "2a", "3b"), VERDICT_WORDS):
        table.add(
            claim=claim,
            paper="Chans is more robust than Full at every budget of the study",
            **{f"c{i}": f"[-0.26, +4.28] pts {i}" for i in range(7)},
            verdict=verdict,
            how="t over 20 seed-paired differences; exact McNemar per seed: "
            + ", ".join(["29/15 p=0.049"] * 6),
        )
    return table


def printed(table: ResultTable) -> list[str]:
    out = io.StringIO()
    table.print(file=out)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("columns", [80, 120])
def test_a_table_fits_the_columns_and_never_cuts_a_word(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = printed(verdict_like_table())
    assert max(len(line) for line in lines) <= columns
    text = "\n".join(lines)
    for word in VERDICT_WORDS:  # whole, each on one line
        assert re.search(rf"\b{word}\b", text), word
    assert "…" not in text


def test_a_table_that_fits_keeps_its_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    table = ResultTable("small", [("mode", "mode", ""), ("acc", "test acc", ".4f")])
    table.add(mode="chans", acc=0.91234)
    lines = printed(table)
    assert any("┃ mode" in line and "test acc" in line for line in lines)
    assert any("chans" in line and "0.9123" in line for line in lines)


def test_piped_without_columns_the_verdict_table_is_readable_at_100_columns(monkeypatch):
    """A pipe or a log file has no width: the table keeps to PIPE_WIDTH, one block per row, every word
    whole."""
    monkeypatch.delenv("COLUMNS", raising=False)
    table = verdict_like_table()
    lines = printed(table)
    assert display.PIPE_WIDTH == 100 and max(len(line) for line in lines) <= 100
    shown = " ".join(lines).split()
    for word in table._words():
        assert word in shown, word
    for word in VERDICT_WORDS:  # each row's verdict on its own line, next to its header
        (line,) = [line for line in lines if re.search(rf"\b{word}\b", line)]
        assert line.split() == ["verdict", word]
    assert sum("Chans is more robust than Full" in line for line in lines) == 3


def test_say_keeps_a_long_line_whole_when_piped(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(display.console, "_file", out)  # (restored to None: stderr, whatever it is then)
    line = "train epoch 3/10: train loss 0.4321 acc 0.8765 | test loss 0.3210 acc 0.8899 | " + "x" * 100
    say(line)
    assert out.getvalue() == line + "\n"


def test_the_verdict_table_of_a_study_piped_to_a_file_keeps_to_100_columns(monkeypatch, tmp_path):
    monkeypatch.delenv("COLUMNS", raising=False)
    table = sm.verdict_table(sm.verdicts_for_study(make_study(tmp_path / "study")))
    with open(tmp_path / "log.txt", "w") as log:
        table.print(file=log)
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert max(len(line) for line in lines) <= 100
    assert [line.split()[-1] for line in lines if line.startswith("verdict ")] == [
        v.verdict.split()[-1] for v in sm.verdicts_for_study(tmp_path / "study")
    ]


@pytest.mark.parametrize("width", [80, 100])
def test_a_narrow_terminal_shows_the_training_bar_the_elapsed_time_and_the_eta(monkeypatch, width):
    """The run's name and its loss and speed wrap onto a second line; the bar, the elapsed time and the
    ETA keep their width."""
    monkeypatch.setattr(progress, "console", Console(file=io.StringIO()))  # the live display: nowhere
    bar = progress.TrainProgress(True, total_epochs=10, steps_per_epoch=351, title="convmixer-256/8 chans")
    with bar:
        bar.start_epoch(2)
        bar.update(120, torch.tensor(80.0), torch.tensor(176.0), seen=200, elapsed=0.16)
        out = io.StringIO()
        Console(file=out, width=width).print(bar.progress.get_renderable())
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    text = " ".join(lines)
    assert "━━━" in text, text  # 120/351 of a bar at least MIN_BAR = 10 cells wide
    assert re.search(r"\b\d+:\d\d:\d\d ETA (\d+:\d\d:\d\d|-:--:--)", text), text
    assert "120/351" in text and "…" not in text
    for word in [
        "convmixer-256/8",
        "chans",
        "epoch",
        "3/10",
        "loss",
        "0.400",
        "acc",
        "0.880",
        "1250",
        "img/s",
    ]:
        assert word in text.split(), word


def test_to_pandas_gives_the_values_by_header_with_means_and_stds_apart():
    import pandas as pd

    table = ResultTable("Runs", [("mode", "Mode", ""), ("acc", "test acc", ".3f"), ("n", "seeds", "d")])
    table.add(mode="full", acc=(0.8125, 0.01), n=3)
    table.add(mode="chans", acc=0.5, n=None)
    frame = table.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["Mode", "test acc", "test acc std", "seeds"]
    assert frame["Mode"].tolist() == ["full", "chans"]
    assert frame["test acc"].tolist() == [0.8125, 0.5]  # the numbers, not their 3-decimal cells
    assert frame["test acc std"].iloc[0] == 0.01 and pd.isna(frame["test acc std"].iloc[1])
    assert frame["seeds"].iloc[0] == 3 and pd.isna(frame["seeds"].iloc[1])
    assert ResultTable("Empty", [("a", "A", "")]).to_pandas().columns.tolist() == ["A"]
