"""Rewind snapshots on disk: streamed into a safetensors file, read back memory-mapped."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import Tensor

__all__ = ["mmap_safetensors", "write_safetensors_streaming"]

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_FROM_NAME = {v: k for k, v in _DTYPES.items()}


def write_safetensors_streaming(tensors: Mapping[str, Tensor], path: Union[str, Path]) -> None:
    """Write ``tensors`` as a safetensors file, one tensor in host memory at a time.

    ``safetensors.torch.save_file`` first turns every tensor into bytes, holding a second copy of
    the whole model; this writes the header, then each tensor's bytes in turn, so a model that
    does not fit in memory twice can still be snapshotted. The file is written to a temporary
    name and renamed into place, so a crash never leaves a half file at ``path``.
    """
    path = Path(path)
    header: dict[str, object] = {}
    offset = 0
    # Widest elements first: with the 8-byte aligned header, every tensor then starts at a multiple
    # of its element size and can be viewed in place from a memory map (no holes are allowed).
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())
    tensors = {k: tensors[k] for k in order}
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise TypeError(f"write_safetensors_streaming(): {name!r} has dtype {t.dtype}, which safetensors cannot store")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors.values():
            host = t.detach().to("cpu").contiguous()
            if host.numel():
                f.write(memoryview(host.reshape(-1).view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mmap_safetensors(path: Union[str, Path]) -> dict[str, Tensor]:
    """Tensors of a safetensors file as read-only-in-spirit views of one private memory map.

    Pages are read from disk when touched and can be dropped again by the OS, so a snapshot held
    this way costs page cache, not resident memory. Writing to the tensors never reaches the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    base = 8 + n
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        dtype = _FROM_NAME[info["dtype"]]
        start, end = info["data_offsets"]
        flat = torch.empty(0, dtype=torch.uint8).set_(storage, base + start, (end - start,), (1,))
        if end == start:
            out[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        if (base + start) % flat.new_empty(0, dtype=dtype).element_size():
            flat = flat.clone()  # misaligned (a file written elsewhere): this tensor is copied
        out[name] = flat.view(dtype).view(info["shape"])
    return out
