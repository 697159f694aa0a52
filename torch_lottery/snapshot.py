"""Snapshot stores: where rewind points live (a device, or a memory-mapped file on disk) and for how long.

A store copies FQN-keyed tensors out of the model (:meth:`SnapshotStore.put`) and hands back
tensors that stay valid until the next ``put`` or :meth:`SnapshotStore.close`. The disk store
streams them into a safetensors file one tensor at a time and reads them back memory-mapped, for
models that do not fit in memory twice.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor

from .files import mmap_safetensors, write_safetensors_streaming
from .shards import is_sharded, like, local

__all__ = ["DiskStore", "MemoryStore", "SnapshotStore", "make_store", "mmap_safetensors", "write_safetensors_streaming"]


class SnapshotStore:
    """Where a ticket's snapshots live. ``put`` copies tensors in; ``close`` frees what it holds."""

    #: Whether stored tensors live in files: a copied ticket puts its copied tensors back into its store.
    on_disk = False

    def put(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Copy ``tensors`` into the store; return the stored tensors, FQN -> tensor."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the store holds (files it created included). Idempotent."""


class MemoryStore(SnapshotStore):
    """Snapshots as tensor copies on ``device`` (the CPU by default); a DTensor's copy holds only its local shard."""

    def __init__(self, device: Union[str, torch.device] = "cpu") -> None:
        self.device = torch.device(device)

    def put(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        with torch.no_grad():
            return {k: v.detach().to(self.device, copy=True) for k, v in tensors.items()}


class DiskStore(SnapshotStore):
    """Snapshots in ``folder/rewind.safetensors``, written one tensor at a time, read memory-mapped.

    Without ``folder`` a temporary folder is created on first use and removed on :meth:`close` or
    when the store is garbage-collected. Each ``put`` writes a uniquely named file, maps it, then
    renames it into place, so two processes sharing a folder never read each other's snapshot.

    DTensors (an FSDP2 model's parameters) are stored per shard: each process writes its local
    shards to ``folder/rewind-rank<r>.safetensors`` (``r`` its ``torch.distributed`` rank) and
    gets DTensors placed like the originals back, so ranks can share one folder.
    """

    FILE_NAME = "rewind.safetensors"
    on_disk = True

    def __init__(self, folder: Optional[Union[str, os.PathLike]] = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._owned = folder is None
        self._finalizer: Optional[weakref.finalize] = None

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle) of a store that owns a temporary folder gets its own folder on its
        # next put; the tensors already stored are copied by whoever holds them, into memory.
        return {"folder": None if self._owned else self.folder, "_owned": self._owned, "_finalizer": None}

    def _ensure_folder(self) -> Path:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="torch_lottery-"))
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    @property
    def path(self) -> Optional[Path]:
        """The snapshot file, once a folder exists (this rank's, for a sharded snapshot)."""
        return None if self.folder is None else self.folder / self._file_name

    _file_name = FILE_NAME

    def put(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        folder = self._ensure_folder()
        sharded = any(is_sharded(v) for v in tensors.values())
        if sharded:
            dist = torch.distributed
            self._file_name = f"rewind-rank{dist.get_rank() if dist.is_initialized() else 0}.safetensors"
        staged = folder / f".rw-{secrets.token_hex(4)}.safetensors"
        try:
            write_safetensors_streaming({k: local(v) for k, v in tensors.items()}, staged)
            stored = mmap_safetensors(staged)  # mapped before the rename: the inode is ours
            os.replace(staged, folder / self._file_name)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return {k: like(stored[k], tensors[k]) for k in tensors}

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def make_store(device: str, folder: Optional[Union[str, os.PathLike]] = None) -> SnapshotStore:
    """The store for ``snapshot_device`` (a torch device string or ``"disk"``) and ``snapshot_dir``."""
    return DiskStore(folder) if device == "disk" else MemoryStore(device)
