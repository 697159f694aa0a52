"""The round as public methods, attachable optimizers, read-only settings, and the bugs fixed with them."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from conftest import lenet, train_steps
from torch_lottery import LotteryTicket
from torch_lottery.schedule import Group, group_counts, plan_groups, round_count
from torch_lottery.settings import SETTINGS_KEYS, TicketSettings


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_round_methods_equal_the_with_block():
    a, b = lenet(0), lenet(0)
    ta, tb = LotteryTicket(a, rate=0.3), LotteryTicket(b, rate=0.3)
    with ta:
        train_steps(a, torch.optim.SGD(a.parameters(), lr=0.1), 3)
    tb.begin_round_()
    train_steps(b, torch.optim.SGD(b.parameters(), lr=0.1), 3)
    masks = tb.end_round_()
    assert all(torch.equal(masks[k], ta.masks[k]) for k in masks)
    assert all(torch.equal(x, y) for x, y in zip(_state(a).values(), _state(b).values()))
    assert ta.history == tb.history


def test_abort_round_keeps_the_trained_weights_and_prunes_nothing():
    model = lenet(0)
    ticket = LotteryTicket(model, rate=0.3)
    ticket.begin_round_()
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), 2)
    trained = _state(model)
    ticket.abort_round_()
    assert ticket.round == 0 and ticket.sparsity == 0.0 and not prune.is_pruned(model)
    assert all(torch.equal(trained[k], v) for k, v in _state(model).items())
    with pytest.raises(RuntimeError, match=r"end_round_\(\): no round is open"):
        ticket.end_round_()
    with pytest.raises(RuntimeError, match=r"abort_round_\(\): no round is open"):
        ticket.abort_round_()


def test_begin_round_twice_is_refused():
    ticket = LotteryTicket(lenet(0), rate=0.3)
    ticket.begin_round_()
    with pytest.raises(RuntimeError, match="already open"):
        ticket.begin_round_()


def test_constructor_does_not_touch_a_model_pruned_by_hand():
    model = lenet(0)
    prune.l1_unstructured(model[1], "weight", amount=0.5)
    hooks_before = dict(model[1]._forward_pre_hooks)
    before = _state(model)
    ticket = LotteryTicket(model, rate=0.2)
    assert dict(model[1]._forward_pre_hooks) == hooks_before
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    # the hand-made mask is read, and explicitly adopted
    assert int(ticket.masks["1.weight"].sum()) == model[1].weight.numel() // 2
    assert ticket.adopt_masks_() == ["1.weight"]
    assert torch.equal(ticket.masks["1.weight"], model[1].weight_mask.bool())


def test_settings_are_read_only():
    ticket = LotteryTicket(lenet(0), rate=0.2, rounds=3)
    for name in ("rate", "rounds", "scope", "rewind", "restore", "seed", "sparsity_goal", "round", "model", "settings"):
        with pytest.raises(AttributeError):
            setattr(ticket, name, getattr(ticket, name))
    with pytest.raises(dataclasses_frozen_error()):
        ticket.settings.rate = 0.5  # type: ignore[misc]
    ticket.history.append({"round": 99})
    assert ticket.history == []


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_optimizer_attached_late_is_reset_at_each_rewind():
    model = lenet(0)
    ticket = LotteryTicket(model, rate=0.2)
    with ticket:  # theta_0 taken before the optimizer exists, as in Lightning
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        ticket.optimizer = opt
        train_steps(model, opt, 3)
        assert opt.state  # moments accumulated
    # the late optimizer's fresh state is restored on rewind: Adam's, all zeros, written in place
    assert opt.state and all(not v.any() for s in opt.state.values() for v in s.values())
    assert ticket.optimizer is opt


def test_attach_validates():
    model = lenet(0)
    ticket = LotteryTicket(model, rate=0.2)
    with pytest.raises(TypeError, match=r"attach\(\): optimizer='str' is not a torch.optim.Optimizer"):
        ticket.attach(optimizer="adam")  # type: ignore[arg-type]
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="updates none of the model's parameters"):
        ticket.optimizer = other
    with pytest.raises(TypeError, match="has no state_dict"):
        ticket.scheduler = object()
    assert ticket.optimizer is None and ticket.scheduler is None
    late = LotteryTicket(model, rate=0.2, rewind=3)
    late.begin_round_()
    with pytest.raises(RuntimeError, match="counting steps"):
        late.attach(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_zero_element_target_prunes_cleanly():
    class Empty(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.empty(0, 4))

        def forward(self, x):
            return x @ self.w.t()

    model = Empty()
    ticket = LotteryTicket(model, rate=0.5, targets=["w"])
    with ticket:
        pass
    assert ticket.round == 1 and ticket.sparsity == 0.0
    assert ticket.history == [{"round": 1, "sparsity": 0.0, "remaining": 0, "total": 0, "per_tensor": {"w": 0}}]
    assert "total" in ticket.summary_table()


def test_remove_before_any_round_is_an_error_and_keeps_the_ticket_usable():
    model = lenet(0)
    ticket = LotteryTicket(model, rate=0.5)
    with pytest.raises(RuntimeError, match=r"remove_\(\): no target has a mask installed yet"):
        ticket.remove_()
    with ticket:
        pass
    assert ticket.round == 1
    ticket.remove_()
    assert not prune.is_pruned(model)
    with pytest.raises(RuntimeError, match="already made the pruning permanent"):
        ticket.remove_()


def test_set_masks_replace_may_regrow_intersect_never_does():
    model = lenet(0)
    ticket = LotteryTicket(model, rate=0.5)
    with ticket:
        pass
    pruned = ticket.masks
    everything = {k: torch.ones_like(v) for k, v in pruned.items()}
    ticket.set_masks_(everything, mode="intersect")
    assert all(torch.equal(ticket.masks[k], pruned[k]) for k in pruned)
    half = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) < 0.5 for k, v in pruned.items()}
    ticket.set_masks_(half, mode="intersect")
    assert all(torch.equal(ticket.masks[k], pruned[k] & half[k]) for k in pruned)
    ticket.set_masks_(everything, mode="replace")
    assert ticket.sparsity == 0.0
    with pytest.raises(ValueError, match=r"mode='union' is not one of \['replace', 'intersect'\]"):
        ticket.set_masks_(everything, mode="union")


def test_failed_rewind_after_pruning_undoes_the_round():
    model = lenet(0)
    ticket = LotteryTicket(model, rate=0.5, rounds=3)
    with ticket:
        pass
    masks, history = ticket.masks, ticket.history
    ticket.begin_round_()
    # the snapshot no longer fits: rewinding must fail after the masks were computed
    key = next(iter(ticket._point.tensors))
    ticket._point.tensors[key] = torch.zeros(3, 3, 3)
    before = _state(model)
    with pytest.raises(RuntimeError, match="no longer has"):
        ticket.end_round_()
    assert ticket.round == 1 and ticket.history == history
    assert all(torch.equal(ticket.masks[k], masks[k]) for k in masks)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())


def test_schedule_is_pure_and_matches_the_closed_form():
    s = TicketSettings(sparsity=0.9, rounds=3).resolve(["a", "b"])
    groups = plan_groups(["a", "b"], s)
    assert groups == [Group(("a", "b"), None, 0.9)]
    survivors, numel = {"a": 100, "b": 100}, {"a": 100, "b": 100}
    pruned = 0
    for done in range(3):
        (n,) = group_counts(groups, survivors, numel, done=done, rounds=3)
        pruned += n
        survivors = {"a": survivors["a"] - n // 2, "b": survivors["b"] - (n - n // 2)}
        assert pruned == round(200 * (1 - 0.1 ** ((done + 1) / 3)))
    assert pruned == 180
    assert round_count(survivors=10, total=10, done=0, rate=0.25, sparsity=None, rounds=None) == 2  # round(2.5) == 2
    layer = TicketSettings(rate=0.2, scope="layer", layer_sparsity={"c": 0.5}).resolve(["a", "b", "c"])
    assert [g.fqns for g in plan_groups(["a", "b", "c"], layer)] == [("a",), ("b",), ("c",)]


def test_settings_round_trip_and_one_key_list():
    ticket = LotteryTicket(lenet(0), rate=0.2, rounds=3, layer_rates={"5.weight": 0.1})
    config = ticket.config()
    assert tuple(config) == SETTINGS_KEYS
    assert TicketSettings.from_dict(config) == ticket.settings
    assert LotteryTicket.from_config(lenet(0), config).config() == config


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"seed": 2**63}, ValueError, r"seed=9223372036854775808 is outside \[0, 2\*\*43\)"),
        ({"snapshot_device": "meta"}, ValueError, "snapshot_device='meta' holds no data"),
        ({"backend": ["prune"]}, TypeError, r"backend=\['prune'\] must be a backend name"),
        ({"layer_rates": {1: 0.1}}, TypeError, "layer_rates key 1 is not a string"),
    ],
)
def test_bad_settings_are_refused_before_the_model_is_touched(kwargs, error, match):
    model = lenet(0)
    before = _state(model)
    with pytest.raises(error, match=match):
        LotteryTicket(model, rate=0.2, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())


def test_exclude_none_means_nothing_excluded():
    assert LotteryTicket(lenet(0), rate=0.2, exclude=None).target_fqns == LotteryTicket(lenet(0), rate=0.2).target_fqns


def test_begin_round_steps_resumes_counting_toward_late_rewinding():
    a, b = lenet(0), lenet(0)
    ta, tb = LotteryTicket(a, rate=0.3, rewind=3), LotteryTicket(b, rate=0.3, rewind=3)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    with ta:  # uninterrupted: theta_3 after the third step
        train_steps(a, opt_a, 2)
        train_steps(a, opt_a, 2)
    tb.begin_round_()
    train_steps(b, opt_b, 2)
    state = tb.state_dict()
    tb.abort_round_()  # stopped after 2 steps; a resumed run continues the round from its checkpoint
    assert state["steps"] == 2 and not state["rewind_captured"]
    tb.begin_round_(steps=state["steps"])
    train_steps(b, opt_b, 2)
    tb.end_round_()
    assert all(torch.equal(ta.rewind_weights[k], tb.rewind_weights[k]) for k in ta.rewind_weights)
    assert all(torch.equal(ta.masks[k], tb.masks[k]) for k in ta.masks)
    with pytest.raises(ValueError, match=r"begin_round_\(\): steps=-1 is not a step count"):
        LotteryTicket(lenet(0), rate=0.3).begin_round_(steps=-1)
