"""The pruning schedule: which targets are ranked together and how many weights each round prunes (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from .settings import TicketSettings

__all__ = ["Group", "group_counts", "per_round_rate", "plan_groups", "round_count"]


def per_round_rate(sparsity: float, rounds: int) -> float:
    """The rate per round that reaches ``sparsity`` after ``rounds`` rounds: ``1 - (1 - s)**(1/n)``.

    Example:
        >>> round(per_round_rate(0.36, 2), 6)
        0.2
    """
    return 1.0 - (1.0 - sparsity) ** (1.0 / rounds)


@dataclass(frozen=True)
class Group:
    """Targets ranked together in a round, with the rate or final sparsity that sets their count."""

    fqns: tuple[str, ...]
    rate: Optional[float]
    sparsity: Optional[float]


def plan_groups(fqns: Sequence[str], settings: TicketSettings) -> list[Group]:
    """The ranking groups of a round, from resolved ``settings`` (see :meth:`TicketSettings.resolve`).

    Targets without an override form one group under ``scope="global"`` or one group each under
    ``scope="layer"``; every overridden target is a group of its own.

    Example:
        >>> s = TicketSettings(rate=0.2, layer_rates={"c": 0.1})
        >>> [g.fqns for g in plan_groups(["a", "b", "c"], s)]
        [('a', 'b'), ('c',)]
    """
    rates, finals = settings.layer_rates, settings.layer_sparsity
    plain = tuple(f for f in fqns if f not in rates and f not in finals)
    groups: list[Group] = []
    if plain and settings.scope == "global":
        groups.append(Group(plain, settings.rate, settings.sparsity))
    elif plain:
        groups += [Group((f,), settings.rate, settings.sparsity) for f in plain]
    groups += [Group((f,), rates[f], None) for f in fqns if f in rates]
    groups += [Group((f,), None, finals[f]) for f in fqns if f in finals]
    return groups


def round_count(
    *, survivors: int, total: int, done: int, rate: Optional[float], sparsity: Optional[float], rounds: Optional[int]
) -> int:
    """How many of ``survivors`` (out of ``total``) to prune in round ``done + 1``.

    With ``rate``: ``round(rate * survivors)``, torch's ``amount`` meaning. With ``sparsity``
    over ``rounds`` rounds: enough to bring the pruned count to
    ``round(total * (1 - (1 - sparsity)**((done + 1) / rounds)))``, so the last round lands on
    ``round(sparsity * total)`` exactly and each round prunes about ``per_round_rate`` of the survivors.

    Example:
        >>> round_count(survivors=100, total=100, done=0, rate=None, sparsity=0.36, rounds=2)
        20
    """
    if rate is not None:
        n = round(rate * survivors)
    elif sparsity is not None and rounds is not None:
        goal = round(total * (1.0 - (1.0 - sparsity) ** ((done + 1) / rounds)))
        n = goal - (total - survivors)
    else:
        raise ValueError(f"round_count(): rate={rate!r}, sparsity={sparsity!r}, rounds={rounds!r}; give a rate, or a sparsity with rounds")
    return max(0, min(survivors, n))


def group_counts(
    groups: Sequence[Group], survivors: Mapping[str, int], numel: Mapping[str, int], *, done: int, rounds: Optional[int]
) -> list[int]:
    """The number of weights each group prunes in round ``done + 1``, from the survivors per target."""
    return [
        round_count(
            survivors=sum(survivors[f] for f in g.fqns), total=sum(numel[f] for f in g.fqns),
            done=done, rate=g.rate, sparsity=g.sparsity, rounds=rounds,
        )
        for g in groups
    ]
