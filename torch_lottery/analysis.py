"""Comparing masks: survivor overlap and normalized Hamming distance (the early-bird signal)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

__all__ = ["mask_distance", "mask_overlap"]


def _check(a: Mapping[str, Tensor], b: Mapping[str, Tensor], fn: str) -> None:
    if set(a) != set(b):
        raise ValueError(f"{fn}(): the masks cover different tensors: {sorted(set(a) ^ set(b))!r}; compare masks of one model")
    for k in a:
        if a[k].shape != b[k].shape:
            raise ValueError(f"{fn}(): {k!r} has shape {tuple(a[k].shape)} in one mask and {tuple(b[k].shape)} in the other")


def mask_overlap(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Fraction of survivors the two masks share: ``|a & b| / |a | b|`` (Jaccard), 1.0 when equal.

    Example:
        >>> import torch
        >>> mask_overlap({"w": torch.tensor([True, True, False])}, {"w": torch.tensor([True, False, True])})
        0.3333333333333333
    """
    _check(a, b, "mask_overlap")
    both = sum(int(torch.count_nonzero(a[k].bool() & b[k].bool().to(a[k].device))) for k in a)
    either = sum(int(torch.count_nonzero(a[k].bool() | b[k].bool().to(a[k].device))) for k in a)
    return both / either if either else 1.0


def mask_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Normalized Hamming distance: the fraction of entries whose keep/prune decision differs.

    You et al. (2020) stop dense training once this distance between the masks drawn at
    consecutive epochs stays below 0.1: the early-bird ticket has emerged.

    Example:
        >>> import torch
        >>> mask_distance({"w": torch.tensor([True, True, False, False])}, {"w": torch.tensor([True, False, True, False])})
        0.5
    """
    _check(a, b, "mask_distance")
    differ = sum(int(torch.count_nonzero(a[k].bool() != b[k].bool().to(a[k].device))) for k in a)
    total = sum(a[k].numel() for k in a)
    return differ / total if total else 0.0
