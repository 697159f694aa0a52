"""Control experiments: random masks with a ticket's counts, fresh initialization."""

import pytest
import torch
from torch import nn

from torch_lottery import fresh_init, random_masks_like
from torch_lottery.targets import find_targets


def test_random_masks_keep_counts_shapes_and_are_seeded():
    masks = {"a": torch.rand(5, 7) > 0.6, "b": torch.zeros(3, dtype=torch.bool), "c": torch.ones(2, 2, dtype=torch.bool)}
    out = random_masks_like(masks, seed=4)
    for k in masks:
        assert out[k].shape == masks[k].shape and out[k].dtype == torch.bool
        assert int(out[k].sum()) == int(masks[k].sum())
    again = random_masks_like(masks, seed=4)
    assert all(torch.equal(out[k], again[k]) for k in masks)
    other = random_masks_like(masks, seed=5)
    assert not torch.equal(out["a"], other["a"])


def test_random_masks_reject_float_masks():
    with pytest.raises(TypeError, match=r"masks\['w'\] has dtype torch.float32; pass bool masks"):
        random_masks_like({"w": torch.ones(3)})


def test_fresh_init_does_not_touch_the_model_and_uses_the_layer_initializer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.MultiheadAttention(6, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    targets = find_targets(model)
    new = fresh_init(model, targets, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the user's RNG stream is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    conv = new["0.weight"]
    bound = 1 / (2 * 3 * 3) ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 18
    assert conv.abs().max() <= bound and not torch.equal(conv, before["0.weight"])
    assert new["2.in_proj_weight"].shape == (18, 6)
    assert torch.equal(fresh_init(model, targets, seed=1)["0.weight"], conv)


def test_fresh_init_of_a_raw_parameter_permutes_its_values():
    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.arange(12.0).reshape(3, 4))

    model = Raw()
    new = fresh_init(model, find_targets(model, ["table"]), seed=0)["table"]
    assert sorted(new.flatten().tolist()) == list(range(12))
    assert not torch.equal(new, model.table)
