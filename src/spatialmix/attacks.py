"""Adversarial evaluation of trained models, with checks that the numbers can be trusted.

The attacks are torchattacks' (FGSM, PGD in L-inf and L2, AutoAttack "standard", Square); this
module decides what runs on which examples, keeps the worst case per example and checks the
result for signs of gradient masking. The conventions are RobustBench's: inputs in [0, 1],
normalization inside the attacked model (:class:`InputSpaceModel`), the model in eval mode and
in float32 (a bf16 gradient would weaken the attacks).

What one evaluation does, for every budget ``eps > 0`` of the list:

1. FGSM and PGD (``restarts`` random starts; a restart only attacks the examples the earlier
   ones missed) on every correctly classified example. Their accuracies alone are reported too.
2. With ``autoattack="on"``, AutoAttack on the examples that survived.

An example counts as robust at ``eps`` only if no attack of the evaluation, at any budget, found a
misclassified input within distance ``eps`` of it: in particular it survived every attack run at
``eps`` and at every smaller budget (a smaller ball lies inside the larger one). So the reported
curve never rises with eps and no attack of the evaluation could lower a reported number. Every adversarial example is projected back into the eps ball and
[0, 1] and classified again by this module; nothing an attack claims is taken on trust.

The checks against gradient masking run at the *check budget*, the largest one at which some
example survived; their stronger attacks run on the survivors among the first
``check_examples`` examples, and what they break counts in the results. A failed check is a
warning in the result, the table and the JSON:

* ``monotone``: the accuracy each budget got from its own attacks must not rise with eps;
* ``steps``: iterative PGD must not do worse than single-step FGSM, and neither a stronger PGD
  (``check_steps_factor`` times the steps, ``check_restarts`` restarts) nor AutoAttack
  (``autoattack="check"`` runs it here only) may break many examples the standard attacks missed;
* ``black-box``: the black-box Square attack must not break examples every white-box attack missed;
* ``chance``: at a very large budget (L-inf 0.5, or L2 0.5 sqrt(d)) every image can be moved to
  the uniform gray image, so PGD must leave at most the examples of the class the model predicts
  for gray.

AutoAttack here is torchattacks' ``AutoAttack(version="standard")``: APGD-CE, APGD-T, FAB-T and
Square, with torchattacks' defaults (10 iterations for the first three, 5000 queries for Square).
On a CPU it takes seconds per robust example, hence ``"check"`` by default.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

from . import runs
from .errors import SpatialmixError, check_positive, unknown_name

NORMS = ("Linf", "L2")
ATTACKS = ("fgsm", "pgd")
AUTOATTACK_CHOICES = ("on", "off", "check")
DEFAULT_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
RESULT_NAME = "robustness"
# Rough cost of one example in units of one gradient step, for the progress bar's ETA only.
_FORWARD_COST = 1 / 3


# --------------------------------------------------------------------------- settings

def parse_eps(text) -> float:
    """A budget written as ``0.03``, ``8/255`` or ``0``; raises a clear error for anything else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise SpatialmixError(f"eps {text!r} is not a number; write it as 0.03 or 8/255") from None
    return value


def parse_eps_list(text: str) -> tuple[float, ...]:
    """``"0,1/255,8/255"`` (commas or spaces) -> (0.0, 0.0039..., 0.0313...)."""
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    if not parts:
        raise SpatialmixError("--eps is empty; give budgets like 0,2/255,8/255")
    return tuple(parse_eps(p) for p in parts)


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

    PGD's step size is ``step_size * eps / steps`` (Madry et al.'s 2.5: the steps together can
    cross the ball more than once). ``n_examples``: a fixed subset of the test set drawn with
    ``seed`` (None: all of it). ``tolerance``: how far (as a fraction of the examples) a check
    may be off before it warns.
    """

    eps: tuple[float, ...] = DEFAULT_EPS
    norm: str = "Linf"
    attacks: tuple[str, ...] = ATTACKS
    steps: int = 10
    restarts: int = 1
    step_size: float = 2.5
    autoattack: str = "check"
    autoattack_examples: int | None = None     # autoattack="on": on the first N examples only (None: all)
    check_examples: int = 100                  # the checks' stronger attacks run on the first N examples
    square_queries: int = 1000
    check_steps_factor: int = 4
    check_restarts: int = 2
    tolerance: float = 0.02
    n_examples: int | None = 500
    batch_size: int = 500
    seed: int = 0
    device: str = "auto"

    def validate(self) -> "AttackSettings":
        """Reject bad values with one clear line; returns the settings in canonical form."""
        eps = tuple(parse_eps(e) for e in (self.eps if isinstance(self.eps, (list, tuple)) else [self.eps]))
        if not eps:
            raise SpatialmixError("no eps given; pass budgets like 0,2/255,8/255")
        for e in eps:
            if not (math.isfinite(e) and 0 <= e <= 1):
                raise SpatialmixError(f"eps {e:g} is outside [0, 1]; budgets are in the units of images scaled "
                                      f"to [0, 1], e.g. 8/255")
        attacks = tuple(self.attacks if isinstance(self.attacks, (list, tuple)) else
                        [a for a in re.split(r"[,\s]+", str(self.attacks)) if a])
        if not attacks:
            raise SpatialmixError(f"no attack given; choose from: {', '.join(ATTACKS)}")
        attacks = tuple(a.lower() for a in attacks)
        for a in attacks:
            if a not in ATTACKS:
                raise unknown_name("attack", a, ATTACKS)
        autoattack = {True: "on", False: "off"}.get(self.autoattack, str(self.autoattack).lower())
        if autoattack not in AUTOATTACK_CHOICES:
            raise unknown_name("--autoattack setting", str(self.autoattack), AUTOATTACK_CHOICES)
        if self.n_examples is not None and self.n_examples <= 0:
            raise SpatialmixError(f"--n-examples must be at least 1, got {self.n_examples}: there is nothing to "
                                  f"attack")
        check_positive(steps=self.steps, restarts=self.restarts, step_size=self.step_size,
                       batch_size=self.batch_size, square_queries=self.square_queries,
                       check_steps_factor=self.check_steps_factor, check_restarts=self.check_restarts)
        if self.autoattack_examples is not None:
            check_positive(autoattack_examples=self.autoattack_examples)
        if self.check_examples < 0:
            raise SpatialmixError(f"check examples must be >= 0, got {self.check_examples}")
        from .train import DEVICE_CHOICES

        if self.device not in DEVICE_CHOICES:
            raise unknown_name("device", str(self.device), DEVICE_CHOICES)
        if not 0 <= self.tolerance < 1:
            raise SpatialmixError(f"tolerance must be in [0, 1), got {self.tolerance}")
        return dataclasses.replace(self, eps=tuple(sorted(set(eps))), attacks=tuple(dict.fromkeys(attacks)),
                                   norm=_canonical_norm(self.norm), autoattack=autoattack)

    def replace(self, **changes) -> "AttackSettings":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise SpatialmixError(f"unknown attack settings {sorted(unknown)}; valid ones: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["eps"], d["attacks"] = list(self.eps), list(self.attacks)
        return d

    def identity(self) -> dict:
        """The settings as saved, less the device (compared as resolved: "auto" may mean either)."""
        return {k: v for k, v in self.to_dict().items() if k != "device"}


# --------------------------------------------------------------------------- the attacked model

class InputSpaceModel(nn.Module):
    """A model that takes images in [0, 1]: normalization, then the trained network."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        from .data import Normalize

        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x):
        return self.model(self.normalize(x))


@contextmanager
def attack_mode(model: nn.Module):
    """Eval mode and no parameter gradients while attacking; the model is left as it was found."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def derive_seed(seed: int, *parts) -> int:
    """A seed for one attack call, from the evaluation seed and what the call is (not its order)."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def make_attack(name: str, model: nn.Module, eps: float, norm: str, *, steps: int = 10, step_size: float = 2.5,
                num_classes: int = 10, seed: int = 0, square_queries: int = 1000, image_size=(32, 32)):
    """The torchattacks object for ``name`` (fgsm, pgd, autoattack, square) at one budget.

    Under L2, ``fgsm`` is its L2 analogue: one step of length eps along the normalized gradient.
    """
    import torchattacks

    norm = _canonical_norm(norm)
    if name == "fgsm":
        if norm == "Linf":
            return torchattacks.FGSM(model, eps=eps)
        return torchattacks.PGDL2(model, eps=eps, alpha=eps, steps=1, random_start=False)
    if name == "pgd":
        alpha = step_size * eps / steps
        cls = torchattacks.PGD if norm == "Linf" else torchattacks.PGDL2
        return cls(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    if name == "autoattack":
        if num_classes < 4:
            raise SpatialmixError(f"AutoAttack's targeted attacks need at least 4 classes, this model has "
                                  f"{num_classes}; use --autoattack off")
        return torchattacks.AutoAttack(model, norm=norm, eps=eps, version="standard", n_classes=num_classes,
                                       seed=seed)
    if name == "square":
        if norm == "L2" and min(image_size) < 5:
            raise SpatialmixError(f"torchattacks' L2 Square attack needs images of at least 5 x 5 pixels, these are "
                                  f"{image_size[0]} x {image_size[1]}; set check_examples=0")
        return torchattacks.Square(model, norm=norm, eps=eps, n_queries=square_queries, n_restarts=1, seed=seed)
    raise unknown_name("attack", name, (*ATTACKS, "autoattack", "square"))


def project(adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The nearest point of the eps ball around ``x`` (in ``norm``) that is also inside [0, 1]."""
    delta = adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        lengths = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / lengths).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
    # Clamping to [0, 1] moves each coordinate towards x (which is inside), so it never leaves the ball.
    return (x + delta).clamp(0.0, 1.0)


def distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    d = (a - b).flatten(1)
    return d.abs().amax(dim=1) if norm == "Linf" else d.norm(dim=1)


def attack_examples(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, name: str, eps: float,
                    norm: str = "Linf", *, seed: int = 0, **params) -> torch.Tensor:
    """Adversarial examples for ``images`` (in [0, 1], on the model's device) from one seeded attack.

    The result is always inside the eps ball and [0, 1] (see :func:`project`). ``model`` takes
    [0, 1] inputs (wrap a trained network in :class:`InputSpaceModel`); ``params`` go to
    :func:`make_attack`.
    """
    if len(images) == 0:
        return images.clone()
    with attack_mode(model), _seeded(seed, images.device):
        attack = make_attack(name, model, eps, norm, seed=seed, image_size=tuple(images.shape[-2:]), **params)
        adv = attack(images, labels).detach()
    return project(adv.to(images.dtype), images, eps, _canonical_norm(norm))


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Run with the global RNGs seeded (torchattacks draws from them) and restore them after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- one evaluation

class _Evaluation:
    """The examples, the model and the bookkeeping of one call of :func:`evaluate_robustness`."""

    def __init__(self, model, images, labels, settings: AttackSettings, device, num_classes, progress):
        self.model, self.x, self.y = model, images, labels
        self.s, self.device, self.num_classes = settings, device, num_classes
        self.progress = progress
        self.outside_ball = 0     # adversarial examples an attack returned outside the ball or [0, 1]
        self.max_perturbation: dict[float, float] = {}
        # Per example, the distance of the closest misclassified input any attack found: it breaks
        # the example at every budget at least that large, whichever budget it was found at.
        self.nearest = torch.full((len(labels),), math.inf)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), self.s.batch_size):
            out.append(self.model(x[i:i + self.s.batch_size].to(self.device)).argmax(1).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def broken_by(self, name: str, eps: float, candidates: torch.Tensor, tag: str, cost: float, **params
                  ) -> torch.Tensor:
        """Which of the ``candidates`` (a bool mask) one attack misclassifies; batched and seeded."""
        broken = torch.zeros(len(self.y), dtype=torch.bool)
        index = candidates.nonzero().flatten()
        params = {"steps": self.s.steps, "step_size": self.s.step_size, "num_classes": self.num_classes,
                  "square_queries": self.s.square_queries, "image_size": tuple(self.x.shape[-2:]), **params}
        for b, start in enumerate(range(0, len(index), self.s.batch_size)):
            idx = index[start:start + self.s.batch_size]
            x, y = self.x[idx].to(self.device), self.y[idx].to(self.device)
            seed = derive_seed(self.s.seed, name, tag, f"{eps:.12g}", b)
            with _seeded(seed, self.device):
                attack = make_attack(name, self.model, eps, self.s.norm, seed=seed, **params)
                raw = attack(x, y).detach().to(x.dtype)
            outside = (distance(raw, x, self.s.norm) > eps * (1 + 1e-5) + 1e-6) | (raw.flatten(1).amin(1) < -1e-6) \
                | (raw.flatten(1).amax(1) > 1 + 1e-6)
            self.outside_ball += int(outside.sum())
            adv = project(raw, x, eps, self.s.norm)
            self.max_perturbation[eps] = max(self.max_perturbation.get(eps, 0.0),
                                             float(distance(adv, x, self.s.norm).max()))
            with torch.no_grad():
                wrong = (self.model(adv).argmax(1) != y).cpu()
            broken[idx] = wrong
            distances = distance(adv, x, self.s.norm).cpu()
            self.nearest[idx[wrong]] = torch.minimum(self.nearest[idx[wrong]], distances[wrong])
            self.progress.advance(len(idx) * cost)
        return broken

    def pgd(self, eps: float, candidates: torch.Tensor, tag: str, steps: int, restarts: int) -> torch.Tensor:
        """PGD with restarts; each restart only attacks what the earlier ones missed."""
        broken = torch.zeros_like(candidates)
        for r in range(restarts):
            broken |= self.broken_by("pgd", eps, candidates & ~broken, f"{tag}-restart{r}", steps, steps=steps)
        return broken


class _Progress:
    """A rich progress bar with ETA, in units of one gradient step on one example; silent if disabled.

    Later stages attack only the examples that earlier ones left robust, so the total is an upper
    bound that each stage corrects when it ends (:meth:`end_stage`).
    """

    def __init__(self, enabled: bool, description: str):
        self.enabled = enabled
        self.description = description
        self._bar = None
        self._done = 0.0
        self._total = 0.0

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            from .reporting import console

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                 transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=None)
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def expect(self, remaining: float) -> None:
        """From now on, about ``remaining`` units of work are left."""
        self._total = self._done + max(remaining, 0.0)
        self._refresh()

    def stage(self, text: str, budget: float) -> float:
        """Start a stage of at most ``budget`` units; returns its end mark for :meth:`end_stage`."""
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.description}: {text}")
        return self._done + budget

    def advance(self, amount: float) -> None:
        self._done += amount
        self._refresh()

    def end_stage(self, mark: float) -> None:
        if mark > self._done:
            self._done = mark
            self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done, total=max(self._total, self._done, 1e-9))


def _autoattack_cost(num_classes: int) -> float:
    # APGD-CE, APGD-T and FAB-T (10 steps each, one target per other class), then Square's 5000 queries.
    return 10 + 2 * 10 * (num_classes - 1) + 5000 * _FORWARD_COST


def evaluate_robustness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        settings: AttackSettings | None = None, *, mean=None, std=None, label: str = "model",
                        progress: bool = True, checks: bool = True, **changes) -> dict:
    """Clean and robust accuracy of ``model`` on ``images`` (floats in [0, 1], or uint8) over the budgets.

    ``model`` takes [0, 1] inputs, or give the ``mean`` and ``std`` it was trained with and it
    is wrapped in :class:`InputSpaceModel`. ``settings`` (or keyword ``changes`` to the defaults,
    e.g. ``eps=(0, 8/255), steps=20``) say what runs; see :class:`AttackSettings`. ``checks=False``
    skips the masking checks (for benchmarks; the command line always runs them). The model is
    left on its device and in its mode. Returns a JSON-able dict: ``clean_acc``; per budget in
    ``budgets`` the ``robust_acc``, each attack's own accuracy and ``robust_bits`` (one 0/1
    character per example); ``checks`` and ``warnings`` (see the module doc).
    """
    from .train import resolve_device

    settings = (settings or AttackSettings()).replace(**changes).validate()
    images, labels = _check_examples(images, labels)
    device = resolve_device(settings.device)
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise SpatialmixError("give both mean and std (the normalization the model was trained with), or neither")
        model = InputSpaceModel(model, mean, std)
    started = time.perf_counter()
    original_device = _device_of(model)
    model.to(device)
    try:
        with attack_mode(model):
            result = _evaluate(model, images, labels, settings, device, label, progress, checks)
    finally:
        if original_device is not None:
            model.to(original_device)
    result["time_s"] = time.perf_counter() - started
    return result


def _device_of(model: nn.Module):
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return None if tensor is None else tensor.device


def _check_examples(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if len(images) == 0:
        raise SpatialmixError("zero examples to attack; pass at least one image")
    if len(images) != len(labels):
        raise SpatialmixError(f"{len(images)} images but {len(labels)} labels; pass one label per image")
    if images.dtype == torch.uint8:
        from .data import to_unit_range

        images = to_unit_range(images)
    images = images.detach().float().cpu().contiguous()
    if images.min() < 0 or images.max() > 1:
        raise SpatialmixError(f"images must be in [0, 1] (got values in [{images.min():.3g}, {images.max():.3g}]); "
                              f"attacks work on unnormalized images: pass mean/std for the normalization")
    return images, labels.detach().long().cpu()


def _evaluate(model, x, y, s: AttackSettings, device, label: str, progress: bool, checks: bool) -> dict:
    with torch.no_grad():
        num_classes = int(model(x[:1].to(device)).shape[1])
    budgets = [e for e in s.eps if e > 0]
    aa_cost = _autoattack_cost(num_classes)
    n_aa = min(len(y), s.autoattack_examples or len(y))
    with _Progress(progress, label) as bar:
        ev = _Evaluation(model, x, y, s, device, num_classes, bar)
        correct = ev.predict(x) == y
        per_budget = (("fgsm" in s.attacks) + ("pgd" in s.attacks) * s.steps * s.restarts) * int(correct.sum()) \
            + (s.autoattack == "on") * n_aa * aa_cost
        bar.expect(len(budgets) * per_budget)
        raw = {0.0: correct.clone()}          # robust per example, from each budget's own attacks
        standalone: dict[float, dict] = {}
        for eps in budgets:
            raw[eps], standalone[eps] = _attack_budget(ev, eps, correct, n_aa, aa_cost)
        robust = _cumulative(raw, s.eps)
        attacks_done = time.perf_counter()
        check_list, extra, chance = [], {}, {}
        check_eps = max(budgets) if budgets else None
        if checks and budgets:
            with_survivors = [e for e in budgets if robust[e].any()]
            check_eps = max(with_survivors) if with_survivors else max(budgets)
            check_list, chance = _masking_checks(ev, raw, robust, standalone, extra, check_eps, aa_cost)
        for eps in s.eps:
            robust[eps] &= ~(ev.nearest <= eps)
        robust = _cumulative(robust, s.eps)
    result = _result(label, s, y, correct, raw, robust, standalone, extra, check_list, chance, check_eps,
                     num_classes, ev)
    result["checks_time_s"] = time.perf_counter() - attacks_done
    return result


def _attack_budget(ev: _Evaluation, eps: float, correct: torch.Tensor, n_aa: int, aa_cost: float
                   ) -> tuple[torch.Tensor, dict]:
    s, bar = ev.s, ev.progress
    broken = torch.zeros_like(correct)
    alone: dict = {}
    if "fgsm" in s.attacks:
        mark = bar.stage(f"FGSM at eps {eps_label(eps)}", int(correct.sum()))
        fgsm = ev.broken_by("fgsm", eps, correct, "standard", 1)
        bar.end_stage(mark)
        alone["fgsm"] = {"robust_acc": float((correct & ~fgsm).float().mean())}
        broken |= fgsm
    if "pgd" in s.attacks:
        mark = bar.stage(f"PGD-{s.steps} at eps {eps_label(eps)}", int(correct.sum()) * s.steps * s.restarts)
        pgd = ev.pgd(eps, correct, "standard", s.steps, s.restarts)
        bar.end_stage(mark)
        alone["pgd"] = {"robust_acc": float((correct & ~pgd).float().mean())}
        broken |= pgd
    if s.autoattack == "on":
        aa = _run_autoattack(ev, eps, correct & ~broken, n_aa, aa_cost)
        broken |= aa.pop("broken_mask")
        alone["autoattack"] = aa
    return correct & ~broken, alone


def _run_autoattack(ev: _Evaluation, eps: float, survivors: torch.Tensor, n_aa: int, aa_cost: float) -> dict:
    """AutoAttack on the survivors among the first ``n_aa`` examples: what it breaks on top."""
    subset = torch.zeros_like(survivors)
    subset[:n_aa] = True
    mark = ev.progress.stage(f"AutoAttack at eps {eps_label(eps)}", n_aa * aa_cost)
    broken = ev.broken_by("autoattack", eps, survivors & subset, "standard", aa_cost)
    ev.progress.end_stage(mark)
    return {"examples": n_aa, "attacked": int((survivors & subset).sum()), "extra_broken": int(broken.sum()),
            "broken_mask": broken}


def _cumulative(robust: dict, eps_list) -> dict:
    """Robust at eps only if robust at every smaller budget too (the smaller ball lies inside)."""
    out, running = {}, None
    for eps in sorted(eps_list):
        running = robust[eps].clone() if running is None else running & robust[eps]
        out[eps] = running
    return out


# --------------------------------------------------------------------------- masking checks

def check_monotone(eps_list, accuracies, tolerance: float) -> dict:
    """Fails when the accuracy a budget got from its own attacks rises above a smaller budget's."""
    worst = None
    for i, (e_small, a_small) in enumerate(zip(eps_list, accuracies)):
        for e_large, a_large in zip(eps_list[i + 1:], accuracies[i + 1:]):
            rise = a_large - a_small
            if rise > tolerance and (worst is None or rise > worst[0]):
                worst = (rise, e_small, e_large, a_small, a_large)
    if worst is None:
        return _check("monotone", True, "robust accuracy does not rise with eps")
    rise, e_small, e_large, a_small, a_large = worst
    return _check("monotone", False,
                  f"robust accuracy rises with eps: {a_small:.3f} at eps {eps_label(e_small)} but {a_large:.3f} at "
                  f"{eps_label(e_large)} (the attacks at {eps_label(e_large)} missed examples a smaller budget broke; "
                  f"reported numbers take the worst case, but the attack is unreliable: raise --steps/--restarts)",
                  eps=e_large)


def check_iterative_vs_single_step(eps: float, fgsm_acc: float | None, pgd_acc: float | None,
                                   tolerance: float) -> dict | None:
    """Fails when many-step PGD leaves more examples robust than one-step FGSM (a masking symptom)."""
    if fgsm_acc is None or pgd_acc is None:
        return None
    if pgd_acc > fgsm_acc + tolerance:
        return _check("steps", False,
                      f"PGD is weaker than single-step FGSM at eps {eps_label(eps)} ({pgd_acc:.3f} vs {fgsm_acc:.3f} "
                      f"robust): more steps raise robust accuracy, a sign of gradient masking", eps=eps)
    return _check("steps", True, f"PGD at least as strong as FGSM at eps {eps_label(eps)}", eps=eps)


def check_stronger_attack(eps: float, attack: str, extra_broken: int, n: int, tolerance: float) -> dict:
    """Fails when a stronger attack breaks many examples the standard attacks missed."""
    gain = extra_broken / max(1, n)
    if gain > tolerance:
        return _check("steps", False,
                      f"{attack} breaks {extra_broken} more examples ({gain:.3f}) than the standard attacks at eps "
                      f"{eps_label(eps)}: numbers at other budgets may be too high; raise --steps/--restarts",
                      eps=eps)
    return _check("steps", True, f"{attack} lowers robust accuracy by {gain:.3f} at eps {eps_label(eps)}", eps=eps)


def check_chance(large_eps: float, acc: float, bound: float, tolerance: float, norm: str) -> dict:
    """Fails when robust accuracy at a budget that reaches the gray image stays above the bound."""
    where = f"eps {large_eps:g} ({norm})"
    if acc > bound + tolerance:
        return _check("chance", False,
                      f"at {where} every image can be made uniform gray, so at most {bound:.3f} can stay robust, "
                      f"but {acc:.3f} did: the attack cannot follow the gradient (gradient masking)", eps=large_eps)
    return _check("chance", True, f"robust accuracy {acc:.3f} at {where} (bound {bound:.3f})", eps=large_eps)


def check_black_box(eps: float, extra_broken: int, n: int, tolerance: float) -> dict:
    """Fails when black-box Square breaks examples that survived every white-box attack."""
    share = extra_broken / max(1, n)
    if share > tolerance:
        return _check("black-box", False,
                      f"black-box Square breaks {extra_broken} of {n} examples ({share:.3f}) at eps {eps_label(eps)} "
                      f"that every white-box attack missed: the gradients are masked", eps=eps)
    return _check("black-box", True, f"Square broke {extra_broken} of {n} white-box survivors at eps "
                                     f"{eps_label(eps)}", eps=eps)


def _check(name: str, ok: bool, message: str, eps: float | None = None) -> dict:
    return {"name": name, "ok": ok, "eps": eps, "message": message}


def _masking_checks(ev: _Evaluation, raw, robust, standalone, extra, check_eps, aa_cost
                    ) -> tuple[list[dict], dict]:
    """Run the checks of the module doc; what their attacks break at ``check_eps`` is added to ``robust``."""
    s, n, bar = ev.s, len(ev.y), ev.progress
    budgets = sorted(raw)
    strong_steps = s.steps * s.check_steps_factor
    n_check = min(n, s.check_examples)
    subset = torch.zeros(n, dtype=torch.bool)
    subset[:n_check] = True
    targets = int((robust[check_eps] & subset).sum())
    bar.expect(targets * (strong_steps * s.check_restarts + s.square_queries * _FORWARD_COST
                          + (s.autoattack == "check") * aa_cost) + int(raw[0.0].sum()) * s.steps)
    out = [check_monotone(budgets, [float(raw[e].float().mean()) for e in budgets], s.tolerance)]
    alone = standalone.get(check_eps, {})
    step_check = check_iterative_vs_single_step(check_eps, alone.get("fgsm", {}).get("robust_acc"),
                                                alone.get("pgd", {}).get("robust_acc"), s.tolerance)
    if step_check:
        out.append(step_check)
    extra[check_eps] = {}
    if n_check:
        # A stronger PGD, then AutoAttack ("check" mode), then black-box Square, each on what is left.
        name = f"PGD-{strong_steps} x{s.check_restarts}"
        mark = bar.stage(f"check: {name} at eps {eps_label(check_eps)}",
                         int((robust[check_eps] & subset).sum()) * strong_steps * s.check_restarts)
        attacked = int((robust[check_eps] & subset).sum())
        strong = ev.pgd(check_eps, robust[check_eps] & subset, "strong", strong_steps, s.check_restarts)
        bar.end_stage(mark)
        robust[check_eps] &= ~strong
        extra[check_eps]["pgd-strong"] = {"steps": strong_steps, "restarts": s.check_restarts, "examples": n_check,
                                          "attacked": attacked, "extra_broken": int(strong.sum())}
        out.append(check_stronger_attack(check_eps, f"PGD with {s.check_steps_factor}x the steps and "
                                                    f"{s.check_restarts} restarts", int(strong.sum()), n_check,
                                         s.tolerance))
    if s.autoattack == "check" and n_check:
        aa = _run_autoattack(ev, check_eps, robust[check_eps], n_check, aa_cost)
        robust[check_eps] &= ~aa.pop("broken_mask")
        extra[check_eps]["autoattack"] = aa
    else:
        aa = alone.get("autoattack")
    if aa is not None:
        out.append(check_stronger_attack(check_eps, "AutoAttack", aa["extra_broken"], aa["examples"], s.tolerance))
    if n_check:
        square_targets = robust[check_eps] & subset
        mark = bar.stage(f"check: Square at eps {eps_label(check_eps)}",
                         int(square_targets.sum()) * s.square_queries * _FORWARD_COST)
        square = ev.broken_by("square", check_eps, square_targets, "check", s.square_queries * _FORWARD_COST)
        bar.end_stage(mark)
        robust[check_eps] &= ~square
        extra[check_eps]["square"] = {"examples": n_check, "queries": s.square_queries,
                                      "attacked": int(square_targets.sum()), "extra_broken": int(square.sum())}
        out.append(check_black_box(check_eps, int(square.sum()), n_check, s.tolerance))

    # Chance at a budget that reaches the uniform gray image from every image.
    large_eps = 0.5 if s.norm == "Linf" else 0.5 * math.sqrt(ev.x[0].numel())
    correct = raw[0.0]
    mark = bar.stage(f"check: PGD at eps {large_eps:g}", int(correct.sum()) * s.steps)
    large = ev.pgd(large_eps, correct, "chance", s.steps, 1)
    bar.end_stage(mark)
    gray_class = int(ev.predict(torch.full_like(ev.x[:1], 0.5))[0])
    bound = float((ev.y == gray_class).float().mean())
    acc = float((correct & ~large).float().mean())
    out.append(check_chance(large_eps, acc, bound, s.tolerance, s.norm))
    return out, {"eps": large_eps, "robust_acc": acc, "bound": bound, "gray_class": gray_class}


# --------------------------------------------------------------------------- the result

def _result(label, s: AttackSettings, y, correct, raw, robust, standalone, extra, check_list, chance, check_eps,
            num_classes, ev: _Evaluation) -> dict:
    import torchattacks

    budgets = []
    for eps in s.eps:
        budgets.append({
            "eps": eps, "eps_label": eps_label(eps), "robust_acc": float(robust[eps].float().mean()),
            "n_robust": int(robust[eps].sum()), "own_attacks_acc": float(raw[eps].float().mean()),
            "attacks": {**standalone.get(eps, {}), **extra.get(eps, {})},
            "max_perturbation": ev.max_perturbation.get(eps, 0.0),
            "warnings": [c["name"] for c in check_list if not c["ok"] and c["eps"] == eps],
            "robust_bits": "".join("1" if b else "0" for b in robust[eps].tolist()),
        })
    warnings = [c["message"] for c in check_list if not c["ok"]]
    if ev.outside_ball:
        warnings.append(f"attacks returned {ev.outside_ball} adversarial examples outside the eps ball or [0, 1]; "
                        f"they were projected back before being counted")
    return {"label": label, "settings": s.to_dict(), "n_examples": len(y), "num_classes": num_classes,
            "clean_acc": float(correct.float().mean()), "budgets": budgets, "check_eps": check_eps,
            "chance": chance, "checks": check_list, "warnings": warnings, "outside_ball": ev.outside_ball,
            "device": str(ev.device), "torchattacks_version": torchattacks.__version__}


def result_rows(result: dict) -> list[dict]:
    """One flat row per budget (what the tables and the report show); a check that failed at a
    budget outside the list (the chance check) is shown on the last row."""
    rows = []
    for b in result["budgets"]:
        attacks = b["attacks"]
        rows.append({"run": result["label"], "norm": result["settings"]["norm"], "eps": b["eps_label"],
                     "clean_acc": result["clean_acc"], "robust_acc": b["robust_acc"],
                     "fgsm_acc": attacks.get("fgsm", {}).get("robust_acc"),
                     "pgd_acc": attacks.get("pgd", {}).get("robust_acc"), "warnings": list(b["warnings"])})
    listed = set(result["settings"]["eps"])
    elsewhere = [c["name"] for c in result["checks"] if not c["ok"] and c["eps"] not in listed]
    if rows:
        rows[-1]["warnings"] += elsewhere
    for row in rows:
        row["warnings"] = ", ".join(dict.fromkeys(row["warnings"])) or "ok"
    return rows


# --------------------------------------------------------------------------- saved runs

def select_examples(data, n_examples: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed seeded subset of the test set (all of it for None), as [0, 1] floats and labels."""
    from .data import to_unit_range

    if n_examples is not None and n_examples <= 0:
        raise SpatialmixError(f"--n-examples must be at least 1, got {n_examples}")
    subset = data.subset(None, n_examples, seed=seed)
    return to_unit_range(subset.test_images), subset.test_labels


def run_label(record: dict, run_dir: Path) -> str:
    """``Chans σ=1 seed 0 (chans-sigma1-seed0)``: the mode, smoothing and seed, then the folder."""
    train = record.get("train", {})
    mode = str(train.get("mode", "?")).capitalize()
    sigma = train.get("smooth_sigma") or 0
    return f"{mode}{f' σ={sigma:g}' if sigma else ''} seed {train.get('seed', '?')} ({Path(run_dir).name})"


def weights_fingerprint(run_dir: Path) -> dict:
    folder = runs.latest_checkpoint(run_dir)
    if folder is None:
        raise SpatialmixError(f"{run_dir} has no checkpoint yet (training never finished an epoch); "
                              f"train it first with `spatialmix train --resume --out {run_dir}`")
    digest = hashlib.sha256((folder / runs.MODEL_FILE).read_bytes()).hexdigest()
    return {"checkpoint": folder.name, "sha256": digest}


def _check_out_name(out_name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", out_name or "") or out_name.endswith((".json", ".png")):
        raise SpatialmixError(f"--out-name {out_name!r} must be a plain file stem like 'robustness' "
                              f"(letters, digits, '-', '_', '.'; no folder, no extension)")
    return out_name


def evaluate_run(run_dir: str | Path, settings: AttackSettings | None = None, *, data=None, progress: bool = True,
                 **changes) -> dict:
    """Load a saved run and evaluate it (see :func:`evaluate_robustness`); the run's folder, mode,
    smoothing, seed and checkpoint are added to the result."""
    from .train import load_trained_model

    settings = (settings or AttackSettings()).replace(**changes).validate()
    run_dir = runs.check_run_dir(Path(run_dir))
    fingerprint = weights_fingerprint(run_dir)
    model, record = load_trained_model(run_dir, device="cpu")
    data = data if data is not None else _data_for_run(run_dir, {})
    images, labels = select_examples(data, settings.n_examples, settings.seed)
    d = record["data"]
    result = evaluate_robustness(model, images, labels, settings, mean=d["mean"], std=d["std"],
                                 label=run_label(record, run_dir), progress=progress)
    train = record["train"]
    summary = runs.read_json(run_dir / runs.SUMMARY, "run summary") if (run_dir / runs.SUMMARY).is_file() else {}
    result.update({"run": str(run_dir), "mode": train.get("mode"), "seed": train.get("seed"),
                   "smooth_sigma": train.get("smooth_sigma"), "dataset": train.get("dataset"),
                   "test_acc": summary.get("test_acc"), "weights": fingerprint})
    result["rows"] = result_rows(result)
    return result


def attack_runs(run_dirs, settings: AttackSettings | None = None, *, out_name: str = RESULT_NAME,
                plot: str | Path | None = "auto", progress: bool = True, reuse: bool = False, **changes) -> list[dict]:
    """Evaluate saved runs, save ``OUT_NAME.json`` in each run directory and plot them side by side.

    Everything is checked before anything is computed or written, so bad input leaves existing
    results untouched. ``plot="auto"`` writes ``OUT_NAME.png`` in the run directory (one run) or
    in the runs' common parent folder; ``None`` draws nothing. ``reuse=True`` reads a saved
    result back instead of recomputing it when it was made with the same settings and weights.
    Returns the results, in the order of ``run_dirs``.
    """
    settings = (settings or AttackSettings()).replace(**changes).validate()
    out_name = _check_out_name(out_name)
    run_dirs = [Path(r) for r in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]
    if not run_dirs:
        raise SpatialmixError("no run directory given; pass folders made by `spatialmix train` or `reproduce`")
    fingerprints = []
    for run_dir in run_dirs:
        runs.check_run_dir(run_dir)
        fingerprints.append(weights_fingerprint(run_dir))
    results, datasets = [], {}
    for run_dir, fingerprint in zip(run_dirs, fingerprints):
        path = run_dir / f"{out_name}.json"
        saved = _reusable(path, settings, fingerprint) if reuse else None
        if saved is not None:
            results.append(saved)
            continue
        data = _data_for_run(run_dir, datasets)
        result = evaluate_run(run_dir, settings, data=data, progress=progress)
        runs.atomic_write_json(path, result)
        results.append(result)
    if plot is not None:
        plot_path = _default_plot_path(run_dirs, out_name) if plot == "auto" else Path(plot)
        plot_robustness(results, plot_path)
        for result in results:
            result["plot"] = str(plot_path)
    return results


def _reusable(path: Path, settings: AttackSettings, fingerprint: dict) -> dict | None:
    """The saved result at ``path`` if it was made with these settings from these weights."""
    if not path.is_file():
        return None
    try:
        saved = runs.read_json(path, "robustness result")
    except SpatialmixError:
        return None
    from .train import resolve_device

    saved_settings = {k: v for k, v in (saved.get("settings") or {}).items() if k != "device"}
    # The device matters too: the random starts come from its generator.
    same_device = saved.get("device") == str(resolve_device(settings.device))
    if saved_settings == settings.identity() and same_device and saved.get("weights") == fingerprint:
        return saved
    return None


def _data_for_run(run_dir: Path, cache: dict):
    """The full data set of a run (loaded once per data set for all runs)."""
    from .train import TrainConfig, load_data_for

    record = runs.read_json(run_dir / runs.CONFIG, "run")
    config = TrainConfig.from_dict(record["train"]).replace(train_subset=None, test_subset=None)
    key = (config.dataset, config.data_dir)
    if key not in cache:
        cache[key] = load_data_for(config)
    return cache[key]


def _default_plot_path(run_dirs: list[Path], out_name: str) -> Path:
    if len(run_dirs) == 1:
        return run_dirs[0] / f"{out_name}.png"
    parent = Path(os.path.commonpath([str(p.resolve()) for p in run_dirs]))
    return parent / f"{out_name}.png"


# --------------------------------------------------------------------------- tables and plots

def robustness_table(results: list[dict], title: str | None = None):
    """Clean and robust accuracy per run and budget, with the masking warnings of each row."""
    from .reporting import ResultTable

    norm = results[0]["settings"]["norm"] if results else "Linf"
    table = ResultTable(title or f"Robust accuracy ({norm}, worst case over every attack)",
                        [("run", "run", ""), ("eps", "eps", ""), ("clean_acc", "clean acc", ".3f"),
                         ("robust_acc", "robust acc", ".3f"), ("fgsm_acc", "FGSM", ".3f"), ("pgd_acc", "PGD", ".3f"),
                         ("warnings", "checks", "")])
    for result in results:
        for row in result.get("rows") or result_rows(result):
            table.add(**row)
    return table


def plot_robustness(results: list[dict], path: str | Path) -> Path:
    """Robust accuracy against eps: all runs together, then one panel per run (PNG, written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = len(results) + 1
    fig = Figure(figsize=(3.4 * panels, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    for result in results:
        eps = [b["eps"] for b in result["budgets"]]
        axes[0].plot(eps, [b["robust_acc"] for b in result["budgets"]], marker="o", label=result["label"])
    axes[0].set_title("all runs (worst case)", fontsize=9)
    axes[0].legend(fontsize=6)
    for ax, result in zip(axes[1:], results):
        budgets = result["budgets"]
        eps = [b["eps"] for b in budgets]
        ax.plot(eps, [b["robust_acc"] for b in budgets], marker="o", color="black", label="worst case")
        for name, style in (("fgsm", "--"), ("pgd", ":")):
            points = [(b["eps"], b["attacks"][name]["robust_acc"]) for b in budgets if name in b["attacks"]]
            if points:
                ax.plot(*zip(*points), style, marker=".", label=f"{name.upper()} alone")
        if result.get("chance"):
            ax.axhline(result["chance"]["bound"], color="gray", lw=0.8, ls="-.", label="gray-image bound")
        warned = [b for b in budgets if b["warnings"]]
        if warned:
            ax.scatter([b["eps"] for b in warned], [b["robust_acc"] for b in warned], s=120, facecolors="none",
                       edgecolors="red", label="check warning")
        title = result["label"] + (f"\n{len(result['warnings'])} warning(s)" if result["warnings"] else "")
        ax.set_title(title, fontsize=8, color="red" if result["warnings"] else "black")
        ax.legend(fontsize=6)
    for ax in axes:
        ticks = sorted({b["eps"] for r in results for b in r["budgets"]})
        ax.set_xticks(ticks, [eps_label(e) for e in ticks], rotation=45, fontsize=7)
        ax.set_xlabel(f"eps ({results[0]['settings']['norm'] if results else 'Linf'})")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    runs.atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
