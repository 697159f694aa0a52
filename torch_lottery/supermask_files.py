"""Supermask ticket files: the mask with the weights, or the mask with the seed that regenerates the weights.

:func:`save_supermask` writes an ordinary ticket file (see :mod:`torch_lottery.ticket_file`) with one
extra metadata entry, ``"supermask"`` (JSON: the :class:`~torch_lottery.SupermaskTicket`'s settings,
which weights the file holds and, for seed files, a SHA-256 fingerprint of the kept weights).
:func:`load_supermask` reads it back into a fresh model. ``load_ticket(weights="trained")`` also
reads the files ``weights="stored"`` writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from typing import Mapping, Union

import torch
from torch import Tensor, nn

from .lottery import LotteryTicket
from .supermask import SupermaskTicket, supermask_weights
from .targets import find_targets, named_state_tensors, unwrap_model
from .ticket_file import read_ticket_info, read_ticket_tensors, save_ticket, write_ticket
from .ticket_io import SEED_FILE_WARNING, load_ticket

__all__ = ["METADATA_KEY", "load_supermask", "save_supermask"]

logger = logging.getLogger(__name__)

METADATA_KEY = "supermask"
_SAVE_WEIGHTS = ("stored", "seed")
PathLike = Union[str, "os.PathLike[str]"]


def save_supermask(
    ticket: SupermaskTicket, path: PathLike, *, weights: str = "stored", encoding: str = "compact"
) -> None:
    """Save a supermask (after its block) as a ticket file, with its weights or with the seed that regenerates them.

    Args:
        ticket: a :class:`~torch_lottery.SupermaskTicket` whose block has exited.
        path: destination ``.safetensors`` file (written atomically).
        weights: ``"stored"`` writes the model's weights (every parameter and buffer; under the
            compact encoding only the kept entries of the targets). ``"seed"`` writes the masks, the
            seed and ``weight_init`` (which it needs) and the tensors that are not masked (biases,
            norms, buffers: small), but not the masked weights: :func:`load_supermask` regenerates
            them from the seed and checks them against a fingerprint of the kept ones.
        encoding: ``"compact"`` or ``"dense"``, as for :func:`~torch_lottery.save_ticket`.

    Raises:
        TypeError: ``ticket`` is not a SupermaskTicket.
        RuntimeError: the block has not exited yet.
        ValueError: ``weights="seed"`` without ``weight_init``, or an unknown ``weights``.

    Example:
        >>> save_supermask(ticket, "strong.safetensors", weights="seed")  # doctest: +SKIP
    """
    fn = "save_supermask()"
    if not isinstance(ticket, SupermaskTicket):
        raise TypeError(f"{fn}: ticket={type(ticket).__name__!r} is not a SupermaskTicket")
    if weights not in _SAVE_WEIGHTS:
        raise ValueError(f"{fn}: weights={weights!r} is not one of {list(_SAVE_WEIGHTS)}")
    if weights == "seed" and ticket.weight_init is None:
        raise ValueError(
            f"{fn}: weights='seed' needs weight_init='kaiming_normal' or 'signed_constant' (weight_init=None "
            "keeps the model's own weights, which no seed regenerates); use weights='stored'"
        )
    lottery = ticket.lottery  # RuntimeError before the block has exited
    meta = dict(ticket.config(), weights=weights)
    if weights == "stored":
        extra = {METADATA_KEY: json.dumps(meta, sort_keys=True)}
        save_ticket(lottery, path, encoding=encoding, include_trained=True, metadata=extra)
        return
    masks = lottery.masks
    meta["fingerprint"] = _fingerprint(lottery.live_tensors(buffers=False), masks)
    extra = {METADATA_KEY: json.dumps(meta, sort_keys=True)}
    others = {k: v.detach().cpu() for k, v in lottery.live_tensors().items() if k not in masks}
    state = dict(lottery.state_dict())
    state["masks"] = {fqn: masks[fqn] for fqn in lottery.target_fqns}
    write_ticket(path, state, model=lottery.model, trained=others or None, encoding=encoding, metadata=extra,
                 fn="save_supermask")


def _fingerprint(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> str:
    """SHA-256 over the kept entries of every masked tensor (names, dtypes, shapes, bytes), in FQN order."""
    digest = hashlib.sha256()
    for fqn in sorted(masks):
        value = params[fqn].detach().cpu()[masks[fqn].cpu()]
        digest.update(json.dumps([fqn, str(value.dtype), list(value.shape)]).encode())
        digest.update(memoryview(value.contiguous().reshape(-1).view(torch.uint8).numpy()))
    return "sha256:" + digest.hexdigest()


def load_supermask(path: PathLike, model: nn.Module) -> LotteryTicket:
    """Load a supermask ticket file into a fresh model: masks installed, weights stored or regenerated.

    Args:
        path: a file written by :func:`save_supermask`.
        model: a fresh (unpruned) instance of the architecture the supermask was found on.

    Returns:
        A :class:`~torch_lottery.LotteryTicket` with the mask installed and the weights in place.

    Raises:
        ValueError: not a supermask file, a corrupt file, another architecture, or regenerated
            weights that do not match the saved fingerprint. Everything is checked before the model
            is touched.

    Example:
        >>> lottery = load_supermask("strong.safetensors", build_model())  # doctest: +SKIP
    """
    fn = "load_supermask()"
    where = f"{fn}: path={os.fspath(path)!r}"
    info = read_ticket_info(path)
    if METADATA_KEY not in info:
        raise ValueError(f"{where} is a ticket file but not a supermask; load it with load_ticket()")
    try:
        meta = json.loads(info[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} has unreadable supermask metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{where} has supermask metadata {meta!r:.100} that is not a JSON object; the file is corrupt")
    if meta.get("weights") == "stored":
        return load_ticket(path, model, weights="trained")
    if meta.get("weights") != "seed" or meta.get("weight_init") not in ("kaiming_normal", "signed_constant"):
        raise ValueError(f"{where} has supermask metadata {meta!r:.200} that this version cannot read")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model={type(model).__name__!r} is not an nn.Module; pass a fresh model instance")
    model = unwrap_model(model)
    content = read_ticket_tensors(path)
    found = find_targets(model, lambda fqn, _m, _p: fqn in set(meta["targets"]))
    if [t.fqn for t in found] != list(meta["targets"]):
        raise ValueError(
            f"{where} masks {meta['targets'][:5]!r} but the model has {[t.fqn for t in found][:5]!r}; "
            "build the architecture the supermask was found on"
        )
    params = {fqn: p.detach() for fqn, p in named_state_tensors(model, buffers=False).items()}
    for t in found:
        if tuple(params[t.fqn].shape) != t.shape or tuple(content.masks[t.fqn].shape) != t.shape:
            raise ValueError(f"{where} stores a mask for {t.fqn!r} that does not fit the model's {t.shape}")
    new = supermask_weights(found, params, weight_init=meta["weight_init"], seed=int(meta["seed"]))
    if _fingerprint({**params, **new}, content.masks) != meta.get("fingerprint"):
        raise ValueError(
            f"{where}: the weights regenerated from seed={meta['seed']} differ from the saved ones (a torch "
            "version that draws random numbers differently?); save the ticket with weights='stored'"
        )
    # validates, installs the masks and the stored biases/norms/buffers (rolled back on failure)
    with warnings.catch_warnings():  # load_ticket warns that the file has no masked weights: they follow
        warnings.filterwarnings("ignore", message=".*" + re.escape(SEED_FILE_WARNING))
        ticket = load_ticket(path, model, weights="trained" if content.trained else "rewind")
    by_fqn = {t.fqn: t for t in ticket.targets}
    for fqn, value in new.items():
        ticket.backend.load_(by_fqn[fqn], value)
    ticket.backend.commit_()
    logger.info("loaded supermask from %s: weights regenerated from seed %s (%s)", path, meta["seed"], meta["weight_init"])
    return ticket
