"""Stored masks and in-place multiplication by them: bool bytes or packed bits, chunk by chunk.

Two storage formats for a bool mask of ``n`` entries, both kept on the masked tensor's device:

* **bytes**: the bool tensor itself (1 byte per entry), multiplied through a ``uint8`` view;
* **bits**: ``ceil(n / 8)`` ``uint8`` bytes, flat (row-major) order, first entry in the most
  significant bit, last byte zero-padded: the layout of ``numpy.packbits`` and of the compact
  ticket files. It is expanded for each multiply, chunk by chunk, through a 256-entry table
  (one byte of bits -> one int64 whose 8 bytes are the 0/1 values), so no full-size bool mask
  ever exists.

Contiguous tensors are multiplied in chunks of :data:`CHUNK` entries: on CPU a ``uint8``
operand takes torch's fast same-width loop only while it stays in cache (measured on this
project's CPU: 11.2M weights, 21.8 ms whole vs 3.7 ms in 2^18-entry chunks, the speed of a
float mask; see ``benchmarks/bench_mask_multiply.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CHUNK", "mul_bits_", "mul_bytes_", "pack_bits", "unpack_bits"]

CHUNK = 1 << 18  # entries per chunk; a multiple of 8, so chunks start on byte boundaries of packed bits

_MSB_FIRST = (128, 64, 32, 16, 8, 4, 2, 1)
_TABLES: dict[torch.device, Tensor] = {}


def _byte_table(device: torch.device) -> Tensor:
    """int64[256]: entry ``b`` holds, as its 8 bytes in memory order, the bits of ``b`` MSB first."""
    table = _TABLES.get(device)
    if table is None:
        values = torch.arange(256, dtype=torch.int64).unsqueeze(1)
        bits = (values & torch.tensor(_MSB_FIRST)).ne(0).to(torch.uint8)  # (256, 8), contiguous
        table = _TABLES[device] = bits.view(torch.int64).reshape(256).to(device)
    return table


def pack_bits(mask: Tensor) -> Tensor:
    """Bit-pack a bool ``mask`` into ``ceil(numel / 8)`` ``uint8`` bytes on the mask's device.

    >>> pack_bits(torch.tensor([True, False, True, True, False, False, False, False, True]))
    tensor([176, 128], dtype=torch.uint8)
    """
    flat = mask.detach().reshape(-1)
    n = flat.numel()
    out = torch.empty((n + 7) // 8, dtype=torch.uint8, device=flat.device)
    weights = torch.tensor(_MSB_FIRST, dtype=torch.uint8, device=flat.device)
    for start in range(0, n, CHUNK):
        part = flat[start : start + CHUNK].to(torch.uint8)
        tail = (-part.numel()) % 8
        if tail:
            part = torch.cat([part, part.new_zeros(tail)])
        torch.sum(part.view(-1, 8) * weights, dim=1, dtype=torch.uint8, out=out[start // 8 : start // 8 + part.numel() // 8])
    return out


def _expand(packed: Tensor, start: int, stop: int) -> Tensor:
    """Entries ``start:stop`` (``start`` a multiple of 8) of a bit-packed mask, as 0/1 ``uint8``."""
    index = packed[start // 8 : (stop + 7) // 8].to(torch.int64)
    return torch.index_select(_byte_table(packed.device), 0, index).view(torch.uint8)[: stop - start]


def unpack_bits(packed: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Invert :func:`pack_bits`: the bool mask of ``shape``, on ``packed``'s device (padding ignored)."""
    n = 1
    for size in shape:
        n *= int(size)
    out = torch.empty(n, dtype=torch.bool, device=packed.device)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        out[start:stop] = _expand(packed, start, stop).view(torch.bool)
    return out.reshape(tuple(shape))


def mul_bytes_(x: Tensor, mask: Tensor, *, source: Tensor | None = None) -> None:
    """``x = (source if given else x) * mask`` in place; ``mask`` is a bool mask shaped like ``x``."""
    mask = mask.view(torch.uint8)
    src = x if source is None else source
    if x.numel() <= CHUNK or not (x.is_contiguous() and src.is_contiguous() and mask.is_contiguous()):
        torch.mul(src, mask, out=x)
        return
    for xs, ss, ms in zip(x.view(-1).split(CHUNK), src.reshape(-1).split(CHUNK), mask.view(-1).split(CHUNK)):
        torch.mul(ss, ms, out=xs)


def mul_bits_(x: Tensor, packed: Tensor, *, source: Tensor | None = None) -> None:
    """``x = (source if given else x) * mask`` in place; ``packed`` is ``pack_bits(mask)``."""
    src = x if source is None else source
    n = x.numel()
    if not (x.is_contiguous() and src.is_contiguous()):
        torch.mul(src, unpack_bits(packed, x.shape).view(torch.uint8), out=x)
        return
    xf, sf = x.view(-1), src.reshape(-1)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        torch.mul(sf[start:stop], _expand(packed, start, stop), out=xf[start:stop])
