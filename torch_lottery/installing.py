"""Installing masks on all of a ticket's targets through a backend, all or nothing."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from .backends import MaskBackend
from .targets import Target

__all__ = ["Undo", "check_no_regrowth", "install_masks_", "restore_masks_"]

#: What :func:`restore_masks_` needs to put masks back: per target, whether it was masked and its mask.
Undo = list[tuple[Target, bool, Tensor]]


def install_masks_(backend: MaskBackend, targets: Sequence[Target], masks: Mapping[str, Tensor]) -> Undo:
    """Install ``masks[t.fqn]`` on every target, or on none: a failure puts the finished ones back.

    Returns:
        The previous state, for :func:`restore_masks_`.
    """
    previous = [(t, backend.is_masked(t), backend.mask(t)) for t in targets]
    done: Undo = []
    try:
        for entry in previous:
            backend.apply_(entry[0], masks[entry[0].fqn])
            done.append(entry)
    except BaseException:
        restore_masks_(backend, done)
        raise
    finally:
        backend.commit_()  # the backend may drop what a rollback needed
    return previous


def restore_masks_(backend: MaskBackend, previous: Undo) -> None:
    """Put back the masks recorded by :func:`install_masks_` (unmasking targets that had none)."""
    for t, was_masked, old in reversed(previous):
        if was_masked:
            backend.apply_(t, old)
        else:
            backend.unapply_(t)
    backend.commit_()


def check_no_regrowth(backend: MaskBackend, targets: Sequence[Target], masks: Mapping[str, Tensor], fn: str) -> None:
    """Refuse ``masks`` that keep entries the masks in force have pruned (pruning never regrows).

    Raises:
        ValueError: naming ``fn``, the first such target and how many entries would regrow.
    """
    for t in targets:
        current = backend.mask(t)
        regrow = int(torch.count_nonzero(masks[t.fqn].to(current.device) & ~current))
        if regrow:
            raise ValueError(
                f"{fn}: pinned masks[{t.fqn!r}] keeps {regrow} entries that are pruned now; pin a subset of "
                "the masks in force (ticket.masks). Nothing was changed."
            )
