"""Early-bird detection: tell when the mask a round would prune has stopped changing (You et al., 2020).

You et al. ("Drawing Early-Bird Tickets", ICLR 2020) observe that the mask magnitude pruning
would draw settles early in training, long before the weights converge. They draw the mask once
per epoch, keep the last five in a FIFO and stop dense training once the newest mask's
normalized Hamming distance to each of the other four is at most 0.1; the ticket is then pruned
with that mask and retrained. :class:`EarlyBird` does this for any :class:`LotteryTicket`: the
mask is the ticket's own (:meth:`LotteryTicket.compute_masks`: its criterion, scope, per-layer
rates and counts), and when it fires the ticket is told to prune with exactly that mask
(:meth:`LotteryTicket.pin_masks_`), so leaving the ``with ticket:`` block early gives the
early-bird ticket. Each IMP round is watched on its own.

Definitions (where the reference code leaves them open):

* **Distance.** Between two candidate masks, the fraction of the entries *alive in the masks now
  in force* whose keep/prune decision differs (:func:`torch_lottery.analysis.mask_distance` over
  those entries). In the first round nothing is pruned yet and this is ``mask_distance`` of the
  full masks, the paper's measure. In later IMP rounds the entries pruned in earlier rounds are
  pruned in every candidate; counting them would shrink every distance by the fraction already
  pruned and make ``epsilon`` meaningless (at 10% remaining no two masks could differ by more
  than 0.1 of all entries).
* **Threshold.** The newest mask is "within epsilon" of another when ``distance <= epsilon``
  (distances are exact ratios of integer counts, so a distance of exactly ``epsilon`` fires).
  The reference code rejects on ``distance > 0.1``, the same rule. ``epsilon=0`` fires only on
  identical masks; ``epsilon=1`` fires as soon as the window is full.
* **Window.** The newest mask and the ``window - 1`` masks drawn before it in this round; it
  fires only once that many masks have been drawn. Between updates the ``window - 1`` most
  recent masks are stored, bit-packed (:func:`torch_lottery.masking.pack_bits`: one bit per
  entry, ``ceil(numel / 8)`` bytes per tensor, on the tensor's device).
* **After it fires.** :attr:`emerged_at` and :attr:`mask` keep the first emergence of the round
  and :meth:`update` returns ``True`` from then on; later updates still record their distances.
  A new round (``ticket.round`` advanced) starts a fresh window; the finished round's record goes
  to :attr:`history`.

The candidate masks come from one method, :meth:`EarlyBird.candidate_masks`; a kind of ticket
whose masks are drawn differently (channel masks) needs only that source to differ.
"""

from __future__ import annotations

import logging
import numbers
from collections import deque
from typing import Any, Optional

import torch
from torch import Tensor

from .analysis import mask_distance
from .lottery import LotteryTicket
from .masking import pack_bits, unpack_bits

__all__ = ["EarlyBird"]

logger = logging.getLogger(__name__)


def _check_epsilon(epsilon: object) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise TypeError(f"EarlyBird(): epsilon={epsilon!r} is not a number; pass a fraction in [0, 1] such as 0.1")
    value = float(epsilon)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(
            f"EarlyBird(): epsilon={epsilon!r} is outside [0, 1]; pass the largest fraction of entries "
            "that may still change, such as 0.1"
        )
    return value


def _check_window(window: object) -> int:
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"EarlyBird(): window={window!r} is not an int; pass the number of masks to compare, such as 5")
    if window < 2:
        raise ValueError(f"EarlyBird(): window={window!r} is below 2; the newest mask needs at least one to compare with")
    return window


class EarlyBird:
    """Detect the early-bird ticket of a round: stop training once the pruning mask settles.

    Call :meth:`update` from your loop (say once per epoch) inside the ticket's ``with`` block.
    It draws the mask the ticket would prune now, without touching the model, and returns
    ``True`` once the newest mask is within ``epsilon`` of each of the ``window - 1`` masks drawn
    before it in this round. From then on the ticket is pinned to that mask: leave the block and
    the round prunes with exactly it, then rewinds as usual. The module docstring defines the
    distance (entries alive in this round), the threshold (``<=``) and the window.

    Args:
        ticket: the :class:`LotteryTicket` whose rounds are watched; its criterion, scope,
            rates and counts decide the masks.
        epsilon: the largest normalized Hamming distance, in ``[0, 1]``, that counts as
            "settled" (the paper's 0.1).
        window: how many masks are compared (the newest and ``window - 1`` earlier ones; the
            paper's FIFO of 5). At least 2.

    Attributes:
        distances: one entry per :meth:`update` of the current round: the largest distance
            between that update's mask and the (up to ``window - 1``) masks before it, ``None``
            for the round's first update.
        emerged_at: index into :attr:`distances` of the update that fired in this round, or ``None``.
        mask: the early-bird mask of this round (FQN -> bool) once it fired, else ``None``.
        history: one dict per finished round (``round``, ``distances``, ``emerged_at``).

    Raises:
        TypeError, ValueError: a ticket that is not a :class:`LotteryTicket`, ``epsilon`` outside
            ``[0, 1]``, ``window`` below 2.
        RuntimeError: a ticket whose rounds are all done, or whose pruning :meth:`~LotteryTicket.remove_`
            made permanent.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_lottery import EarlyBird, LotteryTicket
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 4))
        >>> ticket = LotteryTicket(model, rate=0.5, rounds=1)
        >>> eb = EarlyBird(ticket, epsilon=0.1, window=3)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
        >>> x, y = torch.randn(64, 20), torch.randint(0, 4, (64,))
        >>> with ticket:
        ...     for epoch in range(200):
        ...         opt.zero_grad()
        ...         nn.functional.cross_entropy(model(x), y).backward()
        ...         opt.step()
        ...         if eb.update():
        ...             break  # the mask has settled: stop training early
        >>> eb.emerged_at, len(eb.distances)  # fired at the third update, when the window was full
        (2, 3)
        >>> all(torch.equal(ticket.masks[k], eb.mask[k]) for k in eb.mask)  # pruned with that mask
        True
    """

    def __init__(self, ticket: LotteryTicket, *, epsilon: float = 0.1, window: int = 5) -> None:
        if not isinstance(ticket, LotteryTicket):
            raise TypeError(
                f"EarlyBird(): ticket={type(ticket).__name__!r} is not a LotteryTicket; "
                "pass the ticket whose rounds you train"
            )
        self.epsilon = _check_epsilon(epsilon)
        self.window = _check_window(window)
        self._check_ticket(ticket, "EarlyBird")
        self.ticket = ticket
        self.history: list[dict[str, Any]] = []
        self._round: Optional[int] = None
        self._start_round(ticket.round)

    # ------------------------------------------------------------------ state
    def _start_round(self, rnd: int) -> None:
        self._round = rnd
        self._stored: deque[dict[str, Tensor]] = deque(maxlen=self.window - 1)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.distances: list[Optional[float]] = []
        self.emerged_at: Optional[int] = None
        self.mask: Optional[dict[str, Tensor]] = None

    def _finish_round(self) -> None:
        if self.distances:
            self.history.append(
                {"round": self._round, "distances": list(self.distances), "emerged_at": self.emerged_at}
            )

    @staticmethod
    def _check_ticket(ticket: LotteryTicket, where: str) -> None:
        if ticket.removed:
            raise RuntimeError(
                f"{where}(): the ticket's pruning was made permanent by remove_(); it prunes no more, "
                "so there is no mask to watch. Build a new LotteryTicket"
            )
        if ticket.done:
            raise RuntimeError(
                f"{where}(): the ticket's rounds={ticket.rounds} are all done; there is no next round to watch. "
                "Build a ticket with more rounds, or use rate= without rounds"
            )

    @property
    def round(self) -> int:
        """The ticket round being watched (``ticket.round`` at the last update)."""
        assert self._round is not None
        return self._round

    @property
    def emerged(self) -> bool:
        """Whether the early-bird ticket of the current round has emerged."""
        return self.emerged_at is not None

    @property
    def stored_bytes(self) -> int:
        """Bytes held by the stored masks of the window (bit-packed)."""
        return sum(p.numel() * p.element_size() for masks in self._stored for p in masks.values())

    def reset(self) -> None:
        """Forget the current round's masks and distances, and drop the pin on the ticket if this set it."""
        if self.mask is not None and self.ticket.pinned_masks is not None:
            self.ticket.pin_masks_(None)
        self._start_round(self.ticket.round)

    # ------------------------------------------------------------------ the update
    def candidate_masks(self) -> dict[str, Tensor]:
        """The mask source: what the ticket would prune now (FQN -> bool), computed without mutation.

        This is :meth:`LotteryTicket.compute_masks`. It is the one place a kind of ticket with
        another mask source would differ.
        """
        return self.ticket.compute_masks()

    def _distance(self, new: dict[str, Tensor], old: dict[str, Tensor], alive: int) -> float:
        """Normalized Hamming distance over the ``alive`` entries of this round (see the module docstring).

        Candidates are subsets of the masks in force, so they can differ only on alive entries:
        the count of differing entries is ``mask_distance`` of the full masks times their size.
        """
        full = mask_distance(new, {k: unpack_bits(old[k], self._shapes[k]) for k in old})
        differ = round(full * sum(m.numel() for m in new.values()))  # exact: full is differ / numel
        return differ / alive if alive else 0.0

    def update(self) -> bool:
        """Draw the mask the ticket would prune now and report whether the early bird has emerged.

        The model, its masks, the optimizer and the global RNG are left untouched. When this
        update fires (the newest mask is within ``epsilon`` of each of the ``window - 1`` before
        it), the ticket is pinned to it (:meth:`LotteryTicket.pin_masks_`): the round's prune
        uses exactly this mask.

        Returns:
            ``True`` from the update that fired in this round on, else ``False``.

        Raises:
            RuntimeError: the ticket's rounds are all done, or ``remove_()`` was called.
            ValueError: the weights hold NaN or infinite values (from :meth:`LotteryTicket.compute_masks`).
        """
        ticket = self.ticket
        self._check_ticket(ticket, "EarlyBird.update")
        if ticket.round != self._round:
            self._finish_round()
            self._start_round(ticket.round)
        new = self.candidate_masks()
        alive = sum(int(torch.count_nonzero(m)) for m in ticket.masks.values())
        if not self._shapes:
            self._shapes = {k: tuple(m.shape) for k, m in new.items()}
        dists = [self._distance(new, old, alive) for old in self._stored]
        self.distances.append(max(dists) if dists else None)
        fired = (
            self.emerged_at is None
            and len(dists) == self.window - 1
            and all(d <= self.epsilon for d in dists)
        )
        self._stored.append({k: pack_bits(m) for k, m in new.items()})
        if fired:
            ticket.pin_masks_(new)
            self.emerged_at = len(self.distances) - 1
            self.mask = {k: m.detach().clone() for k, m in new.items()}
            logger.info(
                "early-bird ticket emerged in round %d at update %d (max distance %.4f <= epsilon %.4f)",
                ticket.round + 1, self.emerged_at, max(dists), self.epsilon,
            )
        return self.emerged_at is not None

    def __repr__(self) -> str:
        last = self.distances[-1] if self.distances else None
        shown = "None" if last is None else f"{last:.4f}"
        return (
            f"EarlyBird(epsilon={self.epsilon}, window={self.window}, round={self._round}, "
            f"updates={len(self.distances)}, last_distance={shown}, emerged_at={self.emerged_at})"
        )
