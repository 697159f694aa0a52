"""Files of sharded tickets: one ticket file streamed through rank 0, and per-rank resumable state.

:func:`save_sharded_ticket` writes the same ticket file as :func:`torch_lottery.save_ticket` on
one process (it loads into an unsharded model with :func:`torch_lottery.load_ticket`). Tensor by
tensor, rank 0 gathers the local shards (``torch.distributed.gather``, the other ranks send
theirs), encodes the full tensor (bit-packed mask, survivors only) and spools it to a temporary
file, so no rank ever holds more than one full tensor; the ticket file is then written from the
spool, atomically. :func:`torch_lottery.load_ticket` loads a ticket file into a sharded model:
every rank reads the file and keeps its own shards.

:func:`save_ticket_state` / :func:`load_ticket_state` keep the ticket's resumable state
(``ticket.state_dict()``: masks, rewind point, optimizer state at the rewind point, round,
history) as one ``rank<r>.pt`` file per rank holding only that rank's shards: a restart with the
same world size resumes from it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from .files import read_safetensors, write_safetensors_streaming
from .shards import Replicate, is_sharded, like, local
from .summary import mask_rows

__all__ = ["load_ticket_state", "save_sharded_ticket", "save_ticket_state"]

logger = logging.getLogger(__name__)

PathLike = os.PathLike | str
_LOCAL = "__local_shard__"  # marks a DTensor's local tensor in a per-rank state file


def _group_of(tensor: Tensor) -> Any:
    return tensor.device_mesh.get_group() if is_sharded(tensor) else None


def gather_to_rank0(tensor: Tensor) -> Optional[Tensor]:
    """The full tensor of a ``Shard(0)`` DTensor on rank 0 (``None`` on the others); collective.

    Replicated and plain tensors need no communication: rank 0 uses its own copy. Each rank sends
    its local rows padded to ``ceil(rows / world)``, as ``torch.distributed.gather`` wants equal sizes.
    """
    dist = torch.distributed
    rank = dist.get_rank() if dist.is_initialized() else 0
    if not is_sharded(tensor) or isinstance(tensor.placements[0], Replicate):
        return local(tensor).detach().cpu() if rank == 0 else None
    group = _group_of(tensor)
    world = dist.get_world_size(group)
    rows = int(tensor.shape[0])
    per = -(-rows // world)
    mine = local(tensor).detach()
    padded = mine.new_zeros((per, *tensor.shape[1:]))
    padded[: mine.shape[0]] = mine
    if "nccl" in str(dist.get_backend(group)):
        padded = padded.cuda()
    dst = dist.get_global_rank(group, 0)
    parts = [torch.empty_like(padded) for _ in range(world)] if rank == dst else None
    dist.gather(padded, parts, dst=dst, group=group)
    if rank != dst:
        return None
    return torch.cat(parts)[:rows].cpu()


class _Spool(Mapping):
    """Encoded tensors spooled one file each; reading one keeps only that one in memory."""

    def __init__(self, folder: str) -> None:
        self.folder, self.names, self._last = folder, [], (None, None)

    def put(self, name: str, tensor: Tensor) -> None:
        write_safetensors_streaming({"t": tensor}, os.path.join(self.folder, f"{len(self.names)}.safetensors"))
        self.names.append(name)

    def __getitem__(self, name: str) -> Tensor:
        if self._last[0] != name:
            index = self.names.index(name)
            self._last = (name, read_safetensors(os.path.join(self.folder, f"{index}.safetensors"))[0]["t"])
        return self._last[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def save_sharded_ticket(
    ticket: Any, path: PathLike, *, encoding: str = "compact", include_trained: bool = False,
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Write a sharded ticket as one ticket file, streaming each tensor through rank 0 (collective).

    Called by :func:`torch_lottery.save_ticket` (``ticket.save(path)``) when the masks are DTensors;
    every rank must call it. Arguments as :func:`torch_lottery.save_ticket`.

    Raises:
        RuntimeError: on every rank, when rank 0 could not write the file (the cause is chained on rank 0).
    """
    from .ticket_file import _encode, _ticket_metadata

    dist = torch.distributed
    rank = dist.get_rank() if dist.is_initialized() else 0
    # no ticket.state_dict(): it would copy every shard; each tensor is fetched when its turn comes
    point = ticket._point
    state = {"config": ticket.config(), "round": ticket.round, "history": ticket.history,
             "rewind_captured": point.captured, "steps": point.steps}
    targets = {t.fqn: t for t in ticket.targets}
    mask_of = lambda fqn: ticket.backend.mask(targets[fqn])  # noqa: E731  (one local mask at a time)
    summary = [mask_rows({fqn: mask_of(fqn)})[0] for fqn in targets]  # global counts: a collective per mask
    live = ticket.live_tensors() if include_trained else {}
    rewind = point.tensors or {}
    roles = [("mask", {f: None for f in targets}), ("rewind", rewind), ("trained", live)]
    folder = tempfile.mkdtemp(prefix=".ticket-spool-", dir=os.path.dirname(os.path.abspath(os.fspath(path)))) if rank == 0 else None
    spool, layout, error = (_Spool(folder) if folder else None), {}, None
    try:
        for role, tensors in roles:
            for fqn, value in tensors.items():
                full = gather_to_rank0(mask_of(fqn) if role == "mask" else value.detach())
                mask = gather_to_rank0(mask_of(fqn)) if role != "mask" and fqn in targets and encoding == "compact" else None
                if rank != 0 or error is not None:
                    continue
                try:  # rank 0 keeps taking part in the gathers after a failure, so no rank hangs
                    if role == "mask":
                        enc, lay = _encode(masks={fqn: full}, rewind={}, trained=None, encoding=encoding)
                        key = f"mask/{fqn}"
                    else:  # a target's values are encoded against its full mask (survivors only, compact)
                        enc, lay = _encode(masks={fqn: mask} if mask is not None else {}, rewind={fqn: full},
                                           trained=None, encoding=encoding)
                        key = f"rewind/{fqn}"
                    spool.put(f"{role}/{fqn}", enc[key])
                    layout[f"{role}/{fqn}"] = lay[key]
                    del full, mask, enc
                except Exception as exc:  # noqa: BLE001 - reported to every rank below
                    error = exc
        if rank == 0 and error is None:
            try:
                meta = _ticket_metadata(
                    state, model=ticket.model, summary=summary, layout=layout, encoding=encoding,
                    include_trained=include_trained, metadata=metadata, fn="save_ticket",
                    channels=None, tensors=spool,
                )
                write_safetensors_streaming(spool, path, metadata=meta, fn="save_ticket")
            except Exception as exc:  # noqa: BLE001
                error = exc
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    failed = torch.tensor([int(error is not None)])
    if dist.is_initialized():
        dist.broadcast(failed, src=0)
    if int(failed):
        if error is not None:
            raise error
        raise RuntimeError(f"save_ticket(): rank 0 could not write path={os.fspath(path)!r}; see its error")
    logger.info("saved sharded ticket (%s, round %s) to %s", encoding, ticket.round, path)


def _localize(obj: Any) -> Any:
    """``obj`` with every DTensor replaced by ``{_LOCAL: its local tensor}`` (dicts, lists, tuples walked)."""
    if is_sharded(obj):
        return {_LOCAL: local(obj).detach().clone()}
    if isinstance(obj, Mapping):
        return {k: _localize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_localize(v) for v in obj)
    return obj


def _globalize(obj: Any, ref: Any) -> Any:
    """Undo :func:`_localize`: each marked local tensor becomes a DTensor placed like ``ref`` (a tensor, or a structure matching ``obj``)."""
    if isinstance(obj, Mapping) and set(obj) == {_LOCAL}:
        if not is_sharded(ref):
            raise ValueError("load_ticket_state(): a saved shard has no sharded tensor to go into; build the same sharded model")
        if tuple(obj[_LOCAL].shape) != tuple(local(ref).shape):
            raise ValueError(
                f"load_ticket_state(): a saved shard has shape {tuple(obj[_LOCAL].shape)} but this rank holds "
                f"{tuple(local(ref).shape)}; resume with the world size the state was saved with"
            )
        return like(obj[_LOCAL], ref)
    if isinstance(obj, Mapping):
        return {k: _globalize(v, ref.get(k) if isinstance(ref, Mapping) else ref) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_globalize(v, ref) for v in obj)
    return obj


def save_ticket_state(ticket: Any, folder: PathLike) -> None:
    """Save ``ticket.state_dict()`` as ``folder/rank<r>.pt``, each rank its own shards (collective).

    Load it in a restarted job with :func:`load_ticket_state` on the same sharded model and world size.
    """
    dist = torch.distributed
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    os.makedirs(folder, exist_ok=True)
    state = {"world_size": world, "state": _localize(ticket.state_dict())}
    torch.save(state, os.path.join(folder, f"rank{rank}.pt.tmp"))
    os.replace(os.path.join(folder, f"rank{rank}.pt.tmp"), os.path.join(folder, f"rank{rank}.pt"))
    if dist.is_initialized():
        dist.barrier()


def load_ticket_state(ticket: Any, folder: PathLike, *, rewind: bool = False) -> None:
    """Restore what :func:`save_ticket_state` saved into ``ticket`` (same settings, sharded model, world size).

    Raises:
        ValueError: a different world size, or shards that do not fit this rank's tensors.
        FileNotFoundError: no file for this rank.
    """
    dist = torch.distributed
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    path = os.path.join(folder, f"rank{rank}.pt")
    saved = torch.load(path, weights_only=True)
    if saved.get("world_size") != world:
        raise ValueError(
            f"load_ticket_state(): folder={os.fspath(folder)!r} was saved by {saved.get('world_size')} ranks, this "
            f"job has {world}; resume with the same number of ranks"
        )
    state = saved["state"]
    params = {t.fqn: ticket.backend.parameter(t) for t in ticket.targets}
    live = ticket.live_tensors()
    refs: dict[str, Any] = {"masks": params, "rewind_weights": live}
    optimizer = ticket.optimizer
    if optimizer is not None and state.get("optimizer_state"):
        ordered = [p for g in optimizer.param_groups for p in g["params"]]
        refs["optimizer_state"] = {"state": {i: p for i, p in enumerate(ordered)}}
    state = {k: _globalize(v, refs.get(k)) for k, v in state.items()}
    ticket.load_state_dict(state, rewind=rewind)
