"""Speed of the adversarial evaluation against plain torchattacks loops on the same model and examples.

On one fixed seeded subset of the Fashion-MNIST test set and every budget of the default list
(L-inf 0, 1/255, 2/255, 4/255, 8/255), each method reports its robust accuracy per budget and its
wall time:

* plain torchattacks PGD-10: ``torchattacks.PGD`` on every example at every budget, then one
  forward pass to count (the loop a torchattacks user writes; the old default's attack);
* plain torchattacks APGD-CE + APGD-T: ``torchattacks.APGD`` then ``torchattacks.APGDT`` with
  spatialmix fast x3's steps and targets, on every example at every budget (the same attacks);
* plain torchattacks APGD-CE + APGD-T with torchattacks' own defaults (10 steps, all 9 other
  classes as targets), what a torchattacks user gets without tuning;
* spatialmix fast x3: ``evaluate_robustness(checks=False, strength="fast", targets=3)``, the 10-step
  attacks alone (the default before the standard strength): the same APGD-CE + APGD-T on the
  examples still standing only, stopping each example once misclassified, warm starts across
  budgets (the engine against the same attacks run the plain way; the default's strength and
  speed against an independent standard: ``attack_standard.py``);
* spatialmix fast x3 + checks: the same with the strong reference (on ``--reference-examples``
  survivors nearest the boundary) and the masking checks, for information;
* plain torchattacks AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square 5000) at every budget on
  the first ``--autoattack-examples``, against spatialmix fast x3 on the same examples: the
  torchattacks way to a number one can trust, at matched (or better) strength.

"speed-up" is the plain torchattacks loop's cost over spatialmix fast x3's, in wall time and in
gradient steps (examples through forward + backward, a forward alone counting 1/3: the same on a
busy machine); "same or lower" says whether spatialmix's robust accuracy is at most the plain
loop's at every budget. Methods alternate over
``--repeats`` so load from other programs hits both alike; the table gives the median time. The
CPU capability torch dispatches to is printed with the table. The model is a ConvMixer trained
briefly on a subset (or ``--run RUN_DIR``).

    python benchmarks/attack_throughput.py --threads 1
    python benchmarks/attack_throughput.py --run runs/reproduce/classification/chans-seed0 --n-examples 500
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from spatialmix.robustness.attacks import attack_mode
from spatialmix.robustness.evaluate import evaluate_robustness
from spatialmix.robustness.run_attacks import select_examples
from spatialmix.robustness.settings import DEFAULT_EPS, AttackSettings, eps_label
from spatialmix.ui.display import ResultTable


def trained_model(run: str | None, out: Path):
    from spatialmix.data.datasets import load_dataset
    from spatialmix.engine.config import TrainConfig
    from spatialmix.engine.train import fit, load_trained_model

    if run is None:
        run = out / "run"
        config = TrainConfig(
            dataset="fashion-mnist",
            model="convmixer",
            width=64,
            depth=4,
            kernel_size=5,
            patch_size=2,
            epochs=1,
            train_subset=10000,
            progress=False,
        )
        fit(config, run)
    model, record = load_trained_model(run)
    return model, load_dataset(record["train"]["dataset"])


class Counting(torch.nn.Module):
    """The model, counting the examples of its forward passes with and without a gradient."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.with_grad = self.without_grad = 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.with_grad += len(x)
        else:
            self.without_grad += len(x)
        return self.model(x)

    def work(self) -> float:
        """Gradient steps (forward + backward of one example); a forward alone counts 1/3."""
        return self.with_grad + self.without_grad / 3

    def reset(self) -> None:
        self.with_grad = self.without_grad = 0


def plain_loop(model, x, y, make_attacks, batch_size: int) -> tuple[float, list]:
    """Every attack on every example at every budget, then count: (seconds, robust acc per budget)."""
    start = time.perf_counter()
    accs = []
    with attack_mode(model):
        for eps in DEFAULT_EPS:
            robust = 0
            for i in range(0, len(y), batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                with torch.no_grad():
                    standing = model(xb).argmax(1) == yb
                for attack in make_attacks(eps) if eps > 0 else []:
                    adv = attack(xb, yb)
                    with torch.no_grad():
                        standing &= model(adv).argmax(1) == yb
                robust += int(standing.sum())
            accs.append(robust / len(y))
    return time.perf_counter() - start, accs


def ours(model, x, y, settings: AttackSettings, checks: bool) -> tuple[float, list, dict]:
    start = time.perf_counter()
    result = evaluate_robustness(model, x, y, settings, progress=False, checks=checks)
    return time.perf_counter() - start, [b["robust_acc"] for b in result["budgets"]], result


def main() -> None:
    import torchattacks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", help="a run directory to attack (default: train a ConvMixer-64/4 on 10,000 images)"
    )
    parser.add_argument("--n-examples", type=int, default=200)
    parser.add_argument(
        "--autoattack-examples",
        type=int,
        default=30,
        help="examples of the AutoAttack pair (0: skip; minutes per 10 robust examples on a CPU)",
    )
    parser.add_argument(
        "--reference-examples", type=int, default=50, help="the checked row's reference sample"
    )
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, data = trained_model(args.run, Path(tmp))
    model = Counting(model)
    x, y = select_examples(data, args.n_examples, seed=0)
    xa, ya = x[: args.autoattack_examples], y[: args.autoattack_examples]
    settings = AttackSettings(
        n_examples=args.n_examples,
        batch_size=args.batch_size,
        device="cpu",
        reference_examples=args.reference_examples,
        strength="fast",
        targets=3,
    ).validate()
    s, k = settings.steps, settings.targets

    def apgd_pair(eps):
        return [
            torchattacks.APGD(model, eps=eps, steps=s, loss="ce", seed=0),
            torchattacks.APGDT(model, eps=eps, steps=s, n_classes=k + 1, seed=0),
        ]  # k target classes

    def apgd_torchattacks_defaults(eps):
        return [
            torchattacks.APGD(model, eps=eps, loss="ce", seed=0),
            torchattacks.APGDT(model, eps=eps, seed=0),
        ]

    def pgd10(eps):
        return [torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 10, steps=10)]

    def autoattack(eps):
        return [
            torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
        ]

    # name: (what it runs, the spatialmix row it is compared with)
    methods = {
        "spatialmix fast x3": (lambda: ours(model, x, y, settings, checks=False)[:2], None),
        "plain torchattacks PGD-10": (
            lambda: plain_loop(model, x, y, pgd10, args.batch_size),
            "spatialmix fast x3",
        ),
        f"plain torchattacks APGD-CE-{s} + APGD-T-{s} x{k} (the same attacks)": (
            lambda: plain_loop(model, x, y, apgd_pair, args.batch_size),
            "spatialmix fast x3",
        ),
        "plain torchattacks APGD-CE + APGD-T, torchattacks' defaults (10 steps, 9 targets)": (
            lambda: plain_loop(model, x, y, apgd_torchattacks_defaults, args.batch_size),
            "spatialmix fast x3",
        ),
        f"spatialmix fast x3 + checks (reference on {args.reference_examples})": (
            lambda: ours(model, x, y, settings, checks=True)[:2],
            None,
        ),
    }
    if args.autoattack_examples:
        methods[f"spatialmix fast x3, first {len(ya)}"] = (
            lambda: ours(model, xa, ya, settings, checks=False)[:2],
            None,
        )
        methods[f"plain torchattacks AutoAttack standard, first {len(ya)}"] = (
            lambda: plain_loop(model, xa, ya, autoattack, args.batch_size),
            f"spatialmix fast x3, first {len(ya)}",
        )
    times = {name: [] for name in methods}
    accs, work = {}, {}
    for repeat in range(args.repeats):
        for name, (method, _) in methods.items():
            if "AutoAttack" in name and repeat:  # once: minutes on a CPU
                continue
            model.reset()
            t, accs[name] = method()
            times[name].append(t)
            work[name] = model.work()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    columns = [
        ("method", "method", ""),
        ("examples", "examples", ""),
        ("wall", "wall s", ".2f"),
        ("speedup", "speed-up (time)", ".2f"),
        ("work", "gradient steps", ",.0f"),
        ("work_ratio", "speed-up (steps)", ".2f"),
    ]
    columns += [(f"acc {eps_label(e)}", f"robust {eps_label(e)}", ".3f") for e in DEFAULT_EPS[1:]]
    columns += [("lower", "spatialmix same or lower", "")]
    table = ResultTable(
        f"Attack throughput: ConvMixer on Fashion-MNIST (clean acc {clean:.3f} on {len(y)}), L-inf, "
        f"{torch.get_num_threads()} thread(s), CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, median of {args.repeats}",
        columns,
    )
    for name, (_, partner) in methods.items():
        n = len(ya) if "first" in name else len(y)
        wall = statistics.median(times[name])
        row = {"method": name, "examples": n, "wall": wall, "work": work[name]}
        row.update({f"acc {eps_label(e)}": a for e, a in zip(DEFAULT_EPS[1:], accs[name][1:])})
        if partner:
            row["speedup"] = wall / statistics.median(times[partner])
            row["work_ratio"] = work[name] / work[partner]
            # (compared in examples: the accuracies are float32 means)
            row["lower"] = (
                "yes"
                if all(round(o * n) <= round(p * n) for o, p in zip(accs[partner], accs[name]))
                else "NO"
            )
        table.add(**row)
    table.print()
    print(
        f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; torch {torch.__version__}; "
        f"torchattacks {torchattacks.__version__}"
    )


if __name__ == "__main__":
    main()
