"""What an adversarial evaluation depends on: budgets, attacks, their sizes (saved with the results)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from fractions import Fraction

from spatialmix.engine.config import DEVICE_CHOICES
from spatialmix.errors import SpatialmixError, check_positive, unknown_name
from spatialmix.options import int_or_all, option

NORMS = ("Linf", "L2")
ATTACKS = ("apgd-ce", "apgd-t", "pgd", "fgsm")
# standard: the attacks, then the boundary stage; fast: the attacks alone (the 10-step attacks).
STRENGTHS = ("standard", "fast")
DEFAULT_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)


def parse_eps(text) -> float:
    """A budget written as ``0.03``, ``8/255`` or ``0``; raises a clear error for anything else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    try:
        return float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise SpatialmixError(f"eps {text!r} is not a number; write it as 0.03 or 8/255") from None


def parse_eps_list(text: str) -> tuple[float, ...]:
    """``"0,1/255,8/255"`` (commas or spaces) -> (0.0, 0.0039..., 0.0313...). An empty budget (``"0,"``)
    and a budget given twice are refused: either is a typo, not a request."""
    if not str(text).strip():
        raise SpatialmixError("--eps is empty; give budgets like 0,2/255,8/255")
    parts = re.split(r"\s*,\s*|\s+", str(text).strip())
    if "" in parts:
        raise SpatialmixError(
            f"--eps {text!r} has an empty budget (a comma too many?); give budgets like 0,2/255,8/255"
        )
    budgets = tuple(parse_eps(p) for p in parts)
    twice = next((e for i, e in enumerate(budgets) if e in budgets[:i]), None)
    if twice is not None:
        raise SpatialmixError(
            f"--eps {text!r} gives the budget {eps_label(twice)} twice; give each budget once"
        )
    return budgets


def eps_label(eps: float) -> str:
    """8/255 for multiples of 1/255 (how budgets are usually written), else the number."""
    k = eps * 255
    if eps and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"


def _canonical_norm(norm: str) -> str:
    for name in NORMS:
        if str(norm).lower() == name.lower():
            return name
    raise unknown_name("norm", str(norm), NORMS)


@dataclass(frozen=True)
class AttackSettings:
    """Everything an evaluation depends on (saved with its results).

    ``steps`` and ``targets``: each iterative attack's steps and APGD-T's target classes in the
    default evaluation. ``strength="standard"`` adds the boundary stage at every budget: APGD-CE
    and APGD-T on up to ``boundary_targets`` classes, ranked where its APGD-CE left each example
    (None: every other class), ``boundary_steps`` steps each, on the ``boundary_examples`` examples
    still standing nearest the decision boundary;
    ``"fast"`` runs the attacks alone. ``reference_*``: the strong reference, run on the
    ``reference_examples`` survivors nearest the boundary that the boundary stage left alone, and
    the masking checks, run on the first ``reference_examples`` examples (None: all; 0: no
    checks). ``step_size`` is PGD's (Madry et al.'s 2.5 x eps / steps); APGD sets its own.
    ``n_examples``: a fixed subset of the test set drawn with ``seed`` (None: all of it).
    ``tolerance``: how far (a fraction of the examples) a check may be off before it warns; the
    reference's gap is held to it at every budget.
    """

    eps: tuple[float, ...] = option(
        DEFAULT_EPS,
        "comma-separated budgets in [0, 1], fractions allowed",
        parse=parse_eps_list,
        default_help=",".join(eps_label(e) for e in DEFAULT_EPS),
    )
    norm: str = option("Linf", "Linf or L2")
    attacks: tuple[str, ...] = option(
        ("apgd-ce", "apgd-t"),
        f"comma-separated white-box attacks run at every budget "
        f"on the examples still standing: {', '.join(ATTACKS)}",
    )
    steps: int = option(10, "steps of each iterative attack")
    targets: int = option(1, "APGD-T's target classes, the ones the model ranks next")
    strength: str = option(
        "standard",
        "standard: the attacks above, then the boundary stage at every budget (within 1 point of "
        "100-step AutoAttack on the quick preset's models); fast: the attacks above alone (about "
        "3x faster, up to 4 points too high at 8/255 there)",
        choices=STRENGTHS,
    )
    boundary_examples: int | None = option(
        50,
        "the boundary stage attacks the N examples still standing nearest the decision boundary (the "
        "smallest margin the attacks reached) at each budget; 'all'",
        parse=int_or_all("--boundary-examples"),
        metavar="N",
    )
    boundary_steps: int = option(30, "steps of the boundary stage's APGD-CE and APGD-T")
    boundary_targets: int | None = option(
        4,
        "the boundary stage's APGD-T target classes: up to N, those with the highest logits where its "
        "APGD-CE left each example; 'all': every other class (none below 4 classes)",
        parse=int_or_all("--boundary-targets"),
        metavar="N",
    )
    restarts: int = option(1, "random restarts")
    step_size: float = option(
        2.5, "PGD's step size, in units of eps / steps (Madry et al.'s 2.5); APGD sets its own"
    )
    warm_start: bool = option(
        True,
        "start each budget's attacks at the previous budget's best points (--no-warm-"
        "start: at random points)",
    )
    reference_examples: int | None = option(
        100,
        "the strong reference runs on the N survivors nearest the decision boundary that the boundary "
        "stage left alone, the masking checks on the first N examples; 'all', or 0 for none",
        parse=int_or_all("--reference-examples"),
        metavar="N",
    )
    reference_steps: int = option(100, "steps of the reference's APGD-CE and APGD-T")
    reference_targets: int = option(9, "the reference's APGD-T target classes")
    square_queries: int = option(1000, "queries of the black-box Square check", metavar="Q")
    tolerance: float = option(0.01, "how far (a fraction of the examples) a check may be off before it warns")
    n_examples: int | None = option(
        500, "a fixed seeded subset of the test set, or 'all'", parse=int_or_all("--n-examples"), metavar="N"
    )
    batch_size: int = option(500, "examples attacked at once")
    seed: int = option(0, "seed of the subset and the attacks")
    device: str = option("auto", "auto, cpu, cuda", choices=DEVICE_CHOICES)

    def validate(self) -> AttackSettings:
        """Reject bad values with one clear line; returns the settings in canonical form."""
        eps = tuple(parse_eps(e) for e in (self.eps if isinstance(self.eps, (list, tuple)) else [self.eps]))
        if not eps:
            raise SpatialmixError("no eps given; pass budgets like 0,2/255,8/255")
        for e in eps:
            if not (math.isfinite(e) and 0 <= e <= 1):
                raise SpatialmixError(
                    f"eps {e:g} is outside [0, 1]; budgets are in the units of images scaled "
                    f"to [0, 1], e.g. 8/255"
                )
        attacks = tuple(
            a.lower()
            for a in (
                self.attacks
                if isinstance(self.attacks, (list, tuple))
                else [a for a in re.split(r"[,\s]+", str(self.attacks)) if a]
            )
        )
        if not attacks:
            raise SpatialmixError(f"no attack given; choose from: {', '.join(ATTACKS)}")
        for a in attacks:
            if a not in ATTACKS:
                raise unknown_name("attack", a, ATTACKS)
        if self.n_examples is not None and self.n_examples <= 0:
            raise SpatialmixError(
                f"--n-examples must be at least 1, got {self.n_examples}: there is nothing to attack"
            )
        check_positive(
            steps=self.steps,
            restarts=self.restarts,
            step_size=self.step_size,
            batch_size=self.batch_size,
            square_queries=self.square_queries,
            reference_steps=self.reference_steps,
            boundary_steps=self.boundary_steps,
        )
        counts = (
            "targets",
            "reference_targets",
            "reference_examples",
            "boundary_examples",
            "boundary_targets",
        )
        for name in (n for n in counts if getattr(self, n) is not None):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise SpatialmixError(
                    f"{name.replace('_', ' ')} must be a whole number >= 0, got {getattr(self, name)}"
                )
        if "apgd-t" in attacks and self.targets == 0:
            raise SpatialmixError(
                "apgd-t with 0 targets attacks nothing; set --targets 1 or more, or leave "
                "apgd-t out of --attacks"
            )
        if self.device not in DEVICE_CHOICES:
            raise unknown_name("device", str(self.device), DEVICE_CHOICES)
        if self.strength not in STRENGTHS:
            raise unknown_name("strength", str(self.strength), STRENGTHS)
        if not 0 <= self.tolerance < 1:
            raise SpatialmixError(f"tolerance must be in [0, 1), got {self.tolerance}")
        return dataclasses.replace(
            self,
            eps=tuple(sorted(set(eps))),
            attacks=tuple(dict.fromkeys(attacks)),
            norm=_canonical_norm(self.norm),
            warm_start=bool(self.warm_start),
        )

    def replace(self, **changes) -> AttackSettings:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise SpatialmixError(
                f"unknown attack settings {sorted(unknown)}; valid ones: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["eps"], d["attacks"] = list(self.eps), list(self.attacks)
        return d

    def identity(self) -> dict:
        """The settings as saved, less the device (compared as resolved: "auto" may mean either)."""
        return {k: v for k, v in self.to_dict().items() if k != "device"}

    def needs_targets(self) -> int:
        """How many target classes the evaluation's APGD-T attacks ask for (0: none runs; the boundary
        stage asks for none: it adapts to the model)."""
        default = self.targets if "apgd-t" in self.attacks else 0
        # (not the boundary stage's: it takes as many as the model has, up to boundary_targets)
        return max(default, self.reference_targets if self.reference_examples != 0 else 0)

    def boundary_stage(self) -> bool:
        """Whether the boundary stage runs (the standard strength, on at least one example)."""
        return self.strength == "standard" and self.boundary_examples != 0
