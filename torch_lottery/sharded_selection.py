"""Exact selection of the lowest-scoring survivors over tensors sharded across ranks (pure, behind a communication seam).

Each rank holds, for every tensor, one contiguous piece of its flat (row-major) order: the
pieces of ``Shard(0)`` placements (``fully_shard``'s, and ``torch.chunk``'s split: rank ``r``
holds rows ``[r * c, (r + 1) * c)`` with ``c = ceil(rows / world)``), in rank order, or the
whole tensor, replicated on every rank. The global order of the entries is the one a single
process would use on the full tensors: tensors in order, then flat index ascending, so rank 0's
piece of a tensor comes before rank 1's.

:func:`prune_lowest_sharded` finds the same threshold as :func:`torch_lottery.selection.prune_lowest`
by the same radix passes (16 bits of the key per pass), each rank histogramming only its local
pieces; the 65,536-bin int64 histograms are summed across ranks (one all-reduce of 512 KiB per
pass, 2 passes for float32 scores, 4 for float64). Ties at the threshold are broken positionally
across ranks: each rank counts its surviving entries equal to the threshold in each tensor,
the counts are all-gathered (``world * tensors`` int64) and an exclusive scan in the global order
tells each rank how many ties come before its piece. The masks are bitwise those of one process
on the full tensors. Neither weights nor scores ever leave their rank.

Communication goes through a :class:`Collective`: :class:`torch_lottery.distributed.ProcessGroupCollective`
wraps ``torch.distributed``; the tests also run ranks as threads in one process.
"""

from __future__ import annotations

import operator
from typing import AbstractSet, Mapping, Protocol

import torch
from torch import Tensor

from .selection import _CHUNK, _FLOAT32_EXACT, _find_threshold, _stream

__all__ = ["Collective", "prune_lowest_sharded"]


class Collective(Protocol):
    """The communication a sharded selection needs: a sum and a gather of small int64 CPU tensors."""

    rank: int
    world_size: int

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The elementwise sum of ``tensor`` over all ranks (a new tensor, same shape, int64, CPU)."""

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Every rank's ``tensor`` stacked in rank order: shape ``(world_size, *tensor.shape)``."""


def _survivors(masks: Mapping[str, Tensor], counted: list[str], comm: Collective) -> Tensor:
    """Global survivor count of each tensor (int64 CPU vector in the order of ``masks``)."""
    local = torch.tensor(
        [int(torch.count_nonzero(m)) if k in counted else 0 for k, m in masks.items()], dtype=torch.int64
    )
    return comm.all_reduce_sum(local)


def _validate_sharded(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], n: object, replicated: AbstractSet[str]
) -> int:
    if list(scores) != list(masks):
        raise ValueError(
            f"prune_lowest_sharded(): scores and masks have different keys: {sorted(set(scores) ^ set(masks))!r}; "
            "pass one local mask per local score shard"
        )
    for key, score in scores.items():
        if score.shape != masks[key].shape:
            raise ValueError(
                f"prune_lowest_sharded(): scores[{key!r}] has shape {tuple(score.shape)} but masks[{key!r}] "
                f"has {tuple(masks[key].shape)}; pass the local shards of the same tensor"
            )
    unknown = sorted(set(replicated) - set(scores))
    if unknown:
        raise ValueError(f"prune_lowest_sharded(): replicated={unknown!r} names no scored tensor")
    if isinstance(n, bool):
        raise TypeError(f"prune_lowest_sharded(): n={n!r} is not an integer; pass how many entries to prune")
    try:
        return operator.index(n)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"prune_lowest_sharded(): n={n!r} is not an integer; pass how many entries to prune") from None


def prune_lowest_sharded(
    scores: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    n: int,
    *,
    comm: Collective,
    replicated: AbstractSet[str] = frozenset(),
    chunk: int = _CHUNK,
) -> dict[str, Tensor]:
    """Return this rank's new local masks, the ``n`` globally lowest-scoring survivors switched off.

    A collective call: every rank calls it with its local shards of the same tensors, in the same
    order, and the same ``n``. The result on each rank is its piece of the masks that
    :func:`torch_lottery.selection.prune_lowest` returns on the full tensors (same ties, same
    NaN and ``-0.0`` rules), bitwise.

    Args:
        scores: FQN -> this rank's local shard of the scores (a contiguous piece of the tensor's
            flat order, rank-ordered, as ``Shard(0)`` gives), or the whole tensor for the FQNs in
            ``replicated``.
        masks: FQN -> bool local shard of the current mask, shaped like ``scores[fqn]``.
        n: how many surviving entries to prune globally, ``0 <= n <= survivors``.
        comm: the :class:`Collective` of the ranks sharing the tensors.
        replicated: FQNs held whole on every rank (counted once, as rank 0's piece).
        chunk: entries streamed at a time.

    Returns:
        FQN -> new local bool mask on the device of the local mask. Inputs are not modified.

    Raises:
        ValueError: mismatched keys or shapes, or ``n`` outside ``[0, survivors]`` (raised on
            every rank alike: the checks use global counts).
        TypeError: ``n`` is not an integer.

    Example:
        >>> from torch_lottery.distributed import ProcessGroupCollective
        >>> comm = ProcessGroupCollective()  # without torch.distributed: one rank
        >>> new = prune_lowest_sharded({"w": torch.tensor([2.0, 1.0, 1.0])}, {"w": torch.ones(3, dtype=torch.bool)}, 1, comm=comm)
        >>> new["w"].tolist()
        [True, False, True]
    """
    n = _validate_sharded(scores, masks, n, replicated)
    counted = [k for k in scores if comm.rank == 0 or k not in replicated]
    survivors = int(_survivors(masks, counted, comm).sum())
    if not 0 <= n <= survivors:
        raise ValueError(f"prune_lowest_sharded(): n={n!r} is outside [0, {survivors}] (the surviving entries)")
    if n == 0 or n == survivors:
        keep = n == 0
        return {k: (m.detach().to(torch.bool) & keep).clone() for k, m in masks.items()}
    wide = any(s.dtype not in _FLOAT32_EXACT for s in scores.values())
    nbits = 64 if wide else 32
    threshold, below = _find_threshold(
        {k: scores[k] for k in counted}, {k: masks[k] for k in counted}, n, nbits=nbits, chunk=chunk,
        reduce=comm.all_reduce_sum,
    )
    ties_to_prune = n - below
    offsets = _tie_offsets(scores, masks, counted, threshold, nbits=nbits, chunk=chunk, comm=comm, replicated=replicated)
    new: dict[str, Tensor] = {}
    for key, score in scores.items():
        mask = masks[key]
        out = torch.empty(mask.shape, dtype=torch.bool, device=mask.device)
        out_flat = out.view(-1)
        budget = ties_to_prune - offsets[key]  # ties of this piece still to prune, may be <= 0
        for start, keys, alive in _stream(score, mask, nbits=nbits, chunk=chunk):
            pruned = keys < threshold
            if budget > 0:
                equal = keys == threshold
                if alive is not None:
                    equal &= alive
                rank = equal.cumsum(0)  # int64: position of each tie among this chunk's ties
                pruned |= equal & (rank <= budget)
                budget -= int(rank[-1]) if rank.numel() else 0
            keep = ~pruned
            if alive is not None:
                keep &= alive
            out_flat[start : start + keys.numel()] = keep.to(mask.device)
        new[key] = out
    return new


def _tie_offsets(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], counted: list[str], threshold: int, *,
    nbits: int, chunk: int, comm: Collective, replicated: AbstractSet[str],
) -> dict[str, int]:
    """FQN -> how many surviving entries equal to ``threshold`` precede this rank's piece in the global order.

    One counting pass over the local pieces, one all-gather of ``len(scores)`` int64 per rank, then
    an exclusive scan in tensor-major, rank-minor order. A replicated tensor is rank 0's piece.
    """
    local = torch.zeros(len(scores), dtype=torch.int64)
    for i, key in enumerate(scores):
        if key not in counted:
            continue
        total = 0
        for _, keys, alive in _stream(scores[key], masks[key], nbits=nbits, chunk=chunk):
            equal = keys == threshold
            if alive is not None:
                equal &= alive
            total += int(torch.count_nonzero(equal))
        local[i] = total
    table = comm.all_gather(local)  # (world, tensors)
    flat = table.t().reshape(-1)  # tensor-major, rank-minor: the global order of the pieces
    exclusive = (flat.cumsum(0) - flat).reshape(len(scores), comm.world_size)
    return {
        key: int(exclusive[i, 0 if key in replicated else comm.rank]) for i, key in enumerate(scores)
    }
