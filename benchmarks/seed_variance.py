"""How much do seeds disagree, how many does each claim need, and which training recipe decides
claim 2a for the fewest CPU-seconds?

For each configuration (the quick preset's model and attack, trained 1, 3 or 6 epochs, with a
moving average of the weights, a one-cycle-like shorter schedule, more attacked images, ...) this
trains Full and Chans on seeds 0..K-1, attacks each with the quick preset's robustness settings
(500 fixed test images, L-inf 2/255, 4/255, 8/255), and tabulates per configuration:

* the seed-to-seed SD of Full's clean accuracy and of the per-seed Chans − Full difference of
  clean accuracy and of robust accuracy at every budget;
* the standard error of each seed's robust difference from its 500 examples alone (how much of the
  spread more attacked images could remove);
* the mean difference, its t-interval (df = seeds - 1), and the seeds a t-interval needs to decide
  that mean against the claim's threshold (1a: -1 point; 2a: 0) at 80% power, with the SD seen;
* the training time of one run and the attack time of one run, so each configuration's price of
  deciding 2a is "seeds needed at 80% power x (2 trainings + 2 attacks)" CPU-seconds per budget.

Runs live under ``--out`` (one folder per configuration, the layout of ``spatialmix reproduce``);
finished runs and attacks are reused, so the script can be stopped and started again, and run once
more to print the table alone. One process, ``--threads`` torch threads; it can run beside other work.

    python benchmarks/seed_variance.py --out runs/variance --seeds 8 --configs e1,e3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from spatialmix.analysis.claims import CLAIMS
from spatialmix.analysis.decision import parse_bits
from spatialmix.analysis.statistics import mean_interval, seeds_needed
from spatialmix.io import runs
from spatialmix.studies.context import PRESETS, StudyContext, classification_run_dir
from spatialmix.studies.robustness import attack_all, attack_settings
from spatialmix.ui.display import ResultTable

# name: (description, training overrides, attack overrides of the quick preset's options["robustness"])
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


def context(name: str, out: Path, seeds: tuple[int, ...], threads: int) -> StudyContext:
    _, training, attack = CONFIGS[name]
    overrides = {**training, "threads": threads, "progress": False}
    quick = PRESETS["quick"]
    preset = replace(
        quick, options={**quick.options, "robustness": {**quick.options["robustness"], **attack}}
    )
    return StudyContext(preset, out / name, seeds, overrides, processes=1, threads=threads)


def measure(name: str, out: Path, seeds: tuple[int, ...], threads: int) -> list[dict]:
    """Train (or reuse) and attack Full and Chans of every seed; one record per run."""
    ctx = context(name, out, seeds, threads)
    jobs = [
        (ctx.config(mode=mode, seed=seed), classification_run_dir(ctx.out_dir, mode, seed))
        for seed in seeds
        for mode in MODES
    ]
    cost_file = ctx.out_dir / "attack_seconds.json"  # measured once: later calls reuse the attacks
    first = not cost_file.is_file()
    clock = time.process_time()
    results = attack_all(ctx, name, jobs, attack_settings(ctx), ctx.out_dir / "robustness.png")
    if first:
        trained = sum(runs.read_json(run_dir / runs.SUMMARY)["train_time"] for _, run_dir in jobs)
        per_attack = max(0.0, time.process_time() - clock - trained) / len(jobs)
        cost_file.write_text(json.dumps({"cpu_seconds_per_attack": per_attack}))
    attack_seconds = json.loads(cost_file.read_text())["cpu_seconds_per_attack"]
    records = []
    for (config, run_dir), result in zip(jobs, results):
        summary = runs.read_json(run_dir / runs.SUMMARY)
        records.append(
            {
                "mode": config.mode,
                "seed": config.seed,
                "clean": summary["test_acc"],
                "train_time": summary.get("train_time"),
                "attack_time": attack_seconds,
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
    seed_cost = 2 * statistics.fmean(r["train_time"] + r["attack_time"] for r in records)
    out["s/seed"] = f"{seed_cost:.0f} s"
    for key, (values, threshold) in effects.items():
        estimate = mean_interval(values)
        needed = seeds_needed(estimate.value - threshold, estimate.spread)
        if key != "clean":
            out[f"cost {key}"] = f"{needed * seed_cost / 60:,.0f} min" if needed else "never"
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
    fixed = ("config", "seeds", "full clean", "time/run", "s/seed")
    labels = [k for k in rows[0] if k not in fixed and not k.startswith("cost ")]
    table = ResultTable(
        "Chans − Full per seed (points): mean [95% t-interval], seed SD (the per-seed standard error "
        "from the attacked examples alone), seeds needed at 80% power (1a: vs -1 point, robust: vs 0)",
        [(k, k, "") for k in fixed] + [(k, "clean" if k == "clean" else f"robust {k}", "") for k in labels],
    )
    costs = sorted({k for r in rows for k in r if k.startswith("cost ")})
    price = ResultTable(
        "The price of deciding 2a: seeds needed at 80% power x CPU-seconds per seed (Full and Chans "
        "trained and attacked), per budget",
        [("config", "config", ""), ("s/seed", "s/seed", "")]
        + [(k, k.replace("cost ", "2a at "), "") for k in costs],
    )
    for r in rows:
        table.add(**{k: v for k, v in r.items() if not k.startswith("cost ")})
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
