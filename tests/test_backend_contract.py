"""The mask-backend contract: every backend registered in BACKENDS passes these tests.

A new backend is tested by registering its name. The models are small and deterministic: a
Linear MLP (with a 1-D target), Conv + BatchNorm, tied weights and MultiheadAttention (whose
``out_proj`` weight is read without calling ``out_proj``).
"""

from __future__ import annotations

import copy
import doctest
import re

import pytest
import torch
from torch import Tensor, nn

from torch_lottery import backends
from torch_lottery.backends import BACKENDS, MaskBackend, check_backend, effective_state_dict, make_backend
from torch_lottery.targets import Target, find_targets, get_place, named_state_tensors

NAMES = sorted(BACKENDS)


class Tied(nn.Module):
    """Two Linear layers sharing one weight Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


# model kind -> (builder, input of a batch, target patterns (None: the default targets))
MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
            lambda g: torch.randn(4, 6, generator=g), ["0.weight", "0.bias", "2.weight"]),
    "conv-bn": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)),
                lambda g: torch.randn(5, 2, 4, 4, generator=g), None),
    "tied": (Tied, lambda g: torch.randn(4, 5, generator=g), None),
    "mha": (Attention, lambda g: torch.randn(2, 3, 8, generator=g), None),
}

# Every optimizer the library treats as elementwise (backends._ELEMENTWISE_OPTIMIZERS), with the
# options that change its update rule switched on; LBFGS is added where a test wants every kind.
OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    "sgd-nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, dampening=0, weight_decay=1e-2),
    "adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "adamax": lambda ps: torch.optim.Adamax(ps, lr=1e-2, weight_decay=1e-2),
    "nadam": lambda ps: torch.optim.NAdam(ps, lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=1e-2, weight_decay=1e-2),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.05, lr_decay=1e-3, initial_accumulator_value=0.1),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.5, centered=True, weight_decay=1e-2),
    "adadelta": lambda ps: torch.optim.Adadelta(ps, lr=0.5, weight_decay=1e-2),
    "asgd": lambda ps: torch.optim.ASGD(ps, lr=0.05, t0=2, weight_decay=1e-2),
    "rprop": lambda ps: torch.optim.Rprop(ps, lr=1e-2),
}
ALL_OPTIMIZERS = {**OPTIMIZERS, "lbfgs": lambda ps: torch.optim.LBFGS(ps, lr=0.1, max_iter=3)}


class Setup:
    """A model of one kind, its targets, a backend of one name and an unpruned copy of the model."""

    def __init__(self, backend: str, kind: str, seed: int = 0) -> None:
        build, self._input, patterns = MODELS[kind]
        torch.manual_seed(seed)
        self.model = build()
        self.targets: list[Target] = find_targets(self.model, patterns)
        self.dense = copy.deepcopy(self.model)  # unpruned, same values
        self.backend = make_backend(backend, self.model)
        self.raw = {t.fqn: self.backend.parameter(t).detach().clone() for t in self.targets}
        self.plain_keys = list(self.model.state_dict())

    def masks(self, seed: int = 1) -> dict[str, Tensor]:
        """Deterministic random masks, each with at least one pruned and one kept entry."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for t in self.targets:
            mask = torch.rand(t.shape, generator=g) > 0.5
            mask.view(-1)[:2] = torch.tensor([False, True])
            out[t.fqn] = mask
        return out

    def apply_(self, masks: dict[str, Tensor]) -> None:
        for t in self.targets:
            self.backend.apply_(t, masks[t.fqn])

    def x(self, seed: int = 0) -> Tensor:
        return self._input(torch.Generator().manual_seed(seed))

    def dense_with(self, values: dict[str, Tensor]) -> nn.Module:
        """The unpruned copy holding the model's current non-target tensors and ``values`` at the targets."""
        dense = copy.deepcopy(self.dense)
        live = named_state_tensors(dense)
        with torch.no_grad():
            for key, value in named_state_tensors(self.model).items():
                live[key].copy_(value)
            for fqn, value in values.items():
                live[fqn].copy_(value)
        return dense

    def effective(self) -> dict[str, Tensor]:
        return {t.fqn: self.backend.weight(t) for t in self.targets}

    def assert_forward_matches(self, values: dict[str, Tensor]) -> None:
        """The model's forward equals an unpruned model holding ``values`` at the targets."""
        # with autograd on in both: under no_grad, torch's linear picks its kernel by whether the
        # weight requires grad (prune's recomputed weight does not there), which moves the last bit
        dense = self.dense_with(values)
        assert torch.equal(self.model(self.x(7)), dense(self.x(7)))

    def loss(self, seed: int = 0) -> Tensor:
        return self.model(self.x(seed)).pow(2).mean()


def _param_orders(model: nn.Module) -> dict[str, list[str]]:
    return {name: list(m._parameters) for name, m in model.named_modules()}


def _no_hooks_left(model: nn.Module) -> bool:
    return not any(m._forward_pre_hooks for m in model.modules())


def _grads_reach_pruned_entries(s: Setup, masks: dict[str, Tensor]) -> bool:
    """After backward, does every target's gradient have a nonzero entry where it was pruned?"""
    s.model.zero_grad()
    s.loss(3).backward()
    return all(bool((s.backend.parameter(t).grad[~masks[t.fqn]] != 0).any()) for t in s.targets)


over_models = pytest.mark.parametrize("kind", list(MODELS))


@over_models
@pytest.mark.parametrize("name", NAMES)
def test_apply_masks_the_effective_weight_and_the_forward(name, kind):
    s = Setup(name, kind)
    masks = s.masks()
    assert not any(s.backend.is_masked(t) for t in s.targets)
    assert all(bool(s.backend.mask(t).all()) for t in s.targets)  # all True before any mask
    s.apply_(masks)
    for t in s.targets:
        assert s.backend.is_masked(t)
        mask = s.backend.mask(t)
        assert mask.dtype == torch.bool and torch.equal(mask, masks[t.fqn])
        assert torch.equal(s.backend.weight(t), s.raw[t.fqn] * masks[t.fqn]), t.fqn
    s.assert_forward_matches({fqn: s.raw[fqn] * m for fqn, m in masks.items()})
    s.model.zero_grad()
    s.loss().backward()
    for t in s.targets:  # backward never reaches pruned entries
        grad = s.backend.parameter(t).grad
        assert bool((grad[~masks[t.fqn]] == 0).all()) and bool((grad[masks[t.fqn]] != 0).any()), t.fqn


@over_models
@pytest.mark.parametrize("name", NAMES)
def test_mask_returns_a_copy(name, kind):
    s = Setup(name, kind)
    masks = s.masks()
    s.apply_(masks)
    for t in s.targets:
        s.backend.mask(t).fill_(False)
        assert torch.equal(s.backend.mask(t), masks[t.fqn])


@over_models
@pytest.mark.parametrize("name", NAMES)
def test_unapply_before_commit_restores_raw_values_keys_and_parameter_order(name, kind):
    s = Setup(name, kind)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    orders = _param_orders(s.model)
    params = {t.fqn: s.backend.parameter(t) for t in s.targets}
    masks = s.masks()
    s.apply_(masks)
    for t in s.targets:
        s.backend.unapply_(t)
    assert list(s.model.state_dict()) == s.plain_keys
    for key, value in s.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert _param_orders(s.model) == orders
    for t in s.targets:
        assert not s.backend.is_masked(t)
        for module_name, local in t.places():
            assert get_place(s.model, module_name)._parameters[local] is params[t.fqn]
    assert _no_hooks_left(s.model)
    s.assert_forward_matches(s.raw)
    assert _grads_reach_pruned_entries(s, masks)  # no gradient mask left behind


@over_models
@pytest.mark.parametrize("name", NAMES)
def test_reapplying_the_old_mask_before_commit_rolls_back(name, kind):
    s = Setup(name, kind)
    old = s.masks(1)
    s.apply_(old)
    s.backend.commit_()
    opt = torch.optim.SGD(s.model.parameters(), lr=0.1)
    opt.zero_grad()
    s.loss().backward()
    opt.step()
    keys = list(s.model.state_dict())
    params = {t.fqn: s.backend.parameter(t).detach().clone() for t in s.targets}
    weights = s.effective()
    new = s.masks(2)
    s.apply_(new)
    for t in s.targets:  # the new mask replaces the old one, it does not intersect it
        assert torch.equal(s.backend.mask(t), new[t.fqn])
        assert bool((s.backend.weight(t)[~new[t.fqn]] == 0).all())
    s.apply_(old)  # the rollback a failed round runs
    assert list(s.model.state_dict()) == keys
    for t in s.targets:
        assert torch.equal(s.backend.mask(t), old[t.fqn])
        assert torch.equal(s.backend.parameter(t).detach(), params[t.fqn]), t.fqn
        assert torch.equal(s.backend.weight(t), weights[t.fqn]), t.fqn
    s.assert_forward_matches(weights)


@over_models
@pytest.mark.parametrize("name", NAMES)
def test_unapply_after_commit_leaves_a_plain_parameter_with_the_survivors(name, kind):
    s = Setup(name, kind)
    masks = s.masks()
    s.apply_(masks)
    s.backend.commit_()
    for t in s.targets:
        s.backend.unapply_(t)
    assert list(s.model.state_dict()) == s.plain_keys
    for t in s.targets:
        assert not s.backend.is_masked(t)
        p, raw, kept = s.backend.parameter(t).detach(), s.raw[t.fqn], masks[t.fqn]
        assert torch.equal(p[kept], raw[kept])
        # a backend may have dropped the raw pruned values at commit_(): raw or zero, nothing else
        assert bool(((p[~kept] == raw[~kept]) | (p[~kept] == 0)).all())
    assert _no_hooks_left(s.model)
    assert _grads_reach_pruned_entries(s, masks)


@over_models
@pytest.mark.parametrize("name", NAMES)
def test_unapply_and_remove_do_nothing_on_an_unmasked_target(name, kind):
    s = Setup(name, kind)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    for t in s.targets:
        s.backend.unapply_(t)
        s.backend.remove_(t)
        s.backend.refresh_(t)
    assert list(s.model.state_dict()) == s.plain_keys
    assert all(torch.equal(v, before[k]) for k, v in s.model.state_dict().items())
    assert _no_hooks_left(s.model)


@over_models
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_load_writes_the_value_and_the_mask_applies(name, kind, dtype):
    s = Setup(name, kind)
    masks = s.masks()
    s.apply_(masks)
    s.backend.commit_()
    g = torch.Generator().manual_seed(5)
    values = {t.fqn: torch.randn(t.shape, generator=g) for t in s.targets}
    params = {t.fqn: s.backend.parameter(t) for t in s.targets}
    for t in s.targets:
        s.backend.load_(t, values[t.fqn].to(dtype))
    for t in s.targets:
        assert s.backend.parameter(t) is params[t.fqn]
        assert torch.equal(s.backend.mask(t), masks[t.fqn])
        assert torch.equal(s.backend.weight(t), values[t.fqn] * masks[t.fqn]), t.fqn
    s.assert_forward_matches({fqn: v * masks[fqn] for fqn, v in values.items()})


@over_models
@pytest.mark.parametrize("name", NAMES)
def test_parameter_identity_is_kept_through_apply_load_refresh_and_remove(name, kind):
    s = Setup(name, kind)
    ids = sorted(id(p) for p in s.model.parameters())
    params = {t.fqn: s.backend.parameter(t) for t in s.targets}
    opt = torch.optim.SGD(s.model.parameters(), lr=0.1)  # built before any mask

    def check() -> None:
        assert sorted(id(p) for p in s.model.parameters()) == ids  # the same objects (prune reorders them)
        for t in s.targets:
            assert s.backend.parameter(t) is params[t.fqn]
            assert isinstance(params[t.fqn], nn.Parameter)

    masks = s.masks()
    s.apply_(masks)
    check()
    s.backend.commit_()
    for t in s.targets:
        s.backend.load_(t, s.raw[t.fqn])
        s.backend.refresh_(t)
    check()
    before = {fqn: p.detach().clone() for fqn, p in params.items()}
    opt.zero_grad()
    s.loss().backward()
    opt.step()  # the optimizer built before pruning still trains the masked model
    assert all(not torch.equal(params[fqn].detach()[masks[fqn]], before[fqn][masks[fqn]]) for fqn in params)
    for t in s.targets:
        s.backend.remove_(t)
    check()
    for t in s.targets:
        for module_name, local in t.places():
            assert get_place(s.model, module_name)._parameters[local] is params[t.fqn]


@over_models
@pytest.mark.parametrize("opt_kind", list(ALL_OPTIMIZERS))
@pytest.mark.parametrize("name", NAMES)
def test_pruned_entries_stay_zero_under_every_optimizer(name, kind, opt_kind):
    s = Setup(name, kind)
    masks = s.masks()
    opt = ALL_OPTIMIZERS[opt_kind](s.model.parameters())
    # dense steps first: optimizer state is nonzero everywhere when the masks arrive
    step = 0

    def closure() -> Tensor:
        opt.zero_grad()
        loss = s.loss(step)
        loss.backward()
        return loss

    for step in range(2):
        opt.step(closure)
    s.apply_(masks)
    s.backend.commit_()
    for step in range(2, 6):

        def checked() -> Tensor:
            loss = closure()
            for t in s.targets:
                assert bool((s.backend.parameter(t).grad[~masks[t.fqn]] == 0).all()), t.fqn
            return loss

        opt.step(checked)
        for t in s.targets:
            assert bool((s.backend.weight(t)[~masks[t.fqn]] == 0).all()), (t.fqn, step)
    weights = s.effective()
    assert any(not torch.equal(weights[fqn][masks[fqn]], (s.raw[fqn] * masks[fqn])[masks[fqn]]) for fqn in weights)
    s.assert_forward_matches(weights)  # the forward uses the current effective weights


@over_models
@pytest.mark.parametrize("name", NAMES)
def test_remove_bakes_zeros_and_leaves_a_plain_parameter(name, kind):
    s = Setup(name, kind)
    masks = s.masks()
    s.apply_(masks)
    s.backend.commit_()
    for t in s.targets:
        s.backend.remove_(t)
    assert sorted(s.model.state_dict()) == sorted(s.plain_keys)
    assert _no_hooks_left(s.model)
    for t in s.targets:
        assert not s.backend.is_masked(t)
        assert bool(s.backend.mask(t).all())
        p = s.backend.parameter(t)
        assert type(p) is nn.Parameter
        assert torch.equal(p.detach(), s.raw[t.fqn] * masks[t.fqn]), t.fqn
        assert torch.equal(s.backend.weight(t), p.detach())
    s.assert_forward_matches({fqn: s.raw[fqn] * m for fqn, m in masks.items()})
    assert _grads_reach_pruned_entries(s, masks)  # permanent: nothing masks the training any more


@over_models
@pytest.mark.parametrize("name", NAMES)
def test_state_keys_name_the_state_dict_and_it_round_trips(name, kind):
    s = Setup(name, kind)
    places = {f"{m}.{n}" if m else n for t in s.targets for m, n in t.places()}
    for t in s.targets:
        assert sorted(s.backend.state_keys(t)) == sorted(f"{m}.{n}" if m else n for m, n in t.places())
    masks = s.masks()
    s.apply_(masks)
    declared = [k for t in s.targets for k in s.backend.state_keys(t)]
    assert len(declared) == len(set(declared))
    assert set(s.model.state_dict()) == (set(s.plain_keys) - places) | set(declared)
    # a model with the same masks installed loads the state_dict and computes the same thing
    other = Setup(name, kind, seed=1)
    other.apply_(masks)
    missing, unexpected = other.model.load_state_dict(s.model.state_dict())
    assert not missing and not unexpected
    for t, u in zip(s.targets, other.targets):
        assert torch.equal(other.backend.weight(u), s.backend.weight(t))
        assert torch.equal(other.backend.mask(u), masks[t.fqn])
    assert torch.equal(other.model(s.x(7)), s.model(s.x(7)))


@over_models
@pytest.mark.parametrize("name", NAMES)
def test_effective_state_dict_is_the_hand_masked_dense_state(name, kind):
    s = Setup(name, kind)
    masks = s.masks()
    s.apply_(masks)
    before = {k: (v.clone(), v._version) for k, v in s.model.state_dict().items()}
    got = effective_state_dict(s.model)
    want = s.dense_with({fqn: s.raw[fqn] * m for fqn, m in masks.items()}).state_dict()
    assert set(got) == set(want) == set(s.plain_keys)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
        assert not got[key].requires_grad
    for t in s.targets:  # a tied tensor is one object under each of its names
        objects = {id(got[f"{m}.{n}" if m else n]) for m, n in t.places()}
        assert len(objects) == 1
    for key, value in s.model.state_dict().items():  # the model is not modified
        assert torch.equal(value, before[key][0]) and value._version == before[key][1], key


# -- the registry, the base class and the optimizer table (not per model) -----------------------


def test_the_optimizer_table_covers_every_elementwise_optimizer():
    made = {type(f([nn.Parameter(torch.zeros(2))])) for f in OPTIMIZERS.values()}
    assert made == set(backends._ELEMENTWISE_OPTIMIZERS)


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_backend_is_a_mask_backend_under_its_name(name):
    backend = make_backend(name, nn.Linear(2, 2))
    assert isinstance(backend, MaskBackend) and backend.name == name
    assert check_backend(name) == name


def test_mask_backend_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        MaskBackend(nn.Linear(2, 2))

    class Partial(MaskBackend):
        def is_masked(self, target):
            return False

    with pytest.raises(TypeError, match="apply_"):
        Partial(nn.Linear(2, 2))


@pytest.mark.parametrize("bad", ["bits", "", "PRUNE", None, 3, ["prune"]])
def test_check_backend_names_the_function_the_value_and_the_choices(bad):
    choices = re.escape(str(sorted(BACKENDS)))
    with pytest.raises(ValueError, match=rf"^run_experiment\(\): backend={re.escape(repr(bad))} is not a mask backend; choose one of {choices}$"):
        check_backend(bad, fn="run_experiment")
    with pytest.raises(ValueError, match=rf"^LotteryTicket\(\): backend={re.escape(repr(bad))} is not a mask backend; choose one of {choices}$"):
        make_backend(bad, nn.Linear(2, 2))


def test_doctests():
    assert doctest.testmod(backends).failed == 0
