"""EarlyBird: hand-computed distances and firing, the pinned mask, storage, rounds, no mutation, errors."""

import doctest
import math

import pytest
import torch
from torch import nn

from conftest import TinyMLP, lenet, train_steps
from torch_lottery import BACKENDS, EarlyBird, LotteryTicket, early_bird, mask_distance
from torch_lottery.masking import unpack_bits


def set_weight(model: nn.Module, fqn: str, index: tuple, value: float) -> None:
    """Write one weight the way training would (through the tensor the optimizer updates)."""
    ticket_param = dict(model.named_parameters())
    module, name = fqn.rsplit(".", 1)
    key = f"{module}.{name}_orig" if f"{module}.{name}_orig" in ticket_param else fqn
    with torch.no_grad():
        ticket_param[key][index] = value


# TinyMLP, |w| over both layers: 0.05 0.1 0.15 0.2 0.3 | 0.4 0.5 0.6 0.7 0.9 -> rate 0.5 prunes the five smallest.
MASK_A = {"fc1.weight": [[False, True, False], [True, False, False]], "fc2.weight": [[True, True], [False, True]]}
# fc1[0,2] = 0.45: now 0.4 (fc2[0,0]) is among the five smallest instead of 0.3 -> 2 of 10 entries differ.
MASK_B = {"fc1.weight": [[False, True, True], [True, False, False]], "fc2.weight": [[False, True], [False, True]]}


def as_lists(masks):
    return {k: v.tolist() for k, v in masks.items()}


# ---------------------------------------------------------------- hand-computed distances and firing
def test_masks_and_distances_by_hand(tiny):
    ticket = LotteryTicket(tiny, rate=0.5)
    eb = EarlyBird(ticket, epsilon=0.1, window=2)
    assert eb.update() is False
    assert as_lists(eb.candidate_masks()) == MASK_A
    set_weight(tiny, "fc1.weight", (0, 2), 0.45)
    assert as_lists(eb.candidate_masks()) == MASK_B
    assert eb.update() is False  # distance 2/10 > 0.1
    assert eb.distances == [None, 0.2]
    assert eb.emerged_at is None and eb.mask is None


def test_distance_equal_to_epsilon_fires(tiny):
    # The tie: distance exactly 0.2 with epsilon 0.2 fires (<=); 0.19 does not.
    for epsilon, fires in ((0.2, True), (0.19, False)):
        model = TinyMLP()
        eb = EarlyBird(LotteryTicket(model, rate=0.5), epsilon=epsilon, window=2)
        eb.update()
        set_weight(model, "fc1.weight", (0, 2), 0.45)
        assert eb.update() is fires
        assert eb.distances[-1] == 0.2


def test_fires_only_once_the_window_is_full(tiny):
    eb = EarlyBird(LotteryTicket(tiny, rate=0.5), epsilon=0.0, window=3)
    assert [eb.update(), eb.update()] == [False, False]  # identical masks, but only 2 of 3 drawn
    assert eb.update() is True
    assert eb.distances == [None, 0.0, 0.0] and eb.emerged_at == 2
    assert as_lists(eb.mask) == MASK_A


def test_newest_is_compared_with_each_mask_in_the_window(tiny):
    # Masks A, B, A, A, A with window 3: update 2 sees (B, A) -> max 0.2; update 3 sees (B, A) again because
    # B is still in the window; update 4 sees (A, A) and fires.
    eb = EarlyBird(LotteryTicket(tiny, rate=0.5), epsilon=0.1, window=3)
    results = [eb.update()]
    set_weight(tiny, "fc1.weight", (0, 2), 0.45)
    results.append(eb.update())
    set_weight(tiny, "fc1.weight", (0, 2), 0.3)
    results += [eb.update(), eb.update(), eb.update()]
    assert results == [False, False, False, False, True]
    assert eb.distances == [None, 0.2, 0.2, 0.2, 0.0]
    assert eb.emerged_at == 4


def test_keeps_first_emergence_and_keeps_reporting_true(tiny):
    eb = EarlyBird(LotteryTicket(tiny, rate=0.5), epsilon=0.0, window=2)
    eb.update()
    assert eb.update() is True
    set_weight(tiny, "fc1.weight", (0, 2), 0.45)
    assert eb.update() is True  # the mask moved, but the early bird of this round stays the first one
    assert eb.emerged_at == 1 and eb.distances == [None, 0.0, 0.2]
    assert as_lists(eb.mask) == MASK_A
    assert as_lists(eb.ticket.pinned_masks) == MASK_A


def test_distances_match_mask_distance_over_the_window():
    # Real training: every recorded distance is the max of mask_distance(newest, earlier) over the window,
    # from masks kept here in full (so the bit-packed storage round-trips exactly).
    model = lenet()
    ticket = LotteryTicket(model, rate=0.3)
    eb = EarlyBird(ticket, epsilon=0.0, window=4)  # epsilon 0: keeps watching without firing on noise
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    drawn = []
    with ticket:
        for i in range(8):
            train_steps(model, opt, 3, seed=i)
            drawn.append(ticket.compute_masks())
            eb.update()
    expected = [None] + [max(mask_distance(drawn[i], drawn[j]) for j in range(max(0, i - 3), i)) for i in range(1, 8)]
    assert eb.distances == expected
    assert any(d > 0 for d in expected[1:])  # the masks did move


# ---------------------------------------------------------------- later rounds: distance over the survivors
def test_later_rounds_count_only_entries_alive_in_the_round(tiny):
    ticket = LotteryTicket(tiny, rate=0.4, rewind="none")  # round 1 prunes 0.05 0.1 0.15 0.2
    with ticket:
        pass
    # Round 2, 6 survivors (0.3 0.4 0.5 0.6 0.7 0.9): rate 0.4 prunes round(2.4) = 2: 0.3 and 0.4.
    eb = EarlyBird(ticket, epsilon=0.5, window=2)
    eb.update()
    first = eb.candidate_masks()
    set_weight(tiny, "fc1.weight", (0, 2), 0.55)  # 0.3 -> 0.55: now 0.4 and 0.5 are the two smallest
    second = eb.candidate_masks()
    eb.update()
    # 2 of the 6 alive entries changed: 1/3; over all 10 entries it would be 0.2.
    assert eb.distances[-1] == pytest.approx(2 / 6)
    assert mask_distance(first, second) == pytest.approx(0.2)


def test_a_new_round_starts_a_fresh_window_and_keeps_the_old_record(tiny):
    ticket = LotteryTicket(tiny, rate=0.4, rounds=2, rewind="none")
    eb = EarlyBird(ticket, epsilon=0.0, window=2)
    with ticket:
        eb.update()
        assert eb.update() is True
    assert eb.round == 0
    with ticket:
        assert eb.update() is False  # the first mask of round 2: nothing to compare with yet
        assert eb.round == 1 and eb.distances == [None] and eb.emerged_at is None
        assert eb.update() is True
    assert eb.history == [{"round": 0, "distances": [None, 0.0], "emerged_at": 1}]
    # rate 0.4 of 6 survivors in round 2: the ticket's own counts, 4 of 10 left.
    assert int(sum(m.sum() for m in ticket.masks.values())) == 4


# ---------------------------------------------------------------- the pinned mask is the one pruned
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_leaving_the_block_prunes_with_the_emerged_mask_not_a_recomputed_one(backend):
    model = lenet(3)
    ticket = LotteryTicket(model, rate=0.5, backend=backend)
    eb = EarlyBird(ticket, epsilon=1.0, window=2)  # fires at the second update
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with ticket:
        theta0 = {k: v.detach().clone() for k, v in ticket.rewind_weights.items()}
        eb.update()
        assert eb.update() is True
        train_steps(model, opt, 30)  # keep training: the mask the weights now give is another one
        recomputed = ticket.compute_masks()
        assert any(not torch.equal(recomputed[k], eb.mask[k]) for k in recomputed)
    for fqn, mask in ticket.masks.items():
        assert torch.equal(mask, eb.mask[fqn])
        module, name = fqn.rsplit(".", 1)
        weight = getattr(model.get_submodule(module), name)
        assert torch.equal(weight, theta0[fqn] * mask)  # rewound to theta_0, masked by the early-bird mask
    assert ticket.pinned_masks is None  # the pin is used once


def test_an_aborted_block_keeps_the_pin_for_the_next_exit(tiny):
    ticket = LotteryTicket(tiny, rate=0.5)
    eb = EarlyBird(ticket, epsilon=0.0, window=2)
    with pytest.raises(KeyboardInterrupt):
        with ticket:
            eb.update()
            eb.update()
            raise KeyboardInterrupt
    assert ticket.round == 0 and all(m.all() for m in ticket.masks.values())  # nothing pruned
    with ticket:
        set_weight(tiny, "fc1.weight", (0, 2), 0.45)  # would give MASK_B if recomputed
    assert as_lists(ticket.masks) == MASK_A


def test_reset_forgets_the_round_and_drops_the_pin(tiny):
    ticket = LotteryTicket(tiny, rate=0.5)
    eb = EarlyBird(ticket, epsilon=0.0, window=2)
    eb.update()
    eb.update()
    eb.reset()
    assert ticket.pinned_masks is None and eb.distances == [] and eb.emerged_at is None and eb.stored_bytes == 0


# ---------------------------------------------------------------- no side effects, storage
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_update_leaves_model_optimizer_and_rng_untouched(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    ticket = LotteryTicket(model, rate=0.3, criterion="magnitude")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with ticket:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 3, 8, 8)).sum().backward()
            opt.step()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt_state = {k: {n: t.clone() for n, t in s.items()} for k, s in opt.state_dict()["state"].items()}
        masks = {k: v.clone() for k, v in ticket.masks.items()}
        rng = torch.get_rng_state()
        ids = [id(p) for p in model.parameters()]
        eb = EarlyBird(ticket, window=3)
        for _ in range(4):
            eb.update()
        after = model.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
        assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters())
        for k, s in opt.state_dict()["state"].items():
            assert all(torch.equal(opt_state[k][n], t) for n, t in s.items())
        assert all(torch.equal(masks[k], v) for k, v in ticket.masks.items())
        assert torch.equal(rng, torch.get_rng_state())
        assert ids == [id(p) for p in model.parameters()]
        assert ticket.round == 0


def test_window_is_stored_as_bits():
    model = lenet()  # 64x30, 30x20, 20x10 weights: 1920, 600, 200 entries -> 240 + 75 + 25 bytes per mask
    ticket = LotteryTicket(model, rate=0.2)
    eb = EarlyBird(ticket, epsilon=0.0, window=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sizes = []
    for i in range(7):
        train_steps(model, opt, 1, seed=i)
        eb.update()
        sizes.append(eb.stored_bytes)
    assert sizes == [340, 680, 1020, 1360, 1360, 1360, 1360]  # the window - 1 newest masks, one bit per entry
    stored = list(eb._stored)
    assert all(p.dtype == torch.uint8 for masks in stored for p in masks.values())
    newest = ticket.compute_masks()
    assert all(torch.equal(unpack_bits(stored[-1][k], newest[k].shape), newest[k]) for k in newest)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "epsilon, error, match",
    [(-0.1, ValueError, r"epsilon=-0.1 is outside \[0, 1\]"), (1.5, ValueError, r"epsilon=1.5 is outside"),
     (math.nan, ValueError, r"epsilon=nan is outside"), (True, TypeError, r"epsilon=True is not a number"),
     ("0.1", TypeError, r"epsilon='0.1' is not a number")],
)
def test_bad_epsilon_is_refused(tiny, epsilon, error, match):
    with pytest.raises(error, match=r"EarlyBird\(\): " + match):
        EarlyBird(LotteryTicket(tiny, rate=0.5), epsilon=epsilon)


@pytest.mark.parametrize(
    "window, error, match",
    [(1, ValueError, r"window=1 is below 2"), (0, ValueError, r"window=0 is below 2"),
     (2.0, TypeError, r"window=2.0 is not an int"), (True, TypeError, r"window=True is not an int")],
)
def test_bad_window_is_refused(tiny, window, error, match):
    with pytest.raises(error, match=r"EarlyBird\(\): " + match):
        EarlyBird(LotteryTicket(tiny, rate=0.5), window=window)


def test_epsilon_bounds_are_allowed(tiny):
    ticket = LotteryTicket(tiny, rate=0.5)
    assert EarlyBird(ticket, epsilon=0).epsilon == 0.0 and EarlyBird(ticket, epsilon=1).epsilon == 1.0


def test_not_a_ticket_is_refused(tiny):
    with pytest.raises(TypeError, match=r"EarlyBird\(\): ticket='TinyMLP' is not a LotteryTicket"):
        EarlyBird(tiny)


def test_done_ticket_is_refused(tiny):
    ticket = LotteryTicket(tiny, rate=0.5, rounds=1)
    eb = EarlyBird(ticket)
    with ticket:
        pass
    with pytest.raises(RuntimeError, match=r"EarlyBird\(\): the ticket's rounds=1 are all done"):
        EarlyBird(ticket)
    with pytest.raises(RuntimeError, match=r"EarlyBird.update\(\): the ticket's rounds=1 are all done"):
        eb.update()


def test_removed_ticket_is_refused(tiny):
    ticket = LotteryTicket(tiny, rate=0.5)
    eb = EarlyBird(ticket)
    with ticket:
        pass
    ticket.remove_()
    with pytest.raises(RuntimeError, match=r"EarlyBird\(\): the ticket's pruning was made permanent by remove_\(\)"):
        EarlyBird(ticket)
    with pytest.raises(RuntimeError, match=r"EarlyBird.update\(\): .*remove_\(\)"):
        eb.update()


def test_nan_weights_raise_and_store_nothing(tiny):
    eb = EarlyBird(LotteryTicket(tiny, rate=0.5), window=2)
    eb.update()
    set_weight(tiny, "fc1.weight", (0, 0), math.nan)
    with pytest.raises(ValueError, match="NaN or infinite"):
        eb.update()
    assert eb.distances == [None] and eb.stored_bytes == 2  # 6 + 4 entries -> 1 + 1 bytes


# ---------------------------------------------------------------- pin_masks_ on the engine
def test_pin_refuses_regrowth_shapes_and_dtypes(tiny):
    ticket = LotteryTicket(tiny, rate=0.5, rewind="none")
    with ticket:
        pass
    full = {k: torch.ones_like(v) for k, v in ticket.masks.items()}
    with pytest.raises(ValueError, match=r"pin_masks_\(\): pinned masks\['fc1.weight'\] keeps 4 entries that are pruned"):
        ticket.pin_masks_(full)
    with pytest.raises(ValueError, match=r"pin_masks_\(\): masks\['fc2.weight'\] has shape \(4,\)"):
        ticket.pin_masks_({"fc1.weight": ticket.masks["fc1.weight"], "fc2.weight": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"pin_masks_\(\): masks\['fc1.weight'\] is torch.float32"):
        ticket.pin_masks_({k: v.float() for k, v in ticket.masks.items()})
    with pytest.raises(ValueError, match=r"masks missing \['fc2.weight'\]"):
        ticket.pin_masks_({"fc1.weight": ticket.masks["fc1.weight"]})
    assert ticket.pinned_masks is None


def test_pin_is_checked_again_when_used(tiny):
    ticket = LotteryTicket(tiny, rate=0.5, rewind="none")
    ticket.pin_masks_({k: torch.ones_like(v, dtype=torch.bool) for k, v in ticket.masks.items()})
    ticket.set_masks_({k: torch.zeros(v.shape, dtype=torch.bool) for k, v in ticket.masks.items()}, rewind=False)
    with pytest.raises(ValueError, match=r"prune_\(\): pinned masks\['fc1.weight'\] keeps 6 entries"):
        ticket.prune_()
    assert ticket.round == 0


def test_module_doctests():
    assert doctest.testmod(early_bird).failed == 0
