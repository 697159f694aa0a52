"""Pure channel selection: hand-computed scores, exact counts, masks and their inverse, refill, controls."""

from __future__ import annotations

import pytest
import torch

from torch_lottery.channel_selection import (
    channel_masks,
    channel_scores,
    channel_sparsity,
    channel_targets,
    channels_from_masks,
    full_keep,
    random_channels,
    refill_channels,
    select_channels,
)
from torch_lottery.channels import ChannelGroup, ChannelSlice


def _r(n):
    return tuple(range(n))


# fc1 (3 -> 3 neurons, bias) feeds fc2 (3 -> 2); fc2's 2 neurons feed fc3 (2 -> 1, the output)
FC1 = ChannelGroup("fc1", 3, (
    ChannelSlice("fc1.weight", 0, _r(3), _r(3), "out"),
    ChannelSlice("fc1.bias", 0, _r(3), _r(3), "out"),
    ChannelSlice("fc2.weight", 1, _r(3), _r(3), "in"),
))
FC2 = ChannelGroup("fc2", 2, (
    ChannelSlice("fc2.weight", 0, _r(2), _r(2), "out"),
    ChannelSlice("fc3.weight", 1, _r(2), _r(2), "in"),
))
OUT = ChannelGroup("fc3", 1, (ChannelSlice("fc3.weight", 0, (0,), (0,), "out"),), "it feeds the model's output")
GROUPS = [FC1, FC2, OUT]
TENSORS = {
    "fc1.weight": torch.tensor([[1.0, -1.0], [0.0, 2.0], [-3.0, 3.0]]),
    "fc1.bias": torch.tensor([100.0, 100.0, 100.0]),  # 1-D: not part of the l1 score
    "fc2.weight": torch.tensor([[1.0, 0.0, 2.0], [-1.0, 4.0, 0.0]]),
    "fc3.weight": torch.tensor([[0.5, -2.0]]),
}
SHAPES = {k: v.shape for k, v in TENSORS.items()}


def test_l1_is_the_mean_magnitude_over_filters_and_reader_columns():
    s = channel_scores(GROUPS, TENSORS)
    # fc1 channel c: row c of fc1.weight (2 entries) and column c of fc2.weight (2 entries)
    assert s["fc1"].tolist() == [(1 + 1 + 1 + 1) / 4, (0 + 2 + 0 + 4) / 4, (3 + 3 + 2 + 0) / 4]
    # fc2 channel c: row c of fc2.weight (3 entries) and column c of fc3.weight (1 entry)
    assert s["fc2"].tolist() == [(1 + 0 + 2 + 0.5) / 4, (1 + 4 + 0 + 2) / 4]
    assert "fc3" not in s and s["fc1"].dtype == torch.float64


def test_l2_is_the_mean_square():
    s = channel_scores(GROUPS, TENSORS, importance="l2")
    assert s["fc1"].tolist() == [(1 + 1 + 1 + 1) / 4, (0 + 4 + 0 + 16) / 4, (9 + 9 + 4 + 0) / 4]


def test_a_callable_importance_and_its_checks():
    s = channel_scores(GROUPS, TENSORS, importance=lambda g, t: torch.arange(g.size, dtype=torch.float32))
    assert s["fc1"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match=r"importance returned torch.Size\(\[2\]\) for group 'fc1'; .* shape \(3,\)"):
        channel_scores(GROUPS, TENSORS, importance=lambda g, t: torch.zeros(2))
    with pytest.raises(ValueError, match="NaN scores for group 'fc1'"):
        channel_scores(GROUPS, TENSORS, importance=lambda g, t: torch.full((g.size,), float("nan")))
    with pytest.raises(ValueError, match=r"importance='l3' is not one of \['l1', 'l2'\]"):
        channel_scores(GROUPS, TENSORS, importance="l3")
    with pytest.raises(ValueError, match=r"tensors is missing \['fc2.weight'"):
        channel_scores(GROUPS, {"fc1.weight": TENSORS["fc1.weight"], "fc1.bias": TENSORS["fc1.bias"]})


def test_global_selection_ranks_all_groups_and_never_empties_one():
    scores = {"a": torch.tensor([5.0, 4.0, 3.0]), "b": torch.tensor([1.0, 0.5])}
    keep = {"a": torch.ones(3, dtype=torch.bool), "b": torch.ones(2, dtype=torch.bool)}
    # the 3 lowest are b1, b0, a2, but b keeps its best: a2, a1 and b1 go
    new = select_channels(scores, keep, 3)
    assert new["a"].tolist() == [True, False, False] and new["b"].tolist() == [True, False]
    assert keep["a"].all()  # inputs untouched
    with pytest.raises(ValueError, match=r"n=4 is outside \[0, 3\]: every group keeps at least one channel"):
        select_channels(scores, keep, 4)


def test_per_group_selection_and_monotone_masks():
    scores = {"a": torch.tensor([5.0, 4.0, 3.0]), "b": torch.tensor([1.0, 0.5])}
    keep = {"a": torch.tensor([True, True, False]), "b": torch.ones(2, dtype=torch.bool)}
    new = select_channels(scores, keep, {"a": 1})
    assert new["a"].tolist() == [True, False, False] and new["b"].tolist() == [True, True]
    with pytest.raises(ValueError, match=r"n=2 is outside \[0, 1\]"):
        select_channels(scores, keep, {"a": 2})
    with pytest.raises(ValueError, match="unknown groups"):
        select_channels(scores, keep, {"c": 1})


def test_ties_remove_the_lower_channel_index_first():
    scores = {"a": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    new = select_channels(scores, {"a": torch.ones(4, dtype=torch.bool)}, 2)
    # the protected best survivor is the first maximum (index 0); then 1 and 2 go
    assert new["a"].tolist() == [True, False, False, True]


def test_channel_masks_remove_rows_columns_and_biases_together():
    keep = {"fc1": torch.tensor([True, False, True]), "fc2": torch.tensor([False, True])}
    masks = channel_masks(GROUPS, keep, SHAPES)
    assert list(masks) == channel_targets(GROUPS) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc3.weight"]
    assert masks["fc1.weight"].tolist() == [[True, True], [False, False], [True, True]]
    assert masks["fc1.bias"].tolist() == [True, False, True]
    # fc2.weight loses column 1 (fc1's channel) and row 0 (its own channel)
    assert masks["fc2.weight"].tolist() == [[False, False, False], [True, False, True]]
    assert masks["fc3.weight"].tolist() == [[False, True]]
    with pytest.raises(ValueError, match=r"keep is missing groups \['fc2'\]"):
        channel_masks(GROUPS, {"fc1": keep["fc1"]}, SHAPES)
    with pytest.raises(ValueError, match=r"keep\['fc1'\] .* pass a bool vector of 3 channels"):
        channel_masks(GROUPS, {**keep, "fc1": torch.ones(2, dtype=torch.bool)}, SHAPES)


def test_channels_from_masks_inverts_channel_masks_and_refuses_unstructured_masks():
    keep = {"fc1": torch.tensor([True, False, True]), "fc2": torch.tensor([False, True])}
    masks = channel_masks(GROUPS, keep, SHAPES)
    back = channels_from_masks(GROUPS, masks)
    assert {k: v.tolist() for k, v in back.items()} == {k: v.tolist() for k, v in keep.items()}
    masks["fc1.weight"][0, 1] = False  # one entry of a kept channel
    with pytest.raises(ValueError, match=r"masks\['fc1.weight'\] is not channel-structured .* refill_channels"):
        channels_from_masks(GROUPS, masks)


def test_channel_sparsity_counts_prunable_channels_only():
    keep = {"fc1": torch.tensor([True, False, False]), "fc2": torch.tensor([True, True])}
    assert channel_sparsity(GROUPS, keep) == pytest.approx(2 / 5)
    assert channel_sparsity(GROUPS, full_keep(GROUPS)) == 0.0


def test_refill_keeps_the_channels_with_most_survivors_at_the_layer_density():
    g = ChannelGroup("conv", 4, (
        ChannelSlice("conv.weight", 0, _r(4), _r(4), "out"),
        ChannelSlice("next.weight", 1, _r(4), _r(4), "in"),  # readers do not count (Chen et al.: rows)
    ))
    m = torch.tensor([
        [[1, 1], [0, 0]],  # 2 survivors
        [[1, 0], [0, 0]],  # 1
        [[1, 1], [1, 0]],  # 3
        [[0, 0], [0, 0]],  # 0
    ]).bool()
    reader = torch.ones(2, 4, dtype=torch.bool)
    keep = refill_channels([g], {"conv.weight": m, "next.weight": reader})
    # density 6/16 -> round(1.5) = 2 channels: the ones with 3 and 2 survivors
    assert keep["conv"].tolist() == [True, False, True, False]
    assert refill_channels([g], {"conv.weight": m}, counts={"conv": 3})["conv"].tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match=r"counts\['conv'\]=0 is outside \[1, 4\]"):
        refill_channels([g], {"conv.weight": m}, counts={"conv": 0})
    with pytest.raises(ValueError, match="counts names unknown groups"):
        refill_channels([g], {"conv.weight": m}, counts={"x": 1})
    # no mask on the producer: the unstructured ticket did not touch it, every channel stays
    assert refill_channels([g], {"next.weight": reader})["conv"].all()


def test_refill_ties_keep_the_lower_index_and_at_least_one_channel():
    g = ChannelGroup("fc", 3, (ChannelSlice("fc.weight", 0, _r(3), _r(3), "out"),))
    m = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]).bool()  # density 2/12 -> 1 channel
    assert refill_channels([g], {"fc.weight": m})["fc"].tolist() == [True, False, False]
    assert refill_channels([g], {"fc.weight": torch.zeros(3, 4, dtype=torch.bool)})["fc"].sum() == 1


def test_random_channels_keep_each_groups_count_and_are_seeded():
    keep = {"a": torch.tensor([True, False, True, False, False, True]), "b": torch.tensor([True, False])}
    r1, r2 = random_channels(keep, seed=5), random_channels(keep, seed=5)
    assert {g: int(v.sum()) for g, v in r1.items()} == {"a": 3, "b": 1}
    assert all(torch.equal(r1[g], r2[g]) for g in keep)
    draws = {tuple(random_channels(keep, seed=s)["a"].tolist()) for s in range(10)}
    assert len(draws) > 1


def test_doctests():
    import doctest

    from torch_lottery import channel_selection

    assert doctest.testmod(channel_selection).failed == 0
