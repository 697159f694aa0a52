"""Tests for torch_lottery.backends.BakedBackend: masks baked into the weights."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from torch_lottery import LotteryTicket
from torch_lottery.backends import BACKENDS, BakedBackend, make_backend

from test_backend_contract import OPTIMIZERS


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


# Every optimizer the baked backends treat as elementwise (the re-zeroing pass is skipped once a
# step started clean), with the options that change its update rule switched on.
_OPTIMIZERS = OPTIMIZERS
# Every registered backend that bakes its masks into the weights.
BAKED = [n for n in sorted(BACKENDS) if isinstance(make_backend(n, nn.Linear(1, 1)), BakedBackend)]


def _optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    return _OPTIMIZERS[kind](model.parameters())


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


def _assert_same_training(backend, model_kind, opt_kind, pass_optimizer):
    t_prune, w_prune, out_prune = _train_imp("prune", model_kind, opt_kind, pass_optimizer=pass_optimizer)
    t_baked, w_baked, out_baked = _train_imp(backend, model_kind, opt_kind, pass_optimizer=pass_optimizer)
    assert t_baked.round == t_prune.round == 2
    for fqn in w_prune:
        assert torch.equal(t_baked.masks[fqn], t_prune.masks[fqn]), fqn
        assert torch.equal(w_baked[fqn], w_prune[fqn]), fqn
    for t in t_baked.targets:  # the Parameter itself holds the zeros
        assert bool((t_baked.backend.parameter(t).detach()[~t_baked.masks[t.fqn]] == 0).all()), t.fqn
    assert torch.equal(out_baked, out_prune)
    assert abs(t_baked.sparsity - 0.64) < 0.01


@pytest.mark.parametrize("backend", BAKED)
@pytest.mark.parametrize("model_kind", ["mlp", "conv", "encoder"])
@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
@pytest.mark.parametrize("pass_optimizer", [True, False])
def test_baked_trains_bitwise_identically_to_prune(backend, model_kind, opt_kind, pass_optimizer):
    _assert_same_training(backend, model_kind, opt_kind, pass_optimizer)


@pytest.mark.parametrize("backend", BAKED)
@pytest.mark.parametrize("opt_kind", sorted(set(_OPTIMIZERS) - {"sgd", "adam"}))
def test_every_elementwise_optimizer_trains_bitwise_identically_to_prune(backend, opt_kind):
    # the optimizer is not given to the ticket: its state carries over into round 2 and the
    # final training, nonzero at the newly pruned entries, so the first step must clean it
    _assert_same_training(backend, "mlp", opt_kind, False)


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
    assert [ticket.backend.state_keys(t) for t in ticket.targets] == [["0.weight"], ["2.weight"]]
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


def test_unknown_backend_lists_every_registered_backend():
    assert {"baked", "baked-bits"} <= set(BAKED)
    with pytest.raises(ValueError, match=r"backend='bits' is not a mask backend; choose one of " + re.escape(str(sorted(BACKENDS)))):
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
    from torch_lottery.masking import mul_bits_, mul_bytes_, pack_bits

    g = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=g)
    mask = torch.rand(numel, generator=g) > 0.7
    expected = x * mask
    for mul_, stored in ((mul_bytes_, mask), (mul_bits_, pack_bits(mask))):
        y = x.clone()
        mul_(y, stored)
        assert torch.equal(y, expected)
        out = torch.empty_like(x)
        mul_(out, stored, source=x)
        assert torch.equal(out, expected)


# -- keeping pruned entries at zero: the re-zeroing pass runs when something changed, and only then


def _pruned(backend: str = "baked", opt_kind: str = "sgd"):
    torch.manual_seed(0)
    model = _mlp()
    ticket = LotteryTicket(model, rate=0.5, backend=backend)
    with ticket:
        pass
    return model, ticket, _optimizer(opt_kind, model)


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int = 0) -> None:
    opt.zero_grad()
    model(torch.randn(4, 12, generator=torch.Generator().manual_seed(seed))).pow(2).sum().backward()
    opt.step()


def _assert_pruned_zero(model: nn.Module, ticket: LotteryTicket, opt: torch.optim.Optimizer | None = None) -> None:
    for t in ticket.targets:
        p, pruned = model.get_parameter(t.fqn), ~ticket.masks[t.fqn]
        assert int(pruned.sum()) > 0
        assert bool((p.detach()[pruned] == 0).all()), t.fqn
        if opt is not None:
            for key, value in opt.state[p].items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    assert bool((value[pruned] == 0).all()), (t.fqn, key)


def _versions(model: nn.Module, ticket: LotteryTicket) -> list[int]:
    return [model.get_parameter(t.fqn)._version for t in ticket.targets]


@pytest.mark.parametrize("backend", BAKED)
def test_clean_steps_write_each_weight_once_and_a_rewind_makes_the_next_step_rezero(backend):
    model, ticket, opt = _pruned(backend)
    _step(model, opt)  # the first step after pruning re-zeroes (the optimizer was never seen clean)
    for seed in range(1, 4):
        before = _versions(model, ticket)
        _step(model, opt, seed)
        # one in-place write per weight: the optimizer's own update, no re-zeroing pass
        assert [a - b for a, b in zip(_versions(model, ticket), before)] == [1, 1]
    _assert_pruned_zero(model, ticket, opt)
    ticket.rewind_()
    before = _versions(model, ticket)
    _step(model, opt, 9)
    assert [a - b for a, b in zip(_versions(model, ticket), before)] == [2, 2]  # update + re-zeroing
    _assert_pruned_zero(model, ticket, opt)


def test_optimizer_state_loaded_from_a_dense_run_is_cleaned_at_the_next_step():
    model, ticket, opt = _pruned()
    _step(model, opt)
    dense = _mlp()
    dense_opt = _optimizer("sgd", dense)
    _step(dense, dense_opt)  # momenta nonzero everywhere
    opt.load_state_dict(dense_opt.state_dict())
    assert bool((opt.state[model[0].weight]["momentum_buffer"] != 0).all())
    for seed in range(3):
        _step(model, opt, seed)
        _assert_pruned_zero(model, ticket, opt)


@pytest.mark.parametrize("write", ["weight copy_", "model load_state_dict", "grad assigned", "grad edited", "state edited"])
def test_writes_between_steps_are_seen_and_rezeroed_at_the_next_step(write):
    model, ticket, opt = _pruned()
    for seed in range(2):
        _step(model, opt, seed)
    w = model[0].weight
    if write == "weight copy_":
        with torch.no_grad():
            w.copy_(torch.ones_like(w))
    elif write == "model load_state_dict":
        model.load_state_dict({k: torch.ones_like(v) for k, v in model.state_dict().items()})
    elif write == "state edited":
        opt.state[w]["momentum_buffer"].fill_(1.0)
    opt.zero_grad()
    model(torch.randn(4, 12)).pow(2).sum().backward()
    if write == "grad assigned":  # e.g. gradients computed elsewhere and copied in
        w.grad = torch.ones_like(w)
    elif write == "grad edited":  # e.g. DP-SGD noise added after backward
        w.grad.add_(1.0)
    opt.step()
    _assert_pruned_zero(model, ticket, opt)
    _step(model, opt, 5)
    _assert_pruned_zero(model, ticket, opt)


def test_writes_through_data_need_refresh():
    model, ticket, opt = _pruned()
    for seed in range(2):
        _step(model, opt, seed)
    model[0].weight.data.fill_(1.0)  # .data bypasses the version counter: not seen
    _step(model, opt, 3)
    assert bool((model[0].weight.detach()[~ticket.masks["0.weight"]] != 0).all())
    ticket.refresh_()
    _assert_pruned_zero(model, ticket)


class _NoisySGD(torch.optim.SGD):
    """A subclass with its own step that moves every entry: only exact types count as elementwise."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"]).add_(0.01)
        return loss


@pytest.mark.parametrize("make", [
    lambda ps: _NoisySGD(ps, lr=0.05),
    lambda ps: torch.optim.LBFGS(ps, lr=0.1, max_iter=3),
], ids=["sgd-subclass", "lbfgs"])
def test_other_optimizers_are_rezeroed_after_every_step(make):
    model, ticket, _ = _pruned()
    opt = make(model.parameters())
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).sum()
        loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)
        _assert_pruned_zero(model, ticket)


def test_bits_backend_stores_one_bit_per_weight_and_reads_back_the_same_masks():
    model, ticket, _ = _pruned("baked-bits")
    reference, ref_ticket, _ = _pruned("baked")
    stored = ticket.backend.mask_tensors()
    assert [m.dtype for m in stored] == [torch.uint8, torch.uint8]
    assert [m.numel() for m in stored] == [(16 * 12 + 7) // 8, (4 * 16 + 7) // 8]
    assert ticket.config()["backend"] == "baked-bits"
    for fqn, mask in ref_ticket.masks.items():
        assert torch.equal(ticket.masks[fqn], mask)
        assert torch.equal(model.get_parameter(fqn), reference.get_parameter(fqn))


@pytest.mark.parametrize("backend", BAKED)
def test_channels_last_weights_train_like_prune(backend):
    # channels_last weights are not contiguous: the masks multiply them entry by entry, not in flat chunks
    def run(b):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).to(memory_format=torch.channels_last)
        assert not model[0].weight.is_contiguous()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
        ticket = LotteryTicket(model, rate=0.5, rounds=2, backend=b)
        g = torch.Generator().manual_seed(1)
        for _ in range(2):
            with ticket:
                for _ in range(3):
                    opt.zero_grad()
                    model(torch.randn(2, 3, 8, 8, generator=g).to(memory_format=torch.channels_last)).pow(2).mean().backward()
                    opt.step()
        return ticket, {t.fqn: ticket.backend.weight(t) for t in ticket.targets}

    t_prune, w_prune = run("prune")
    t_baked, w_baked = run(backend)
    for t in t_baked.targets:
        assert torch.equal(t_baked.masks[t.fqn], t_prune.masks[t.fqn])
        assert torch.equal(w_baked[t.fqn], w_prune[t.fqn])
        assert bool((t_baked.backend.parameter(t).detach()[~t_baked.masks[t.fqn]] == 0).all())


@pytest.mark.parametrize("backend", BAKED)
def test_gradient_clipping_and_accumulation_train_like_prune(backend):
    # clipping reads the gradient norm: pruned entries must already be zero in .grad, as prune's
    # *_orig gradients are; micro-batches accumulate into a zeroed (not freed) .grad
    def run(b):
        torch.manual_seed(0)
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        ticket = LotteryTicket(model, rate=0.5, rounds=3, backend=b)
        g = torch.Generator().manual_seed(3)
        norms = []
        for _ in range(3):
            with ticket:
                for _ in range(4):
                    opt.zero_grad(set_to_none=False)
                    for _ in range(2):
                        model(torch.randn(4, 12, generator=g)).pow(2).sum().backward()
                    norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1)))
                    opt.step()
        return ticket, norms

    t_prune, n_prune = run("prune")
    t_baked, n_baked = run(backend)
    assert n_baked == n_prune and max(n_prune) > 0.1  # the clip was active
    for t in t_baked.targets:
        assert torch.equal(t_baked.backend.weight(t), t_prune.backend.weight(t))
        assert bool((t_baked.backend.parameter(t).detach()[~t_baked.masks[t.fqn]] == 0).all())


def test_accumulated_gradients_keep_the_fast_path():
    model, ticket, opt = _pruned()
    _step(model, opt)
    for seed in range(3):
        before = _versions(model, ticket)
        opt.zero_grad(set_to_none=False)
        for k in range(3):
            model(torch.randn(4, 12, generator=torch.Generator().manual_seed(10 * seed + k))).pow(2).sum().backward()
        opt.step()
        assert [a - b for a, b in zip(_versions(model, ticket), before)] == [1, 1]
    _assert_pruned_zero(model, ticket, opt)
