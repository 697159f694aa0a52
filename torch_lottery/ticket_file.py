"""The ticket file format: masks, rewind weights and settings as one safetensors file (no engine needed).

A ticket file is one ``.safetensors`` file. Its tensors are named by role and canonical FQN:

* ``mask/<fqn>``: the pruning mask of each target tensor;
* ``rewind/<fqn>``: the weights a rewind restores (``ticket.rewind_weights``, theta_0 or theta_k);
* ``trained/<fqn>``: the trained weights, only when saved with ``include_trained=True``.

Two encodings share this layout. ``"dense"`` stores masks as ``bool`` tensors and weights at full shape, so any
safetensors tool can read them. ``"compact"`` (the default) stores masks bit-packed into ``uint8`` (numpy
``packbits`` order: the first element in the most significant bit, zero padding) and, for target tensors,
only the values at surviving positions (flat order), so the file shrinks with sparsity. Non-target tensors
(biases, norms, buffers) are always dense. Compact files do not keep the values at pruned positions; they
come back as zeros, which changes nothing the model computes.

The header's string metadata holds the format name and version, library and torch versions, the ticket's
configuration, round, history, per-tensor sparsity, target FQNs, the model's architecture (canonical tensor
shapes) and a SHA-256 checksum over metadata and tensors. A structured ticket (``granularity="channel"``) also
stores ``channels``: its channel groups, the example inputs' shapes and dtypes, and Torch-Pruning's pruning
history, so a fresh model can be compacted without example inputs. Nothing is ever unpickled; files are written and
read through :mod:`torch_lottery.files` (atomic writes, a validated header before any tensor data is read).

This module works on plain data (FQN-keyed tensors, a settings dict, the ticket's ``state_dict()``) and never
imports the engine: :func:`write_ticket` writes, :func:`read_ticket_tensors` and :func:`read_ticket_info` read,
and :func:`save_ticket` writes a ticket through its public ``state_dict()``. Loading a file into a model as a
LotteryTicket is :func:`torch_lottery.load_ticket` (:mod:`torch_lottery.ticket_io`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import torch
from torch import Tensor, nn

from ._version import __version__
from .files import (
    DTYPE_NAMES,
    SafetensorsHeader,
    load_json,
    read_safetensors,
    read_safetensors_header,
    write_safetensors_streaming,
)
from .masking import pack_bits, unpack_bits
from .summary import mask_rows, totals
from .targets import named_state_tensors

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ENCODINGS",
    "ROLES",
    "pack_mask",
    "unpack_mask",
    "compact_values",
    "expand_values",
    "write_ticket",
    "save_ticket",
    "read_ticket_info",
    "read_ticket_tensors",
    "TicketTensors",
    "check_architecture",
    "check_tensors_fit",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

FORMAT_NAME = "torch_lottery.ticket"
FORMAT_VERSION = 1
ENCODINGS = ("compact", "dense")
ROLES = ("mask", "rewind", "trained")
_CHECKSUM_KEY = "checksum"


# --------------------------------------------------------------------------------------------------------------
# Pure encoding
# --------------------------------------------------------------------------------------------------------------


def pack_mask(mask: Tensor) -> Tensor:
    """Bit-pack a boolean mask into a 1-D ``uint8`` tensor of ``ceil(numel / 8)`` bytes.

    Bits follow ``numpy.packbits``: flat (row-major) order, the first element in the most significant bit,
    the last byte padded with zero bits.

    Args:
        mask: bool tensor of any shape.

    Returns:
        1-D CPU ``uint8`` tensor.

    Raises:
        TypeError: if ``mask`` is not a bool tensor.

    Example:
        >>> pack_mask(torch.tensor([True, False, True, True, False, False, False, False, True]))
        tensor([176, 128], dtype=torch.uint8)
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"pack_mask(): mask={_describe(mask)} is not a bool tensor; pass a mask of dtype torch.bool"
        )
    return pack_bits(mask.detach().cpu())


def unpack_mask(packed: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Invert :func:`pack_mask`: return the bool mask of ``shape`` stored in ``packed``.

    Args:
        packed: 1-D ``uint8`` tensor of exactly ``ceil(numel / 8)`` bytes.
        shape: the mask's shape.

    Returns:
        bool CPU tensor of ``shape``.

    Raises:
        ValueError: if ``packed`` has the wrong dtype or length, or a padding bit is set.
    """
    numel = math.prod(shape)
    expected = math.ceil(numel / 8)
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(
            f"unpack_mask(): packed={_describe(packed)} is not a 1-D uint8 tensor; pass the output of pack_mask()"
        )
    if packed.numel() != expected:
        raise ValueError(
            f"unpack_mask(): packed has {packed.numel()} bytes but shape={tuple(shape)!r} needs {expected}; "
            "pass the shape the mask was packed with"
        )
    bits = unpack_bits(packed.cpu(), (expected * 8,))
    if bits[numel:].any():
        raise ValueError(
            f"unpack_mask(): packed has padding bits set beyond the {numel} mask entries; the data is corrupt"
        )
    return bits[:numel].reshape(tuple(shape))


def compact_values(values: Tensor, mask: Tensor) -> Tensor:
    """Return the entries of ``values`` at surviving positions of ``mask``, as a 1-D tensor in flat order.

    Raises:
        ValueError: if the shapes differ.
    """
    if values.shape != mask.shape:
        raise ValueError(
            f"compact_values(): values has shape {tuple(values.shape)} but mask has {tuple(mask.shape)}; "
            "they must match"
        )
    return values.detach().cpu().masked_select(mask.detach().cpu())


def expand_values(compact: Tensor, mask: Tensor) -> Tensor:
    """Invert :func:`compact_values`: scatter survivors back to ``mask``'s shape, zeros at pruned positions.

    Raises:
        ValueError: if ``compact`` is not 1-D or its length differs from the mask's count of survivors.
    """
    survivors = int(torch.count_nonzero(mask))
    if compact.dim() != 1 or compact.numel() != survivors:
        raise ValueError(
            f"expand_values(): compact has shape {tuple(compact.shape)} but the mask keeps {survivors} entries; "
            "the stored values and the mask disagree"
        )
    dense = torch.zeros(mask.shape, dtype=compact.dtype)
    return dense.masked_scatter_(mask.cpu(), compact)


@dataclass
class TicketTensors:
    """The decoded, validated content of a ticket file (CPU tensors, canonical FQNs).

    Attributes:
        metadata: the decoded metadata (JSON fields parsed).
        masks: FQN -> bool mask, one per target, in target order.
        rewind: FQN -> rewind weights at full shape.
        trained: FQN -> trained weights at full shape (empty unless saved with ``include_trained=True``).
    """

    metadata: dict[str, Any]
    masks: dict[str, Tensor] = field(default_factory=dict)
    rewind: dict[str, Tensor] = field(default_factory=dict)
    trained: dict[str, Tensor] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """The ticket ``state_dict()`` this file holds, for ``LotteryTicket.load_state_dict`` (no optimizer or
        scheduler state: a ticket file does not store them)."""
        meta = self.metadata
        return {
            "config": dict(meta["config"]),
            "round": meta["round"],
            "history": meta["history"],
            "masks": self.masks,
            "rewind_weights": self.rewind,
            "rewind_captured": meta["rewind_captured"],
            "steps": meta["steps"],
        }


def _describe(obj: object) -> str:
    if isinstance(obj, Tensor):
        return f"<Tensor dtype={obj.dtype} shape={tuple(obj.shape)}>"
    return repr(obj) if len(repr(obj)) < 80 else f"<{type(obj).__name__}>"


def _checksum(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """SHA-256 over every metadata item except the checksum and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != _CHECKSUM_KEY}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(memoryview(raw.numpy()))
    return "sha256:" + digest.hexdigest()


def _encode(
    *,
    masks: Mapping[str, Tensor],
    rewind: Mapping[str, Tensor],
    trained: Mapping[str, Tensor] | None,
    encoding: str,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Pure: turn masks and weights into the file's tensors and its layout (file key -> original shape)."""
    tensors: dict[str, Tensor] = {}
    layout: dict[str, list[int]] = {}
    for fqn, mask in masks.items():
        key = f"mask/{fqn}"
        layout[key] = list(mask.shape)
        mask = mask.detach().cpu().to(torch.bool)
        tensors[key] = pack_mask(mask) if encoding == "compact" else mask.contiguous().clone()
    for role, weights in (("rewind", rewind), ("trained", trained or {})):
        for fqn, value in weights.items():
            key = f"{role}/{fqn}"
            layout[key] = list(value.shape)
            value = value.detach().cpu()
            if encoding == "compact" and fqn in masks:
                tensors[key] = compact_values(value, masks[fqn].to(torch.bool))
            else:
                tensors[key] = value.contiguous().clone()
    return tensors, layout


# --------------------------------------------------------------------------------------------------------------
# Canonical view of a (possibly pruned) model
# --------------------------------------------------------------------------------------------------------------


def _architecture(model: nn.Module) -> dict[str, list[int]]:
    """Canonical FQN -> shape of every parameter and persistent buffer (what a fresh model must match)."""
    return {fqn: list(t.shape) for fqn, t in named_state_tensors(model, buffers=True).items()}


def _model_class(model: nn.Module) -> str:
    cls = type(model)
    if cls.__bases__[0].__name__ == "FSDPModule" and len(cls.__bases__) == 2:  # fully_shard's FSDP<Class>
        cls = cls.__bases__[1]
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def _header_metadata(meta: Mapping[str, str], fn: str, path: PathLike) -> dict[str, str]:
    """Check the format name and version in a header's (already ``str -> str``) metadata."""
    fmt = meta.get("format")
    if fmt != FORMAT_NAME:
        hint = (
            "it looks like a plain state dict; load it with safetensors.torch.load_model()"
            if fmt in ("pt", None)
            else "pass a ticket file written by save_ticket()"
        )
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} is not a torch_lottery ticket file (format={fmt!r}, "
            f"expected {FORMAT_NAME!r}); {hint}"
        )
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} has format_version={version!r}, this torch_lottery reads "
            f"{FORMAT_VERSION!r}; "
            + (
                "upgrade torch_lottery to read it"
                if isinstance(version, str) and version.isdigit() and int(version) > FORMAT_VERSION
                else "the file is corrupt or was not written by save_ticket()"
            )
        )
    return dict(meta)


_JSON_FIELDS: dict[str, type] = {
    "config": dict,
    "history": list,
    "summary": list,
    "targets": list,
    "layout": dict,
    "architecture": dict,
    "round": int,
    "sparsity": float,
    "include_trained": bool,
    "rewind_captured": bool,
    "steps": int,
}


def _decode_metadata(meta: Mapping[str, str], fn: str, path: PathLike) -> dict[str, Any]:
    decoded: dict[str, Any] = dict(meta)
    if meta.get("encoding") not in ENCODINGS:
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} has encoding={meta.get('encoding')!r}; expected one of {ENCODINGS!r}"
        )
    for key, kind in _JSON_FIELDS.items():
        if key not in meta:
            raise ValueError(f"{fn}(): path={os.fspath(path)!r} lacks the metadata entry {key!r}; the file is corrupt")
        value = load_json(meta[key], what=f"metadata entry {key!r}", where=f"path={os.fspath(path)!r}", fn=fn)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(
                f"{fn}(): path={os.fspath(path)!r} has metadata entry {key!r} of type {type(value).__name__}, "
                f"expected {kind.__name__}; the file is corrupt"
            )
        decoded[key] = value
    if "channels" in meta:  # structured tickets only
        channels = load_json(meta["channels"], what="metadata entry 'channels'", where=f"path={os.fspath(path)!r}", fn=fn)
        if not (isinstance(channels, dict) and isinstance(channels.get("groups"), list)
                and isinstance(channels.get("input_spec"), dict)):
            raise ValueError(f"{fn}(): path={os.fspath(path)!r} has a malformed 'channels' entry; the file is corrupt")
        decoded["channels"] = channels
    for key in ("round", "steps"):
        if decoded[key] < 0:
            raise ValueError(f"{fn}(): path={os.fspath(path)!r} has {key}={decoded[key]!r} < 0; the file is corrupt")
    if not all(isinstance(t, str) for t in decoded["targets"]):
        raise ValueError(f"{fn}(): path={os.fspath(path)!r} has non-string target FQNs; the file is corrupt")
    row_types = {"fqn": str, "shape": list, "numel": int, "remaining": int, "sparsity": (int, float)}
    for row in decoded["summary"]:
        if not (isinstance(row, dict) and all(isinstance(row.get(k), t) for k, t in row_types.items())):
            raise ValueError(
                f"{fn}(): path={os.fspath(path)!r} has a summary row {row!r:.80} without "
                f"{sorted(row_types)!r}; the file is corrupt"
            )
    for name, table in (("layout", decoded["layout"]), ("architecture", decoded["architecture"])):
        for key, shape in table.items():
            if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                    for d in shape)):
                raise ValueError(
                    f"{fn}(): path={os.fspath(path)!r} has {name}[{key!r}]={shape!r}, not a list of sizes; "
                    "the file is corrupt"
                )
    return decoded


def _decode_tensors(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], fn: str, path: PathLike
) -> TicketTensors:
    """Validate the file's tensors against its metadata and rebuild full-shape masks and weights."""
    where = f"{fn}(): path={os.fspath(path)!r}"
    layout: dict[str, list[int]] = meta["layout"]
    missing = sorted(set(layout) - set(tensors))
    unexpected = sorted(set(tensors) - set(layout))
    if missing or unexpected:
        raise ValueError(
            f"{where} has missing tensors {missing[:5]!r} and unexpected tensors {unexpected[:5]!r} "
            "compared with its layout; the file is corrupt or was edited"
        )
    by_role: dict[str, dict[str, str]] = {role: {} for role in ROLES}
    for key in layout:
        role, _, fqn = key.partition("/")
        if role not in by_role or not fqn:
            raise ValueError(f"{where} has a tensor named {key!r}; expected 'mask/', 'rewind/' or 'trained/' + FQN")
        by_role[role][fqn] = key
    targets: list[str] = meta["targets"]
    if list(by_role["mask"]) != targets and sorted(by_role["mask"]) != sorted(targets):
        raise ValueError(
            f"{where} stores masks for {sorted(by_role['mask'])[:5]!r}... but its targets are "
            f"{targets[:5]!r}...; the file is corrupt or was edited"
        )
    if len(set(targets)) != len(targets):
        raise ValueError(f"{where} lists a target FQN twice; the file is corrupt")
    compact = meta["encoding"] == "compact"
    out = TicketTensors(metadata=dict(meta))
    for fqn in targets:
        key = f"mask/{fqn}"
        stored, shape = tensors[key], tuple(layout[key])
        if compact:
            try:
                out.masks[fqn] = unpack_mask(stored, shape)
            except ValueError as exc:
                raise ValueError(f"{where} has a bad packed mask {key!r}: {exc}") from exc
        else:
            if stored.dtype != torch.bool or tuple(stored.shape) != shape:
                raise ValueError(
                    f"{where} has mask {key!r} of dtype {stored.dtype} and shape {tuple(stored.shape)}, "
                    f"expected torch.bool and {shape}; the file is corrupt"
                )
            out.masks[fqn] = stored.clone()
    for role, dest in (("rewind", out.rewind), ("trained", out.trained)):
        for fqn, key in by_role[role].items():
            stored, shape = tensors[key], tuple(layout[key])
            if fqn in out.masks:
                mask = out.masks[fqn]
                if tuple(mask.shape) != shape:
                    raise ValueError(
                        f"{where} has {key!r} of shape {shape} but its mask has shape {tuple(mask.shape)}; "
                        "the file is corrupt"
                    )
                if compact:
                    survivors = int(torch.count_nonzero(mask))
                    if stored.dim() != 1 or stored.numel() != survivors:
                        raise ValueError(
                            f"{where} has {stored.numel()} stored values for {key!r} but its mask keeps "
                            f"{survivors}; the mask and the values disagree (corrupt or edited file)"
                        )
                    dest[fqn] = expand_values(stored, mask)
                    continue
            if tuple(stored.shape) != shape:
                raise ValueError(
                    f"{where} has tensor {key!r} of shape {tuple(stored.shape)} but its layout says {shape}; "
                    "the file is corrupt"
                )
            dest[fqn] = stored.clone()
    if bool(out.trained) != meta["include_trained"]:
        raise ValueError(f"{where} says include_trained={meta['include_trained']} but stores "
                         f"{len(out.trained)} trained tensors; the file is corrupt")
    return out


def _check_stored_sizes(header: SafetensorsHeader, meta: Mapping[str, Any], fn: str, path: PathLike) -> None:
    """Before any tensor data is read: the header's tensors are the layout's, none larger than its shape allows."""
    where = f"{fn}(): path={os.fspath(path)!r}"
    layout: Mapping[str, list[int]] = meta["layout"]
    missing = sorted(set(layout) - set(header.tensors))
    unexpected = sorted(set(header.tensors) - set(layout))
    if missing or unexpected:
        raise ValueError(
            f"{where} has missing tensors {missing[:5]!r} and unexpected tensors {unexpected[:5]!r} "
            "compared with its layout; the file is corrupt or was edited"
        )
    for key, entry in header.tensors.items():
        start, stop = entry["data_offsets"]
        bound = math.prod(layout[key]) * DTYPE_NAMES[entry["dtype"]].itemsize
        if stop - start > bound:
            raise ValueError(
                f"{where} stores {stop - start} bytes for {key!r} but its layout shape {tuple(layout[key])} holds "
                f"at most {bound} as {entry['dtype']}; the file is corrupt or was edited"
            )


def _read_file(path: PathLike, fn: str, *, model: nn.Module | None = None) -> TicketTensors:
    """Read, checksum and decode a whole ticket file. Raises only ``OSError`` or ``ValueError``.

    Before any tensor data is read, the safetensors header is validated against the file's size
    (:func:`torch_lottery.files.read_safetensors`), the format, version and metadata are decoded, the stored
    tensors are checked against the layout (names, and no more bytes than each full shape holds) and, given
    ``model``, the architecture is checked against it. Then each tensor is read straight from its offsets.
    """
    decoded: dict[str, Any] = {}

    def check(header: SafetensorsHeader) -> None:
        decoded.update(_decode_metadata(_header_metadata(header.metadata, fn, path), fn, path))
        _check_stored_sizes(header, decoded, fn, path)
        if model is not None:
            check_architecture(decoded, model, fn, path)

    tensors, raw_meta = read_safetensors(path, fn=fn, check=check)
    meta = dict(raw_meta)
    stored_sum = meta.get(_CHECKSUM_KEY)
    actual = _checksum(tensors, meta)
    if stored_sum != actual:
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} fails its checksum (stored {stored_sum!r}); the file was "
            "corrupted or modified after saving, save the ticket again"
        )
    return _decode_tensors(tensors, decoded, fn, path)


def check_architecture(metadata: Mapping[str, Any], model: nn.Module, fn: str, path: PathLike) -> None:
    """Raise ValueError unless ``model`` has the architecture in a file's decoded metadata.

    Compares the saved canonical FQNs and shapes (``metadata["architecture"]``) with the model's, and every
    stored tensor's full shape (``metadata["layout"]``) with the model's tensor of that FQN. Needs only the
    header, so a loader can refuse a file made for another model before reading its tensors.
    """
    where = f"{fn}(): path={os.fspath(path)!r}"
    current = named_state_tensors(model, buffers=True)
    expected = metadata["architecture"]
    missing = sorted(set(expected) - set(current))
    unexpected = sorted(set(current) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(current) if list(current[k].shape) != expected[k])
    if missing or unexpected or reshaped:
        details = []
        if missing:
            details.append(f"missing from the model: {missing[:5]!r}")
        if unexpected:
            details.append(f"not in the ticket: {unexpected[:5]!r}")
        if reshaped:
            details.append(
                "different shapes: "
                + ", ".join(f"{k} {tuple(current[k].shape)} vs {tuple(expected[k])}" for k in reshaped[:5])
            )
        raise ValueError(
            f"{where} was saved from a {metadata.get('model_class')} whose tensors differ from "
            f"model={_model_class(model)} ({'; '.join(details)}); build the architecture the ticket was found on"
        )
    for key, shape in metadata["layout"].items():
        role, _, fqn = key.partition("/")
        if fqn not in current:
            raise ValueError(f"{where} stores {key} but the model has no tensor {fqn!r}; the file is corrupt")
        if list(shape) != list(current[fqn].shape):
            raise ValueError(
                f"{where} stores {key} with shape {tuple(shape)} but the model's is {tuple(current[fqn].shape)}; "
                "the file is corrupt"
            )


def check_tensors_fit(content: TicketTensors, model: nn.Module, fn: str, path: PathLike) -> None:
    """Raise ValueError unless ``model`` has the saved architecture and every decoded tensor fits it."""
    check_architecture(content.metadata, model, fn, path)
    where = f"{fn}(): path={os.fspath(path)!r}"
    current = named_state_tensors(model, buffers=True)
    for role, weights in (("mask", content.masks), ("rewind", content.rewind), ("trained", content.trained)):
        for fqn, value in weights.items():
            if fqn not in current:
                raise ValueError(
                    f"{where} stores {role}/{fqn} but the model has no tensor {fqn!r}; the file is corrupt"
                )
            if list(value.shape) != list(current[fqn].shape):
                raise ValueError(
                    f"{where} stores {role}/{fqn} with shape {tuple(value.shape)} but the model's is "
                    f"{tuple(current[fqn].shape)}; the file is corrupt"
                )
            if role != "mask" and value.dtype != current[fqn].dtype:
                raise ValueError(
                    f"{where} stores {role}/{fqn} as {value.dtype} but the model holds {current[fqn].dtype}; "
                    f"convert the model with model.to({value.dtype}) before loading"
                )


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


_STATE_KEYS = ("config", "round", "history", "masks", "rewind_weights")


def write_ticket(
    path: PathLike,
    state: Mapping[str, Any],
    *,
    model: nn.Module,
    trained: Mapping[str, Tensor] | None = None,
    encoding: str = "compact",
    metadata: Mapping[str, str] | None = None,
    channels: Mapping[str, Any] | None = None,
    fn: str = "write_ticket",
) -> None:
    """Write a ticket file from plain data: a ticket's ``state_dict()`` and the model it prunes.

    Args:
        path: destination file (conventionally ``*.safetensors``); written atomically.
        state: ``"config"`` (the settings dict), ``"round"``, ``"history"``, ``"masks"`` (FQN -> bool mask, one
            per target, in target order), ``"rewind_weights"`` (FQN -> tensor), and optionally
            ``"rewind_captured"`` and ``"steps"``, as ``LotteryTicket.state_dict()`` returns them.
        model: the (unwrapped) model the masks belong to; only its class name and canonical tensor shapes
            are stored, so a loader can check it gets the same architecture.
        trained: FQN -> tensor stored under ``trained/`` (the model's current weights), or None.
        encoding: ``"compact"`` or ``"dense"`` (see the module docstring).
        metadata: extra ``str -> str`` header entries; they may not override the format's keys.
        channels: a structured ticket's channel record (JSON-able: ``ChannelPlan.to_dict()`` plus
            ``"pruning_history"``), stored as the ``channels`` entry; ``None`` for weight tickets.
        fn: the public function to name in error messages.

    Raises:
        ValueError: on an unknown ``encoding``, a ``state`` without the keys above, or clashing ``metadata``.
        TypeError: if ``metadata`` is not ``str -> str`` or ``model`` is not an ``nn.Module``.
        OSError: if the file cannot be written (``path`` is then left as it was).

    Example:
        >>> ticket = LotteryTicket(nn.Sequential(nn.Linear(4, 3)), rate=0.5)  # doctest: +SKIP
        >>> write_ticket("t.safetensors", ticket.state_dict(), model=ticket.model)  # doctest: +SKIP
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"{fn}(): encoding={encoding!r} is not supported; use one of {ENCODINGS!r}")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError(f"{fn}(): metadata must map str to str; convert values with str() or json.dumps()")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}(): model={_describe(model)} is not an nn.Module; pass the model the masks belong to")
    missing = [key for key in _STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"{fn}(): state lacks {missing!r}; pass LotteryTicket.state_dict()")
    masks = {fqn: mask.detach().cpu().to(torch.bool) for fqn, mask in state["masks"].items()}
    tensors, layout = _encode(masks=masks, rewind=state["rewind_weights"], trained=trained, encoding=encoding)
    meta = _ticket_metadata(
        state, model=model, summary=mask_rows(masks), layout=layout, encoding=encoding,
        include_trained=trained is not None, metadata=metadata, channels=channels, tensors=tensors, fn=fn,
    )
    write_safetensors_streaming(tensors, path, metadata=meta, fn=fn)
    logger.info("saved ticket (%s, round %s, %d targets) to %s", encoding, state["round"], len(masks), path)


def _ticket_metadata(
    state: Mapping[str, Any], *, model: nn.Module, summary: list[dict[str, Any]], layout: Mapping[str, list[int]],
    encoding: str, include_trained: bool, metadata: Mapping[str, str] | None, channels: Mapping[str, Any] | None,
    tensors: Mapping[str, Tensor], fn: str,
) -> dict[str, str]:
    """The header metadata of a ticket file holding the encoded ``tensors``, its checksum included."""
    targets = [row["fqn"] for row in summary]
    config = state["config"]
    sparsity = totals(summary)[2]
    meta: dict[str, str] = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "encoding": encoding,
        "torch_lottery_version": __version__,
        "torch_version": torch.__version__,
        "model_class": _model_class(model),
        "round": json.dumps(int(state["round"])),
        "sparsity": json.dumps(float(sparsity)),
        "scope": json.dumps(config.get("scope")),
        "rewind": json.dumps(config.get("rewind")),
        "seed": json.dumps(config.get("seed")),
        "rewind_captured": json.dumps(bool(state.get("rewind_captured", True))),
        "steps": json.dumps(int(state.get("steps", 0))),
        "include_trained": json.dumps(include_trained),
        "config": json.dumps(config, sort_keys=True),
        "history": json.dumps(state["history"]),
        "summary": json.dumps(summary),
        "targets": json.dumps(targets),
        "layout": json.dumps(layout),
        "architecture": json.dumps(_architecture(model)),
    }
    if channels is not None:
        meta["channels"] = json.dumps(dict(channels))
    clash = sorted(set(metadata or {}) & (set(meta) | {_CHECKSUM_KEY}))
    if clash:
        raise ValueError(f"{fn}(): metadata keys {clash!r} are reserved by the ticket format; rename them")
    meta.update(metadata or {})
    meta[_CHECKSUM_KEY] = _checksum(tensors, meta)
    return meta


def save_ticket(
    ticket: Any,
    path: PathLike,
    *,
    encoding: str = "compact",
    include_trained: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save a lottery ticket (masks, rewind weights, settings and history) as one safetensors file.

    The write is atomic: a temporary file in the same directory is written, flushed to disk and renamed over
    ``path``, so a crash leaves either the previous file or the complete new one (and possibly a stray
    ``.<name>.*.tmp`` file), never a half-written ``path``. The ticket and its model are not modified.
    The ticket is read through its public ``state_dict()``, ``target_fqns``, ``model`` and ``live_tensors()``
    and written by :func:`write_ticket`.

    Args:
        ticket: the :class:`~torch_lottery.LotteryTicket` to save.
        path: destination file (conventionally ``*.safetensors``).
        encoding: ``"compact"`` (bit-packed masks, survivors only; the file shrinks with sparsity) or
            ``"dense"`` (bool masks, full weights; readable by any safetensors tool).
        include_trained: also store the model's current weights under ``trained/<fqn>`` (every parameter
            and buffer; targets as their ``*_orig`` values). A round's exit rewinds the model, so to keep
            what a round trained to, save inside the ``with`` block after training, or use ``rewind="none"``.
        metadata: extra ``str -> str`` entries for the header; they may not override the format's keys.

    Raises:
        ValueError: on an unknown ``encoding`` or clashing ``metadata`` keys.
        TypeError: if ``ticket`` is not a LotteryTicket or ``metadata`` is not ``str -> str``.
        OSError: if the file cannot be written (``path`` is then left as it was).

    Example:
        >>> ticket.save("lenet_ticket.safetensors")  # doctest: +SKIP
        >>> ticket2 = torch_lottery.load_ticket("lenet_ticket.safetensors", LeNet())  # doctest: +SKIP
    """
    fn = "save_ticket"
    if not all(callable(getattr(ticket, name, None)) for name in ("state_dict", "live_tensors")) or not (
        isinstance(getattr(ticket, "model", None), nn.Module) and hasattr(ticket, "target_fqns")
    ):
        raise TypeError(f"{fn}(): ticket={_describe(ticket)} is not a LotteryTicket; pass the ticket to save")
    if getattr(ticket, "removed", False):
        raise RuntimeError(
            f"{fn}(): ticket.remove_() made the pruning permanent, so the ticket no longer knows its masks; "
            "save the ticket before remove_(), or write the pruned model with export_plain()"
        )
    if encoding not in ENCODINGS:
        raise ValueError(f"{fn}(): encoding={encoding!r} is not supported; use one of {ENCODINGS!r}")
    if not isinstance(include_trained, bool):
        raise TypeError(f"{fn}(): include_trained={include_trained!r} must be a bool")
    if getattr(ticket, "device_mesh", None) is not None:
        raise TypeError(
            f"{fn}(): ticket's masks are sharded (an FSDP2 model); call ticket.save(path) on every rank, which "
            "streams the shards through rank 0 (torch_lottery.sharded_files.save_sharded_ticket)"
        )
    state = dict(ticket.state_dict())
    state["masks"] = {fqn: state["masks"][fqn] for fqn in ticket.target_fqns}
    trained = {k: v.detach().cpu() for k, v in ticket.live_tensors().items()} if include_trained else None
    plan = getattr(ticket, "channel_plan", None)  # a structured ticket's groups, input spec and history
    channels = None
    if plan is not None:
        channels = {**plan.to_dict(), "pruning_history": plan.history(plan.keep_from_masks(state["masks"]))}
    write_ticket(path, state, model=ticket.model, trained=trained, encoding=encoding, metadata=metadata,
                 channels=channels, fn=fn)


def read_ticket_tensors(path: PathLike) -> TicketTensors:
    """Read and fully validate a ticket file without touching any model.

    The safetensors header is validated (and the file's size checked against it) before any tensor data is
    read; then every tensor, the checksum, the metadata and the mask counts are checked.

    Returns:
        :class:`TicketTensors` with full-shape CPU masks and weights and the decoded metadata.

    Raises:
        ValueError: if the file is not an intact ticket file of a supported version, or not a regular file.
        OSError: if the file cannot be read.

    Example:
        >>> content = read_ticket_tensors("lenet_ticket.safetensors")  # doctest: +SKIP
        >>> content.masks["fc1.weight"].float().mean()  # doctest: +SKIP
    """
    return _read_file(path, "read_ticket_tensors")


def read_ticket_info(path: PathLike) -> dict[str, Any]:
    """Read a ticket file's metadata (header only; no tensor data is read or checked).

    The header is validated as by :func:`torch_lottery.files.read_safetensors_header` (a bounded length,
    strict JSON, offsets that tile the data and match the file's size), so at most 8 bytes plus the header
    are read.

    Returns:
        dict with the decoded metadata: ``format``, ``format_version``, ``encoding``, ``torch_lottery_version``,
        ``torch_version``, ``model_class``, ``round``, ``sparsity``, ``scope``, ``rewind``, ``seed``,
        ``include_trained``, ``config``, ``history``, ``summary`` (per target: ``fqn``, ``shape``, ``numel``,
        ``remaining``, ``sparsity``), ``targets``, ``layout``, ``architecture``, ``checksum``, plus
        ``file_size`` (bytes) and ``tensor_bytes`` (bytes stored per role, from the header).

    Raises:
        ValueError: if the file is not a ticket file of a supported version, or not a regular file.
        OSError: if the file cannot be read.

    Example:
        >>> info = read_ticket_info("resnet18_ticket.safetensors")  # doctest: +SKIP
        >>> info["round"], info["sparsity"]  # doctest: +SKIP
        (10, 0.8926...)
    """
    fn = "read_ticket_info"
    header = read_safetensors_header(path, fn=fn)
    meta = _header_metadata(header.metadata, fn, path)
    info = _decode_metadata(meta, fn, path)
    for key in ("scope", "rewind", "seed"):
        info[key] = info["config"].get(key)
    tensor_bytes = {role: 0 for role in ROLES}
    for name, entry in header.tensors.items():
        role = name.partition("/")[0]
        if role not in tensor_bytes:
            raise ValueError(
                f"{fn}(): path={os.fspath(path)!r} has a tensor named {name!r}; expected 'mask/', 'rewind/' or "
                "'trained/' + FQN"
            )
        start, stop = entry["data_offsets"]
        tensor_bytes[role] += stop - start
    info["file_size"] = header.file_size
    info["tensor_bytes"] = tensor_bytes
    return info
