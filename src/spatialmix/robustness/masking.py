"""Can the numbers be trusted? The strong reference and the checks against gradient masking.

Both run after the default attacks; what their attacks break counts in the results, and a failed
check is a warning in the result, its rows and the JSON.

* ``reference`` (reported as ``result["reference_check"]``): at every budget, smallest first,
  100-step APGD-CE and APGD-T (``reference_targets`` classes) from random starts on the
  ``reference_examples`` examples still standing *nearest the decision boundary* (the smallest
  margin z_y - max_(j != y) z_j the default attacks reached inside the ball) that the boundary
  stage did not attack there. What a weaker attack misses are examples it brought near the
  boundary without crossing it, so these are where a stronger one breaks more: at the fast
  strength they hold most of what the 10-step attacks miss; at the standard strength, the next
  ones after the boundary stage's, they test that the stage reached far enough. Its gap at each
  budget is the share of *all* the examples it broke on top of the default (a lower bound of how
  much the default over-states robust accuracy); above ``tolerance`` the numbers of every row
  may be too high.

The masking checks run on a fixed sample, the first ``reference_examples`` examples of the
evaluation (a seeded random subset of the test set, so its first examples are a random sample):

* ``steps``: single-step FGSM must not break examples that every iterative attack missed.
* ``monotone``: the examples broken at a smaller budget, attacked afresh (the default attacks from
  random starts) at each larger one, must be broken again: an attack that fails at a larger
  budget where a smaller one succeeded cannot follow the gradient.
* ``black-box``: Square (AutoAttack's black-box part) must not break examples that survived every
  white-box attack; it runs at the check budget, the largest one at which some sample example
  survived.
* ``chance``: at a very large budget (L-inf 0.5, or L2 0.5 sqrt(d)) every image can be moved to
  the uniform gray image, so at most the examples of the class the model predicts for gray may
  survive the default attacks.

One check runs in every evaluation, checks on or off, as it costs nothing:

* ``gradient``: at every budget, at most ``tolerance`` of the examples may stand after attacks
  whose every gradient on them was NaN, infinite or zero: those attacks could not move them, so
  they are untested rather than robust (a model whose gradients are broken or flat).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from spatialmix.robustness.attacks import Attacker, Budget, attack_plan
from spatialmix.robustness.settings import AttackSettings, eps_label


@dataclass
class Check:
    name: str
    ok: bool
    message: str
    eps: float | None = None
    all_rows: bool = False  # a failure that makes every budget's number doubtful, not just its own

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReferenceCheck:
    """Robust accuracy (of all the examples) after the default attacks, and after the strong reference
    ran on the ``attacked[i]`` survivors nearest the boundary at budget ``eps[i]`` (at most ``n``)."""

    n: int
    eps: list[float]
    default_acc: list[float]
    reference_acc: list[float]
    steps: int
    targets: int
    attacked: list[int] | None = None
    examples: int | None = None  # the evaluation's examples (what the accuracies are shares of)

    @property
    def gaps(self) -> list[float]:
        return [d - r for d, r in zip(self.default_acc, self.reference_acc)]

    @property
    def max_gap(self) -> float:
        return max(self.gaps, default=0.0)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "gaps": self.gaps,
            "max_gap": self.max_gap,
            "attacks": f"APGD-CE {self.steps} steps + APGD-T {self.steps} steps x {self.targets} targets",
            "selection": "the survivors nearest the decision boundary",
        }


@dataclass
class MaskingReport:
    checks: list[Check]
    reference: ReferenceCheck | None
    chance: dict | None
    check_eps: float | None
    broken_by_checks: dict[float, dict[str, int]]  # per budget, what each check's attack broke on top


def run_checks(attacker: Attacker, s: AttackSettings, budgets: list[Budget]) -> MaskingReport:
    """The reference (nearest the boundary), then the masking checks (on the sample); the attacker keeps
    what they break."""
    n = len(attacker.y) if s.reference_examples is None else min(len(attacker.y), s.reference_examples)
    positive = [b for b in budgets if b.eps > 0]
    if n == 0 or not positive:
        return MaskingReport([], None, None, None, {})
    sample = torch.zeros(len(attacker.y), dtype=torch.bool)
    sample[:n] = True
    extra: dict[float, dict[str, int]] = {b.eps: {} for b in positive}
    reference = run_reference(attacker, s, positive, n, extra)
    checks = [check_reference(reference, s.tolerance)]
    checks.append(check_single_step(*_fgsm_on_survivors(attacker, positive, sample, extra), n, s.tolerance))
    checks.append(
        check_monotone(
            [b.eps for b in positive], _fresh_accuracies(attacker, s, positive, sample), s.tolerance
        )
    )
    check_eps = max(
        (b.eps for b in positive if attacker.standing(b.eps, sample).numel()), default=positive[-1].eps
    )
    survivors = attacker.standing(check_eps, sample)
    broken, _ = attacker.run("square", check_eps, survivors, tag="check")
    extra[check_eps]["square"] = int(broken.sum())
    checks.append(check_black_box(check_eps, int(broken.sum()), len(survivors), n, s.tolerance))
    chance = _chance(attacker, s, sample)
    checks.append(check_chance(chance["eps"], chance["robust_acc"], chance["bound"], s.tolerance, s.norm))
    return MaskingReport(checks, reference, chance, check_eps, extra)


def run_reference(
    attacker: Attacker, s: AttackSettings, budgets: list[Budget], n: int, extra: dict
) -> ReferenceCheck:
    """100-step APGD-CE + APGD-T at every budget, smallest first, on the ``n`` survivors nearest the
    decision boundary that the boundary stage did not attack there."""
    plan = ["apgd-ce"] + [f"apgd-t{j}" for j in range(1, s.reference_targets + 1)]
    default_acc, reference_acc, attacked = [], [], []
    for budget in budgets:
        default_acc.append(float(budget.default_robust.float().mean()))
        todo = attacker.nearest_the_boundary(budget.eps, n, skip=budget.boundary)
        attacked.append(len(todo))
        for attack in plan:
            broken, _ = attacker.run(attack, budget.eps, todo, steps=s.reference_steps, tag="reference")
            extra[budget.eps][f"reference {attack}"] = int(broken.sum())
            todo = todo[~broken]
        reference_acc.append(float(attacker.robust(budget.eps).float().mean()))
    return ReferenceCheck(
        n,
        [b.eps for b in budgets],
        default_acc,
        reference_acc,
        s.reference_steps,
        s.reference_targets,
        attacked,
        len(attacker.y),
    )


def _fgsm_on_survivors(
    attacker: Attacker, budgets: list[Budget], sample: torch.Tensor, extra: dict
) -> tuple[float, int, int]:
    """FGSM on the iterative attacks' survivors at every budget: (budget where it broke most,
    examples it broke there, survivors it attacked there)."""
    worst = None
    for budget in budgets:
        survivors = attacker.standing(budget.eps, sample)
        broken, _ = attacker.run("fgsm", budget.eps, survivors, tag="check")
        extra[budget.eps]["fgsm"] = int(broken.sum())
        if worst is None or int(broken.sum()) > worst[1]:
            worst = (budget.eps, int(broken.sum()), len(survivors))
    return worst


def _fresh_accuracies(
    attacker: Attacker, s: AttackSettings, budgets: list[Budget], sample: torch.Tensor
) -> list[float]:
    """Per budget, the sample's accuracy under that budget's own attacks (from random starts)."""
    n = int(sample.sum())
    accuracies = []
    for smaller, budget in zip([None] + budgets[:-1], budgets):
        # Robust here already means every attack at this budget missed it; add back the examples
        # broken only at smaller budgets that this budget's attacks, run afresh, cannot break.
        missed = 0
        if smaller is not None:
            todo = (~attacker.robust(smaller.eps) & attacker.correct & sample).nonzero().flatten()
            for attack in attack_plan(s):
                if not len(todo):
                    break
                broken, _ = attacker.run(attack, budget.eps, todo, tag="check-fresh")
                todo = todo[~broken]
            missed = len(todo)
        accuracies.append((int(attacker.standing(budget.eps, sample).numel()) + missed) / n)
    return accuracies


def _chance(attacker: Attacker, s: AttackSettings, sample: torch.Tensor) -> dict:
    large_eps = 0.5 if s.norm == "Linf" else 0.5 * math.sqrt(attacker.x[0].numel())
    idx = (attacker.correct & sample).nonzero().flatten()
    todo = idx
    for attack in attack_plan(s):
        if not len(todo):
            break
        broken, _ = attacker.run(attack, large_eps, todo, tag="chance")
        todo = todo[~broken]
    gray_class = int(attacker.logits(torch.full_like(attacker.x[:1], 0.5)).argmax(1)[0])
    n = int(sample.sum())
    bound = float((attacker.y[sample] == gray_class).float().mean())
    return {
        "eps": large_eps,
        "robust_acc": len(todo) / n,
        "bound": bound,
        "gray_class": gray_class,
        "examples": n,
    }


# --------------------------------------------------------------------------- the verdicts


def check_gradients(attacker: Attacker, budgets: list[Budget], tolerance: float) -> Check:
    """Fails when, at some budget, more than ``tolerance`` of the examples stand untested: attacked
    there, but with a NaN, infinite or zero gradient at every point (see ``Attacker.blind``)."""
    n = len(attacker.y)
    blind = {b.eps: int(attacker.blind(b.eps).sum()) for b in budgets if b.eps > 0}
    failing = [eps for eps, k in blind.items() if k > tolerance * n]
    if failing:
        eps = failing[0]
        more = f" (and at {len(failing) - 1} larger budgets)" if len(failing) > 1 else ""
        return Check(
            "gradient",
            False,
            f"the attacks found no usable gradient (NaN, infinite or zero at every point) on {blind[eps]} of "
            f"{n} examples at eps {eps_label(eps)}{more} and could not move them: they count as robust "
            f"untested; the model's gradients are broken or flat, so its robust accuracy is not measured",
            eps=eps,
            all_rows=True,
        )
    worst = max(blind.values(), default=0)
    return Check("gradient", True, f"at most {worst} of {n} examples stood without a usable gradient")


def check_reference(reference: ReferenceCheck, tolerance: float) -> Check:
    """Fails when the strong reference breaks more than ``tolerance`` of the examples on top at a budget."""
    i = max(range(len(reference.gaps)), key=lambda k: reference.gaps[k])
    gap, eps = reference.gaps[i], reference.eps[i]
    where = (
        f"on the {reference.attacked[i]} survivors nearest the decision boundary"
        if reference.attacked is not None
        else f"on {reference.n} examples"
    )
    if gap > tolerance + 1e-12:
        return Check(
            "reference",
            False,
            f"the reference ({reference.to_dict()['attacks']}) {where} lowers robust accuracy by {gap:.3f} "
            f"at eps {eps_label(eps)}: the numbers at every budget may be too high; use the standard "
            f"strength (--strength standard) or raise --steps/--targets",
            eps=eps,
            all_rows=True,
        )
    return Check(
        "reference",
        True,
        f"the reference lowers robust accuracy by at most {gap:.3f} (eps {eps_label(eps)}, {where})",
        eps=eps,
    )


def check_single_step(eps: float, extra_broken: int, attacked: int, n: int, tolerance: float) -> Check:
    """Fails when single-step FGSM breaks examples that every iterative attack missed (a masking symptom)."""
    share = extra_broken / max(1, n)
    if share > tolerance:
        return Check(
            "steps",
            False,
            f"single-step FGSM breaks {extra_broken} of {attacked} examples every iterative attack missed "
            f"at eps {eps_label(eps)} ({share:.3f} of {n}): more steps do worse, a sign of gradient "
            f"masking",
            eps=eps,
            all_rows=True,
        )
    return Check(
        "steps",
        True,
        f"FGSM broke {extra_broken} of {attacked} iterative-attack survivors at eps {eps_label(eps)}",
        eps=eps,
    )


def check_monotone(eps_list, accuracies, tolerance: float) -> Check:
    """Fails when the accuracy a budget got from its own attacks rises above a smaller budget's."""
    worst = None
    for i, (e_small, a_small) in enumerate(zip(eps_list, accuracies)):
        for e_large, a_large in zip(eps_list[i + 1 :], accuracies[i + 1 :]):
            rise = a_large - a_small
            if rise > tolerance and (worst is None or rise > worst[0]):
                worst = (rise, e_small, e_large, a_small, a_large)
    if worst is None:
        return Check("monotone", True, "robust accuracy does not rise with eps")
    rise, e_small, e_large, a_small, a_large = worst
    return Check(
        "monotone",
        False,
        f"robust accuracy rises with eps: {a_small:.3f} at eps {eps_label(e_small)} but {a_large:.3f} at "
        f"{eps_label(e_large)} (the attacks at {eps_label(e_large)} missed examples a smaller budget broke; "
        f"reported numbers take the worst case, but the attack is unreliable: raise --steps/--restarts)",
        eps=e_large,
    )


def check_black_box(eps: float, extra_broken: int, survivors: int, n: int, tolerance: float) -> Check:
    """Fails when black-box Square breaks more than ``tolerance`` of the sample that white-box attacks
    missed."""
    share = extra_broken / max(1, n)
    if share > tolerance:
        return Check(
            "black-box",
            False,
            f"black-box Square breaks {extra_broken} of {survivors} white-box survivors at eps "
            f"{eps_label(eps)} ({share:.3f} of {n} examples): the gradients are masked",
            eps=eps,
            all_rows=True,
        )
    return Check(
        "black-box",
        True,
        f"Square broke {extra_broken} of {survivors} white-box survivors at eps {eps_label(eps)}",
        eps=eps,
    )


def check_chance(large_eps: float, acc: float, bound: float, tolerance: float, norm: str) -> Check:
    """Fails when robust accuracy at a budget that reaches the gray image stays above the bound."""
    where = f"eps {large_eps:g} ({norm})"
    if acc > bound + tolerance:
        return Check(
            "chance",
            False,
            f"at {where} every image can be made uniform gray, so at most {bound:.3f} can stay robust, "
            f"but {acc:.3f} did: the attack cannot follow the gradient (gradient masking)",
            eps=large_eps,
            all_rows=True,
        )
    return Check("chance", True, f"robust accuracy {acc:.3f} at {where} (bound {bound:.3f})", eps=large_eps)
