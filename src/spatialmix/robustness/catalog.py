"""One class per attack, and the visible table of them.

Every attack takes the same call: a model that takes images in [0, 1], a `Batch` of images and
labels, a budget ``eps``, a number of steps and the evaluation's generator, and returns an
`apgd.Outcome` (which examples it claims broken, where each ended, what it cost). What differs
between attacks lives in its class; the evaluation (`spatialmix.robustness.attacks.Attacker`)
verifies every claim, restarts the restartable ones on what they missed and keeps the worst case.
`make_attack` turns a name of the table (`ATTACKS`) into an attack; ``apgd-tJ`` is APGD-T on the
J-th class the model ranks next on the clean image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.robustness import apgd
from spatialmix.robustness.settings import AttackSettings
from spatialmix.robustness.square import Square


@dataclass(frozen=True)
class Batch:
    """What one call of an attack works on: images in [0, 1], their labels, and per example the
    classes the model ranks on the clean image, best first (column J: APGD-T's J-th target)."""

    x: torch.Tensor
    y: torch.Tensor
    ranked: torch.Tensor


@dataclass(frozen=True)
class Attack:
    """An attack in ``norm``. ``restartable``: running it again from a new random start can break more."""

    norm: str = "Linf"
    name = ""
    restartable = False

    @classmethod
    def from_settings(cls, name: str, settings: AttackSettings) -> Attack:
        """The attack ``name`` with the evaluation's ``settings`` (its norm, step size, queries)."""
        return cls(settings.norm)

    def __call__(
        self, model: nn.Module, batch: Batch, eps: float, steps: int, generator: torch.Generator, start: dict
    ) -> apgd.Outcome:
        """Attack ``batch`` within ``eps``; ``start``: a warm start (`WarmStart.select`'s keys) or {}."""
        raise NotImplementedError


@dataclass(frozen=True)
class FGSM(Attack):
    """One signed-gradient step of the full budget from the clean image (a masking check)."""

    name = "fgsm"

    def __call__(self, model, batch, eps, steps, generator, start):
        return apgd.pgd(model, batch.x, batch.y, eps, self.norm, 1, step_size=1.0, random=False)


@dataclass(frozen=True)
class PGD(Attack):
    """Projected gradient descent on the cross-entropy from a uniform random start (or a warm one)."""

    step_size: float = 0.25  # of eps per step
    name = "pgd"
    restartable = True

    @classmethod
    def from_settings(cls, name: str, settings: AttackSettings) -> Attack:
        return cls(settings.norm, settings.step_size)

    def __call__(self, model, batch, eps, steps, generator, start):
        return apgd.pgd(
            model,
            batch.x,
            batch.y,
            eps,
            self.norm,
            steps,
            step_size=self.step_size,
            start=start.get("start"),
            generator=generator,
        )


@dataclass(frozen=True)
class APGD(Attack):
    """APGD on the cross-entropy (APGD-CE of AutoAttack)."""

    name = "apgd-ce"
    restartable = True

    def __call__(self, model, batch, eps, steps, generator, start):
        return apgd.apgd(
            model, batch.x, batch.y, eps, self.norm, steps, generator=generator, **self.loss(batch), **start
        )

    def loss(self, batch: Batch) -> dict:
        """The loss `apgd.apgd` follows (its default: the cross-entropy)."""
        return {}


_TARGETED = re.compile(r"apgd-t(\d+)")


@dataclass(frozen=True)
class APGDTargeted(APGD):
    """APGD on the targeted DLR loss towards the ``rank``-th class the model ranks next (APGD-T)."""

    rank: int = 1
    restartable = True

    @property
    def name(self) -> str:
        return f"apgd-t{self.rank}"

    @classmethod
    def from_settings(cls, name: str, settings: AttackSettings) -> Attack:
        targeted = _TARGETED.fullmatch(name)
        rank = int(targeted.group(1)) if targeted else 1  # plain apgd-t: the class ranked next
        if rank < 1:
            raise SpatialmixError(f"{name}: APGD-T's targets are ranked from 1 (the class ranked next)")
        return cls(settings.norm, rank)

    def loss(self, batch: Batch) -> dict:
        return {"loss": "dlr-targeted", "target": batch.ranked[:, self.rank].to(batch.x.device)}


@dataclass(frozen=True)
class SquareAttack(Attack):
    """Square (Andriushchenko et al. 2020): random search without a gradient (a masking check)."""

    queries: int = 1000
    name = "square"

    @classmethod
    def from_settings(cls, name: str, settings: AttackSettings) -> Attack:
        return cls(settings.norm, settings.square_queries)

    def __call__(self, model, batch, eps, steps, generator, start):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        adv = Square(model, eps, self.norm, self.queries, seed=seed)(batch.x, batch.y).to(batch.x.dtype)
        with torch.no_grad():
            claimed = apgd.forward(model, apgd.project(adv, batch.x, eps, self.norm)).argmax(1) != batch.y
        # (a query costs about a third of a gradient step)
        return apgd.Outcome(claimed.cpu(), adv, len(batch.y) * self.queries // 3)


ATTACKS: dict[str, type[Attack]] = {
    "apgd-ce": APGD,
    "apgd-t": APGDTargeted,
    "pgd": PGD,
    "fgsm": FGSM,
    "square": SquareAttack,
}
"""Every attack by name, as `make_attack` and `AttackSettings.attacks` name them (``apgd-tJ``: APGD-T
on the J-th ranked class, J = 1, 2, ...; plain ``apgd-t`` is J = 1)."""


def make_attack(name: str, settings: AttackSettings) -> Attack:
    """The attack ``name`` of `ATTACKS` with the evaluation's ``settings``."""
    key = "apgd-t" if _TARGETED.fullmatch(name) else name
    if key not in ATTACKS:
        raise unknown_name("attack", name, [*ATTACKS, "apgd-tJ"])
    return ATTACKS[key].from_settings(name, settings)
