"""Compact model files: plain safetensors that any reader loads, rebuilt by load_compact on a fresh instance."""

from __future__ import annotations

import json

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

pytest.importorskip("torch_pruning")

from torch_lottery.channel_selection import channel_scores, full_keep, select_channels  # noqa: E402
from torch_lottery.channels import find_channel_groups, input_spec  # noqa: E402
from torch_lottery.compact import compact_model, pruning_history  # noqa: E402
from torch_lottery.compact_file import load_compact, read_compact_info, save_compact  # noqa: E402


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 6)
        self.out2 = nn.Linear(8, 6)
        self.out2.weight = self.out.weight  # tied

    def forward(self, x):
        h = torch.relu(self.hidden(torch.relu(self.embed(x))))
        return self.out(h) + self.out2(h)


def _small(model, x, n):
    groups = find_channel_groups(model, x)
    keep = select_channels(channel_scores(groups, dict(model.named_parameters())), full_keep(groups), n)
    return groups, keep, compact_model(model, groups, keep, example_inputs=x)


def test_round_trip_rebuilds_the_compact_model_on_a_fresh_instance(tmp_path):
    torch.manual_seed(0)
    model, x = Tied(), torch.randn(3, 6)
    groups, keep, small = _small(model, x, 6)
    path = tmp_path / "small.safetensors"
    save_compact(small, path, history=pruning_history(groups, keep), input_spec=input_spec(x), metadata={"run": "7"})
    info = read_compact_info(path)
    assert info["model_class"].endswith("test_compact_file.Tied")
    assert info["pruning_history"] == pruning_history(groups, keep)
    assert info["aliases"] == {"out2.weight": "out.weight"}
    # plain safetensors: any reader sees the compact shapes under the usual names
    plain = safetensors.torch.load_file(str(path))
    assert plain["hidden.weight"].shape == small.hidden.weight.shape and "out2.weight" not in plain
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert f.metadata()["run"] == "7"
    again = load_compact(Tied(), path)
    assert again.out2.weight is again.out.weight
    for (k, a), (_, b) in zip(again.state_dict().items(), small.state_dict().items()):
        assert torch.equal(a, b), k
    torch.testing.assert_close(again(x), small(x))


def test_load_refuses_another_class_and_files_without_a_record(tmp_path):
    model, x = Tied(), torch.randn(1, 6)
    groups, keep, small = _small(model, x, 4)
    path = tmp_path / "small.safetensors"
    save_compact(small, path, history=pruning_history(groups, keep), input_spec=input_spec(x))
    with pytest.raises(ValueError, match=r"holds a compact .*Tied, but model is a torch.nn.modules.linear.Linear"):
        load_compact(nn.Linear(6, 6), path)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="holds no compact model record"):
        load_compact(Tied(), plain)
    with pytest.raises(ValueError, match="reserved or not strings"):
        save_compact(small, path, history=[], input_spec=input_spec(x), metadata={"torch_lottery.compact": "x"})


def test_load_refuses_weights_that_do_not_fit(tmp_path):
    model, x = Tied(), torch.randn(1, 6)
    groups, keep, small = _small(model, x, 4)
    path = tmp_path / "small.safetensors"
    save_compact(small, path, history=[], input_spec=input_spec(x))  # history does not match the weights
    with pytest.raises(ValueError, match="do not fit the rebuilt model"):
        load_compact(Tied(), path)


torchvision = pytest.importorskip("torchvision")


@pytest.mark.slow
def test_resnet18_compact_file_round_trip(tmp_path):
    torch.manual_seed(0)
    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    groups, keep, small = _small(model, x, 1500)
    path = tmp_path / "r18.safetensors"
    save_compact(small, path, history=pruning_history(groups, keep), input_spec=input_spec(x))
    again = load_compact(torchvision.models.resnet18(num_classes=10).eval(), path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), small(x))
    assert json.loads(json.dumps(read_compact_info(path)))["input_spec"]["tensors"][0]["shape"] == [1, 3, 32, 32]


def test_doctests():
    import doctest

    from torch_lottery import compact_file

    assert doctest.testmod(compact_file).failed == 0
