"""Pure selection of the lowest-scoring surviving entries across one or many tensors."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

__all__ = ["prune_lowest"]


def prune_lowest(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], n: int
) -> dict[str, Tensor]:
    """Return new masks with the ``n`` lowest-scoring surviving entries switched off.

    The entries compete jointly across all tensors in ``scores`` (one tensor gives
    layer-wise selection, many give global selection). Ties are broken by position:
    tensors in the iteration order of ``scores``, then flat index ascending; the lower
    position is pruned first. Pruned entries (``False`` in ``masks``) never compete and
    never come back.

    Args:
        scores: FQN -> floating tensor of scores (higher is more important).
        masks: FQN -> bool tensor of the same shape, ``True`` where the entry survives.
        n: how many surviving entries to prune, ``0 <= n <= survivors``.

    Returns:
        FQN -> new bool mask. The inputs are not modified.

    Raises:
        ValueError: on mismatched keys or shapes, or ``n`` outside ``[0, survivors]``.
    """
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
    survivors = sum(int(m.sum()) for m in masks.values())
    if not 0 <= n <= survivors:
        raise ValueError(f"prune_lowest(): n={n!r} is outside [0, {survivors}] (the surviving entries)")
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
