"""Tests for torch_lottery.reproduction.config: profiles, overrides, validation and the description lines."""

from __future__ import annotations

import pytest

from torch_lottery.reproduction.config import PROFILES, ReproConfig, describe, make_config


def test_make_config_marks_overridden_budgets_as_custom() -> None:
    assert make_config().profile == "quick"
    assert make_config(profile="full").iterations == 50_000
    assert make_config(profile="full", model="conv2").iterations == 20_000
    assert make_config(iterations=10).profile == "quick+custom"
    assert make_config(controls=["reinit"]).profile == "quick+custom"
    with pytest.raises(ValueError, match=r"make_config\(\): profile='huge' is unknown"):
        make_config(profile="huge")
    with pytest.raises(ValueError, match=r"controls=\['prune'\] has unknown \['prune'\]"):
        make_config(controls=["prune"])


def test_quick_profile_is_the_documented_budget() -> None:
    config = make_config()
    assert (config.iterations, config.rounds, config.seeds) == (2000, 8, (0, 1))
    assert config.oneshot_rounds == (4, 8) and config.controls == ("reinit", "random")
    assert (config.batch_size, config.lr, config.eval_every, config.validation_size) == (60, 1.2e-3, 100, 5000)
    full = make_config(profile="full")
    assert (full.rounds, full.seeds, full.oneshot_rounds) == (16, (0, 1, 2, 3, 4), tuple(range(1, 17)))
    assert set(PROFILES) == {"quick", "full"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"iterations": 0}, r"iterations=0 must be an int >= 1"),
        ({"rounds": -1}, r"rounds=-1 must be an int >= 0"),
        ({"eval_every": 0}, r"eval_every=0 must be an int >= 1"),
        ({"seeds": [0, 0]}, r"seeds=\(0, 0\) must be a non-empty list of distinct ints"),
        ({"seeds": []}, r"seeds=\(\) must be a non-empty list"),
        ({"model": "vgg"}, r"model='vgg' is unknown; use one of \['lenet', 'conv2', 'conv4', 'conv6'\]"),
    ],
)
def test_make_config_rejects_bad_budgets(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_to_dict_is_json_able_and_keeps_every_field() -> None:
    config = make_config(rounds=2, oneshot_every=1, seeds=[3, 5])
    d = config.to_dict()
    assert d["seeds"] == [3, 5] and d["oneshot_rounds"] == [1, 2] and d["controls"] == ["reinit", "random"]
    back = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    assert ReproConfig(**back) == config


def test_describe_states_the_budget_against_the_papers() -> None:
    assert describe(make_config(model="conv2", rounds=2, seeds=[0], controls=["random"], oneshot_every=0)) == [
        "2000 iterations/run (paper: 20000), batch 60, Adam lr 0.0002, validation every 100",
        "2 pruning rounds, seeds [0], controls ['random'], one-shot at rounds []",
    ]
