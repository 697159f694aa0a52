"""Compact model files: a compact model's weights as plain safetensors, with the history that rebuilds its architecture.

The tensors are the compact model's ``state_dict()`` under their usual names, so any
safetensors reader loads them. The metadata records the architecture: the dense model's class,
Torch-Pruning's pruning history (``[[root module, True, removed channels], ...]``) and the
example inputs' shapes and dtypes. :func:`load_compact` replays that history on a fresh dense
instance (through Torch-Pruning, on inputs made from the spec) and loads the weights into the
result, so the compact model comes back without its original example inputs.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._version import __version__
from .channels import example_inputs_from_spec, plain_copy
from .compact import replay_history_
from .files import load_json, read_safetensors, read_safetensors_header, write_safetensors_streaming
from .targets import unwrap_model

__all__ = ["FORMAT", "load_compact", "read_compact_info", "save_compact"]

PathLike = Union[str, "os.PathLike[str]"]
FORMAT = "torch_lottery.compact/1"


def _model_class(model: nn.Module) -> str:
    cls = type(unwrap_model(model))
    return f"{cls.__module__}.{cls.__qualname__}"


def save_compact(
    model: nn.Module,
    path: PathLike,
    *,
    history: Sequence[Sequence[Any]],
    input_spec: Mapping[str, Any],
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Write ``model`` (a compact model) as a plain safetensors file with its architecture in the metadata.

    Args:
        model: the compact model (e.g. from ``ticket.compact()``).
        path: the file; written atomically through :mod:`torch_lottery.files` (the old file stays
            whole if anything fails).
        history: the pruning history that turned the dense model into ``model``
            (``ticket.pruning_history()`` or :func:`~torch_lottery.compact.pruning_history`).
        input_spec: the example inputs' shapes and dtypes (:func:`~torch_lottery.channels.input_spec`).
        metadata: extra string metadata; keys starting with ``torch_lottery.`` are reserved.

    Example:
        >>> import os, tempfile, torch
        >>> from torch import nn
        >>> from torch_lottery.channels import find_channel_groups, input_spec
        >>> from torch_lottery.compact import compact_model, pruning_history
        >>> model, x = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4)
        >>> groups = find_channel_groups(model, x)
        >>> keep = {"0": torch.arange(8) < 3}
        >>> small = compact_model(model, groups, keep, example_inputs=x)
        >>> path = os.path.join(tempfile.mkdtemp(), "small.safetensors")
        >>> save_compact(small, path, history=pruning_history(groups, keep), input_spec=input_spec(x))
        >>> again = load_compact(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), path)
        >>> torch.equal(again[0].weight, small[0].weight)
        True
    """
    extra = dict(metadata or {})
    bad = [k for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str) or k.startswith("torch_lottery.")]
    if bad:
        raise ValueError(
            f"save_compact(): metadata keys {bad!r} are reserved or not strings; pass str -> str without the "
            "'torch_lottery.' prefix"
        )
    state = unwrap_model(model).state_dict()
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    by_storage: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for key, value in state.items():
        value = value.detach()
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if value.numel() and ident in by_storage:
            aliases[key] = by_storage[ident]  # a tied weight: stored once
            continue
        by_storage[ident] = key
        tensors[key] = value.to("cpu").contiguous()
    info = {
        "format": FORMAT,
        "model_class": _model_class(model),
        "pruning_history": [list(h) for h in history],
        "input_spec": dict(input_spec),
        "aliases": aliases,
    }
    meta = {**extra, "torch_lottery.compact": json.dumps(info), "torch_lottery.version": __version__}
    write_safetensors_streaming(tensors, path, metadata=meta, fn="save_compact")


def read_compact_info(path: PathLike) -> dict[str, Any]:
    """The architecture record of a compact file (class, pruning history, input spec, tied names).

    Raises:
        ValueError: the file is not a compact model file.
    """
    return _info(read_safetensors_header(path, fn="read_compact_info").metadata, path, "read_compact_info")


def _info(meta: Mapping[str, str], path: PathLike, fn: str) -> dict[str, Any]:
    raw = meta.get("torch_lottery.compact")
    if raw is None:
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} holds no compact model record; write it with save_compact()"
        )
    info = load_json(raw, what="metadata entry 'torch_lottery.compact'", where=f"path={os.fspath(path)!r}", fn=fn)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        got = info.get("format") if isinstance(info, dict) else info
        raise ValueError(f"{fn}(): path={os.fspath(path)!r} has format {got!r}, expected {FORMAT!r}")
    return info


def load_compact(model: nn.Module, path: PathLike) -> nn.Module:
    """Rebuild the compact model of ``path`` from ``model``, a fresh instance of its dense architecture.

    ``model`` is not changed: a copy is shrunk by replaying the file's pruning history through
    Torch-Pruning, then the file's weights are loaded into it (strictly: every tensor must fit).

    Returns:
        The compact model (in ``model``'s train/eval mode).

    Raises:
        ValueError: not a compact file, a model of another class, or weights that do not fit.
    """
    info = _info(read_safetensors_header(path, fn="load_compact").metadata, path, "load_compact")
    if _model_class(model) != info["model_class"]:
        raise ValueError(
            f"load_compact(): path={os.fspath(path)!r} holds a compact {info['model_class']}, but model is a "
            f"{_model_class(model)}; pass a fresh instance of {info['model_class']}"
        )
    clone = plain_copy(model)
    device = next((p.device for p in clone.parameters()), torch.device("cpu"))
    inputs = example_inputs_from_spec(info["input_spec"], device=device)
    replay_history_(clone, info["pruning_history"], inputs, where="load_compact()")
    tensors, _ = read_safetensors(path, fn="load_compact")
    tensors = {k: v.to(device) for k, v in tensors.items()}
    for alias, key in info.get("aliases", {}).items():
        tensors[alias] = tensors[key]
    try:
        clone.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"load_compact(): the weights in {os.fspath(path)!r} do not fit the rebuilt model ({exc}); "
            "pass a fresh instance of the dense architecture the file was made from"
        ) from None
    return clone
