"""instability(), interpolate() and spawn_copies(): exact endpoints, hand-computed barriers, masks
held along the path, integer buffers untouched, BatchNorm re-estimation, bitwise restoration."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torch_lottery import InstabilityResult, LotteryTicket, instability, interpolate, spawn_copies
from torch_lottery.targets import named_state_tensors


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))


def random_weights(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in named_state_tensors(model).items():
        out[k] = torch.randn(v.shape, generator=g) if v.is_floating_point() else v.detach().clone()
    return out


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def prune_form(model: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint form torch.nn.utils.prune writes on its own: ``*_orig`` and ``*_mask`` keys
    (a ticket's model now writes plain keys; files written by plain prune still look like this)."""
    named = dict(model.named_parameters())
    named.update(model.named_buffers())
    return {k: v.detach().clone() for k, v in named.items()}


def assert_same_state(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert list(before) == list(after)
    for k in before:
        assert before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]), k


def recorder(model: nn.Module, seen: list) -> callable:
    def evaluate(m: nn.Module) -> float:
        seen.append({k: v.detach().clone() for k, v in named_state_tensors(model).items()})
        return 0.0
    return evaluate


# ----------------------------------------------------------------------------- the path


def test_endpoints_are_a_and_b_bitwise_and_midpoints_are_the_convex_combination() -> None:
    model = mlp()
    a, b = random_weights(model, 1), random_weights(model, 2)
    seen: list = []
    result = instability(model, a, b, recorder(model, seen), points=5)
    assert result.alphas == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert len(seen) == 5
    for k in a:
        assert torch.equal(seen[0][k], a[k]), k
        assert torch.equal(seen[-1][k], b[k]), k
        assert torch.equal(seen[2][k], 0.5 * a[k] + 0.5 * b[k]), k
        assert torch.equal(seen[1][k], 0.75 * a[k] + 0.25 * b[k]), k


def test_interpolate_is_pure_and_exact_at_the_ends() -> None:
    a = {"w": torch.tensor([0.1, -0.3, 7.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([0.2, 0.9, -1.0]), "n": torch.tensor(5)}
    a_before = {k: v.clone() for k, v in a.items()}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate(a, b, 1)["w"], b["w"])
    assert "n" not in interpolate(a, b, 0.5)  # integer tensors are not interpolated
    assert all(torch.equal(a[k], a_before[k]) for k in a)
    with pytest.raises(ValueError, match=r"interpolate\(\): alpha=1.5 is not a number in \[0, 1\]"):
        interpolate(a, b, 1.5)


def test_barrier_of_a_hand_computed_curve() -> None:
    # One weight w, A: w = -1, B: w = +1; 5 points visit w = -1, -0.5, 0, 0.5, 1 (all exact).
    model = nn.Linear(1, 1, bias=False)
    a, b = {"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[1.0]])}
    bump = instability(model, a, b, lambda m: 1.0 - float(m.weight.detach()) ** 2, points=5)
    assert bump.values == (0.0, 0.75, 1.0, 0.75, 0.0)
    assert bump.barrier == 1.0 and bump.peak_alpha == 0.5 and bump.endpoint_mean == 0.0
    # A monotone path: the maximum is an endpoint, the barrier half the endpoints' gap.
    ramp = instability(model, a, b, lambda m: float(m.weight.detach()) + 2.0, points=5)
    assert ramp.values == (1.0, 1.5, 2.0, 2.5, 3.0)
    assert ramp.barrier == 1.0 and ramp.endpoint_mean == 2.0
    # A valley: lower in the middle than at the ends; the barrier is zero (never negative).
    valley = instability(model, a, b, lambda m: float(m.weight.detach()) ** 2, points=5)
    assert valley.barrier == 0.0
    assert isinstance(valley, InstabilityResult)


def test_evaluate_may_return_a_zero_dim_tensor() -> None:
    model = nn.Linear(1, 1, bias=False)
    a, b = {"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[1.0]])}
    result = instability(model, a, b, lambda m: m.weight.detach().abs().sum(), points=3)
    assert result.values == (1.0, 0.0, 1.0)


@pytest.mark.parametrize("backend", ["prune", "baked", "baked-bits"])
def test_masks_hold_along_the_path(backend: str) -> None:
    model = mlp()
    ticket = LotteryTicket(model, sparsity=0.5, backend=backend)
    ticket.prune_()
    masks = ticket.masks
    a, b = random_weights(model, 1), random_weights(model, 2)  # nonzero everywhere
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(m: nn.Module) -> float:
        seen.append({fqn: ticket.backend.weight(t).clone() for fqn, t in zip(ticket.target_fqns, ticket.targets)})
        return float(m(torch.ones(1, 6)).detach().sum())

    extra = {} if backend == "prune" else {"masks": masks}  # baked masks live outside the model
    instability(model, a, b, evaluate, points=4, **extra)
    alphas = (0.0, 1 / 3, 2 / 3, 1.0)
    for alpha, weights in zip(alphas, seen):
        for fqn, w in weights.items():
            assert int(torch.count_nonzero(w[~masks[fqn]])) == 0, (backend, alpha, fqn)
            expected = interpolate({fqn: a[fqn]}, {fqn: b[fqn]}, alpha)[fqn]
            assert torch.equal(w[masks[fqn]], expected[masks[fqn]]), (backend, alpha, fqn)


def test_baked_mask_without_masks_is_refused_not_regrown() -> None:
    model = mlp()
    ticket = LotteryTicket(model, sparsity=0.5, backend="baked")
    ticket.prune_()
    before = snapshot(model)
    a, b = random_weights(model, 1), random_weights(model, 2)
    with pytest.raises(ValueError, match=r"instability\(\): the model's '0.weight' is zero at \d+ entries where weights_a"):
        instability(model, a, b, lambda m: 0.0)
    assert_same_state(before, model)
    # two copies trained under the model's own baked mask (zeros where it is zero) need no masks=
    masked = [{k: v * ticket.masks[k] if k in ticket.masks else v for k, v in w.items()} for w in (a, b)]
    assert instability(model, masked[0], masked[1], lambda m: 0.0, points=2).barrier == 0.0


def test_integer_buffers_are_not_interpolated() -> None:
    model = bn_net()
    model[1].num_batches_tracked.fill_(7)
    a, b = random_weights(model, 1), random_weights(model, 2)
    a["1.num_batches_tracked"], b["1.num_batches_tracked"] = torch.tensor(3), torch.tensor(11)
    a["1.running_var"], b["1.running_var"] = a["1.running_var"].abs(), b["1.running_var"].abs()
    seen: list = []
    instability(model, a, b, recorder(model, seen), points=3)
    assert [int(s["1.num_batches_tracked"]) for s in seen] == [7, 7, 7]
    assert torch.equal(seen[1]["1.running_mean"], 0.5 * a["1.running_mean"] + 0.5 * b["1.running_mean"])
    assert int(model[1].num_batches_tracked) == 7


def test_model_restored_bitwise_also_when_evaluate_raises() -> None:
    model = bn_net()
    LotteryTicket(model, sparsity=0.4).prune_()  # prune backend: *_orig, *_mask
    model.train()
    model[3].eval()  # a mixed mode must come back as it was
    before = snapshot(model)
    weight_before = model[0].weight.detach().clone()
    a, b = random_weights(model, 1), random_weights(model, 2)
    a["1.running_var"], b["1.running_var"] = a["1.running_var"].abs(), b["1.running_var"].abs()

    def evaluate(m: nn.Module) -> float:
        m.eval()
        return float(m(torch.ones(2, 4)).detach().sum())

    instability(model, a, b, evaluate, points=4)
    assert_same_state(before, model)
    assert torch.equal(model[0].weight, weight_before)  # prune's computed weight refreshed too
    assert model.training and model[1].training and not model[3].training

    calls = []

    def failing(m: nn.Module) -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("evaluation failed")
        return 0.0

    with pytest.raises(RuntimeError, match="evaluation failed"):
        instability(model, a, b, failing, points=4)
    assert_same_state(before, model)


def test_state_dict_form_with_prune_keys_is_accepted() -> None:
    model = mlp()
    ticket = LotteryTicket(model, sparsity=0.5)
    ticket.prune_()
    a = prune_form(model)  # '0.weight_orig', '0.weight_mask', ...
    b = {k: (v + 1.0 if k.endswith("_orig") else v.clone()) for k, v in a.items()}
    seen: list = []
    instability(model, a, b, recorder(model, seen), points=3)
    orig_a, orig_b = a["0.weight_orig"], b["0.weight_orig"]
    assert torch.equal(seen[1]["0.weight"], (0.5 * orig_a + 0.5 * orig_b) * ticket.masks["0.weight"])


def test_bn_loader_re_estimates_running_statistics_at_each_point() -> None:
    model = bn_net()
    a, b = random_weights(model, 1), random_weights(model, 2)
    for w in (a, b):
        del w["1.running_mean"], w["1.running_var"]  # allowed with bn_loader
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(16, 4, generator=g) for _ in range(3)]
    means = []

    def evaluate(m: nn.Module) -> float:
        assert not m.training
        means.append(m[1].running_mean.clone())
        return 0.0

    model.eval()
    instability(model, a, b, evaluate, points=3, bn_loader=[(x, None) for x in batches])
    x = torch.cat(batches)
    for alpha, mean in zip((0.0, 0.5, 1.0), means):
        w = interpolate({"w": a["0.weight"], "b": a["0.bias"]}, {"w": b["0.weight"], "b": b["0.bias"]}, alpha)
        expected = (x @ w["w"].T + w["b"]).mean(0)
        assert torch.allclose(mean, expected, atol=1e-5), alpha
    assert not model.training and model[1].momentum == 0.1


def test_bn_loader_keeps_dropout_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.9), nn.BatchNorm1d(5))
    a, b = random_weights(model, 1), random_weights(model, 1)
    batch = torch.randn(32, 4)
    means = []
    instability(model, a, b, lambda m: means.append(m[2].running_mean.clone()) or 0.0, points=2, bn_loader=[batch])
    expected = (batch @ a["0.weight"].T + a["0.bias"]).mean(0)
    assert torch.allclose(means[0], expected, atol=1e-5)  # no dropout in the statistics


# ----------------------------------------------------------------------------- validation


def test_validation_errors_leave_the_model_untouched() -> None:
    model = bn_net()
    before = snapshot(model)
    a, b = random_weights(model, 1), random_weights(model, 2)
    with pytest.raises(ValueError, match=r"instability\(\): points=1 must be an int >= 2"):
        instability(model, a, b, lambda m: 0.0, points=1)
    with pytest.raises(ValueError, match=r"points=True"):
        instability(model, a, b, lambda m: 0.0, points=True)
    with pytest.raises(ValueError, match=r"weights_a has keys the model does not have: \['extra'\]"):
        instability(model, {**a, "extra": torch.zeros(1)}, b, lambda m: 0.0)
    short = {k: v for k, v in b.items() if k != "3.bias"}
    with pytest.raises(ValueError, match=r"different keys: \['3.bias'\]"):
        instability(model, a, short, lambda m: 0.0)
    with pytest.raises(ValueError, match=r"lack \['3.bias'\]"):
        instability(model, {k: v for k, v in a.items() if k != "3.bias"}, short, lambda m: 0.0)
    with pytest.raises(ValueError, match=r"weights_b\['0.weight'\] has shape \(5, 3\), the model's has \(5, 4\)"):
        instability(model, a, {**b, "0.weight": torch.zeros(5, 3)}, lambda m: 0.0)
    with pytest.raises(ValueError, match=r"returned nan at alpha=0.0"):
        instability(model, a, b, lambda m: math.nan)
    with pytest.raises(TypeError, match=r"evaluate returned str"):
        instability(model, a, b, lambda m: "low")
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        instability(mlp(), random_weights(mlp(), 1), random_weights(mlp(), 2), lambda m: 0.0, bn_loader=[torch.ones(2, 6)])
    with pytest.raises(ValueError, match="bn_loader yielded no batches"):
        instability(model, a, b, lambda m: 0.0, bn_loader=[])
    assert_same_state(before, model)


def test_different_masks_are_refused() -> None:
    model = mlp()
    ticket = LotteryTicket(model, sparsity=0.5)
    ticket.prune_()
    a = prune_form(model)
    b = {k: v.clone() for k, v in a.items()}
    b["0.weight_mask"] = 1 - b["0.weight_mask"]
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"hold different masks for '0.weight' \(48 entries differ\)"):
        instability(model, a, b, lambda m: 0.0)
    other = {k: ~m for k, m in ticket.masks.items()}
    with pytest.raises(ValueError, match=r"masks and the model hold different masks for '0.weight'"):
        instability(model, a, a, lambda m: 0.0, masks=other)
    with pytest.raises(TypeError, match=r"masks\['0.weight'\] is torch.float32; pass bool tensors"):
        instability(model, a, a, lambda m: 0.0, masks={"0.weight": torch.ones(8, 6)})
    assert_same_state(before, model)


# ----------------------------------------------------------------------------- spawn_copies


def train_fn_factory(log: list) -> callable:
    def train(m: nn.Module, seed: int) -> None:
        log.append((seed, {k: v.detach().clone() for k, v in named_state_tensors(m).items()}, torch.rand(1)))
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for _ in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(m(torch.randn(8, 6, generator=g)), torch.randint(0, 3, (8,), generator=g)).backward()
            opt.step()
    return train


def test_spawn_copies_start_from_the_rewind_point_and_leave_the_model_alone() -> None:
    model = mlp()
    start = random_weights(model, 3)
    model(torch.randn(2, 6)).sum().backward()  # the model has gradients
    before = snapshot(model)
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.random.get_rng_state()
    log: list = []
    a, b = spawn_copies(model, start, train_fn_factory(log), seeds=(4, 9))
    assert [s for s, _w, _r in log] == [4, 9]
    for _seed, weights, _r in log:
        assert all(torch.equal(weights[k], start[k]) for k in start)
    assert not torch.equal(a["0.weight"], b["0.weight"])  # different data orders
    assert_same_state(before, model)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert torch.equal(torch.random.get_rng_state(), rng)
    # the global RNG is seeded per copy: the same seed draws the same numbers
    log2: list = []
    a2, _ = spawn_copies(model, start, train_fn_factory(log2), seeds=(4, 5))
    assert torch.equal(log[0][2], log2[0][2]) and all(torch.equal(a[k], a2[k]) for k in a)


@pytest.mark.parametrize("backend", ["prune", "baked"])
def test_spawn_copies_keep_the_ticket_mask(backend: str) -> None:
    model = mlp()
    ticket = LotteryTicket(model, sparsity=0.6, backend=backend)
    with ticket:
        train_fn_factory([])(model, 0)
    extra = {} if backend == "prune" else {"masks": ticket.masks}
    copies = spawn_copies(model, ticket.rewind_weights, train_fn_factory([]), **extra)
    for weights in copies:
        for fqn, mask in ticket.masks.items():
            effective = weights[fqn] * mask if backend == "prune" else weights[fqn]
            assert int(torch.count_nonzero(effective[~mask])) == 0
    result = instability(model, copies[0], copies[1], lambda m: float(m(torch.ones(1, 6)).detach().abs().sum()), points=3, **extra)
    assert result.barrier >= 0.0


def test_spawn_copies_refuses_a_baked_ticket_without_masks() -> None:
    model = mlp()
    ticket = LotteryTicket(model, sparsity=0.6, backend="baked")
    with ticket:
        train_fn_factory([])(model, 0)
    with pytest.raises(ValueError, match=r"spawn_copies\(\): the model's '0.weight' is zero at \d+ entries where rewind_weights"):
        spawn_copies(model, ticket.rewind_weights, train_fn_factory([]))


def test_spawn_copies_restores_the_model_when_training_fails() -> None:
    model = mlp()
    before = snapshot(model)

    def train(m: nn.Module, seed: int) -> None:
        train_fn_factory([])(m, seed)
        if seed == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        spawn_copies(model, random_weights(model, 1), train)
    assert_same_state(before, model)


def test_spawn_copies_validation() -> None:
    model = mlp()
    start = random_weights(model, 1)
    for seeds in [(0, 0), (0,), (0, True), "01"]:
        with pytest.raises(ValueError, match=r"spawn_copies\(\): seeds=.* must be two or more distinct ints"):
            spawn_copies(model, start, train_fn_factory([]), seeds=seeds)
    with pytest.raises(ValueError, match=r"rewind_weights\['2.bias'\] has shape \(4,\)"):
        spawn_copies(model, {**start, "2.bias": torch.zeros(4)}, train_fn_factory([]))
    with pytest.raises(TypeError, match="train_fn=None is not callable"):
        spawn_copies(model, start, None)
