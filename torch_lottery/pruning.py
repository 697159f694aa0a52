"""One round's masks from trained weights and current masks: score, group, select exactly (pure).

This is the strategy half of a round, ``(trained weights, current masks) -> new masks``, as in
open_lth: it reads tensors and never touches a model. The ticket applies the result through
its mask backend.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .schedule import group_counts, plan_groups
from .scoring import Criterion
from .selection import prune_lowest
from .settings import TicketSettings

__all__ = ["broadcast_masks", "next_masks", "score_weights"]


def score_weights(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    initial: Mapping[str, Tensor],
    criterion: Criterion,
    *,
    name: str,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """Scores of every weight by ``criterion``, checked: finite weights, one score per weight, no NaN among survivors.

    Raises:
        ValueError: NaN or infinite weights, scores of the wrong shape, NaN scores at surviving entries.
    """
    scores: dict[str, Tensor] = {}
    for fqn, w in weights.items():
        if not torch.isfinite(w).all():
            bad = int((~torch.isfinite(w)).sum())
            raise ValueError(
                f"LotteryTicket.prune_(): {fqn!r} has {bad} NaN or infinite weights; "
                "fix the training run (lower the learning rate, clip gradients) before pruning. "
                "Nothing was pruned."
            )
        start = initial.get(fqn)
        # copies: a criterion that edits its inputs in place must not reach the model or theta_0
        s = criterion(fqn, w.clone(), None if start is None else start.clone(), generator)
        if not isinstance(s, Tensor) or s.shape != w.shape:
            raise ValueError(
                f"LotteryTicket.prune_(): criterion={name!r} returned "
                f"{getattr(s, 'shape', type(s).__name__)} for {fqn!r} of shape {tuple(w.shape)}; "
                "return one score per weight"
            )
        if torch.isnan(s).any() and torch.isnan(s[masks[fqn]]).any():  # cheap check first
            raise ValueError(f"LotteryTicket.prune_(): criterion={name!r} returned NaN scores for {fqn!r}")
        scores[fqn] = s
    return scores


def next_masks(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], settings: TicketSettings, *, done: int
) -> dict[str, Tensor]:
    """The masks of round ``done + 1``: each schedule group loses its count of lowest-scoring survivors.

    ``settings`` must be resolved onto the keys of ``masks`` (:meth:`TicketSettings.resolve`).
    Keys come back in the order of ``masks``; pruned entries never come back.
    """
    fqns = list(masks)
    groups = plan_groups(fqns, settings)
    survivors = {f: int(torch.count_nonzero(m)) for f, m in masks.items()}
    numel = {f: m.numel() for f, m in masks.items()}
    counts = group_counts(groups, survivors, numel, done=done, rounds=settings.rounds)
    new: dict[str, Tensor] = {}
    for group, n in zip(groups, counts):
        new.update(prune_lowest({f: scores[f] for f in group.fqns}, {f: masks[f] for f in group.fqns}, n))
    return {f: new[f] for f in fqns}


def broadcast_masks(masks: Mapping[str, Tensor], *, src: int = 0) -> dict[str, Tensor]:
    """Under ``torch.distributed`` with several ranks, every rank gets rank ``src``'s masks; else ``masks``."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return dict(masks)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = {}
    for fqn, mask in masks.items():
        buf = mask.to(device=device, dtype=torch.uint8)
        dist.broadcast(buf, src=src)
        out[fqn] = buf.to(device=mask.device, dtype=torch.bool)
    return out
