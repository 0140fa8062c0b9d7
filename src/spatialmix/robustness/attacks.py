"""Adversarial evaluation of trained models: the attack engine.

The conventions are RobustBench's: inputs in [0, 1], normalization inside the attacked model
(`InputSpaceModel`), the model in eval mode and in float32. One evaluation, read top to
bottom in `attack_every_budget`:

* the budgets go from the smallest to the largest; at each one, every attack of
  ``settings.attacks`` (default: APGD-CE, then APGD-T on the ``targets`` classes the model ranks
  next) runs only on the examples still standing: an example broken at a smaller budget is broken
  at every larger one, since the smaller ball lies inside the larger;
* every attack stops per example as soon as the model misclassifies it (`spatialmix.robustness.apgd`),
  so the cost is spent on the robust examples;
* an attack at a larger budget starts each example from its highest-loss point of the budget
  before (a warm start; ``warm_start=False``: random starts);
* every adversarial example is projected into the eps ball and [0, 1] and classified again here:
  nothing an attack claims is taken on trust.

An example counts as robust at ``eps`` only if no attack of the evaluation, at any budget, found a
misclassified input within distance ``eps`` of it, so the curve never rises with eps. Then the
checks of `spatialmix.robustness.masking` run on a fixed sample (the first ``reference_examples``):
the strong reference (100-step APGD-CE and APGD-T) at every budget, whose gap to the default is
saved as ``result["reference_check"]``, and the checks against gradient masking. What they
break counts in the results too. The settings: `spatialmix.robustness.settings`; reading,
writing and plotting results: `spatialmix.robustness.results`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from spatialmix.accel.speed import FastKernels
from spatialmix.robustness import apgd
from spatialmix.robustness.apgd import distance, project
from spatialmix.robustness.catalog import Batch, make_attack
from spatialmix.robustness.settings import AttackSettings, eps_label

RESULT_NAME = "robustness"
DLR_MIN_CLASSES = 4  # the targeted DLR loss divides by z_(1) - (z_(3) + z_(4)) / 2


# --------------------------------------------------------------------------- the attacked model


@contextmanager
def attack_mode(model: nn.Module):
    """Eval mode and no parameter gradients while attacking; the model is left as it was found.

    On a CPU also what makes each attack step faster without changing what it computes beyond
    float rounding: the fast CPU kernels (`speed.FastKernels`, batch norms as multiply-adds)
    and 4-D weights in channels_last memory, so oneDNN's convolutions and their input gradients take their
    faster path (with `apgd.CPU_CHUNK`: 17.3 s -> 11.4 s for the 10-step attacks on 3 targets on
    200 examples, docs/robustness.md).
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    layouts = [(p, p.data) for p in model.parameters() if p.dim() == 4 and p.device.type == "cpu"]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    for (
        p,
        data,
    ) in layouts:  # (not .contiguous(): it keeps a 1 x 1 kernel's strides, which oneDNN reads as NCHW)
        p.data = torch.empty_like(data, memory_format=torch.channels_last).copy_(data)
    try:
        with FastKernels(attack=True):
            yield model
    finally:
        for p, data in layouts:
            p.data = data
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def derive_seed(seed: int, *parts) -> int:
    """A seed for one attack call, from the evaluation seed and what the call is (not its order)."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# --------------------------------------------------------------------------- running one attack

Progress = Callable[[str, int], None]  # (what runs now, gradient steps spent so far)


class Attacker:
    """One model and its examples; runs named attacks on chosen examples and keeps the worst case.

    ``nearest[i]``: the distance of the closest misclassified input any attack found for example
    i (0 when it is misclassified as it is): it is broken at every budget at least that large.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        settings: AttackSettings,
        device: torch.device,
        progress: Progress | None = None,
    ):
        self.model, self.x, self.y, self.s, self.device = model, x, y, settings, device
        self.progress = progress or (lambda stage, steps: None)
        logits = self.logits(x)
        self.num_classes = logits.shape[1]
        self.finite = torch.isfinite(logits).all(1)  # (no attack can measure an example without)
        self.correct = logits.argmax(1) == y
        # APGD-T's targets: the classes the model ranks next on the clean image (Croce & Hein).
        self.ranked = logits.argsort(1, descending=True)
        self.nearest = torch.where(self.correct, math.inf, 0.0)
        self.gradient_steps = 0
        self.outside_ball = 0  # adversarial examples an attack returned outside the ball or [0, 1]
        self.max_perturbation: dict[float, float] = {}
        # per budget, the smallest margin z_y - max_(j != y) z_j any attack reached inside its ball
        # (inf: none got there); the survivors with the smallest are the nearest the decision boundary
        self.closest: dict[float, torch.Tensor] = {}
        # per budget, the examples some attack ran on, and those where one had a gradient to follow
        self.attacked: dict[float, torch.Tensor] = {}
        self.sighted: dict[float, torch.Tensor] = {}

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = [
            apgd.forward(self.model, x[i : i + self.s.batch_size].to(self.device)).float().cpu()
            for i in range(0, len(x), self.s.batch_size)
        ]
        return torch.cat(out)

    def ranked_at(self, points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Per example of ``idx``, its classes ranked by the model's logits at ``points`` (its label
        first, then the other classes, highest logit first): the targets nearest from there."""
        if not len(idx):
            return self.ranked[idx]
        logits = self.logits(points)
        logits[torch.arange(len(idx)), self.y[idx]] = torch.inf
        return logits.argsort(dim=1, descending=True, stable=True)

    def robust(self, eps: float) -> torch.Tensor:
        return self.nearest > eps

    def standing(self, eps: float, among: torch.Tensor | None = None) -> torch.Tensor:
        """Indices of the examples no attack has broken within ``eps`` (optionally: among a mask)."""
        mask = self.robust(eps) if among is None else self.robust(eps) & among
        return mask.nonzero().flatten()

    def run(
        self,
        attack: str,
        eps: float,
        idx: torch.Tensor,
        *,
        tag: str,
        steps: int | None = None,
        start: WarmStart | None = None,
        ranked: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, WarmStart]:
        """Attack the examples ``idx`` at ``eps``; returns which it broke and where each one ended.

        ``attack``: apgd-ce, apgd-tJ (the J-th ranked other class), pgd, fgsm or square.
        ``ranked``: per example of ``idx``, its classes best first, the label first (APGD-T's
        targets; default: as the model ranks them on the clean image).
        """
        ranked = self.ranked[idx] if ranked is None else ranked
        broken = torch.zeros(len(idx), dtype=torch.bool)
        ends = WarmStart(self.x[idx].clone())
        steps = steps or self.s.steps
        for b, first in enumerate(range(0, len(idx), self.s.batch_size)):
            part = slice(first, first + self.s.batch_size)
            x, y = self.x[idx[part]].to(self.device), self.y[idx[part]].to(self.device)
            begin = None if start is None else start.part(part, self.device)
            generator = torch.Generator().manual_seed(derive_seed(self.s.seed, attack, tag, f"{eps:.12g}", b))
            self.progress(f"{tag}: {attack} at eps {eps_label(eps)}", self.gradient_steps)
            outcome = self._attack(attack, eps, x, y, ranked[part], steps, begin, generator)
            # Only what the attack claims broken is checked (the rest it saw correctly classified).
            claimed = outcome.broken.nonzero().flatten()
            broken[first + claimed] = self._verify(
                outcome.adv[claimed], x[claimed], y[claimed], idx[part][claimed], eps
            )
            ends.store(part, outcome)
            self._note_margins(eps, idx[part], outcome)
            self._note_sight(eps, idx[part], outcome)
        self.progress(f"{tag}: {attack} at eps {eps_label(eps)}", self.gradient_steps)
        return broken, ends

    def _attack(self, attack, eps, x, y, ranked, steps, start, generator) -> apgd.Outcome:
        kind = make_attack(attack, self.s)
        batch = Batch(x, y, ranked)
        outcome = None
        for r in range(self.s.restarts if kind.restartable else 1):
            # a restart attacks only what the earlier ones missed, from a random start
            todo = torch.ones(len(y), dtype=torch.bool) if outcome is None else ~outcome.broken
            warm = start.select(todo) if start is not None and r == 0 else {}
            part = batch if outcome is None else Batch(x[todo], y[todo], batch.ranked[todo])
            o = kind(self.model, part, eps, steps, generator, warm)
            outcome = o if outcome is None else _merge(outcome, o, todo)
        self.gradient_steps += outcome.gradient_steps
        return outcome

    def _note_margins(self, eps: float, idx: torch.Tensor, outcome: apgd.Outcome) -> None:
        if outcome.margin is not None:
            closest = self.closest.setdefault(eps, torch.full((len(self.y),), math.inf))
            closest[idx] = torch.minimum(closest[idx], outcome.margin.float())

    def _note_sight(self, eps: float, idx: torch.Tensor, outcome: apgd.Outcome) -> None:
        attacked = self.attacked.setdefault(eps, torch.zeros(len(self.y), dtype=torch.bool))
        sighted = self.sighted.setdefault(eps, torch.zeros(len(self.y), dtype=torch.bool))
        attacked[idx] = True
        sighted[idx] |= True if outcome.sighted is None else outcome.sighted.cpu()

    def blind(self, eps: float) -> torch.Tensor:
        """The examples standing at ``eps`` that attacks ran on there without ever finding a gradient to
        follow (NaN, infinite or zero at every point they tried): untested, not shown robust."""
        attacked = self.attacked.get(eps, torch.zeros(len(self.y), dtype=torch.bool))
        sighted = self.sighted.get(eps, torch.zeros(len(self.y), dtype=torch.bool))
        return attacked & ~sighted & self.robust(eps)

    def nearest_the_boundary(
        self, eps: float, n: int | None, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (at most ``n``; None: all) examples standing at ``eps`` whose smallest margin there is
        the smallest, nearest first (ties in the evaluation's order), but those of ``skip``."""
        among = None
        if skip is not None:
            among = torch.ones(len(self.y), dtype=torch.bool)
            among[skip] = False
        idx = self.standing(eps, among)
        closest = self.closest.get(eps, torch.full((len(self.y),), math.inf))[idx]
        order = torch.sort(closest, stable=True).indices
        return idx[order[:n]] if n is not None else idx[order]

    def _verify(self, adv, x, y, idx, eps) -> torch.Tensor:
        """Project into the ball, classify again, record the distances of the misclassified points."""
        norm = self.s.norm
        outside = (
            (distance(adv, x, norm) > eps * (1 + 1e-5) + 1e-6)
            | (adv.flatten(1).amin(1) < -1e-6)
            | (adv.flatten(1).amax(1) > 1 + 1e-6)
        )
        self.outside_ball += int(outside.sum())
        adv = project(adv, x, eps, norm)
        with torch.no_grad():
            wrong = (apgd.forward(self.model, adv).argmax(1) != y).cpu()
        dist = distance(adv, x, norm).cpu().clamp(max=eps)  # (inside the ball up to rounding)
        self.nearest[idx[wrong]] = torch.minimum(self.nearest[idx[wrong]], dist[wrong])
        if len(dist):
            self.max_perturbation[eps] = max(self.max_perturbation.get(eps, 0.0), float(dist.max()))
        return wrong


def _merge(first: apgd.Outcome, second: apgd.Outcome, todo: torch.Tensor) -> apgd.Outcome:
    """A restart's outcome on ``todo`` over the first's (no warm-start gradients: they differ)."""
    adv = first.adv.clone()
    adv[todo] = second.adv
    broken = first.broken.clone()
    broken[todo] = second.broken
    margin = None
    if first.margin is not None and second.margin is not None:
        margin = first.margin.clone()
        margin[todo] = torch.minimum(margin[todo], second.margin)
    sighted = None
    if first.sighted is not None and second.sighted is not None:
        sighted = first.sighted.clone()
        sighted[todo] |= second.sighted
    return apgd.Outcome(
        broken, adv, first.gradient_steps + second.gradient_steps, margin=margin, sighted=sighted
    )


@dataclass
class WarmStart:
    """Where an attack left each example: the next budget's start, with APGD's loss and gradient there."""

    points: torch.Tensor
    loss: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    gradless: bool = False  # some example has no gradient (a restart, a non-APGD attack): recompute them all

    def store(self, part: slice, outcome: apgd.Outcome) -> None:
        self.points[part] = outcome.adv.cpu()
        if outcome.grad is None or self.gradless:
            self.gradless, self.loss, self.grad = True, None, None
            return
        if self.grad is None:
            self.loss, self.grad = torch.zeros(len(self.points)), torch.zeros_like(self.points)
        self.loss[part], self.grad[part] = outcome.loss.cpu(), outcome.grad.cpu()

    def take(self, idx: torch.Tensor) -> WarmStart:
        return WarmStart(*(None if t is None else t[idx] for t in (self.points, self.loss, self.grad)))

    def put(self, idx: torch.Tensor, ends: WarmStart) -> None:
        """Keep ``ends`` for the examples ``idx`` (a superset of those standing at the next budget)."""
        self.points[idx] = ends.points
        if ends.grad is None:
            self.loss = self.grad = None
            return
        if self.grad is None:
            self.loss, self.grad = torch.zeros(len(self.points)), torch.zeros_like(self.points)
        self.loss[idx], self.grad[idx] = ends.loss, ends.grad

    def part(self, part: slice, device) -> WarmStart:
        return WarmStart(
            *(None if t is None else t[part].to(device) for t in (self.points, self.loss, self.grad))
        )

    def select(self, mask: torch.Tensor) -> dict:
        """Keyword arguments of `spatialmix.robustness.apgd.apgd` for the examples of ``mask``."""
        if self.grad is None:
            return {"start": self.points[mask]}
        return {"start": self.points[mask], "start_loss": self.loss[mask], "start_grad": self.grad[mask]}


def attack_plan(settings: AttackSettings, targets: int | None = None) -> list[str]:
    """The attacks of ``settings.attacks`` in the order they run, APGD-T as one attack per target."""
    plan = []
    for name in settings.attacks:
        plan += (
            [f"apgd-t{j}" for j in range(1, (targets or settings.targets) + 1)]
            if name == "apgd-t"
            else [name]
        )
    return plan


# --------------------------------------------------------------------------- the evaluation


def boundary_plan(settings: AttackSettings, num_classes: int) -> list[str]:
    """The boundary stage's attacks: APGD-CE, then APGD-T on up to ``boundary_targets`` classes (None:
    every other class; none when the model has too few classes for the targeted DLR loss)."""
    others = num_classes - 1 if num_classes >= DLR_MIN_CLASSES else 0
    targets = others if settings.boundary_targets is None else min(settings.boundary_targets, others)
    return ["apgd-ce"] + [f"apgd-t{j}" for j in range(1, targets + 1)]


@dataclass
class Budget:
    """What the default attacks did at one budget."""

    eps: float
    broken_by: dict[str, int] = field(default_factory=dict)  # per attack, the examples it broke here
    default_robust: torch.Tensor | None = None  # robust after the default attacks alone
    boundary: torch.Tensor | None = None  # the examples the boundary stage attacked here


def attack_every_budget(attacker: Attacker, s: AttackSettings) -> list[Budget]:
    """The default evaluation: every attack at every budget, smallest first, on what still stands;
    at the standard strength, then the boundary stage."""
    plan = attack_plan(s)
    starts: dict[str, WarmStart] = {}  # per attack, where each example ended at the last budget
    budgets = []
    for eps in s.eps:
        budget = Budget(eps)
        for attack in plan if eps > 0 else []:
            idx = attacker.standing(eps)
            start = starts[attack].take(idx) if s.warm_start and attack in starts else None
            broken, ends = attacker.run(attack, eps, idx, start=start, tag="default")
            budget.broken_by[attack] = int(broken.sum())
            starts.setdefault(attack, WarmStart(attacker.x.clone())).put(idx, ends)
        if eps > 0 and s.boundary_stage():
            boundary_stage(attacker, s, budget)
        budget.default_robust = attacker.robust(eps).clone()
        budgets.append(budget)
    return budgets


def boundary_stage(attacker: Attacker, s: AttackSettings, budget: Budget) -> None:
    """Stronger attacks (longer APGD, more target classes) on the survivors nearest the decision boundary.

    What a short attack misses are examples it brought near the boundary without crossing it:
    the survivors with the smallest margin the attacks reached hold nearly all of them, so a
    strong attack there closes most of the gap to a strong attack everywhere, at a fraction of
    its cost (an example that stands costs every step of every attack). From random starts.

    APGD-T's targets are the classes with the highest logits where this stage's APGD-CE left each
    example, not on the clean image: the class an example is nearest to crossing into under attack
    is what a targeted attack should aim at. With every other class as a target, 118 of the 122
    examples this stage's APGD-T broke on eight trained models fell to the three classes ranked
    highest there, so a few targets ranked there do the work of all of them
    (`benchmarks/boundary_targets.py`, docs/robustness.md).
    """
    budget.boundary = todo = attacker.nearest_the_boundary(budget.eps, s.boundary_examples)
    plan = boundary_plan(s, attacker.num_classes)
    broken, reached = attacker.run(plan[0], budget.eps, todo, steps=s.boundary_steps, tag="boundary")
    budget.broken_by[f"boundary {plan[0]}"] = int(broken.sum())
    todo = todo[~broken]
    ranked = attacker.ranked_at(reached.points[~broken], todo) if len(plan) > 1 else None
    for attack in plan[1:]:
        broken, _ = attacker.run(
            attack, budget.eps, todo, steps=s.boundary_steps, tag="boundary", ranked=ranked
        )
        budget.broken_by[f"boundary {attack}"] = int(broken.sum())
        todo, ranked = todo[~broken], ranked[~broken]
