"""The LotteryTicket engine: masks, counts, rounds, rewinding, errors and rollback."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from conftest import TinyMLP, lenet, train_steps
from torch_lottery import BACKENDS, LotteryTicket, per_round_rate, random_masks_like


def effective(model: nn.Module, fqn: str) -> torch.Tensor:
    module_name, name = fqn.rsplit(".", 1)
    return getattr(model.get_submodule(module_name), name)


def state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- hand-computed masks
def test_global_mask_by_hand(tiny):
    # |w| over both layers: 0.05 0.1 0.15 0.2 0.3 0.4 0.5 0.6 0.7 0.9 -> 10 weights, rate 0.4 prunes 4
    ticket = LotteryTicket(tiny, rate=0.4)
    with ticket:
        pass
    assert ticket.masks["fc1.weight"].tolist() == [[False, True, True], [True, False, False]]
    assert ticket.masks["fc2.weight"].tolist() == [[True, True], [False, True]]
    assert ticket.sparsity == pytest.approx(0.4)


def test_layer_mask_by_hand(tiny):
    # rate 0.5: fc1 prunes round(3.0)=3 of 6 (0.05, 0.1, 0.2); fc2 prunes round(1.0)=1... of 4 -> 2 (0.15, 0.4)
    ticket = LotteryTicket(tiny, rate=0.5, scope="layer")
    with ticket:
        pass
    assert ticket.masks["fc1.weight"].tolist() == [[False, True, True], [True, False, False]]
    assert ticket.masks["fc2.weight"].tolist() == [[False, True], [False, True]]


def test_layer_rates_override_by_hand(tiny):
    # fc2 at rate 0.25 -> round(1.0) = 1 pruned (0.15); fc1 at 0.5 -> 3 pruned
    ticket = LotteryTicket(tiny, rate=0.5, scope="layer", layer_rates={"fc2.weight": 0.25})
    with ticket:
        pass
    assert ticket.masks["fc2.weight"].tolist() == [[True, True], [False, True]]
    assert int(ticket.masks["fc1.weight"].sum()) == 3


def test_global_with_override_ranks_the_rest_together(tiny):
    ticket = LotteryTicket(tiny, rate=0.5, scope="global", layer_rates={"fc2.*": 0.0})
    with ticket:
        pass
    assert ticket.masks["fc2.weight"].all()
    assert ticket.masks["fc1.weight"].tolist() == [[False, True, True], [True, False, False]]


def test_ties_are_broken_by_position():
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    ticket = LotteryTicket(model, rate=0.5)
    with ticket:
        pass
    assert ticket.masks["weight"].tolist() == [[False, False, True, True]]


def test_scores_read_the_effective_weight_not_the_stale_attribute(tiny):
    ticket = LotteryTicket(tiny, rate=0.4, rewind="none")
    with ticket:
        pass
    # Change weight_orig only; prune's module.weight attribute is now stale until the next forward.
    with torch.no_grad():
        tiny.fc1.weight_orig.copy_(torch.tensor([[0.1, -5.0, 0.3], [0.9, -0.2, 0.05]]))
    ticket2_masks = ticket.compute_masks()
    # 6 survivors; rate .4 -> round(2.4) = 2 pruned: the smallest effective survivors are 0.3 and 0.4.
    assert ticket2_masks["fc1.weight"].tolist() == [[False, True, False], [True, False, False]]
    assert ticket2_masks["fc2.weight"].tolist() == [[False, True], [False, True]]


# ---------------------------------------------------------------- counts and rounds
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_compounding_sparsity_with_rate(scope):
    model = lenet()
    ticket = LotteryTicket(model, rate=0.2, rounds=4, scope=scope)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    alive = {t.fqn: t.numel for t in ticket.targets}
    total_alive = sum(alive.values())
    for r in range(4):
        with ticket:
            train_steps(model, opt, 3, seed=r)
        if scope == "layer":
            alive = {k: v - round(0.2 * v) for k, v in alive.items()}
            assert {k: int(m.sum()) for k, m in ticket.masks.items()} == alive
        else:
            total_alive -= round(0.2 * total_alive)
            assert sum(int(m.sum()) for m in ticket.masks.values()) == total_alive
    assert ticket.sparsity == pytest.approx(1 - 0.8**4, abs=1e-3)
    assert ticket.done
    with pytest.raises(RuntimeError, match="all rounds=4 are done"):
        with ticket:
            pass


def test_sparsity_target_is_reached_exactly_after_rounds():
    model = lenet()
    total = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    ticket = LotteryTicket(model, sparsity=0.9, rounds=3)
    for _ in range(3):
        with ticket:
            pass
    assert sum(int(m.sum()) for m in ticket.masks.values()) == total - round(0.9 * total)
    rates = [1 - h["remaining"] / prev for h, prev in zip(ticket.history, [total] + [h["remaining"] for h in ticket.history])]
    for r in rates:
        assert r == pytest.approx(per_round_rate(0.9, 3), abs=2e-3)


def test_one_shot_when_sparsity_without_rounds():
    ticket = LotteryTicket(lenet(), sparsity=0.5)
    assert ticket.rounds == 1
    with ticket:
        pass
    assert ticket.sparsity == pytest.approx(0.5, abs=1e-3)


def test_masks_are_monotone_over_rounds_and_never_regrow():
    model = lenet()
    ticket = LotteryTicket(model, rate=0.3, rounds=4, rewind="none")
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    previous = ticket.masks
    for r in range(4):
        with ticket:
            train_steps(model, opt, 5, seed=r)
        now = ticket.masks
        for k in now:
            assert not (now[k] & ~previous[k]).any()
        previous = now


# ---------------------------------------------------------------- rewinding
def test_rewind_is_bitwise_exact_and_keeps_parameter_identity():
    model = lenet()
    theta0 = state(model)
    params_before = [id(p) for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    ticket = LotteryTicket(model, rate=0.5, rounds=2)
    for r in range(2):
        with ticket:
            train_steps(model, opt, 5, seed=r)
        for fqn, mask in ticket.masks.items():
            orig = model.get_parameter(fqn + "_orig")
            assert torch.equal(orig, theta0[fqn])  # every entry, survivors included, is theta_0
            w = effective(model, fqn)
            assert torch.equal(w[mask], theta0[fqn][mask])
            assert (w[~mask] == 0).all()
        assert torch.equal(model.get_parameter("1.bias"), theta0["1.bias"])
    assert sorted(id(p) for p in model.parameters()) == sorted(params_before)  # prune re-registers: order changes
    assert {id(p) for g in opt.param_groups for p in g["params"]} == set(params_before)


def test_pruned_weights_stay_zero_while_training():
    model = lenet()
    ticket = LotteryTicket(model, rate=0.6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    with ticket:
        train_steps(model, opt, 3)
    train_steps(model, opt, 10, seed=7)
    for fqn, mask in ticket.masks.items():
        assert (effective(model, fqn)[~mask] == 0).all()
        assert not torch.equal(effective(model, fqn)[mask], ticket.rewind_weights[fqn][mask])  # it did train


def test_restore_all_rewinds_batchnorm_buffers_and_params_leaves_them():
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))

    for restore, expect_buffers_rewound in (("all", True), ("params", False)):
        model = make()
        theta0 = state(model)
        ticket = LotteryTicket(model, rate=0.5, restore=restore)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with ticket:
            for _ in range(3):
                opt.zero_grad()
                model(torch.randn(16, 4)).sum().backward()
                opt.step()
        assert torch.equal(model[1].weight, theta0["1.weight"])  # BN affine: a parameter
        assert torch.equal(model[1].running_mean, theta0["1.running_mean"]) is expect_buffers_rewound
        assert (int(model[1].num_batches_tracked) == 0) is expect_buffers_rewound


def test_restore_targets_leaves_biases_trained():
    model = lenet()
    theta0 = state(model)
    ticket = LotteryTicket(model, rate=0.5, restore="targets")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ticket:
        train_steps(model, opt, 3)
    assert not torch.equal(model.get_parameter("1.bias"), theta0["1.bias"])
    assert torch.equal(model.get_parameter("1.weight_orig"), theta0["1.weight"])


def test_rewind_none_keeps_trained_weights():
    model = lenet()
    ticket = LotteryTicket(model, rate=0.5, rewind="none")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ticket:
        train_steps(model, opt, 3)
        trained = {k: v.detach().clone() for k, v in model.named_parameters()}
    for fqn, mask in ticket.masks.items():
        assert torch.equal(effective(model, fqn)[mask], trained[fqn][mask])


def test_late_rewinding_captures_weights_after_step_k_automatically():
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ticket = LotteryTicket(model, rate=0.5, rewind=3)
    with ticket:
        train_steps(model, opt, 3)
        theta3 = state(model)
        train_steps(model, opt, 4, seed=2)
    for fqn, mask in ticket.masks.items():
        assert torch.equal(model.get_parameter(fqn + "_orig"), theta3[fqn])
    with ticket:  # round 2 rewinds to the same theta_3
        train_steps(model, opt, 2, seed=3)
    for fqn in ticket.masks:
        assert torch.equal(model.get_parameter(fqn + "_orig"), theta3[fqn])


def test_late_rewinding_restores_optimizer_and_scheduler_state_at_step_k():
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ticket = LotteryTicket(model, rate=0.5, rewind=2, optimizer=opt, scheduler=sched)
    g = torch.Generator().manual_seed(0)
    with ticket:
        for step in range(5):
            opt.zero_grad()
            model(torch.randn(4, 64, generator=g)).sum().backward()
            opt.step()
            sched.step()
            if step == 1:
                momentum_at_2 = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
                lr_after_2 = opt.param_groups[0]["lr"]
    assert lr_after_2 == pytest.approx(0.1 * 0.5**2)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_after_2)
    assert sched.last_epoch == 2
    for p in model.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], momentum_at_2[id(p)])


def test_late_rewinding_with_too_few_steps_prunes_nothing():
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ticket = LotteryTicket(model, rate=0.5, rewind=10)
    with pytest.raises(RuntimeError, match="only 2 optimizer steps ran"):
        with ticket:
            train_steps(model, opt, 2)
    assert not prune.is_pruned(model)
    assert ticket.round == 0


def test_mark_rewind_point_explicitly():
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ticket = LotteryTicket(model, rate=0.5, rewind="init")
    with ticket:
        train_steps(model, opt, 2)
        ticket.mark_rewind_point()
        marked = state(model)
        train_steps(model, opt, 2, seed=4)
    for fqn in ticket.masks:
        assert torch.equal(model.get_parameter(fqn + "_orig"), marked[fqn])


def test_optimizer_state_is_reset_to_the_rewind_point():
    model = lenet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ticket = LotteryTicket(model, rate=0.5, optimizer=opt)
    with ticket:
        train_steps(model, opt, 3)
        assert len(opt.state) > 0
    # theta_0 time: no moments yet. Adam's fresh state is all zeros: it is written so in place (a
    # compiled step keeps its code), and trains bitwise like a fresh optimizer's.
    assert all(not v.any() for s in opt.state.values() for v in s.values())
    twin = copy.deepcopy(model)
    fresh = torch.optim.Adam(twin.parameters(), lr=1e-2)
    train_steps(model, opt, 2)  # the optimizer still drives the (same) parameters
    train_steps(twin, fresh, 2)
    assert len(opt.state) == len(list(model.parameters()))
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), k


def test_reinit_draws_fresh_values_from_the_layer_initializer():
    model = lenet()
    theta0 = state(model)
    ticket = LotteryTicket(model, rate=0.5, rewind="reinit", seed=3)
    with ticket:
        pass
    for fqn, mask in ticket.masks.items():
        new = model.get_parameter(fqn + "_orig")
        assert not torch.equal(new, theta0[fqn])
        bound = 1 / math.sqrt(new.shape[1])  # nn.Linear's kaiming_uniform(a=sqrt(5)) bound
        assert new.abs().max() <= bound
        assert (effective(model, fqn)[~mask] == 0).all()
    assert torch.equal(model.get_parameter("1.bias"), theta0["1.bias"])
    # seeded: the same seed gives the same values
    model2 = lenet()
    ticket2 = LotteryTicket(model2, rate=0.5, rewind="reinit", seed=3)
    with ticket2:
        pass
    for fqn in ticket.masks:
        assert torch.equal(model.get_parameter(fqn + "_orig"), model2.get_parameter(fqn + "_orig"))


def test_random_mask_control_has_the_tickets_counts():
    model = lenet()
    ticket = LotteryTicket(model, rate=0.5, rewind="init")
    with ticket:
        pass
    control = random_masks_like(ticket.masks, seed=1)
    for k in control:
        assert int(control[k].sum()) == int(ticket.masks[k].sum())
        assert not torch.equal(control[k], ticket.masks[k])
    fresh = lenet()
    theta0 = state(fresh)
    other = LotteryTicket(fresh, rate=0.5)
    other.snapshot_()
    other.set_masks_(control)
    for fqn, mask in control.items():
        assert torch.equal(other.masks[fqn], mask)
        assert torch.equal(effective(fresh, fqn), theta0[fqn] * mask)


# ---------------------------------------------------------------- exceptions inside the block
@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt()])
def test_exception_in_block_prunes_nothing_and_keeps_trained_weights(exc):
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ticket = LotteryTicket(model, rate=0.5)
    with pytest.raises(type(exc)):
        with ticket:
            train_steps(model, opt, 3)
            trained = state(model)
            raise exc
    assert not prune.is_pruned(model)
    assert ticket.round == 0
    for k, v in state(model).items():
        assert torch.equal(v, trained[k])
    with ticket:  # the ticket is still usable
        pass
    assert ticket.round == 1


def test_exception_in_second_round_keeps_first_round_masks():
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ticket = LotteryTicket(model, rate=0.5, rounds=3)
    with ticket:
        train_steps(model, opt, 2)
    masks = ticket.masks
    with pytest.raises(RuntimeError, match="crash"):
        with ticket:
            train_steps(model, opt, 2)
            raise RuntimeError("crash")
    assert ticket.round == 1
    for k in masks:
        assert torch.equal(ticket.masks[k], masks[k])


def test_nested_block_is_refused():
    ticket = LotteryTicket(lenet(), rate=0.5)
    with pytest.raises(RuntimeError, match="already open"):
        with ticket:
            with ticket:
                pass


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"sparsity": 1.0}, ValueError, r"sparsity=1.0 is outside \[0, 1\)"),
        ({"sparsity": -0.1}, ValueError, "outside"),
        ({"rate": float("nan")}, ValueError, "outside"),
        ({"rate": "0.2"}, TypeError, "rate='0.2' is not a number"),
        ({}, ValueError, "give exactly one"),
        ({"rate": 0.2, "sparsity": 0.5}, ValueError, "give exactly one"),
        ({"rate": 0.2, "rounds": 0}, ValueError, "rounds=0"),
        ({"rate": 0.2, "scope": "local"}, ValueError, "scope='local'"),
        ({"rate": 0.2, "rewind": "start"}, ValueError, "rewind='start'"),
        ({"rate": 0.2, "rewind": -1}, ValueError, "rewind=-1"),
        ({"rate": 0.2, "restore": "everything"}, ValueError, "restore='everything'"),
        ({"rate": 0.2, "criterion": "l2"}, ValueError, "criterion='l2'"),
        ({"rate": 0.2, "backend": "magic"}, ValueError, "backend='magic'"),
        ({"rate": 0.2, "targets": []}, ValueError, "selects no prunable tensor"),
        ({"rate": 0.2, "targets": ["nope.weight"]}, ValueError, r"targets=\['nope.weight'\] match no parameter"),
        ({"rate": 0.2, "targets": "1.weight"}, TypeError, "is a string"),
        ({"rate": 0.2, "exclude": ["zzz"]}, ValueError, "exclude="),
        ({"rate": 0.2, "layer_rates": {"fc9.weight": 0.1}}, ValueError, "layer_rates key 'fc9.weight' matches no target"),
        ({"rate": 0.2, "layer_rates": {"1.weight": 1.5}}, ValueError, "outside"),
        ({"rate": 0.2, "optimizer": "adam"}, TypeError, "optimizer="),
        ({"rate": 0.2, "snapshot_device": "gpu9"}, ValueError, "snapshot_device='gpu9'"),
    ],
)
def test_bad_arguments_are_rejected_and_model_untouched(kwargs, error, match):
    model = lenet()
    before = state(model)
    with pytest.raises(error, match=match):
        LotteryTicket(model, **kwargs)
    assert not prune.is_pruned(model)
    assert all(torch.equal(v, before[k]) for k, v in state(model).items())


def test_non_module_is_rejected():
    with pytest.raises(TypeError, match="model='dict' is not an nn.Module"):
        LotteryTicket({"w": torch.zeros(2)}, rate=0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_at_pruning_time_leave_the_model_as_it_was(bad):
    model = lenet()
    ticket = LotteryTicket(model, rate=0.5)
    with pytest.raises(ValueError, match="'3.weight' has 1 NaN or infinite weights"):
        with ticket:
            with torch.no_grad():
                model[3].weight[0, 0] = bad
            trained = state(model)
    assert not prune.is_pruned(model)
    assert ticket.round == 0
    for k, v in state(model).items():
        assert torch.equal(v, trained[k]) or (torch.isnan(v).any() and torch.equal(v.isnan(), trained[k].isnan()))


def test_rollback_when_a_mask_cannot_be_installed():
    model = lenet()
    ticket = LotteryTicket(model, rate=0.5, rounds=2)
    with ticket:
        pass
    first = ticket.masks
    bad = dict(ticket.compute_masks())
    bad["5.weight"] = torch.ones(3, 3, dtype=torch.bool)  # not broadcastable to (10, 20)
    with pytest.raises(RuntimeError):
        ticket._install_masks_(bad)
    for k in first:
        assert torch.equal(ticket.masks[k], first[k])


def test_rollback_restores_unpruned_tensors_on_failure():
    model = lenet()
    before = state(model)
    ticket = LotteryTicket(model, rate=0.5)
    bad = {k: torch.ones_like(m) for k, m in ticket.masks.items()}
    bad["5.weight"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(AssertionError, match="must match"):  # raised inside torch.nn.utils.prune
        ticket._install_masks_(bad)
    assert not prune.is_pruned(model)
    assert list(state(model)) == list(before)
    assert all(torch.equal(v, before[k]) for k, v in state(model).items())


def test_set_masks_validates_before_touching_the_model():
    model = lenet()
    ticket = LotteryTicket(model, rate=0.5)
    ticket.snapshot_()
    with pytest.raises(ValueError, match=r"masks missing \['5.weight'\]"):
        ticket.set_masks_({k: v for k, v in ticket.masks.items() if k != "5.weight"})
    with pytest.raises(TypeError, match="pass bool tensors"):
        ticket.set_masks_({k: v.float() for k, v in ticket.masks.items()})
    with pytest.raises(ValueError, match="has shape"):
        ticket.set_masks_({k: v.t() if k == "1.weight" else v for k, v in ticket.masks.items()})
    assert not prune.is_pruned(model)


def test_wrong_call_order_is_explained():
    ticket = LotteryTicket(lenet(), rate=0.5, rewind="init")
    with pytest.raises(RuntimeError, match="no snapshot yet"):
        ticket.rewind_()
    with ticket:
        pass
    ticket.remove_()
    with pytest.raises(RuntimeError, match="remove_\\(\\) made the pruning permanent"):
        with ticket:
            pass


def test_criterion_returning_wrong_shape_is_rejected():
    ticket = LotteryTicket(lenet(), rate=0.5, criterion=lambda fqn, w, w0, g: w.sum())
    with pytest.raises(ValueError, match="return one score per weight"):
        with ticket:
            pass
    assert ticket.round == 0


# ---------------------------------------------------------------- decorator, resume, misc
def test_decorator_runs_one_round_per_call():
    model = lenet()
    ticket = LotteryTicket(model, rate=0.2, rounds=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @ticket
    def train(steps: int) -> str:
        train_steps(model, opt, steps)
        return "trained"

    assert train(2) == "trained"
    assert train(2) == "trained"
    assert ticket.round == 2
    assert train.ticket is ticket


def test_state_dict_resumes_an_imp_run_exactly():
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ticket = LotteryTicket(model, rate=0.3, rounds=3)
    for r in range(2):
        with ticket:
            train_steps(model, opt, 3, seed=r)
    saved_ticket = copy.deepcopy(ticket.state_dict())
    saved_model = copy.deepcopy(model.state_dict())

    # uninterrupted third round
    with ticket:
        train_steps(model, opt, 3, seed=9)
    expected_masks = ticket.masks

    # "preempted": fresh process state
    fresh = lenet(seed=5)
    resumed = LotteryTicket(fresh, rate=0.3, rounds=3)
    resumed.load_state_dict(saved_ticket)
    fresh.load_state_dict(saved_model)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1)
    assert resumed.round == 2
    with resumed:
        train_steps(fresh, opt2, 3, seed=9)
    for k in expected_masks:
        assert torch.equal(resumed.masks[k], expected_masks[k])
    assert resumed.history == ticket.history


def test_load_state_dict_rejects_other_settings():
    ticket = LotteryTicket(lenet(), rate=0.3)
    other = LotteryTicket(lenet(), rate=0.5)
    with pytest.raises(ValueError, match="settings differ"):
        other.load_state_dict(ticket.state_dict())


def test_from_config_rebuilds_the_same_settings():
    ticket = LotteryTicket(lenet(), rate=0.3, rounds=4, scope="layer", layer_rates={"5.weight": 0.1}, seed=2)
    again = LotteryTicket.from_config(lenet(), ticket.config())
    assert again.config() == ticket.config()


def test_summary_and_history_report_what_was_pruned(tiny):
    ticket = LotteryTicket(tiny, rate=0.4)
    with ticket:
        pass
    rows = {r["fqn"]: r for r in ticket.summary()}
    assert rows["fc1.weight"]["remaining"] == 3 and rows["fc2.weight"]["remaining"] == 3
    assert rows["fc1.weight"]["sparsity"] == pytest.approx(0.5)
    assert ticket.history == [
        {"round": 1, "sparsity": pytest.approx(0.4), "remaining": 6, "total": 10,
         "per_tensor": {"fc1.weight": 3, "fc2.weight": 3}}
    ]
    table = ticket.summary_table()
    assert "fc1.weight" in table and "40.00%" in table


def test_data_parallel_wrapper_is_looked_through():
    model = lenet()
    ticket = LotteryTicket(nn.DataParallel(model), rate=0.5)
    assert ticket.target_fqns == ["1.weight", "3.weight", "5.weight"]
    with ticket:
        pass
    assert prune.is_pruned(model)


def test_random_criterion_is_seeded():
    a = LotteryTicket(lenet(), rate=0.5, criterion="random", seed=1)
    b = LotteryTicket(lenet(), rate=0.5, criterion="random", seed=1)
    with a:
        pass
    with b:
        pass
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


# ---------------------------------------------------------------- per-layer overrides (found by the reproduction client)
def test_layer_rates_covering_every_target_need_no_global_rate():
    model = lenet()
    ticket = LotteryTicket(model, scope="layer", layer_rates={"1.weight": 0.2, "3.weight": 0.2, "5.weight": 0.1})
    with ticket:
        pass
    assert {k: int(m.sum()) for k, m in ticket.masks.items()} == {"1.weight": 1536, "3.weight": 480, "5.weight": 180}
    assert ticket.rounds is None


def test_partial_overrides_still_need_rate_or_sparsity():
    with pytest.raises(ValueError, match=r"cover every target with layer_rates/layer_sparsity \(not covered: \['3.weight'\]\)"):
        LotteryTicket(lenet(), layer_rates={"1.weight": 0.2, "5.weight": 0.1})


def test_layer_sparsity_prunes_one_shot_to_per_layer_sparsity():
    model = lenet()
    ticket = LotteryTicket(model, layer_sparsity={"1.weight": 0.5, "3.weight": 0.75, "5.weight": 0.1})
    assert ticket.rounds == 1
    with ticket:
        pass
    assert {k: int(m.sum()) for k, m in ticket.masks.items()} == {"1.weight": 960, "3.weight": 150, "5.weight": 180}
    assert ticket.done


def test_layer_sparsity_over_rounds_lands_exactly():
    model = lenet()
    ticket = LotteryTicket(model, rate=0.2, rounds=3, scope="global", layer_sparsity={"5.weight": 0.5})
    for _ in range(3):
        with ticket:
            pass
    assert int(ticket.masks["5.weight"].sum()) == 100
    assert ticket.history[0]["per_tensor"]["5.weight"] == 200 - round(200 * (1 - 0.5 ** (1 / 3)))


def test_a_tensor_in_both_override_maps_is_refused():
    with pytest.raises(ValueError, match=r"\['5.weight'\] are in both layer_rates and layer_sparsity"):
        LotteryTicket(lenet(), rate=0.2, layer_rates={"5.*": 0.1}, layer_sparsity={"5.weight": 0.5})


def test_set_masks_on_a_fresh_ticket_takes_the_snapshot_itself():
    model = lenet()
    theta0 = state(model)
    ticket = LotteryTicket(model, rate=0.5)
    masks = random_masks_like({k: torch.rand(m.shape) > 0.5 for k, m in ticket.masks.items()}, seed=0)
    ticket.set_masks_(masks)  # no snapshot_() call needed
    for fqn, mask in masks.items():
        assert torch.equal(effective(model, fqn), theta0[fqn] * mask)
    assert torch.equal(ticket.rewind_weights["1.weight"], theta0["1.weight"])


def test_load_state_dict_can_rewind_the_model_too():
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ticket = LotteryTicket(model, rate=0.3, rounds=3)
    with ticket:
        train_steps(model, opt, 3)
    saved = ticket.state_dict()
    fresh = lenet(seed=9)
    resumed = LotteryTicket(fresh, rate=0.3, rounds=3)
    resumed.load_state_dict(saved, rewind=True)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_live_tensors_are_the_parameters_the_optimizer_updates_under_canonical_names(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    raw = [model[0].weight, model[2].weight]
    ticket = LotteryTicket(model, rate=0.5, backend=backend)
    with ticket:
        pass
    live = ticket.live_tensors()
    assert set(ticket.masks) <= set(live)
    assert live["0.weight"] is raw[0] and live["2.weight"] is raw[1]  # weight_orig under prune: same object
    assert "1.running_mean" in live and live["1.running_mean"] is model[1].running_mean
    assert "1.running_mean" not in ticket.live_tensors(buffers=False)
    assert not any(k.endswith(("_orig", "_mask")) for k in live)
