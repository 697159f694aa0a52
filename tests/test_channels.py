"""Channel groups found by tracing a copy with Torch-Pruning: hand-checked couplings, refusals, real models."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

pytest.importorskip("torch_pruning")

from torch_lottery.channels import (  # noqa: E402
    ChannelGroup,
    example_inputs_from_spec,
    find_channel_groups,
    input_spec,
    plain_copy,
)


def _slices(group: ChannelGroup) -> set[tuple[str, int, str]]:
    return {(s.fqn, s.dim, s.role) for s in group.slices}


def _by_name(groups):
    return {g.name: g for g in groups}


class Residual(nn.Module):
    """stem -> (block + skip) -> head: the stem's and the block's output channels are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.head = nn.Conv2d(4, 5, 1)
        self.fc = nn.Linear(5 * 2 * 2, 3)

    def forward(self, x):
        a = torch.relu(self.bn(self.stem(x)))
        y = a + self.block(a)
        y = torch.relu(self.head(y))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 2), 1))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 3, 1)
        self.c = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(y.mean(dim=(2, 3)))


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.dwbn = nn.BatchNorm2d(6)
        self.project = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.project(torch.relu(self.dwbn(self.dw(self.expand(x))))).mean(dim=(2, 3))


def test_mlp_groups_are_output_neurons_with_their_readers_columns():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    groups = find_channel_groups(model, torch.randn(1, 4))
    assert [(g.name, g.size, g.prunable) for g in groups] == [("0", 3, True), ("2", 5, True), ("4", 2, False)]
    first = groups[0]
    assert [(s.fqn, s.dim, s.role, s.positions, s.channels) for s in first.slices] == [
        ("0.weight", 0, "out", (0, 1, 2), (0, 1, 2)),
        ("0.bias", 0, "out", (0, 1, 2), (0, 1, 2)),
        ("2.weight", 1, "in", (0, 1, 2), (0, 1, 2)),
    ]
    assert groups[2].reason == "it feeds the model's output"


def test_residual_add_puts_both_producers_and_every_reader_in_one_group():
    groups = _by_name(find_channel_groups(Residual(), torch.randn(1, 3, 4, 4)))
    assert list(groups) == ["stem", "head", "fc"]
    assert _slices(groups["stem"]) == {
        ("stem.weight", 0, "out"), ("stem.bias", 0, "out"), ("bn.weight", 0, "out"), ("bn.bias", 0, "out"),
        ("block.weight", 1, "in"), ("block.weight", 0, "out"), ("head.weight", 1, "in"),
    }
    # head's 5 channels, flattened over a 2x2 map, own 4 input columns each of fc.
    head = groups["head"]
    fc_in = next(s for s in head.slices if s.fqn == "fc.weight")
    assert (fc_in.dim, fc_in.role) == (1, "in")
    assert fc_in.positions == tuple(range(20))
    assert fc_in.channels == tuple(c for c in range(5) for _ in range(4))
    assert not groups["fc"].prunable


def test_concatenation_maps_each_producer_to_its_offset_in_the_reader():
    groups = _by_name(find_channel_groups(Concat(), torch.randn(1, 3, 2, 2)))
    c_of_a = next(s for s in groups["a"].slices if s.fqn == "c.weight")
    c_of_b = next(s for s in groups["b"].slices if s.fqn == "c.weight")
    assert (c_of_a.positions, c_of_a.channels) == ((0, 1), (0, 1))
    assert (c_of_b.positions, c_of_b.channels) == ((2, 3, 4), (0, 1, 2))
    assert groups["c"].prunable and groups["a"].prunable and groups["b"].prunable


def test_depthwise_conv_is_removed_with_the_channel_it_filters():
    groups = _by_name(find_channel_groups(Depthwise(), torch.randn(1, 3, 4, 4)))
    assert _slices(groups["expand"]) == {
        ("expand.weight", 0, "out"), ("expand.bias", 0, "out"), ("dw.weight", 0, "out"), ("dw.bias", 0, "out"),
        ("dwbn.weight", 0, "out"), ("dwbn.bias", 0, "out"), ("project.weight", 1, "in"),
    }
    assert "dw" not in groups  # the depthwise conv roots no group of its own


def test_layernorm_and_grouped_conv_groups_are_kept_whole_with_a_reason():
    ln = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    g = _by_name(find_channel_groups(ln, torch.randn(2, 4)))["0"]
    assert not g.prunable and "LayerNorm '1' normalizes over the channels" in g.reason
    grouped = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1))
    g = _by_name(find_channel_groups(grouped, torch.randn(1, 4, 5, 5)))["0"]
    assert not g.prunable and "grouped convolution Conv2d '1' (groups=2)" in g.reason


def test_exclude_keeps_every_group_touching_the_tensor():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    groups = find_channel_groups(model, torch.randn(1, 4), exclude=["2.*"])
    assert [g.prunable for g in groups] == [False, False, False]
    assert "'2.weight', excluded by '2.*'" in groups[0].reason
    with pytest.raises(ValueError, match=r"exclude=\['nope\*'\] match no parameter"):
        find_channel_groups(model, torch.randn(1, 4), exclude=["nope*"])
    with pytest.raises(TypeError, match="is a string"):
        find_channel_groups(model, torch.randn(1, 4), exclude="2.*")


def test_tracing_leaves_the_model_mode_tensors_and_hooks_untouched():
    model = Residual().train()
    model.bn.eval()  # a mixed-mode model: each module's own flag must survive
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    find_channel_groups(model, torch.randn(2, 3, 4, 4))
    assert model.training and not model.bn.training and model.stem.training
    assert [id(p) for p in model.parameters()] == params
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_refuses_a_model_with_prune_masks_naming_the_layer():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    prune.l1_unstructured(model[2], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"layer '2' still carries a torch.nn.utils.prune mask on '2.weight'"):
        find_channel_groups(model, torch.randn(1, 4))


def test_an_untraceable_forward_names_the_failing_layer():
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(4, 3))
    model.add_module("fc2", nn.Linear(5, 2))  # wrong in_features: the forward fails here
    with pytest.raises(ValueError, match=r"cannot trace the model: RuntimeError: .* \(in layer 'fc2'\)"):
        find_channel_groups(model, torch.randn(1, 4))


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(self.fc1(x).detach())


def test_a_layer_the_graph_cannot_follow_is_refused_by_name():
    with pytest.raises(ValueError, match=r"layer 'fc1' runs in the forward but Torch-Pruning's graph cannot follow it"):
        find_channel_groups(Detached(), torch.randn(1, 4))


def test_bad_example_inputs_are_a_type_error():
    model = nn.Linear(4, 2)
    with pytest.raises(TypeError, match=r"example_inputs='list' is not a tensor|must hold tensors only"):
        find_channel_groups(model, [1, 2])
    with pytest.raises(TypeError, match="example_inputs='int' is not a tensor"):
        find_channel_groups(model, 3)


def test_missing_torch_pruning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ModuleNotFoundError, match=r"torch_lottery\[structured\]"):
        find_channel_groups(nn.Linear(4, 2), torch.randn(1, 4))


def test_groups_round_trip_through_json():
    groups = find_channel_groups(Residual(), torch.randn(1, 3, 4, 4), exclude=["fc.bias"])
    data = json.loads(json.dumps([g.to_dict() for g in groups]))
    assert [ChannelGroup.from_dict(d) for d in data] == groups
    # runs keep the file small: fc's 20 columns of 5 channels are 5 runs, its positions one
    head = next(d for d in data if d["name"] == "head")
    fc_in = next(s for s in head["slices"] if s["fqn"] == "fc.weight")
    assert fc_in["positions"] == [[0, 20, 1]] and len(fc_in["channels"]) == 5


@pytest.mark.parametrize(
    "inputs",
    [torch.randn(2, 3), (torch.randn(1, 2), torch.zeros(4, dtype=torch.long)), {"x": torch.ones(1, 2, dtype=torch.float16)}],
    ids=["tensor", "tuple", "dict"],
)
def test_input_spec_rebuilds_inputs_of_the_same_shapes_and_dtypes(inputs):
    spec = json.loads(json.dumps(input_spec(inputs)))
    rebuilt = example_inputs_from_spec(spec)
    flat = lambda v: [v] if isinstance(v, torch.Tensor) else list(v.values()) if isinstance(v, dict) else list(v)  # noqa: E731
    assert type(rebuilt) is type(inputs) or (isinstance(inputs, tuple) and isinstance(rebuilt, tuple))
    for a, b in zip(flat(rebuilt), flat(inputs)):
        assert a.shape == b.shape and a.dtype == b.dtype
    if isinstance(inputs, dict):
        assert list(rebuilt) == ["x"]
    assert all(torch.equal(a, b) for a, b in zip(flat(example_inputs_from_spec(spec)), flat(rebuilt)))  # seeded


def test_plain_copy_shares_nothing_keeps_ties_and_drops_hooks():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight  # tied
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    clone = plain_copy(model, {"0.bias": torch.ones(3)})
    assert clone[0].weight is clone[1].weight and clone[0].weight is not model[0].weight
    assert torch.equal(clone[0].bias, torch.ones(3)) and not torch.equal(model[0].bias, torch.ones(3))
    clone(torch.randn(1, 3))
    assert calls == []
    with pytest.raises(ValueError, match=r"tensors \['0.nope'\] do not fit"):
        plain_copy(model, {"0.nope": torch.ones(3)})


# ---------------------------------------------------------------------- real torchvision models
torchvision = pytest.importorskip("torchvision")


def _counts(groups):
    return len(groups), sum(g.prunable for g in groups), sum(g.size for g in groups if g.prunable)


def test_resnet18_has_four_residual_streams_and_eight_block_groups():
    groups = find_channel_groups(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32))
    assert _counts(groups) == (13, 12, 64 * 3 + 128 * 3 + 256 * 3 + 512 * 3)
    by = _by_name(groups)
    streams = ["conv1", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"]
    blocks = [f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)]
    assert sorted(by) == sorted(streams + blocks + ["fc"])
    stem = {s.fqn for s in by["conv1"].slices if s.role == "out"}
    assert {"conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight", "layer1.1.bn2.bias"} <= stem
    layer4 = {(s.fqn, s.dim) for s in by["layer4.0.conv2"].slices}
    assert ("layer4.0.downsample.0.weight", 0) in layer4 and ("fc.weight", 1) in layer4
    assert by["fc"].reason == "it feeds the model's output"


def test_mobilenet_v3_small_couples_depthwise_convs_and_squeeze_excitation():
    groups = find_channel_groups(torchvision.models.mobilenet_v3_small(num_classes=10), torch.randn(1, 3, 32, 32))
    assert _counts(groups) == (28, 27, 4872)
    stem = _by_name(groups)["features.0.0"]
    assert _slices(stem) == {
        ("features.0.0.weight", 0, "out"), ("features.0.1.weight", 0, "out"), ("features.0.1.bias", 0, "out"),
        ("features.1.block.0.0.weight", 0, "out"),  # depthwise
        ("features.1.block.0.1.weight", 0, "out"), ("features.1.block.0.1.bias", 0, "out"),
        ("features.1.block.1.fc1.weight", 1, "in"),  # squeeze reads the channel
        ("features.1.block.1.fc2.weight", 0, "out"), ("features.1.block.1.fc2.bias", 0, "out"),  # excitation scales it
        ("features.1.block.2.0.weight", 1, "in"),
    }


def _small_densenet():
    return torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10)


def test_small_densenet_maps_concatenated_channels_into_every_later_reader():
    groups = find_channel_groups(_small_densenet(), torch.randn(1, 3, 32, 32))
    assert _counts(groups) == (11, 10, 16 + 2 * (16 + 8) + 16 + 2 * (16 + 8))
    g = _by_name(groups)["features.denseblock1.denselayer1.conv2"]
    by = {s.fqn: s for s in g.slices}
    # its 8 new channels sit after the 16 stem channels in every later layer of the block
    assert by["features.denseblock1.denselayer2.norm1.weight"].positions == tuple(range(16, 24))
    assert by["features.denseblock1.denselayer2.conv1.weight"].positions == tuple(range(16, 24))
    assert by["features.transition1.conv.weight"].positions == tuple(range(16, 24))
    assert by["features.transition1.conv.weight"].channels == tuple(range(8))


@pytest.mark.slow
def test_densenet121_has_one_group_per_conv_but_the_classifier():
    groups = find_channel_groups(torchvision.models.densenet121(num_classes=10), torch.randn(1, 3, 32, 32))
    assert _counts(groups) == (121, 120, 10240)


def _tiny_vit():
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )


def test_vit_prunes_mlp_neurons_and_keeps_the_attention_width():
    groups = find_channel_groups(_tiny_vit(), torch.randn(1, 3, 32, 32))
    assert [(g.name, g.size, g.prunable) for g in groups] == [
        ("conv_proj", 32, False),
        ("encoder.layers.encoder_layer_0.mlp.0", 64, True),
        ("encoder.layers.encoder_layer_1.mlp.0", 64, True),
        ("heads.head", 10, False),
    ]
    stream = groups[0].reason
    assert "raw Parameter 'encoder.pos_embedding'" in stream and "LayerNorm" in stream and "MultiheadAttention" in stream
    assert _slices(groups[1]) == {
        ("encoder.layers.encoder_layer_0.mlp.0.weight", 0, "out"),
        ("encoder.layers.encoder_layer_0.mlp.0.bias", 0, "out"),
        ("encoder.layers.encoder_layer_0.mlp.3.weight", 1, "in"),
    }


def test_doctests():
    import doctest

    from torch_lottery import channels

    assert doctest.testmod(channels).failed == 0
