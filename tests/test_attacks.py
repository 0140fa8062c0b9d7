"""Adversarial evaluation: exact answers on linear models, the eps ball, early stopping, the strong
reference, the masking checks, the ``spatialmix attack`` command and the robustness / smoothing studies.

A linear classifier is the one model whose worst case is known in closed form: for an example of
class y and every other class j, the margin m_j(x) = (w_y - w_j).x + b_y - b_j is linear, so its
minimum over the L-inf ball intersected with the [0, 1] box is reached coordinate by coordinate
(move each pixel by eps against the sign of (w_y - w_j), as far as the box allows). The example
is robust iff every such minimum stays positive.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import SUBPROCESS_ENV, TINY, run_cli, snapshot_files, write_idx
from spatialmix.cli import main as cli
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.options import given_values
from spatialmix.robustness import apgd, attacks, masking, run_attacks, settings
from spatialmix.robustness import results as attack_results
from spatialmix.robustness.evaluate import attack_examples, evaluate_robustness
from spatialmix.robustness.settings import AttackSettings
from spatialmix.studies import reproduce

FAST = dict(reference_examples=16, reference_steps=20, reference_targets=0, square_queries=50, progress=False)
# Two-class models: APGD-T's loss needs 4 classes.
BINARY = dict(attacks=("apgd-ce",), **FAST)


# --------------------------------------------------------------------------- helpers


def linear_model(d: int, classes: int, seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d, classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(classes, d, generator=g))
        layer.bias.copy_(torch.randn(classes, generator=g) * 0.1)
    return nn.Sequential(nn.Flatten(), layer)


def analytic_robust(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact L-inf robustness of each example for a linear model, box [0, 1] included (float64)."""
    w, b = model[1].weight.detach().double(), model[1].bias.detach().double()
    xf = x.flatten(1).double()
    robust = []
    for xi, yi in zip(xf, y.tolist()):
        ok = True
        for j in range(len(b)):
            if j == yi:
                continue
            d = w[yi] - w[j]
            # Lowering the margin: pixels with d > 0 go down (at most to 0), the others up (at most to 1).
            room = torch.where(d > 0, xi.clamp(max=eps), (1 - xi).clamp(max=eps))
            ok &= bool(d @ xi + b[yi] - b[j] - (d.abs() * room).sum() > 0)
        robust.append(ok)
    return torch.tensor(robust)


def bits(budget: dict) -> torch.Tensor:
    return torch.tensor([c == "1" for c in budget["robust_bits"]])


def linear_problem(classes: int, n: int = 160, seed: int = 0):
    """Inputs anywhere in [0, 1] (so the box binds on some pixels), labels mostly the model's own."""
    model = linear_model(16, classes, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[: n // 10] = (y[: n // 10] + 1) % classes  # a few misclassified examples
    return model, x, y


# --------------------------------------------------------------------------- settings


def test_eps_parsing_and_labels():
    assert settings.parse_eps("8/255") == pytest.approx(8 / 255)
    assert settings.parse_eps_list("0, 1/255,0.5") == (0.0, pytest.approx(1 / 255), 0.5)
    assert attacks.eps_label(4 / 255) == "4/255" and attacks.eps_label(0.0) == "0"
    assert attacks.eps_label(0.3) == "0.3"
    for bad in ("abc", "1/0", ""):
        with pytest.raises(SpatialmixError, match="eps"):
            settings.parse_eps_list(bad)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"eps": (0, 2.0)}, "outside"),
        ({"eps": (-1 / 255,)}, "outside"),
        ({"attacks": ("fgsm", "cw")}, "unknown attack"),
        ({"norm": "L1"}, "unknown norm"),
        ({"n_examples": 0}, "at least 1"),
        ({"targets": -1}, "targets"),
        ({"targets": 0}, "0 targets"),
        ({"reference_examples": -3}, "reference examples"),
        ({"steps": 0}, "steps"),
        ({"bogus": 1}, "unknown attack settings"),
        ({"device": "tpu"}, "unknown device"),
        ({"strength": "slow"}, "unknown strength"),
        ({"boundary_examples": -1}, "boundary examples"),
        ({"boundary_steps": 0}, "boundary steps"),
    ],
)
def test_bad_settings_are_one_clear_line(changes, message):
    with pytest.raises(SpatialmixError, match=message) as err:
        AttackSettings().replace(**changes).validate()
    assert "\n" not in str(err.value)


def test_settings_are_canonical():
    s = AttackSettings(eps=("8/255", 0, 0), norm="linf", attacks="pgd,fgsm,pgd").validate()
    assert s.eps == (0.0, pytest.approx(8 / 255)) and s.norm == "Linf"
    assert s.attacks == ("pgd", "fgsm")
    assert attacks.attack_plan(AttackSettings(targets=3)) == ["apgd-ce", "apgd-t1", "apgd-t2", "apgd-t3"]


def test_settings_round_trip_through_json_and_the_command_line():
    chosen = AttackSettings(eps=(0, 8 / 255), strength="fast", boundary_examples=None, boundary_targets=4)
    chosen = chosen.validate()
    assert AttackSettings(**json.loads(json.dumps(chosen.to_dict()))).validate() == chosen
    args = cli.build_parser().parse_args(
        ["attack", "RUN", "--strength", "fast", "--boundary-examples", "all", "--boundary-targets", "4"]
    )
    given = AttackSettings(**given_values(AttackSettings, args)).validate()
    assert given == chosen.replace(eps=settings.DEFAULT_EPS)
    default = AttackSettings().validate()  # the standard strength: the boundary stage on 4 targets
    assert (default.strength, default.boundary_targets, default.boundary_stage()) == ("standard", 4, True)
    assert not default.replace(strength="fast").boundary_stage()
    assert attacks.boundary_plan(default, 10) == ["apgd-ce"] + [f"apgd-t{j}" for j in range(1, 5)]
    # up to 4: a model with fewer other classes gets all of them, none below the DLR loss's 4 classes
    assert attacks.boundary_plan(default, 4) == ["apgd-ce", "apgd-t1", "apgd-t2", "apgd-t3"]
    assert attacks.boundary_plan(default, 3) == ["apgd-ce"]
    every = default.replace(boundary_targets=None)  # --boundary-targets all
    assert attacks.boundary_plan(every, 10) == ["apgd-ce"] + [f"apgd-t{j}" for j in range(1, 10)]


# --------------------------------------------------------------------------- exact answers


@pytest.mark.parametrize("attack", ["apgd-ce", "pgd"])
def test_linf_attacks_equal_the_analytic_worst_case_of_a_linear_classifier(attack):
    model, x, y = linear_problem(classes=2)
    result = evaluate_robustness(
        model, x, y, eps=(0, 0.02, 0.05, 0.1, 0.2), **{**BINARY, "attacks": (attack,)}
    )
    assert result["warnings"] == []
    for budget in result["budgets"]:
        expected = analytic_robust(model, x, y, budget["eps"])
        assert torch.equal(bits(budget), expected), budget["eps_label"]
        assert budget["default_acc"] == pytest.approx(
            expected.float().mean().item()
        )  # no help from the checks
    accs = [b["robust_acc"] for b in result["budgets"]]
    assert accs[0] > accs[-1] > 0  # the test covers robust and broken examples


@pytest.mark.parametrize("strength", ["fast", "standard"])
def test_the_strong_attacks_find_the_analytic_worst_case_of_a_multiclass_linear_classifier(strength):
    # Cross-entropy attacks need not find a multi-class linear model's worst case; APGD-T on every
    # other class must: the reference at the fast strength, the boundary stage at the standard one.
    model, x, y = linear_problem(classes=10, n=40, seed=3)
    result = evaluate_robustness(
        model,
        x,
        y,
        eps=(0, 0.02, 0.05),
        attacks=("apgd-ce",),
        steps=2,
        strength=strength,
        boundary_examples=None,
        boundary_steps=20,
        reference_examples=None,
        reference_steps=20,
        reference_targets=9,
        square_queries=20,
        progress=False,
    )
    reference = result["reference_check"]
    assert reference["eps"] == [0.02, 0.05] and reference["examples"] == 40
    exact = [analytic_robust(model, x, y, e).float().mean().item() for e in reference["eps"]]
    for budget in result["budgets"]:
        assert torch.equal(bits(budget), analytic_robust(model, x, y, budget["eps"]))
    assert reference["reference_acc"] == pytest.approx(exact)
    gaps = [d - r for d, r in zip(reference["default_acc"], reference["reference_acc"])]
    assert reference["max_gap"] == pytest.approx(max(gaps)) and min(gaps) >= 0
    if strength == "fast":  # two steps of APGD-CE miss examples: the reference finds them
        assert max(gaps) > 0 and reference["attacked"][0] > 0
    else:  # the boundary stage found them, part of the default: nothing is left for the reference
        assert reference["default_acc"] == pytest.approx(exact) and reference["attacked"] == [0, 0]
        assert any(key.startswith("boundary apgd-t") for key in result["budgets"][-1]["broken_by"])


def test_targeted_dlr_loss_matches_its_formula_and_ignores_shift_and_scale():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    # sorted: 3, 2, 1, 0, -1 -> -(3 - 2) / (3 - (1 + 0) / 2)
    assert apgd.targeted_dlr_loss(logits, y, t).item() == pytest.approx(-1 / 2.5)
    assert apgd.targeted_dlr_loss(7 * logits - 4, y, t).item() == pytest.approx(-1 / 2.5)


def test_early_stopping_changes_nothing_for_the_other_examples():
    # Each example's trajectory is its own: attacking it in a batch or alone gives the same point.
    model, x, y = linear_problem(classes=10, n=24, seed=6)
    for kwargs in ({"loss": "ce"}, {"loss": "dlr-targeted", "target": (y + 1) % 10}):
        together = apgd.apgd(model, x, y, 0.05, "Linf", 12, start=x, **kwargs)
        assert 0 < together.broken.sum() < len(y)
        for i in range(len(y)):
            alone = apgd.apgd(
                model,
                x[i : i + 1],
                y[i : i + 1],
                0.05,
                "Linf",
                12,
                start=x[i : i + 1],
                **{k: v[i : i + 1] if torch.is_tensor(v) else v for k, v in kwargs.items()},
            )
            assert bool(alone.broken[0]) == bool(together.broken[i])
            assert torch.allclose(alone.adv[0], together.adv[i], atol=1e-6)
        # A broken example stops at once: the cost is less than every example for every step.
        assert together.gradient_steps < len(y) * 13


def test_forward_backward_in_cpu_chunks_gives_what_one_pass_gives(monkeypatch):
    """The CPU chunks (apgd.CPU_CHUNK) split only the compute: losses, gradients, and so every
    decision of the attack, are those of one pass over the whole batch."""
    model, x, y = linear_problem(classes=10, n=70, seed=3)
    target = (y + 1) % 10
    assert [(s.start, s.stop) for s in apgd._chunks(70, torch.device("cpu"))] == [(0, 35), (35, 70)]
    assert apgd._chunks(130, torch.device("cpu"))[-1] == slice(88, 130)  # 3 even parts of at most 64
    assert apgd._chunks(300, torch.device("cuda")) == [slice(0, 300)]  # a GPU takes the batch at once
    chunked = apgd._loss_and_grad(model, x, y, target, apgd.LOSSES["dlr-targeted"])
    with monkeypatch.context() as m:
        m.setattr(apgd, "CPU_CHUNK", 10_000)
        whole = apgd._loss_and_grad(model, x, y, target, apgd.LOSSES["dlr-targeted"])
        one_pass = apgd.apgd(model, x, y, 0.05, "Linf", 12, loss="dlr-targeted", target=target, start=x)
    for a, b in zip(chunked, whole):
        assert a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-6)
    monkeypatch.setattr(apgd, "CPU_CHUNK", 16)
    in_chunks = apgd.apgd(model, x, y, 0.05, "Linf", 12, loss="dlr-targeted", target=target, start=x)
    assert torch.equal(in_chunks.broken, one_pass.broken) and 0 < int(one_pass.broken.sum()) < len(y)
    assert torch.allclose(in_chunks.adv, one_pass.adv, atol=1e-6)
    assert in_chunks.gradient_steps == one_pass.gradient_steps


def test_each_budget_attacks_only_the_examples_still_standing(monkeypatch):
    model, x, y = linear_problem(classes=2, n=80)
    attacked = []
    real = apgd.apgd

    def spy(model, x, y, eps, *args, **kwargs):
        attacked.append((eps, len(x), kwargs.get("start") is not None))
        return real(model, x, y, eps, *args, **kwargs)

    monkeypatch.setattr(apgd, "apgd", spy)
    budgets = (0, 0.02, 0.05, 0.1)
    result = evaluate_robustness(model, x, y, eps=budgets, checks=False, **{**BINARY, "strength": "fast"})
    robust = {b["eps"]: b["n_robust"] for b in result["budgets"]}
    assert [a[0] for a in attacked] == list(budgets[1:])
    for (_eps, n, warm), smaller in zip(attacked, budgets):
        assert n == robust[smaller]  # broken at a smaller budget: not attacked again
        assert warm == (smaller > 0)  # started where the budget before ended
    assert robust[0.02] > robust[0.1] > 0


def test_the_boundary_stage_attacks_the_survivors_nearest_the_boundary(monkeypatch):
    model, x, y = linear_problem(classes=10, n=120, seed=5)
    seen = []
    real = attacks.Attacker.run

    def spy(self, attack, eps, idx, *, tag, steps=None, start=None, ranked=None):
        if tag == "boundary" and attack == "apgd-ce":
            standing = self.standing(eps)
            closest = self.closest[eps]
            seen.append((eps, idx.tolist(), standing.tolist(), closest.clone(), steps))
        return real(self, attack, eps, idx, tag=tag, steps=steps, start=start, ranked=ranked)

    monkeypatch.setattr(attacks.Attacker, "run", spy)
    result = evaluate_robustness(
        model, x, y, eps=(0, 0.02, 0.05), boundary_examples=12, boundary_steps=7, checks=False, progress=False
    )
    assert [eps for eps, *_ in seen] == [0.02, 0.05]
    for _eps, attacked, standing, closest, steps in seen:
        # the 12 standing examples with the smallest margin the attacks reached, nearest first
        assert len(attacked) == 12 and set(attacked) <= set(standing) and steps == 7
        assert closest[attacked].tolist() == sorted(closest[attacked].tolist())
        others = sorted(set(standing) - set(attacked))
        assert closest[attacked].max() <= closest[others].min()
    broken = result["budgets"][-1]["broken_by"]
    assert [k for k in broken if k.startswith("boundary")] == ["boundary apgd-ce"] + [
        f"boundary apgd-t{j}" for j in range(1, 5)
    ]


def test_the_boundary_stage_aims_at_the_classes_ranked_where_its_apgd_ce_left_each_example(monkeypatch):
    model, x, y = linear_problem(classes=10, n=120, seed=5)
    calls = []
    real = attacks.Attacker.run

    def spy(self, attack, eps, idx, *, tag, steps=None, start=None, ranked=None):
        broken, ends = real(self, attack, eps, idx, tag=tag, steps=steps, start=start, ranked=ranked)
        if tag == "boundary":
            calls.append((attack, idx.clone(), ranked, broken, ends.points, self.logits(ends.points)))
        return broken, ends

    monkeypatch.setattr(attacks.Attacker, "run", spy)
    evaluate_robustness(model, x, y, eps=(0, 0.05), boundary_examples=None, checks=False, progress=False)
    (ce, idx, no_ranking, broken, _, at_end), *targeted = calls
    assert ce == "apgd-ce" and no_ranking is None
    assert [c[0] for c in targeted] == [f"apgd-t{j}" for j in (1, 2, 3, 4)]
    kept = ~broken
    ranked = targeted[0][2]
    assert torch.equal(targeted[0][1], idx[kept]) and torch.equal(ranked[:, 0], y[idx[kept]])
    # the other classes, highest logit first, at the point APGD-CE reached (not on the clean image)
    others = at_end[kept].scatter(1, y[idx[kept]][:, None], -torch.inf)
    assert torch.equal(others.gather(1, ranked[:, 1:]), others.sort(1, descending=True).values[:, :-1])
    clean = attacks.Attacker(model, x, y, AttackSettings(device="cpu"), torch.device("cpu")).ranked[idx[kept]]
    assert not torch.equal(ranked, clean)  # the test covers examples whose ranking moved
    for (_, before, ranked_before, hit, _, _), (_, after, ranked_after, *_) in zip(targeted, targeted[1:]):
        assert torch.equal(after, before[~hit]) and torch.equal(ranked_after, ranked_before[~hit])


def test_two_targets_ranked_where_apgd_ce_left_each_example_reach_the_analytic_worst_case():
    # A 10-class linear model, where 2 steps of APGD-CE leave examples for the boundary stage: with 2
    # targets ranked at APGD-CE's end point it finds every breakable example, as with all 9.
    model, x, y = linear_problem(classes=10, n=200, seed=11)
    common = dict(eps=(0, 0.03, 0.06), attacks=("apgd-ce",), steps=2, boundary_examples=None)
    common.update(boundary_steps=20, checks=False, progress=False)
    for targets in (2, None):
        result = evaluate_robustness(model, x, y, boundary_targets=targets, **common)
        for budget in result["budgets"]:
            assert torch.equal(bits(budget), analytic_robust(model, x, y, budget["eps"]))


def test_the_standard_strength_is_at_least_as_strong_as_the_fast_one(trained_run, band_data):
    common = dict(eps=(0, 4 / 255, 8 / 255), n_examples=64, reference_examples=0, progress=False)
    fast = run_attacks.evaluate_run(trained_run, strength="fast", data_dir=str(band_data), **common)
    standard = run_attacks.evaluate_run(trained_run, data_dir=str(band_data), **common)  # the default
    assert standard["settings"]["strength"] == "standard" and fast["settings"]["steps"] == 10
    for f, s in zip(fast["budgets"], standard["budgets"]):
        # the same attacks first, then the boundary stage: robust there means robust at the fast strength
        assert not (bits(s) & ~bits(f)).any()
    extra = sum(n for b in standard["budgets"] for k, n in b["broken_by"].items() if k.startswith("boundary"))
    assert extra > 0  # and what it broke stood after the fast attacks
    assert sum(b["n_robust"] for b in standard["budgets"]) < sum(b["n_robust"] for b in fast["budgets"])


def test_progress_callback_sees_every_stage_and_the_steps_spent():
    model, x, y = linear_problem(classes=5, n=30, seed=4)
    calls = []
    result = evaluate_robustness(
        model, x, y, eps=(0, 0.02), **{**FAST, "progress": lambda *a: calls.append(a)}
    )
    stages = {stage.split(":")[0] for stage, _ in calls}
    assert {"default", "reference", "check", "chance"} <= stages
    steps = [n for _, n in calls]
    assert steps == sorted(steps) and steps[-1] == result["gradient_steps"] > 0


def test_a_warm_start_reuses_the_gradient_it_ended_with():
    # The loss does not depend on eps: the gradient at the point an attack ended is the next
    # budget's first gradient, so the warm-started attack is the same without recomputing it.
    model, x, y = linear_problem(classes=10, n=30, seed=6)
    first = apgd.apgd(model, x, y, 0.02, "Linf", 8, generator=torch.Generator().manual_seed(0))
    keep = ~first.broken
    reused = apgd.apgd(
        model,
        x[keep],
        y[keep],
        0.05,
        "Linf",
        8,
        start=first.adv[keep],
        start_loss=first.loss[keep],
        start_grad=first.grad[keep],
    )
    again = apgd.apgd(model, x[keep], y[keep], 0.05, "Linf", 8, start=first.adv[keep])
    assert torch.equal(reused.broken, again.broken) and 0 < int(reused.broken.sum()) < int(keep.sum())
    assert torch.allclose(reused.adv, again.adv, atol=1e-6)
    assert again.gradient_steps - reused.gradient_steps == int(keep.sum())


def test_l2_attack_never_beats_the_optimum_and_finds_it_away_from_the_boundary():
    model, x, y = linear_problem(classes=2, seed=5)
    x = 0.3 + 0.4 * x  # the box cannot bind for eps <= 0.3
    w = model[1].weight.detach().double()
    d = (w[y] - w[1 - y]).norm(dim=1)
    with torch.no_grad():
        logits = model(x).double()
    margin = logits.gather(1, y[:, None])[:, 0] - logits.gather(1, (1 - y)[:, None])[:, 0]
    eps = 0.25
    result = evaluate_robustness(model, x, y, eps=(eps,), norm="L2", steps=20, **BINARY)
    got = bits(result["budgets"][0])
    slack = margin - eps * d  # > 0: robust under the L2 optimum
    assert not (got & (slack <= 0)).any()  # never claims robust what the optimum breaks
    clear = slack.abs() > 0.02 * eps * d
    assert torch.equal(got[clear], (slack > 0)[clear])
    assert result["budgets"][0]["max_perturbation"] <= eps + 1e-5


def test_eps_zero_is_the_clean_accuracy_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10)
    )
    model.train()
    x = torch.rand(32, 1, 8, 8)
    y = torch.arange(32) % 10
    model.eval()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    result = evaluate_robustness(model, x, y, eps=(0,), **FAST)
    assert result["clean_acc"] == pytest.approx(clean) and result["budgets"][0][
        "robust_acc"
    ] == pytest.approx(clean)
    assert model.training and all(p.requires_grad for p in model.parameters())
    for name in ("fgsm", "pgd", "apgd-ce", "square"):
        adv = attack_examples(model.eval(), x, y, name, 0.0, square_queries=20)
        assert torch.equal(adv, x), name


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 1.0)])
def test_perturbations_stay_inside_the_eps_ball_and_the_box(norm, eps):
    model = linear_model(64, 10, seed=4)
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    x[:, :, 0] = 0.0  # pixels on the edges of the box
    x[:, :, -1] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct: every attack has work to do
    for name in ("fgsm", "pgd", "apgd-ce", "apgd-t", "square"):
        adv = attack_examples(model, x, y, name, eps, norm, seed=3, square_queries=50, steps=5)
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
        assert (size <= eps + 1e-5).all(), name
        assert adv.min() >= 0 and adv.max() <= 1, name
        if name != "square":  # (Square returns unbroken examples unchanged)
            assert size.min() > 0.3 * eps, name
    result = evaluate_robustness(model, x, y, eps=(eps,), norm=norm, **FAST)
    assert 0 < result["budgets"][0]["max_perturbation"] <= eps + 1e-5


def test_worst_case_never_rises_with_eps_and_is_below_the_default_attacks():
    model, x, y = linear_problem(classes=5, seed=7)
    result = evaluate_robustness(model, x, y, eps=(0, 0.01, 0.03, 0.06), steps=3, **FAST)
    masks = [bits(b) for b in result["budgets"]]
    for smaller, larger in zip(masks, masks[1:]):
        assert not (larger & ~smaller).any()  # robust at a larger eps implies robust at a smaller
    for b in result["budgets"]:
        assert b["robust_acc"] <= b["default_acc"] + 1e-9
        assert b["n_robust"] == int(bits(b).sum()) == round(b["robust_acc"] * len(y))
    again = evaluate_robustness(model, x, y, eps=(0, 0.01, 0.03, 0.06), steps=3, **FAST)
    assert [b["robust_bits"] for b in again["budgets"]] == [b["robust_bits"] for b in result["budgets"]]


@pytest.mark.parametrize("checks", [False, True])
def test_an_evaluation_never_imports_torchattacks(checks):
    """Every attack of an evaluation, Square of the checks included, is spatialmix's own: torchattacks
    is optional (its metadata pins an old requests) and the result records no version of it."""
    code = (
        "import sys, torch; from torch import nn; import spatialmix as sm\n"
        "torch.manual_seed(0)\n"
        "r = sm.evaluate_robustness(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), torch.rand(8, 1, 4, 4),\n"
        f"    torch.arange(8) % 4, eps=(0, 0.1), checks={checks}, square_queries=20, targets=3,\n"
        "    reference_targets=3, progress=False)\n"
        "print('torchattacks' in sys.modules, 'torchattacks_version' in r)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=SUBPROCESS_ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_examples_digest_pairs_results_on_the_same_examples():
    model, x, y = linear_problem(classes=5, n=20, seed=8)
    other = linear_model(16, 5, seed=9)
    a = evaluate_robustness(model, x, y, eps=(0, 0.01), **FAST)
    b = evaluate_robustness(other, x, y, eps=(0, 0.01), **FAST)
    c = evaluate_robustness(model, x.flip(0), y.flip(0), eps=(0, 0.01), **FAST)
    assert a["examples_sha256"] == b["examples_sha256"] != c["examples_sha256"]
    assert a["examples_sha256"] == attack_results.examples_digest(x, y)


def test_bad_examples_are_rejected():
    model = linear_model(16, 2, 0)
    with pytest.raises(SpatialmixError, match="zero examples"):
        evaluate_robustness(model, torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long), **BINARY)
    with pytest.raises(SpatialmixError, match=r"\[0, 1\]"):
        evaluate_robustness(model, torch.full((2, 1, 4, 4), 3.0), torch.zeros(2, dtype=torch.long), **BINARY)


def test_too_few_classes_for_targeted_attacks_is_refused_before_any_attack_runs(monkeypatch):
    model, x, y = linear_problem(classes=3, n=20)
    calls = []
    monkeypatch.setattr(apgd, "apgd", lambda *a, **k: calls.append(1) or pytest.fail("attacked"))
    monkeypatch.setattr(apgd, "pgd", lambda *a, **k: calls.append(1) or pytest.fail("attacked"))
    for changes in ({}, {"attacks": ("apgd-ce",)}):  # the default's APGD-T, or the reference's
        with pytest.raises(SpatialmixError, match="at least 4 classes") as err:
            evaluate_robustness(model, x, y, eps=(0, 0.1), progress=False, **changes)
        assert "--reference-targets 0" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SpatialmixError, match="other classes"):
        evaluate_robustness(linear_model(16, 5, 0), x, y % 5, eps=(0, 0.1), progress=False, targets=5)
    assert calls == []


# --------------------------------------------------------------------------- gradient masking


class RoundInput(nn.Module):
    """x -> round(4x) / 4: the forward pass of a quantizer, whose gradient is zero everywhere."""

    def forward(self, x):
        return torch.round(x * 4) / 4


def two_blob_problem():
    """Dark images (class 0) and bright ones (class 1); a linear model on the mean brightness."""
    g = torch.Generator().manual_seed(0)
    n = 40
    y = torch.arange(n) % 2
    x = torch.where(
        y[:, None, None, None] == 1,
        0.8 + 0.15 * torch.rand(n, 1, 6, 6, generator=g),
        0.05 + 0.15 * torch.rand(n, 1, 6, 6, generator=g),
    )
    layer = nn.Linear(36, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.full((36,), -5 / 36), torch.full((36,), 5 / 36)]))
        layer.bias.copy_(torch.tensor([2.5, -2.5]))
    return x, y, layer


def test_masking_checks_fire_on_a_gradient_masking_model_and_not_on_a_normal_one():
    x, y, layer = two_blob_problem()
    settings = dict(
        eps=(0, 0.1, 0.3, 0.45),
        attacks=("apgd-ce",),
        reference_examples=40,
        reference_steps=20,
        reference_targets=0,
        square_queries=300,
        progress=False,
    )
    plain = evaluate_robustness(nn.Sequential(nn.Flatten(), layer), x, y, **settings)
    assert plain["warnings"] == [] and all(c["ok"] for c in plain["checks"])
    assert [b["robust_acc"] for b in plain["budgets"]] == [1.0, 1.0, 1.0, 0.0]  # mean moves by eps: exact
    assert {c["name"] for c in plain["checks"]} == {
        "reference",
        "steps",
        "monotone",
        "black-box",
        "chance",
        "gradient",
    }

    masked = evaluate_robustness(nn.Sequential(RoundInput(), nn.Flatten(), layer), x, y, **settings)
    failed = {c["name"] for c in masked["checks"] if not c["ok"]}
    assert {"chance", "black-box", "gradient"} <= failed
    # What Square found is counted: the reported number is not the white-box one.
    last = masked["budgets"][-1]
    assert last["default_acc"] == 1.0 and last["robust_acc"] < 1.0 and last["broken_by"]["square"] > 0
    # Masking makes every number doubtful: every attacked row carries the warnings.
    for budget in masked["budgets"][1:]:
        assert {"chance", "black-box"} <= set(budget["warnings"])
    assert any("gradient masking" in w or "masked" in w for w in masked["warnings"])


class Constant(nn.Module):
    """The same logits for every image (``weight`` 0 on the pixels): its gradient is zero everywhere."""

    def __init__(self, logits):
        super().__init__()
        self.layer = nn.Linear(36, len(logits))
        with torch.no_grad():
            self.layer.weight.zero_()
            self.layer.bias.copy_(torch.tensor(logits))

    def forward(self, x):
        return self.layer(x.flatten(1))


@pytest.mark.parametrize("checks", [False, True])
def test_a_model_with_nan_logits_is_refused_before_any_attack(checks, monkeypatch):
    x, y, layer = two_blob_problem()
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    monkeypatch.setattr(attacks.Attacker, "run", lambda *a, **k: pytest.fail("attacked a NaN model"))
    with pytest.raises(SpatialmixError) as err:
        evaluate_robustness(nn.Sequential(nn.Flatten(), layer), x, y, label="nan", checks=checks, **BINARY)
    assert str(err.value).startswith(f"nan: the model gives NaN or infinite logits on {len(y)} of {len(y)}")
    with pytest.raises(SpatialmixError, match="NaN or infinite logits"):
        attack_examples(nn.Sequential(nn.Flatten(), layer), x, y, "apgd-ce", 0.1)


@pytest.mark.parametrize("checks", [False, True])
def test_attacks_without_a_usable_gradient_fail_the_gradient_check(checks):
    """A model the attacks cannot move (a zero gradient) is not shown robust: its correct examples
    stand untested, and the gradient check fails on every attacked row; a normal model passes it."""
    x, y, layer = two_blob_problem()
    settings = dict(eps=(0, 0.1, 0.45), checks=checks, **BINARY)
    flat = evaluate_robustness(Constant([1.0, 0.0]), x, y, **settings)
    assert [b["robust_acc"] for b in flat["budgets"]] == [flat["clean_acc"]] * 3 and flat["clean_acc"] < 1
    assert all(b["max_perturbation"] == 0 for b in flat["budgets"])
    gradient = next(c for c in flat["checks"] if c["name"] == "gradient")
    n_correct = int(round(flat["clean_acc"] * len(y)))
    assert not gradient["ok"] and gradient["eps"] == 0.1 and gradient["all_rows"]
    assert f"on {n_correct} of {len(y)} examples at eps 0.1" in gradient["message"]
    assert gradient["message"] in flat["warnings"]
    assert [b["warnings"].count("gradient") for b in flat["budgets"]] == [0, 1, 1]
    plain = evaluate_robustness(nn.Sequential(nn.Flatten(), layer), x, y, **settings)
    assert next(c for c in plain["checks"] if c["name"] == "gradient")["ok"]


def test_black_box_check_counts_the_white_box_survivors_it_attacked():
    model, x, y = linear_problem(classes=2, n=60, seed=2)
    eps = 0.05
    result = evaluate_robustness(model, x, y, eps=(0, eps), **{**BINARY, "reference_examples": 40})
    survivors = int(analytic_robust(model, x, y, eps)[:40].sum())  # APGD is exact here: these survive
    assert 0 < survivors < 40
    black_box = next(c for c in result["checks"] if c["name"] == "black-box")
    assert f"broke 0 of {survivors} white-box survivors" in black_box["message"]


def test_a_reference_gap_warns_on_every_attacked_row():
    # One step of APGD-CE leaves what 9-target APGD-T breaks: the numbers at every budget are doubtful.
    model, x, y = linear_problem(classes=10, n=40, seed=3)
    result = evaluate_robustness(
        model,
        x,
        y,
        eps=(0, 0.01, 0.02, 0.05),
        attacks=("apgd-ce",),
        steps=1,
        strength="fast",
        reference_examples=40,
        reference_steps=20,
        reference_targets=9,
        square_queries=20,
        progress=False,
    )
    assert result["reference_check"]["max_gap"] > 0.01
    reference = next(c for c in result["checks"] if c["name"] == "reference")
    assert not reference["ok"] and "every budget" in reference["message"]
    assert all("reference" in b["warnings"] for b in result["budgets"][1:])
    rows = attack_results.result_rows(result)
    assert all("reference" in row["warnings"] for row in rows[1:]) and rows[0]["warnings"] == "ok"


@pytest.mark.parametrize("seed, fails", [(4, True), (3, False)])
def test_the_reference_on_the_examples_nearest_the_boundary_catches_a_weakened_attack(seed, fails):
    # One step of APGD-CE and no targets: a deliberately weak attack, 5 points too high on seed 4's
    # model (known exactly: the model is linear), half a point on seed 3's. The reference runs on the
    # 20 of 200 survivors nearest the decision boundary: they hold every example the attack missed,
    # where a random 20 would hold a tenth of them.
    model, x, y = linear_problem(classes=10, n=200, seed=seed)
    result = evaluate_robustness(
        model,
        x,
        y,
        eps=(0, 0.02, 0.05),
        attacks=("apgd-ce",),
        steps=1,
        strength="fast",
        reference_examples=20,
        reference_steps=20,
        reference_targets=9,
        square_queries=20,
        progress=False,
    )
    reference = result["reference_check"]
    exact = [analytic_robust(model, x, y, e).float().mean().item() for e in reference["eps"]]
    softness = max(d - e for d, e in zip(reference["default_acc"], exact))
    assert reference["attacked"] == [20, 20] and reference["reference_acc"] == pytest.approx(exact)
    check = next(c for c in result["checks"] if c["name"] == "reference")
    assert (softness >= 0.03, check["ok"]) == (fails, not fails)
    if fails:
        assert (
            "on the 20 survivors nearest the decision boundary lowers robust accuracy by" in check["message"]
        )
        assert f"{softness:.3f}" in check["message"] and "every budget may be too high" in check["message"]
        assert all("reference" in b["warnings"] for b in result["budgets"][1:])


def test_check_functions():
    assert not masking.check_monotone([0, 0.1, 0.2], [0.9, 0.5, 0.6], 0.02).ok
    assert masking.check_monotone([0, 0.1, 0.2], [0.9, 0.5, 0.51], 0.02).ok
    assert not masking.check_single_step(0.1, extra_broken=5, attacked=20, n=100, tolerance=0.02).ok
    assert masking.check_single_step(0.1, extra_broken=2, attacked=20, n=100, tolerance=0.02).ok
    assert not masking.check_chance(0.5, acc=0.4, bound=0.1, tolerance=0.02, norm="Linf").ok
    assert masking.check_chance(0.5, acc=0.1, bound=0.1, tolerance=0.02, norm="Linf").ok
    black_box = masking.check_black_box(0.1, extra_broken=5, survivors=8, n=50, tolerance=0.02)
    assert not black_box.ok and "5 of 8 white-box survivors" in black_box.message and black_box.all_rows
    ref = masking.ReferenceCheck(100, [0.1, 0.2], [0.5, 0.3], [0.5, 0.27], 100, 9)
    assert ref.max_gap == pytest.approx(0.03) and not masking.check_reference(ref, 0.01).ok
    assert masking.check_reference(ref, 0.05).ok
    assert masking.check_chance is masking.check_chance  # the old names still work


# --------------------------------------------------------------------------- saved runs and the command line


def write_band_dataset(directory, n_train: int = 512, n_test: int = 64) -> None:
    """Fashion-MNIST files whose class (0-3) is the bright band of rows: learnable in one epoch."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 4
        images = torch.randint(0, 64, (n, 28, 28), generator=g).to(torch.uint8)
        for band in range(4):
            images[labels == band, band * 7 : (band + 1) * 7, :] += 150
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images.numpy())
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels.to(torch.uint8).numpy())


@pytest.fixture(scope="module")
def band_data(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("band-data")
    write_band_dataset(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, band_data):
    from spatialmix.engine.config import TrainConfig
    from spatialmix.engine.train import fit

    data_dir = band_data
    run_dir = tmp_path_factory.mktemp("attack-runs") / "run"
    summary = fit(
        TrainConfig(**{**TINY, "data_dir": str(data_dir), "epochs": 2, "lr": 0.02, "augment": "none"}),
        run_dir,
    )
    assert summary["test_acc"] > 0.5
    return run_dir


@pytest.fixture
def two_runs(trained_run, tmp_path):
    dirs = [tmp_path / "runs" / name for name in ("a", "b")]
    for d in dirs:
        shutil.copytree(trained_run, d)
    return dirs


CLI_FAST = [
    "--eps",
    "0,8/255",
    "--n-examples",
    "16",
    "--steps",
    "2",
    "--reference-examples",
    "4",
    "--reference-steps",
    "3",
    "--reference-targets",
    "2",
    "--square-queries",
    "10",
    "--no-progress",
]


def test_attack_command_prints_the_table_saves_json_and_plot(two_runs, band_data, capsys):
    # The test set comes from --data-dir, never from the folder a run's config names.
    assert cli.main(["attack", *map(str, two_runs), *CLI_FAST, "--data-dir", str(band_data)]) == 0
    out = capsys.readouterr().out
    assert "robust acc" in out and "8/255" in out and "(a)" in out and "(b)" in out
    for run_dir in two_runs:
        saved = json.loads((run_dir / "robustness.json").read_text())
        assert [b["eps_label"] for b in saved["budgets"]] == ["0", "8/255"] and saved["n_examples"] == 16
        assert saved["rows"][0]["clean_acc"] == saved["clean_acc"]
        assert saved["weights"]["checkpoint"] == "epoch-0002"
        assert saved["clean_acc"] > 0.5 and saved["budgets"][1]["robust_acc"] < saved["clean_acc"]
    png = two_runs[0].parent / "robustness.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attack_runs_reuses_a_result_only_for_the_same_settings(two_runs, band_data, monkeypatch):
    settings = AttackSettings(
        eps=(0, 8 / 255),
        n_examples=8,
        steps=2,
        reference_examples=4,
        reference_steps=3,
        reference_targets=2,
        square_queries=10,
    )
    first = run_attacks.attack_runs(
        two_runs[:1], settings, plot=None, progress=False, data_dir=str(band_data)
    )
    monkeypatch.setattr(run_attacks, "evaluate_run", lambda *a, **k: pytest.fail("recomputed a saved result"))
    again = run_attacks.attack_runs(
        two_runs[:1], settings, plot=None, progress=False, reuse=True, data_dir=str(band_data)
    )
    assert again[0]["budgets"] == first[0]["budgets"]
    with pytest.raises(pytest.fail.Exception):
        run_attacks.attack_runs(
            two_runs[:1],
            settings.replace(steps=3),
            plot=None,
            progress=False,
            reuse=True,
            data_dir=str(band_data),
        )


def test_a_result_saved_before_the_strengths_still_reads_and_is_attacked_again(
    two_runs, band_data, tmp_path, monkeypatch
):
    settings = AttackSettings(
        eps=(0, 8 / 255), n_examples=8, steps=2, reference_examples=4, reference_steps=3, square_queries=10
    )
    run_attacks.attack_runs(two_runs[:1], settings, plot=None, progress=False, data_dir=str(band_data))
    path = two_runs[0] / "robustness.json"
    old = json.loads(path.read_text())  # as the evaluation saved it before strengths and the boundary stage
    for key in ("strength", "boundary_examples", "boundary_steps", "boundary_targets"):
        del old["settings"][key]
    old["settings"]["targets"] = 3
    for key in ("attacked", "examples", "selection"):
        del old["reference_check"][key]
    runs.atomic_write_json(path, old)
    rows = attack_results.result_rows(old)
    assert [r["eps"] for r in rows] == ["0", "8/255"] and rows[1]["reference_gap"] is not None
    attack_results.robustness_table([old]).print()
    attack_results.plot_robustness([old], tmp_path / "old.png")
    old_check = masking.ReferenceCheck(
        **{
            k: old["reference_check"][k]
            for k in ("n", "eps", "default_acc", "reference_acc", "steps", "targets")
        }
    )
    assert f"on {old_check.n} examples" in masking.check_reference(old_check, 0.01).message
    # Another configuration than today's defaults: reuse attacks it again (and saves the new result).
    attacked = []
    real = run_attacks.evaluate_run
    monkeypatch.setattr(run_attacks, "evaluate_run", lambda *a, **k: attacked.append(1) or real(*a, **k))
    again = run_attacks.attack_runs(
        two_runs[:1], settings, plot=None, progress=False, reuse=True, data_dir=str(band_data)
    )
    assert attacked == [1] and again[0]["settings"]["strength"] == "standard"
    assert json.loads(path.read_text())["settings"] == again[0]["settings"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "does not exist"),
        (["{not_a_run}"], "not a spatialmix run"),
        (["{run}", "--eps", "0,2"], "outside [0, 1]"),
        (["{run}", "--eps=-1/255"], "outside [0, 1]"),
        (["{run}", "--eps", "0,eight"], "not a number"),
        (["{run}", "--attacks", "pgd,deepfool"], "unknown attack"),
        (["{run}", "--norm", "L1"], "unknown norm"),
        (["{run}", "--n-examples", "0"], "at least 1"),
        (["{run}", "--out-name", "../x"], "plain file stem"),
        (["{run}", "{missing}"], "does not exist"),
    ],
)
def test_attack_command_bad_input_is_one_line_exit_2_and_touches_nothing(
    two_runs, tmp_path, capsys, args, message
):
    run_dir = two_runs[0]
    runs.atomic_write_json(run_dir / "robustness.json", {"earlier": "result"})
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "notes.txt").write_text("hello")
    before = snapshot_files(tmp_path)
    names = {"run": run_dir, "missing": tmp_path / "missing", "not_a_run": tmp_path / "not-a-run"}
    argv = ["attack", *CLI_FAST[2:], *[a.format(**names) for a in args]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spatialmix: error:") and message in err and "\n" not in err
    assert snapshot_files(tmp_path) == before


def rewrite_weights(run_dir, change) -> None:
    """Replace every tensor of the run's checkpoints by ``change(name, tensor)``."""
    from safetensors.torch import load_file, save_file

    for path in (run_dir / "checkpoints").rglob("model.safetensors"):
        save_file({k: change(k, v).contiguous() for k, v in load_file(path).items()}, path)


# The fast strength with no reference or checks, and the standard strength with them (sized down).
STRENGTH_ARGS = {
    "fast, no checks": [*CLI_FAST[:4], "--steps", "2", "--strength", "fast", "--reference-examples", "0"],
    "standard, checks": CLI_FAST[:-1],
}


@pytest.mark.parametrize("strength", STRENGTH_ARGS)
def test_attack_refuses_a_run_whose_logits_are_nan_and_writes_nothing(
    two_runs, band_data, tmp_path, capsys, strength
):
    run_dir = two_runs[0]
    rewrite_weights(run_dir, lambda name, t: torch.full_like(t, float("nan")) if t.is_floating_point() else t)
    before = snapshot_files(tmp_path)
    argv = ["attack", str(run_dir), *STRENGTH_ARGS[strength], "--no-progress", "--data-dir", str(band_data)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "spatialmix: error: Full seed 0 (a): the model gives NaN or infinite logits on 16 of 16"
    )
    assert "\n" not in err
    assert snapshot_files(tmp_path) == before


@pytest.mark.parametrize("strength", STRENGTH_ARGS)
def test_attack_marks_a_run_the_attacks_cannot_move_as_failing_the_gradient_check(
    two_runs, band_data, capsys, strength
):
    """A head of zeros: finite logits, the same for every image, and no gradient to follow. The
    robust accuracy equals the clean one with no perturbation found; the result says it is untested."""
    run_dir = two_runs[0]
    rewrite_weights(run_dir, lambda name, t: torch.zeros_like(t) if name == "head.weight" else t)
    argv = ["attack", str(run_dir), *STRENGTH_ARGS[strength], "--no-progress", "--data-dir", str(band_data)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "no usable gradient" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning (Full seed 0 (a)): the attacks found")
    saved = json.loads((run_dir / "robustness.json").read_text())
    assert saved["budgets"][1]["robust_acc"] == saved["clean_acc"] < 1
    assert saved["budgets"][1]["max_perturbation"] == 0
    gradient = next(c for c in saved["checks"] if c["name"] == "gradient")
    assert not gradient["ok"] and gradient["message"] in saved["warnings"]
    assert [row["warnings"] for row in saved["rows"]][0] == "ok" and "gradient" in saved["rows"][1][
        "warnings"
    ]


@pytest.mark.slow
def test_attack_command_error_in_a_fresh_process(tmp_path):
    result = run_cli(["attack", str(tmp_path / "nowhere")], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("spatialmix: error:") and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the studies


@pytest.mark.slow
def test_reproduce_runs_the_robustness_and_smoothing_studies(tmp_path, monkeypatch, fake_fashion_dir):
    from spatialmix.engine.config import TrainConfig
    from spatialmix.studies import context as study

    options = {
        "robustness": {
            "eps": (0, 8 / 255),
            "n_examples": 16,
            "steps": 2,
            "reference_examples": 4,
            "reference_steps": 3,
            "reference_targets": 2,
            "square_queries": 10,
        },
        "smoothing": {"sigmas": (0, 1.0)},
    }
    preset = study.Preset(
        "tiny",
        "tiny",
        TrainConfig(**{**TINY, "data_dir": str(fake_fashion_dir), "train_subset": 128}),
        options=options,
    )
    monkeypatch.setitem(study.PRESETS, "tiny", preset)
    out = tmp_path / "study"
    results = reproduce.reproduce("tiny", out, studies=["classification", "robustness", "smoothing"])
    robustness, smoothing = results["robustness"], results["smoothing"]
    assert [row["mode"] for row in robustness.tables[0].rows] == ["Full", "Chans", "Space"]
    assert "robust 8/255" in robustness.tables[0].rows[0]
    assert [row["sigma"] for row in smoothing.tables[0].rows] == [0.0, 1.0]
    # sigma 0 is the classification study's Chans run: trained and attacked once.
    smoothing_runs = [r["run"] for r in smoothing.data["runs"]]
    assert smoothing_runs[0] == str(study.classification_run_dir(out, "chans", 0))
    assert sorted(p.name for p in (out / "smoothing").iterdir() if p.is_dir()) == ["chans-sigma1-seed0"]
    assert (robustness.section, smoothing.section) == ("robustness", "smoothing")
    for figure in robustness.figures + smoothing.figures:
        assert str(figure.file).endswith(".png") and (tmp_path / figure.file).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "results.json").read_text())["studies"]
    # every run's warnings, as its own robustness.json has them, labelled with the run
    attacked = [
        json.loads((Path(r["run"]) / "robustness.json").read_text())
        for r in saved["robustness"]["data"]["runs"]
    ]
    assert [r["warnings"] for r in saved["robustness"]["data"]["runs"]] == [r["warnings"] for r in attacked]
    assert saved["robustness"]["data"]["warnings"] == [
        f"{r['label']}: {w}" for r in attacked for w in r["warnings"]
    ]
    assert saved["smoothing"]["data"]["settings"]["n_examples"] == 16
    # Started again, nothing is trained or attacked a second time.
    monkeypatch.setattr(run_attacks, "evaluate_run", lambda *a, **k: pytest.fail("attacked again"))
    again = reproduce.reproduce("tiny", out, studies=["robustness", "smoothing"])
    assert again["smoothing"].tables[0].rows == smoothing.tables[0].rows


def test_study_settings_come_from_the_preset_options_and_are_checked(tmp_path):
    from spatialmix.studies import context as study
    from spatialmix.studies import robustness

    def context(options):
        preset = study.Preset("t", "t", study.PRESETS["quick"].base, options=options)
        return study.StudyContext(preset, tmp_path, (0,), {})

    quick = robustness.attack_settings(context({}))
    assert (quick.n_examples, quick.eps, quick.strength) == (500, settings.DEFAULT_EPS, "standard")
    assert robustness.attack_settings(context({"robustness": {"strength": "fast"}})).strength == "fast"
    for name in ("quick", "standard", "paper"):  # every preset evaluates at the standard strength
        assert robustness.attack_settings(
            study.StudyContext(study.PRESETS[name], tmp_path, (0,), {})
        ).boundary_stage()
    described = robustness.describe_attacks(quick)
    boundary = "then APGD-CE-30 + APGD-T-30 on the 4 classes ranked next after it for the 50 nearest"
    assert boundary in described
    every = robustness.describe_attacks(quick.replace(boundary_targets=None))
    assert "APGD-T-30 on every other class for the 50 nearest" in every
    assert robustness.smoothing_sigmas(context({})) == (0.0, 0.5, 1.0, 2.0)
    assert robustness.attack_settings(context({"robustness": {"steps": 3}})).steps == 3
    with pytest.raises(SpatialmixError, match="robustness.stepz"):
        robustness.attack_settings(context({"robustness": {"stepz": 3}}))
    with pytest.raises(SpatialmixError, match="sigmas"):
        robustness.smoothing_sigmas(context({"smoothing": {"sigmas": (0, -1)}}))
    with pytest.raises(SpatialmixError, match="outside"):
        robustness.attack_settings(context({"robustness": {"eps": (0, 3)}}))
    # the modes the robustness study attacks: the preset's, or those its option names
    assert robustness.robustness_modes(context({})) == ("full", "chans", "space")
    only = context({"robustness": {"modes": ("full", "chans")}})
    assert robustness.robustness_modes(only) == ("full", "chans")
    assert robustness.attack_settings(only) == robustness.attack_settings(
        context({})
    )  # not an attack setting
    for bad in ((), ("full", "spaces")):
        with pytest.raises(SpatialmixError, match=r"robustness.modes must name some of the preset's modes"):
            robustness.robustness_modes(context({"robustness": {"modes": bad}}))
    # claim 2 compares Chans with Full: the standard preset attacks those two only
    standard = study.StudyContext(study.PRESETS["standard"], tmp_path, (0,), {})
    assert robustness.robustness_modes(standard) == ("full", "chans")
