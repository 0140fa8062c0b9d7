"""The Square Attack of spatialmix.robustness.square, checked where the answer is known.

On a linear classifier the examples that can be broken within the L-inf ball are known in closed
form (the ball's corner against the margin's gradient, inside [0, 1]): Square must never break one
of the others, and being a search it breaks most of the rest.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spatialmix.robustness.square import Square

EPS = 0.02


def linear_model(d: int, classes: int, seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d, classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(classes, d, generator=g))
        layer.bias.copy_(torch.randn(classes, generator=g) * 0.1)
    return nn.Sequential(nn.Flatten(), layer).eval()


def breakable(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Whether some image within ``eps`` (L-inf) of each example, inside [0, 1], is misclassified
    (float64): for each other class j, the margin's minimum moves every pixel by up to eps against
    the sign of w_y - w_j."""
    w, b = model[1].weight.detach().double(), model[1].bias.detach().double()
    xf = x.flatten(1).double()
    out = []
    for xi, yi in zip(xf, y.tolist()):
        lowest = []
        for j in range(len(b)):
            if j != yi:
                d = w[yi] - w[j]
                room = torch.where(d > 0, xi.clamp(max=eps), (1 - xi).clamp(max=eps))
                lowest.append(float(d @ xi + b[yi] - b[j] - (d.abs() * room).sum()))
        out.append(min(lowest) <= 0)
    return torch.tensor(out)


@pytest.fixture(scope="module")
def examples():
    """A 10-class linear model on 64 random 1 x 12 x 12 images, labelled with its own answers."""
    model = linear_model(144, 10, seed=0)
    x = torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def misclassified(model, adv, y) -> torch.Tensor:
    with torch.no_grad():
        return model(adv).argmax(1) != y


def test_square_breaks_most_of_what_can_be_broken_and_nothing_else(examples):
    model, x, y = examples
    can = breakable(model, x, y, EPS)
    assert 0.3 < can.float().mean() < 0.9  # a budget where the answer is not all or nothing
    broken = misclassified(model, Square(model, EPS, n_queries=300, seed=0)(x, y), y)
    assert not (broken & ~can).any()
    assert broken.sum() >= 0.7 * can.sum(), (int(broken.sum()), int(can.sum()))  # 26 of 31 here


@pytest.mark.parametrize("norm, eps", [("Linf", EPS), ("L2", 0.5)])
def test_square_stays_inside_the_eps_ball_and_the_image_box(examples, norm, eps):
    model, x, y = examples
    adv = Square(model, eps, norm=norm, n_queries=100, seed=0)(x, y)
    delta = (adv.double() - x.double()).flatten(1)
    distance = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    ulp = torch.finfo(torch.float32).eps  # x + eps rounded to float32
    assert distance.max() <= eps + 2 * ulp
    assert adv.min() >= 0 and adv.max() <= 1
    assert distance.max() >= eps * 0.99  # it searched the whole ball, up to its surface
    assert misclassified(model, adv, y).any()


@pytest.mark.parametrize("norm, eps", [("Linf", EPS), ("L2", 0.5)])
def test_square_is_the_same_for_the_same_seed_and_leaves_torchs_generator_alone(examples, norm, eps):
    model, x, y = examples
    state = torch.random.get_rng_state()
    first = Square(model, eps, norm=norm, n_queries=30, seed=3)(x, y)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(Square(model, eps, norm=norm, n_queries=30, seed=3)(x, y), first)
    assert not torch.equal(Square(model, eps, norm=norm, n_queries=30, seed=4)(x, y), first)


def test_square_returns_what_the_model_misclassifies_already_unchanged(examples):
    model, x, y = examples
    wrong = y.clone()
    wrong[::2] = (y[::2] + 1) % 10
    adv = Square(model, EPS, n_queries=30, seed=0)(x, wrong)
    assert torch.equal(adv[::2], x[::2])
    assert not torch.equal(adv[1::2], x[1::2])


def test_square_with_zero_eps_moves_nothing_and_starts_at_stripes_of_plus_minus_eps(examples):
    model, x, y = examples
    assert torch.equal(Square(model, 0.0, n_queries=30)(x, y), x)
    start = Square(model, EPS, n_queries=0)(x, y)  # the start point alone
    up, down = (x + EPS).clamp(max=1), (x - EPS).clamp(min=0)
    moved_up = torch.isclose(start, up, atol=1e-6)
    assert (moved_up | torch.isclose(start, down, atol=1e-6)).all()
    # one sign per column of each image (vertical stripes), except where the box clipped it
    clipped = (up == x) | (down == x)
    column = moved_up.any(dim=2, keepdim=True)
    assert ((moved_up == column) | clipped).all()


def test_square_is_at_least_as_strong_as_torchattacks_square(examples):
    """torchattacks' Square (the authors' PyTorch code) draws one window per query for the whole batch;
    here each example draws its own, which explores more: at most 2 of 64 examples more robust."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = examples
    ours = misclassified(model, Square(model, EPS, n_queries=300, seed=0)(x, y), y)
    torch.manual_seed(0)
    theirs = misclassified(model, torchattacks.Square(model, eps=EPS, n_queries=300, seed=0)(x, y), y)
    assert ours.sum() >= theirs.sum() - 2, (int(ours.sum()), int(theirs.sum()))
