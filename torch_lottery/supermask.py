"""SupermaskTicket: edge-popup strong tickets, a mask trained over frozen random weights inside the user's loop.

Ramanujan et al. (2020), "What's hidden in a randomly weighted neural network?": every target
tensor gets a trainable score tensor; each forward pass uses the weights masked to the
top-(1 - sparsity) ``|scores|``, and the gradient reaches the scores straight through the mask
(``dL/ds = dL/dw_eff * w * sign(s)``). The weights themselves never change.

The scores are attached with :mod:`torch.nn.utils.parametrize` only inside ``with ticket:``; on
exit the parametrizations are removed (the model's parameters, their order and their
``requires_grad`` flags come back as they were), the final mask is installed through a mask
backend as a :class:`~torch_lottery.LotteryTicket`'s mask, and the scores are dropped.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .backends import check_backend
from .lottery import LotteryTicket
from .targets import Target, TargetSelector, find_targets, get_place, unwrap_model
from .topk import keep_counts, rank_values, top_k_flat, top_k_masks

__all__ = ["SCOPES", "WEIGHT_INITS", "SupermaskTicket", "supermask_weights"]

logger = logging.getLogger(__name__)

SCOPES = ("layer", "global")
WEIGHT_INITS = (None, "kaiming_normal", "signed_constant")
_FREEZE = ("all", "targets")


# ---------------------------------------------------------------------------------------------- pure helpers
def _fan_in(shape: Sequence[int]) -> int:
    """torch.nn.init's fan_in: ``shape[1] * prod(shape[2:])`` (input features times kernel size)."""
    return int(shape[1]) * math.prod(int(d) for d in shape[2:])


def _generator(seed: int, index: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + index) * 4 + stream)


def supermask_weights(
    targets: Sequence[Target], like: Mapping[str, Tensor], *, weight_init: str, seed: int
) -> dict[str, Tensor]:
    """The random weights ``weight_init`` draws for each target under ``seed``: pure and reproducible.

    ``"kaiming_normal"``: N(0, std^2) with the paper's std = sqrt(2 / fan_in).
    ``"signed_constant"``: ``std * sign(w)`` of that same draw (+std where the draw is 0).
    Values are drawn on the CPU from a generator seeded per target, then cast to the dtype and
    device of ``like[fqn]``, so the same seed gives the same weights on every device.

    Args:
        targets: the target tensors (their shapes and order fix the draws).
        like: FQN -> a tensor whose dtype and device the result takes.
        weight_init: ``"kaiming_normal"`` or ``"signed_constant"``.
        seed: the seed.

    Returns:
        FQN -> new tensor. Nothing is modified.

    Example:
        >>> from torch_lottery import find_targets
        >>> model = torch.nn.Linear(8, 2)
        >>> w = supermask_weights(find_targets(model), {"weight": model.weight}, weight_init="signed_constant", seed=0)
        >>> sorted(set(w["weight"].abs().flatten().tolist())) == [0.5]  # sqrt(2 / 8)
        True
    """
    if weight_init not in ("kaiming_normal", "signed_constant"):
        raise ValueError(
            f"supermask_weights(): weight_init={weight_init!r} is not one of ['kaiming_normal', 'signed_constant']"
        )
    out = {}
    for i, t in enumerate(targets):
        std = math.sqrt(2.0 / _fan_in(t.shape))
        draw = torch.randn(t.shape, generator=_generator(seed, i, 0), dtype=torch.float64) * std
        if weight_init == "signed_constant":
            draw = torch.where(draw < 0, -std, std).to(torch.float64)
        ref = like[t.fqn]
        out[t.fqn] = draw.to(dtype=ref.dtype).to(ref.device)
    return out


def _initial_scores(targets: Sequence[Target], like: Mapping[str, Tensor], seed: int) -> dict[str, nn.Parameter]:
    """Kaiming-uniform scores (``a = sqrt(5)``: U(-1/sqrt(fan_in), 1/sqrt(fan_in))), as the reference code draws them."""
    scores = {}
    for i, t in enumerate(targets):
        ref = like[t.fqn]
        fan = _fan_in(t.shape) if len(t.shape) >= 2 else max(t.numel, 1)
        bound = 1.0 / math.sqrt(fan)
        dtype = torch.promote_types(ref.dtype, torch.float32)
        s = torch.empty(t.shape, dtype=dtype).uniform_(-bound, bound, generator=_generator(seed, i, 1))
        scores[t.fqn] = nn.Parameter(s.to(ref.device))
    return scores


class _MaskedWeight(torch.autograd.Function):
    """``weight * mask`` forward; backward sends ``grad * weight * sign(scores)`` straight through to the scores."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(weight, scores, mask)
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], None]:
        weight, scores, mask = ctx.saved_tensors
        grad_weight = grad * mask if ctx.needs_input_grad[0] else None
        grad_scores = None
        if ctx.needs_input_grad[1]:
            grad_scores = (grad * weight).to(scores.dtype)
            grad_scores.mul_(scores.sign())
        return grad_weight, grad_scores, None


class _ScoreState:
    """The scores and their current top-k masks, recomputed only when a score tensor changed (version counters)."""

    def __init__(
        self,
        scores: Mapping[str, nn.Parameter],
        keep: Union[int, Mapping[str, int]],
        blocked: Mapping[str, Tensor],
    ) -> None:
        self.scores = dict(scores)
        self.keep = keep
        self.blocked = dict(blocked)
        self._versions: dict[str, int] = {}
        self._masks: dict[str, Tensor] = {}
        self._buffers: dict[str, Tensor] = {}  # layer scope: each tensor's ranked values, reused
        self._flat: Optional[Tensor] = None  # global scope: the ranked values of every score, reused

    def mask(self, fqn: str) -> Tensor:
        """The current bool mask of ``fqn`` (the top-k of the scores as they are now)."""
        if isinstance(self.keep, int):
            if any(self._versions.get(f) != s._version for f, s in self.scores.items()):
                self._recompute_global()
        elif self._versions.get(fqn) != self.scores[fqn]._version:
            s = self.scores[fqn]
            buf = self._buffers.get(fqn)
            if buf is None or buf.dtype != s.dtype or buf.device != s.device:
                buf = self._buffers[fqn] = torch.empty(s.numel(), dtype=s.dtype, device=s.device)
            values = rank_values(s, self.blocked.get(fqn), out=buf)  # a reused buffer: no allocation per step
            _nan_check(values, fqn)
            self._masks[fqn] = top_k_flat(values, self.keep[fqn]).view(s.shape)
            self._versions[fqn] = s._version
        return self._masks[fqn]

    def _recompute_global(self) -> None:
        total = sum(s.numel() for s in self.scores.values())
        first = next(iter(self.scores.values()))
        dtype = functools.reduce(torch.promote_types, [s.dtype for s in self.scores.values()])
        if self._flat is None or self._flat.dtype != dtype or self._flat.device != first.device:
            self._flat = torch.empty(total, dtype=dtype, device=first.device)
        start = 0
        for fqn, s in self.scores.items():
            part = self._flat[start : start + s.numel()]
            rank_values(s, self.blocked.get(fqn), out=part)
            _nan_check(part, fqn)
            start += s.numel()
        assert isinstance(self.keep, int)
        flat = top_k_flat(self._flat, self.keep)
        start = 0
        for fqn, s in self.scores.items():
            self._masks[fqn] = flat[start : start + s.numel()].view(s.shape)
            self._versions[fqn] = s._version
            start += s.numel()


def _nan_check(values: Tensor, fqn: str) -> None:
    if bool(torch.isnan(values.sum())):  # ranked values are >= -1: only a NaN makes the sum NaN
        raise ValueError(
            f"SupermaskTicket: scores[{fqn!r}] hold {int(torch.isnan(values).sum())} NaN values; lower the "
            "learning rate or clip the scores' gradients. The model is put back as it was before the block."
        )


class _Supermask(nn.Module):
    """The parametrization: the weight seen by the forward pass is ``original * top-k mask(scores)``."""

    def __init__(self, state: _ScoreState, fqn: str) -> None:
        super().__init__()
        self._state = [state]  # a list, so nn.Module does not register anything
        self.fqn = fqn

    def forward(self, original: Tensor) -> Tensor:
        state = self._state[0]
        return _MaskedWeight.apply(original, state.scores[self.fqn], state.mask(self.fqn))


# ---------------------------------------------------------------------------------------------- the ticket
def _check_sparsity(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"SupermaskTicket(): sparsity={value!r} is not a number; pass the fraction pruned, e.g. 0.5")
    value = float(value)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise ValueError(
            f"SupermaskTicket(): sparsity={value!r} is outside [0, 1); pass the fraction of weights pruned, e.g. 0.5"
        )
    return value


def _source_blocked(
    targets: Sequence[Target],
    source_mask: Optional[Mapping[str, Tensor]],
    keep: Union[int, Mapping[str, int]],
    numels: Mapping[str, int],
    params: Mapping[str, Tensor],
    sparsity: float,
) -> dict[str, Tensor]:
    """Validate ``source_mask`` against the targets and the kept counts; return FQN -> entries never kept."""
    fn = "SupermaskTicket()"
    if source_mask is None:
        return {}
    if not isinstance(source_mask, Mapping):
        raise TypeError(f"{fn}: source_mask={type(source_mask).__name__!r} must be a dict {{fqn: bool tensor}}")
    unknown = [k for k in source_mask if k not in numels]
    if unknown:
        raise ValueError(f"{fn}: source_mask has {unknown[:5]!r}, which are not targets; targets are {list(numels)}")
    allowed: dict[str, int] = {}
    blocked: dict[str, Tensor] = {}
    for t in targets:
        m = source_mask.get(t.fqn)
        if m is None:
            allowed[t.fqn] = t.numel
            continue
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            raise TypeError(
                f"{fn}: source_mask[{t.fqn!r}] is {getattr(m, 'dtype', type(m).__name__)}; pass bool tensors"
            )
        if tuple(m.shape) != t.shape:
            raise ValueError(f"{fn}: source_mask[{t.fqn!r}] has shape {tuple(m.shape)}, the tensor has {t.shape}")
        allowed[t.fqn] = int(torch.count_nonzero(m))
        blocked[t.fqn] = (~m).to(params[t.fqn].device)
    groups = [(list(numels), keep)] if isinstance(keep, int) else [([f], k) for f, k in keep.items()]
    for fqns, k in groups:
        room = sum(allowed[f] for f in fqns)
        if k > room:
            total = sum(numels[f] for f in fqns)
            where = repr(fqns[0]) if len(fqns) == 1 else "all targets"
            raise ValueError(
                f"{fn}: sparsity={sparsity!r} keeps {k} of {total} weights of {where}, but "
                f"source_mask allows only {room}; pass sparsity >= {1 - room / total:.4f} or a denser source_mask"
            )
    return blocked


class SupermaskTicket:
    """Find a strong lottery ticket (edge-popup): train a mask over frozen random weights in your own loop.

    Each target tensor gets a score tensor (kaiming-uniform, seeded). Inside ``with ticket:`` the
    targets are frozen (``requires_grad=False``; with ``freeze="all"`` every parameter of the
    model is) and every forward pass uses them masked to the ``1 - sparsity`` fraction of highest
    ``|scores|``, per tensor (``scope="layer"``) or over all targets at once (``"global"``).
    The mask's gradient goes straight through to the scores; train them with any optimizer over
    :meth:`parameters`. On a clean exit the final mask is installed through the mask backend
    (``backend=``) as the mask of :attr:`lottery`, a :class:`~torch_lottery.LotteryTicket`, and
    the scores are dropped. If the block raises, the model is left as it was before the block
    (weights, ``requires_grad``, parameters, no parametrization left) and the scores are kept.

    Args:
        model: any ``nn.Module`` (DataParallel/DDP wrappers are looked through).
        sparsity: fraction of each target (or, with ``scope="global"``, of all targets) pruned;
            ``round((1 - sparsity) * n)`` entries are kept.
        scope: ``"layer"`` keeps that fraction of every tensor; ``"global"`` ranks all scores together.
        weight_init: ``None`` keeps the model's weights; ``"kaiming_normal"`` or
            ``"signed_constant"`` (the paper's ``std * sign``, std = sqrt(2 / fan_in)) re-initializes
            the targets from ``seed`` on entry (see :func:`supermask_weights`), so a ticket file
            can store the seed instead of the weights.
        seed: seeds the scores and ``weight_init``.
        source_mask: optional FQN -> bool tensor: a fixed (e.g. random) mask the supermask must
            stay within (Gadhikar et al. 2023); entries outside it are never selected. Counts stay
            relative to the full tensor, so ``sparsity`` must leave no more than it allows.
        targets, exclude: which tensors get scores, as for :class:`~torch_lottery.LotteryTicket`.
        freeze: ``"all"`` (every parameter frozen in the block: no weight training at all) or
            ``"targets"`` (biases and norms stay trainable if your optimizer has them).
        backend: the mask backend the final mask is installed through (``"prune"`` by default).

    Raises:
        TypeError, ValueError: invalid arguments, a model without targets, targets that already
            carry a mask or parametrization; the model is not touched.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_lottery import SupermaskTicket
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> ticket = SupermaskTicket(model, sparsity=0.5, weight_init="signed_constant")
        >>> opt = torch.optim.SGD(ticket.parameters(), lr=0.1, momentum=0.9)
        >>> with ticket:
        ...     for _ in range(5):
        ...         opt.zero_grad()
        ...         model(torch.randn(4, 8)).pow(2).mean().backward()
        ...         opt.step()
        >>> round(ticket.lottery.sparsity, 2)
        0.5
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float,
        scope: str = "layer",
        weight_init: Optional[str] = None,
        seed: int = 0,
        source_mask: Optional[Mapping[str, Tensor]] = None,
        targets: TargetSelector = None,
        exclude: Sequence[str] = (),
        freeze: str = "all",
        backend: str = "prune",
    ) -> None:
        fn = "SupermaskTicket()"
        if not isinstance(model, nn.Module):
            raise TypeError(f"{fn}: model={type(model).__name__!r} is not an nn.Module; pass the model itself")
        sparsity = _check_sparsity(sparsity)
        if scope not in SCOPES:
            raise ValueError(f"{fn}: scope={scope!r} is not one of {list(SCOPES)}")
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"{fn}: weight_init={weight_init!r} is not one of {list(WEIGHT_INITS)}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{fn}: seed={seed!r} must be an int")
        if freeze not in _FREEZE:
            raise ValueError(f"{fn}: freeze={freeze!r} is not one of {list(_FREEZE)}")
        check_backend(backend, fn="SupermaskTicket")
        self.model = unwrap_model(model)
        found = find_targets(self.model, targets, exclude)
        params = {t.fqn: self._plain_parameter(t) for t in found}
        if weight_init is not None:
            flat = [t.fqn for t in found if len(t.shape) < 2]
            if flat:
                raise ValueError(
                    f"{fn}: weight_init={weight_init!r} needs a fan-in, but {flat[:5]!r} have fewer than 2 "
                    "dimensions; leave them out (exclude=) or use weight_init=None"
                )
        self._targets: list[Target] = found
        numels = {t.fqn: t.numel for t in found}
        keep = keep_counts(numels, sparsity, scope=scope)
        blocked = _source_blocked(found, source_mask, keep, numels, params, sparsity)

        self._sparsity = sparsity
        self._scope = scope
        self._weight_init = weight_init
        self._seed = seed
        self._freeze = freeze
        self._backend_name = backend
        self._has_source = source_mask is not None
        self._state = _ScoreState(_initial_scores(found, params, seed), keep, blocked)
        self._active = False
        self._lottery: Optional[LotteryTicket] = None
        self._entry: Optional[dict[str, Any]] = None

    # ------------------------------------------------------------------ validation helpers
    def _plain_parameter(self, target: Target) -> nn.Parameter:
        for module_name, name in target.places():
            module = get_place(self.model, module_name)
            param = module._parameters.get(name)
            if not isinstance(param, nn.Parameter) or parametrize.is_parametrized(module, name):
                raise ValueError(
                    f"SupermaskTicket(): {target.fqn!r} is not a plain Parameter (a torch.nn.utils.prune mask or "
                    "a parametrization is installed on it); remove it first (prune.remove), or pass an existing "
                    "mask as source_mask="
                )
        return get_place(self.model, target.module_name)._parameters[target.name]  # type: ignore[return-value]

    # ------------------------------------------------------------------ read-only views
    @property
    def sparsity_goal(self) -> float:
        """The ``sparsity`` asked for (fraction pruned)."""
        return self._sparsity

    @property
    def scope(self) -> str:
        return self._scope

    @property
    def weight_init(self) -> Optional[str]:
        return self._weight_init

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def targets(self) -> list[Target]:
        """The masked tensors, in model order."""
        return list(self._targets)

    @property
    def target_fqns(self) -> list[str]:
        return [t.fqn for t in self._targets]

    @property
    def done(self) -> bool:
        """Whether a block has exited cleanly and the mask is installed."""
        return self._lottery is not None

    @property
    def lottery(self) -> LotteryTicket:
        """The LotteryTicket whose mask the supermask is (after the block): save, inspect, train it further."""
        if self._lottery is None:
            raise RuntimeError("SupermaskTicket.lottery: no mask installed yet; train the scores in a `with ticket:` block")
        return self._lottery

    @property
    def scores(self) -> dict[str, nn.Parameter]:
        """FQN -> score Parameter (what :meth:`parameters` yields)."""
        self._check_not_done("scores")
        return dict(self._state.scores)

    def parameters(self) -> Iterator[nn.Parameter]:
        """The score tensors, in target order: give them to your optimizer."""
        self._check_not_done("parameters")
        return iter(list(self._state.scores.values()))

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(fqn, scores)`` pairs, in target order."""
        self._check_not_done("named_parameters")
        return iter(list(self._state.scores.items()))

    @property
    def masks(self) -> dict[str, Tensor]:
        """FQN -> bool mask: the installed one after the block, else the top-k of the current scores."""
        if self._lottery is not None:
            return self._lottery.masks
        return self.compute_masks()

    def compute_masks(self) -> dict[str, Tensor]:
        """The top-k masks of the current scores (what the next forward pass uses). Pure.

        Raises:
            ValueError: NaN scores.
        """
        self._check_not_done("compute_masks")
        allowed = {fqn: ~b for fqn, b in self._state.blocked.items()}
        return top_k_masks(
            {fqn: s.detach() for fqn, s in self._state.scores.items()}, self._state.keep,
            allowed=allowed, fn="SupermaskTicket.compute_masks()",
        )

    def config(self) -> dict[str, Any]:
        """The settings as JSON-able data (what :func:`~torch_lottery.save_supermask` stores)."""
        return {
            "sparsity": self._sparsity,
            "scope": self._scope,
            "weight_init": self._weight_init,
            "seed": self._seed,
            "source_mask": self._has_source,
            "freeze": self._freeze,
            "backend": self._backend_name,
            "targets": self.target_fqns,
        }

    def __repr__(self) -> str:
        return (
            f"SupermaskTicket({type(self.model).__name__}, sparsity={self._sparsity}, scope={self._scope!r}, "
            f"weight_init={self._weight_init!r}, seed={self._seed}, targets={len(self._targets)}, done={self.done})"
        )

    def _check_not_done(self, where: str) -> None:
        if self._lottery is not None:
            raise RuntimeError(
                f"SupermaskTicket.{where}: the block has exited, the mask is installed and the scores are gone; "
                "use ticket.masks / ticket.lottery, or build a new SupermaskTicket"
            )

    # ------------------------------------------------------------------ the block
    def __enter__(self) -> "SupermaskTicket":
        if self._active:
            raise RuntimeError("SupermaskTicket.__enter__(): this ticket's block is already open; blocks do not nest")
        self._check_not_done("__enter__()")
        for t in self._targets:
            param = self._plain_parameter(t)
            s = self._state.scores[t.fqn]
            if s.device != param.device:
                raise RuntimeError(
                    f"SupermaskTicket.__enter__(): scores are on {s.device} but {t.fqn!r} is on {param.device}; "
                    "build the ticket after moving the model"
                )
        params = {t.fqn: self._plain_parameter(t) for t in self._targets}
        frozen = list(self.model.parameters()) if self._freeze == "all" else list(params.values())
        entry: dict[str, Any] = {
            "requires_grad": [(p, p.requires_grad) for p in frozen],
            "weights": {f: p.detach().clone() for f, p in params.items()} if self._weight_init else {},
            "order": {},
            "registered": [],
        }
        self._entry = entry
        try:
            if self._weight_init is not None:
                new = supermask_weights(self._targets, params, weight_init=self._weight_init, seed=self._seed)
                with torch.no_grad():
                    for fqn, value in new.items():
                        params[fqn].copy_(value)
            for p in frozen:
                p.requires_grad_(False)
            for t in self._targets:
                for module_name, name in t.places():
                    module = get_place(self.model, module_name)
                    entry["order"].setdefault(id(module), (module, list(module._parameters)))
                    parametrize.register_parametrization(module, name, _Supermask(self._state, t.fqn), unsafe=True)
                    entry["registered"].append((module, name))
        except BaseException:
            self._leave_(restore_weights=True)
            raise
        self._active = True
        return self

    def _leave_(self, *, restore_weights: bool) -> None:
        """Remove the parametrizations and restore parameter order and ``requires_grad`` (and weights)."""
        entry = self._entry
        self._entry = None
        self._active = False
        if entry is None:
            return
        for module, name in reversed(entry["registered"]):
            if parametrize.is_parametrized(module, name):
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        for module, order in entry["order"].values():
            if set(order) == set(module._parameters):
                module._parameters = {k: module._parameters[k] for k in order}
        for p, flag in entry["requires_grad"]:
            p.requires_grad_(flag)
        if restore_weights and entry["weights"]:
            with torch.no_grad():
                for t in self._targets:
                    self._plain_parameter(t).copy_(entry["weights"][t.fqn])

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None:
            self._leave_(restore_weights=True)
            logger.warning("supermask block interrupted by %s: no mask installed, the model is as before", exc_type.__name__)
            return False
        try:
            masks = self.compute_masks()
        except BaseException:
            self._leave_(restore_weights=True)
            raise
        entry_weights = self._entry["weights"] if self._entry else {}
        self._leave_(restore_weights=False)
        try:
            lottery = LotteryTicket(
                self.model, sparsity=self._sparsity, scope="global" if self._scope == "global" else "layer",
                targets=self.target_fqns, backend=self._backend_name, seed=self._seed,
            )
            lottery.set_masks_(masks, rewind=False)
        except BaseException:
            if entry_weights:
                with torch.no_grad():
                    for t in self._targets:
                        self._plain_parameter(t).copy_(entry_weights[t.fqn])
            raise
        self._lottery = lottery
        self._state.scores.clear()
        logger.info(
            "supermask installed: sparsity %.4f over %d targets (%s)", lottery.sparsity, len(self._targets), self._scope
        )
        return False
