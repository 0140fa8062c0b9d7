"""Square Attack: AutoAttack's black-box part, a random search that needs the model's outputs only.

M. Andriushchenko, F. Croce, N. Flammarion and M. Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (Algorithm 1; L-inf, and L2 as in its section 3.2).
Each query changes the current best point of an example inside one random square window of the
image and keeps the change where it lowered the margin z_y - max_(j != y) z_j; an example stops
as soon as its margin is negative (misclassified). The window's side shrinks on the paper's
schedule (``p_init`` of the pixels at first, halving at fixed fractions of the queries).

The masking checks use it: no gradient goes in, so a model that hides its gradients (gradient
masking) does not hide from it. Unlike the authors' PyTorch code (and torchattacks), every example
draws its own windows and signs, from a generator of its own seed: the result is the same on any
device and does not touch the global random state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spatialmix.errors import unknown_name
from spatialmix.robustness.apgd import margins, project

NORMS = ("Linf", "L2")
# Where the paper's schedule halves the share p of pixels a window covers, for 10,000 queries
# (rescaled to the queries given): p_init up to query 10, p_init / 2 up to 50, ...
SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


class Square:
    """The Square Attack on ``model`` (which takes images in [0, 1]) within ``eps`` in ``norm``.

    ``n_queries``: the model evaluations per example after the first (the start point); ``p_init``:
    the share of the image the first windows cover (the paper's 0.8 for L-inf, also used for L2 here
    as in AutoAttack). ``attack(images, labels)`` returns the adversarial images: inside the eps
    ball and [0, 1]; where the attack failed, the lowest-margin point it found; an example the model
    misclassifies as it is comes back unchanged.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "Linf",
        n_queries: int = 5000,
        p_init: float = 0.8,
        seed: int = 0,
    ):
        if norm not in NORMS:
            raise unknown_name("norm", norm, NORMS)
        self.model, self.eps, self.norm = model, float(eps), norm
        self.n_queries, self.p_init, self.seed = int(n_queries), float(p_init), int(seed)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, y = images.detach().float(), labels.detach().long()
        adv = x.clone()
        todo = (self._margin(x, y) > 0).nonzero().flatten()  # (the misclassified are adversarial as they are)
        if len(todo) and self.eps > 0:
            generator = torch.Generator().manual_seed(self.seed)
            search = self._linf if self.norm == "Linf" else self._l2
            adv[todo] = search(x[todo], y[todo], generator)
        return project(adv, x, self.eps, self.norm)

    # ---- the searches

    def _linf(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Start at vertical stripes of +-eps; each query sets one window of each example to x +- eps
        (one sign per channel)."""
        n, c, h, w = x.shape
        best = (x + self.eps * _signs((n, c, 1, w), generator, x)).clamp(0.0, 1.0)
        margin = self._margin(best, y)
        for query in range(self.n_queries):
            active = (margin > 0).nonzero().flatten()
            if not len(active):
                break
            k, side = len(active), self._side(query, h, w, smallest=1)
            inside = _window_mask(k, side, h, w, generator, x.device)
            step = (x[active] + self.eps * _signs((k, c, 1, 1), generator, x)).clamp(0.0, 1.0)
            candidate = torch.where(inside, step, best[active])
            self._keep_better(candidate, y, active, best, margin)
        return best

    def _l2(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Start at a 5 x 5 grid of the paper's pseudo-Gaussian bumps of random signs, scaled to eps;
        each query moves the perturbation's mass of a second window into a fresh bump in the first."""
        n, c, h, w = x.shape
        best = (x + self.eps * _unit(_bump_grid(x, generator))).clamp(0.0, 1.0)
        margin = self._margin(best, y)
        for query in range(self.n_queries):
            active = (margin > 0).nonzero().flatten()
            if not len(active):
                break
            k, side = len(active), self._side(query, h, w, smallest=3, odd=True)
            xa = x[active]
            delta = best[active] - xa
            first = _window_index(k, c, side, h, w, generator, x.device)
            second = _window_index(k, c, side, h, w, generator, x.device)
            old = delta[first]  # (k, c, side, side)
            union = torch.zeros(k, 1, h, w, dtype=torch.bool, device=x.device)
            union[first[0], 0, first[2], first[3]] = True
            union[second[0], 0, second[2], second[3]] = True
            # the mass the two windows hold, plus what the ball has left, goes into the new bump
            room = (self.eps**2 - _norm(delta) ** 2).clamp_min(0.0) / c + _norm(delta * union) ** 2
            bump = _bump(side, generator, x) * _signs((k, c, 1, 1), generator, x)
            bump = bump + old / (1e-12 + old.norm(dim=(-2, -1), keepdim=True))
            bump = bump / (1e-12 + bump.norm(dim=(-2, -1), keepdim=True)) * room.sqrt()
            delta[second] = 0.0
            delta[first] = bump
            candidate = (xa + self.eps * _unit(delta)).clamp(0.0, 1.0)
            self._keep_better(candidate, y, active, best, margin)
        return best

    # ---- shared steps

    def _margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return margins(self.model(x).float(), y)

    def _keep_better(self, candidate, y, active, best, margin) -> None:
        """Where a candidate lowered its example's margin (what the search minimizes), it is the new best."""
        new = self._margin(candidate, y[active])
        better = new < margin[active]
        best[active[better]] = candidate[better]
        margin[active[better]] = new[better]

    def _side(self, query: int, h: int, w: int, smallest: int, odd: bool = False) -> int:
        """The side of this query's windows: sqrt(p) of the image's, p on the paper's schedule."""
        scaled = int(query / self.n_queries * 10000)  # the schedule is for 10,000 queries
        p = self.p_init / 2 ** sum(scaled > mark for mark in SCHEDULE)
        side = max(int(round(math.sqrt(p * h * w))), smallest)
        if odd and side % 2 == 0:
            side += 1
        return min(side, h, w)


# --------------------------------------------------------------------------- random windows and bumps


def _signs(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Independent random +-1 of ``shape``."""
    signs = torch.randint(0, 2, shape, generator=generator).to(like.dtype) * 2 - 1
    return signs.to(like.device)


def _corners(k: int, side: int, h: int, w: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The top-left corner of one ``side`` x ``side`` window inside the image per example, uniform."""
    rows = torch.randint(0, h - side + 1, (k,), generator=generator)
    cols = torch.randint(0, w - side + 1, (k,), generator=generator)
    return rows, cols


def _window_mask(k: int, side: int, h: int, w: int, generator, device) -> torch.Tensor:
    """(k, 1, h, w): True inside each example's random window."""
    rows, cols = (t.to(device) for t in _corners(k, side, h, w, generator))
    r, q = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (r >= rows[:, None]) & (r < rows[:, None] + side)
    in_cols = (q >= cols[:, None]) & (q < cols[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _window_index(k: int, c: int, side: int, h: int, w: int, generator, device) -> tuple[torch.Tensor, ...]:
    """Advanced indices of each example's random window: ``t[index]`` is (k, c, side, side)."""
    rows, cols = (t.to(device) for t in _corners(k, side, h, w, generator))
    span = torch.arange(side, device=device)
    return (
        torch.arange(k, device=device).view(k, 1, 1, 1),
        torch.arange(c, device=device).view(1, c, 1, 1),
        (rows[:, None] + span).view(k, 1, side, 1),
        (cols[:, None] + span).view(k, 1, 1, side),
    )


def _rectangle(a: int, b: int) -> torch.Tensor:
    """The paper's pseudo-Gaussian a x b bump: nested rectangles around the center, ring r weighs
    1 / (r + 1)^2 (unit L2 norm)."""
    bump = torch.zeros(a, b)
    top, left = a // 2, b // 2
    for ring in range(max(a // 2 + 1, b // 2 + 1)):
        r0, c0 = max(top - ring, 0), max(left - ring, 0)
        bump[r0 : min(top - ring + 2 * ring + 1, a), c0 : min(left - ring + 2 * ring + 1, b)] += (
            1.0 / (ring + 1) ** 2
        )
    return bump / bump.norm().clamp_min(1e-12)


def _bump(side: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """A side x side window's perturbation: a positive bump over a negative one, in a random
    orientation (unit L2 norm)."""
    bump = torch.cat([_rectangle(side // 2, side), -_rectangle(side - side // 2, side)])
    if torch.rand(1, generator=generator).item() > 0.5:
        bump = bump.t()
    return (bump / bump.norm().clamp_min(1e-12)).to(like.device, like.dtype)


def _bump_grid(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The L2 start: a 5 x 5 grid of bumps (side h // 5, centered), a random sign per example,
    channel and bump."""
    n, c, h, w = x.shape
    side = max(min(h, w) // 5, 1)
    top, left = (h - 5 * side) // 2, (w - 5 * side) // 2
    delta = torch.zeros_like(x)
    for i in range(min(5, h // side)):
        for j in range(min(5, w // side)):
            r, q = top + i * side, left + j * side
            delta[:, :, r : r + side, q : q + side] += _bump(side, generator, x) * _signs(
                (n, c, 1, 1), generator, x
            )
    return delta


def _norm(t: torch.Tensor) -> torch.Tensor:
    """Per example L2 norm, shaped (n, 1, 1, 1)."""
    return t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / (_norm(t) + 1e-12)
