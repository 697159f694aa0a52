"""Pure selection of the lowest-scoring surviving entries across one or many tensors.

``prune_lowest`` finds the exact threshold by radix selection on an order-preserving
integer image of the float scores: each pass streams every tensor in fixed-size chunks
and histograms 16 bits of the key of the surviving entries, narrowing the threshold to
one bucket, until the whole key is known. A last pass writes the masks. No score vector
is ever concatenated, so the extra memory is a few chunks plus one 65,536-bin histogram,
whatever the model size; all counts are int64, so more than ``2**31`` entries in total
are handled.
"""

from __future__ import annotations

import operator
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

__all__ = ["prune_lowest"]

_CHUNK = 1 << 18  # entries per streamed chunk: ~1 MiB of float32 scores
_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS
_DIGIT_MASK = _BINS - 1
# Score dtypes whose values a float32 holds exactly; anything else is compared as float64,
# like the sort-based reference (which converts every score with ``.double()``).
_FLOAT32_EXACT = (torch.float32, torch.float16, torch.bfloat16)


def _validate(scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], n: int) -> tuple[int, int]:
    """Check the arguments of ``prune_lowest``; return ``(n, survivors)`` with ``n`` as int."""
    if list(scores) != list(masks):
        raise ValueError(
            f"prune_lowest(): scores and masks have different keys: {sorted(set(scores) ^ set(masks))!r}; "
            "pass one mask per scored tensor"
        )
    for key, score in scores.items():
        if score.shape != masks[key].shape:
            raise ValueError(
                f"prune_lowest(): scores[{key!r}] has shape {tuple(score.shape)} but masks[{key!r}] "
                f"has {tuple(masks[key].shape)}; they must match"
            )
    if isinstance(n, bool):
        raise TypeError(f"prune_lowest(): n={n!r} is not an integer; pass how many entries to prune")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"prune_lowest(): n={n!r} is not an integer; pass how many entries to prune") from None
    survivors = sum(int(torch.count_nonzero(m)) for m in masks.values())
    if not 0 <= n <= survivors:
        raise ValueError(f"prune_lowest(): n={n!r} is outside [0, {survivors}] (the surviving entries)")
    return n, survivors


def prune_lowest(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], n: int
) -> dict[str, Tensor]:
    """Return new masks with the ``n`` lowest-scoring surviving entries switched off.

    The entries compete jointly across all tensors in ``scores`` (one tensor gives
    layer-wise selection, many give global selection). Ties are broken by position:
    tensors in the iteration order of ``scores``, then flat index ascending; the lower
    position is pruned first. Pruned entries (``False`` in ``masks``) never compete and
    never come back. ``-0.0`` ties with ``0.0``; NaN scores rank above everything and tie
    with each other.

    The selection is exact (the same entries as a stable sort of all surviving scores)
    but streams the tensors in chunks: extra memory stays at a few MiB however large the
    model (a non-contiguous score or mask tensor is first copied, one tensor at a time),
    and it handles more than ``2**31`` entries in total.

    Args:
        scores: FQN -> real-valued tensor of scores (higher is more important).
        masks: FQN -> bool tensor of the same shape, ``True`` where the entry survives.
        n: how many surviving entries to prune, ``0 <= n <= survivors``.

    Returns:
        FQN -> new bool mask, on the device of the input mask. The inputs are not modified.

    Raises:
        ValueError: on mismatched keys or shapes, or ``n`` outside ``[0, survivors]``.
        TypeError: if ``n`` is not an integer.

    Example:
        >>> scores = {"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([1.0, 0.5])}
        >>> masks = {k: torch.ones(2, dtype=torch.bool) for k in scores}
        >>> new = prune_lowest(scores, masks, 2)
        >>> new["a"].tolist(), new["b"].tolist()
        ([True, False], [True, False])
    """
    return _prune_lowest_radix(scores, masks, n, chunk=_CHUNK)


def _prune_lowest_radix(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], n: int, *, chunk: int
) -> dict[str, Tensor]:
    """``prune_lowest`` streaming ``chunk`` entries at a time (tests use tiny chunks)."""
    n, survivors = _validate(scores, masks, n)
    if n == 0 or n == survivors:
        keep = n == 0
        return {k: (m.detach().to(torch.bool) & keep).clone() for k, m in masks.items()}
    wide = any(s.dtype not in _FLOAT32_EXACT for s in scores.values())
    nbits = 64 if wide else 32
    threshold, below = _find_threshold(scores, masks, n, nbits=nbits, chunk=chunk)
    equal_to_prune = n - below
    new: dict[str, Tensor] = {}
    for key, score in scores.items():
        mask = masks[key]
        out = torch.empty(mask.shape, dtype=torch.bool, device=mask.device)
        out_flat = out.view(-1)
        for start, keys, alive in _stream(score, mask, nbits=nbits, chunk=chunk):
            if equal_to_prune > 0:
                pruned = keys < threshold
                equal = keys == threshold
                if alive is not None:
                    equal &= alive
                rank = equal.cumsum(0)  # int64: position of each tie among this chunk's ties
                pruned |= equal & (rank <= equal_to_prune)
                equal_to_prune -= int(rank[-1]) if rank.numel() else 0
                keep = ~pruned
            else:
                keep = keys >= threshold
            if alive is not None:
                keep &= alive
            out_flat[start : start + keys.numel()] = keep.to(mask.device)
        new[key] = out
    return new


def _find_threshold(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], n: int, *, nbits: int, chunk: int,
    reduce: Optional[Callable[[Tensor], Tensor]] = None,
) -> tuple[int, int]:
    """Return ``(t, below)``: the key of the n-th lowest survivor and how many survivors lie below it.

    One streaming pass per 16-bit digit of the key, most significant first; each pass
    counts only the survivors whose higher digits equal the threshold's digits found so far.
    Counts are int64 throughout (histograms, ``cumsum``, Python ints). ``reduce`` (the
    sharded selection's all-reduce) turns each pass's local CPU histogram into the global one.
    """
    key_min, key_max = -(1 << (nbits - 1)), (1 << (nbits - 1)) - 1
    trash = _BINS + 2  # histogram bins: [0, _BINS + 2) for digits and out-of-range, one for the dead
    prefix = 0  # the threshold key's digits above ``shift``, as a signed integer
    below = 0  # survivors whose key is below every key with that prefix
    hists: dict[torch.device, Tensor] = {}
    ones: dict[torch.device, Tensor] = {}
    ones_size = min([chunk] + [max([s.numel() for s in scores.values()] + [1])])
    for level, shift in enumerate(range(nbits - _DIGIT_BITS, -1, -_DIGIT_BITS)):
        for h in hists.values():
            h.zero_()
        if level == 0:
            offset = 0
        else:  # clamp keys into [low, high] so that (key - low) >> shift is the bin
            base = prefix << (shift + _DIGIT_BITS)  # lowest key with the known prefix
            low = max(base - (1 << shift), key_min)  # bin 0 gathers keys below the prefix...
            high = min(base + (1 << (shift + _DIGIT_BITS)), key_max)  # ...the last bin those above
            offset = (base - low) >> shift  # 1, or 0 where no key can lie below ``base``
        for score, mask in zip(scores.values(), masks.values()):
            device = score.device
            if device not in hists:
                hists[device] = torch.zeros(trash + 1, dtype=torch.int64, device=device)
                ones[device] = torch.ones(ones_size, dtype=torch.int64, device=device)
            for _, keys, alive in _stream(score, mask, nbits=nbits, chunk=chunk):
                if level == 0:
                    bins = (keys >> shift) + (_BINS // 2)  # signed top digit -> [0, 65535]
                else:
                    bins = keys.clamp(low, high) - low
                    if shift:
                        bins >>= shift
                if alive is not None:
                    bins = torch.where(alive, bins, trash)
                increments = ones[device]
                if increments.numel() < bins.numel():
                    increments = ones[device] = torch.ones(bins.numel(), dtype=torch.int64, device=device)
                # index_add_ into one preallocated int64 histogram: no per-chunk allocation
                hists[device].index_add_(0, bins, increments[: bins.numel()])
        hist = sum(
            (h[offset : offset + _BINS].cpu() for h in hists.values()), torch.zeros(_BINS, dtype=torch.int64)
        )
        if reduce is not None:
            hist = reduce(hist)
        bucket, before = _select_bucket(hist, n - below)
        below += before
        prefix = bucket - _BINS // 2 if level == 0 else (prefix << _DIGIT_BITS) | bucket
    return prefix, below


def _select_bucket(hist: Tensor, rank: int) -> tuple[int, int]:
    """Return ``(b, before)``: the bucket holding the ``rank``-th lowest entry (1-based) and
    how many entries lie in the buckets before it. ``hist`` is an int64 histogram."""
    if hist.dtype != torch.int64:
        raise TypeError(f"_select_bucket(): hist has dtype {hist.dtype}; counts must be int64")
    cumulative = hist.cumsum(0)
    bucket = int(torch.searchsorted(cumulative, torch.tensor([rank], dtype=torch.int64)))
    before = int(cumulative[bucket - 1]) if bucket > 0 else 0
    return bucket, before


def _stream(score: Tensor, mask: Tensor, *, nbits: int, chunk: int):
    """Yield ``(start, keys, alive)`` for consecutive flat chunks of one tensor.

    ``keys`` is an order-preserving signed integer image of the scores: for floats ``a``,
    ``b``: ``a < b`` iff ``key(a) < key(b)``, ``key(-0.0) == key(0.0)``, and every NaN maps
    to the largest key. For chunks of non-negative, non-NaN floats it is the float bits
    themselves (a view: never write to it). ``alive`` is the bool mask chunk on the scores'
    device, or ``None`` when the whole chunk survives.
    """
    fdtype, idtype = (torch.float64, torch.int64) if nbits == 64 else (torch.float32, torch.int32)
    largest = (1 << (nbits - 1)) - 1
    inf_bits = int(torch.tensor(float("inf"), dtype=fdtype).view(idtype))
    flat_score = score.detach().reshape(-1)
    flat_mask = mask.detach().reshape(-1)
    for start in range(0, flat_score.numel(), chunk):
        values = flat_score[start : start + chunk].to(fdtype)
        bits = values.view(idtype)
        lowest, highest = (int(v) for v in bits.aminmax())
        if lowest >= 0 and highest <= inf_bits:  # +0.0 .. +inf: the bits already sort
            keys = bits
        else:
            magnitude = bits & largest
            keys = torch.where(bits < 0, -magnitude, magnitude)
            nan = values.isnan()
            if bool(nan.any()):
                keys.masked_fill_(nan, largest)
        alive = flat_mask[start : start + chunk].to(values.device, torch.bool)
        if bool(alive.all()):
            alive = None
        yield start, keys, alive


def _prune_lowest_reference(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], n: int
) -> dict[str, Tensor]:
    """Sort-based ``prune_lowest``: the readable reference the streaming version is tested against.

    It concatenates every score as float64 (8+ bytes per entry), so it is for tests only.
    """
    n, _ = _validate(scores, masks, n)
    new = {k: m.detach().clone().to(torch.bool) for k, m in masks.items()}
    if n == 0:
        return new
    flat_scores = torch.cat([scores[k].detach().reshape(-1).double().cpu() for k in scores])
    flat_alive = torch.cat([masks[k].reshape(-1).to(torch.bool).cpu() for k in scores])
    alive_idx = flat_alive.nonzero().squeeze(1)
    order = torch.sort(flat_scores[alive_idx], stable=True).indices[:n]
    chosen = alive_idx[order]
    flat_new = flat_alive.clone()
    flat_new[chosen] = False
    start = 0
    for key, mask in masks.items():
        numel = mask.numel()
        new[key] = flat_new[start : start + numel].reshape(mask.shape).to(mask.device)
        start += numel
    return new
