"""DTensor shards seen from one rank: is a tensor sharded, its local tensor, wrapping a local tensor, cutting a full one.

Every function takes plain tensors too and then does nothing, so callers need no branch. Only
the layouts a ticket supports are handled: ``Shard(0)`` (``fully_shard``'s default) and
``Replicate()`` on a 1-D device mesh (:func:`torch_lottery.distributed.sharding_mesh` checks).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # torch built without distributed support has no DTensor
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - every torch wheel on PyPI has it
    DTensor = Replicate = Shard = None  # type: ignore[assignment,misc]

__all__ = ["count_true", "is_sharded", "like", "local", "local_piece"]


def is_sharded(tensor: object) -> bool:
    """Whether ``tensor`` is a DTensor (an FSDP2 parameter, its gradient, optimizer state or mask)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensor: Tensor) -> Tensor:
    """This rank's local tensor of a DTensor (the storage FSDP all-gathers from; writes land there), else ``tensor``."""
    if not is_sharded(tensor):
        return tensor
    with torch.no_grad():  # outside autograd to_local() is the DTensor's own local tensor, not a view
        return tensor.to_local()


def like(local_tensor: Tensor, ref: Tensor) -> Tensor:
    """Wrap ``local_tensor`` as a DTensor placed like ``ref`` (same mesh, placements, global shape); ``ref`` plain: as is."""
    if not is_sharded(ref):
        return local_tensor
    return DTensor.from_local(
        local_tensor, ref.device_mesh, ref.placements, run_check=False, shape=ref.shape, stride=ref.stride()
    )


def local_piece(full: Tensor, ref: Tensor) -> Tensor:
    """The part of the full tensor ``full`` that this rank holds of ``ref`` (a view; ``full`` if ``ref`` is plain).

    ``Shard(0)`` splits rows as ``torch.chunk`` does: rank ``r`` holds ``[r * c, r * c + rows_r)``
    with ``c = ceil(rows / world)``; ``Replicate()`` holds everything.
    """
    if not is_sharded(ref):
        return full
    placement = ref.placements[0]
    if isinstance(placement, Replicate):
        return full
    rows, world = int(ref.shape[0]), ref.device_mesh.size()
    per_rank = -(-rows // world)
    start = min(ref.device_mesh.get_local_rank() * per_rank, rows)
    return full.narrow(0, start, int(local(ref).shape[0]))


def count_true(mask: Tensor) -> int:
    """``int(torch.count_nonzero(mask))``, over every shard of a sharded mask (a collective call for DTensors)."""
    if not is_sharded(mask):
        return int(torch.count_nonzero(mask))
    counted = torch.count_nonzero(mask)
    return int(counted.full_tensor()) if is_sharded(counted) else int(counted)
