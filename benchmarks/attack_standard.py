"""How strong and how fast the default evaluation is, against an independent standard and torchattacks.

On the quick preset's Full and Chans models (seed 0, trained in ``--out`` or reused from there) and
its evaluation (the 500 fixed test images of ``select_examples``, L-inf 2/255, 4/255, 8/255), robust
accuracy per budget and wall time of:

* **independent standard**: torchattacks APGD-CE (100 steps), then APGD-T (100 steps, all 9
  other classes as targets), then Square (5,000 queries) on the survivors, at each budget on its
  own: AutoAttack's attacks but FAB-T, none of spatialmix's code but the examples and the model;
* **spatialmix standard**: ``evaluate_robustness`` with the quick preset's settings, checks off:
  the standard strength (the default), 10-step APGD-CE + APGD-T on the examples still standing,
  then the boundary stage on the 50 nearest the decision boundary;
* **spatialmix fast**: the same at ``strength="fast"``: the 10-step attacks alone;
* **torchattacks defaults**: ``torchattacks.APGD`` then ``torchattacks.APGDT`` at their defaults (10
  steps, 9 targets) on every example at every budget, then one forward pass to count (the plain
  loop of ``attack_throughput.py``).

"pts" is each method's difference to the standard in points of robust accuracy (5 of 500 examples
is 1 point). The three timed methods alternate over ``--repeats`` (so load from other programs hits
them alike) and the table gives their median wall time; the standard runs once (an hour per model
on one busy thread) and is saved in ``--out`` (keyed by the weights, the examples and its settings)
to be reused with ``--reuse-standard``. Then, once per model and strength, the evaluation with the
preset's checks: whether the reference check (on the survivors nearest the boundary) passes. The
last lines say whether the standard strength is within 1 point of the standard at every budget and
faster than torchattacks' defaults, per model, and what CPU ran it.

    python benchmarks/attack_standard.py --threads 1 --out runs/attack-standard
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from spatialmix.data.datasets import load_dataset
from spatialmix.engine.train import load_trained_model
from spatialmix.io import runs
from spatialmix.robustness.attacks import attack_mode
from spatialmix.robustness.evaluate import evaluate_robustness
from spatialmix.robustness.results import examples_digest
from spatialmix.robustness.run_attacks import select_examples, weights_fingerprint
from spatialmix.robustness.settings import AttackSettings, eps_label
from spatialmix.studies.context import QUICK, StudyContext, train_or_reuse
from spatialmix.studies.robustness import attack_settings
from spatialmix.ui.display import ResultTable

MODES = ("full", "chans")
STANDARD_STEPS, STANDARD_QUERIES = 100, 5000
TOLERANCE_POINTS = 1.0


def quick_model(out: Path, mode: str, threads: int):
    """The quick preset's seed-0 model of ``mode`` (trained once in ``out``), taking [0, 1] inputs."""
    run_dir = out / f"{mode}-seed0"
    train_or_reuse(QUICK.base.replace(mode=mode, seed=0, threads=threads, progress=False), run_dir)
    model, _ = load_trained_model(run_dir, device="cpu")
    return model, run_dir


def independent_standard(model, x, y, eps_list, batch_size: int) -> list[torch.Tensor]:
    """Per budget, which examples survive torchattacks APGD-CE-100, APGD-T-100 x9 and Square-5000."""
    import torchattacks

    with torch.no_grad():
        correct = model(x).argmax(1) == y
    robust = []
    with attack_mode(model):
        for eps in eps_list:
            standing = correct.clone()
            attacks = (
                [
                    torchattacks.APGD(model, eps=eps, steps=STANDARD_STEPS, loss="ce", seed=0),
                    torchattacks.APGDT(model, eps=eps, steps=STANDARD_STEPS, n_classes=10, seed=0),
                    torchattacks.Square(model, eps=eps, n_queries=STANDARD_QUERIES, seed=0),
                ]
                if eps > 0
                else []
            )
            for attack in attacks:  # each on the survivors of the ones before
                idx = standing.nonzero().flatten()
                for part in idx.split(batch_size):
                    adv = attack(x[part], y[part])
                    with torch.no_grad():
                        standing[part] &= model(adv).argmax(1) == y[part]
            robust.append(standing)
    return robust


def standard_key(run_dir: Path, x, y, eps_list) -> dict:
    import torchattacks

    return {
        "weights": weights_fingerprint(run_dir)["sha256"],
        "examples": examples_digest(x, y),
        "eps": list(eps_list),
        "steps": STANDARD_STEPS,
        "queries": STANDARD_QUERIES,
        "torchattacks": torchattacks.__version__,
    }


def cached_standard(path: Path, key: dict, reuse: bool, compute) -> tuple[list[torch.Tensor], float | None]:
    """The standard's robust examples per budget and its time (None: read back from ``path``)."""
    if reuse and path.is_file():
        saved = runs.read_json(path, "saved standard")
        if saved.get("key") == key:
            return [torch.tensor([c == "1" for c in bits]) for bits in saved["robust_bits"]], None
    started = time.perf_counter()
    robust = compute()
    elapsed = time.perf_counter() - started
    bits = ["".join("1" if r else "0" for r in standing.tolist()) for standing in robust]
    runs.atomic_write_json(path, {"key": key, "robust_bits": bits, "time_s": elapsed})
    return robust, elapsed


def torchattacks_defaults(model, x, y, eps_list, batch_size: int) -> list[torch.Tensor]:
    """torchattacks' APGD-CE and APGD-T at their defaults on every example at every budget."""
    import torchattacks

    robust = []
    with attack_mode(model):
        for eps in eps_list:
            with torch.no_grad():
                standing = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(y), batch_size)])
            standing = standing.argmax(1) == y
            for attack in (
                [
                    torchattacks.APGD(model, eps=eps, loss="ce", seed=0),
                    torchattacks.APGDT(model, eps=eps, seed=0),
                ]
                if eps > 0
                else []
            ):
                for i in range(0, len(y), batch_size):
                    adv = attack(x[i : i + batch_size], y[i : i + batch_size])
                    with torch.no_grad():
                        standing[i : i + batch_size] &= model(adv).argmax(1) == y[i : i + batch_size]
            robust.append(standing)
    return robust


def spatialmix(model, x, y, settings: AttackSettings) -> list[torch.Tensor]:
    result = evaluate_robustness(model, x, y, settings, progress=False, checks=False)
    return [torch.tensor([c == "1" for c in b["robust_bits"]]) for b in result["budgets"]]


def reference_check(model, x, y, settings: AttackSettings) -> str:
    """The reference check of the evaluation with the preset's checks: its largest gap, ok or failed."""
    result = evaluate_robustness(model, x, y, settings, progress=False)
    check = next(c for c in result["checks"] if c["name"] == "reference")
    gap = result["reference_check"]["max_gap"]
    return f"{'ok' if check['ok'] else 'FAILED'} ({100 * gap:.1f} pts at {eps_label(check['eps'])})"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


OURS = "spatialmix standard (the default)"
FAST = "spatialmix fast (10-step attacks alone)"
THEIRS = "torchattacks defaults (APGD-CE-10 + APGD-T-10 x9)"
STANDARD = "independent standard (torchattacks APGD-CE-100, APGD-T-100 x9, Square-5000)"


def timed_runs(models: dict, methods: dict, repeats: int) -> tuple[dict, dict]:
    """Every method on every model, alternating, ``repeats`` times: (robust per budget, wall times)."""
    robust, times = {}, {}
    for _ in range(repeats):
        for mode, (model, _) in models.items():
            for name, method in methods.items():
                started = time.perf_counter()
                robust[mode, name] = method(model)
                times.setdefault((mode, name), []).append(time.perf_counter() - started)
    return robust, times


def points(a: torch.Tensor, b: torch.Tensor) -> float:
    """Robust accuracy of ``a`` minus that of ``b``, in points (counted in examples)."""
    return 100 * (int(a.sum()) - int(b.sum())) / len(a)


def model_table(mode, eps_list, standard, standard_time, robust, times, checks) -> ResultTable:
    budgets = [i for i, e in enumerate(eps_list) if e > 0]
    table = ResultTable(
        f"{mode.capitalize()} (the quick preset's model, seed 0; clean {standard[0].float().mean():.3f} on "
        f"{len(standard[0])} images): robust accuracy (points from the standard)",
        [("method", "method", ""), ("wall", "wall s", "")]
        + [(f"e{i}", f"robust {eps_label(eps_list[i])}", "") for i in budgets]
        + [("check", "reference check", "")],
    )
    table.add(
        method=STANDARD,
        wall="saved" if standard_time is None else f"{standard_time:.0f}",
        check="-",
        **{f"e{i}": f"{standard[i].float().mean():.3f}" for i in budgets},
    )
    for name, strength in ((OURS, "standard"), (FAST, "fast"), (THEIRS, None)):
        ours = robust[mode, name]
        table.add(
            method=name,
            wall=f"{statistics.median(times[mode, name]):.1f}",
            check=checks.get((mode, strength), "-"),
            **{
                f"e{i}": f"{ours[i].float().mean():.3f} ({points(ours[i], standard[i]):+.1f})"
                for i in budgets
            },
        )
    return table


def verdict(mode: str, standard: list, robust: dict, times: dict) -> str:
    """Whether the default is within 1 point of the standard at every budget and faster than torchattacks."""
    worst = max(abs(points(a, b)) for a, b in zip(robust[mode, OURS], standard))
    ours, theirs = statistics.median(times[mode, OURS]), statistics.median(times[mode, THEIRS])
    close = "within" if worst <= TOLERANCE_POINTS else "NOT within"
    return (
        f"{mode.capitalize()}: the default is {close} {TOLERANCE_POINTS:g} point of the standard at every "
        f"budget (at most {worst:.1f}) and {'faster' if ours < theirs else 'NOT faster'} than torchattacks' "
        f"defaults ({ours:.1f} s against {theirs:.1f} s: {theirs / ours:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/attack-standard", help="the models' and the standard's folder")
    parser.add_argument("--modes", default="full,chans")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--reuse-standard", action="store_true", help="read the standard back from --out")
    parser.add_argument("--no-checks", action="store_true", help="skip the runs with the reference check")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = attack_settings(StudyContext(QUICK, out, (0,), {"device": "cpu"}))
    fast = settings.replace(strength="fast")
    x, y = select_examples(load_dataset(QUICK.base.dataset), settings.n_examples, settings.seed)
    eps_list = settings.eps
    models = {mode: quick_model(out, mode, args.threads) for mode in args.modes.split(",")}
    standards, standard_times = {}, {}
    for mode, (model, run_dir) in models.items():
        standards[mode], standard_times[mode] = cached_standard(
            out / f"standard-{mode}.json",
            standard_key(run_dir, x, y, eps_list),
            args.reuse_standard,
            lambda model=model: independent_standard(model, x, y, eps_list, args.batch_size),
        )
    methods = {
        OURS: lambda m: spatialmix(m, x, y, settings),
        FAST: lambda m: spatialmix(m, x, y, fast),
        THEIRS: lambda m: torchattacks_defaults(m, x, y, eps_list, args.batch_size),
    }
    robust, times = timed_runs(models, methods, args.repeats)
    checks = {}
    for mode, (model, _) in models.items() if not args.no_checks else []:
        for strength, chosen in (("standard", settings), ("fast", fast)):
            checks[mode, strength] = reference_check(model, x, y, chosen)
    for mode in models:
        model_table(mode, eps_list, standards[mode], standard_times[mode], robust, times, checks).print()
    for mode in models:
        print(verdict(mode, standards[mode], robust, times))
    print(
        f"{cpu_name()}; CPU capability {torch.backends.cpu.get_cpu_capability()}; "
        f"{torch.get_num_threads()} thread(s); torch {torch.__version__}; median of {args.repeats}"
    )


if __name__ == "__main__":
    main()
