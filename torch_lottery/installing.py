"""Installing masks on all of a ticket's targets through a backend, all or nothing, with Ctrl-C deferred.

:func:`install_masks_` installs a mask on every target or on none (a failure on any target, the
one in progress included, puts the finished ones back). :func:`deferred_interrupts` holds SIGINT
for the few statements that must run together (installing masks, rewinding, counting a round)
and delivers it after them, so Ctrl-C lands on a whole round or before it, never inside.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from .backends import MaskBackend
from .shards import count_true
from .targets import Target

__all__ = ["Undo", "check_no_regrowth", "deferred_interrupts", "install_masks_", "mask_state", "restore_masks_"]

#: What :func:`restore_masks_` needs to put masks back: per target, whether it was masked and its mask.
Undo = list[tuple[Target, bool, Tensor]]


def mask_state(backend: MaskBackend, targets: Sequence[Target]) -> Undo:
    """Per target: whether it is masked now, and its mask (what :func:`restore_masks_` puts back)."""
    return [(t, backend.is_masked(t), backend.mask(t)) for t in targets]


def install_masks_(
    backend: MaskBackend, targets: Sequence[Target], masks: Mapping[str, Tensor], *, commit: bool = True
) -> Undo:
    """Install ``masks[t.fqn]`` on every target, or on none: a failure puts the finished ones back.

    Args:
        commit: tell the backend the masks are final (``commit_``). A caller that may still roll
            back (a round whose rewind has not run yet) passes ``False`` and calls
            :func:`restore_masks_` or ``backend.commit_()`` itself.

    Returns:
        The previous state, for :func:`restore_masks_`.
    """
    previous = mask_state(backend, targets)
    done: Undo = []
    try:
        for entry in previous:
            done.append(entry)  # before apply_: the target in progress is put back too
            backend.apply_(entry[0], masks[entry[0].fqn])
    except BaseException:
        restore_masks_(backend, done)
        raise
    if commit:
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
        regrow = count_true(masks[t.fqn].to(current.device) & ~current)
        if regrow:
            raise ValueError(
                f"{fn}: pinned masks[{t.fqn!r}] keeps {regrow} entries that are pruned now; pin a subset of "
                "the masks in force (ticket.masks). Nothing was changed."
            )


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT until the block ends, then deliver it to the handler that was installed before.

    In threads other than the main one (which never receive signals) it does nothing. Keep the
    block short: a Ctrl-C waits for it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)
