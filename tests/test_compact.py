"""compact_model(): a physically smaller copy whose outputs equal the channel-masked model's."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

tp = pytest.importorskip("torch_pruning")

from torch_lottery.channel_selection import channel_masks, channel_scores, full_keep, select_channels  # noqa: E402
from torch_lottery.channels import call_model, find_channel_groups, plain_copy  # noqa: E402
from torch_lottery.compact import compact_model, pruning_history  # noqa: E402


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def _masked(model, groups, keep, tensors=None):
    """The reference: a copy with the channel masks multiplied in."""
    ref = plain_copy(model, tensors)
    live = dict(ref.named_parameters())
    masks = channel_masks(groups, keep, {f: live[f] for f in live})
    with torch.no_grad():
        for f, m in masks.items():
            live[f].mul_(m)
    return ref


def test_compact_mlp_has_the_kept_neurons_and_the_masked_outputs():
    model, x = _mlp(), torch.randn(7, 6)
    groups = find_channel_groups(model, x)
    keep = {"0": torch.tensor([True, False, True, True, False]), "2": torch.tensor([False, True, False, True])}
    small = compact_model(model, groups, keep, example_inputs=x)
    assert [tuple(small[i].weight.shape) for i in (0, 2, 4)] == [(3, 6), (2, 3), (3, 2)]
    assert torch.equal(small[0].weight, model[0].weight[[0, 2, 3]])
    assert torch.equal(small[2].weight, model[2].weight[[1, 3]][:, [0, 2, 3]])
    assert torch.equal(small[0].bias, model[0].bias[[0, 2, 3]])
    torch.testing.assert_close(small(x), _masked(model, groups, keep)(x), rtol=1e-6, atol=1e-6)
    # Torch-Pruning made new Parameters: an optimizer of the original model would not train it
    assert not {id(p) for p in small.parameters()} & {id(p) for p in model.parameters()}
    assert model[0].weight.shape == (5, 6)  # the original is untouched


def test_compact_from_given_tensors_such_as_theta_0():
    model, x = _mlp(), torch.randn(3, 6)
    groups = find_channel_groups(model, x)
    theta0 = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    keep = {"0": torch.tensor([False, True, True, True, True]), "2": torch.tensor([True, True, False, True])}
    small = compact_model(model, groups, keep, example_inputs=x, tensors=theta0)
    assert torch.equal(small[0].weight, theta0["0.weight"][1:])
    torch.testing.assert_close(small(x), _masked(model, groups, keep, theta0)(x), rtol=1e-6, atol=1e-6)


def test_compact_keeps_each_modules_mode_and_each_parameters_requires_grad():
    model, x = _mlp(), torch.randn(2, 6)
    model.train()
    model[2].eval()
    model[4].weight.requires_grad_(False)
    groups = find_channel_groups(model, x)
    small = compact_model(model, groups, {"0": torch.arange(5) < 2, "2": torch.arange(4) < 3}, example_inputs=x)
    assert small.training and small[0].training and not small[2].training
    assert not small[4].weight.requires_grad and small[0].weight.requires_grad
    assert model[0].training and not model[4].weight.requires_grad  # the original as it was


def test_the_pruning_history_replays_with_torch_pruning_itself():
    model, x = _mlp(), torch.randn(2, 6)
    groups = find_channel_groups(model, x)
    keep = {"0": torch.tensor([True, False, True, False, False]), "2": torch.tensor([True, True, True, True])}
    history = pruning_history(groups, keep)
    assert history == [["0", True, [1, 3, 4]]]
    fresh = _mlp(seed=3)
    graph = tp.DependencyGraph().build_dependency(fresh, example_inputs=x, verbose=False)
    graph.load_pruning_history(history)
    ours = compact_model(_mlp(seed=3), groups, keep, example_inputs=x)
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in ours.parameters()]
    with pytest.raises(ValueError, match=r"keep\['0'\] removes every channel"):
        pruning_history(groups, {**keep, "0": torch.zeros(5, dtype=torch.bool)})


class TwoHeads(nn.Module):
    """Two heads sharing one weight: both read the hidden channels the same way."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 6)
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(6, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        h = torch.relu(self.hidden(x))
        return self.a(h) - self.b(h)


def test_tied_weights_stay_one_parameter_after_surgery():
    model, x = TwoHeads(), torch.randn(2, 4)
    groups = find_channel_groups(model, x)
    hidden = next(g for g in groups if g.name == "hidden")
    assert hidden.prunable and ("a.weight", 1, "in") in {(s.fqn, s.dim, s.role) for s in hidden.slices}
    assert "b.weight" not in hidden.fqns  # one canonical name for the tied tensor
    small = compact_model(model, groups, {"hidden": torch.arange(6) < 4}, example_inputs=x)
    assert small.b.weight is small.a.weight and small.a.weight.shape == (3, 4)
    assert len(list(small.parameters())) == len(list(model.parameters()))


def test_a_weight_tied_across_different_couplings_is_never_pruned():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    model[4].weight = model[2].weight  # its rows are layer 2's channels and, in layer 4, the output
    groups = find_channel_groups(model, torch.randn(2, 4))
    assert not any(g.prunable for g in groups)
    assert "tied weight '2.weight' in only some of its places ['2.weight', '4.weight']" in groups[0].reason


class ChannelMean(nn.Module):
    """Subtracts the mean over channels: Torch-Pruning takes the mean for an element-wise op."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 1)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y - y.mean(dim=1, keepdim=True)).mean(dim=(2, 3))


def test_a_wrong_coupling_is_caught_by_the_output_check():
    model, x = ChannelMean(), torch.randn(2, 2, 3, 3)
    groups = find_channel_groups(model, x)
    keep = {"a": torch.tensor([True, False, True, True])}
    with pytest.raises(RuntimeError, match="output 0 of the compact model differs from the masked model's"):
        compact_model(model, groups, keep, example_inputs=x)


def test_refuses_prune_hooks_and_a_different_architecture():
    model, x = _mlp(), torch.randn(2, 6)
    groups = find_channel_groups(model, x)
    keep = full_keep(groups)
    hooked = _mlp()
    prune.random_unstructured(hooked[0], "weight", amount=0.3)
    with pytest.raises(ValueError, match=r"layer '0' still carries a torch.nn.utils.prune mask on '0.weight'"):
        compact_model(hooked, groups, keep, example_inputs=x)
    wider = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    with pytest.raises(ValueError, match=r"the model's channel groups differ from the ticket's at \['2'\]"):
        compact_model(wider, groups, keep, example_inputs=x)


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
def test_compact_torchvision_model_equals_the_masked_model(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()(torch.randn(4, 3, 32, 32))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    groups = find_channel_groups(model, x)
    prunable = [g for g in groups if g.prunable]
    scores = channel_scores(groups, dict(model.named_parameters()))
    keep = select_channels(scores, full_keep(groups), sum(g.size for g in prunable) // 2)
    small = compact_model(model, groups, keep, example_inputs=x, verify=False)  # compared here instead
    with torch.no_grad():
        want = _masked(model, groups, keep)(x)
        got = small(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < 0.9 * sum(p.numel() for p in model.parameters())
    kept = {g.name: int(keep[g.name].sum()) for g in prunable}
    for g in prunable:  # every root layer has exactly its kept channels
        root = small.get_submodule(g.name)
        assert (root.out_channels if hasattr(root, "out_channels") else root.out_features) == kept[g.name]
    assert call_model(small, x).shape == (2, 10)


def test_doctests():
    import doctest

    from torch_lottery import compact

    assert doctest.testmod(compact).failed == 0
