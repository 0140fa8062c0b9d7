"""What the terminal shows: tables that fit the terminal (or COLUMNS) without cutting a word, and
logs that keep one line per event when piped."""

from __future__ import annotations

import io
import re

import pytest

from spatialmix.ui import display
from spatialmix.ui.display import ResultTable, say

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


def test_piped_without_columns_one_line_per_row(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    lines = printed(verdict_like_table())
    for word in VERDICT_WORDS:  # a row's cells, first to last, on one line: grep finds the row
        (row,) = [line for line in lines if re.search(rf"\b{word}\b", line)]
        assert "Chans is more robust than Full at every budget of the study" in row
        assert row.rstrip().endswith("│") and row.count("29/15 p=0.049") == 6


def test_say_keeps_a_long_line_whole_when_piped(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(display.console, "_file", out)  # (restored to None: stderr, whatever it is then)
    line = "train epoch 3/10: train loss 0.4321 acc 0.8765 | test loss 0.3210 acc 0.8899 | " + "x" * 100
    say(line)
    assert out.getvalue() == line + "\n"


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
