"""Pure channel selection: group importance, global or per-group choice, and weight-shaped masks.

Channels are chosen per :class:`~torch_lottery.channels.ChannelGroup` and kept as one bool vector
per group (``keep[group.name][c]`` is ``True`` while channel ``c`` survives). Everything here is
pure: weights and vectors in, new vectors or FQN-keyed masks out; nothing touches a model.
"""

from __future__ import annotations

import operator
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from .channels import ChannelGroup
from .selection import prune_lowest

__all__ = [
    "ChannelImportance",
    "IMPORTANCES",
    "channel_masks",
    "channel_scores",
    "channel_sparsity",
    "channel_targets",
    "channels_from_masks",
    "full_keep",
    "random_channels",
    "refill_channels",
    "select_channels",
]

ChannelImportance = Callable[[ChannelGroup, Mapping[str, Tensor]], Tensor]
IMPORTANCES = ("l1", "l2")


def _prunable(groups: Sequence[ChannelGroup]) -> list[ChannelGroup]:
    return [g for g in groups if g.prunable]


def channel_targets(groups: Sequence[ChannelGroup]) -> list[str]:
    """FQNs of the tensors that the prunable groups mask, each once, in group order."""
    return list(dict.fromkeys(f for g in _prunable(groups) for f in g.fqns))


def full_keep(groups: Sequence[ChannelGroup]) -> dict[str, Tensor]:
    """Every channel of every prunable group kept."""
    return {g.name: torch.ones(g.size, dtype=torch.bool) for g in _prunable(groups)}


def channel_sparsity(groups: Sequence[ChannelGroup], keep: Mapping[str, Tensor]) -> float:
    """Fraction of the prunable groups' channels removed.

    Example:
        >>> from torch_lottery.channels import ChannelGroup
        >>> g = [ChannelGroup("a", 4, ()), ChannelGroup("b", 4, ())]
        >>> channel_sparsity(g, {"a": torch.tensor([1, 0, 0, 1]).bool(), "b": torch.ones(4).bool()})
        0.25
    """
    prunable = _prunable(groups)
    total = sum(g.size for g in prunable)
    alive = sum(int(keep[g.name].sum()) for g in prunable)
    return 1.0 - alive / total if total else 0.0


def _check_keep(groups: Sequence[ChannelGroup], keep: Mapping[str, Tensor], where: str) -> None:
    names = [g.name for g in _prunable(groups)]
    missing = [n for n in names if n not in keep]
    unknown = [n for n in keep if n not in names]
    if missing or unknown:
        raise ValueError(
            f"{where}: keep is missing groups {missing[:5]!r} and has unknown {unknown[:5]!r}; "
            "pass one bool vector per prunable group (see full_keep)"
        )
    for g in _prunable(groups):
        k = keep[g.name]
        if not isinstance(k, Tensor) or k.dtype != torch.bool or tuple(k.shape) != (g.size,):
            raise ValueError(
                f"{where}: keep[{g.name!r}] is {getattr(k, 'dtype', type(k).__name__)} of shape "
                f"{tuple(getattr(k, 'shape', ()))}; pass a bool vector of {g.size} channels"
            )


# ---------------------------------------------------------------------- importance
def _slab_stat(t: Tensor, dim: int, p: int) -> tuple[Tensor, int]:
    """Sum of ``|t|**p`` over everything but ``dim`` (float64), and the entries per slab."""
    dims = [d for d in range(t.dim()) if d != dim]
    v = t.detach().abs().double()
    if p == 2:
        v = v * v
    return (v.sum(dim=dims) if dims else v), t.numel() // max(1, t.shape[dim])


def channel_scores(
    groups: Sequence[ChannelGroup],
    tensors: Mapping[str, Tensor],
    *,
    importance: Union[str, ChannelImportance] = "l1",
) -> dict[str, Tensor]:
    """One importance score per channel of every prunable group. Pure.

    ``"l1"`` (default) is the mean ``|w|`` over every weight entry the channel owns in the
    group: its filters, and the input columns that read it, across all coupled layers (tensors
    of two or more dimensions; biases and norm scales are left out). ``"l2"`` is the mean of
    ``w**2``. Means, not sums, so groups of different fan-in compare fairly under global ranking.
    A callable ``(group, tensors) -> Tensor[group.size]`` gives your own score.

    Args:
        groups: the channel groups; only prunable ones are scored.
        tensors: FQN -> current (effective, masked) values of at least the groups' tensors.
        importance: ``"l1"``, ``"l2"`` or a callable.

    Returns:
        group name -> float64 scores of shape ``(group.size,)`` (higher is more important).

    Raises:
        ValueError: unknown importance, a tensor missing, or a callable returning the wrong
            shape or NaN.

    Example:
        >>> import torch
        >>> from torch_lottery.channels import ChannelGroup, ChannelSlice
        >>> g = ChannelGroup("fc1", 2, (ChannelSlice("fc1.weight", 0, (0, 1), (0, 1), "out"),))
        >>> channel_scores([g], {"fc1.weight": torch.tensor([[1.0, -3.0], [0.5, 0.5]])})["fc1"].tolist()
        [2.0, 0.5]
    """
    where = "channel_scores()"
    if isinstance(importance, str):
        if importance not in IMPORTANCES:
            raise ValueError(
                f"{where}: importance={importance!r} is not one of {list(IMPORTANCES)}; "
                "or pass a callable (group, tensors) -> scores"
            )
        p = 1 if importance == "l1" else 2
    elif not callable(importance):
        raise TypeError(f"{where}: importance={importance!r} is neither a name nor a callable")
    missing = [f for f in channel_targets(groups) if f not in tensors]
    if missing:
        raise ValueError(f"{where}: tensors is missing {missing[:5]!r}; pass every tensor of the groups")
    out: dict[str, Tensor] = {}
    cache: dict[tuple[str, int], tuple[Tensor, int]] = {}
    for g in _prunable(groups):
        if callable(importance) and not isinstance(importance, str):
            s = importance(g, tensors)
            if not isinstance(s, Tensor) or tuple(s.shape) != (g.size,):
                raise ValueError(
                    f"{where}: importance returned {getattr(s, 'shape', type(s).__name__)} for group "
                    f"{g.name!r}; return one score per channel, shape ({g.size},)"
                )
            s = s.detach().double().cpu()
            if torch.isnan(s).any():
                raise ValueError(f"{where}: importance returned NaN scores for group {g.name!r}")
            out[g.name] = s
            continue
        total = torch.zeros(g.size, dtype=torch.float64)
        count = torch.zeros(g.size, dtype=torch.float64)
        weighted = [s for s in g.slices if tensors[s.fqn].dim() >= 2] or list(g.slices)
        for s in weighted:
            key = (s.fqn, s.dim)
            if key not in cache:
                cache[key] = _slab_stat(tensors[s.fqn], s.dim, p)
            stat, per = cache[key]
            pos = torch.tensor(s.positions, dtype=torch.long)
            ch = torch.tensor(s.channels, dtype=torch.long)
            total.index_add_(0, ch, stat.cpu()[pos])
            count.index_add_(0, ch, torch.full((len(pos),), float(per), dtype=torch.float64))
        out[g.name] = total / count.clamp_min(1.0)
    return out


# ---------------------------------------------------------------------- selection
def select_channels(
    scores: Mapping[str, Tensor],
    keep: Mapping[str, Tensor],
    n: Union[int, Mapping[str, int]],
) -> dict[str, Tensor]:
    """Remove the ``n`` lowest-scoring surviving channels; every group keeps at least one. Pure.

    An int ``n`` ranks the channels of all groups in ``scores`` together (global selection);
    each group's best survivor is protected so no group is emptied. A mapping
    ``{group: n_g}`` removes ``n_g`` channels from each named group on its own (per-layer
    selection). Ties are broken as :func:`~torch_lottery.selection.prune_lowest` breaks them:
    the lower position goes first. Removed channels never come back.

    Args:
        scores: group name -> scores (higher is more important).
        keep: group name -> bool vector of surviving channels, same keys as ``scores``.
        n: how many channels to remove, in total or per group.

    Returns:
        group name -> new bool vector. The inputs are not modified.

    Raises:
        ValueError: mismatched keys or shapes, or more channels asked for than can go.

    Example:
        >>> s = {"a": torch.tensor([3.0, 1.0, 2.0]), "b": torch.tensor([0.5, 0.1])}
        >>> k = {g: torch.ones(len(v), dtype=torch.bool) for g, v in s.items()}
        >>> {g: v.tolist() for g, v in select_channels(s, k, 2).items()}
        {'a': [True, False, True], 'b': [True, False]}
    """
    where = "select_channels()"
    if list(scores) != list(keep):
        raise ValueError(f"{where}: scores and keep have different groups: {sorted(set(scores) ^ set(keep))!r}")
    for g in scores:
        if scores[g].shape != keep[g].shape:
            raise ValueError(f"{where}: scores[{g!r}] and keep[{g!r}] have different shapes")
    if isinstance(n, Mapping):
        unknown = [g for g in n if g not in keep]
        if unknown:
            raise ValueError(f"{where}: n names unknown groups {unknown!r}")
        out = {g: k.clone() for g, k in keep.items()}
        for g, count in n.items():
            out.update(_select({g: scores[g]}, {g: keep[g]}, count, where))
        return out
    return _select(scores, keep, n, where)


def _select(scores: Mapping[str, Tensor], keep: Mapping[str, Tensor], n: int, where: str) -> dict[str, Tensor]:
    if isinstance(n, bool):
        raise TypeError(f"{where}: n={n!r} is not an integer")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{where}: n={n!r} is not an integer; pass how many channels to remove") from None
    protected: dict[str, Tensor] = {}
    removable = 0
    for g, s in scores.items():
        alive = keep[g].to(torch.bool)
        s = s.detach().double().clone()
        if alive.any():
            masked = torch.where(alive, s, torch.full_like(s, -float("inf")))
            s[int(torch.argmax(masked))] = float("inf")  # the best survivor stays
            removable += int(alive.sum()) - 1
        protected[g] = s
    if not 0 <= n <= removable:
        raise ValueError(
            f"{where}: n={n!r} is outside [0, {removable}]: every group keeps at least one channel "
            f"({sum(int(k.sum()) for k in keep.values())} survive in {len(keep)} groups)"
        )
    return prune_lowest(protected, {g: k.to(torch.bool) for g, k in keep.items()}, n)


def random_channels(keep: Mapping[str, Tensor], *, seed: int = 0) -> dict[str, Tensor]:
    """Random channels with the same number of survivors per group as ``keep`` (the control).

    Example:
        >>> r = random_channels({"a": torch.tensor([True, False, False, True])}, seed=3)
        >>> int(r["a"].sum())
        2
    """
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for g, k in keep.items():
        new = torch.zeros(k.numel(), dtype=torch.bool)
        new[torch.randperm(k.numel(), generator=generator)[: int(k.sum())]] = True
        out[g] = new
    return out


# ---------------------------------------------------------------------- masks
def channel_masks(
    groups: Sequence[ChannelGroup],
    keep: Mapping[str, Tensor],
    shapes: Mapping[str, Union[torch.Size, Sequence[int], Tensor]],
) -> dict[str, Tensor]:
    """Weight-shaped bool masks (FQN-keyed) that remove the channels ``keep`` drops. Pure.

    Each tensor of a prunable group gets ``False`` along every dimension where one of its
    channels was removed: a conv's filters and bias entries, the BatchNorm entries, the input
    columns of its readers. A tensor touched by two groups (a conv's output and input channels)
    gets both.

    Args:
        groups: the channel groups.
        keep: group name -> bool vector, one per prunable group.
        shapes: FQN -> shape (or the tensor itself) of every tensor in :func:`channel_targets`.

    Returns:
        FQN -> bool mask on the CPU, for every tensor in :func:`channel_targets`.

    Example:
        >>> from torch_lottery.channels import ChannelGroup, ChannelSlice
        >>> g = ChannelGroup("fc1", 2, (ChannelSlice("fc1.weight", 0, (0, 1), (0, 1), "out"),
        ...                              ChannelSlice("fc2.weight", 1, (0, 1), (0, 1), "in")))
        >>> m = channel_masks([g], {"fc1": torch.tensor([True, False])}, {"fc1.weight": (2, 3), "fc2.weight": (1, 2)})
        >>> m["fc1.weight"].tolist(), m["fc2.weight"].tolist()
        ([[True, True, True], [False, False, False]], [[True, False]])
    """
    _check_keep(groups, keep, "channel_masks()")
    masks: dict[str, Tensor] = {}
    for fqn in channel_targets(groups):
        if fqn not in shapes:
            raise ValueError(f"channel_masks(): shapes is missing {fqn!r}")
        shape = shapes[fqn]
        shape = tuple(shape.shape) if isinstance(shape, Tensor) else tuple(shape)
        masks[fqn] = torch.ones(shape, dtype=torch.bool)
    for g in _prunable(groups):
        dropped = ~keep[g.name].cpu()
        if not dropped.any():
            continue
        for s in g.slices:
            ch = torch.tensor(s.channels, dtype=torch.long)
            pos = torch.tensor(s.positions, dtype=torch.long)[dropped[ch]]
            if len(pos):
                masks[s.fqn].index_fill_(s.dim, pos, False)
    return masks


def channels_from_masks(groups: Sequence[ChannelGroup], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The kept channels that channel-structured ``masks`` encode (the inverse of :func:`channel_masks`).

    Raises:
        ValueError: a mask is missing, or the masks are not channel-structured (some entries of
            a channel removed, others kept): derive channels from unstructured masks with
            :func:`refill_channels` instead.
    """
    where = "channels_from_masks()"
    missing = [f for f in channel_targets(groups) if f not in masks]
    if missing:
        raise ValueError(f"{where}: masks is missing {missing[:5]!r}")
    keep: dict[str, Tensor] = {}
    for g in _prunable(groups):
        alive = torch.zeros(g.size, dtype=torch.bool)
        for s in g.slices:
            m = masks[s.fqn].cpu().to(torch.bool)
            dims = [d for d in range(m.dim()) if d != s.dim]
            any_alive = m.any(dim=dims) if dims else m
            pos = torch.tensor(s.positions, dtype=torch.long)
            ch = torch.tensor(s.channels, dtype=torch.long)
            alive.index_fill_(0, ch[any_alive[pos]], True)
        keep[g.name] = alive
    rebuilt = channel_masks(groups, keep, {f: masks[f] for f in channel_targets(groups)})
    for f, m in rebuilt.items():
        if not torch.equal(m, masks[f].cpu().to(torch.bool)):
            raise ValueError(
                f"{where}: masks[{f!r}] is not channel-structured (entries of one channel differ); "
                "use refill_channels() to derive channels from unstructured masks"
            )
    return keep


def refill_channels(
    groups: Sequence[ChannelGroup],
    masks: Mapping[str, Tensor],
    *,
    counts: Optional[Mapping[str, int]] = None,
) -> dict[str, Tensor]:
    """Channels from an unstructured ticket: keep those with the most surviving weights (refill).

    Chen et al. (2022, "Coarsening the Granularity") turn an unstructured IMP mask into a
    channel mask per layer: each output channel is ranked by how many of its weights survive,
    and as many channels are kept as the layer's density allows. Here, per prunable group, the
    survivors are counted over the group's producer weights (``"out"`` slices of tensors with two
    or more dimensions that ``masks`` covers), and ``max(1, round(density * size))`` channels are
    kept, where ``density`` is the surviving fraction of those weights. Ties keep the lower
    channel index. A group none of whose producer weights is in ``masks`` keeps every channel.

    Args:
        groups: the channel groups.
        masks: FQN -> bool mask of an unstructured ticket (e.g. ``ticket.masks``).
        counts: optional group name -> number of channels to keep, overriding the density rule.

    Returns:
        group name -> bool vector of kept channels.

    Example:
        >>> from torch_lottery.channels import ChannelGroup, ChannelSlice
        >>> g = ChannelGroup("fc1", 4, (ChannelSlice("fc1.weight", 0, (0, 1, 2, 3), (0, 1, 2, 3), "out"),))
        >>> m = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]]).bool()  # 1, 2, 0, 1 survivors
        >>> refill_channels([g], {"fc1.weight": m})["fc1"].tolist()  # density 1/2: 2 channels
        [True, True, False, False]
    """
    where = "refill_channels()"
    names = {g.name for g in _prunable(groups)}
    if counts is not None:
        unknown = [k for k in counts if k not in names]
        if unknown:
            raise ValueError(f"{where}: counts names unknown groups {unknown!r}; prunable groups are {sorted(names)[:8]!r}")
    keep: dict[str, Tensor] = {}
    for g in _prunable(groups):
        survivors = torch.zeros(g.size, dtype=torch.float64)
        alive_total, total = 0, 0
        for s in g.slices:
            m = masks.get(s.fqn)
            if s.role != "out" or m is None or m.dim() < 2:
                continue
            stat, per = _slab_stat(m.to(torch.float32), s.dim, 1)
            pos = torch.tensor(s.positions, dtype=torch.long)
            ch = torch.tensor(s.channels, dtype=torch.long)
            survivors.index_add_(0, ch, stat.cpu()[pos])
            alive_total += int(stat[pos].sum())
            total += per * len(pos)
        if counts is not None and g.name in counts:
            k = int(counts[g.name])
            if not 1 <= k <= g.size:
                raise ValueError(f"{where}: counts[{g.name!r}]={k!r} is outside [1, {g.size}]")
        elif total == 0:
            keep[g.name] = torch.ones(g.size, dtype=torch.bool)
            continue
        else:
            k = max(1, min(g.size, round(g.size * alive_total / total)))
        order = torch.argsort(survivors, descending=True, stable=True)
        kept = torch.zeros(g.size, dtype=torch.bool)
        kept[order[:k]] = True
        keep[g.name] = kept
    return keep
