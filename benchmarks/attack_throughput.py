"""Speed of spatialmix's default evaluation against torchattacks' defaults, per budget and together.

On the quick preset's Full model (seed 0; trained once in ``--out``, or ``--run RUN_DIR``) and the
fixed seeded test images of ``select_examples`` (``--sizes``, default 200 and 500), every budget of
``--eps`` (default 1/255, 2/255, 4/255, 8/255, L-inf) is attacked alone, then all of them together,
by:

* **spatialmix default, checks off**: ``evaluate_robustness(checks=False)`` with the default
  ``AttackSettings`` (the standard strength: 10-step APGD-CE + APGD-T on the examples still
  standing, then the boundary stage) at those budgets;
* **spatialmix default, checks on**: the same with the strong reference and the masking checks,
  what ``spatialmix attack`` runs;
* **torchattacks defaults**: ``torchattacks.APGD`` then ``torchattacks.APGDT`` at their defaults (10
  steps; APGD-T on all 9 other classes) on every example at every budget, then one forward pass to
  count: the loop a torchattacks user writes (one clean forward pass, shared by the budgets).

Every method sees the model in the same state (``attack_mode``: eval mode, channels_last weights,
spatialmix's fast CPU kernels). The methods alternate, case by case, for ``--repeats`` rounds in one
process, so load from other programs hits them alike. The table gives, per method, the median wall
time and the median CPU time of the process (``time.process_time``: what a busy machine disturbs
least), the gradient steps (examples through forward + backward, a forward alone counting 1/3),
torchattacks' time over spatialmix's (above 1: spatialmix is faster), and robust accuracy per
budget with whether spatialmix's is at most torchattacks' at every budget. The CPU, its capability,
torch and torchattacks are printed with the table. ``attack_standard.py`` measures how strong each
is against an independent standard.

    python benchmarks/attack_throughput.py --threads 1 --out runs/attack-standard --repeats 3
    python benchmarks/attack_throughput.py --sizes 50 --eps 8/255 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from attack_standard import cpu_name, quick_model
from spatialmix.data.datasets import load_dataset
from spatialmix.engine.train import load_trained_model
from spatialmix.robustness.attacks import attack_mode
from spatialmix.robustness.evaluate import evaluate_robustness
from spatialmix.robustness.run_attacks import select_examples
from spatialmix.robustness.settings import DEFAULT_EPS, AttackSettings, eps_label, parse_eps_list
from spatialmix.studies.context import QUICK
from spatialmix.ui.display import ResultTable

OURS_OFF = "spatialmix default, checks off"
OURS_ON = "spatialmix default, checks on (`spatialmix attack`)"
THEIRS = "torchattacks defaults (APGD-CE + APGD-T x9)"


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


def torchattacks_defaults(model, x, y, budgets, batch_size: int) -> list[float]:
    """torchattacks' APGD-CE and APGD-T at their defaults on every example at every budget: robust
    accuracy per budget."""
    import torchattacks

    accs = []
    with attack_mode(model):
        with torch.no_grad():
            correct = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(y), batch_size)])
        correct = correct.argmax(1) == y
        for eps in budgets:
            standing = correct.clone()
            for attack in (
                torchattacks.APGD(model, eps=eps, loss="ce", seed=0),
                torchattacks.APGDT(model, eps=eps, seed=0),
            ):
                for i in range(0, len(y), batch_size):
                    adv = attack(x[i : i + batch_size], y[i : i + batch_size])
                    with torch.no_grad():
                        standing[i : i + batch_size] &= model(adv).argmax(1) == y[i : i + batch_size]
            accs.append(float(standing.float().mean()))
    return accs


def spatialmix_default(model, x, y, budgets, checks: bool, batch_size: int) -> list[float]:
    settings = AttackSettings(
        eps=(0.0, *budgets), n_examples=len(y), batch_size=batch_size, device="cpu"
    ).validate()
    result = evaluate_robustness(model, x, y, settings, progress=False, checks=checks)
    return [b["robust_acc"] for b in result["budgets"] if b["eps"] > 0]


def measure(method, model: Counting, *args) -> tuple[float, float, float, list[float]]:
    """(wall s, CPU s, gradient steps, robust accuracy per budget) of ``method(*args)``."""
    model.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    accs = method(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, model.work(), accs


def the_model(args) -> tuple[torch.nn.Module, str]:
    """The quick preset's Full model (trained in --out once) or --run's, taking [0, 1] inputs, and
    its data set."""
    if args.run is None:
        return quick_model(Path(args.out), "full", args.threads)[0], QUICK.base.dataset
    model, record = load_trained_model(args.run, device="cpu")  # normalizes inside: [0, 1] inputs
    return model.eval(), record["train"]["dataset"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/attack-standard", help="where the quick Full model is trained")
    parser.add_argument("--run", help="a run directory to attack instead of the quick preset's Full model")
    parser.add_argument("--sizes", default="200,500", help="numbers of test images, comma-separated")
    parser.add_argument(
        "--eps", default=",".join(eps_label(e) for e in DEFAULT_EPS if e > 0), help="the budgets"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-checks", action="store_true", help="leave out the checks-on row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inner, dataset = the_model(args)
    model = Counting(inner)
    data = load_dataset(dataset)
    budgets = tuple(e for e in parse_eps_list(args.eps) if e > 0)
    cases = [(e,) for e in budgets] + ([budgets] if len(budgets) > 1 else [])
    sizes = [int(n) for n in args.sizes.split(",")]
    examples = {n: select_examples(data, n, seed=0) for n in sizes}
    methods = {
        OURS_OFF: lambda x, y, case: spatialmix_default(model, x, y, case, False, args.batch_size),
        OURS_ON: lambda x, y, case: spatialmix_default(model, x, y, case, True, args.batch_size),
        THEIRS: lambda x, y, case: torchattacks_defaults(model, x, y, case, args.batch_size),
    }
    if args.no_checks:
        del methods[OURS_ON]
    runs: dict[tuple, list] = {}
    for _ in range(args.repeats):  # interleaved: every method of a case, then the next case
        for n in sizes:
            x, y = examples[n]
            for case in cases:
                for name, method in methods.items():
                    runs.setdefault((n, case, name), []).append(measure(method, model, x, y, case))
    print_table(runs, sizes, cases, methods, budgets, examples, model, args.repeats)


def print_table(runs, sizes, cases, methods, budgets, examples, model, repeats) -> None:
    columns = [
        ("examples", "examples", ""),
        ("budgets", "budgets", ""),
        ("method", "method", ""),
        ("wall", "wall s", ".2f"),
        ("cpu", "CPU s", ".2f"),
        ("steps", "gradient steps", ",.0f"),
        ("ratio_wall", "torchattacks / this (wall)", ".2f"),
        ("ratio_cpu", "torchattacks / this (CPU)", ".2f"),
    ]
    columns += [(f"acc {eps_label(e)}", f"robust {eps_label(e)}", ".3f") for e in budgets]
    columns += [("lower", "same or lower than torchattacks", "")]
    table = ResultTable(
        f"Attack time: the quick preset's Full model, L-inf, {torch.get_num_threads()} thread(s), "
        f"median of {repeats}; {cpu_name()}, CPU capability {torch.backends.cpu.get_cpu_capability()}",
        columns,
    )
    for n in sizes:
        _, y = examples[n]
        for case in cases:
            theirs = runs[n, case, THEIRS]
            their_wall, their_cpu = (statistics.median(r[i] for r in theirs) for i in (0, 1))
            for name in methods:
                done = runs[n, case, name]
                wall, cpu = (statistics.median(r[i] for r in done) for i in (0, 1))
                steps, accs = done[-1][2], done[-1][3]
                row = {
                    "examples": n,
                    "budgets": "all" if len(case) > 1 else eps_label(case[0]),
                    "method": name,
                    "wall": wall,
                    "cpu": cpu,
                    "steps": steps,
                    **{f"acc {eps_label(e)}": a for e, a in zip(case, accs)},
                }
                if name != THEIRS:
                    row["ratio_wall"], row["ratio_cpu"] = their_wall / wall, their_cpu / cpu
                    # (compared in examples: the accuracies are float32 means)
                    lower = all(round(o * n) <= round(t * n) for o, t in zip(accs, theirs[-1][3]))
                    row["lower"] = "yes" if lower else "NO"
                table.add(**row)
    table.print()
    import torchattacks

    print(
        f"{cpu_name()}; CPU capability {torch.backends.cpu.get_cpu_capability()}; "
        f"{torch.get_num_threads()} thread(s); torch {torch.__version__}; "
        f"torchattacks {torchattacks.__version__}"
    )


if __name__ == "__main__":
    main()
