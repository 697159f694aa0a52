"""top_k_masks: exact counts and the same entries (ties included) as prune_lowest keeps."""

from __future__ import annotations

import pytest
import torch

from torch_lottery.selection import prune_lowest
from torch_lottery.topk import _SAMPLE, keep_counts, top_k_flat, top_k_masks


def sorted_reference(values, k):
    """Keep the last ``k`` entries of a stable ascending sort (ties: the later position kept)."""
    keep = torch.zeros(values.numel(), dtype=torch.bool)
    order = torch.sort(values.double(), stable=True).indices
    keep[order[values.numel() - k :]] = True
    return keep


def reference(scores, keep, allowed=None):
    """prune_lowest on |scores| within ``allowed``: prune everything allowed but the top ``keep``."""
    ranked = {k: v.abs() for k, v in scores.items()}
    alive = {k: (allowed or {}).get(k, torch.ones_like(v, dtype=torch.bool)) for k, v in scores.items()}
    if isinstance(keep, int):
        survivors = sum(int(a.sum()) for a in alive.values())
        return prune_lowest(ranked, alive, survivors - keep)
    return {k: prune_lowest({k: ranked[k]}, {k: alive[k]}, int(alive[k].sum()) - keep[k])[k] for k in scores}


def test_keep_counts_round_the_kept_fraction_of_each_tensor_or_the_total():
    assert keep_counts({"a": 7, "b": 3}, 0.3, scope="layer") == {"a": 5, "b": 2}  # round(4.9), round(2.1)
    assert keep_counts({"a": 7, "b": 3}, 0.3, scope="global") == 7
    assert keep_counts({"a": 7}, 0.0, scope="layer") == {"a": 7}


def test_top_k_flat_keeps_the_later_positions_among_ties():
    values = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5])
    assert top_k_flat(values, 2).tolist() == [False, False, True, True, False]
    assert top_k_flat(values, 4).tolist() == [True, True, True, True, False]
    assert top_k_flat(values, 0).tolist() == [False] * 5
    assert top_k_flat(values, 5).tolist() == [True] * 5


@pytest.mark.parametrize("kind", ["uniform", "integers", "constant", "sorted", "two_values"])
@pytest.mark.parametrize("n", [50, 8 * _SAMPLE + 13])
def test_top_k_flat_matches_prune_lowest_on_hard_distributions(kind, n):
    g = torch.Generator().manual_seed(n)
    values = {
        "uniform": torch.rand(n, generator=g),
        "integers": torch.randint(0, 7, (n,), generator=g).float(),  # huge ties at the threshold
        "constant": torch.full((n,), 0.25),
        "sorted": torch.linspace(0, 1, n),
        "two_values": (torch.rand(n, generator=g) < 0.1).float(),
    }[kind]
    for frac in (0.01, 0.3, 0.5, 0.93):
        k = round(frac * n)
        got = top_k_flat(values, k)
        assert int(got.sum()) == k
        assert torch.equal(got, sorted_reference(values, k))
    if n == 50:  # the sort reference and prune_lowest agree on the tie rule
        assert torch.equal(top_k_flat(values, 20), reference({"w": values}, {"w": 20})["w"])


def test_layer_and_joint_masks_match_prune_lowest_with_allowed_entries():
    g = torch.Generator().manual_seed(0)
    scores = {
        "a": torch.randint(-4, 5, (30, 20), generator=g).float(),
        "b": torch.randn(400, 100, generator=g),
        "c": torch.randint(-2, 3, (7,), generator=g).float(),
    }
    allowed = {"b": torch.rand(400, 100, generator=g) < 0.6, "c": torch.tensor([True] * 5 + [False] * 2)}
    per_layer = {"a": 300, "b": 12000, "c": 3}
    for keep in (per_layer, 13000):
        got = top_k_masks(scores, keep, allowed=allowed)
        want = reference(scores, keep, allowed)
        for k in scores:
            assert torch.equal(got[k], want[k]), k
            assert not (got[k] & ~allowed.get(k, torch.ones_like(got[k]))).any()
        if isinstance(keep, int):
            assert sum(int(m.sum()) for m in got.values()) == keep
        else:
            assert {k: int(m.sum()) for k, m in got.items()} == per_layer


def test_nan_scores_are_an_error_naming_the_tensor():
    scores = {"fc.weight": torch.tensor([1.0, float("nan"), 0.5])}
    with pytest.raises(ValueError, match=r"scores for 'fc.weight' hold 1 NaN"):
        top_k_masks(scores, {"fc.weight": 1})
    with pytest.raises(ValueError, match="NaN"):
        top_k_masks(scores, 1)
