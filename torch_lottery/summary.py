"""Mask summaries: per-tensor survivor counts, totals and tables, computed once for every report.

Every place that reports how much of a ticket is left (``ticket.summary()``, ``ticket.sparsity``,
the round history, ticket-file metadata, the reproduction's run records) goes through
:func:`mask_rows` and :func:`totals`, so they can never disagree. A tensor with no elements has
sparsity ``0.0``, and a ticket whose targets hold no elements at all has sparsity ``0.0``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .shards import count_true

__all__ = ["format_table", "mask_rows", "round_record", "totals", "unmasked_zeros"]


def mask_rows(masks: Mapping[str, Tensor]) -> list[dict[str, Any]]:
    """One row per mask, in order: ``fqn``, ``shape``, ``numel``, ``remaining``, ``sparsity``.

    Example:
        >>> import torch
        >>> mask_rows({"fc.weight": torch.tensor([[True, False], [False, False]])})
        [{'fqn': 'fc.weight', 'shape': [2, 2], 'numel': 4, 'remaining': 1, 'sparsity': 0.75}]
    """
    rows = []
    for fqn, mask in masks.items():
        numel = mask.numel()
        remaining = count_true(mask)  # a sharded mask counts every rank's shard
        rows.append(
            {
                "fqn": fqn,
                "shape": list(mask.shape),
                "numel": numel,
                "remaining": remaining,
                "sparsity": 1.0 - remaining / numel if numel else 0.0,
            }
        )
    return rows


def totals(rows: Iterable[Mapping[str, Any]]) -> tuple[int, int, float]:
    """``(remaining, total, sparsity)`` over summary rows; sparsity is ``0.0`` when ``total`` is 0."""
    remaining = total = 0
    for row in rows:
        remaining += int(row["remaining"])
        total += int(row["numel"])
    return remaining, total, (1.0 - remaining / total if total else 0.0)


def round_record(round_index: int, masks: Mapping[str, Tensor]) -> dict[str, Any]:
    """The history record of a finished round: round, sparsity, remaining, total, per-tensor counts."""
    rows = mask_rows(masks)
    remaining, total, sparsity = totals(rows)
    return {
        "round": round_index,
        "sparsity": sparsity,
        "remaining": remaining,
        "total": total,
        "per_tensor": {r["fqn"]: r["remaining"] for r in rows},
    }


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Summary rows as a fixed-width text table with a total line.

    Example:
        >>> import torch
        >>> print(format_table(mask_rows({"w": torch.tensor([True, False])})))
        tensor               shape     remaining  sparsity
        w                        2             1    50.00%
        total                    2             1    50.00%
    """
    width = max([len("tensor")] + [len(r["fqn"]) for r in rows])
    lines = [f"{'tensor':<{width}}  {'shape':>18}  {'remaining':>12}  {'sparsity':>8}"]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['fqn']:<{width}}  {shape:>18}  {r['remaining']:>12,}  {r['sparsity']:>8.2%}")
    alive, total, sparsity = totals(rows)
    lines.append(f"{'total':<{width}}  {total:>18,}  {alive:>12,}  {sparsity:>8.2%}")
    return "\n".join(lines)


def unmasked_zeros(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], *, least: float = 0.1) -> dict[str, float]:
    """Tensors without pruned entries that hold exact zeros in at least ``least`` of their entries, but
    not in all (a zero-initialized tensor is dense): fqn -> fraction of zeros. Such a tensor looks like
    the plain checkpoint of a pruned model loaded without its ticket. Pure.
    """
    out = {}
    for fqn, weight in weights.items():
        mask = masks.get(fqn)
        if weight.numel() == 0 or (mask is not None and not bool(mask.all())):
            continue
        fraction = count_true(weight == 0) / weight.numel()  # every shard of a sharded weight
        if least <= fraction < 1.0:
            out[fqn] = fraction
    return out
