"""White-box attacks that stop per example: APGD (Croce & Hein 2020), PGD and FGSM.

torchattacks' attacks run every example for every step. Here each example leaves the batch at
the first step at which the model misclassifies it (that point is its adversarial example), so
an easy example costs one or two gradient steps and only the robust ones cost the full budget.
Removing an example never changes what happens to the others: every quantity below is per
example (the model is in eval mode), except the checkpoint schedule, which depends on the step
number only.

APGD follows Algorithm 1 of F. Croce and M. Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020, as torchattacks and the authors'
code implement it: step size 2 eps, momentum 0.75 after the first step, and checkpoints at
22%, then every 3% less (at least 6%) of the steps, where an example's step size halves and it
restarts from its best point when fewer than rho = 75% of the steps since the last checkpoint
raised its loss, or when its step size was kept and its best loss did not improve. Losses:
cross-entropy (APGD-CE) and the targeted difference of logits ratio (APGD-T's DLR).

Inputs are images in [0, 1]; the model takes them as they are (normalization inside it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Outcome:
    """What one attack did to each of its examples."""

    broken: torch.Tensor  # bool: misclassified at some point inside the ball
    adv: torch.Tensor  # that point where broken, else the highest-loss point (a warm start for later)
    gradient_steps: int  # forward-backward passes, summed over examples (the attack's cost)
    loss: torch.Tensor | None = None  # APGD: the loss and its gradient at ``adv`` where not broken, so a
    grad: torch.Tensor | None = None  # warm start from there needs no forward-backward pass of its own
    margin: torch.Tensor | None = None  # the smallest z_y - max_(j != y) z_j the attack reached (how near
    # the decision boundary it took each example; inf where it evaluated no point of its own)
    sighted: torch.Tensor | None = None  # bool: broken, or some gradient it computed was finite and not
    # zero (False: the attack was blind there and could not move it; None: it uses no gradient)


def project(adv: torch.Tensor, x: torch.Tensor, eps, norm: str) -> torch.Tensor:
    """The nearest point of the eps ball around ``x`` (in ``norm``) that is also inside [0, 1].

    ``eps`` is a number or one value per example.
    """
    eps = _per_example(eps, x)
    delta = adv - x
    if norm == "Linf":
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
    else:
        lengths = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(eps)
        delta = delta * (eps / lengths).clamp(max=1.0)
    # Clamping to [0, 1] moves each coordinate towards x (which is inside), so it never leaves the ball.
    return (x + delta).clamp(0.0, 1.0)


def distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    d = (a - b).flatten(1)
    return d.abs().amax(dim=1) if norm == "Linf" else d.norm(dim=1)


def _per_example(value, x: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (x.dim() - 1)
    return torch.as_tensor(value, dtype=x.dtype, device=x.device).expand(len(x)).reshape(shape)


def usable(grad: torch.Tensor) -> torch.Tensor:
    """Per example, whether a gradient can steer an attack: finite everywhere and not all zero."""
    size = grad.flatten(1).abs().sum(1)
    return torch.isfinite(size) & (size > 0)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest ascent direction of unit size in ``norm``."""
    if norm == "Linf":
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A random point of the ball (Croce & Hein's: on its surface for L-inf's sup norm and for L2)."""
    noise = (
        torch.randn(x.shape, generator=generator)
        if norm == "L2"
        else torch.rand(x.shape, generator=generator) * 2 - 1
    )
    noise = noise.to(x.device, x.dtype)
    scale = noise.flatten(1).abs().amax(1) if norm == "Linf" else noise.flatten(1).norm(dim=1)
    noise = noise / scale.clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    return (x + eps * noise).clamp(0.0, 1.0)


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's targeted DLR: -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2), z_(k) the k-th largest.

    Invariant to shifting and scaling the logits; needs at least 4 classes.
    """
    rows = torch.arange(len(y), device=y.device)
    top = logits.sort(dim=1, descending=True).values
    return -(logits[rows, y] - logits[rows, target]) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


LOSSES = {"ce": ce_loss, "dlr-targeted": targeted_dlr_loss}


class _Batch:
    """The examples still under attack: every per-example tensor, shrunk together as examples leave."""

    def __init__(self, **tensors):
        self.index = torch.arange(len(next(iter(tensors.values()))))
        self.t = dict(tensors)

    def __len__(self):
        return len(self.index)

    def keep(self, mask: torch.Tensor) -> None:
        self.index = self.index[mask.cpu()]
        self.t = {k: v[mask] for k, v in self.t.items()}


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


# On a CPU the forward-backward pass runs in chunks of at most this many examples (split evenly):
# a chunk's activations then stay in the cache. Each example's loss and gradient do not depend on
# the others (eval mode), and the attack itself still sees the whole batch at every step.
CPU_CHUNK = 64


def _chunks(n: int, device: torch.device) -> list[slice]:
    if device.type != "cpu" or n <= CPU_CHUNK:
        return [slice(0, n)]
    parts = -(-n // CPU_CHUNK)
    size = -(-n // parts)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_(j != y) z_j per example: negative where the model misclassifies."""
    rows = torch.arange(len(y), device=y.device)
    correct = logits[rows, y]
    return correct - logits.index_put((rows, y), torch.tensor(-torch.inf, device=logits.device)).amax(1)


def _loss_and_grad(model: nn.Module, x: torch.Tensor, y, target, loss_fn):
    losses, grads, wrong, margin = [], [], [], []
    for part in _chunks(len(x), x.device):
        xp = x[part].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = forward(model, xp)
            loss = loss_fn(logits, y[part], None if target is None else target[part])
            (grad,) = torch.autograd.grad(loss.sum(), xp)
        losses.append(loss.detach())
        grads.append(grad.detach())
        wrong.append(logits.detach().argmax(1) != y[part])
        margin.append(margins(logits.detach(), y[part]))
    if len(losses) == 1:
        return losses[0], grads[0], wrong[0], margin[0]
    return torch.cat(losses), torch.cat(grads), torch.cat(wrong), torch.cat(margin)


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    steps: int,
    *,
    loss: str = "ce",
    target: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    start_loss: torch.Tensor | None = None,
    start_grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    rho: float = 0.75,
) -> Outcome:
    """APGD on every example of ``x`` until it is misclassified or ``steps`` are spent.

    ``start``: where each example begins (a warm start, projected into this ball), else a random
    point of the ball. ``start_loss`` and ``start_grad``: this loss and its gradient at ``start``
    (from the `Outcome` that ended there, whose examples were correctly classified): the
    first pass is skipped and ``start`` is taken as it is, so it must lie in this ball.
    ``target``: the target class per example for ``loss="dlr-targeted"``.
    """
    loss_fn = LOSSES[loss]
    broken = torch.zeros(len(x), dtype=torch.bool)
    adv = x.clone()
    if start_grad is not None:
        x_adv, loss_now, grad, cost = start, start_loss, start_grad, 0
        wrong = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        margin = torch.full((len(x),), torch.inf, device=x.device)
    else:
        x_adv = project(start, x, eps, norm) if start is not None else random_start(x, eps, norm, generator)
        loss_now, grad, wrong, margin = _loss_and_grad(model, x_adv, y, target, loss_fn)
        cost = len(x)
    closest = margin.clone()
    b = _Batch(
        x=x,
        y=y,
        x_adv=x_adv,
        x_prev=x_adv,
        grad=grad,
        loss=loss_now,
        best=x_adv,
        grad_best=grad,
        loss_best=loss_now,
        loss_at_check=loss_now,
        step=torch.full((len(x),), 2.0 * eps, dtype=x.dtype, device=x.device),
        reduced=torch.ones(len(x), dtype=torch.bool, device=x.device),
        increases=torch.zeros(len(x), device=x.device),
        margin=margin,
        sighted=usable(grad),
        **({"target": target} if target is not None else {}),
    )
    _retire(b, wrong, broken, adv, closest)
    window, min_window, shrink = (
        max(int(0.22 * steps), 1),
        max(int(0.06 * steps), 1),
        max(int(0.03 * steps), 1),
    )
    since_check = 0
    for i in range(steps):
        if not len(b):
            break
        t = b.t
        with torch.no_grad():
            step = t["step"].view(-1, *([1] * (x.dim() - 1)))
            z = project(t["x_adv"] + step * _direction(t["grad"], norm), t["x"], eps, norm)
            a = 0.75 if i > 0 else 1.0
            new = project(
                t["x_adv"] + a * (z - t["x_adv"]) + (1 - a) * (t["x_adv"] - t["x_prev"]), t["x"], eps, norm
            )
        t["x_prev"], t["x_adv"] = t["x_adv"], new
        loss_now, t["grad"], wrong, margin = _loss_and_grad(model, new, t["y"], t.get("target"), loss_fn)
        t["margin"] = torch.minimum(t["margin"], margin)
        t["sighted"] = t["sighted"] | usable(t["grad"])
        cost += len(b)
        t["increases"] = t["increases"] + (loss_now > t["loss"]).float()
        t["loss"] = loss_now
        improved = loss_now > t["loss_best"]
        t["best"] = torch.where(_rows(improved, x), new, t["best"])
        t["grad_best"] = torch.where(_rows(improved, x), t["grad"], t["grad_best"])
        t["loss_best"] = torch.where(improved, loss_now, t["loss_best"])
        _retire(b, wrong, broken, adv, closest)
        since_check += 1
        if since_check == window and len(b):
            _checkpoint(b.t, window, rho, x)
            since_check = 0
            window = max(window - shrink, min_window)
    adv[b.index] = b.t["best"].to(adv.dtype)
    end_loss, end_grad = torch.zeros(len(x), device=x.device), torch.zeros_like(x)
    end_loss[b.index.to(x.device)] = b.t["loss_best"]
    end_grad[b.index.to(x.device)] = b.t["grad_best"]
    closest[b.index.to(x.device)] = b.t["margin"]
    return Outcome(broken, adv, cost, end_loss, end_grad, closest.cpu(), _sighted(broken, b))


def _sighted(broken: torch.Tensor, b: _Batch) -> torch.Tensor:
    """The attack's ``sighted`` flags: every broken example, and the rest as their steps found."""
    sighted = broken.clone()
    sighted[b.index] = b.t["sighted"].cpu()
    return sighted


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _checkpoint(t: dict, window: int, rho: float, like: torch.Tensor) -> None:
    """Halve the step of examples whose loss stalled and send them back to their best point."""
    oscillating = t["increases"] <= window * rho
    stalled = ~t["reduced"] & (t["loss_at_check"] >= t["loss_best"])
    reduce = oscillating | stalled
    t["reduced"] = reduce
    t["loss_at_check"] = t["loss_best"]
    t["increases"] = torch.zeros_like(t["increases"])
    t["step"] = torch.where(reduce, t["step"] / 2, t["step"])
    t["x_adv"] = torch.where(_rows(reduce, like), t["best"], t["x_adv"])
    t["grad"] = torch.where(_rows(reduce, like), t["grad_best"], t["grad"])


def _retire(
    b: _Batch, wrong: torch.Tensor, broken: torch.Tensor, adv: torch.Tensor, closest: torch.Tensor
) -> None:
    """Examples misclassified at their current point are done: record the point and margin, drop them."""
    if wrong.any():
        idx = b.index[wrong.cpu()]
        broken[idx] = True
        adv[idx] = b.t["x_adv"][wrong].to(adv.dtype)
        closest[idx.to(closest.device)] = b.t["margin"][wrong]
        b.keep(~wrong)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    steps: int,
    *,
    step_size: float = 2.5,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    random: bool = True,
) -> Outcome:
    """PGD (Madry et al. 2018) on cross-entropy, ``step_size * eps / steps`` per step, stopping per example.

    ``steps=1, random=False, step_size=1`` is FGSM (its L2 analogue under L2).
    """
    broken = torch.zeros(len(x), dtype=torch.bool)
    adv = x.clone()
    if start is not None:
        x_adv = project(start, x, eps, norm)
    else:
        x_adv = _uniform_start(x, eps, norm, generator) if random else x.clone()
    alpha = step_size * eps / steps
    closest = torch.full((len(x),), torch.inf, device=x.device)
    b = _Batch(x=x, y=y, x_adv=x_adv, margin=closest.clone())
    b.t["sighted"] = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    cost = 0
    for i in range(steps + 1):
        if i < steps:  # the forward pass of each gradient also says which examples are already broken
            _, grad, wrong, margin = _loss_and_grad(model, b.t["x_adv"], b.t["y"], None, ce_loss)
            b.t["sighted"] = b.t["sighted"] | usable(grad)
            cost += len(b)
        else:
            with torch.no_grad():
                logits = forward(model, b.t["x_adv"])
            wrong, margin = logits.argmax(1) != b.t["y"], margins(logits, b.t["y"])
        if i > 0 or random or start is not None:  # (FGSM's clean start is not an adversarial example)
            keep = ~wrong
            b.t["margin"] = torch.minimum(b.t["margin"], margin)
            _retire(b, wrong, broken, adv, closest)
            grad = grad[keep] if i < steps else grad
        if not len(b) or i == steps:
            break
        with torch.no_grad():
            b.t["x_adv"] = project(b.t["x_adv"] + alpha * _direction(grad, norm), b.t["x"], eps, norm)
    adv[b.index] = b.t["x_adv"].to(adv.dtype)
    closest[b.index.to(x.device)] = b.t["margin"]
    return Outcome(broken, adv, cost, margin=closest.cpu(), sighted=_sighted(broken, b))


def _uniform_start(x: torch.Tensor, eps: float, norm: str, generator) -> torch.Tensor:
    """torchattacks' PGD start: uniform in the L-inf ball; for L2, uniform direction and radius."""
    if norm == "Linf":
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    else:
        noise = torch.randn(x.shape, generator=generator)
        noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        noise = noise * eps * torch.rand(len(x), generator=generator).view(-1, *([1] * (x.dim() - 1)))
    return (x + noise.to(x.device, x.dtype)).clamp(0.0, 1.0)
