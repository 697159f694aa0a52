"""LotteryTicket(granularity="channel"): rounds, exact channel counts, rewinding, controls, refill, resume, compact()."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning")

from torch_lottery import BACKENDS, LotteryTicket  # noqa: E402


def _lenet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10))


X = torch.randn(8, 64)
Y = torch.randint(0, 10, (8,))


def _train(model, steps=3, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        opt.step()


def _kept(ticket):
    plan = ticket.channel_plan
    return plan.kept_counts(plan.keep_from_masks(ticket.masks))


def test_layer_scope_prunes_exact_neuron_counts_and_rewinds_bitwise():
    model = _lenet()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = LotteryTicket(model, sparsity=0.5, rounds=2, scope="layer", granularity="channel", example_inputs=X[:1])
    assert ticket.target_fqns == ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight"]
    previous = None
    for expected in ({"1": 21, "3": 14}, {"1": 15, "3": 10}):  # 30 -> 21 -> 15, 20 -> 14 -> 10
        with ticket:
            _train(model)
        assert _kept(ticket) == expected
        keep = ticket.channel_plan.keep_from_masks(ticket.masks)
        if previous is not None:
            assert all(bool((keep[g] <= previous[g]).all()) for g in keep)  # monotone
        previous = keep
        masks = ticket.masks
        for fqn, t in ticket.live_tensors().items():  # rewound to theta_0 exactly, masks applied
            effective = t.detach() * masks[fqn] if fqn in masks else t.detach()
            want = theta0[fqn] * masks[fqn] if fqn in masks else theta0[fqn]
            assert torch.equal(effective, want), fqn
    # whole neurons: fc1 rows and bias, fc2 columns go together
    m1, b1, m3 = ticket.masks["1.weight"], ticket.masks["1.bias"], ticket.masks["3.weight"]
    assert torch.equal(m1.all(dim=1), b1) and torch.equal(m1.any(dim=1), b1) and torch.equal(m3.any(dim=0), b1)


def test_global_scope_counts_channels_of_all_groups_together():
    model = _lenet()
    ticket = LotteryTicket(model, sparsity=0.6, granularity="channel", example_inputs=X[:1])
    with ticket:
        _train(model)
    kept = _kept(ticket)
    assert sum(kept.values()) == 50 - 30 and min(kept.values()) >= 1
    assert ticket.channel_plan.channel_sparsity(ticket.channel_plan.keep_from_masks(ticket.masks)) == pytest.approx(0.6)


def test_layer_overrides_are_keyed_by_group_name():
    model = _lenet()
    ticket = LotteryTicket(model, rate=0.5, granularity="channel", example_inputs=X[:1], layer_rates={"3": 0.25})
    with ticket:
        pass
    assert _kept(ticket)["3"] == 15
    with pytest.raises(ValueError, match=r"layer_rates key '3.weight' matches no target; targets are \['1', '3'\]"):
        LotteryTicket(_lenet(), rate=0.5, granularity="channel", example_inputs=X[:1], layer_rates={"3.weight": 0.1})


def test_compact_equals_the_masked_model_from_current_and_rewind_weights():
    model = _lenet()
    ticket = LotteryTicket(model, sparsity=0.5, scope="layer", granularity="channel", example_inputs=X[:1])
    with ticket:
        _train(model)
    small = ticket.compact()
    assert [small[i].weight.shape for i in (1, 3, 5)] == [torch.Size([15, 64]), torch.Size([10, 15]), torch.Size([10, 10])]
    torch.testing.assert_close(small(X), model(X))
    again = ticket.compact(weights="rewind")  # after the rewind they are the same weights
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), again.state_dict().values()))
    # a new optimizer is needed: the compact model's Parameters are new objects
    assert not {id(p) for p in small.parameters()} & {id(p) for p in model.parameters()}
    trained = {k: v.detach() + 1.0 for k, v in ticket.live_tensors().items()}
    moved = ticket.compact(weights=trained)
    keep = ticket.channel_plan.keep_from_masks(ticket.masks)
    assert torch.equal(moved[1].weight, trained["1.weight"][keep["1"]])
    with pytest.raises(ValueError, match="weights='best' is not 'current', 'rewind' or a dict"):
        ticket.compact(weights="best")


def test_late_rewinding_to_step_k_with_channels():
    model = _lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ticket = LotteryTicket(model, sparsity=0.5, scope="layer", rewind=2, optimizer=opt, granularity="channel",
                           example_inputs=X[:1])
    with ticket:
        for step in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), Y).backward()
            opt.step()
            if step == 1:
                theta2 = {k: v.detach().clone() for k, v in ticket.live_tensors().items()}
    masks = ticket.masks
    for fqn, t in ticket.live_tensors().items():
        want = theta2[fqn] * masks[fqn] if fqn in masks else theta2[fqn]
        got = t.detach() * masks[fqn] if fqn in masks else t.detach()
        assert torch.equal(got, want), fqn
    assert _kept(ticket) == {"1": 15, "3": 10}


def test_random_channel_control_keeps_each_groups_count():
    model = _lenet()
    ticket = LotteryTicket(model, sparsity=0.5, scope="layer", granularity="channel", example_inputs=X[:1])
    with ticket:
        _train(model)
    plan = ticket.channel_plan
    keep = plan.keep_from_masks(ticket.masks)
    control = LotteryTicket(_lenet(), sparsity=0.5, scope="layer", granularity="channel", example_inputs=X[:1])
    control.set_masks_(plan.masks(plan.random_like(keep, seed=3)))
    assert _kept(control) == _kept(ticket)
    assert any(not torch.equal(a, b) for a, b in zip(control.masks.values(), ticket.masks.values()))


def test_reinit_rewind_draws_fresh_values_for_the_channel_tensors():
    model = _lenet()
    theta0 = copy.deepcopy(model.state_dict())
    ticket = LotteryTicket(model, sparsity=0.5, rewind="reinit", granularity="channel", example_inputs=X[:1])
    with ticket:
        _train(model)
    w = ticket.live_tensors()["1.weight"].detach()
    assert not torch.equal(w, theta0["1.weight"]) and _kept(ticket)["1"] < 30


def test_refill_turns_an_unstructured_ticket_into_channels():
    model = _lenet()
    weights = LotteryTicket(copy.deepcopy(model), sparsity=0.8)
    with weights:
        pass
    ticket = LotteryTicket(model, sparsity=0.5, granularity="channel", example_inputs=X[:1])
    plan = ticket.channel_plan
    keep = plan.refill(weights.masks)
    ticket.set_masks_(plan.masks(keep))
    dens1 = float(weights.masks["1.weight"].float().mean())
    assert _kept(ticket)["1"] == max(1, round(30 * dens1))
    rows = weights.masks["1.weight"].sum(dim=1)
    assert rows[keep["1"]].min() >= rows[~keep["1"]].max()  # the fullest rows were kept


def test_resume_from_state_dict_continues_with_the_same_channels():
    model = _lenet()
    ticket = LotteryTicket(model, rate=0.3, rounds=3, scope="layer", granularity="channel", example_inputs=X[:1])
    with ticket:
        _train(model)
    state = ticket.state_dict()
    fresh = _lenet(seed=9)
    again = LotteryTicket.from_config(fresh, state["config"], example_inputs=X[:1])
    again.load_state_dict(state, rewind=True)
    assert _kept(again) == _kept(ticket) and again.round == 1
    for a, b in zip(again.live_tensors().values(), ticket.live_tensors().values()):
        assert torch.equal(a.detach(), b.detach())
    with again:
        _train(fresh)
    assert _kept(again) == {"1": 15, "3": 10}  # 21 -> 15 (round(0.3*21)=6), 14 -> 10


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_masks_channels_and_compacts(backend):
    model = _lenet()
    ticket = LotteryTicket(model, rate=0.3, rounds=2, scope="layer", granularity="channel", example_inputs=X[:1], backend=backend)
    with ticket:
        _train(model)
    with ticket:
        _train(model)
        for t in ticket.targets:  # the pruned channels stay zero while training
            assert not bool(ticket.backend.weight(t)[~ticket.masks[t.fqn]].any()), t.fqn
    torch.testing.assert_close(ticket.compact()(X), model(X))
    assert _kept(ticket) == {"1": 15, "3": 10}  # 30 -> 21 -> 15, 20 -> 14 -> 10


def test_the_constructor_leaves_the_model_as_it_was():
    model = _lenet().train()
    params = [id(p) for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    LotteryTicket(model, rate=0.2, granularity="channel", example_inputs=X[:1])
    assert model.training and [id(p) for p in model.parameters()] == params
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_structured_arguments_are_refused():
    with pytest.raises(ValueError, match="granularity='channel' needs example_inputs="):
        LotteryTicket(_lenet(), rate=0.2, granularity="channel")
    with pytest.raises(ValueError, match=r"criterion='random' scores single weights; .* importance="):
        LotteryTicket(_lenet(), rate=0.2, granularity="channel", example_inputs=X[:1], criterion="random")
    with pytest.raises(ValueError, match=r"targets=\['1.weight'\] is not used with granularity='channel'"):
        LotteryTicket(_lenet(), rate=0.2, granularity="channel", example_inputs=X[:1], targets=["1.weight"])
    with pytest.raises(ValueError, match="example_inputs is only used with granularity='channel'"):
        LotteryTicket(_lenet(), rate=0.2, example_inputs=X[:1])
    with pytest.raises(ValueError, match=r"granularity='neuron' is not one of \['weight', 'channel'\]"):
        LotteryTicket(_lenet(), rate=0.2, granularity="neuron")
    ticket = LotteryTicket(_lenet(), rate=0.2)
    with pytest.raises(RuntimeError, match="granularity='weight'.* removes no channel"):
        ticket.compact()


def test_exclude_keeps_every_group_touching_a_layer_whole():
    model = _lenet()
    ticket = LotteryTicket(model, rate=0.5, granularity="channel", example_inputs=X[:1], exclude=["5.*"])
    assert ticket.channel_plan.group_names == ["1"]  # group "3" feeds layer 5's columns
    assert ticket.target_fqns == ["1.weight", "1.bias", "3.weight"]
    with ticket:
        pass
    assert _kept(ticket) == {"1": 15}
    with pytest.raises(ValueError, match="no prunable channel group"):
        LotteryTicket(_lenet(), rate=0.5, granularity="channel", example_inputs=X[:1], exclude=["3.*"])


# ---------------------------------------------------------------------- real torchvision models
torchvision = pytest.importorskip("torchvision")

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "densenet_small": lambda: torchvision.models.DenseNet(
        growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10
    ),
    "vit_tiny": lambda: torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_structured_round_rewinds_bitwise_and_compacts(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = LotteryTicket(model, rate=0.5, scope="layer", granularity="channel", example_inputs=x[:1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with ticket:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    plan = ticket.channel_plan
    kept = plan.kept_counts(plan.keep_from_masks(ticket.masks))
    assert kept == {g.name: g.size - round(0.5 * g.size) for g in plan.prunable_groups}
    masks = ticket.masks
    for fqn, t in ticket.live_tensors().items():
        want = theta0[fqn] * masks[fqn] if fqn in masks else theta0[fqn]
        got = t.detach() * masks[fqn] if fqn in masks else t.detach()
        assert torch.equal(got, want), fqn
    small = ticket.compact()
    model.eval()
    small.eval()
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(small(x), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------- ticket files
def test_ticket_file_round_trip_rebuilds_the_compact_model_without_example_inputs(tmp_path):
    from torch_lottery import load_ticket, read_ticket_info

    model = _lenet()
    ticket = LotteryTicket(model, rate=0.3, rounds=3, scope="layer", granularity="channel", example_inputs=X[:1])
    with ticket:
        _train(model)
    path = tmp_path / "structured.safetensors"
    ticket.save(path)
    info = read_ticket_info(path)
    assert info["config"]["granularity"] == "channel"
    fresh = _lenet(seed=4)
    loaded = load_ticket(path, fresh)  # no example_inputs: the plan comes from the file
    assert loaded.channel_plan.groups == ticket.channel_plan.groups
    assert loaded.channel_plan.input_spec == {"kind": "tensor", "keys": None, "tensors": [{"shape": [1, 64], "dtype": "float32"}]}
    assert _kept(loaded) == _kept(ticket) == {"1": 21, "3": 14}
    small, original = loaded.compact(), ticket.compact()
    for (k, a), (_, b) in zip(small.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), k
    torch.testing.assert_close(small(X), fresh(X))
    with loaded:  # and the loaded ticket keeps pruning channels
        _train(fresh)
    assert _kept(loaded) == {"1": 15, "3": 10}


def test_a_structured_file_without_its_channel_record_is_refused(tmp_path):
    from torch_lottery import load_ticket
    from torch_lottery.ticket_file import read_ticket_tensors, write_ticket

    model = _lenet()
    ticket = LotteryTicket(model, rate=0.3, granularity="channel", example_inputs=X[:1])
    with ticket:
        pass
    path = tmp_path / "no-channels.safetensors"
    write_ticket(path, ticket.state_dict(), model=model)  # written without channels=
    assert "channels" not in read_ticket_tensors(path).metadata
    before = {k: v.clone() for k, v in _lenet(seed=2).state_dict().items()}
    fresh = _lenet(seed=2)
    with pytest.raises(ValueError, match="structured ticket without its 'channels' entry"):
        load_ticket(path, fresh)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_ticket_file_round_trip_through_compact(name, tmp_path):
    from torch_lottery import load_ticket

    torch.manual_seed(0)
    model = MODELS[name]()
    x = torch.randn(2, 3, 32, 32)
    ticket = LotteryTicket(model, rate=0.5, scope="layer", granularity="channel", example_inputs=x[:1])
    with ticket:
        pass
    path = tmp_path / f"{name}.safetensors"
    ticket.save(path)
    fresh = MODELS[name]()
    loaded = load_ticket(path, fresh)
    small = loaded.compact()
    fresh.eval()
    small.eval()
    model.eval()
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(fresh(x), want)
        torch.testing.assert_close(small(x), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
