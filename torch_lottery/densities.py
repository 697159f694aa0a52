"""Layer-wise density rules: how many weights each target layer keeps for a given overall sparsity (pure).

Every rule, for the target layers ``l = 1..L`` in model order with ``n_l`` weights each
(``N = sum n_l``), gives each layer a density ``d_l`` (fraction kept):

* ``"uniform"``: the same density everywhere.
* ``"erk"`` (Erdos-Renyi-Kernel, Evci et al. 2020): ``d_l = c * sum(shape_l) / prod(shape_l)``,
  kernel dimensions included (a ``(64, 3, 3, 3)`` convolution counts ``64 + 3 + 3 + 3``).
* ``"er"`` (Erdos-Renyi, Mocanu et al. 2018): ``d_l = c * (n_in + n_out) / (n_in * n_out)`` with
  channels only: the first two dimensions of the weight.
* ``"smart_ratio"`` (Su et al. 2020): ``d_l = c * ((L - l + 1)**2 + (L - l + 1))`` for every target
  layer (the authors' released code fixes Linear layers at 30%; this does not).
* ``"balanced"`` (Gadhikar et al. 2023): every layer keeps the same number of weights,
  ``d_l = c / n_l``.
* ``"pyramidal"`` (Gadhikar et al. 2023): ``d_l = r**l`` with ``r`` solving
  ``sum n_l * r**l = (1 - sparsity) * N`` (found by bisection; ``r <= 1``, so no layer exceeds 1).

The scale ``c`` is solved so that the layers keep ``(1 - sparsity) * N`` weights in total. A layer
whose formula exceeds density 1 is made dense and ``c`` is re-solved over the others, until none
exceeds 1 (capping a layer only raises ``c``, so the dense set only grows and the result is the
same as capping one layer at a time, as google-research/rigl does for ERK).

Counts are integers: the total kept is ``K = N - round(sparsity * N)`` (the count a
``LotteryTicket(sparsity=...)`` prunes to), and the real-valued per-layer counts ``d_l * n_l``
(which sum to ``K``) are rounded by largest remainder: each layer gets the floor, and the
``K - sum of floors`` layers with the largest fractional parts (the earlier layer on a tie) get
one more. The densities returned are those counts over ``n_l``, so ``round(d_l * n_l)`` gives the
counts back and they sum to ``K`` exactly.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from .targets import Target, TargetSelector, find_targets

__all__ = ["DENSITY_RULES", "kept_counts", "layer_densities"]

DENSITY_RULES: tuple[str, ...] = ("uniform", "erk", "er", "smart_ratio", "balanced", "pyramidal")
"""The rule names :func:`layer_densities` accepts."""

Shapes = Union[nn.Module, Sequence[Target], Mapping[str, Union[Sequence[int], Tensor]]]


def _shapes(model_or_targets: Shapes, targets: TargetSelector, exclude: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """FQN -> shape of each target layer, in order, from a model, a list of Targets or a mapping."""
    where = "layer_densities()"
    if isinstance(model_or_targets, nn.Module):
        return {t.fqn: tuple(t.shape) for t in find_targets(model_or_targets, targets, exclude)}
    if targets is not None or exclude:
        raise ValueError(f"{where}: targets= and exclude= select targets of a model; pass the model itself")
    if isinstance(model_or_targets, Mapping):
        out = {}
        for fqn, value in model_or_targets.items():
            shape = tuple(value.shape) if isinstance(value, Tensor) else tuple(value)
            if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape):
                raise TypeError(f"{where}: shape of {fqn!r} is {value!r}; pass a tensor or a tuple of ints")
            out[str(fqn)] = tuple(int(d) for d in shape)
        shapes = out
    elif isinstance(model_or_targets, Sequence) and all(isinstance(t, Target) for t in model_or_targets):
        shapes = {t.fqn: tuple(t.shape) for t in model_or_targets}
    else:
        raise TypeError(
            f"{where}: model_or_targets={type(model_or_targets).__name__!r} is not a model, a list of "
            "Targets or a {fqn: shape} mapping; pass the model (or ticket.targets)"
        )
    if not shapes:
        raise ValueError(f"{where}: no target layers given; pass a model or a non-empty list of targets")
    return shapes


def _check_sparsity(sparsity: object, where: str) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"{where}: sparsity={sparsity!r} is not a number; pass the fraction to prune, in [0, 1)")
    value = float(sparsity)
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ValueError(
            f"{where}: sparsity={sparsity!r} is outside [0, 1); pass the fraction of weights to prune, such as 0.9"
        )
    return value


def _raw_weights(rule: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
    """The unnormalized density of each layer under a linear rule (``d_l = c * w_l``)."""
    count = len(shapes)
    out: dict[str, float] = {}
    for index, (fqn, shape) in enumerate(shapes.items()):
        numel = math.prod(shape)
        if rule == "uniform":
            out[fqn] = 1.0
        elif rule == "erk":
            out[fqn] = sum(shape) / numel
        elif rule == "er":
            if len(shape) < 2:
                raise ValueError(
                    f"layer_densities(): rule='er' needs weights with (out, in, ...) dimensions, but {fqn!r} "
                    f"has shape {shape}; use rule='erk' or leave that tensor out"
                )
            out[fqn] = (shape[0] + shape[1]) / (shape[0] * shape[1])
        elif rule == "smart_ratio":
            k = count - index  # L - l + 1 for l = index + 1
            out[fqn] = float(k * k + k)
        elif rule == "balanced":
            out[fqn] = 1.0 / numel
        else:  # pragma: no cover - validated by the caller
            raise AssertionError(rule)
    return out


def _solve_linear(weights: Mapping[str, float], numel: Mapping[str, int], kept: int) -> dict[str, float]:
    """Real per-layer counts ``min(1, c * w_l) * n_l`` summing to ``kept`` (dense layers capped)."""
    dense: set[str] = set()
    while True:
        budget = kept - sum(numel[f] for f in dense)
        divisor = sum(weights[f] * numel[f] for f in weights if f not in dense)
        scale = budget / divisor if divisor > 0 else 0.0
        over = {f for f in weights if f not in dense and scale * weights[f] > 1.0}
        if not over:
            break
        dense |= over
    return {f: float(numel[f]) if f in dense else scale * weights[f] * numel[f] for f in weights}


def _solve_pyramidal(numel: Mapping[str, int], kept: int) -> dict[str, float]:
    """Real per-layer counts ``n_l * min(1, r**l)`` with ``r`` in [0, 1] bisected to sum to ``kept``."""
    sizes = list(numel.values())

    def total(r: float) -> float:
        return sum(n * min(1.0, r ** (i + 1)) for i, n in enumerate(sizes))

    lo, hi = 0.0, 1.0
    for _ in range(200):  # far past float64 resolution
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if total(mid) < kept:
            lo = mid
        else:
            hi = mid
    r = hi  # total(hi) >= kept, within float resolution of it
    return {f: n * min(1.0, r ** (i + 1)) for i, (f, n) in enumerate(numel.items())}


def _round_counts(real: Mapping[str, float], numel: Mapping[str, int], kept: int) -> dict[str, int]:
    """Integer counts by largest remainder: floors, then +1 to the largest fractions (earlier first)."""
    counts = {f: min(numel[f], max(0, math.floor(x))) for f, x in real.items()}
    order = list(real)
    missing = kept - sum(counts.values())
    by_fraction = sorted(order, key=lambda f: (-(real[f] - math.floor(real[f])), order.index(f)))
    while missing > 0:  # more than one pass only to absorb float error at the boundaries
        grew = False
        for f in by_fraction:
            if missing == 0:
                break
            if counts[f] < numel[f]:
                counts[f] += 1
                missing -= 1
                grew = True
        if not grew:  # pragma: no cover - kept <= N always leaves room
            raise AssertionError("layer_densities(): no room to place the remaining weights")
    for f in reversed(by_fraction):  # float error the other way: take from the smallest fractions
        if missing >= 0:
            break
        if counts[f] > 0:
            counts[f] -= 1
            missing += 1
    return counts


def _plan(
    model_or_targets: Shapes, sparsity: float, rule: str, targets: TargetSelector, exclude: Sequence[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Validate, then return ``(numel, kept counts)`` per target layer."""
    sparsity = _check_sparsity(sparsity, "layer_densities()")
    if rule not in DENSITY_RULES:
        raise ValueError(f"layer_densities(): rule={rule!r} is not a density rule; choose one of {list(DENSITY_RULES)}")
    shapes = _shapes(model_or_targets, targets, exclude)
    numel = {f: math.prod(s) for f, s in shapes.items()}
    empty = [f for f, n in numel.items() if n == 0]
    if empty:
        raise ValueError(f"layer_densities(): {empty!r} have no elements; leave them out of the targets")
    total = sum(numel.values())
    kept = total - round(sparsity * total)
    if rule == "pyramidal":
        real = _solve_pyramidal(numel, kept)
    else:
        real = _solve_linear(_raw_weights(rule, shapes), numel, kept)
    return numel, _round_counts(real, numel, kept)


def kept_counts(
    model_or_targets: Shapes,
    sparsity: float,
    *,
    rule: str = "uniform",
    targets: TargetSelector = None,
    exclude: Sequence[str] = (),
) -> dict[str, int]:
    """How many weights each target layer keeps under ``rule``: :func:`layer_densities` as integers.

    The counts sum to ``N - round(sparsity * N)`` exactly. Arguments as for :func:`layer_densities`.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> kept_counts(model, 0.5, rule="balanced")  # 8 each, but the last layer has only 6
        {'0.weight': 9, '2.weight': 9, '4.weight': 6}
    """
    return _plan(model_or_targets, sparsity, rule, targets, exclude)[1]


def layer_densities(
    model_or_targets: Shapes,
    sparsity: float,
    *,
    rule: str = "uniform",
    targets: TargetSelector = None,
    exclude: Sequence[str] = (),
) -> dict[str, float]:
    """Per-layer densities (fractions kept) that reach the overall ``sparsity`` under ``rule``. Pure.

    See the module docstring for each rule's formula, the capping of layers at density 1 and
    the rounding of counts. The result is usable as a ticket's per-layer sparsity
    (``LotteryTicket(layer_sparsity={f: 1 - d ...})``), as the ``density`` of
    :func:`torch_lottery.prune_at_init` and for random tickets.

    Args:
        model_or_targets: a model (its targets found as :class:`~torch_lottery.LotteryTicket`
            finds them), a list of :class:`~torch_lottery.Target` (e.g. ``ticket.targets``) or a
            mapping ``{fqn: shape or tensor}``, in layer order.
        sparsity: the overall fraction of the target weights to prune, in ``[0, 1)``.
        rule: one of :data:`DENSITY_RULES`: ``"uniform"``, ``"erk"``, ``"er"``, ``"smart_ratio"``,
            ``"balanced"``, ``"pyramidal"``.
        targets, exclude: which tensors of a model are target layers (as for ``LotteryTicket``).

    Returns:
        ``{fqn: density}`` in layer order; ``density * numel`` rounds to an integer count and the
        counts sum to ``N - round(sparsity * N)``.

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)``, an unknown ``rule``, no target layers, or
            ``rule="er"`` on a tensor with fewer than two dimensions.
        TypeError: a non-numeric ``sparsity`` or an unsupported ``model_or_targets``.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> d = layer_densities(model, 0.5, rule="erk")  # (6+4)/24, (3+6)/18, (2+3)/6: scale 1
        >>> {k: round(v, 4) for k, v in d.items()}
        {'0.weight': 0.4167, '2.weight': 0.5, '4.weight': 0.8333}
    """
    numel, counts = _plan(model_or_targets, sparsity, rule, targets, exclude)
    return {f: counts[f] / numel[f] for f in counts}
