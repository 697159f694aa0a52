"""Layer-wise density rules, each checked against its paper's formula on hand-computed cases."""

import doctest
import math
import random

import pytest
import torch
from torch import nn

from torch_lottery import LotteryTicket, densities, kept_counts, layer_densities
from torch_lottery.densities import DENSITY_RULES

# Three Linear layers: weights (6, 4), (3, 6), (2, 3): n = 24, 18, 6, N = 48.
MLP = {"fc1": (6, 4), "fc2": (3, 6), "fc3": (2, 3)}
# A convolution (4 out, 2 in, 3x3 kernel): n = 72; then Linear (3, 16): 48; Linear (2, 3): 6. N = 126.
CONV = {"conv": (4, 2, 3, 3), "fc": (3, 16), "out": (2, 3)}


def mlp_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))


def test_uniform_keeps_the_same_fraction_and_rounds_by_largest_remainder():
    # sparsity 0.3: K = 48 - round(14.4) = 34, density 34/48 everywhere:
    # real counts 24*34/48 = 17, 18*34/48 = 12.75, 6*34/48 = 4.25 -> floors 17, 12, 4 (33),
    # the one left goes to the largest fraction (fc2, .75).
    assert kept_counts(MLP, 0.3, rule="uniform") == {"fc1": 17, "fc2": 13, "fc3": 4}
    assert kept_counts(MLP, 0.5, rule="uniform") == {"fc1": 12, "fc2": 9, "fc3": 3}


def test_erk_counts_kernel_dimensions():
    # sum(shape)/prod(shape): conv (4+2+3+3)/72 = 1/6, fc (3+16)/48 = 19/48, out (2+3)/6 = 5/6.
    # times n: 12, 19, 5 -> sum 36. Sparsity 5/7 keeps K = 126 - 90 = 36: scale 1.
    assert kept_counts(CONV, 5 / 7, rule="erk") == {"conv": 12, "fc": 19, "out": 5}
    d = layer_densities(CONV, 5 / 7, rule="erk")
    assert d == {"conv": 12 / 72, "fc": 19 / 48, "out": 5 / 6}


def test_erk_caps_a_layer_over_density_one_and_resolves_the_rest():
    # Sparsity 3/7 keeps K = 72: scale 2 would give out 2 * 5/6 > 1, so out is dense (6) and the
    # rest share 66: scale 66 / (12 + 19) = 66/31; conv 12 * 66/31 = 25.548, fc 19 * 66/31 = 40.452
    # -> floors 25, 40 (+6 = 71); the last weight goes to conv (fraction .548 > .452).
    assert kept_counts(CONV, 3 / 7, rule="erk") == {"conv": 26, "fc": 40, "out": 6}


def test_er_uses_channels_only():
    # (n_in + n_out)/(n_in n_out): conv (4+2)/8 = 3/4 -> 54 of 72; fc 19/48 -> 19; out 5/6 -> 5: 78.
    # K = 36: scale 36/78; conv 54*36/78 = 24.92, fc 19*36/78 = 8.77, out 5*36/78 = 2.31
    # -> floors 24, 8, 2 (34), +1 to conv and fc.
    assert kept_counts(CONV, 5 / 7, rule="er") == {"conv": 25, "fc": 9, "out": 2}
    # ERK and ER agree on Linear layers (no kernel dimensions).
    assert kept_counts(MLP, 0.5, rule="er") == kept_counts(MLP, 0.5, rule="erk") == {"fc1": 10, "fc2": 9, "fc3": 5}


def test_er_refuses_a_one_dimensional_tensor():
    with pytest.raises(ValueError, match=r"rule='er' needs weights with \(out, in, ...\) dimensions.*'b'.*\(5,\)"):
        layer_densities({"a": (5, 5), "b": (5,)}, 0.5, rule="er")


def test_smart_ratio_uses_the_quadratic_layer_index_for_every_layer():
    # L = 3: (L-l+1)^2 + (L-l+1) = 12, 6, 2; times n = 288, 108, 12 (408). K = 24: scale 1/17;
    # real counts 24*12/17 = 16.94, 18*6/17 = 6.35, 6*2/17 = 0.71 -> floors 16, 6, 0 (22),
    # +1 to fc1 (.94) and fc3 (.71). No layer is fixed at 30% because it is Linear.
    assert kept_counts(MLP, 0.5, rule="smart_ratio") == {"fc1": 17, "fc2": 6, "fc3": 1}
    d = layer_densities(MLP, 0.5, rule="smart_ratio")
    assert d["fc1"] > d["fc2"] > d["fc3"]


def test_balanced_keeps_the_same_count_per_layer_capping_small_layers():
    # K = 24 over 3 layers: 8 each, but fc3 has 6: it is dense and fc1, fc2 share 18: 9 each.
    assert kept_counts(MLP, 0.5, rule="balanced") == {"fc1": 9, "fc2": 9, "fc3": 6}
    # K = 12: 4 each, no capping.
    assert kept_counts(MLP, 0.75, rule="balanced") == {"fc1": 4, "fc2": 4, "fc3": 4}


def test_pyramidal_solves_the_ratio():
    # n = 8, 16, 32 (N = 56); r = 1/2 gives 8/2 + 16/4 + 32/8 = 12 kept: sparsity 44/56 = 11/14.
    shapes = {"a": (4, 2), "b": (4, 4), "c": (8, 4)}
    assert kept_counts(shapes, 11 / 14, rule="pyramidal") == {"a": 4, "b": 4, "c": 4}
    assert layer_densities(shapes, 11 / 14, rule="pyramidal") == {"a": 0.5, "b": 0.25, "c": 0.125}
    # MLP, K = 24: 24 r + 18 r^2 + 6 r^3 = 24 at r = 0.6344: 15.23, 7.24, 1.53 -> 15, 7, 1 (+1 to fc3).
    assert kept_counts(MLP, 0.5, rule="pyramidal") == {"fc1": 15, "fc2": 7, "fc3": 2}


@pytest.mark.parametrize("rule", DENSITY_RULES)
def test_totals_are_exact_and_counts_bounded(rule):
    rng = random.Random(0)
    for _ in range(40):
        shapes = {f"l{i}": (rng.randint(1, 40), rng.randint(1, 40), *([3, 3] if rng.random() < 0.3 else []))
                  for i in range(rng.randint(1, 6))}
        sparsity = rng.choice([0.0, 0.5, 0.9, 0.99, 0.999, rng.random() * 0.999])
        counts = kept_counts(shapes, sparsity, rule=rule)
        total = sum(math.prod(s) for s in shapes.values())
        assert sum(counts.values()) == total - round(sparsity * total)
        d = layer_densities(shapes, sparsity, rule=rule)
        for f, s in shapes.items():
            assert 0 <= counts[f] <= math.prod(s)
            assert round(d[f] * math.prod(s)) == counts[f]


@pytest.mark.parametrize("rule", ["erk", "er", "smart_ratio", "balanced"])
def test_uncapped_layers_follow_the_formula_within_one_weight(rule):
    shapes = {"a": (30, 20), "b": (20, 10, 3, 3), "c": (10, 40), "d": (5, 10)}
    counts = kept_counts(shapes, 0.9, rule=rule)
    weights = densities._raw_weights(rule, shapes)
    numel = {f: math.prod(s) for f, s in shapes.items()}
    uncapped = [f for f in shapes if counts[f] < numel[f]]
    budget = sum(counts[f] for f in uncapped)
    scale = budget / sum(weights[f] * numel[f] for f in uncapped)
    for f in uncapped:
        assert abs(counts[f] - scale * weights[f] * numel[f]) < 1


def test_sparsity_zero_keeps_everything():
    for rule in DENSITY_RULES:
        assert layer_densities(MLP, 0.0, rule=rule) == {"fc1": 1.0, "fc2": 1.0, "fc3": 1.0}


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_zero_one_is_an_error(bad):
    with pytest.raises(ValueError, match=r"layer_densities\(\): sparsity=.* is outside \[0, 1\)"):
        layer_densities(MLP, bad)


def test_other_bad_arguments():
    with pytest.raises(TypeError, match=r"sparsity='0.5' is not a number"):
        layer_densities(MLP, "0.5")
    with pytest.raises(ValueError, match=r"rule='erdos' is not a density rule; choose one of \['uniform'"):
        layer_densities(MLP, 0.5, rule="erdos")
    with pytest.raises(ValueError, match="no target layers"):
        layer_densities({}, 0.5)
    with pytest.raises(ValueError, match="selects no prunable tensor"):
        layer_densities(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(TypeError, match="is not a model, a list of Targets"):
        layer_densities(3, 0.5)


def test_model_targets_and_mapping_agree():
    model = mlp_model()
    from_model = layer_densities(model, 0.7, rule="erk")
    ticket = LotteryTicket(model, sparsity=0.5)
    assert layer_densities(ticket.targets, 0.7, rule="erk") == from_model
    assert layer_densities({k: v for k, v in model.state_dict().items() if k.endswith("weight")}, 0.7, rule="erk") == from_model
    assert list(layer_densities(model, 0.7, targets=["4.weight", "0.weight"])) == ["0.weight", "4.weight"]


def test_densities_work_as_a_tickets_layer_sparsity():
    torch.manual_seed(0)
    model = mlp_model()
    counts = kept_counts(model, 0.6, rule="smart_ratio")
    d = layer_densities(model, 0.6, rule="smart_ratio")
    ticket = LotteryTicket(model, layer_sparsity={f: 1 - v for f, v in d.items()})
    with ticket:
        pass  # no training: one-shot magnitude pruning to the rule's per-layer counts
    assert {f: int(m.sum()) for f, m in ticket.masks.items()} == counts


def test_doctests():
    assert doctest.testmod(densities).failed == 0
