"""The table of attacks: every name builds its class with the evaluation's settings, and each class
attacks a batch exactly as the engine's routine it wraps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spatialmix as sm
from spatialmix.errors import SpatialmixError
from spatialmix.robustness import apgd
from spatialmix.robustness.catalog import APGD, FGSM, PGD, APGDTargeted, Batch, SquareAttack, make_attack
from spatialmix.robustness.settings import AttackSettings


def settings(**changes) -> AttackSettings:
    return AttackSettings(**{"step_size": 0.3, "square_queries": 12, **changes})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("apgd-ce", APGD("Linf")),
        ("apgd-t1", APGDTargeted("Linf", 1)),
        ("apgd-t7", APGDTargeted("Linf", 7)),
        ("apgd-t", APGDTargeted("Linf", 1)),
        ("pgd", PGD("Linf", 0.3)),
        ("fgsm", FGSM("Linf")),
        ("square", SquareAttack("Linf", 12)),
    ],
)
def test_every_name_builds_its_class_with_the_settings(name, expected):
    attack = make_attack(name, settings())
    assert attack == expected and attack.name == ("apgd-t1" if name == "apgd-t" else name)


def test_the_norm_comes_from_the_settings():
    assert make_attack("apgd-t2", settings(norm="L2")) == APGDTargeted("L2", 2)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("apgd-cx", "unknown attack 'apgd-cx'; did you mean 'apgd-ce'?"),
        ("apgd-t0", "apgd-t0: APGD-T's targets are ranked from 1"),
        ("square2", "unknown attack 'square2'; did you mean 'square'?"),
    ],
)
def test_a_name_outside_the_table_is_refused(name, message):
    with pytest.raises(SpatialmixError, match=message.replace("?", r"\?")):
        make_attack(name, settings())


def test_the_table_is_public_and_names_every_attack_the_settings_accept():
    from spatialmix.robustness.settings import ATTACKS as SETTING_NAMES

    assert set(SETTING_NAMES) <= set(sm.ATTACKS)
    assert (
        sm.make_attack("apgd-ce", settings()).restartable
        and not sm.make_attack("fgsm", settings()).restartable
    )


def test_apgd_targeted_attacks_the_class_of_its_rank():
    """Each example is attacked towards its own ranked class: the same as calling APGD with that target."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    x, y = torch.rand(6, 1, 4, 4), torch.arange(6) % 5
    ranked = model(x).argsort(1, descending=True)
    ours = make_attack("apgd-t2", settings())(
        model, Batch(x, y, ranked), 0.1, 4, torch.Generator().manual_seed(3), {}
    )
    theirs = apgd.apgd(
        model,
        x,
        y,
        0.1,
        "Linf",
        4,
        generator=torch.Generator().manual_seed(3),
        loss="dlr-targeted",
        target=ranked[:, 2],
    )
    assert torch.equal(ours.adv, theirs.adv) and torch.equal(ours.broken, theirs.broken)
    assert ours.gradient_steps == theirs.gradient_steps > 0
