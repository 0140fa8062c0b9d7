"""How many APGD-T targets the boundary stage needs: the default (4, ranked where its APGD-CE left
each example) against every other class (``--boundary-targets all``), on trained models.

For every run directory given (default: the quick preset's Full and Chans models of seed 0, trained
once in ``--out``), on the 500 fixed test images of ``select_examples`` at 2/255, 4/255 and 8/255
(L-inf), the standard strength with the checks off, once per choice of ``boundary_targets``. The
table gives per model and choice the robust examples at each budget, the gradient steps of the
whole evaluation and its wall time, and the difference in robust examples from ``all``; a second
table counts, over every model and budget of the ``all`` runs, the examples the boundary stage's
APGD-T broke by the rank of its target at APGD-CE's end point (``apgd-t1``: the class with the
highest logit there after the label): how far down the ranking the breaks reach.

    python benchmarks/boundary_targets.py --threads 1 --out runs/attack-standard
    python benchmarks/boundary_targets.py runs/reproduce/classification/full-seed1 ...
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import torch

from attack_standard import cpu_name, quick_model
from spatialmix.data.datasets import load_dataset
from spatialmix.engine.train import load_trained_model
from spatialmix.robustness.evaluate import evaluate_robustness
from spatialmix.robustness.run_attacks import select_examples
from spatialmix.robustness.settings import AttackSettings, eps_label, parse_eps_list
from spatialmix.studies.context import QUICK
from spatialmix.ui.display import ResultTable

CHOICES = {"4 (default)": 4, "all": None}


def evaluate(model, x, y, eps, targets) -> tuple[dict, float]:
    settings = AttackSettings(eps=eps, n_examples=len(y), boundary_targets=targets, device="cpu").validate()
    started = time.perf_counter()
    result = evaluate_robustness(model, x, y, settings, progress=False, checks=False)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories (default: the quick preset's seed-0 models)")
    parser.add_argument("--out", default="runs/attack-standard", help="where the quick models are trained")
    parser.add_argument("--eps", default="0,2/255,4/255,8/255")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    eps = parse_eps_list(args.eps)
    x, y = select_examples(load_dataset(QUICK.base.dataset), 500, seed=0)
    if args.runs:
        models = {run: load_trained_model(run, device="cpu")[0].eval() for run in args.runs}
    else:
        models = {mode: quick_model(Path(args.out), mode, args.threads)[0] for mode in ("full", "chans")}
    budgets = [e for e in eps if e > 0]
    table = ResultTable(
        "Robust examples of 500 per budget (difference from 'all'), gradient steps and wall time of "
        "the standard strength, checks off, by the boundary stage's APGD-T targets",
        [("model", "model", ""), ("targets", "boundary targets", "")]
        + [(f"e{e}", f"robust {eps_label(e)}", "") for e in budgets]
        + [("steps", "gradient steps", ",.0f"), ("wall", "wall s", ".1f")],
    )
    ranks: Counter = Counter()
    for name, model in models.items():
        results = {choice: evaluate(model, x, y, eps, targets) for choice, targets in CHOICES.items()}
        every = {b["eps"]: b["n_robust"] for b in results["all"][0]["budgets"]}
        for choice, (result, wall) in results.items():
            counts = {b["eps"]: b["n_robust"] for b in result["budgets"]}
            table.add(
                model=name,
                targets=choice,
                steps=result["gradient_steps"],
                wall=wall,
                **{f"e{e}": f"{counts[e]} ({counts[e] - every[e]:+d})" for e in budgets},
            )
        for budget in results["all"][0]["budgets"]:
            for key, broke in budget["broken_by"].items():
                if key.startswith("boundary apgd-t"):
                    ranks[int(key.removeprefix("boundary apgd-t"))] += broke
    table.print()
    total = sum(ranks.values())
    by_rank = ResultTable(
        "The boundary stage's APGD-T breaks with every other class as a target, by the target's rank "
        "at APGD-CE's end point (all models and budgets above)",
        [("rank", "rank", ""), ("broke", "examples broken", ""), ("share", "share", ".0%")],
    )
    for rank in sorted(ranks):
        by_rank.add(rank=rank, broke=ranks[rank], share=ranks[rank] / max(total, 1))
    by_rank.print()
    print(
        f"{cpu_name()}; CPU capability {torch.backends.cpu.get_cpu_capability()}; "
        f"{torch.get_num_threads()} thread(s); torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
