"""Pruning at initialization: scores against hand computations and autograd references, masks, ablations, errors."""

import copy
import doctest
import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torch_lottery import (
    LotteryTicket,
    fresh_init,
    init_pruning,
    init_scores,
    kept_counts,
    prune_at_init,
)
from torch_lottery.selection import _prune_lowest_reference

from conftest import TinyMLP


def data(n=32, features=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def small(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(8, 12)] + ([nn.BatchNorm1d(12)] if bn else []) + [nn.ReLU(), nn.Linear(12, 3)]
    return nn.Sequential(*layers)


def state(model):
    """Every parameter and buffer (canonical names), the modes, requires_grad flags and grads."""
    tensors = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("_mask"):
            continue
        tensors[name.removesuffix("_orig")] = t.detach().clone()
    modes = [m.training for m in model.modules()]
    flags = {n.removesuffix("_orig"): p.requires_grad for n, p in model.named_parameters()}
    grads = {n.removesuffix("_orig"): None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return tensors, modes, flags, grads


def assert_same_state(a, b):
    ta, ma, fa, ga = a
    tb, mb, fb, gb = b
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k  # bitwise, signs included
    assert ma == mb and fa == fb
    for k in ga:
        assert (ga[k] is None and gb[k] is None) or torch.equal(ga[k], gb[k]), k


def top_k_masks(scores, kept):
    """Reference: keep the ``kept`` highest scores by a stable sort over all tensors."""
    survivors = {k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()}
    total = sum(v.numel() for v in scores.values())
    return _prune_lowest_reference(scores, survivors, total - kept)


# ----------------------------------------------------------------------------- the scores


def test_synflow_scores_match_the_hand_computed_path_products(tiny):
    # All weights and biases made positive, input all ones. Linear-positive network:
    # d R / d W1[i, j] = sum_k |W2[k, i]| (times input 1), d R / d W2[k, i] = h_i = sum_j |W1[i, j]| + |b1[i]|.
    s = init_scores(tiny, method="synflow", input_shape=(1, 3))
    col = [0.4 + 0.15, 0.7 + 0.6]
    w1 = torch.tensor([[0.1, 0.5, 0.3], [0.9, 0.2, 0.05]], dtype=torch.float64)
    expected1 = w1 * torch.tensor(col, dtype=torch.float64)[:, None]  # [[.055, .275, .165], [1.17, .26, .065]]
    h = [0.1 + 0.5 + 0.3 + 0.01, 0.9 + 0.2 + 0.05 + 0.02]  # 0.91, 1.17
    expected2 = torch.tensor([[0.4 * h[0], 0.7 * h[1]], [0.15 * h[0], 0.6 * h[1]]], dtype=torch.float64)
    assert s["fc1.weight"].dtype == torch.float64
    assert torch.allclose(s["fc1.weight"], expected1, atol=1e-12)
    assert torch.allclose(s["fc2.weight"], expected2, atol=1e-12)


def test_synflow_iterates_on_the_masked_network(tiny):
    # 10 weights, sparsity 0.6: keep 4. Two rounds: round 1 keeps round(10 * 0.4**0.5) = 6, i.e. drops
    # the 4 lowest of the scores above (.055 W1[0,0], .065 W1[1,2], .1365 W2[1,0], .165 W1[0,2]).
    # Round 2 rescoring the masked net: W1[0,1] .5*.4 = .2, W1[1,0] .9*1.3 = 1.17, W1[1,1] .2*1.3 = .26,
    # h = (.51, 1.12): W2[0,0] .4*.51 = .204, W2[0,1] .7*1.12 = .784, W2[1,1] .6*1.12 = .672: drop .2 and .204.
    ticket = prune_at_init(tiny, method="synflow", sparsity=0.6, iterations=2, input_shape=(1, 3))
    assert ticket.masks["fc1.weight"].tolist() == [[False, False, False], [True, True, False]]
    assert ticket.masks["fc2.weight"].tolist() == [[False, True], [False, True]]
    # One-shot SynFlow keeps the top 4 of round 1 instead: 1.17, .819, .702 and W2[0,0] .364.
    oneshot = prune_at_init(TinyMLP(), method="synflow", sparsity=0.6, iterations=1, input_shape=(1, 3))
    assert oneshot.masks["fc1.weight"].tolist() == [[False, False, False], [True, False, False]]
    assert oneshot.masks["fc2.weight"].tolist() == [[True, True], [False, True]]


def test_snip_is_the_gradient_times_the_weight_summed_over_batches():
    model = small()
    batches = [data(seed=1), data(seed=2)]
    reference = copy.deepcopy(model)
    loss = sum(F.cross_entropy(reference(x), y) for x, y in batches)
    loss.backward()
    s = init_scores(model, method="snip", inputs=batches)
    for name in ("0.weight", "2.weight"):
        p = reference.get_parameter(name)
        assert torch.allclose(s[name], (p.grad * p).abs(), atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # the model's grads are not touched


def test_grasp_is_theta_times_hessian_gradient_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False)).double()
    batches = [(torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])),
               (torch.randn(4, 3, dtype=torch.float64), torch.tensor([1, 0, 0, 1]))]
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()

    def loss(flat):
        a, b = flat[:12].reshape(4, 3), flat[12:].reshape(2, 4)
        return sum(F.cross_entropy(torch.tanh(x @ a.T) @ b.T / 200.0, y) for x, y in batches)

    theta = torch.cat([w1.reshape(-1), w2.reshape(-1)])
    g = torch.autograd.functional.jacobian(loss, theta)
    hessian = torch.autograd.functional.hessian(loss, theta)
    expected = theta * (hessian @ g)
    s = init_scores(model, method="grasp", inputs=batches)
    got = torch.cat([s["0.weight"].reshape(-1), s["2.weight"].reshape(-1)])
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-18)
    assert expected.abs().max() > 0 and (expected > 0).any() and (expected < 0).any()


def test_grasp_keeps_the_highest_theta_hg_and_removes_the_highest_minus_theta_hg():
    # The paper's score is S = -theta * Hg, "remove the weights with the highest S" (as GraSP.py does
    # with topk); Synaptic-Flow's pruners.py keeps the highest theta * Hg. Both: keep the highest theta*Hg.
    model = small(seed=3)
    batch = data(seed=4)
    s = init_scores(model, method="grasp", inputs=batch)
    total = sum(v.numel() for v in s.values())
    ticket = prune_at_init(copy.deepcopy(model), method="grasp", sparsity=0.75, inputs=batch)
    kept = total - round(0.75 * total)
    assert {k: torch.equal(v, ticket.masks[k]) for k, v in top_k_masks(s, kept).items()} == {k: True for k in s}
    removed = torch.cat([(-s[k])[~ticket.masks[k]] for k in s])
    survived = torch.cat([(-s[k])[ticket.masks[k]] for k in s])
    assert removed.min() >= survived.max()


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "magnitude", "random"])
def test_global_masks_are_the_top_scores_with_exact_count(method):
    model = small(seed=5)
    batch = data(seed=6)
    s = init_scores(model, method=method, inputs=batch, seed=3)
    ticket = prune_at_init(copy.deepcopy(model), method=method, sparsity=0.8, inputs=batch, iterations=1, seed=3)
    total = sum(v.numel() for v in s.values())
    assert sum(int(m.sum()) for m in ticket.masks.values()) == total - round(0.8 * total)
    for k, m in top_k_masks(s, total - round(0.8 * total)).items():
        assert torch.equal(m, ticket.masks[k]), k


def test_layer_scope_and_density_rules_give_per_layer_counts():
    model = small(seed=7)
    batch = data()
    layer = prune_at_init(copy.deepcopy(model), method="snip", sparsity=0.7, inputs=batch, scope="layer")
    assert {k: int(m.sum()) for k, m in layer.masks.items()} == {"0.weight": 96 - 67, "2.weight": 36 - 25}
    for rule in ("erk", "smart_ratio", "balanced"):
        t = prune_at_init(copy.deepcopy(model), method="synflow", sparsity=0.9, density=rule, inputs=batch,
                          iterations=2)
        assert {k: int(m.sum()) for k, m in t.masks.items()} == kept_counts(model, 0.9, rule=rule)
    given = prune_at_init(copy.deepcopy(model), method="magnitude", density={"0.weight": 0.5, "2.weight": 0.25})
    assert {k: int(m.sum()) for k, m in given.masks.items()} == {"0.weight": 48, "2.weight": 9}


def test_random_is_seeded():
    a = prune_at_init(small(), method="random", sparsity=0.5, seed=1).masks
    b = prune_at_init(small(), method="random", sparsity=0.5, seed=1).masks
    c = prune_at_init(small(), method="random", sparsity=0.5, seed=2).masks
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "magnitude", "random"])
def test_the_model_is_bitwise_unchanged_except_the_masks(method):
    model = small(bn=True)
    model[1].running_mean.normal_()  # non-trivial buffers, negative entries (SynFlow takes abs of copies)
    model[1].running_var.uniform_(0.5, 2.0)
    model[2].eval()  # mixed modes
    model[0].bias.requires_grad_(False)  # a frozen parameter
    model[3].bias.grad = torch.full((3,), 7.0)  # a stale gradient
    before = state(model)
    ticket = prune_at_init(model, method=method, sparsity=0.6, inputs=[data(), data(seed=1)], iterations=3)
    assert_same_state(before, state(model))
    assert int(model[1].num_batches_tracked) == 0  # no forward counted on the model's BatchNorm
    assert not ticket.masks["0.weight"].all()
    assert torch.equal(ticket.rewind_weights["0.weight"], before[0]["0.weight"])  # theta_0 = the init


def test_the_ticket_trains_with_the_masks_in_force():
    model = small()
    ticket = prune_at_init(model, method="synflow", sparsity=0.9, input_shape=(1, 8), iterations=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data()
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for fqn, mask in ticket.masks.items():
        assert not model.get_submodule(fqn.rsplit(".", 1)[0]).weight[~mask].any()
    assert ticket.sparsity == pytest.approx(1 - round(0.1 * 132) / 132)


def test_synflow_takes_its_input_shape_from_the_data():
    a = prune_at_init(small(), method="synflow", sparsity=0.5, inputs=data(), iterations=2).masks
    b = prune_at_init(small(), method="synflow", sparsity=0.5, input_shape=(1, 8), iterations=2).masks
    assert all(torch.equal(a[k], b[k]) for k in a)


class Tied(nn.Module):
    """An autoencoder whose decoder shares the encoder's weight (transposed use, one Parameter)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(6, 6)
        self.dec = nn.Linear(6, 6)
        self.dec.weight = self.enc.weight
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.dec(torch.relu(self.enc(x)))))


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_tied_weights_are_scored_as_one_tensor(method):
    model = Tied()
    before = state(model)
    batch = data(features=6)
    s = init_scores(model, method=method, inputs=batch)
    assert list(s) == ["enc.weight", "head.weight"]
    if method == "snip":  # the gradient of a tied weight sums both uses
        reference = Tied()
        F.cross_entropy(reference(batch[0]), batch[1]).backward()
        assert torch.allclose(s["enc.weight"], (reference.enc.weight.grad * reference.enc.weight).abs(), atol=1e-7)
    ticket = prune_at_init(model, method=method, sparsity=0.5, inputs=batch, iterations=2)
    assert model.dec.weight_mask is model.enc.weight_mask or torch.equal(model.dec.weight_mask, model.enc.weight_mask)
    assert sum(int(m.sum()) for m in ticket.masks.values()) == 27
    assert torch.equal(model.enc.weight_orig, before[0]["enc.weight"])


def test_layer_collapse_is_logged(caplog):
    model = nn.Sequential(nn.Linear(8, 40), nn.ReLU(), nn.Linear(40, 2))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # tiny output layer: global magnitude removes all of it first
    with caplog.at_level(logging.WARNING, logger="torch_lottery.init_pruning"):
        ticket = prune_at_init(model, method="magnitude", sparsity=0.5)
    assert int(ticket.masks["2.weight"].sum()) == 0
    assert "2.weight keeps no weight (layer collapse)" in caplog.text


# ----------------------------------------------------------------------------- ablations


def test_shuffle_keeps_each_layers_count_and_moves_the_mask():
    batch = data()
    plain = prune_at_init(small(), method="snip", sparsity=0.8, inputs=batch).masks
    shuffled = prune_at_init(small(), method="snip", sparsity=0.8, inputs=batch, ablation="shuffle", seed=4).masks
    for k in plain:
        assert int(plain[k].sum()) == int(shuffled[k].sum())
    assert not torch.equal(plain["0.weight"], shuffled["0.weight"])


def test_invert_keeps_the_lowest_scores():
    model = small()
    magnitudes = {k: model.get_parameter(k).detach().abs() for k in ("0.weight", "2.weight")}
    ticket = prune_at_init(model, method="magnitude", sparsity=0.75, ablation="invert")
    total = 132
    expected = top_k_masks({k: -v for k, v in magnitudes.items()}, total - 99)
    assert all(torch.equal(expected[k], ticket.masks[k]) for k in expected)


def test_reinit_keeps_the_masks_and_redraws_the_weights():
    batch = data()
    plain = prune_at_init(small(), method="snip", sparsity=0.8, inputs=batch)
    model = small()
    fresh = fresh_init(model, plain.targets, seed=5)
    bias = model[0].bias.detach().clone()
    ticket = prune_at_init(model, method="snip", sparsity=0.8, inputs=batch, ablation="reinit", seed=5)
    for k, m in plain.masks.items():
        assert torch.equal(ticket.masks[k], m)  # chosen on the original weights
        assert torch.equal(ticket.rewind_weights[k], fresh[k])  # theta_0 is the new draw
        assert torch.equal(model.get_submodule(k.rsplit(".", 1)[0]).weight, fresh[k] * m)
    assert torch.equal(model[0].bias, bias)  # only the targets are redrawn


# ----------------------------------------------------------------------------- errors leave the model alone


def _nan_model():
    model = small()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    return model


@pytest.mark.parametrize(
    "build, kwargs, error, match",
    [
        (small, {"sparsity": 1.0}, ValueError, r"prune_at_init\(\): sparsity=1.0 is outside \[0, 1\)"),
        (small, {"sparsity": -0.5}, ValueError, r"sparsity=-0.5 is outside \[0, 1\)"),
        (small, {"method": "magnitude", "sparsity": None}, ValueError, r"sparsity=None; pass the fraction"),
        (small, {"method": "snip", "sparsity": 0.5}, ValueError, r"method='snip' needs data: pass inputs=\(x, y\)"),
        (small, {"method": "grasp", "sparsity": 0.5, "inputs": []}, ValueError, r"inputs is empty"),
        (small, {"method": "synflow", "sparsity": 0.5}, ValueError, r"needs the shape of its all-ones input"),
        (small, {"method": "obd", "sparsity": 0.5}, ValueError, r"method='obd' is not a method; choose one of"),
        (small, {"method": "magnitude", "sparsity": 0.5, "scope": "net"}, ValueError, r"scope='net'"),
        (small, {"method": "magnitude", "sparsity": 0.5, "ablation": "flip"}, ValueError, r"ablation='flip'"),
        (small, {"method": "magnitude", "sparsity": 0.5, "density": "er2"}, ValueError, r"density='er2' is not a density rule"),
        (small, {"method": "magnitude", "density": {"0.weight": 0.5}}, ValueError, r"density is missing \['2.weight'\]"),
        (small, {"method": "magnitude", "sparsity": 0.5, "rate": 2.0}, ValueError, r"LotteryTicket\(\): rate=2.0"),
        (small, {"method": "snip", "sparsity": 0.5, "inputs": [1, 2]}, TypeError, r"inputs\[0\] is 'int'"),
        (lambda: nn.Sequential(nn.ReLU()), {"method": "magnitude", "sparsity": 0.5}, ValueError, "selects no prunable"),
        (_nan_model, {"method": "magnitude", "sparsity": 0.5}, ValueError, r"gave 1 NaN or infinite scores for '0.weight'"),
        (_nan_model, {"method": "synflow", "sparsity": 0.5, "input_shape": (1, 8)}, ValueError, r"NaN or infinite scores"),
        (_nan_model, {"method": "snip", "sparsity": 0.5, "inputs": data()}, ValueError, r"NaN or infinite scores"),
    ],
)
def test_bad_calls_raise_and_leave_the_model_untouched(build, kwargs, error, match):
    model = build()
    before = state(model)
    with pytest.raises(error, match=match):
        prune_at_init(model, **kwargs)
    after = state(model)
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]) or (before[0][k].isnan() == after[0][k].isnan()).all()
    assert before[0].keys() == after[0].keys() and not any(n.endswith("_orig") for n, _ in model.named_parameters())


def test_an_already_pruned_model_is_refused():
    model = small()
    LotteryTicket(model, sparsity=0.5).set_masks_({"0.weight": torch.rand(12, 8) > 0.5,
                                                    "2.weight": torch.ones(3, 12, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"'0.weight' is already pruned"):
        prune_at_init(model, method="magnitude", sparsity=0.5)


def test_reinit_rolls_back_when_installing_fails(monkeypatch):
    model = small()
    before = state(model)

    def fail(self, masks, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(LotteryTicket, "set_masks_", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        prune_at_init(model, method="magnitude", sparsity=0.5, ablation="reinit")
    assert_same_state(before, state(model))


def test_doctests():
    assert doctest.testmod(init_pruning, optionflags=doctest.ELLIPSIS).failed == 0
