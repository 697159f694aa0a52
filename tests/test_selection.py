"""Tests for torch_lottery.selection: exact, streaming joint selection of the lowest survivors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from torch_lottery.selection import (
    _find_threshold,
    _prune_lowest_radix,
    _prune_lowest_reference,
    _select_bucket,
    _stream,
    prune_lowest,
)

INF = math.inf
NAN = math.nan


def _t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def _b(values):
    return torch.tensor(values, dtype=torch.bool)


def _ones(scores):
    return {k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()}


def _lists(masks):
    return {k: v.tolist() for k, v in masks.items()}


IMPLEMENTATIONS = [
    pytest.param(prune_lowest, id="prune_lowest"),
    pytest.param(lambda s, m, n: _prune_lowest_radix(s, m, n, chunk=1), id="chunk1"),
    pytest.param(lambda s, m, n: _prune_lowest_radix(s, m, n, chunk=2), id="chunk2"),
    pytest.param(_prune_lowest_reference, id="reference"),
]


# ----------------------------------------------------------------- hand-computed cases
@pytest.mark.parametrize("select", IMPLEMENTATIONS)
def test_ties_across_tensors_prune_earlier_tensor_first(select):
    scores = {"a": _t([1.0, 2.0]), "b": _t([1.0, 0.5])}
    new = select(scores, _ones(scores), 2)  # 0.5 (b[1]), then the first of the two 1.0s (a[0])
    assert _lists(new) == {"a": [False, True], "b": [True, False]}


@pytest.mark.parametrize("select", IMPLEMENTATIONS)
def test_ties_inside_a_tensor_prune_lower_flat_index_first(select):
    scores = {"a": _t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])}
    new = select(scores, _ones(scores), 4)  # 0.0 at flat 5, then flat 0, 1, 2
    assert _lists(new) == {"a": [[False, False, False], [True, True, False]]}


@pytest.mark.parametrize("select", IMPLEMENTATIONS)
def test_n_zero_returns_copies_of_the_masks(select):
    scores = {"a": _t([3.0, 1.0, 2.0])}
    masks = {"a": _b([True, False, True])}
    new = select(scores, masks, 0)
    assert _lists(new) == {"a": [True, False, True]}
    new["a"][0] = False
    assert masks["a"].tolist() == [True, False, True]


@pytest.mark.parametrize("select", IMPLEMENTATIONS)
def test_n_equal_to_survivors_prunes_everything(select):
    scores = {"a": _t([3.0, 1.0]), "b": _t([[2.0], [5.0]])}
    masks = {"a": _b([True, False]), "b": _b([[True], [True]])}
    new = select(scores, masks, 3)
    assert _lists(new) == {"a": [False, False], "b": [[False], [False]]}


@pytest.mark.parametrize("select", IMPLEMENTATIONS)
def test_already_pruned_entries_are_never_chosen(select):
    scores = {"a": _t([0.0, 5.0, 1.0]), "b": _t([-7.0, 4.0])}
    masks = {"a": _b([False, True, True]), "b": _b([False, True])}
    new = select(scores, masks, 2)  # survivors 5.0, 1.0, 4.0 -> prune 1.0 and 4.0
    assert _lists(new) == {"a": [False, True, False], "b": [False, False]}


@pytest.mark.parametrize("select", IMPLEMENTATIONS)
def test_negative_scores_and_infinities_are_ordered(select):
    scores = {"a": _t([-1.0, -INF, 2.0, INF, -3.0])}
    new = select(scores, _ones(scores), 3)  # -inf, -3, -1
    assert _lists(new) == {"a": [False, False, True, True, False]}


@pytest.mark.parametrize("select", IMPLEMENTATIONS)
def test_negative_zero_ties_with_zero(select):
    scores = {"a": _t([0.0, 1.0]), "b": _t([-0.0])}
    new = select(scores, _ones(scores), 1)  # 0.0 and -0.0 tie: the earlier tensor goes
    assert _lists(new) == {"a": [False, True], "b": [True]}


@pytest.mark.parametrize("select", IMPLEMENTATIONS)
def test_nan_scores_rank_above_infinity_and_tie_with_each_other(select):
    scores = {"a": _t([NAN, INF, 1.0]), "b": _t([-NAN, 0.0])}
    assert _lists(select(scores, _ones(scores), 3)) == {"a": [True, False, False], "b": [True, False]}
    assert _lists(select(scores, _ones(scores), 4)) == {"a": [False, False, False], "b": [True, False]}


@pytest.mark.parametrize("select", IMPLEMENTATIONS)
def test_mixed_dtypes_compare_by_value(select):
    scores = {"h": _t([0.5, 3.0], torch.float16), "d": _t([0.25, 1.0 + 1e-12], torch.float64),
              "i": torch.tensor([1, 2])}
    new = select(scores, _ones(scores), 4)  # 0.25, 0.5, 1 (int), 1+1e-12
    assert _lists(new) == {"h": [False, True], "d": [False, False], "i": [False, True]}


def test_ties_spanning_chunk_boundaries_take_the_first_in_order():
    scores = {"a": _t([1.0] * 5), "b": _t([1.0] * 4)}
    new = _prune_lowest_radix(scores, _ones(scores), 7, chunk=2)
    assert _lists(new) == {"a": [False] * 5, "b": [False, False, True, True]}


def test_empty_tensors_and_empty_dict_are_allowed():
    scores = {"e": torch.empty(0, 3), "a": _t([2.0, 1.0])}
    new = prune_lowest(scores, _ones(scores), 1)
    assert new["e"].shape == (0, 3) and new["a"].tolist() == [True, False]
    assert prune_lowest({}, {}, 0) == {}


def test_inputs_are_not_modified_and_result_is_bool_on_the_mask_device():
    scores = {"a": _t([2.0, 1.0, 3.0])}
    masks = {"a": torch.tensor([1.0, 1.0, 0.0])}  # a float mask counts as its nonzero entries
    new = prune_lowest(scores, masks, 1)
    assert new["a"].dtype == torch.bool and new["a"].device == masks["a"].device
    assert new["a"].tolist() == [True, False, False]
    assert masks["a"].tolist() == [1.0, 1.0, 0.0] and scores["a"].tolist() == [2.0, 1.0, 3.0]


def test_non_contiguous_scores_follow_their_logical_order():
    base = _t([[4.0, 1.0], [1.0, 3.0]])
    scores = {"a": base.t()}  # logical [[4, 1], [1, 3]] transposed -> [[4, 1], [1, 3]].t()
    new = prune_lowest(scores, _ones(scores), 1)
    expected = _prune_lowest_reference(scores, _ones(scores), 1)
    assert _lists(new) == _lists(expected) == {"a": [[True, False], [True, True]]}


# ------------------------------------------------------------------ fuzz vs reference
_VALUES = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-30, -1e-30, 3.0e38, INF, -INF])
_DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


@st.composite
def _problems(draw):
    scores, masks = {}, {}
    for i in range(draw(st.integers(1, 4))):
        numel = draw(st.integers(0, 12))
        if draw(st.booleans()):
            values = draw(st.lists(_VALUES, min_size=numel, max_size=numel))
        else:
            values = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=numel, max_size=numel))
        scores[f"t{i}"] = torch.tensor(values, dtype=torch.float64).to(draw(_DTYPES))
        masks[f"t{i}"] = torch.tensor(draw(st.lists(st.booleans(), min_size=numel, max_size=numel)), dtype=torch.bool)
    survivors = sum(int(m.sum()) for m in masks.values())
    return scores, masks, draw(st.integers(0, survivors)), draw(st.integers(1, 8))


@settings(max_examples=60, deadline=None)
@given(_problems())
def test_streaming_selection_matches_the_sort_reference(problem):
    scores, masks, n, chunk = problem
    expected = _prune_lowest_reference(scores, masks, n)
    for got in (_prune_lowest_radix(scores, masks, n, chunk=chunk), prune_lowest(scores, masks, n)):
        assert list(got) == list(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), key
        pruned = sum(int((masks[k] & ~got[k]).sum()) for k in masks)
        assert pruned == n and all(not bool((got[k] & ~masks[k]).any()) for k in masks)


def test_larger_random_model_matches_reference_with_many_ties():
    gen = torch.Generator().manual_seed(0)
    scores = {f"l{i}": torch.randint(0, 50, (300 + 7 * i,), generator=gen).float() for i in range(6)}
    masks = {k: torch.rand(v.shape, generator=gen) < 0.7 for k, v in scores.items()}
    survivors = sum(int(m.sum()) for m in masks.values())
    for n in (1, survivors // 3, survivors - 1):
        expected = _prune_lowest_reference(scores, masks, n)
        got = _prune_lowest_radix(scores, masks, n, chunk=64)
        assert all(torch.equal(got[k], expected[k]) for k in scores)


# -------------------------------------------------- agreement with torch.nn.utils.prune
def test_matches_prune_global_unstructured_on_distinct_scores_over_two_rounds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Conv1d(4, 3, 2))
    layers = [model[0], model[2], model[3]]
    names = ["0.weight", "2.weight", "3.weight"]
    # distinct non-negative scores (L1Unstructured ranks by |score|), shuffled across layers
    total = sum(m.weight.numel() for m in layers)
    values = torch.randperm(total, generator=torch.Generator().manual_seed(1)).double() + 1
    scores, start = {}, 0
    for name, layer in zip(names, layers):
        scores[name] = values[start : start + layer.weight.numel()].reshape(layer.weight.shape)
        start += layer.weight.numel()
    ours = _ones(scores)
    for n in (40, 25):
        prune.global_unstructured(
            [(layer, "weight") for layer in layers],
            pruning_method=prune.L1Unstructured,
            importance_scores={(layer, "weight"): scores[name] for name, layer in zip(names, layers)},
            amount=n,
        )
        ours = prune_lowest(scores, ours, n)
        for name, layer in zip(names, layers):
            assert torch.equal(ours[name], layer.weight_mask.bool()), name
    assert sum(int(m.sum()) for m in ours.values()) == total - 65


# --------------------------------------------------------------------------- errors
def test_mismatched_keys_raise():
    with pytest.raises(ValueError, match=r"prune_lowest\(\): scores and masks have different keys: \['b'\]"):
        prune_lowest({"a": _t([1.0])}, {"a": _b([True]), "b": _b([True])}, 0)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match=r"scores\['a'\] has shape \(2,\) but masks\['a'\] has \(1, 2\)"):
        prune_lowest({"a": _t([1.0, 2.0])}, {"a": _b([[True, True]])}, 1)


@pytest.mark.parametrize("n", [-1, 3])
def test_n_outside_survivors_raises(n):
    scores = {"a": _t([1.0, 2.0, 3.0])}
    masks = {"a": _b([True, False, True])}
    with pytest.raises(ValueError, match=rf"prune_lowest\(\): n={n} is outside \[0, 2\]"):
        prune_lowest(scores, masks, n)


@pytest.mark.parametrize("n", [1.0, True, "1"])
def test_non_integer_n_raises_type_error(n):
    with pytest.raises(TypeError, match=r"prune_lowest\(\): n=.* is not an integer"):
        prune_lowest({"a": _t([1.0, 2.0])}, {"a": _b([True, True])}, n)


def test_errors_leave_inputs_untouched_and_reference_raises_the_same():
    masks = {"a": _b([True, True])}
    with pytest.raises(ValueError, match=r"n=5 is outside"):
        _prune_lowest_reference({"a": _t([1.0, 2.0])}, masks, 5)
    assert masks["a"].tolist() == [True, True]


# ---------------------------------------------------------------- keys and big counts
@pytest.mark.parametrize("dtype,nbits", [(torch.float32, 32), (torch.float64, 64)])
def test_keys_preserve_float_order(dtype, nbits):
    tiny = torch.finfo(dtype).tiny / 4  # a subnormal
    values = _t([-INF, -3.0e38, -1.0, -tiny, -0.0, 0.0, tiny, 1.0, 3.0e38, INF, NAN, -NAN], dtype)
    [(start, keys, alive)] = list(_stream(values, torch.ones(12, dtype=torch.bool), nbits=nbits, chunk=64))
    assert start == 0 and keys.dtype == (torch.int32 if nbits == 32 else torch.int64)
    k = keys.tolist()
    assert k[:4] == sorted(k[:4]) and len(set(k[:4])) == 4
    assert k[3] < k[4] == k[5] < k[6] < k[7] < k[8] < k[9] < k[10] == k[11]


def test_select_bucket_handles_counts_beyond_int32():
    hist = torch.zeros(1 << 16, dtype=torch.int64)
    hist[3] = 3_000_000_000
    hist[7] = 2_500_000_000
    hist[9] = 1
    assert _select_bucket(hist, 1) == (3, 0)
    assert _select_bucket(hist, 3_000_000_000) == (3, 0)
    assert _select_bucket(hist, 3_000_000_001) == (7, 3_000_000_000)
    assert _select_bucket(hist, 5_500_000_001) == (9, 5_500_000_000)


def test_select_bucket_refuses_int32_counts():
    with pytest.raises(TypeError, match=r"counts must be int64"):
        _select_bucket(torch.ones(4, dtype=torch.int32), 1)


def test_find_threshold_counts_in_int64_and_returns_python_ints():
    scores = {"a": _t([5.0, 1.0, 3.0, 3.0]), "b": _t([2.0, 3.0])}
    threshold, below = _find_threshold(scores, _ones(scores), 4, nbits=32, chunk=2)
    assert isinstance(threshold, int) and isinstance(below, int)
    assert threshold == _t([3.0]).view(torch.int32).item() and below == 2  # 1.0, 2.0 lie below 3.0
