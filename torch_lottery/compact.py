"""Physical channel removal: Torch-Pruning surgery on a copy, replaying a ticket's channel groups.

:func:`compact_model` builds a new, smaller dense module whose outputs equal the channel-masked
model's: the masked model keeps pruned channels as zeros, the compact one no longer has them.
The surgery is Torch-Pruning's own, replayed from a pruning history
(``[[root module, True, removed channel indices], ...]``, Torch-Pruning's
``DependencyGraph.pruning_history()`` format) that :func:`pruning_history` computes from the
kept channels. The result is checked against the masked model on the example inputs.

Torch-Pruning replaces the Parameters of every layer it shrinks, so an optimizer built for the
original model does not train the compact one: create a new optimizer for it.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from .channel_selection import _check_keep, channel_masks
from .channels import (
    ChannelGroup,
    ExampleInputs,
    _groups_of_graph,
    build_graph,
    call_model,
    plain_copy,
)

__all__ = ["compact_model", "pruning_history", "replay_history_"]

logger = logging.getLogger(__name__)


def pruning_history(groups: Sequence[ChannelGroup], keep: Mapping[str, Tensor]) -> list[list[Any]]:
    """The removal of every dropped channel as a Torch-Pruning pruning history. Pure.

    Returns:
        ``[[group root FQN, True, [removed channel indices]], ...]`` for each prunable group
        that lost channels, in group order: the JSON-able format that Torch-Pruning's
        ``DependencyGraph.load_pruning_history`` replays on a fresh model.

    Example:
        >>> from torch_lottery.channels import ChannelGroup
        >>> pruning_history([ChannelGroup("fc1", 3, ())], {"fc1": torch.tensor([True, False, False])})
        [['fc1', True, [1, 2]]]
    """
    _check_keep(groups, keep, "pruning_history()")
    history = []
    for g in groups:
        if not g.prunable:
            continue
        k = keep[g.name].cpu()
        if not k.any():
            raise ValueError(
                f"pruning_history(): keep[{g.name!r}] removes every channel of the group; keep at least one"
            )
        dropped = (~k).nonzero().flatten().tolist()
        if dropped:
            history.append([g.name, True, dropped])
    return history


def _signature(groups: Sequence[ChannelGroup]) -> list[tuple[Any, ...]]:
    return [(g.name, g.size, g.slices) for g in groups]


def _outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _outputs(o)]
    return []


def compact_model(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    keep: Mapping[str, Tensor],
    *,
    example_inputs: ExampleInputs,
    tensors: Optional[Mapping[str, Tensor]] = None,
    verify: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> nn.Module:
    """A physically smaller copy of ``model`` without the channels ``keep`` drops.

    The copy is made first (``model`` is never changed), given ``tensors`` if passed, masked
    (so its outputs are the channel-masked model's), traced, and shrunk by replaying
    :func:`pruning_history` through Torch-Pruning. Each module's train/eval mode and each
    parameter's ``requires_grad`` are those of ``model``.

    Args:
        model: a plain model of the architecture the groups were found on (no prune masks:
            see :func:`~torch_lottery.channels.check_plain_model`).
        groups: its channel groups (:func:`~torch_lottery.channels.find_channel_groups`).
        keep: group name -> bool vector of kept channels, one per prunable group.
        example_inputs: one batch the forward accepts, on the model's device.
        tensors: optional FQN -> values written into the copy first: the rewind point (theta_0)
            to train the small ticket from its initialization, or the trained weights.
        verify: check that the compact model's outputs equal the masked model's on
            ``example_inputs`` (in eval mode), within ``rtol``/``atol`` relative to the largest
            output magnitude.

    Returns:
        The compact model: new Parameters for every shrunk layer, so build a new optimizer.

    Raises:
        ValueError: prune masks on ``model``, a model whose channel groups differ from
            ``groups``, or bad ``keep``.
        RuntimeError: the compact outputs differ from the masked model's (the graph coupled
            something it should not have); nothing is returned.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_lottery.channels import find_channel_groups
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x = torch.randn(1, 4)
        >>> groups = find_channel_groups(model, x)
        >>> keep = {"0": torch.arange(8) < 3}
        >>> small = compact_model(model, groups, keep, example_inputs=x)
        >>> small[0].weight.shape, small[2].weight.shape
        (torch.Size([3, 4]), torch.Size([2, 3]))
    """
    pruning_history(groups, keep)  # validates keep before anything is copied
    clone = plain_copy(model, tensors)
    return _compact_owned(clone, groups, keep, example_inputs=example_inputs, verify=verify, rtol=rtol, atol=atol)


def _compact_owned(
    clone: nn.Module,
    groups: Sequence[ChannelGroup],
    keep: Mapping[str, Tensor],
    *,
    example_inputs: ExampleInputs,
    verify: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> nn.Module:
    """:func:`compact_model` on a plain copy the caller owns (it is masked and shrunk in place)."""
    where = "compact_model()"
    history = pruning_history(groups, keep)
    live = dict(clone.named_parameters())
    missing = [f for g in groups if g.prunable for f in g.fqns if f not in live]
    if missing:
        raise ValueError(f"{where}: the model has no parameters {missing[:5]!r} of the channel groups")
    masks = channel_masks(groups, keep, {f: live[f] for g in groups if g.prunable for f in g.fqns})
    with torch.no_grad():
        for fqn, mask in masks.items():
            live[fqn].mul_(mask.to(live[fqn].device))
    reference: list[Tensor] = []
    training = {name: m.training for name, m in clone.named_modules()}
    if verify:
        clone.eval()
        with torch.no_grad():
            reference = [t.detach().clone() for t in _outputs(call_model(clone, example_inputs))]
        _restore_modes(clone, training)
    replay_history_(clone, history, example_inputs, where=where, expected=groups)
    if verify:
        _verify(clone, example_inputs, reference, rtol=rtol, atol=atol, training=training)
    removed = sum(len(h[2]) for h in history)
    logger.info("compact model: %d channels removed in %d groups", removed, len(history))
    return clone


def _restore_modes(model: nn.Module, training: Mapping[str, bool]) -> None:
    for name, m in model.named_modules():
        m.train(training.get(name, m.training))


def replay_history_(
    model: nn.Module,
    history: Sequence[Sequence[Any]],
    example_inputs: ExampleInputs,
    *,
    where: str,
    expected: Optional[Sequence[ChannelGroup]] = None,
) -> None:
    """Shrink ``model`` in place by replaying a Torch-Pruning ``history`` (modes and ``requires_grad`` kept).

    With ``expected``, the model's channel groups must equal those groups first (same names,
    sizes and slices), so a history is never replayed on a different architecture.
    """
    training = {name: m.training for name, m in model.named_modules()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    places: dict[int, list[tuple[str, str]]] = {}
    for mn, m in model.named_modules(remove_duplicate=False):
        for local, p in m._parameters.items():
            if p is not None and (mn, local) not in places.get(id(p), []):
                places.setdefault(id(p), []).append((mn, local))
    ties = [v for v in places.values() if len(v) > 1]
    graph, outputs = build_graph(model, example_inputs, where=where)
    if expected is not None:
        found = _groups_of_graph(graph, model, outputs, [], where)
        mine = {g.name: g for g in expected}
        differ = [g.name for g in found if g.name not in mine or (g.size, g.slices) != (mine[g.name].size, mine[g.name].slices)]
        differ += [n for n in mine if n not in {g.name for g in found}]
        if differ:
            _restore_modes(model, training)
            raise ValueError(
                f"{where}: the model's channel groups differ from the ticket's at {differ[:3]!r}; "
                "pass a fresh instance of the architecture the ticket was found on"
            )
    try:
        graph.load_pruning_history([list(h) for h in history])
    finally:
        _restore_modes(model, training)
    _retie_(model, ties, where)
    for name, p in model.named_parameters():
        p.requires_grad_(requires_grad.get(name, True))


def _retie_(model: nn.Module, ties: Sequence[Sequence[tuple[str, str]]], where: str) -> None:
    """Torch-Pruning slices each place of a tied weight into its own Parameter; share them again."""
    for tie in ties:
        (first_m, first_local), rest = tie[0], tie[1:]
        shared = model.get_submodule(first_m)._parameters[first_local]
        for mn, local in rest:
            module = model.get_submodule(mn)
            other = module._parameters[local]
            if other is shared:
                continue
            if other.shape != shared.shape or not torch.equal(other, shared):
                raise RuntimeError(
                    f"{where}: the tied weight {first_m}.{first_local} = {mn}.{local} was pruned differently "
                    f"in its two places ({tuple(shared.shape)} vs {tuple(other.shape)}); tied weights must share "
                    "their channels"
                )
            module._parameters[local] = shared


def _verify(
    compact: nn.Module,
    example_inputs: ExampleInputs,
    reference: Sequence[Tensor],
    *,
    rtol: float,
    atol: float,
    training: Mapping[str, bool],
) -> None:
    compact.eval()
    try:
        with torch.no_grad():
            got = _outputs(call_model(compact, example_inputs))
    finally:
        _restore_modes(compact, training)
    if len(got) != len(reference):
        raise RuntimeError(
            f"compact_model(): the compact model returns {len(got)} tensors, the masked model {len(reference)}"
        )
    for i, (a, b) in enumerate(zip(got, reference)):
        scale = float(b.abs().max()) if b.numel() else 0.0
        if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol * max(1.0, scale)):
            diff = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
            raise RuntimeError(
                f"compact_model(): output {i} of the compact model differs from the masked model's "
                f"(shapes {tuple(a.shape)} vs {tuple(b.shape)}, max difference {diff:.3g}); the channel "
                "graph coupled layers it should not have. Nothing was returned; report the model"
            )
