"""SupermaskTicket: exact counts, the straight-through gradient, frozen weights, rollback, files, weight inits."""

from __future__ import annotations

import json
import math

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from conftest import lenet, train_steps
from torch_lottery import BACKENDS, SupermaskTicket, load_supermask, load_ticket, random_masks_like, save_supermask
from torch_lottery.selection import prune_lowest
from torch_lottery.supermask import supermask_weights
from torch_lottery.ticket_file import _checksum, read_ticket_info


def snapshot(model):
    """Everything a failed block must leave as it was."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "keys": list(model.state_dict()),
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "types": [type(m) for m in model.modules()],
        "params": [id(p) for p in model.parameters()],
    }


def assert_same(model, before):
    after = snapshot(model)
    assert after["keys"] == before["keys"]
    assert after["grad"] == before["grad"]
    assert after["types"] == before["types"]
    assert after["params"] == before["params"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def train_scores(ticket, model, steps=3, lr=0.1):
    opt = torch.optim.SGD(ticket.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    train_steps(model, opt, steps)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.99])
def test_layer_scope_keeps_round_of_the_kept_fraction_in_every_tensor(sparsity):
    model = lenet()
    ticket = SupermaskTicket(model, sparsity=sparsity, scope="layer")
    with ticket:
        train_scores(ticket, model)
        inside = ticket.compute_masks()
    for t in ticket.targets:
        want = round((1 - sparsity) * t.numel)
        assert int(inside[t.fqn].sum()) == want
        assert int(ticket.masks[t.fqn].sum()) == want


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_global_scope_keeps_round_of_the_kept_fraction_of_all_targets_with_prune_lowest_choice(sparsity):
    model = lenet()
    ticket = SupermaskTicket(model, sparsity=sparsity, scope="global", seed=3)
    with ticket:
        train_scores(ticket, model)
        scores = {f: s.detach().abs() for f, s in ticket.scores.items()}
    total = sum(t.numel for t in ticket.targets)
    masks = ticket.masks
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - sparsity) * total)
    ones = {f: torch.ones_like(s, dtype=torch.bool) for f, s in scores.items()}
    want = prune_lowest(scores, ones, total - round((1 - sparsity) * total))
    for f in scores:
        assert torch.equal(masks[f], want[f])
    assert len({round(1 - int(m.sum()) / m.numel(), 2) for m in masks.values()}) > 1  # layers differ


def test_straight_through_gradient_equals_the_hand_computed_one():
    layer = nn.Linear(3, 2, bias=False)
    w = torch.tensor([[1.0, -2.0, 0.5], [4.0, 0.25, -1.0]])
    with torch.no_grad():
        layer.weight.copy_(w)
    ticket = SupermaskTicket(layer, sparsity=0.5)
    (scores,) = list(ticket.parameters())  # what the user's optimizer holds
    s = torch.tensor([[0.3, -0.1, 0.2], [-0.6, 0.05, 0.4]])  # |s| top 3: 0.6, 0.4, 0.3
    with torch.no_grad():
        scores.copy_(s)
    mask = torch.tensor([[True, False, False], [True, False, True]])
    x, c = torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([[2.0, -3.0]])
    with ticket:
        out = layer(x)
        assert torch.equal(out, x @ (w * mask).t())
        (out * c).sum().backward()
        # dL/dW_eff = c^T x; straight through the mask: dL/ds = dL/dW_eff * w * sign(s)
        assert torch.equal(scores.grad, (c.t() @ x) * w * s.sign())
        assert layer.parametrizations.weight.original.grad is None  # the weight is frozen
    assert torch.equal(ticket.masks["weight"], mask)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_weights_unchanged_bitwise_after_training_and_mask_installed_through_the_backend(backend):
    model = lenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = SupermaskTicket(model, sparsity=0.6, backend=backend)
    opt = torch.optim.Adam(list(ticket.parameters()) + list(model.parameters()), lr=0.05, weight_decay=0.1)
    x = torch.randn(16, 64)
    with ticket:
        train_steps(model, opt, 5)
        last_masks = ticket.compute_masks()
        inside = model(x)
    assert ticket.lottery.backend.name == backend
    for t in ticket.lottery.targets:
        assert torch.equal(ticket.masks[t.fqn], last_masks[t.fqn])
        raw = ticket.lottery.backend.parameter(t).detach()
        kept = last_masks[t.fqn]
        assert torch.equal(raw[kept], before[t.fqn][kept])  # survivors bitwise as drawn
        assert torch.equal(ticket.lottery.backend.weight(t), before[t.fqn] * kept)
        assert ticket.lottery.backend.parameter(t).requires_grad
    for name in ("1.bias", "3.bias", "5.bias"):
        assert torch.equal(model.state_dict()[name], before[name])  # freeze="all": biases too
    assert torch.equal(model(x), inside)  # the installed mask is the last forward's mask
    if backend == "prune":
        assert prune.is_pruned(model)
        assert torch.equal(model[1].weight_orig, before["1.weight"])


def test_exit_restores_parameter_order_requires_grad_and_classes():
    model = lenet()
    model[3].bias.requires_grad_(False)
    keys = list(model.state_dict())
    ticket = SupermaskTicket(model, sparsity=0.5, backend="baked")
    with ticket:
        assert all(not p.requires_grad for p in model.parameters())
        assert parametrize.is_parametrized(model[1], "weight")
        train_scores(ticket, model)
    assert list(model.state_dict()) == keys  # baked: plain keys, original order
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["3.bias"]
    assert type(model[1]) is nn.Linear
    with pytest.raises(RuntimeError, match="scores are gone"):
        ticket.parameters()
    with pytest.raises(RuntimeError, match="scores are gone"):
        with ticket:
            pass


@pytest.mark.parametrize("weight_init", [None, "signed_constant"])
def test_an_exception_in_the_block_leaves_the_model_as_before_and_keeps_the_scores(weight_init):
    model = lenet()
    before = snapshot(model)
    ticket = SupermaskTicket(model, sparsity=0.5, weight_init=weight_init)
    with pytest.raises(KeyboardInterrupt):
        with ticket:
            train_scores(ticket, model)
            raise KeyboardInterrupt
    assert_same(model, before)
    assert not ticket.done
    trained = {f: s.detach().clone() for f, s in ticket.scores.items()}
    with ticket:  # the block can run again, from the trained scores
        assert torch.equal(ticket.compute_masks()["1.weight"], ticket.compute_masks()["1.weight"])
        assert all(torch.equal(ticket.scores[f], trained[f]) for f in trained)
    assert ticket.done


def test_nan_scores_raise_inside_the_block_and_leave_the_model_untouched():
    model = lenet()
    before = snapshot(model)
    ticket = SupermaskTicket(model, sparsity=0.5)
    with torch.no_grad():
        ticket.scores["3.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"scores\['3.weight'\] hold 1 NaN"):
        with ticket:
            model(torch.randn(2, 64))
    assert_same(model, before)
    with pytest.raises(ValueError, match="NaN"):
        with ticket:
            pass  # no forward: the mask computed on exit catches it
    assert_same(model, before)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"sparsity": 1.0}, ValueError, r"sparsity=1.0 is outside \[0, 1\)"),
        ({"sparsity": -0.1}, ValueError, r"sparsity=-0.1 is outside"),
        ({"sparsity": float("nan")}, ValueError, r"sparsity=nan is outside"),
        ({"sparsity": "0.5"}, TypeError, r"sparsity='0.5' is not a number"),
        ({"sparsity": 0.5, "scope": "tensor"}, ValueError, r"scope='tensor' is not one of"),
        ({"sparsity": 0.5, "weight_init": "xavier"}, ValueError, r"weight_init='xavier' is not one of"),
        ({"sparsity": 0.5, "backend": "bits"}, ValueError, r"backend='bits' is not a mask backend"),
        ({"sparsity": 0.5, "freeze": "none"}, ValueError, r"freeze='none' is not one of"),
        ({"sparsity": 0.5, "seed": 1.5}, TypeError, r"seed=1.5 must be an int"),
        ({"sparsity": 0.5, "targets": ["*.bias"], "weight_init": "kaiming_normal"}, ValueError, "fewer than 2"),
    ],
)
def test_bad_arguments_are_clear_errors_and_touch_nothing(kwargs, error, match):
    model = lenet()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        SupermaskTicket(model, **kwargs)
    assert_same(model, before)


def test_a_model_without_targets_is_an_error():
    model = nn.Sequential(nn.BatchNorm1d(4), nn.ReLU())
    with pytest.raises(ValueError, match="selects no prunable tensor"):
        SupermaskTicket(model, sparsity=0.5)


def test_a_target_already_pruned_is_refused():
    model = lenet()
    prune.l1_unstructured(model[1], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"'1.weight' is not a plain Parameter"):
        SupermaskTicket(model, sparsity=0.5)


def test_signed_constant_and_kaiming_normal_follow_the_paper_and_the_seed():
    model = lenet()
    targets = SupermaskTicket(model, sparsity=0.5).targets
    like = dict(model.named_parameters())
    sc = supermask_weights(targets, like, weight_init="signed_constant", seed=4)
    kn = supermask_weights(targets, like, weight_init="kaiming_normal", seed=4)
    for t in targets:
        std = math.sqrt(2.0 / t.shape[1])
        assert torch.equal(sc[t.fqn].abs(), torch.full(t.shape, std, dtype=torch.float32))
        assert torch.equal(sc[t.fqn].sign(), torch.where(kn[t.fqn] < 0, -1.0, 1.0))  # the same draw's signs
        assert abs(float(kn[t.fqn].std()) / std - 1) < 0.15
    again = supermask_weights(targets, like, weight_init="kaiming_normal", seed=4)
    other = supermask_weights(targets, like, weight_init="kaiming_normal", seed=5)
    assert all(torch.equal(kn[f], again[f]) for f in kn)
    assert not torch.equal(kn["1.weight"], other["1.weight"])


def test_weight_init_reinitializes_the_targets_on_entry():
    model = lenet()
    ticket = SupermaskTicket(model, sparsity=0.5, weight_init="signed_constant", seed=2)
    want = supermask_weights(ticket.targets, dict(model.named_parameters()), weight_init="signed_constant", seed=2)
    with ticket:
        train_scores(ticket, model)
    for t in ticket.lottery.targets:
        assert torch.equal(ticket.lottery.backend.parameter(t).detach(), want[t.fqn])


@pytest.mark.parametrize("encoding", ["compact", "dense"])
def test_stored_file_round_trip_gives_the_same_masks_weights_and_outputs(tmp_path, encoding):
    model = lenet()
    ticket = SupermaskTicket(model, sparsity=0.5, seed=1)
    with ticket:
        train_scores(ticket, model)
    path = tmp_path / "strong.safetensors"
    save_supermask(ticket, path, encoding=encoding)
    fresh = lenet(seed=9)
    loaded = load_supermask(path, fresh)
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), model(x))
    for f, m in ticket.masks.items():
        assert torch.equal(loaded.masks[f], m)
    assert read_ticket_info(path)["supermask"]


@pytest.mark.parametrize("weight_init", ["kaiming_normal", "signed_constant"])
def test_seed_file_regenerates_the_weights_bitwise(tmp_path, weight_init):
    model = lenet(seed=0)
    ticket = SupermaskTicket(model, sparsity=0.7, weight_init=weight_init, seed=11, scope="global")
    with ticket:
        train_scores(ticket, model)
    seed_path, stored_path = tmp_path / "seed.safetensors", tmp_path / "stored.safetensors"
    save_supermask(ticket, seed_path, weights="seed")
    save_supermask(ticket, stored_path, weights="stored")
    seed_bytes, stored_bytes = read_ticket_info(seed_path)["tensor_bytes"], read_ticket_info(stored_path)["tensor_bytes"]
    assert seed_bytes["rewind"] == 0 < seed_bytes["mask"] == stored_bytes["mask"]
    assert seed_bytes["trained"] == 4 * (30 + 20 + 10)  # the float32 biases only
    assert stored_bytes["trained"] > 4 * seed_bytes["mask"]
    fresh = lenet(seed=5)  # another seed: the biases come from the file, the weights from the seed
    loaded = load_supermask(seed_path, fresh)
    for t in loaded.targets:
        assert torch.equal(loaded.backend.parameter(t), ticket.lottery.backend.parameter(t))
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), model(x))


def test_seed_file_stores_the_biases_and_load_ticket_warns_that_it_lacks_the_weights(tmp_path):
    model = lenet(seed=0)
    ticket = SupermaskTicket(model, sparsity=0.5, weight_init="signed_constant")
    with ticket:
        train_scores(ticket, model)
    path = tmp_path / "seed.safetensors"
    save_supermask(ticket, path, weights="seed")
    other = lenet(seed=1)  # other biases: the file's replace them
    load_supermask(path, other)
    x = torch.randn(4, 64)
    assert torch.equal(other(x), model(x))
    with pytest.warns(UserWarning, match="saved with weights='seed'.*load_supermask"):
        load_ticket(path, lenet(seed=2), weights="trained")


def test_seed_file_with_tampered_seed_is_refused_before_touching_the_model(tmp_path):
    model = lenet(seed=0)
    ticket = SupermaskTicket(model, sparsity=0.5, weight_init="kaiming_normal", seed=3)
    with ticket:
        pass
    path = tmp_path / "seed.safetensors"
    save_supermask(ticket, path, weights="seed")
    fresh = lenet(seed=0)
    before = snapshot(fresh)
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, "pt") as f:
        meta = f.metadata()
    sm = json.loads(meta["supermask"])
    sm["seed"] = 4  # as if another torch drew other numbers from the same seed
    meta["supermask"] = json.dumps(sm, sort_keys=True)
    meta["checksum"] = _checksum(tensors, meta)
    safetensors.torch.save_file(tensors, path, metadata=meta)
    with pytest.raises(ValueError, match="regenerated from seed=4 differ from the saved ones"):
        load_supermask(path, fresh)
    assert_same(fresh, before)


def test_seed_file_needs_a_weight_init():
    model = lenet()
    ticket = SupermaskTicket(model, sparsity=0.5)
    with ticket:
        pass
    with pytest.raises(ValueError, match="weights='seed' needs weight_init"):
        save_supermask(ticket, "never.safetensors", weights="seed")
    with pytest.raises(ValueError, match="weights='all' is not one of"):
        save_supermask(ticket, "never.safetensors", weights="all")
    unfinished = SupermaskTicket(lenet(), sparsity=0.5)
    with pytest.raises(RuntimeError, match="no mask installed yet"):
        save_supermask(unfinished, "never.safetensors")


def test_source_mask_keeps_the_supermask_inside_it_with_counts_of_the_full_tensor():
    model = lenet()
    fqns = SupermaskTicket(model, sparsity=0.5).target_fqns
    full = {f: torch.ones(p.shape, dtype=torch.bool) for f, p in model.named_parameters() if f in fqns}
    source = random_masks_like({f: m & (torch.rand(m.shape) < 0.5) for f, m in full.items()}, seed=0)
    allowed = {f: int(m.sum()) for f, m in source.items()}
    ticket = SupermaskTicket(model, sparsity=0.75, source_mask=source)
    with ticket:
        train_scores(ticket, model, steps=5)
    for t in ticket.targets:
        m = ticket.masks[t.fqn]
        assert not (m & ~source[t.fqn]).any()
        assert int(m.sum()) == round(0.25 * t.numel) <= allowed[t.fqn]


def test_source_mask_errors():
    model = lenet()
    half = torch.zeros(30, 64, dtype=torch.bool)
    half[:, :32] = True
    with pytest.raises(ValueError, match=r"sparsity=0.3 keeps 1344 of 1920 weights of '1.weight', but source_mask allows only 960"):
        SupermaskTicket(model, sparsity=0.3, source_mask={"1.weight": half})
    with pytest.raises(ValueError, match="not targets"):
        SupermaskTicket(model, sparsity=0.6, source_mask={"1.bias": torch.ones(30, dtype=torch.bool)})
    with pytest.raises(TypeError, match="pass bool tensors"):
        SupermaskTicket(model, sparsity=0.6, source_mask={"1.weight": half.float()})
    with pytest.raises(ValueError, match="has shape"):
        SupermaskTicket(model, sparsity=0.6, source_mask={"1.weight": half.t()})
    SupermaskTicket(model, sparsity=0.5, source_mask={"1.weight": half})  # exactly enough room


def test_conv2d_and_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            h = self.conv(x).mean((2, 3))
            return self.b(torch.relu(self.a(h)))

    torch.manual_seed(0)
    model = Tied()
    ticket = SupermaskTicket(model, sparsity=0.5)
    assert ticket.target_fqns == ["conv.weight", "a.weight"]
    opt = torch.optim.SGD(ticket.parameters(), lr=0.5)
    with ticket:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(2, 1, 6, 6)).pow(2).sum().backward()
            opt.step()
        assert model.a.weight is not None and torch.equal(model.a.weight, model.b.weight)
    assert int(ticket.masks["conv.weight"].sum()) == 18
    assert torch.equal(model.a.weight, model.b.weight)
    assert int((model.b.weight != 0).sum()) == 8


@pytest.mark.slow
def test_resnet18_supermask_with_frozen_batchnorm():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ticket = SupermaskTicket(model, sparsity=0.5, weight_init="signed_constant", backend="baked")
    opt = torch.optim.SGD(ticket.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    with ticket:
        for _ in range(1):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert len(ticket.targets) == 21
    for t in ticket.lottery.targets:
        assert int(ticket.masks[t.fqn].sum()) == round(0.5 * t.numel)
    for n, p in model.named_parameters():
        if n not in ticket.target_fqns:
            assert torch.equal(p, params_before[n]), n  # BatchNorm affine and fc bias frozen
    assert model(x).shape == (2, 10)


def test_freeze_targets_leaves_biases_trainable_and_weights_frozen():
    model = lenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = SupermaskTicket(model, sparsity=0.5, freeze="targets")
    opt = torch.optim.SGD(list(ticket.parameters()) + list(model.parameters()), lr=0.1)
    with ticket:
        assert model[1].bias.requires_grad and not model[1].parametrizations.weight.original.requires_grad
        train_steps(model, opt, 2)
    assert not torch.equal(model[1].bias, before["1.bias"])
    assert torch.equal(model[1].weight_orig, before["1.weight"])
