"""Speed of the adversarial evaluation against a plain torchattacks loop on the same model.

Rows, on one fixed seeded subset of the Fashion-MNIST test set and one budget (L-inf 8/255):

* PGD-10: a plain loop (``torchattacks.PGD`` over batches of every example, then one forward
  pass to count) against ``spatialmix.attacks.evaluate_robustness(attacks=("pgd",))`` with the
  masking checks off. "attacked img/s" counts examples x steps / wall time of each method's own
  work; "examples/s" is what a user waits for per evaluated example (spatialmix attacks only the
  correctly classified ones, so it evaluates faster than it attacks).
* AutoAttack: one plain ``torchattacks.AutoAttack(version="standard")`` call per batch against
  spatialmix's worst case of FGSM + PGD-10 with AutoAttack on the survivors.
* For information: the whole default evaluation (FGSM, PGD-10, all masking checks) at that budget.

The model is a quick-preset ConvMixer-96/4 trained briefly on a subset (or ``--run RUN_DIR``).
Methods alternate over ``--repeats`` so load from other programs hits both alike; the table gives
the median. Close other work before trusting it.

    python benchmarks/attack_throughput.py                      # 200 examples, AutoAttack on 50
    python benchmarks/attack_throughput.py --run runs/reproduce/classification/chans-seed0
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from spatialmix.attacks import InputSpaceModel, attack_mode, evaluate_robustness, select_examples
from spatialmix.reporting import ResultTable


def trained_model(run: str | None, out: Path):
    from spatialmix.data import load_dataset
    from spatialmix.study import PRESETS
    from spatialmix.train import load_trained_model, train

    if run is None:
        run = out / "run"
        config = PRESETS["quick"].base.replace(train_subset=4000, test_subset=500, epochs=1, progress=False)
        train(config, run)
    model, record = load_trained_model(run)
    return InputSpaceModel(model, record["data"]["mean"], record["data"]["std"]).eval(), load_dataset(
        record["train"]["dataset"])


def plain_loop(model, x, y, attack, batch_size: int) -> tuple[float, float]:
    """The loop a torchattacks user writes: attack every example, then count. (seconds, robust acc)"""
    start = time.perf_counter()
    robust = 0
    with attack_mode(model):
        for i in range(0, len(y), batch_size):
            adv = attack(x[i:i + batch_size], y[i:i + batch_size])
            with torch.no_grad():
                robust += int((model(adv).argmax(1) == y[i:i + batch_size]).sum())
    return time.perf_counter() - start, robust / len(y)


def ours(model, x, y, **settings) -> tuple[float, float]:
    result = evaluate_robustness(model, x, y, progress=False, **settings)
    return result["time_s"], result["budgets"][-1]["robust_acc"]


def main() -> None:
    import torchattacks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run directory to attack (default: train a quick model on 4000 images)")
    parser.add_argument("--n-examples", type=int, default=200)
    parser.add_argument("--aa-examples", type=int, default=50, help="examples of the AutoAttack rows")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-autoattack", action="store_true", help="skip the AutoAttack rows (slow on a CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    eps, steps = 8 / 255, 10
    with tempfile.TemporaryDirectory() as tmp:
        model, data = trained_model(args.run, Path(tmp))
    x, y = select_examples(data, args.n_examples, seed=0)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    n_correct = round(clean * len(y))
    common = dict(eps=(0, eps), steps=steps, batch_size=args.batch_size, device="cpu")

    pgd = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps)
    times = {"plain PGD": [], "spatialmix PGD": [], "plain AA": [], "spatialmix AA": [], "full": []}
    accs = {}
    xa, ya = x[:args.aa_examples], y[:args.aa_examples]
    for _ in range(args.repeats):
        t, accs["plain PGD"] = plain_loop(model, x, y, pgd, args.batch_size)
        times["plain PGD"].append(t)
        t, accs["spatialmix PGD"] = ours(model, x, y, attacks=("pgd",), autoattack="off", checks=False, **common)
        times["spatialmix PGD"].append(t)
        t, accs["full"] = ours(model, x, y, **common, autoattack="off")
        times["full"].append(t)
    if not args.no_autoattack:   # one repeat: minutes on a CPU
        aa = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
        t, accs["plain AA"] = plain_loop(model, xa, ya, aa, args.batch_size)
        times["plain AA"].append(t)
        t, accs["spatialmix AA"] = ours(model, xa, ya, autoattack="on", checks=False, **common)
        times["spatialmix AA"].append(t)

    table = ResultTable(f"Attack throughput (ConvMixer-96/4, Fashion-MNIST, L-inf 8/255, {torch.get_num_threads()} "
                        f"threads, clean acc {clean:.3f}, median of {args.repeats})",
                        [("method", "method", ""), ("examples", "examples", ""), ("attacked", "attacked", ""),
                         ("wall", "wall s", ".2f"), ("examples_s", "examples/s", ".1f"),
                         ("attacked_s", "attacked img-steps/s", ".0f"), ("robust", "robust acc", ".3f"),
                         ("vs", "speed vs plain", ".2f")])
    rows = [("plain torchattacks PGD-10 loop", "plain PGD", len(y), len(y), steps, None),
            ("spatialmix PGD-10 (checks off)", "spatialmix PGD", len(y), n_correct, steps, "plain PGD"),
            ("spatialmix FGSM + PGD-10 + all checks", "full", len(y), n_correct, None, "plain PGD"),
            ("plain torchattacks AutoAttack", "plain AA", len(ya), len(ya), None, None),
            ("spatialmix FGSM + PGD-10 + AutoAttack", "spatialmix AA", len(ya), None, None, "plain AA")]
    for method, key, n, attacked, per_example_steps, reference in rows:
        if not times[key]:
            continue
        wall = statistics.median(times[key])
        table.add(method=method, examples=n, attacked=attacked if attacked is not None else "-", wall=wall,
                  examples_s=n / wall, attacked_s=attacked * per_example_steps / wall if per_example_steps else None,
                  robust=accs[key], vs=statistics.median(times[reference]) / wall if reference else 1.0)
    table.print()


if __name__ == "__main__":
    main()
