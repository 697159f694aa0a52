"""The channel plan of a structured ticket: its groups, inputs and architecture, and each round's channel masks.

A :class:`ChannelPlan` is what ``granularity="channel"`` adds to a ticket. It is made once, from
the plain model and one example batch, and holds:

- the channel groups (:mod:`torch_lottery.channels`) and the tensors they mask (the ticket's
  targets: filters, biases, BatchNorm entries, readers' input columns);
- the example inputs' shapes and dtypes (not their values), so a plan read back from a ticket
  file rebuilds inputs to trace and check the compact model with;
- the architecture as a copy on the ``meta`` device (no memory for values), so the compact model
  can be built after the live model carries prune masks, from any set of weights.

Its methods turn weights into the next channel choice (:meth:`select`), channel choices into
weight-shaped masks (:meth:`masks`) and back (:meth:`keep_from_masks`), and build the compact
model (:meth:`compact`). Scores are computed with the plan's importance: ``"l1"`` (default),
``"l2"``, a callable ``(group, tensors) -> scores``, or an instance of one of Torch-Pruning's
importance classes (``torch_pruning.importance.GroupMagnitudeImportance`` and the like), which is
given Torch-Pruning's own group objects on a copy holding the current weights.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .channel_selection import (
    IMPORTANCES,
    ChannelImportance,
    channel_masks,
    channel_scores,
    channel_sparsity,
    channel_targets,
    channels_from_masks,
    full_keep,
    random_channels,
    refill_channels,
    select_channels,
)
from .channels import (
    ChannelGroup,
    ExampleInputs,
    _import_tp,
    build_graph,
    check_plain_model,
    example_inputs_from_spec,
    find_channel_groups,
    input_spec,
    plain_copy,
)
from .compact import _compact_owned, pruning_history
from .schedule import group_counts, plan_groups
from .targets import unwrap_model

__all__ = ["ChannelPlan", "compact_ticket", "plan_for_ticket"]

logger = logging.getLogger(__name__)

Importance = Union[str, ChannelImportance, Any]


def _is_tp_importance(importance: object) -> bool:
    if isinstance(importance, str) or not callable(importance):
        return False
    tp = _import_tp("ChannelPlan")
    return isinstance(importance, tp.pruner.importance.Importance)


def _check_importance(importance: object, where: str) -> None:
    if isinstance(importance, str):
        if importance not in IMPORTANCES:
            raise ValueError(
                f"{where}: importance={importance!r} is not one of {list(IMPORTANCES)}; or pass a callable "
                "(group, tensors) -> scores, or a torch_pruning.importance instance"
            )
    elif not callable(importance):
        raise TypeError(f"{where}: importance={importance!r} is neither a name nor a callable")


def _materialize(template: nn.Module, values: Mapping[str, Tensor], device: Optional[torch.device]) -> nn.Module:
    """A real copy of the meta ``template`` holding ``values`` (every parameter and buffer by FQN)."""
    memo: dict[int, Any] = {}
    missing = []
    names = {id(t): n for n, t in template.named_parameters()}
    names.update({id(t): n for n, t in template.named_buffers()})
    for module in template.modules():
        for store, is_param in ((module._parameters, True), (module._buffers, False)):
            for t in store.values():
                if t is None or id(t) in memo:
                    continue
                name = names[id(t)]
                if name not in values:
                    missing.append(name)
                    continue
                v = values[name].detach()
                data = v.to(device=device if device is not None else v.device, dtype=t.dtype, copy=True)
                memo[id(t)] = nn.Parameter(data, requires_grad=t.requires_grad) if is_param else data
    if missing:
        raise ValueError(
            f"ChannelPlan.compact(): no values for {missing[:5]!r}{' ...' if len(missing) > 5 else ''}; "
            "pass every parameter and buffer of the model"
        )
    return copy.deepcopy(template, memo)


class ChannelPlan:
    """Channel groups, example-input spec and meta architecture of one model; see the module docs.

    Build it with :meth:`trace` (from the model and an example batch) or :meth:`from_dict`
    (from what :meth:`to_dict` wrote, on a fresh instance of the same architecture).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> plan = ChannelPlan.trace(model, torch.randn(1, 4))
        >>> plan.targets
        ['0.weight', '0.bias', '2.weight']
        >>> keep = plan.select(dict(model.named_parameters()), plan.full_keep(), 6)
        >>> small = plan.compact(dict(model.state_dict()), keep)
        >>> small[0].weight.shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        groups: Sequence[ChannelGroup],
        spec: Mapping[str, Any],
        template: nn.Module,
        *,
        importance: Importance = "l1",
    ) -> None:
        _check_importance(importance, "ChannelPlan()")
        self._groups = list(groups)
        self._spec = dict(spec)
        self._template = template
        self._importance = importance
        self._shapes = {n: tuple(t.shape) for n, t in template.named_parameters()}
        if not any(g.prunable for g in self._groups):
            reasons = "; ".join(f"{g.name!r}: {g.reason}" for g in self._groups[:4])
            raise ValueError(
                f"ChannelPlan(): the model has no prunable channel group ({reasons}); structured tickets "
                "need conv or Linear layers whose output channels feed other layers"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def trace(
        cls,
        model: nn.Module,
        example_inputs: ExampleInputs,
        *,
        exclude: Sequence[str] = (),
        importance: Importance = "l1",
    ) -> "ChannelPlan":
        """Find ``model``'s channel groups on ``example_inputs`` (a copy is traced; the model is not touched)."""
        _check_importance(importance, "ChannelPlan.trace()")
        model = unwrap_model(model)
        groups = find_channel_groups(model, example_inputs, exclude=exclude)
        return cls(groups, input_spec(example_inputs), plain_copy(model, device="meta"), importance=importance)

    @classmethod
    def from_dict(cls, model: nn.Module, data: Mapping[str, Any], *, importance: Importance = "l1") -> "ChannelPlan":
        """Rebuild a plan on ``model`` (a plain instance of the architecture) from :meth:`to_dict`'s data.

        The groups are taken from ``data``; they are checked against ``model`` when the compact
        model is built (the graph is traced again there, on inputs made from the stored spec).
        """
        model = unwrap_model(model)
        check_plain_model(model, "ChannelPlan.from_dict()")
        groups = [ChannelGroup.from_dict(g) for g in data["groups"]]
        template = plain_copy(model, device="meta")
        shapes = {n: tuple(t.shape) for n, t in template.named_parameters()}
        for g in groups:
            bad = [s.fqn for s in g.slices if s.fqn not in shapes or max(s.positions, default=-1) >= shapes[s.fqn][s.dim]]
            if bad:
                raise ValueError(
                    f"ChannelPlan.from_dict(): group {g.name!r} names {bad[:3]!r}, which this model does not have "
                    "(or has smaller); pass a fresh instance of the architecture the ticket was found on"
                )
        return cls(groups, data["input_spec"], template, importance=importance)

    def to_dict(self) -> dict[str, Any]:
        """Groups and input spec as JSON-able data (no tensors)."""
        return {"groups": [g.to_dict() for g in self._groups], "input_spec": dict(self._spec)}

    # ------------------------------------------------------------------ views
    @property
    def groups(self) -> list[ChannelGroup]:
        """Every channel group, prunable or not."""
        return list(self._groups)

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self._groups if g.prunable]

    @property
    def group_names(self) -> list[str]:
        """Names of the prunable groups: what ``layer_rates``/``layer_sparsity`` keys match."""
        return [g.name for g in self.prunable_groups]

    @property
    def targets(self) -> list[str]:
        """FQNs of the tensors the plan masks."""
        return channel_targets(self._groups)

    @property
    def input_spec(self) -> dict[str, Any]:
        return dict(self._spec)

    @property
    def importance_name(self) -> str:
        imp = self._importance
        if isinstance(imp, str):
            return imp
        return getattr(imp, "__qualname__", None) or type(imp).__qualname__

    def full_keep(self) -> dict[str, Tensor]:
        return full_keep(self._groups)

    def example_inputs(self, *, device: Optional[Union[str, torch.device]] = None) -> ExampleInputs:
        """Inputs of the stored shapes and dtypes (seeded values) for tracing and checks."""
        return example_inputs_from_spec(self._spec, device=device or "cpu")

    def channel_sparsity(self, keep: Mapping[str, Tensor]) -> float:
        return channel_sparsity(self._groups, keep)

    def kept_counts(self, keep: Mapping[str, Tensor]) -> dict[str, int]:
        """Group name -> number of channels kept."""
        return {g.name: int(keep[g.name].sum()) for g in self.prunable_groups}

    # ------------------------------------------------------------------ channels and masks
    def scores(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Importance of every channel of every prunable group, from ``tensors`` (FQN -> values).

        A Torch-Pruning importance needs every parameter and buffer in ``tensors`` (it scores a
        copy of the model holding them); the built-in ones need only the groups' tensors.
        """
        if _is_tp_importance(self._importance):
            return self._tp_scores(tensors)
        return channel_scores(self._groups, tensors, importance=self._importance)

    def _tp_scores(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        device = next(iter(tensors.values())).device if tensors else None
        clone = _materialize(self._template, tensors, device)
        graph, _ = build_graph(clone, self.example_inputs(device=device), where="ChannelPlan.scores()")
        out = {}
        for g in self.prunable_groups:
            root = clone.get_submodule(g.name)
            pruner = graph.get_pruner_of_module(root)
            tp_group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(g.size)))
            s = self._importance(tp_group)
            if not isinstance(s, Tensor) or tuple(s.shape) != (g.size,) or torch.isnan(s).any():
                raise ValueError(
                    f"ChannelPlan.scores(): importance {self.importance_name} gave {getattr(s, 'shape', s)!r} "
                    f"for group {g.name!r}; it must score each of its {g.size} channels"
                )
            out[g.name] = s.detach().double().cpu()
        return out

    def select(
        self, tensors: Mapping[str, Tensor], keep: Mapping[str, Tensor], n: Union[int, Mapping[str, int]]
    ) -> dict[str, Tensor]:
        """Score with ``tensors`` and remove ``n`` channels (an int: globally; a mapping: per group)."""
        scores = self.scores(tensors)
        return select_channels(scores, {g: keep[g] for g in scores}, n)

    def next_masks(
        self, tensors: Mapping[str, Tensor], masks: Mapping[str, Tensor], settings: Any, *, done: int
    ) -> dict[str, Tensor]:
        """The masks of round ``done + 1`` of a structured ticket, from the current weights and masks. Pure.

        The schedule (:mod:`torch_lottery.schedule`) runs over channel groups instead of
        tensors: ``rate``/``sparsity`` are fractions of channels, ``scope="global"`` ranks the
        channels of all groups together, ``"layer"`` each group on its own, and overrides are keyed
        by group name (``settings`` resolved onto :attr:`group_names`). Every group keeps at least
        one channel, so a count that would empty one is cut (and logged).

        Args:
            tensors: FQN -> current effective values (the targets; every tensor for a
                Torch-Pruning importance).
            masks: the masks in force (channel-structured), FQN -> bool.
            settings: the ticket's resolved :class:`~torch_lottery.settings.TicketSettings`.
            done: rounds applied so far.

        Raises:
            ValueError: NaN or infinite weights, or masks that are not channel-structured.
        """
        for fqn in self.targets:
            w = tensors[fqn]
            if not torch.isfinite(w).all():
                raise ValueError(
                    f"LotteryTicket.prune_(): {fqn!r} has {int((~torch.isfinite(w)).sum())} NaN or infinite weights; "
                    "fix the training run (lower the learning rate, clip gradients) before pruning. Nothing was pruned."
                )
        keep = self.keep_from_masks(masks)
        names = self.group_names
        survivors = {n: int(keep[n].sum()) for n in names}
        schedule = plan_groups(names, settings)
        counts = group_counts(schedule, survivors, {g.name: g.size for g in self.prunable_groups}, done=done, rounds=settings.rounds)
        scores = self.scores(tensors)
        new = dict(keep)
        for unit, n in zip(schedule, counts):
            removable = sum(max(0, survivors[f] - 1) for f in unit.fqns)
            if n > removable:
                logger.info("groups %s: %d channels asked for, %d removed (each group keeps one)", list(unit.fqns)[:3], n, removable)
                n = removable
            new.update(select_channels({f: scores[f] for f in unit.fqns}, {f: keep[f] for f in unit.fqns}, n))
        device = {f: m.device for f, m in masks.items()}
        return {f: m.to(device[f]) for f, m in self.masks(new).items()}

    def masks(self, keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weight-shaped bool masks (CPU) for :attr:`targets`."""
        return channel_masks(self._groups, keep, self._shapes)

    def keep_from_masks(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The channels that channel-structured ``masks`` keep; raises on unstructured masks."""
        return channels_from_masks(self._groups, masks)

    def refill(self, masks: Mapping[str, Tensor], *, counts: Optional[Mapping[str, int]] = None) -> dict[str, Tensor]:
        """Channels from an unstructured ticket's masks (Chen et al. 2022); see :func:`refill_channels`."""
        return refill_channels(self._groups, masks, counts=counts)

    def random_like(self, keep: Mapping[str, Tensor], *, seed: int = 0) -> dict[str, Tensor]:
        """Random channels with ``keep``'s count in every group (the random-mask control)."""
        return random_channels(keep, seed=seed)

    def history(self, keep: Mapping[str, Tensor]) -> list[list[Any]]:
        """Torch-Pruning's pruning history for ``keep`` (see :func:`~torch_lottery.compact.pruning_history`)."""
        return pruning_history(self._groups, keep)

    # ------------------------------------------------------------------ the compact model
    def compact(
        self,
        tensors: Mapping[str, Tensor],
        keep: Mapping[str, Tensor],
        *,
        device: Optional[Union[str, torch.device]] = None,
        verify: bool = True,
    ) -> nn.Module:
        """The physically smaller model holding ``tensors`` without the channels ``keep`` drops.

        Args:
            tensors: FQN -> values of every parameter and buffer (extra keys are ignored); the
                masks are applied to them, so raw (unmasked) weights are fine.
            keep: group name -> kept channels.
            device: where the model is built (the device of ``tensors`` by default).
            verify: check the compact outputs against the masked model on inputs made from the
                input spec (see :func:`~torch_lottery.compact.compact_model`).

        Returns:
            A new module; Torch-Pruning made new Parameters for every shrunk layer, so train it
            with a new optimizer.
        """
        dev = torch.device(device) if device is not None else next(iter(tensors.values())).device
        model = _materialize(self._template, tensors, dev)
        return _compact_owned(model, self._groups, keep, example_inputs=self.example_inputs(device=dev), verify=verify)


def plan_for_ticket(
    model: nn.Module,
    example_inputs: Optional[ExampleInputs],
    *,
    criterion: str,
    targets: Any,
    exclude: Sequence[str],
    importance: Importance,
) -> ChannelPlan:
    """The plan of ``LotteryTicket(model, granularity="channel", ...)``, its arguments checked first."""
    fn = "LotteryTicket()"
    if isinstance(example_inputs, ChannelPlan):
        return example_inputs
    if example_inputs is None:
        raise ValueError(
            f"{fn}: granularity='channel' needs example_inputs=, one batch the model accepts (e.g. "
            "torch.randn(1, 3, 32, 32)), to trace which channels are coupled"
        )
    if criterion != "magnitude":
        raise ValueError(
            f"{fn}: criterion={criterion!r} scores single weights; with granularity='channel' rank channels with "
            "importance= ('l1', 'l2', a callable or a torch_pruning importance)"
        )
    plan = ChannelPlan.trace(model, example_inputs, exclude=exclude, importance=importance)
    if targets is not None and (callable(targets) or list(targets) != plan.targets):  # a config() round trip is fine
        raise ValueError(
            f"{fn}: targets={targets!r} is not used with granularity='channel' (the channel groups decide which "
            "tensors are masked); use exclude= to keep layers whole"
        )
    return plan


def compact_ticket(ticket: Any, *, weights: Union[str, Mapping[str, Tensor]] = "current", verify: bool = True) -> nn.Module:
    """The compact model of a structured ticket (what ``ticket.compact()`` returns).

    Args:
        ticket: a ``LotteryTicket`` built with ``granularity="channel"``.
        weights: ``"current"``: the model's weights now (after a round, the rewound theta_0 or
            theta_k: train the compact model from there to test the hypothesis; inside a block,
            the trained weights); ``"rewind"``: the rewind point itself; or FQN -> tensors (e.g.
            trained weights kept from earlier), completed by the model's current values.
        verify: check the compact outputs against the masked model (see
            :func:`~torch_lottery.compact.compact_model`).

    Returns:
        A new module with the kept channels only. Torch-Pruning made new Parameters, so an
        optimizer of the ticket's model does not train it: create a new one.

    Raises:
        RuntimeError: the ticket is not structured, or ``weights="rewind"`` before any snapshot.
        ValueError: an unknown ``weights`` value.
    """
    fn = "LotteryTicket.compact()"
    plan = ticket.channel_plan
    if plan is None:
        raise RuntimeError(
            f"{fn}: this ticket prunes single weights (granularity='weight'), which removes no channel; "
            "build it with granularity='channel' and example_inputs= to get a smaller dense model"
        )
    values: dict[str, Tensor] = {**dict(ticket.model.named_buffers()), **ticket.live_tensors()}
    if isinstance(weights, Mapping):
        values.update(weights)
    elif weights == "rewind":
        rewind = ticket.rewind_weights
        if not rewind:
            raise RuntimeError(f"{fn}: weights='rewind' but no rewind point was taken yet; enter a round first")
        values.update(rewind)
    elif weights != "current":
        raise ValueError(f"{fn}: weights={weights!r} is not 'current', 'rewind' or a dict of tensors")
    keep = plan.keep_from_masks(ticket.masks)
    return plan.compact(values, keep, verify=verify)
