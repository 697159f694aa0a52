"""Mask backends: how a ticket's masks are put into a model and read back out."""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .targets import Target, get_place

__all__ = ["BACKENDS", "MaskBackend", "PruneBackend", "make_backend"]

# Layers whose forward reads their children's weights directly, without calling the children's
# forward (so the children's prune hooks would not refresh the masked weight first).
_DIRECT_READERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


class MaskBackend:
    """The seam between a ticket and a model: install, read, refresh and remove masks.

    One backend instance serves one model. Every method takes a :class:`Target`; masks are
    bool tensors shaped like the target. After :meth:`apply_`, the model's forward sees the
    masked (effective) weight and pruned entries stay zero through training.
    """

    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def is_masked(self, target: Target) -> bool:
        """Whether a mask is installed on ``target``."""
        raise NotImplementedError

    def apply_(self, target: Target, mask: Tensor) -> None:
        """Install ``mask`` on ``target``, or replace the one installed; effective weight follows."""
        raise NotImplementedError

    def unapply_(self, target: Target) -> None:
        """Undo :meth:`apply_` without baking anything in: the raw parameter values come back."""
        raise NotImplementedError

    def mask(self, target: Target) -> Tensor:
        """The installed mask as a bool tensor (all ``True`` if none is installed)."""
        raise NotImplementedError

    def parameter(self, target: Target) -> nn.Parameter:
        """The Parameter the optimizer updates for ``target`` (its identity never changes)."""
        raise NotImplementedError

    def weight(self, target: Target) -> Tensor:
        """The current effective weight, detached: what the forward pass uses."""
        raise NotImplementedError

    def refresh_(self, target: Target) -> None:
        """Recompute the effective weight after the parameter was written in place."""
        raise NotImplementedError

    def remove_(self, target: Target) -> None:
        """Make pruning permanent: a plain Parameter with zeros baked in, no mask left."""
        raise NotImplementedError


class PruneBackend(MaskBackend):
    """Masks as torch.nn.utils.prune leaves them: ``<name>_orig``, ``<name>_mask`` and a forward
    pre-hook. ``prune.is_pruned(model)`` holds and ``prune.remove`` works.

    Tied weights get one ``_orig`` Parameter and one mask tensor shared by every place. Layers
    that read a child's weight without calling the child (MultiheadAttention's ``out_proj``,
    the fast paths of ``nn.TransformerEncoderLayer``) get an extra pre-hook that refreshes it.
    """

    name = "prune"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._reader_hooks: dict[int, tuple[torch.utils.hooks.RemovableHandle, list[Target]]] = {}
        self._param_order: dict[int, list[str]] = {}  # key order before the first mask, for unapply_

    def _hook(self, module: nn.Module, name: str) -> prune.BasePruningMethod | None:
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
                return hook
        return None

    def is_masked(self, target: Target) -> bool:
        return self._hook(get_place(self.model, target.module_name), target.name) is not None

    def apply_(self, target: Target, mask: Tensor) -> None:
        owner = get_place(self.model, target.module_name)
        for module_name, _name in target.places():
            module = get_place(self.model, module_name)
            self._param_order.setdefault(id(module), list(module._parameters))
        was_masked = self._hook(owner, target.name) is not None
        try:
            self._apply(owner, target, mask)
        except BaseException:
            if not was_masked:
                self.unapply_(target)  # also puts the parameter back in its place
            raise

    def _apply(self, owner: nn.Module, target: Target, mask: Tensor) -> None:
        if self._hook(owner, target.name) is not None:
            with torch.no_grad():
                getattr(owner, target.name + "_mask").copy_(mask)
        else:
            prune.custom_from_mask(owner, target.name, mask.to(self.parameter(target).device))
        shared = getattr(owner, target.name + "_mask")
        for module_name, name in target.aliases:
            module = get_place(self.model, module_name)
            if self._hook(module, name) is None:
                prune.custom_from_mask(module, name, mask.to(shared.device))
            module._buffers[name + "_mask"] = shared
        self._watch_readers(target)
        self.refresh_(target)

    def unapply_(self, target: Target) -> None:
        for module_name, name in target.places():
            module = get_place(self.model, module_name)
            hook = self._hook(module, name)
            if hook is None:
                self._restore_order(module)
                continue
            for key, value in list(module._forward_pre_hooks.items()):
                if value is hook:
                    del module._forward_pre_hooks[key]
            if name in module.__dict__:
                delattr(module, name)
            orig = module._parameters.pop(name + "_orig")
            del module._buffers[name + "_mask"]
            module.register_parameter(name, orig)
            self._restore_order(module)
        self._unwatch_readers(target)

    def _restore_order(self, module: nn.Module) -> None:
        order = self._param_order.get(id(module))
        if order is not None and set(order) == set(module._parameters):
            module._parameters = {k: module._parameters[k] for k in order}

    def mask(self, target: Target) -> Tensor:
        owner = get_place(self.model, target.module_name)
        if self._hook(owner, target.name) is None:
            return torch.ones(target.shape, dtype=torch.bool, device=self.parameter(target).device)
        return getattr(owner, target.name + "_mask") != 0

    def parameter(self, target: Target) -> nn.Parameter:
        owner = get_place(self.model, target.module_name)
        if self._hook(owner, target.name) is not None:
            return owner._parameters[target.name + "_orig"]
        return owner._parameters[target.name]

    def weight(self, target: Target) -> Tensor:
        owner = get_place(self.model, target.module_name)
        param = self.parameter(target).detach()
        if self._hook(owner, target.name) is None:
            return param
        return param * getattr(owner, target.name + "_mask")

    def refresh_(self, target: Target) -> None:
        for module_name, name in target.places():
            module = get_place(self.model, module_name)
            hook = self._hook(module, name)
            if hook is not None:
                hook(module, None)

    def remove_(self, target: Target) -> None:
        for module_name, name in target.places():
            module = get_place(self.model, module_name)
            if self._hook(module, name) is not None:
                prune.remove(module, name)
        self._unwatch_readers(target)

    # -- layers that read their children's weights directly ------------------------------
    def _readers(self, target: Target) -> list[nn.Module]:
        found = []
        for module_name, _name in target.places():
            parts = module_name.split(".") if module_name else []
            for i in range(len(parts) + 1):
                module = get_place(self.model, ".".join(parts[:i]))
                if isinstance(module, _DIRECT_READERS) and module not in found:
                    found.append(module)
        return found

    def _watch_readers(self, target: Target) -> None:
        for reader in self._readers(target):
            entry = self._reader_hooks.get(id(reader))
            if entry is None:
                watched: list[Target] = []

                def refresh(_module: nn.Module, _inputs: object, watched: list[Target] = watched) -> None:
                    for t in watched:
                        self.refresh_(t)

                handle = reader.register_forward_pre_hook(refresh)
                entry = self._reader_hooks[id(reader)] = (handle, watched)
            if target not in entry[1]:
                entry[1].append(target)

    def _unwatch_readers(self, target: Target) -> None:
        for key, (handle, watched) in list(self._reader_hooks.items()):
            if target in watched:
                watched.remove(target)
            if not watched:
                handle.remove()
                del self._reader_hooks[key]


BACKENDS: dict[str, Callable[[nn.Module], MaskBackend]] = {PruneBackend.name: PruneBackend}


def make_backend(name: str, model: nn.Module) -> MaskBackend:
    """Build the backend registered as ``name`` for ``model``."""
    try:
        return BACKENDS[name](model)
    except KeyError:
        raise ValueError(
            f"LotteryTicket(): backend={name!r} is not a mask backend; choose one of {sorted(BACKENDS)}"
        ) from None
