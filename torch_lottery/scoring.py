"""Pruning criteria: pure functions from trained (and initial) weights to importance scores."""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

__all__ = ["CRITERIA", "Criterion", "get_criterion", "magnitude", "magnitude_increase", "movement", "random"]

Criterion = Callable[[str, Tensor, Optional[Tensor], torch.Generator], Tensor]
"""``criterion(fqn, weight, initial, generator) -> scores``: higher scores survive.

``weight`` is the current effective weight, ``initial`` the tensor at the rewind point
(``None`` when unknown). The engine ranks only surviving entries; the result must have
``weight``'s shape and be finite there.
"""


def magnitude(fqn: str, weight: Tensor, initial: Optional[Tensor], generator: torch.Generator) -> Tensor:
    """|w|: the lottery-ticket criterion (Zhou et al.'s ``large_final``)."""
    return weight.abs()


def magnitude_increase(fqn: str, weight: Tensor, initial: Optional[Tensor], generator: torch.Generator) -> Tensor:
    """|w| - |w_0|: keep weights whose magnitude grew most in training (Zhou et al.)."""
    if initial is None:
        raise ValueError(f"magnitude_increase: no initial value for {fqn!r}; it needs a rewind snapshot")
    return weight.abs() - initial.to(weight.device, weight.dtype).abs()


def movement(fqn: str, weight: Tensor, initial: Optional[Tensor], generator: torch.Generator) -> Tensor:
    """|w - w_0|: keep weights that moved furthest from their initial value."""
    if initial is None:
        raise ValueError(f"movement: no initial value for {fqn!r}; it needs a rewind snapshot")
    return (weight - initial.to(weight.device, weight.dtype)).abs()


def random(fqn: str, weight: Tensor, initial: Optional[Tensor], generator: torch.Generator) -> Tensor:
    """Uniform random scores from the ticket's seeded generator: the random-pruning control."""
    return torch.rand(weight.shape, generator=generator, dtype=torch.float64).to(weight.device)


CRITERIA: dict[str, Criterion] = {
    "magnitude": magnitude,
    "large_final": magnitude,
    "magnitude_increase": magnitude_increase,
    "movement": movement,
    "random": random,
}


def get_criterion(criterion: Union[str, Criterion]) -> Criterion:
    """Resolve a criterion name or callable; raise a clear error for anything else."""
    if callable(criterion):
        return criterion
    if isinstance(criterion, str) and criterion in CRITERIA:
        return CRITERIA[criterion]
    raise ValueError(
        f"LotteryTicket(): criterion={criterion!r} is not a known criterion; "
        f"choose one of {sorted(CRITERIA)} or pass a callable (fqn, weight, initial, generator) -> scores"
    )
