"""Ticket files and live models: load a ticket file into a fresh model as a LotteryTicket, export plain weights.

This is the layer above both the engine (:mod:`torch_lottery.lottery`) and the file format
(:mod:`torch_lottery.ticket_file`): :func:`load_ticket` reads and validates a file through the format, checks it
against the model, then builds a :class:`~torch_lottery.LotteryTicket` from the saved settings and state.
:func:`export_plain` writes a pruned model's effective weights as an ordinary safetensors state dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from typing import Any, Iterator, Mapping, Union

import torch
from torch import nn

from ._version import __version__
from .backends import effective_state_dict
from .files import write_safetensors_streaming
from .lottery import LotteryTicket
from .shards import is_sharded, like, local_piece
from .targets import named_state_tensors, unwrap_model
from .ticket_file import TicketTensors, _describe, _read_file, check_tensors_fit

__all__ = ["SEED_FILE_WARNING", "export_plain", "load_ticket"]

SEED_FILE_WARNING = "is a supermask saved with weights='seed'"
"""Start of load_ticket's warning for a supermask file that stores a seed instead of the masked weights."""

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


# Every hook table of nn.Module: a failed load must leave none of the backend's hooks behind.
_HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


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
                {name: dict(getattr(module, name)) for name in _HOOK_DICTS if isinstance(getattr(module, name, None), dict)},
                dict(module.__dict__),
                {id(t): t.detach().clone() for t in tensors},
            )
        )
    grad_hooks = [(p, dict(p._post_accumulate_grad_hooks or {})) for p in model.parameters()]
    try:
        yield
    except BaseException:
        for param, hooks in grad_hooks:  # a backend's gradient hooks installed by the failed load go too
            live_hooks = param._post_accumulate_grad_hooks
            if live_hooks is not None:
                for key in [k for k in live_hooks if k not in hooks]:
                    del live_hooks[key]
        with torch.no_grad():
            for module, params, buffers, hooks, attrs, values in saved:
                for name in set(module.__dict__) - set(attrs):
                    delattr(module, name)
                module.__dict__.update(attrs)
                containers = [(module._parameters, params), (module._buffers, buffers)]
                containers += [(getattr(module, name), old) for name, old in hooks.items()]
                for live, old in containers:  # in place: the dicts are shared with the attributes restored above
                    live.clear()
                    live.update(old)
                for tensor in list(params.values()) + list(buffers.values()):
                    if tensor is not None:
                        tensor.copy_(values[id(tensor)])
        raise


def _shard_like_model(content: TicketTensors, model: nn.Module) -> TicketTensors:
    """``content`` with each full tensor of an FSDP2 DTensor cut to this rank's shard, placed like it."""
    live = named_state_tensors(model, buffers=True)
    if not any(is_sharded(t) for t in live.values()):
        return content

    def cut(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: like(local_piece(v, live[k]).clone(), live[k]) if is_sharded(live.get(k)) else v for k, v in tensors.items()}

    return dataclasses.replace(content, masks=cut(content.masks), rewind=cut(content.rewind), trained=cut(content.trained))


def load_ticket(
    path: PathLike,
    model: nn.Module,
    *,
    weights: str = "rewind",
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    criterion: Any = None,
    snapshot_device: str | torch.device | None = None,
    backend: str | None = None,
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
        backend: overrides the saved mask backend (an FSDP2-sharded ``model`` needs ``"baked"`` or
            ``"baked-bits"``; every rank then reads the file and keeps only its own shards).

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
    model = unwrap_model(model)
    content = _read_file(path, fn, model=model)  # checks the architecture before reading any tensor
    if weights == "trained" and not content.trained:
        raise ValueError(
            f"{fn}(): path={os.fspath(path)!r} has no trained weights; save with include_trained=True "
            "or load weights='rewind'"
        )
    check_tensors_fit(content, model, fn, path)
    content = _shard_like_model(content, model)  # FSDP2: each rank keeps its shards of every tensor
    meta = content.metadata
    if '"weights": "seed"' in meta.get("supermask", ""):
        warnings.warn(
            f"{fn}(): path={os.fspath(path)!r} {SEED_FILE_WARNING}: it holds no masked weights, so the model keeps "
            "its own under the masks; load it with torch_lottery.load_supermask(), which regenerates them",
            stacklevel=2,
        )
    config = dict(meta["config"])
    overrides: dict[str, Any] = {"optimizer": optimizer, "scheduler": scheduler}
    if criterion is not None:
        overrides["criterion"] = criterion
    device = snapshot_device if snapshot_device is not None else config.get("snapshot_device", "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.info("load_ticket(): snapshot_device %r unavailable; keeping the snapshot on the CPU", device)
        device = "cpu"
    overrides["snapshot_device"] = device
    if backend is not None:
        overrides["backend"] = backend
    if config.get("granularity", "weight") == "channel":  # a structured ticket: its plan comes from the file
        if "channels" not in meta:
            raise ValueError(
                f"{fn}(): path={os.fspath(path)!r} is a structured ticket without its 'channels' entry; the file is corrupt"
            )
        from .structured import ChannelPlan

        importance = config.get("importance", "l1")  # a custom importance is refused here, by name
        overrides["example_inputs"] = ChannelPlan.from_dict(model, meta["channels"], importance=importance)
    state = content.state_dict()
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

    The values are :func:`torch_lottery.backends.effective_state_dict` (whatever the mask backend), written
    one tensor at a time. No ``*_orig`` / ``*_mask`` keys are written, so
    ``safetensors.torch.load_model(fresh_model, path)`` loads the file into an unpruned instance of the same class. Tied weights are stored once, under the first
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
    plain = effective_state_dict(model, fn=fn)  # canonical keys, masks applied; tied tensors are one object
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
    write_safetensors_streaming(plain, path, metadata=meta, fn=fn)
    logger.info("exported plain state dict (%d tensors) to %s", len(plain), path)
