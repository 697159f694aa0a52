"""Exact top-k masks of score tensors, per tensor or under one joint threshold, fast enough to run every forward (pure).

``top_k_masks`` keeps the ``k`` highest entries. The threshold is found by selection, not by a
sort: a small strided sample brackets it and one ``torch.kthvalue`` over the few entries in the
bracket gives it exactly (see :func:`_threshold`); only when entries tie at the threshold are the
tied positions listed.
Ties are broken by position exactly as :func:`torch_lottery.selection.prune_lowest` breaks them:
tensors in mapping order, then flat index ascending, the lower position pruned first (so the
higher one kept). Entries outside ``allowed`` are never kept.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Optional, Union

import torch
from torch import Tensor

__all__ = ["keep_counts", "rank_values", "top_k_flat", "top_k_masks"]


def keep_counts(numels: Mapping[str, int], sparsity: float, *, scope: str) -> Union[int, dict[str, int]]:
    """How many entries survive at ``sparsity`` (the fraction pruned): ``round((1 - sparsity) * n)``.

    Args:
        numels: FQN -> number of entries.
        sparsity: fraction pruned, in ``[0, 1)``.
        scope: ``"layer"`` (a count per tensor) or ``"global"`` (one count over all of them).

    Returns:
        ``{fqn: kept}`` for ``scope="layer"``, the total kept (an int) for ``scope="global"``.

    Example:
        >>> keep_counts({"a": 10, "b": 5}, 0.5, scope="layer")
        {'a': 5, 'b': 2}
        >>> keep_counts({"a": 10, "b": 5}, 0.5, scope="global")
        8
    """
    if scope == "global":
        return round((1.0 - sparsity) * sum(numels.values()))
    return {fqn: round((1.0 - sparsity) * n) for fqn, n in numels.items()}


def rank_values(scores: Tensor, blocked: Optional[Tensor] = None, *, out: Optional[Tensor] = None) -> Tensor:
    """The flat values ranked for ``scores``: ``|scores|``, and ``-1`` where ``blocked`` is ``True``.

    Written into ``out`` (1-D, ``scores.numel()`` entries) when given; never into ``scores``.
    """
    flat = scores.detach().reshape(-1)
    if out is None:
        out = flat.abs()
    else:
        torch.abs(flat, out=out)
    if blocked is not None:
        out.masked_fill_(blocked.reshape(-1), -1.0)
    return out


_SAMPLE = 4096  # entries of the strided sample that locates the threshold
_BAND_SD = 5.0  # half-width of the candidate band, in standard deviations of the sample's rank


def _threshold(values: Tensor, k: int) -> Tensor:
    """The ``(n - k)``-th smallest of the 1-D ``values`` (``n - k >= 1``), exactly.

    Large tensors: a strided sample of about :data:`_SAMPLE` entries brackets the threshold
    between two sample values ``lo <= hi`` at +-:data:`_BAND_SD` standard deviations of its
    rank; one ``kthvalue`` over the entries in ``[lo, hi]`` (a few percent of them) then gives
    it exactly. If the bracket misses (the sample was unrepresentative), one ``kthvalue`` over
    everything does. The result is the same either way; only the time differs.
    """
    n = values.numel()
    rank = n - k  # 1-based rank of the threshold from below
    step = n // _SAMPLE
    if step >= 8:
        sample = torch.sort(values[::step]).values
        m = sample.numel()
        p = rank / n
        centre, half = p * m, _BAND_SD * math.sqrt(m * p * (1.0 - p)) + 1.0
        lo_i, hi_i = int(centre - half), int(centre + half)
        if 0 <= lo_i and hi_i < m:
            lo, hi = sample[lo_i], sample[hi_i]
            below_hi = values <= hi
            band = values[below_hi & (values >= lo)]
            below = int(torch.count_nonzero(below_hi)) - band.numel()  # entries < lo
            if below < rank <= below + band.numel():
                return band.kthvalue(rank - below).values
    return values.kthvalue(rank).values


def top_k_flat(values: Tensor, k: int) -> Tensor:
    """Bool mask over the 1-D ``values``: ``True`` at the ``k`` largest, ties kept at the later positions.

    The caller guarantees ``values`` has no NaN (see :func:`top_k_masks`).
    """
    n = values.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    threshold = _threshold(values, k)  # everything above it is kept
    keep = values > threshold
    need = k - int(torch.count_nonzero(keep))
    if need:  # entries equal to the threshold: keep the last ``need`` of them
        ties = (values == threshold).nonzero().view(-1)
        keep[ties[ties.numel() - need :]] = True
    return keep


def _check_no_nan(values: Tensor, fqn: str, fn: str) -> None:
    total = values.sum()  # ranked values are >= -1, so only a NaN entry makes the sum NaN
    if bool(torch.isnan(total)):
        bad = int(torch.isnan(values).sum())
        raise ValueError(
            f"{fn}: scores for {fqn!r} hold {bad} NaN values; lower the learning rate or clip the scores' "
            "gradients. The model is left as it was before the block."
        )


def top_k_masks(
    scores: Mapping[str, Tensor],
    keep: Union[int, Mapping[str, int]],
    *,
    allowed: Optional[Mapping[str, Tensor]] = None,
    fn: str = "top_k_masks()",
) -> dict[str, Tensor]:
    """Masks keeping the ``keep`` entries of highest ``|score|``: per tensor or jointly.

    Args:
        scores: FQN -> score tensor (any shape, floating point).
        keep: an int ranks all tensors jointly (one threshold; ties broken in mapping order,
            then flat index); a mapping ``{fqn: k}`` ranks each tensor on its own.
        allowed: optional FQN -> bool tensor; entries where it is ``False`` are never kept.
            The caller guarantees ``keep`` does not exceed the allowed entries.
        fn: the name used in error messages.

    Returns:
        FQN -> bool mask shaped like the scores, on their device. Inputs are not modified.

    Raises:
        ValueError: NaN scores (naming the tensor).

    Example:
        >>> s = {"a": torch.tensor([0.3, -0.9, 0.1]), "b": torch.tensor([0.5, 0.2])}
        >>> {k: v.tolist() for k, v in top_k_masks(s, {"a": 1, "b": 1}).items()}
        {'a': [False, True, False], 'b': [True, False]}
        >>> {k: v.tolist() for k, v in top_k_masks(s, 2).items()}
        {'a': [False, True, False], 'b': [True, False]}
    """
    blocked = {fqn: ~a.to(torch.bool) for fqn, a in (allowed or {}).items()}
    if isinstance(keep, int):
        if not scores:
            return {}
        device = next(iter(scores.values())).device
        dtype = functools.reduce(torch.promote_types, [s.dtype for s in scores.values()])
        values = torch.empty(sum(s.numel() for s in scores.values()), dtype=dtype, device=device)
        start = 0
        for fqn, s in scores.items():
            part = values[start : start + s.numel()]
            rank_values(s.to(device), blocked.get(fqn), out=part)
            _check_no_nan(part, fqn, fn)
            start += s.numel()
        flat = top_k_flat(values, keep)
        out, start = {}, 0
        for fqn, s in scores.items():
            out[fqn] = flat[start : start + s.numel()].view(s.shape).to(s.device)
            start += s.numel()
        return out
    out = {}
    for fqn, s in scores.items():
        values = rank_values(s, blocked.get(fqn))
        _check_no_nan(values, fqn, fn)
        out[fqn] = top_k_flat(values, keep[fqn]).view(s.shape)
    return out
