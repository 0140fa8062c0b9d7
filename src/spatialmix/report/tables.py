"""Result tables that several places print: the classification table of a study or a sweep."""

from __future__ import annotations

from spatialmix.ui.display import ResultTable, mean_std


def classification_table(summaries: dict[str, list[dict]], title: str) -> ResultTable:
    table = ResultTable(
        title,
        [
            ("mode", "mode", ""),
            ("trainable", "trainable params", ","),
            ("frozen", "frozen params", ","),
            ("test_acc", "test acc", ".4f"),
            ("best_acc", "best acc", ".4f"),
            ("train_time", "train time (s)", ".1f"),
            ("images_per_s", "images/s", ".0f"),
            ("seeds", "seeds", ""),
        ],
    )
    for mode, rows in summaries.items():
        if not rows:
            continue
        table.add(
            mode=mode.capitalize(),
            trainable=rows[0]["trainable_params"],
            frozen=rows[0]["frozen_params"],
            test_acc=mean_std([r["test_acc"] for r in rows]),
            best_acc=mean_std([r["best_acc"] for r in rows]),
            train_time=mean_std([r["train_time"] for r in rows]),
            images_per_s=mean_std([r["images_per_s"] for r in rows]),
            seeds=len(rows),
        )
    return table
