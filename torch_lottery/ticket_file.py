"""Ticket files: write and read lottery tickets as safetensors files, and export pruned models as plain ones.

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
shapes) and a SHA-256 checksum over metadata and tensors. Nothing is ever unpickled, and writes are atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Union

import safetensors.torch
import torch
from torch import Tensor, nn

from .lottery import LotteryTicket
from .masking import pack_bits, unpack_bits
from .targets import canonical_name, named_state_tensors, unwrap_model

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ENCODINGS",
    "pack_mask",
    "unpack_mask",
    "compact_values",
    "expand_values",
    "save_ticket",
    "load_ticket",
    "read_ticket_info",
    "read_ticket_tensors",
    "export_plain",
    "TicketTensors",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

FORMAT_NAME = "torch_lottery.ticket"
FORMAT_VERSION = 1
ENCODINGS = ("compact", "dense")
ROLES = ("mask", "rewind", "trained")
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
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


def _describe(obj: object) -> str:
    if isinstance(obj, Tensor):
        return f"<Tensor dtype={obj.dtype} shape={tuple(obj.shape)}>"
    return repr(obj) if len(repr(obj)) < 80 else f"<{type(obj).__name__}>"


def _mask_summary(masks: Mapping[str, Tensor]) -> list[dict[str, Any]]:
    rows = []
    for fqn, mask in masks.items():
        numel = mask.numel()
        remaining = int(torch.count_nonzero(mask))
        rows.append(
            {
                "fqn": fqn,
                "shape": list(mask.shape),
                "numel": numel,
                "remaining": remaining,
                "sparsity": (1.0 - remaining / numel) if numel else 0.0,
            }
        )
    return rows


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
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------------------------------------------
# Atomic write and raw read
# --------------------------------------------------------------------------------------------------------------


def _new_file_mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _atomic_save(tensors: dict[str, Tensor], metadata: dict[str, str], path: PathLike) -> None:
    """Write a safetensors file so that ``path`` is either its old self or the complete new file, never half."""
    target = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, _new_file_mode(target))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows it
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _read_header(handle_bytes: bytes, fn: str, path: PathLike) -> dict[str, Any]:
    """Parse a safetensors header (the 8-byte length, then JSON) without touching the tensor data."""
    if len(handle_bytes) < 8:
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} is too short to be a safetensors file ({len(handle_bytes)} bytes); "
            "pass a ticket file written by save_ticket()"
        )
    (length,) = struct.unpack("<Q", handle_bytes[:8])
    if length > _MAX_HEADER_BYTES or 8 + length > len(handle_bytes):
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} has a header length of {length} bytes that does not fit the file; "
            "the file is truncated or not a safetensors file"
        )
    try:
        header = json.loads(handle_bytes[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} has an unreadable safetensors header ({exc}); "
            "the file is corrupt or not a safetensors file"
        ) from exc
    if not isinstance(header, dict):
        raise ValueError(f"{fn}(): path={os.fspath(path)!r} has a safetensors header that is not a JSON object")
    return header


def _header_metadata(header: Mapping[str, Any], fn: str, path: PathLike) -> dict[str, str]:
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"{fn}(): path={os.fspath(path)!r} has metadata that is not a str -> str mapping")
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
        try:
            value = json.loads(meta[key])
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(
                f"{fn}(): path={os.fspath(path)!r} has unreadable JSON in metadata entry {key!r} ({exc})"
            ) from exc
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(
                f"{fn}(): path={os.fspath(path)!r} has metadata entry {key!r} of type {type(value).__name__}, "
                f"expected {kind.__name__}; the file is corrupt"
            )
        decoded[key] = value
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
            if not (stored.is_floating_point() or stored.dtype in (torch.int64, torch.int32, torch.bool,
                                                                    torch.uint8, torch.int8, torch.int16)):
                raise ValueError(f"{where} has tensor {key!r} of unsupported dtype {stored.dtype}")
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


def _read_file(path: PathLike, fn: str) -> TicketTensors:
    """Read, checksum and decode a whole ticket file. Raises only ``OSError`` or ``ValueError``."""
    with open(os.fspath(path), "rb") as handle:
        data = handle.read()
    header = _read_header(data, fn, path)
    meta = _header_metadata(header, fn, path)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises SafetensorError (an Exception) on malformed files
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} is not a valid safetensors file ({exc}); "
            "it is truncated or corrupt, save the ticket again"
        ) from exc
    stored_sum = meta.get(_CHECKSUM_KEY)
    actual = _checksum(tensors, meta)
    if stored_sum != actual:
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} fails its checksum (stored {stored_sum!r}); the file was "
            "corrupted or modified after saving, save the ticket again"
        )
    decoded = _decode_metadata(meta, fn, path)
    return _decode_tensors(tensors, decoded, fn, path)


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def save_ticket(
    ticket: LotteryTicket,
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
    if not isinstance(ticket, LotteryTicket):
        raise TypeError(f"{fn}(): ticket={_describe(ticket)} is not a LotteryTicket; pass the ticket to save")
    if encoding not in ENCODINGS:
        raise ValueError(f"{fn}(): encoding={encoding!r} is not supported; use one of {ENCODINGS!r}")
    if not isinstance(include_trained, bool):
        raise TypeError(f"{fn}(): include_trained={include_trained!r} must be a bool")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError(f"{fn}(): metadata must map str to str; convert values with str() or json.dumps()")
    state = ticket.state_dict()
    targets = list(ticket.target_fqns)
    masks = {fqn: state["masks"][fqn].to(torch.bool) for fqn in targets}
    trained = {k: v.detach().cpu() for k, v in ticket.live_tensors().items()} if include_trained else None
    tensors, layout = _encode(masks=masks, rewind=state["rewind_weights"], trained=trained, encoding=encoding)
    config = state["config"]
    from torch_lottery import __version__

    meta: dict[str, str] = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "encoding": encoding,
        "torch_lottery_version": __version__,
        "torch_version": torch.__version__,
        "model_class": _model_class(ticket.model),
        "round": json.dumps(int(state["round"])),
        "sparsity": json.dumps(float(ticket.sparsity)),
        "scope": json.dumps(config.get("scope")),
        "rewind": json.dumps(config.get("rewind")),
        "seed": json.dumps(config.get("seed")),
        "rewind_captured": json.dumps(bool(state.get("rewind_captured", True))),
        "steps": json.dumps(int(state.get("steps", 0))),
        "include_trained": json.dumps(include_trained),
        "config": json.dumps(config, sort_keys=True),
        "history": json.dumps(state["history"]),
        "summary": json.dumps(_mask_summary(masks)),
        "targets": json.dumps(targets),
        "layout": json.dumps(layout),
        "architecture": json.dumps(_architecture(ticket.model)),
    }
    clash = sorted(set(metadata or {}) & (set(meta) | {_CHECKSUM_KEY}))
    if clash:
        raise ValueError(f"{fn}(): metadata keys {clash!r} are reserved by the ticket format; rename them")
    meta.update(metadata or {})
    meta[_CHECKSUM_KEY] = _checksum(tensors, meta)
    _atomic_save(tensors, meta, path)
    logger.info("saved ticket (%s, round %s, %d targets) to %s", encoding, state["round"], len(targets), path)


def read_ticket_tensors(path: PathLike) -> TicketTensors:
    """Read and fully validate a ticket file without touching any model.

    Returns:
        :class:`TicketTensors` with full-shape CPU masks and weights and the decoded metadata.

    Raises:
        ValueError: if the file is not an intact ticket file of a supported version.
        OSError: if the file cannot be read.
    """
    return _read_file(path, "read_ticket_tensors")


def read_ticket_info(path: PathLike) -> dict[str, Any]:
    """Read a ticket file's metadata (header only; no tensor data is read or checked).

    Returns:
        dict with the decoded metadata: ``format``, ``format_version``, ``encoding``, ``torch_lottery_version``,
        ``torch_version``, ``model_class``, ``round``, ``sparsity``, ``scope``, ``rewind``, ``seed``,
        ``include_trained``, ``config``, ``history``, ``summary`` (per target: ``fqn``, ``shape``, ``numel``,
        ``remaining``, ``sparsity``), ``targets``, ``layout``, ``architecture``, ``checksum``, plus
        ``file_size`` (bytes) and ``tensor_bytes`` (bytes stored per role, from the header).

    Raises:
        ValueError: if the file is not a ticket file of a supported version.
        OSError: if the file cannot be read.

    Example:
        >>> info = read_ticket_info("resnet18_ticket.safetensors")  # doctest: +SKIP
        >>> info["round"], info["sparsity"]  # doctest: +SKIP
        (10, 0.8926...)
    """
    fn = "read_ticket_info"
    size = os.path.getsize(os.fspath(path))
    with open(os.fspath(path), "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) == 8:
            (length,) = struct.unpack("<Q", prefix)
            prefix += handle.read(min(length, _MAX_HEADER_BYTES + 1))
    header = _read_header(prefix, fn, path)
    meta = _header_metadata(header, fn, path)
    info = _decode_metadata(meta, fn, path)
    for key in ("scope", "rewind", "seed"):
        info[key] = info["config"].get(key)
    tensor_bytes = {role: 0 for role in ROLES}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = entry["data_offsets"]
            tensor_bytes[name.partition("/")[0]] += int(stop) - int(start)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{fn}(): path={os.fspath(path)!r} has a malformed header entry {name!r}") from exc
    info["file_size"] = size
    info["tensor_bytes"] = tensor_bytes
    return info


@contextlib.contextmanager
def _rollback_on_error(model: nn.Module) -> Iterator[None]:
    """Restore ``model`` exactly (tensor values, Parameter objects, hooks, attributes) if the body raises."""
    saved = []
    for module in model.modules():
        tensors = [t for t in list(module._parameters.values()) + list(module._buffers.values()) if t is not None]
        saved.append(
            (
                module,
                dict(module._parameters),
                dict(module._buffers),
                dict(module._forward_pre_hooks),
                dict(module.__dict__),
                {id(t): t.detach().clone() for t in tensors},
            )
        )
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for module, params, buffers, hooks, attrs, values in saved:
                for name in set(module.__dict__) - set(attrs):
                    delattr(module, name)
                module.__dict__.update(attrs)
                for live, old in ((module._parameters, params), (module._buffers, buffers),
                                  (module._forward_pre_hooks, hooks)):
                    live.clear()
                    live.update(old)
                for tensor in list(params.values()) + list(buffers.values()):
                    if tensor is not None:
                        tensor.copy_(values[id(tensor)])
        raise


def _check_against_model(content: TicketTensors, model: nn.Module, fn: str, path: PathLike) -> None:
    """Raise ValueError unless ``model`` has the saved architecture and every stored tensor fits it."""
    where = f"{fn}(): path={os.fspath(path)!r}"
    current = named_state_tensors(model, buffers=True)
    expected = content.metadata["architecture"]
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
            f"{where} was saved from a {content.metadata.get('model_class')} whose tensors differ from "
            f"model={_model_class(model)} ({'; '.join(details)}); build the architecture the ticket was found on"
        )
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


def load_ticket(
    path: PathLike,
    model: nn.Module,
    *,
    weights: str = "rewind",
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    criterion: Any = None,
    snapshot_device: str | torch.device | None = None,
) -> LotteryTicket:
    """Load a ticket file into a freshly built model and return a LotteryTicket that can keep pruning.

    Everything is validated before the model is touched: the file's integrity (checksum), format version,
    tensor names, shapes, dtypes and mask counts, the saved settings, and that ``model`` has the architecture
    the ticket was found on. Then the masks are installed through ``torch.nn.utils.prune`` and the weights
    copied in place (Parameter objects keep their identity). If anything fails, the model is left exactly as
    it was.

    With ``weights="rewind"`` the model holds the ticket's rewind point (theta_0 or theta_k; for
    ``rewind="reinit"`` tickets, the same seeded re-initialization), so training it reproduces the ticket.
    Tensors not in the snapshot (``restore="params"`` leaves out buffers, ``"targets"`` everything else)
    keep the fresh model's values. A compact file holds zeros at pruned positions.

    Args:
        path: a file written by :func:`save_ticket` / :meth:`LotteryTicket.save`.
        model: a fresh (unpruned) instance of the architecture the ticket was found on, with the same dtypes.
        weights: ``"rewind"`` loads the rewind weights; ``"trained"`` loads the trained weights (a file saved
            with ``include_trained=True``) and keeps the rewind point for the next round.
        optimizer, scheduler: handed to the new ticket (they are not saved in the file).
        criterion: the scoring callable, needed when the ticket was found with a custom criterion (the file
            stores only its name).
        snapshot_device: overrides the saved one (a CUDA device falls back to ``"cpu"`` when CUDA is absent).

    Returns:
        A :class:`~torch_lottery.LotteryTicket` with the saved settings, round, history, masks and rewind
        point; ``with ticket:`` runs the next IMP round.

    Raises:
        ValueError: if the file is corrupt, truncated, tampered with, of another format or version, or made
            for a different architecture; or on a bad ``weights``.
        TypeError: if ``model`` is not an ``nn.Module``.
        OSError: if the file cannot be read.

    Example:
        >>> ticket = torch_lottery.load_ticket("resnet18_ticket.safetensors", torchvision.models.resnet18())  # doctest: +SKIP
        >>> with ticket:  # doctest: +SKIP
        ...     train(ticket.model)
    """
    fn = "load_ticket"
    if weights not in ("rewind", "trained"):
        raise ValueError(f"{fn}(): weights={weights!r} is not supported; use 'rewind' or 'trained'")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}(): model={_describe(model)} is not an nn.Module; pass a fresh model instance")
    content = _read_file(path, fn)
    if weights == "trained" and not content.trained:
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} has no trained weights; save with include_trained=True "
            "or load weights='rewind'"
        )
    model = unwrap_model(model)
    _check_against_model(content, model, fn, path)
    meta = content.metadata
    config = dict(meta["config"])
    overrides: dict[str, Any] = {"optimizer": optimizer, "scheduler": scheduler}
    if criterion is not None:
        overrides["criterion"] = criterion
    device = snapshot_device if snapshot_device is not None else config.get("snapshot_device", "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.info("load_ticket(): snapshot_device %r unavailable; keeping the snapshot on the CPU", device)
        device = "cpu"
    overrides["snapshot_device"] = device
    state = {
        "config": config,
        "round": meta["round"],
        "history": meta["history"],
        "masks": content.masks,
        "rewind_weights": content.rewind,
        "rewind_captured": meta["rewind_captured"],
        "steps": meta["steps"],
    }
    values = content.rewind if weights == "rewind" else content.trained
    with _rollback_on_error(model):  # building the ticket adopts masks already in the model: roll that back too
        try:
            ticket = LotteryTicket.from_config(model, config, **overrides)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{fn}(): path={os.fspath(path)!r} holds settings this model or library rejects ({exc}); "
                "pass criterion= for a custom criterion, or build the architecture the ticket was found on"
            ) from exc
        if ticket.target_fqns != meta["targets"]:
            raise ValueError(
                f"{fn}(): path={os.fspath(path)!r} targets {meta['targets'][:5]!r}... but its settings select "
                f"{ticket.target_fqns[:5]!r}... in this model; build the architecture the ticket was found on"
            )
        ticket.load_state_dict(state)
        live = ticket.live_tensors()
        with torch.no_grad():
            for fqn, value in values.items():
                live[fqn].copy_(value)
        if weights == "rewind" and ticket.rewind == "reinit" and ticket.round > 0:
            ticket.rewind_()  # the same seeded re-initialization the saved round ended with
        for target in ticket.targets:
            ticket.backend.refresh_(target)
    logger.info("loaded ticket from %s (round %d, sparsity %.4f)", path, ticket.round, ticket.sparsity)
    return ticket


def export_plain(
    model_or_ticket: nn.Module | LotteryTicket, path: PathLike, *, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a pruned model as an ordinary safetensors state dict: zeros baked in, original key names.

    No ``*_orig`` / ``*_mask`` keys are written, so ``safetensors.torch.load_model(fresh_model, path)``
    loads the file into an unpruned instance of the same class. Tied weights are stored once, under the first
    of their names in sorted order, with each other name recorded in the metadata (``{name: kept name}``) as
    safetensors' ``save_model`` does. The model is not modified; the write is atomic.

    Args:
        model_or_ticket: a model pruned through ``torch.nn.utils.prune`` (or not pruned), or a LotteryTicket.
        path: destination file.
        metadata: extra ``str -> str`` header entries.

    Raises:
        TypeError: if ``model_or_ticket`` is neither a module nor a ticket.
        ValueError: if tied weights are masked differently (a plain model holds them once).

    Example:
        >>> torch_lottery.export_plain(ticket, "resnet18_pruned.safetensors")  # doctest: +SKIP
        >>> safetensors.torch.load_model(torchvision.models.resnet18(), "resnet18_pruned.safetensors")  # doctest: +SKIP
    """
    fn = "export_plain"
    if isinstance(model_or_ticket, LotteryTicket):
        model = model_or_ticket.model
    elif isinstance(model_or_ticket, nn.Module):
        model = unwrap_model(model_or_ticket)
    else:
        raise TypeError(f"{fn}(): model_or_ticket={_describe(model_or_ticket)} is neither an nn.Module nor a ticket")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError(f"{fn}(): metadata must map str to str; convert values with str() or json.dumps()")
    state = model.state_dict(keep_vars=True)
    modules = dict(model.named_modules(remove_duplicate=False))
    plain: dict[str, Tensor] = {}
    first_of: dict[tuple[Any, ...], tuple[str, Tensor]] = {}
    for key, tensor in state.items():
        prefix, _, local = key.rpartition(".")
        module = modules[prefix]
        name = canonical_name(module, local)
        if name is None:  # prune's *_mask buffer
            continue
        fqn = f"{prefix}.{name}" if prefix else name
        source = tensor.detach()
        value = source
        if name != local:  # *_orig: bake the mask in
            mask = module._buffers[f"{name}_mask"]
            value = torch.where(mask.to(torch.bool), source, torch.zeros((), dtype=source.dtype, device=source.device))
        ident = (
            source.device, source.untyped_storage().data_ptr(), source.storage_offset(),
            tuple(source.shape), tuple(source.stride()), source.dtype,
        )
        if source.numel() and ident in first_of:
            first_fqn, first_value = first_of[ident]
            if not torch.equal(first_value, value.cpu()):
                raise ValueError(
                    f"{fn}(): tied tensors {first_fqn!r} and {fqn!r} differ after masking; a plain model holds "
                    "them once, so mask every place of a tied weight alike (LotteryTicket does)"
                )
            plain[fqn] = first_value
            continue
        value = value.cpu().contiguous().clone()
        if source.numel():
            first_of[ident] = (fqn, value)
        plain[fqn] = value
    from torch_lottery import __version__

    meta = {"format": "pt", "producer": f"torch_lottery {__version__} export_plain"}
    groups: dict[int, list[str]] = {}
    for fqn, value in plain.items():
        groups.setdefault(id(value), []).append(fqn)
    for names in groups.values():
        keep, *drop = sorted(names)
        for name in drop:
            meta[name] = keep
            del plain[name]
    meta.update(metadata or {})
    _atomic_save(plain, meta, path)
    logger.info("exported plain state dict (%d tensors) to %s", len(plain), path)
