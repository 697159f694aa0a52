"""Mask backends: how a ticket's masks are put into a model and read back out."""

from __future__ import annotations

import abc
import logging
import functools
import weakref
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .masking import mul_bits_, mul_bytes_, pack_bits, unpack_bits
from .shards import is_sharded, like, local, local_piece
from .targets import Target, _join, canonical_name, get_place, unwrap_model

__all__ = [
    "BACKENDS",
    "BakedBackend",
    "MaskBackend",
    "PruneBackend",
    "check_backend",
    "effective_state_dict",
    "make_backend",
    "state_sources",
]

logger = logging.getLogger(__name__)

# Layers whose forward reads their children's weights directly, without calling the children's
# forward (so the children's prune hooks would not refresh the masked weight first).
_DIRECT_READERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _direct_readers(model: nn.Module, module_name: str) -> list[tuple[str, nn.Module]]:
    """``(path from the reader to module_name, reader)`` for each enclosing layer of ``_DIRECT_READERS``."""
    parts = module_name.split(".") if module_name else []
    found = []
    for i in range(len(parts) + 1):
        module = get_place(model, ".".join(parts[:i]))
        if isinstance(module, _DIRECT_READERS):
            found.append((".".join(parts[i:]), module))
    return found


class MaskBackend(abc.ABC):
    """The seam between a ticket and a model: install, read, refresh and remove masks.

    One backend instance serves one model. Every method takes a :class:`Target` found on that
    model; masks are bool tensors shaped like the target (``True`` = kept). A backend is
    registered by name in :data:`BACKENDS`; every registered backend passes the same contract
    tests (``tests/test_backend_contract.py``). The contract:

    * **Parameter identity.** :meth:`parameter` returns the same ``nn.Parameter`` object before
      :meth:`apply_`, while masked, and after :meth:`load_`, :meth:`refresh_`,
      :meth:`unapply_` and :meth:`remove_`, so an optimizer built before pruning stays valid.
      Tied places (``target.aliases``) keep sharing it.
    * **Masked forward.** After ``apply_(target, mask)`` the model's forward uses
      :meth:`weight` at every place of the target, and ``weight(target)`` equals the parameter's
      values before the call times ``mask``.
    * **Zeros held.** After any optimizer step over ``model.parameters()`` (LBFGS and
      non-elementwise optimizers included), pruned entries of :meth:`weight` are zero and the
      next forward uses them. Gradients accumulated into ``parameter(target).grad`` by backward
      are zero at pruned entries.
    * **Replacing a mask.** :meth:`apply_` on a masked target replaces its mask (no
      intersection). Entries the new mask revives get what the parameter holds there (prune
      keeps the raw values in ``*_orig``; the baked backends hold zeros once committed).
    * **Rollback, until** :meth:`commit_`. After a first ``apply_(target, new)``,
      ``unapply_(target)`` restores the raw values, the plain ``state_dict`` keys and the order
      of the module's parameters exactly. After ``apply_(target, new)`` on a masked target,
      ``apply_(target, old)`` restores the parameter, the mask and the effective weight as they
      were before. :meth:`commit_` ends that window: a backend may then drop the raw values of
      pruned entries; a later ``unapply_`` still leaves a plain, unmasked Parameter whose
      surviving entries hold their values.
    * **Loading.** ``load_(target, value)`` writes ``value`` into the parameter in place;
      afterwards ``weight(target) == value * mask``.
    * **Removing.** :meth:`remove_` makes the pruning permanent: each place holds the same plain
      Parameter with zeros at pruned entries, and no mask, hook or extra ``state_dict`` key is
      left. Later training may move those entries. :meth:`unapply_` and :meth:`remove_` do
      nothing on an unmasked target.
    * **State dict keys.** :meth:`state_keys` names the model's ``state_dict`` keys that hold a
      target: the plain ``<place>`` names, holding the effective weight (zeros where pruned), so
      the ``state_dict`` loads with ``strict=True`` into an unpruned model. Loading a masked
      model's ``state_dict`` into a model with the same masks installed gives the same effective
      weights; loading dense values into a masked model keeps the masks in force.
    * **Copies.** ``copy.deepcopy``, pickle and ``torch.save(model)`` of a masked model work; the
      copy's forward and training never touch the original, and the copy keeps pruned entries
      at zero in its forward.

    Attributes:
        name: the registry name (``LotteryTicket(backend=...)``), saved in ticket configs.
    """

    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @abc.abstractmethod
    def is_masked(self, target: Target) -> bool:
        """Whether a mask is installed on ``target``."""

    @abc.abstractmethod
    def apply_(self, target: Target, mask: Tensor) -> None:
        """Install ``mask`` on ``target``, or replace the one installed; effective weight follows."""

    @abc.abstractmethod
    def unapply_(self, target: Target) -> None:
        """Undo :meth:`apply_` without baking anything in: the raw parameter values come back."""

    @abc.abstractmethod
    def mask(self, target: Target) -> Tensor:
        """The installed mask as a new bool tensor (all ``True`` if none is installed)."""

    @abc.abstractmethod
    def parameter(self, target: Target) -> nn.Parameter:
        """The Parameter the optimizer updates for ``target`` (its identity never changes)."""

    @abc.abstractmethod
    def weight(self, target: Target) -> Tensor:
        """The current effective weight, detached: what the forward pass uses (do not write to it)."""

    @abc.abstractmethod
    def refresh_(self, target: Target) -> None:
        """Recompute the effective weight after the parameter was written where the backend cannot see it."""

    @abc.abstractmethod
    def remove_(self, target: Target) -> None:
        """Make pruning permanent: a plain Parameter with zeros baked in, no mask left."""

    def load_(self, target: Target, value: Tensor) -> None:
        """Write ``value`` into the parameter in place (a rewind), then refresh the effective weight."""
        with torch.no_grad():
            self.parameter(target).copy_(value)
        self.refresh_(target)

    def commit_(self) -> None:
        """Called once every target's new mask is in: forget what a rollback would have needed."""

    def state_keys(self, target: Target) -> list[str]:
        """The model's ``state_dict`` keys that hold ``target``, every place included.

        The default is a backend that keeps Parameters plain: the FQN of each place.
        """
        return [_join(module_name, name) for module_name, name in target.places()]


_MISSING = object()


class PruneBackend(MaskBackend):
    """Masks as torch.nn.utils.prune leaves them: ``<name>_orig``, ``<name>_mask`` and a forward
    pre-hook. ``prune.is_pruned(model)`` holds and ``prune.remove`` works.

    Tied weights get one ``_orig`` Parameter and one mask tensor shared by every place. Layers
    that read a child's weight without calling the child (MultiheadAttention's ``out_proj``,
    the fast paths of ``nn.TransformerEncoderLayer``) get an extra pre-hook that refreshes it.

    Checkpoints stay plain: each masked module gets ``state_dict`` hooks, so ``model.state_dict()``
    holds ``<name>`` = ``<name>_orig * <name>_mask`` (exactly zero where pruned) and no ``*_orig`` /
    ``*_mask`` keys; it loads with ``strict=True`` into an unpruned instance of the class.
    ``load_state_dict`` accepts that plain form (the value goes into ``<name>_orig``, the installed
    mask stays in force) and prune's own ``*_orig`` / ``*_mask`` form, whose mask must equal the
    installed one (``ValueError`` otherwise: load the ticket's state first). The masks themselves
    travel in the ticket's own state (``ticket.state_dict()``, ticket files), never in the
    model's. ``copy.deepcopy``, pickle and ``torch.save(model)`` work, also after a forward pass.
    """

    name = "prune"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._reader_hooks: dict[int, tuple[torch.utils.hooks.RemovableHandle, list[Target]]] = {}
        self._param_order: dict[int, list[str]] = {}  # key order before the first mask, for unapply_
        self._state_hooks: dict[tuple[int, str], list[torch.utils.hooks.RemovableHandle]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # The tables are keyed by id(module): a copy (deepcopy, pickle) re-keys them by its own modules.
        state = self.__dict__.copy()
        modules = {id(m): m for m in self.model.modules()}
        state["_reader_hooks"] = [(modules[k], v) for k, v in self._reader_hooks.items() if k in modules]
        state["_param_order"] = [(modules[k], v) for k, v in self._param_order.items() if k in modules]
        state["_state_hooks"] = [(modules[k], name, v) for (k, name), v in self._state_hooks.items() if k in modules]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_reader_hooks"] = {id(m): v for m, v in state["_reader_hooks"]}
        state["_param_order"] = {id(m): v for m, v in state["_param_order"]}
        state["_state_hooks"] = {(id(m), name): v for m, name, v in state["_state_hooks"]}
        self.__dict__.update(state)

    def _hook(self, module: nn.Module, name: str) -> prune.BasePruningMethod | None:
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
                return hook
        return None

    def is_masked(self, target: Target) -> bool:
        owner = get_place(self.model, target.module_name)
        if is_sharded(owner._parameters.get(target.name)):
            raise ValueError(
                f"LotteryTicket(): backend='prune' cannot mask {target.fqn!r}, a DTensor parameter of "
                "torch.distributed.fsdp.fully_shard (FSDP2 owns its name; prune would rename it to weight_orig); "
                "pass backend='baked' or backend='baked-bits'"
            )
        return self._hook(owner, target.name) is not None

    def apply_(self, target: Target, mask: Tensor) -> None:
        owner = get_place(self.model, target.module_name)
        for module_name, _name in target.places():
            module = get_place(self.model, module_name)
            self._param_order.setdefault(id(module), list(module._parameters))
        saved = self._save_places(target)
        try:
            self._apply(owner, target, mask)
        except BaseException:  # Ctrl-C included, wherever torch.nn.utils.prune was interrupted
            self._restore_places(target, saved)
            raise

    def _save_places(self, target: Target) -> tuple[list[tuple[Any, ...]], Tensor | None, bool]:
        """What every place of ``target`` holds (containers, attribute, mask values), to undo a half-done apply_."""
        places = []
        for module_name, name in target.places():
            module = get_place(self.model, module_name)
            places.append((module, name, dict(module._parameters), dict(module._buffers),
                           dict(module._forward_pre_hooks), module.__dict__.get(name, _MISSING)))
        owner = get_place(self.model, target.module_name)
        masked = self._hook(owner, target.name) is not None
        old_mask = getattr(owner, target.name + "_mask").detach().clone() if masked else None
        return places, old_mask, masked

    def _restore_places(self, target: Target, saved: tuple[list[tuple[Any, ...]], Tensor | None, bool]) -> None:
        places, old_mask, masked = saved
        for module, name, params, buffers, hooks, attr in places:
            for live, old in ((module._parameters, params), (module._buffers, buffers), (module._forward_pre_hooks, hooks)):
                live.clear()
                live.update(old)
            if attr is _MISSING:
                module.__dict__.pop(name, None)
            else:
                module.__dict__[name] = attr
        self._unwatch_readers(target)
        if masked:
            owner = get_place(self.model, target.module_name)
            with torch.no_grad():
                getattr(owner, target.name + "_mask").copy_(old_mask)
            self._watch_readers(target)
            self.refresh_(target)

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
        for module_name, name in target.places():
            self._hook_state(get_place(self.model, module_name), name)
            self._keep_order(get_place(self.model, module_name))
        self._watch_readers(target)
        self.refresh_(target)

    def _hook_state(self, module: nn.Module, name: str) -> None:
        """Plain ``state_dict`` keys for a masked tensor; copies and pickles that keep working."""
        key = (id(module), name)
        if key in self._state_hooks:
            return
        self._state_hooks[key] = [
            module.register_state_dict_post_hook(functools.partial(_plain_state_dict_, name)),
            module.register_load_state_dict_pre_hook(functools.partial(_load_plain_state_, name)),
            module.register_load_state_dict_post_hook(functools.partial(_refresh_after_load, name)),
        ]
        module.__dict__["__getstate__"] = functools.partial(_getstate_leaf_weights, module)

    def _unhook_state(self, module: nn.Module, name: str) -> None:
        for handle in self._state_hooks.pop((id(module), name), ()):
            handle.remove()
        if not any(k[0] == id(module) for k in self._state_hooks):
            module.__dict__.pop("__getstate__", None)

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
            self._unhook_state(module, name)
        self._unwatch_readers(target)

    def _keep_order(self, module: nn.Module) -> None:
        """Put ``<name>_orig`` where ``<name>`` was (prune appends it), so ``parameters()`` keeps its order and
        an optimizer built before pruning and one built after list the same tensors (their states load by index)."""
        order = self._param_order.get(id(module))
        if order is None:
            return
        rank = {k: i for i, k in enumerate(order)}
        place = {k: rank.get(k, rank.get(k[: -len("_orig")] if k.endswith("_orig") else k, len(order))) for k in module._parameters}
        if list(module._parameters) != sorted(module._parameters, key=place.__getitem__):
            module._parameters = {k: module._parameters[k] for k in sorted(module._parameters, key=place.__getitem__)}

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
                self._restore_order(module)
            self._unhook_state(module, name)
        self._unwatch_readers(target)

    # -- layers that read their children's weights directly ------------------------------
    def _readers(self, target: Target) -> list[nn.Module]:
        found = []
        for module_name, _name in target.places():
            for _, module in _direct_readers(self.model, module_name):
                if module not in found:
                    found.append(module)
        return found

    def _watch_readers(self, target: Target) -> None:
        for reader in self._readers(target):
            entry = self._reader_hooks.get(id(reader))
            if entry is None:
                # a module-level function of the reader alone: copies and pickles of the model
                # refresh their own children, never this backend's model
                handle = reader.register_forward_pre_hook(_refresh_pruned_children)
                entry = self._reader_hooks[id(reader)] = (handle, [])
            if target not in entry[1]:
                entry[1].append(target)

    def _unwatch_readers(self, target: Target) -> None:
        for key, (handle, watched) in list(self._reader_hooks.items()):
            if target in watched:
                watched.remove(target)
            if not watched:
                handle.remove()
                del self._reader_hooks[key]


# -- PruneBackend's hooks: module-level callables, so that copies and pickles of the model work --
def _is_reparametrized(module: nn.Module, name: str) -> bool:
    return name + "_orig" in module._parameters and name + "_mask" in module._buffers


def _plain_state_dict_(name: str, module: nn.Module, state_dict: dict, prefix: str, _metadata: Any) -> None:
    """``state_dict`` post-hook: replace ``<name>_orig`` + ``<name>_mask`` by ``<name>`` = masked value."""
    orig_key, mask_key = prefix + name + "_orig", prefix + name + "_mask"
    if orig_key not in state_dict or mask_key not in state_dict:
        return  # no longer reparametrized (prune.remove() called directly): nothing to rewrite
    orig = state_dict.pop(orig_key).detach()
    mask = state_dict.pop(mask_key)
    state_dict[prefix + name] = torch.where(
        mask.to(device=orig.device, dtype=torch.bool), orig, torch.zeros((), dtype=orig.dtype, device=orig.device)
    )


def _load_plain_state_(
    name: str, module: nn.Module, state_dict: dict, prefix: str, _metadata: Any, _strict: bool,
    _missing: list, _unexpected: list, _errors: list,
) -> None:
    """``load_state_dict`` pre-hook: accept ``<name>`` (into ``<name>_orig``, mask kept) or prune's form."""
    if not _is_reparametrized(module, name):
        return
    key, orig_key, mask_key = prefix + name, prefix + name + "_orig", prefix + name + "_mask"
    mask = module._buffers[name + "_mask"]
    if key in state_dict:
        if orig_key in state_dict:
            raise ValueError(
                f"load_state_dict(): the state dict holds both {key!r} and {orig_key!r}; "
                f"keep one form (the plain {key!r} that state_dict() writes)"
            )
        state_dict[orig_key] = state_dict.pop(key)
        state_dict[mask_key] = mask  # the installed mask stays in force
        return
    saved = state_dict.get(mask_key)
    if isinstance(saved, Tensor) and tuple(saved.shape) == tuple(mask.shape):
        if not torch.equal(saved.detach().to(device=mask.device, dtype=torch.bool), mask.to(torch.bool)):
            raise ValueError(
                f"load_state_dict(): {mask_key!r} in the state dict differs from the mask installed on "
                f"{key!r} ({int((saved != 0).sum())} vs {int((mask != 0).sum())} kept entries); loading it would "
                "change the ticket's masks behind its back. Restore the ticket first "
                "(ticket.load_state_dict(state) or load_ticket(...)), or load a checkpoint of this ticket"
            )


def _refresh_after_load(name: str, module: nn.Module, _incompatible: Any) -> None:
    """``load_state_dict`` post-hook: recompute ``module.<name>`` from the loaded ``_orig`` and the mask."""
    if not _is_reparametrized(module, name):
        return
    with torch.no_grad():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
                hook(module, None)


def _getstate_leaf_weights(module: nn.Module) -> dict[str, Any]:
    """``module.__getstate__`` for a masked module: prune's computed weights detached.

    After a forward pass ``module.weight`` is a non-leaf tensor, which ``copy.deepcopy`` refuses
    (pytorch issue 37322). The copy gets the same values, detached; its next forward recomputes them.
    """
    state = type(module).__getstate__(module)
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod):
            value = state.get(hook._tensor_name)
            if isinstance(value, Tensor) and value.grad_fn is not None:
                state[hook._tensor_name] = value.detach()
    return state


def _refresh_pruned_children(module: nn.Module, _inputs: object) -> None:
    """Forward pre-hook of a layer that reads its children's weights directly: refresh them first."""
    for child in module.modules():
        if child is module:
            continue
        for hook in list(child._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                hook(child, None)


# Optimizers whose update of an entry depends only on that entry's parameter, gradient and state
# (and on scalars), and is exactly zero where all three are zero. Exact types only: a subclass may
# override step(). After one step that started from a clean state (pruned parameters, gradients
# and state entries all zero), pruned entries stay zero with no re-zeroing pass.
_ELEMENTWISE_OPTIMIZERS = frozenset(
    getattr(torch.optim, name)
    for name in ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "RMSprop", "Adadelta", "ASGD", "Rprop")
    if hasattr(torch.optim, name)
)


class _Clean:
    """What a clean step of one optimizer left behind: the versions that must not change until the next."""

    __slots__ = ("epoch", "params")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        # id(param) -> (param._version, ((state tensor ref, its _version), ...))
        self.params: dict[int, tuple[int, tuple[tuple[weakref.ref, int], ...]]] = {}


class BakedBackend(MaskBackend):
    """Masks baked into the weights: the Parameter itself holds zeros where pruned.

    No reparametrization and no forward hook: the forward pass costs what the dense one does and
    the model's ``state_dict`` keeps its plain keys. Each masked Parameter (same object, so
    optimizers stay valid) gets a post-accumulate-grad hook that zeroes the pruned entries of its
    ``.grad`` in place, so gradient clipping sees what the prune backend's ``*_orig`` sees.

    Keeping pruned entries at zero through optimizer steps costs one pass only when needed. After
    a step of an optimizer that updates each entry on its own (exactly ``SGD``, ``Adam``,
    ``AdamW``, ``Adamax``, ``NAdam``, ``RAdam``, ``Adagrad``, ``RMSprop``, ``Adadelta``,
    ``ASGD``, ``Rprop``), an entry whose weight, gradient and optimizer state are zero stays
    zero. So the first step after anything changes (a new mask, a rewind, an optimizer or model
    ``load_state_dict``, an in-place write to a weight, its gradient or the optimizer state, seen
    through tensor version counters) re-zeroes the pruned weights and the pruned entries of the
    optimizer's same-shaped state tensors; later steps skip the pass. Any other optimizer (LBFGS,
    subclasses, optimizers that mix entries) gets the re-zeroing pass after every step. Writes
    through ``.data`` bypass version counters: call :meth:`refresh_` (``ticket.refresh_()``)
    after them.

    On an FSDP2 (``fully_shard``) model every stored mask, multiply and re-zeroing pass is per local
    shard of the DTensor parameter (docs/distributed.md); sharded parameters are re-zeroed after
    every step, since FSDP writes their local tensors where version counters do not see it.

    Masks live on the parameter's device, as bool tensors (``bits=False``, 1 byte per masked
    weight, backend ``"baked"``) or bit-packed (``bits=True``, 1 bit per masked weight, backend
    ``"baked-bits"``: about 1/8 of the mask memory for a slower multiply).

    With the optimizers above, training is bitwise identical to :class:`PruneBackend`.
    Optimizers that mix entries (LBFGS, or any that normalize by a tensor norm) see zeros here
    where prune's ``*_orig`` keeps the pruned values. Gradients taken with ``torch.autograd.grad``
    (not accumulated into ``.grad``) are not masked. ``unapply_`` can only return the raw values
    of the entries pruned by the latest ``apply_`` that has not been followed by ``commit_``.
    """

    name = "baked"

    def __init__(self, model: nn.Module, *, bits: bool = False) -> None:
        super().__init__(model)
        self.bits = bits
        if bits:
            self.name = "baked-bits"
        self._masks: dict[str, Tensor] = {}  # fqn -> bool mask, or pack_bits(mask)
        self._grad_hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._module_hooks: dict[str, list[torch.utils.hooks.RemovableHandle]] = {}  # fqn -> _BakedGuard hooks
        self._params: dict[int, tuple[nn.Parameter, Tensor]] = {}  # id(param) -> (param, stored mask)
        self._undo: dict[str, Tensor] = {}  # fqn -> raw values before the latest uncommitted apply_
        self._step_hooks: list[torch.utils.hooks.RemovableHandle] = []
        # dirty tracking: any change through this backend bumps the epoch and voids every record
        self._epoch = 0
        self._clean: weakref.WeakKeyDictionary[torch.optim.Optimizer, _Clean] = weakref.WeakKeyDictionary()
        self._pending: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[bool, list]] = weakref.WeakKeyDictionary()
        self._grads: dict[int, tuple[weakref.ref, int]] = {}  # id(param) -> (its masked .grad, _version)
        self._guards: dict[str, list[_BakedGuard]] = {}  # fqn -> the guards its module hooks carry

    def __getstate__(self) -> dict[str, Any]:
        # A copy of the backend (deepcopy or pickle of its ticket) owns the copied model: its tables
        # are re-keyed by the copied Parameters, its hooks registered anew, its guards owned by it.
        state = {k: v for k, v in self.__dict__.items() if k not in ("_grad_hooks", "_step_hooks", "_clean", "_pending", "_grads")}
        state["_params"] = list(self._params.values())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        params = state.pop("_params")
        self.__dict__.update(state)
        self._grad_hooks, self._step_hooks, self._grads = {}, [], {}
        self._clean, self._pending = weakref.WeakKeyDictionary(), weakref.WeakKeyDictionary()
        self._params = {id(p): (p, stored) for p, stored in params}
        for fqn, stored in self._masks.items():
            for p, mine in params:
                if mine is stored:
                    self._grad_hooks[fqn] = p.register_post_accumulate_grad_hook(
                        functools.partial(_mask_grad_, weakref.ref(self), stored)
                    )
        for guards in self._guards.values():
            for guard in guards:
                guard.backend = weakref.ref(self)
        self._epoch += 1
        if self._masks:
            self._watch_steps()

    def _check_plain(self, target: Target) -> nn.Parameter:
        owner = get_place(self.model, target.module_name)
        param = owner._parameters.get(target.name)
        if param is None:
            raise ValueError(
                f"BakedBackend: {target.fqn!r} is not a plain Parameter (torch.nn.utils.prune masks "
                "installed?); use backend='prune', or prune.remove() it first"
            )
        return param

    def _mul_(self, x: Tensor, stored: Tensor, source: Tensor | None = None) -> None:
        # a DTensor (FSDP2 parameter, gradient, optimizer state) is multiplied on its local shard
        (mul_bits_ if self.bits else mul_bytes_)(local(x), stored, source=None if source is None else local(source))

    def mask_tensors(self) -> list[Tensor]:
        """The stored masks (bool, or packed bits): what the masks cost in memory."""
        return list(self._masks.values())

    def is_masked(self, target: Target) -> bool:
        self._check_plain(target)
        return target.fqn in self._masks

    def apply_(self, target: Target, mask: Tensor) -> None:
        param = self._check_plain(target)
        if tuple(mask.shape) != tuple(param.shape):
            raise ValueError(
                f"BakedBackend.apply_(): mask for {target.fqn!r} has shape {tuple(mask.shape)}, "
                f"the parameter has {tuple(param.shape)}"
            )
        # a sharded parameter stores only its local shard of the mask (a full mask is cut to it)
        local_mask = local(mask) if is_sharded(mask) else local_piece(mask, param)
        if is_sharded(param) and tuple(local_mask.shape) != tuple(local(param).shape):
            raise ValueError(
                f"BakedBackend.apply_(): the mask for {target.fqn!r} is placed {getattr(mask, 'placements', None)} but "
                f"the parameter {param.placements}; pass a full mask or a DTensor placed like the parameter"
            )
        mask = local_mask.detach().to(device=local(param).device, dtype=torch.bool)
        new = pack_bits(mask) if self.bits else mask.contiguous()
        fqn = target.fqn
        prior = (self._masks.get(fqn), self._grad_hooks.get(fqn), self._params.get(id(param)), self._undo.get(fqn),
                 set(param._post_accumulate_grad_hooks or {}))
        prior_values = prior[0].clone() if prior[0] is not None else None
        try:
            self._apply(target, param, mask, new)
        except BaseException:  # Ctrl-C included: put the masks, hooks and raw values back as they were
            self._restore(target, param, prior, prior_values)
            raise

    def _restore(self, target: Target, param: nn.Parameter, prior: tuple[Any, ...], prior_values: Tensor | None) -> None:
        """Undo a half-done :meth:`apply_`: tables, gradient hook, stored mask and raw values as before it."""
        fqn = target.fqn
        stored, _hook, _entry, undo, hook_keys = prior
        self._epoch += 1
        with torch.no_grad():
            if stored is not None and prior_values is not None:
                stored.copy_(prior_values)
            if undo is None:  # the first apply_ since commit_: _apply kept the values it started from
                started = self._undo.get(fqn)
                if started is not None:
                    param.copy_(started)
            else:  # the values were undo * stored before this apply_
                param.copy_(undo)
                self._mul_(param, stored)
        hooks = param._post_accumulate_grad_hooks or {}
        for key in [k for k in hooks if k not in hook_keys]:  # registered by this apply_, kept or not
            del hooks[key]
        if stored is None:  # the module hooks of a first apply_ go too
            for handle in self._module_hooks.pop(fqn, ()):
                handle.remove()
            self._guards.pop(fqn, None)
        for table, key, value in zip((self._masks, self._grad_hooks, self._params, self._undo), (fqn, fqn, id(param), fqn), prior):
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value

    def _apply(self, target: Target, param: nn.Parameter, mask: Tensor, new: Tensor) -> None:
        stored = self._masks.get(target.fqn)
        self._epoch += 1
        with torch.no_grad():
            undo = self._undo.get(target.fqn)
            if undo is None:  # keep the raw values until commit_(), for a rollback
                self._undo[target.fqn] = param.detach().clone()
            else:  # a second apply_ before commit_ (a rollback): start from the raw values
                param.copy_(undo)
            if stored is None:
                stored = self._masks[target.fqn] = new.clone() if new is mask else new
                self._grad_hooks[target.fqn] = param.register_post_accumulate_grad_hook(
                    functools.partial(_mask_grad_, weakref.ref(self), stored)
                )
                self._params[id(param)] = (param, stored)
                self._hook_modules(target, stored)
            else:
                stored.copy_(new)
            self._mul_(param, stored)
        self._watch_steps()

    def unapply_(self, target: Target) -> None:
        if target.fqn not in self._masks:
            return
        param = self._check_plain(target)
        undo = self._undo.pop(target.fqn, None)
        if undo is not None:
            with torch.no_grad():
                param.copy_(undo)
        self._forget(target.fqn, param)

    def commit_(self) -> None:
        self._undo.clear()

    def mask(self, target: Target) -> Tensor:
        stored = self._masks.get(target.fqn)
        param = self.parameter(target)
        shape = local(param).shape  # a sharded parameter's mask is a DTensor placed like it
        if stored is None:
            return like(torch.ones(shape, dtype=torch.bool, device=local(param).device), param)
        return like(unpack_bits(stored, shape) if self.bits else stored.clone(), param)

    def parameter(self, target: Target) -> nn.Parameter:
        return self._check_plain(target)

    def weight(self, target: Target) -> Tensor:
        param = self._check_plain(target).detach()
        if target.fqn not in self._masks:
            return param
        out = torch.empty_like(local(param), memory_format=torch.contiguous_format)
        self._mul_(out, self._masks[target.fqn], source=local(param).contiguous())
        return like(out, param)

    def refresh_(self, target: Target) -> None:
        stored = self._masks.get(target.fqn)
        if stored is not None:
            self._epoch += 1
            with torch.no_grad():
                self._mul_(self._check_plain(target), stored)

    def load_(self, target: Target, value: Tensor) -> None:
        param = self._check_plain(target)
        stored = self._masks.get(target.fqn)
        self._epoch += 1
        if is_sharded(param):  # per shard: a DTensor's local shard, or this rank's piece of a full tensor
            value = local(value) if is_sharded(value) else local_piece(value, param)
            with torch.no_grad():
                local(param).copy_(value)
            self.refresh_(target)
            return
        if stored is None or value.device != param.device or value.dtype != param.dtype:
            super().load_(target, value)
            return
        with torch.no_grad():  # one pass: param = value * mask
            self._mul_(param, stored, source=value.contiguous())

    def remove_(self, target: Target) -> None:
        if target.fqn in self._masks:
            self.refresh_(target)
            self._undo.pop(target.fqn, None)
            self._forget(target.fqn, self._check_plain(target))

    def _hook_modules(self, target: Target, stored: Tensor) -> None:
        """Hooks on each place's module: masks re-applied after ``load_state_dict``; copies keep zeros."""
        handles = self._module_hooks.setdefault(target.fqn, [])  # each handle kept as soon as it exists
        for module_name, name in target.places():
            module = get_place(self.model, module_name)
            guard = _BakedGuard(name, stored, self.bits, self)
            self._guards.setdefault(target.fqn, []).append(guard)
            guard.sharded = is_sharded(module._parameters.get(name))
            for path, reader in _direct_readers(self.model, module_name):  # reads the weight without module's forward
                if path:
                    handles.append(reader.register_forward_pre_hook(functools.partial(_baked_reader_pre, guard, path)))
            # one statement per hook: an interrupt between two lines never leaves a hook without its handle
            handles.append(module.register_forward_pre_hook(functools.partial(_baked_forward_pre, guard)))
            handles.append(module.register_load_state_dict_post_hook(functools.partial(_baked_after_load, guard)))
            handles.append(module.register_state_dict_post_hook(functools.partial(_baked_state_dict_, guard)))

    def _forget(self, fqn: str, param: nn.Parameter) -> None:
        self._epoch += 1
        del self._masks[fqn]
        self._grad_hooks.pop(fqn).remove()
        for handle in self._module_hooks.pop(fqn, ()):
            handle.remove()
        self._guards.pop(fqn, None)
        self._params.pop(id(param), None)
        self._grads.pop(id(param), None)
        if not self._masks:
            for handle in self._step_hooks:
                handle.remove()
            self._step_hooks = []

    # -- keeping pruned entries at zero through optimizer steps -----------------------------
    def _watch_steps(self) -> None:
        if self._step_hooks:
            return
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        this = weakref.ref(self)

        # Run eagerly under a compiled optimizer step: traced, their Python state (epochs, version
        # records) would become guards that fail at every round, recompiling the step.
        @torch.compiler.disable
        def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            backend = this()
            if backend is not None:
                backend._before_step(optimizer)

        @torch.compiler.disable
        def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            backend = this()
            if backend is not None:
                backend._after_step(optimizer)

        handles = [register_optimizer_step_pre_hook(before_step), register_optimizer_step_post_hook(after_step)]
        for handle in handles:
            weakref.finalize(self, handle.remove)
        self._step_hooks = handles

    def _owned(self, optimizer: torch.optim.Optimizer) -> list[tuple[nn.Parameter, Tensor]]:
        """The masked parameters ``optimizer`` updates, with their stored masks."""
        owned = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                entry = self._params.get(id(p))
                if entry is not None and entry[0] is p:
                    owned.append(entry)
        return owned

    def _before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Decide whether this step starts clean: nothing written since the last clean step."""
        owned = self._owned(optimizer)
        record = self._clean.get(optimizer)
        clean = record is not None and record.epoch == self._epoch
        if clean:
            state = optimizer.state
            for p, _ in owned:
                seen = record.params.get(id(p))
                if seen is None or seen[0] != p._version:
                    clean = False
                    break
                grad = p.grad
                if grad is not None:
                    masked = self._grads.get(id(p))
                    if masked is None or masked[0]() is not grad or masked[1] != grad._version:
                        clean = False
                        break
                tensors = [v for v in state.get(p, {}).values() if isinstance(v, Tensor)]
                if len(tensors) != len(seen[1]) or any(
                    ref() is not v or version != v._version for v, (ref, version) in zip(tensors, seen[1])
                ):
                    clean = False
                    break
        self._pending[optimizer] = (clean, owned)

    def _after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Re-zero pruned weights (and optimizer state) unless the step started clean; record versions."""
        clean, owned = self._pending.pop(optimizer, None) or (False, self._owned(optimizer))
        if not owned:
            return
        elementwise = type(optimizer) in _ELEMENTWISE_OPTIMIZERS and all(p.dim() > 0 for p, _ in owned)
        # FSDP2 writes sharded parameters and gradients through their local tensors, which version
        # counters of the DTensors do not see: sharded parameters are re-zeroed after every step
        if clean and elementwise and not any(is_sharded(p) for p, _ in owned):
            self._record(optimizer, owned)
            return
        with torch.no_grad():
            for p, stored in owned:
                self._mul_(p, stored)
                if elementwise:  # momenta, moments, accumulators: pruned entries to zero
                    for value in optimizer.state.get(p, {}).values():
                        if isinstance(value, Tensor) and value.shape == p.shape and value.dtype.is_floating_point:
                            self._mul_(value, stored if value.device == stored.device else stored.to(value.device))
        if elementwise:
            self._record(optimizer, owned)

    def _record(self, optimizer: torch.optim.Optimizer, owned: list[tuple[nn.Parameter, Tensor]]) -> None:
        record = self._clean.get(optimizer)
        if record is None or record.epoch != self._epoch:
            record = self._clean[optimizer] = _Clean(self._epoch)
        state = optimizer.state
        for p, _ in owned:
            record.params[id(p)] = (
                p._version,
                tuple(
                    (weakref.ref(v), v._version) for v in state.get(p, {}).values() if isinstance(v, Tensor)
                ),
            )


class _BakedGuard:
    """What each masked module under a baked backend carries: its mask, for loads and for copies.

    While the backend that installed it owns the module's Parameter, the guard only re-applies
    the mask after ``load_state_dict``. In a copy of the model (``copy.deepcopy``, pickle,
    ``torch.save(model)``: the backend is not copied, and Parameter copies lose their gradient
    hooks) the guard keeps the copy's pruned entries at zero on its own: before each forward it
    zeroes them, it masks the accumulated gradients, and ``state_dict()`` writes them as zeros.
    """

    __slots__ = ("name", "stored", "bits", "backend", "grad_param", "sharded")

    def __init__(self, name: str, stored: Tensor, bits: bool, backend: "BakedBackend | None") -> None:
        self.name, self.stored, self.bits = name, stored, bits
        self.backend = weakref.ref(backend) if backend is not None else None
        self.grad_param: weakref.ref | None = None  # the copy's Parameter whose gradients are masked
        self.sharded: bool | None = None  # whether the owned Parameter is an FSDP2 DTensor (known once owned() ran)

    def __getstate__(self) -> dict[str, Any]:  # a copy belongs to no backend
        return {"name": self.name, "stored": self.stored, "bits": self.bits}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["stored"], state["bits"], None)  # type: ignore[misc]

    def owned(self, module: nn.Module) -> bool:
        backend = self.backend() if self.backend is not None else None
        param = module._parameters.get(self.name)
        entry = backend._params.get(id(param)) if backend is not None and param is not None else None
        if entry is not None and entry[0] is param:
            self.sharded = is_sharded(param)
            return True
        # inside FSDP2's forward the module holds the all-gathered plain Parameter of the owned
        # DTensor: it was gathered from the masked shards, so it holds the zeros already
        return bool(self.sharded) and backend is not None and not is_sharded(param)

    def mul_(self, x: Tensor) -> None:
        x = local(x)
        stored = self.stored if self.stored.device == x.device else self.stored.to(x.device)
        (mul_bits_ if self.bits else mul_bytes_)(x, stored)


def _baked_forward_pre(guard: _BakedGuard, module: nn.Module, _inputs: object) -> None:
    """Forward pre-hook: in a copy of the model, zero the pruned entries and mask their gradients."""
    if guard.owned(module):
        return
    param = module._parameters.get(guard.name)
    if param is None:
        return
    with torch.no_grad():
        guard.mul_(param)
    if guard.grad_param is None or guard.grad_param() is not param:
        if guard.grad_param is None:
            logger.info(
                "%s.%s: a copy of a model masked by a baked backend; its masks are kept by its own hooks "
                "(optimizer state is not re-zeroed: build its optimizer after the copy)",
                type(module).__name__, guard.name,
            )
        param.register_post_accumulate_grad_hook(functools.partial(_baked_mask_grad_, guard))
        guard.grad_param = weakref.ref(param)


def _baked_reader_pre(guard: _BakedGuard, path: str, reader: nn.Module, inputs: object) -> None:
    """Forward pre-hook of a layer that reads the masked child at ``path`` without calling it."""
    _baked_forward_pre(guard, reader.get_submodule(path), inputs)


def _baked_mask_grad_(guard: _BakedGuard, param: Tensor) -> None:
    if param.grad is not None:
        guard.mul_(param.grad)


def _baked_after_load(guard: _BakedGuard, module: nn.Module, _incompatible: Any) -> None:
    """``load_state_dict`` post-hook: the loaded values are masked at once, not at the next step."""
    param = module._parameters.get(guard.name)
    if param is None:
        return
    with torch.no_grad():
        guard.mul_(param)
    backend = guard.backend() if guard.backend is not None else None
    if backend is not None:
        backend._epoch += 1


def _baked_state_dict_(guard: _BakedGuard, module: nn.Module, state_dict: dict, prefix: str, _metadata: Any) -> None:
    """``state_dict`` post-hook: a copy writes its pruned entries as zeros (the owning backend keeps them so)."""
    if guard.owned(module):
        return
    value = state_dict.get(prefix + guard.name)
    if isinstance(value, Tensor):
        value = value.detach().clone()
        guard.mul_(value)
        state_dict[prefix + guard.name] = value


def _mask_grad_(backend_ref: weakref.ref, stored: Tensor, param: Tensor) -> None:
    """Zero the pruned entries of the accumulated ``.grad`` in place; remember it as masked."""
    backend = backend_ref()
    grad = param.grad
    if backend is None or grad is None:
        return
    backend._mul_(grad, stored)
    backend._grads[id(param)] = (weakref.ref(grad), grad._version)


BACKENDS: dict[str, Callable[[nn.Module], MaskBackend]] = {
    PruneBackend.name: PruneBackend,
    BakedBackend.name: BakedBackend,
    "baked-bits": functools.partial(BakedBackend, bits=True),
}


def check_backend(name: object, *, fn: str = "LotteryTicket") -> str:
    """Return ``name`` if it is a registered mask backend, else raise the library's error.

    Args:
        name: the backend name to check.
        fn: the public function whose argument this is, named in the error message.

    Returns:
        ``name``, unchanged.

    Raises:
        ValueError: ``name`` is not a key of :data:`BACKENDS`; the message lists the valid names.

    Example:
        >>> check_backend("baked")
        'baked'
    """
    if isinstance(name, str) and name in BACKENDS:
        return name
    raise ValueError(f"{fn}(): backend={name!r} is not a mask backend; choose one of {sorted(BACKENDS)}")


def make_backend(name: str, model: nn.Module, *, fn: str = "LotteryTicket") -> MaskBackend:
    """Build the backend registered as ``name`` for ``model``.

    Raises:
        ValueError: ``name`` is not registered (see :func:`check_backend`; ``fn`` names the caller).
    """
    return BACKENDS[check_backend(name, fn=fn)](model)


def effective_state_dict(model: nn.Module, *, fn: str = "effective_state_dict") -> dict[str, Tensor]:
    """The model's ``state_dict`` as an unpruned model of the same class holds it: masks applied.

    Keys are canonical (``"0.weight"``, never ``"0.weight_orig"``), in ``state_dict()`` order;
    ``torch.nn.utils.prune``'s ``*_mask`` buffers are left out and each ``*_orig`` value appears
    with its mask applied (``torch.where(mask, value, 0)``: pruned entries are exactly zero, even
    where the raw value is NaN or infinite). Every other value is the model's own tensor, detached
    (as ``state_dict()`` returns it). A model under a baked backend already holds its zeros, so
    its values are returned as they are. Non-persistent buffers are left out, as ``state_dict()``
    does. DataParallel/DDP wrappers are looked through. ``model`` is not modified.

    Tensors tied in the model (one non-empty tensor under several names) are one tensor object in
    the result, listed under each name, so ``id()`` finds the ties.

    Args:
        model: a model, pruned through ``torch.nn.utils.prune`` or a ticket's backend, or not.
        fn: the public function named in error messages.

    Returns:
        canonical key -> tensor (detached; masked values are new tensors, others share memory with
        the model).

    Raises:
        ValueError: tied tensors whose places are masked differently (an unpruned model holds them
            once, so no state dict can represent both).

    Example:
        >>> from torch.nn.utils import prune
        >>> layer = nn.Linear(2, 1, bias=False)
        >>> _ = prune.custom_from_mask(layer, "weight", torch.tensor([[True, False]]))
        >>> sorted(effective_state_dict(layer))
        ['weight']
        >>> float(effective_state_dict(layer)["weight"][0, 1])
        0.0
    """
    model = unwrap_model(model)
    out: dict[str, Tensor] = {}
    first_of: dict[tuple[Any, ...], tuple[str, Tensor]] = {}
    for fqn, source, mask in state_sources(model):
        value = source
        if mask is not None:  # prune's *_orig: apply the mask
            value = torch.where(mask.to(torch.bool), source, torch.zeros((), dtype=source.dtype, device=source.device))
        if source.numel():
            ident = (
                source.device, source.untyped_storage().data_ptr(), source.storage_offset(),
                tuple(source.shape), tuple(source.stride()), source.dtype,
            )
            first = first_of.get(ident)
            if first is not None:
                first_fqn, first_value = first
                if not torch.equal(first_value, value):
                    raise ValueError(
                        f"{fn}(): tied tensors {first_fqn!r} and {fqn!r} differ after masking; a plain model holds "
                        "them once, so mask every place of a tied weight alike (LotteryTicket does)"
                    )
                out[fqn] = first_value
                continue
            first_of[ident] = (fqn, value)
        out[fqn] = value
    return out


def state_sources(model: nn.Module) -> Iterator[tuple[str, Tensor, Tensor | None]]:
    """Yield ``(canonical key, raw tensor, prune mask or None)`` for each entry of ``model.state_dict()``.

    The raw tensor is the model's own (detached): for a tensor reparametrized by
    ``torch.nn.utils.prune`` it is ``<name>_orig`` with its ``<name>_mask`` beside it, whether the
    ``state_dict`` shows prune's two keys or the plain key :class:`PruneBackend` writes. Tied
    tensors keep their shared storage, so callers can find the ties.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    for key, tensor in model.state_dict(keep_vars=True).items():
        prefix, _, local = key.rpartition(".")
        module = modules[prefix]
        name = canonical_name(module, local)
        if name is None:  # prune's *_mask buffer
            continue
        if _is_reparametrized(module, name):
            yield _join(prefix, name), module._parameters[name + "_orig"].detach(), module._buffers[name + "_mask"]
        else:
            yield _join(prefix, name), tensor.detach(), None
