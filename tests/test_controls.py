"""Control experiments: random masks with a ticket's counts, fresh initialization."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from torch_lottery import fresh_init, random_masks_like
from torch_lottery.backends import BACKENDS, make_backend
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


class _LinearAndRaw(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.table = nn.Parameter(torch.arange(12.0).reshape(3, 4) - 5.5)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_fresh_init_of_a_masked_model_draws_what_the_unmasked_model_draws(backend):
    torch.manual_seed(0)
    model = _LinearAndRaw()
    dense = copy.deepcopy(model)
    targets = find_targets(model, ["fc.weight", "table"])
    masks = {"fc.weight": torch.rand(3, 4) > 0.5, "table": torch.arange(12).reshape(3, 4) % 3 != 0}
    b = make_backend(backend, model)
    for t in targets:
        b.apply_(t, masks[t.fqn])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # the unmasked model holding the Parameters' current values (raw under prune, zeros baked in otherwise)
    with torch.no_grad():
        for t in targets:
            dense.get_parameter(t.fqn).copy_(b.parameter(t))
    new = fresh_init(model, targets, seed=3)
    want = fresh_init(dense, find_targets(dense, ["fc.weight", "table"]), seed=3)
    assert set(new) == {"fc.weight", "table"}
    for fqn in new:
        assert torch.equal(new[fqn], want[fqn]), fqn
    assert not torch.equal(new["fc.weight"], dense.fc.weight)  # a new draw, from the layer's initializer
    table = next(t for t in targets if t.fqn == "table")
    assert sorted(new["table"].flatten().tolist()) == sorted(b.parameter(table).flatten().tolist())
    for key, value in model.state_dict().items():  # the masked model is untouched, masks in force
        assert torch.equal(value, before[key]), key
    for t in targets:
        assert b.is_masked(t) and torch.equal(b.mask(t), masks[t.fqn])


def test_fresh_init_of_a_model_pruned_by_torch_prune_uses_the_layer_initializer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4))
    dense = copy.deepcopy(model)
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    new = fresh_init(model, find_targets(model), seed=2)["0.weight"]
    assert torch.equal(new, fresh_init(dense, find_targets(dense), seed=2)["0.weight"])
    assert isinstance(model[0].weight_orig, nn.Parameter) and "weight_mask" in model[0]._buffers
