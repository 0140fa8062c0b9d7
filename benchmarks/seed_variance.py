"""How much do seeds disagree, how many does each claim need, and which training recipe decides
claim 2a for the fewest CPU-seconds?

For each configuration (the quick preset's model trained 1, 3 or 6 epochs, with a moving average of
the weights, more attacked images, a narrower model, ...) this trains Full and Chans on seeds
0..K-1, attacks each with the studies' attack settings at three budgets (`ATTACK_OPTIONS`: 500
fixed test images, L-inf 2/255, 4/255, 8/255), and tabulates per configuration:

* Full's clean accuracy (mean and seed SD);
* per line (1a's clean accuracy, 2a's robust accuracy at every budget), Chans − Full with its 95%
  interval over seeds *and* the shared test examples (`crossed_interval`: every seed is scored on
  the same examples, so the test set's sampling error is in the interval), the seeds' SD, the test
  set's standard error (the floor more seeds cannot pass), and the seeds an interval needs to
  decide the line against its threshold (1a: -1 point; 2a: 0) at 80% power;
* the training time of one run and the attack time of one run, so each configuration's price of
  deciding 2a is "seeds needed at 80% power x (2 trainings + 2 attacks)" CPU-seconds per budget,
  and the price of an interval of +-1 point where a line stays open.

Runs live under ``--out`` (one folder per configuration, the layout of ``spatialmix reproduce``);
finished runs and attacks are reused, so the script can be stopped and started again, and run once
more to print the table alone. ``--train-only`` trains and stops (several calls can then attack
different configurations side by side). One process, ``--threads`` torch threads.

    python benchmarks/seed_variance.py --out runs/variance --seeds 8 --configs e1,e3
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from spatialmix.analysis.claims import CLAIMS
from spatialmix.analysis.crossed import crossed_components, crossed_interval
from spatialmix.analysis.decision import parse_bits
from spatialmix.analysis.statistics import LEVEL, seeds_needed
from spatialmix.io import runs
from spatialmix.studies.context import (
    ATTACK_OPTIONS,
    PRESETS,
    StudyContext,
    classification_run_dir,
    train_all,
)
from spatialmix.studies.robustness import attack_all, attack_settings
from spatialmix.ui.display import ResultTable

# name: (description, training overrides, attack overrides of the standard attack options, which attack
# at 2/255, 4/255 and 8/255: `ATTACK_OPTIONS`)
CONFIGS = {
    "e1": ("1 epoch (quick preset)", {}, {}),
    "e3": ("3 epochs", {"epochs": 3}, {}),
    "e6": ("6 epochs", {"epochs": 6}, {}),
    "e1-ema": ("1 epoch, weights averaged (EMA 0.995)", {"ema_decay": 0.995}, {}),
    "e3-ema": ("3 epochs, weights averaged (EMA 0.998)", {"epochs": 3, "ema_decay": 0.998}, {}),
    "e3-2k": (
        "3 epochs, 2,000 images attacked at 2/255",
        {"epochs": 3},
        {"n_examples": 2000, "eps": (0.0, 2 / 255)},
    ),
    "w32-e3": ("3 epochs, width 32", {"epochs": 3, "width": 32}, {}),
}
MODES = ("full", "chans")
ONE_POINT = 0.01  # the half-width an open 2a line should reach


def context(name: str, out: Path, seeds: tuple[int, ...], threads: int) -> StudyContext:
    _, training, attack = CONFIGS[name]
    overrides = {**training, "threads": threads, "progress": False}
    quick = PRESETS["quick"]
    preset = replace(quick, options={**quick.options, "robustness": {**ATTACK_OPTIONS, **attack}})
    return StudyContext(preset, out / name, seeds, overrides, processes=1, threads=threads)


def jobs_of(ctx: StudyContext) -> list[tuple]:
    return [
        (ctx.config(mode=mode, seed=seed), classification_run_dir(ctx.out_dir, mode, seed))
        for seed in ctx.seeds
        for mode in MODES
    ]


def measure(name: str, out: Path, seeds: tuple[int, ...], threads: int) -> list[dict]:
    """Train (or reuse) and attack Full and Chans of every seed; one record per run."""
    ctx = context(name, out, seeds, threads)
    jobs = jobs_of(ctx)
    results = attack_all(ctx, name, jobs, attack_settings(ctx), ctx.out_dir / "robustness.png")
    records = []
    for (config, run_dir), result in zip(jobs, results):
        summary = runs.read_json(run_dir / runs.SUMMARY)
        records.append(
            {
                "mode": config.mode,
                "seed": config.seed,
                "clean": summary["test_acc"],
                "train_time": summary.get("train_time"),
                "attack_time": result["time_s"],  # the evaluation's own wall time, checks included
                "robust": {b["eps_label"]: b["robust_acc"] for b in result["budgets"] if b["eps"] > 0},
                "bits": {b["eps_label"]: b["robust_bits"] for b in result["budgets"] if b["eps"] > 0},
                "clean_bits": summary["test_correct_bits"],
            }
        )
    return records


def paired_tables(records: list[dict], bits) -> np.ndarray:
    """Seeds x examples: Chans's per-example outcome minus Full's, for the seeds both modes have."""
    by = {(r["mode"], r["seed"]): parse_bits(bits(r)).astype(float) for r in records}
    seeds = sorted({r["seed"] for r in records})
    both = [s for s in seeds if ("chans", s) in by and ("full", s) in by]
    return np.stack([by[("chans", s)] - by[("full", s)] for s in both])


def seeds_for_half_width(parts, half_width: float, level: float = LEVEL) -> int | None:
    """The seeds an interval of these shares needs to be at most ``half_width`` wide on each side
    (None: the test set's share alone is wider; only more test examples narrow it)."""
    for seeds in range(2, 1001):
        if replace(parts, seeds=seeds).half_width(level) <= half_width:
            return seeds
    return None


def row(name: str, records: list[dict]) -> dict:
    """One configuration: per line, the crossed interval (seeds and the shared test examples), the
    seed SD, the test set's share, the seeds 80% power needs, and what deciding 2a costs."""
    full_clean = [r["clean"] for r in records if r["mode"] == "full"]
    effects = {"clean": (paired_tables(records, lambda r: r["clean_bits"]), CLAIMS["1a"].threshold)}
    for label in records[0]["robust"]:
        effects[label] = (paired_tables(records, lambda r, label=label: r["bits"][label]), 0.0)
    out = {
        "config": CONFIGS[name][0],
        "seeds": len(full_clean),
        "full clean": f"{100 * statistics.fmean(full_clean):.2f} ± {100 * statistics.stdev(full_clean):.2f}",
        "time/run": f"{statistics.fmean(r['train_time'] for r in records):.0f} s",
    }
    seed_cost = 2 * statistics.fmean(r["train_time"] + r["attack_time"] for r in records)
    out["s/seed"] = f"{seed_cost:.0f} s"
    for key, (table, threshold) in effects.items():
        estimate = crossed_interval(table)
        parts = crossed_components(table)
        spread = math.sqrt(parts.seed_variance)
        needed = seeds_needed(estimate.value - threshold, spread, test_set_variance=parts.test_set_variance)
        if key != "clean":
            out[f"cost {key}"] = f"{needed * seed_cost / 60:,.0f} min" if needed else "never"
            within = seeds_for_half_width(parts, ONE_POINT)
            out[f"1pt {key}"] = f"{within} ({within * seed_cost / 60:,.0f} min)" if within else "more images"
        out[key] = (
            f"{100 * estimate.value:+.2f} [{100 * estimate.low:+.2f}, {100 * estimate.high:+.2f}] "
            f"SD {100 * spread:.2f}, test set {100 * math.sqrt(parts.test_set_variance):.2f}, "
            f"needs {needed or ('more images' if parts.test_set_variance else '>1,000')}"
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/variance"))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--configs", default="e1,e3", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--train-only", action="store_true", help="train the runs and stop (attack them in a later call)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.configs.split(",")
    if args.train_only:
        for name in names:
            ctx = context(name, args.out, tuple(range(args.seeds)), args.threads)
            train_all(ctx, name, jobs_of(ctx))
        return 0
    start = time.perf_counter()
    rows = [row(name, measure(name, args.out, tuple(range(args.seeds)), args.threads)) for name in names]
    fixed = ("config", "seeds", "full clean", "time/run", "s/seed")
    priced = ("cost ", "1pt ")
    labels = [k for k in rows[0] if k not in fixed and not k.startswith(priced)]
    table = ResultTable(
        "Chans − Full (points): mean [95% interval over seeds and the shared test examples], the "
        "seeds' SD, the test set's standard error, seeds needed at 80% power (1a: vs -1 point, "
        "robust: vs 0)",
        [(k, k, "") for k in fixed] + [(k, "clean" if k == "clean" else f"robust {k}", "") for k in labels],
    )
    costs = [k for k in rows[0] if k.startswith(priced)]
    price = ResultTable(
        "The price of deciding 2a: seeds needed at 80% power x CPU-seconds per seed (Full and Chans "
        "trained and attacked), per budget; and the seeds (CPU-minutes) for an interval of +-1 point",
        [("config", "config", ""), ("s/seed", "s/seed", "")]
        + [(k, k.replace("cost ", "2a at ").replace("1pt ", "+-1 pt at "), "") for k in costs],
    )
    for r in rows:
        table.add(**{k: v for k, v in r.items() if not k.startswith(priced)})
        price.add(**{k: r.get(k, "-") for k in ("config", "s/seed", *costs)})
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"CPU capability {capability}, torch {torch.__version__}, {args.threads} thread(s)")
    table.print()
    price.print()
    print(table.to_markdown())
    print(price.to_markdown())
    print(f"took {time.perf_counter() - start:.0f} s; runs in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
