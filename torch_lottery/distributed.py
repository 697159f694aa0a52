"""Tickets of FSDP2-sharded models: DTensor shards, the process-group seam and one round's masks computed shard by shard.

``torch.distributed.fsdp.fully_shard`` turns each parameter into a DTensor placed ``Shard(0)`` on
a 1-D device mesh: every rank stores one block of rows. A ticket over such a model keeps
everything per shard: masks are DTensors with their weight's placements (each rank stores and
multiplies only its local block), snapshots hold each rank's local blocks, and a round's masks
come from :func:`~torch_lottery.sharded_selection.prune_lowest_sharded`, which exchanges
histograms and tie counts, never weights or scores. The masks are bitwise those of one process
on the full weights (for elementwise criteria: all built-in ones).

The per-tensor helpers (a DTensor's local tensor, wrapping, cutting a full tensor) are in
:mod:`torch_lottery.shards`, which the backends and stores use too.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from .schedule import group_counts, plan_groups
from .scoring import Criterion
from .scoring import random as random_criterion
from .settings import TicketSettings
from .sharded_selection import prune_lowest_sharded

from .shards import Replicate, Shard, is_sharded, like, local, local_piece

__all__ = ["ProcessGroupCollective", "sharded_next_masks", "sharding_mesh"]

logger = logging.getLogger(__name__)


def _check_layout(fqn: str, tensor: Tensor, fn: str) -> None:
    mesh = tensor.device_mesh
    if mesh.ndim != 1 or not isinstance(tensor.placements[0], (Shard, Replicate)) or (
        isinstance(tensor.placements[0], Shard) and tensor.placements[0].dim != 0
    ):
        raise ValueError(
            f"{fn}: {fqn!r} is a DTensor placed {tensor.placements} on a {mesh.ndim}-D mesh; tickets support "
            "fully_shard's default layout (Shard(0) on a 1-D mesh) and Replicate(); shard it with "
            "fully_shard(module) without shard_placement_fn, on a 1-D mesh"
        )


def sharding_mesh(tensors: Mapping[str, Tensor], *, fn: str = "LotteryTicket()") -> Optional[Any]:
    """The one device mesh the DTensors among ``tensors`` live on, or ``None`` if none is a DTensor.

    Raises:
        ValueError: DTensors mixed with plain tensors, DTensors on different meshes, or a
            placement other than ``Shard(0)`` / ``Replicate()`` on a 1-D mesh.
    """
    sharded = {k: t for k, t in tensors.items() if is_sharded(t)}
    if not sharded:
        return None
    plain = [k for k in tensors if k not in sharded]
    if plain:
        raise ValueError(
            f"{fn}: {plain[0]!r} is a plain tensor but {next(iter(sharded))!r} is an FSDP2 DTensor; a ticket "
            "ranks all its targets together, so shard them all: call fully_shard(model) on the root module "
            "too (or exclude the plain ones with exclude=[...])"
        )
    mesh = None
    for fqn, t in sharded.items():
        _check_layout(fqn, t, fn)
        if mesh is None:
            mesh = t.device_mesh
        elif t.device_mesh != mesh:
            raise ValueError(f"{fn}: {fqn!r} lives on another device mesh than the other targets; use one mesh")
    return mesh


class ProcessGroupCollective:
    """The :class:`~torch_lottery.sharded_selection.Collective` of a ``torch.distributed`` process group.

    Without an initialized process group it is a single rank. With NCCL the small count
    tensors travel through the current CUDA device.

    Args:
        group: the process group (the device mesh's, for FSDP2 tensors); ``None`` for the default.
    """

    def __init__(self, group: Any = None) -> None:
        dist = torch.distributed
        self.group = group
        self._on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if self._on else 0
        self.world_size = dist.get_world_size(group) if self._on else 1
        self._device = torch.device("cpu")
        if self._on and "nccl" in str(dist.get_backend(group)):
            self._device = torch.device("cuda", torch.cuda.current_device())

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        if self.world_size == 1:
            return tensor.clone()
        buf = tensor.to(self._device, copy=True)
        torch.distributed.all_reduce(buf, group=self.group)
        return buf.cpu()

    def all_gather(self, tensor: Tensor) -> Tensor:
        if self.world_size == 1:
            return tensor.unsqueeze(0).clone()
        buf = tensor.to(self._device).contiguous()
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, buf, group=self.group)
        return torch.stack(out).cpu()


def _score_locally(
    fqn: str, weight: Tensor, initial: Optional[Tensor], criterion: Criterion, generator: torch.Generator
) -> Tensor:
    """The criterion on this rank's shard; the built-in random scores are drawn full-size and cut, as one process draws them."""
    if criterion is random_criterion:
        shaped = torch.empty((), dtype=weight.dtype).expand(weight.shape)  # the shape, no memory
        return local_piece(criterion(fqn, shaped, None, generator), weight).to(local(weight).device)
    w = local(weight).clone()  # copies: a criterion that edits its inputs must not reach the model or theta_0
    start = None if initial is None else local(initial).clone()
    return criterion(fqn, w, start, generator)


def sharded_next_masks(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    initial: Mapping[str, Tensor],
    criterion: Criterion,
    settings: TicketSettings,
    *,
    done: int,
    name: str,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """The masks of round ``done + 1`` of a sharded ticket, as DTensors placed like ``weights`` (collective).

    The sharded counterpart of :func:`torch_lottery.pruning.score_weights` followed by
    :func:`torch_lottery.pruning.next_masks`: every rank scores its local shards, the schedule's
    counts come from global survivor counts, and each group is selected by
    :func:`~torch_lottery.sharded_selection.prune_lowest_sharded`. Checks that fail on one rank
    (NaN weights, NaN scores) are agreed on first, so every rank raises the same error.

    Raises:
        ValueError: NaN or infinite weights, scores of the wrong shape, NaN scores at survivors.
    """
    fqns = list(masks)
    mesh = sharding_mesh(dict(weights), fn="LotteryTicket.prune_()")
    comm = ProcessGroupCollective(None if mesh is None else mesh.get_group())
    replicated = {f for f in fqns if is_sharded(weights[f]) and isinstance(weights[f].placements[0], Replicate)}
    counted = [f for f in fqns if comm.rank == 0 or f not in replicated]
    local_masks = {f: local(masks[f]).to(torch.bool) for f in fqns}
    bad = torch.tensor(
        [int((~torch.isfinite(local(weights[f]))).sum()) if f in counted else 0 for f in fqns], dtype=torch.int64
    )
    bad = comm.all_reduce_sum(bad)
    for f, count in zip(fqns, bad.tolist()):
        if count:
            raise ValueError(
                f"LotteryTicket.prune_(): {f!r} has {count} NaN or infinite weights; fix the training run (lower "
                "the learning rate, clip gradients) before pruning. Nothing was pruned."
            )
    scores: dict[str, Tensor] = {}
    problems = torch.zeros(2, len(fqns), dtype=torch.int64)  # ranks with [wrong shape, NaN at survivors]
    for i, f in enumerate(fqns):
        s = _score_locally(f, weights[f], initial.get(f), criterion, generator)
        if not isinstance(s, Tensor) or s.shape != local_masks[f].shape:
            problems[0, i] = 1
            continue
        if bool(torch.isnan(s[local_masks[f]]).any()):
            problems[1, i] = 1
        scores[f] = s
    problems = comm.all_reduce_sum(problems)
    for i, f in enumerate(fqns):
        if problems[0, i]:
            raise ValueError(
                f"LotteryTicket.prune_(): criterion={name!r} returned scores of the wrong shape for {f!r} (local "
                f"shard {tuple(local_masks[f].shape)}); return one score per weight of the shard it is given"
            )
        if problems[1, i]:
            raise ValueError(f"LotteryTicket.prune_(): criterion={name!r} returned NaN scores for {f!r}")
    survivors_local = torch.tensor([int(torch.count_nonzero(local_masks[f])) if f in counted else 0 for f in fqns])
    survivors = dict(zip(fqns, comm.all_reduce_sum(survivors_local).tolist()))
    numel = {f: masks[f].numel() for f in fqns}
    groups = plan_groups(fqns, settings)
    counts = group_counts(groups, survivors, numel, done=done, rounds=settings.rounds)
    new: dict[str, Tensor] = {}
    for group, n in zip(groups, counts):
        new.update(
            prune_lowest_sharded(
                {f: scores[f] for f in group.fqns}, {f: local_masks[f] for f in group.fqns}, n,
                comm=comm, replicated=replicated & set(group.fqns),
            )
        )
    return {f: like(new[f], weights[f]) for f in fqns}
