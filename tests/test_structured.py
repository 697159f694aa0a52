"""ChannelPlan: a plan traced once serves masks, selection and the compact model, also after masks are installed."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

tp = pytest.importorskip("torch_pruning")

from torch_lottery.structured import ChannelPlan  # noqa: E402


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 3),
    )


X = torch.randn(2, 1, 4, 4)


def _state(model):
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def test_plan_targets_masks_and_round_trip_of_its_channels():
    model = _cnn()
    plan = ChannelPlan.trace(model, X)
    assert [g.name for g in plan.prunable_groups] == ["0", "3", "7"]
    assert plan.targets == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight"]
    keep = plan.select(dict(model.named_parameters()), plan.full_keep(), 9)
    assert plan.kept_counts(keep) == {k: v for k, v in plan.kept_counts(keep).items()}
    assert sum(plan.kept_counts(keep).values()) == 6 + 8 + 5 - 9
    masks = plan.masks(keep)
    assert set(masks) == set(plan.targets)
    back = plan.keep_from_masks(masks)
    assert all(torch.equal(back[g], keep[g]) for g in keep)
    assert plan.channel_sparsity(keep) == pytest.approx(9 / 19)


def test_compact_from_a_model_that_now_carries_prune_masks():
    model = _cnn()
    plan = ChannelPlan.trace(model, X)  # traced while plain
    keep = plan.select(dict(model.named_parameters()), plan.full_keep(), {"0": 3, "3": 4})
    masks = plan.masks(keep)
    modules = dict(model.named_modules())
    for fqn, m in masks.items():
        owner, name = fqn.rsplit(".", 1)
        prune.custom_from_mask(modules[owner], name, m)
    model.eval()
    with torch.no_grad():
        want = model(X)
    raw = {}
    for name, module in model.named_modules():
        for local, t in list(module._parameters.items()) + list(module._buffers.items()):
            key = f"{name}.{local.removesuffix('_orig')}"
            raw[key] = t  # weight_orig under its canonical name; the *_mask buffers are ignored
    small = plan.compact(raw, keep)
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(X), want, rtol=1e-5, atol=1e-6)
    assert small[0].out_channels == 3 and small[3].out_channels == 4 and small[7].in_features == 4 * 4


def test_plan_from_dict_rebuilds_on_a_fresh_instance_without_example_inputs():
    model = _cnn()
    plan = ChannelPlan.trace(model, X)
    data = json.loads(json.dumps(plan.to_dict()))
    fresh = _cnn(seed=5)
    again = ChannelPlan.from_dict(fresh, data)
    assert again.groups == plan.groups and again.input_spec == plan.input_spec
    keep = plan.select(dict(model.named_parameters()), plan.full_keep(), 5)
    small = again.compact(_state(fresh), keep)
    assert torch.equal(small[0].weight, fresh[0].weight[keep["0"]])
    wrong = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"group '0' names \['0.weight'|group '0' names \['1.weight'"):
        ChannelPlan.from_dict(wrong, data)


def test_missing_values_are_refused_not_left_uninitialized():
    model = _cnn()
    plan = ChannelPlan.trace(model, X)
    values = dict(model.named_parameters())  # no BatchNorm statistics
    with pytest.raises(ValueError, match=r"no values for \['1.running_mean'"):
        plan.compact(values, plan.full_keep())


def test_torch_pruning_importance_scores_with_its_own_groups():
    model = _cnn()
    imp = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    plan = ChannelPlan.trace(model, X, importance=imp)
    scores = plan.scores(_state(model))
    graph = tp.DependencyGraph().build_dependency(_cnn(), example_inputs=X, verbose=False)
    ref_model = graph.model
    for g in plan.prunable_groups:
        root = ref_model.get_submodule(g.name)
        want = imp(graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(range(g.size))))
        torch.testing.assert_close(scores[g.name], want.double())
    assert plan.importance_name == "GroupMagnitudeImportance"


def test_bad_importance_and_models_without_prunable_channels():
    with pytest.raises(ValueError, match=r"importance='l3' is not one of \['l1', 'l2'\]"):
        ChannelPlan.trace(_cnn(), X, importance="l3")
    with pytest.raises(TypeError, match="importance=3 is neither a name nor a callable"):
        ChannelPlan.trace(_cnn(), X, importance=3)
    with pytest.raises(ValueError, match=r"no prunable channel group \('': it feeds the model's output\)"):
        ChannelPlan.trace(nn.Linear(4, 2), torch.randn(1, 4))


def test_doctests():
    import doctest

    from torch_lottery import structured

    assert doctest.testmod(structured).failed == 0
