"""Tests for torch_lottery.backends.BakedBackend: masks baked into the weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from torch_lottery import LotteryTicket
from torch_lottery.backends import BakedBackend


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def _conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


_INPUTS = {
    "mlp": lambda g: torch.randn(6, 12, generator=g),
    "conv": lambda g: torch.randn(6, 1, 6, 6, generator=g),
    "encoder": lambda g: torch.randn(3, 5, 8, generator=g),
}
_MODELS = {"mlp": _mlp, "conv": _conv, "encoder": _encoder}


def _optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    return torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)


def _train_imp(backend: str, model_kind: str, opt_kind: str, *, pass_optimizer: bool):
    torch.manual_seed(0)
    model = _MODELS[model_kind]()
    opt = _optimizer(opt_kind, model)
    ticket = LotteryTicket(model, rate=0.4, rounds=2, backend=backend, optimizer=opt if pass_optimizer else None)
    gen = torch.Generator().manual_seed(1)

    def steps(k: int) -> None:
        for _ in range(k):
            opt.zero_grad()
            model(_INPUTS[model_kind](gen)).pow(2).mean().backward()
            opt.step()

    for _ in range(2):
        with ticket:
            steps(6)
    steps(6)  # train the final ticket
    model.eval()
    out = model(_INPUTS[model_kind](torch.Generator().manual_seed(2)))
    return ticket, {t.fqn: ticket.backend.weight(t) for t in ticket.targets}, out


@pytest.mark.parametrize("model_kind", ["mlp", "conv", "encoder"])
@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
@pytest.mark.parametrize("pass_optimizer", [True, False])
def test_baked_trains_bitwise_identically_to_prune(model_kind, opt_kind, pass_optimizer):
    t_prune, w_prune, out_prune = _train_imp("prune", model_kind, opt_kind, pass_optimizer=pass_optimizer)
    t_baked, w_baked, out_baked = _train_imp("baked", model_kind, opt_kind, pass_optimizer=pass_optimizer)
    assert t_baked.round == t_prune.round == 2
    for fqn in w_prune:
        assert torch.equal(t_baked.masks[fqn], t_prune.masks[fqn]), fqn
        assert torch.equal(w_baked[fqn], w_prune[fqn]), fqn
    assert torch.equal(out_baked, out_prune)
    assert abs(t_baked.sparsity - 0.64) < 0.01


def test_baked_parameter_holds_zeros_and_keeps_identity_and_plain_keys():
    torch.manual_seed(0)
    model = _mlp()
    first = model[0].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ticket = LotteryTicket(model, rate=0.5, backend="baked")
    with ticket:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 12)).sum().backward()
            opt.step()
    for _ in range(3):  # momentum from round 1 carries over (the optimizer was not given to the ticket)
        opt.zero_grad()
        model(torch.randn(4, 12)).sum().backward()
        opt.step()
        mask = ticket.masks["0.weight"]
        assert bool((model[0].weight.grad[~mask] == 0).all())
        assert bool((model[0].weight[~mask] == 0).all())
    assert model[0].weight is first and isinstance(first, nn.Parameter)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert not prune.is_pruned(model)
    assert ticket.masks["0.weight"].dtype == torch.bool
    assert ticket.config()["backend"] == "baked"
    assert int(ticket.masks["0.weight"].sum()) == int((model[0].weight != 0).sum())


def test_baked_rezero_leaves_other_optimizers_params_alone():
    torch.manual_seed(0)
    model, other = _mlp(), _mlp()
    ticket = LotteryTicket(model, rate=0.5, backend="baked")
    with ticket:
        pass
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    opt.zero_grad()
    other(torch.randn(2, 12)).sum().backward()
    opt.step()
    assert int((other[0].weight == 0).sum()) == 0


def test_baked_remove_keeps_zeros_and_stops_masking():
    torch.manual_seed(0)
    model = _mlp()
    ticket = LotteryTicket(model, rate=0.5, backend="baked")
    with ticket:
        pass
    zeros = model[0].weight == 0
    assert torch.equal(zeros, ~ticket.masks["0.weight"])
    ticket.remove_()
    assert torch.equal(model[0].weight == 0, zeros)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 12)).sum().backward()
    assert int((model[0].weight.grad[zeros] != 0).sum()) > 0  # the gradient hook is gone
    opt.step()
    assert int((model[0].weight == 0).sum()) < int(zeros.sum())  # and so is the re-zeroing


def test_baked_failed_install_rolls_back_raw_weights():
    torch.manual_seed(0)
    model = _mlp()
    ticket = LotteryTicket(model, rate=0.5, backend="baked")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {"0.weight": torch.zeros(16, 12, dtype=torch.bool), "2.weight": torch.zeros(3, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"BakedBackend.apply_\(\): mask for '2.weight' has shape \(3, 3\)"):
        ticket._install_masks_(bad)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert bool(ticket.masks["0.weight"].all())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 12)).sum().backward()
    assert bool((model[0].weight.grad != 0).any())
    opt.step()  # no stale hook or mask re-zeroes anything
    assert int((model[0].weight == 0).sum()) == 0


def test_baked_second_round_rollback_restores_previous_mask_and_values():
    torch.manual_seed(0)
    model = _mlp()
    ticket = LotteryTicket(model, rate=0.5, rounds=3, backend="baked")
    with ticket:
        pass
    masks = ticket.masks
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {"0.weight": torch.zeros(16, 12, dtype=torch.bool), "2.weight": torch.zeros(3, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"has shape \(3, 3\)"):
        ticket._install_masks_(bad)
    assert all(torch.equal(ticket.masks[k], masks[k]) for k in masks)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_baked_refuses_a_model_with_prune_reparametrization():
    model = _mlp()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"BakedBackend: '0.weight' is not a plain Parameter"):
        LotteryTicket(model, rate=0.5, backend="baked")


def test_unknown_backend_lists_baked():
    with pytest.raises(ValueError, match=r"backend='bits' is not a mask backend; choose one of \['baked', 'prune'\]"):
        LotteryTicket(_mlp(), rate=0.5, backend="bits")


def test_baked_state_dict_round_trip_resumes_masks():
    torch.manual_seed(0)
    model = _mlp()
    ticket = LotteryTicket(model, rate=0.5, rounds=2, backend="baked")
    with ticket:
        pass
    state, weights = ticket.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    fresh = _mlp()
    resumed = LotteryTicket(fresh, rate=0.5, rounds=2, backend="baked")
    resumed.load_state_dict(state)
    fresh.load_state_dict(weights)
    assert resumed.round == 1
    assert all(torch.equal(resumed.masks[k], ticket.masks[k]) for k in ticket.masks)
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_baked_model_can_be_deep_copied_after_a_forward_pass():
    import copy

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    ticket = LotteryTicket(model, rate=0.5, backend="baked")
    with ticket:
        pass
    model(torch.randn(2, 4)).sum().backward()
    clone = copy.deepcopy(model)  # prune's non-leaf `weight` attribute makes this fail there
    for fqn, mask in ticket.masks.items():
        assert torch.equal(clone.get_parameter(fqn), model.get_parameter(fqn))
        assert (clone.get_parameter(fqn)[~mask] == 0).all()


@pytest.mark.parametrize("numel", [1000, (1 << 18) * 2 + 123])
def test_chunked_mask_multiply_equals_the_plain_product(numel):
    from torch_lottery.backends import _mul_mask_

    g = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=g)
    mask = torch.rand(numel, generator=g) > 0.7
    expected = x * mask
    y = x.clone()
    _mul_mask_(y, mask.view(torch.uint8))
    assert torch.equal(y, expected)
    out = torch.empty_like(x)
    _mul_mask_(out, mask.view(torch.uint8), source=x)
    assert torch.equal(out, expected)
