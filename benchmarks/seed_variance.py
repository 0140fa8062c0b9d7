"""How much do seeds disagree, and how many does each claim need, as training gets longer?

For each configuration (the quick preset's model and attack, trained 1 or 3 epochs, ...) this
trains Full and Chans on seeds 0..K-1, attacks each with the quick preset's robustness settings
(500 fixed test images, L-inf 2/255, 4/255, 8/255), and tabulates per configuration:

* the seed-to-seed SD of Full's clean accuracy and of the per-seed Chans − Full difference of
  clean accuracy and of robust accuracy at every budget;
* the standard error of each seed's robust difference from its 500 examples alone (how much of the
  spread more attacked images could remove);
* the mean difference, its t-interval (df = seeds - 1), and the seeds a t-interval needs to decide
  that mean against the claim's threshold (1a: -1 point; 2a: 0) at 80% power, with the SD seen;
* the training time of one run, so "seeds needed x time per seed" prices each configuration.

Runs live under ``--out`` (one folder per configuration, the layout of ``spatialmix reproduce``);
finished runs and attacks are reused, so the script can be stopped and started again, and run once
more to print the table alone. One process, ``--threads`` torch threads; it can run beside other work.

    python benchmarks/seed_variance.py --out runs/variance --seeds 8 --configs e1,e3
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from spatialmix.analysis.claims import CLAIMS, parse_bits
from spatialmix.analysis.statistics import mean_interval, seeds_needed
from spatialmix.io import runs
from spatialmix.studies.context import PRESETS, StudyContext, classification_run_dir
from spatialmix.studies.robustness import attack_all, attack_settings
from spatialmix.ui.display import ResultTable

CONFIGS = {
    "e1": ("1 epoch (quick preset)", {}),
    "e3": ("3 epochs", {"epochs": 3}),
    "e5": ("5 epochs", {"epochs": 5}),
    "w128": ("1 epoch, width 128", {"width": 128}),
}
MODES = ("full", "chans")


def context(name: str, out: Path, seeds: tuple[int, ...], threads: int) -> StudyContext:
    overrides = {**CONFIGS[name][1], "threads": threads, "progress": False}
    return StudyContext(PRESETS["quick"], out / name, seeds, overrides, processes=1, threads=threads)


def measure(name: str, out: Path, seeds: tuple[int, ...], threads: int) -> list[dict]:
    """Train (or reuse) and attack Full and Chans of every seed; one record per run."""
    ctx = context(name, out, seeds, threads)
    jobs = [
        (ctx.config(mode=mode, seed=seed), classification_run_dir(ctx.out_dir, mode, seed))
        for seed in seeds
        for mode in MODES
    ]
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
                "robust": {b["eps_label"]: b["robust_acc"] for b in result["budgets"] if b["eps"] > 0},
                "bits": {b["eps_label"]: b["robust_bits"] for b in result["budgets"] if b["eps"] > 0},
            }
        )
    return records


def differences(records: list[dict], value) -> list[float]:
    by = {(r["mode"], r["seed"]): value(r) for r in records}
    seeds = sorted({r["seed"] for r in records})
    return [by[("chans", s)] - by[("full", s)] for s in seeds if ("chans", s) in by and ("full", s) in by]


def example_noise(records: list[dict], label: str) -> list[float]:
    """Per seed, the standard error of Chans − Full from its examples alone (the paired bits)."""
    bits = {(r["mode"], r["seed"]): parse_bits(r["bits"][label]) for r in records}
    out = []
    for seed in sorted({r["seed"] for r in records}):
        difference = bits[("chans", seed)].astype(float) - bits[("full", seed)]
        out.append(float(difference.std(ddof=1) / math.sqrt(difference.size)))
    return out


def row(name: str, records: list[dict]) -> dict:
    full_clean = [r["clean"] for r in records if r["mode"] == "full"]
    effects = {"clean": (differences(records, lambda r: r["clean"]), CLAIMS["1a"].threshold)}
    for label in records[0]["robust"]:
        effects[label] = (differences(records, lambda r, label=label: r["robust"][label]), 0.0)
    out = {
        "config": CONFIGS[name][0],
        "seeds": len(full_clean),
        "full clean": f"{100 * statistics.fmean(full_clean):.2f} ± {100 * statistics.stdev(full_clean):.2f}",
        "time/run": f"{statistics.fmean(r['train_time'] for r in records):.0f} s",
    }
    for key, (values, threshold) in effects.items():
        estimate = mean_interval(values)
        needed = seeds_needed(estimate.value - threshold, estimate.spread)
        noise = ""
        if key != "clean":
            ses = example_noise(records, key)
            noise = f" (examples {100 * min(ses):.1f}-{100 * max(ses):.1f})"
        out[key] = (
            f"{100 * estimate.value:+.2f} [{100 * estimate.low:+.2f}, {100 * estimate.high:+.2f}] "
            f"SD {100 * estimate.spread:.2f}{noise}, needs {needed or '>100,000'}"
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/variance"))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--configs", default="e1,e3", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.configs.split(",")
    start = time.perf_counter()
    rows = [row(name, measure(name, args.out, tuple(range(args.seeds)), args.threads)) for name in names]
    labels = [k for k in rows[0] if k not in ("config", "seeds", "full clean", "time/run")]
    table = ResultTable(
        "Chans − Full per seed (points): mean [95% t-interval], seed SD (the per-seed standard error "
        "from the 500 examples alone), seeds needed at 80% power (1a: vs -1 point, robust: vs 0)",
        [(k, k, "") for k in ("config", "seeds", "full clean", "time/run")]
        + [(k, "clean" if k == "clean" else f"robust {k}", "") for k in labels],
    )
    for r in rows:
        table.add(**r)
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"CPU capability {capability}, torch {torch.__version__}, {args.threads} thread(s)")
    table.print()
    print(table.to_markdown())
    print(f"took {time.perf_counter() - start:.0f} s; runs in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
