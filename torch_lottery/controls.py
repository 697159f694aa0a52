"""The paper's control experiments: random masks with a ticket's counts, random re-initialization."""

from __future__ import annotations

import copy
import logging
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .shards import is_sharded, like, local_piece
from .shards import local as local_tensor
from .targets import Target, canonical_name, get_place, named_state_tensors

__all__ = ["fresh_init", "random_masks_like"]

logger = logging.getLogger(__name__)


def random_masks_like(masks: Mapping[str, Tensor], *, seed: int = 0) -> dict[str, Tensor]:
    """Random masks with exactly the same number of survivors per tensor as ``masks``.

    Args:
        masks: FQN -> bool mask (e.g. ``ticket.masks``).
        seed: seed of the positions drawn; the same seed gives the same masks.

    Returns:
        FQN -> bool mask of the same shape, device and count of ``True`` entries.

    Example:
        >>> import torch
        >>> m = random_masks_like({"w": torch.tensor([True, False, True, False])}, seed=1)
        >>> int(m["w"].sum())
        2
    """
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, mask in masks.items():
        if mask.dtype != torch.bool:
            raise TypeError(f"random_masks_like(): masks[{key!r}] has dtype {mask.dtype}; pass bool masks")
        keep = int(torch.count_nonzero(mask))
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[torch.randperm(mask.numel(), generator=generator)[:keep]] = True
        out[key] = flat.reshape(mask.shape).to(mask.device)
    return out


def _detached_clone(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` and its children with fresh parameters and cloned buffers,
    so ``reset_parameters()`` on it cannot touch the original (pruned or not).

    Parameters and buffers appear under their canonical names (:func:`canonical_name`): a tensor
    reparametrized by torch.nn.utils.prune is a plain Parameter again, its mask is left out.
    """
    if type(module).__new__ is object.__new__:
        clone = copy.copy(module)
    else:  # fully_shard's FSDP<Class> re-runs __init__ from __new__, so copy.copy cannot build one
        clone = object.__new__(type(module))
    clone.__dict__ = dict(module.__dict__)
    clone._forward_pre_hooks = type(module._forward_pre_hooks)()
    params = {}
    for local, p in module._parameters.items():
        name = canonical_name(module, local) or local
        if p is None:
            params[name] = None
            continue
        # an FSDP2 DTensor gets a full-size plain tensor: re-initialized as one process would, then cut
        fresh = torch.empty(p.shape, dtype=p.dtype, device=local_tensor(p).device) if is_sharded(p) else torch.empty_like(p.detach())
        params[name] = nn.Parameter(fresh, requires_grad=p.requires_grad)
        clone.__dict__.pop(name, None)  # prune's recomputed attribute would shadow the Parameter
    clone._parameters = params
    clone._buffers = {
        k: (None if b is None else b.detach().clone())
        for k, b in module._buffers.items()
        if canonical_name(module, k) is not None
    }
    clone._modules = {k: (None if m is None else _detached_clone(m)) for k, m in module._modules.items()}
    return clone


def fresh_init(model: nn.Module, targets: Sequence[Target], *, seed: int) -> dict[str, Tensor]:
    """New random values for each target, drawn the way its layer initializes itself.

    Each owning module is cloned (fresh tensors, nothing shared with ``model``) and re-initialized
    with its ``reset_parameters()`` (or ``_reset_parameters()``) under ``seed``. A tensor whose
    owner has neither (a raw ``nn.Parameter`` on a custom module) gets a random permutation of
    its current values, which keeps its empirical distribution; this is logged.

    Returns:
        FQN -> new tensor (detached, on the target's device). ``model`` is not modified.
    """
    out: dict[str, Tensor] = {}
    live: dict[str, Tensor] | None = None  # canonical FQN -> Parameter, read only when needed
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=cuda):
        for i, target in enumerate(targets):
            owner = get_place(model, target.module_name)
            torch.manual_seed(seed * 100_003 + i)
            reset = getattr(owner, "reset_parameters", None) or getattr(owner, "_reset_parameters", None)
            param = owner._parameters.get(target.name)
            if reset is not None:
                clone = _detached_clone(owner)
                getattr(clone, reset.__name__)()
                value = clone._parameters[target.name].detach()
                # sharded: keep this rank's rows of the full draw (one full tensor at a time)
                out[target.fqn] = like(local_piece(value, param).clone(), param) if is_sharded(param) else value
            elif is_sharded(param):
                raise ValueError(
                    f"fresh_init(): {target.fqn!r} is an FSDP2 DTensor whose module {type(owner).__name__} has no "
                    "reset_parameters(); rewind='reinit' on a sharded model needs one (or use rewind='init')"
                )
            else:
                if live is None:
                    live = named_state_tensors(model, buffers=False)
                current = live[target.fqn]
                flat = current.detach().reshape(-1)
                perm = torch.randperm(flat.numel()).to(flat.device)
                out[target.fqn] = flat[perm].reshape(current.shape).clone()
                logger.info("fresh_init: %s has no reset_parameters(); permuted its values instead", target.fqn)
    return out
