"""accelerate glue: save a ticket with ``Accelerator.save_state`` and load it back, before the model, with ``load_state``.

Needs the ``accelerate`` extra (``pip install torch_lottery[accelerate]``).

``accelerator.register_for_checkpointing(ticket)`` saves a ticket's ``state_dict()`` with every
checkpoint and loads it into a new ticket (a new process) correctly with every backend. But
accelerate loads the model before custom objects: loading into a ticket that has pruned further
since the checkpoint, under a ``"baked"`` backend, puts zeros where the older masks keep weights.
:func:`register_ticket` loads the ticket before the model, so every case is exact.
"""

from __future__ import annotations

import logging
import os
from typing import Any

try:
    import accelerate  # noqa: F401  (the extra: fail here, with the fix, rather than inside a hook)
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        "torch_lottery.integrations.accelerate needs the accelerate package; "
        "install it with `pip install torch_lottery[accelerate]`"
    ) from exc

import torch

from ..lottery import LotteryTicket

__all__ = ["STATE_FILE", "register_ticket"]

logger = logging.getLogger(__name__)

#: The ticket's ``state_dict()`` in each ``save_state`` folder (``torch.save``; loaded with ``weights_only=True``).
STATE_FILE = "lottery_ticket.pt"


def register_ticket(accelerator: Any, ticket: LotteryTicket) -> tuple[Any, Any]:
    """Save ``ticket`` with every ``accelerator.save_state`` and load it with ``load_state``, before the model.

    ``save_state(folder)`` writes the ticket's :meth:`~torch_lottery.LotteryTicket.state_dict` (masks,
    round, history, rewind point with the optimizer's and scheduler's state) as :data:`STATE_FILE` in
    ``folder`` (main process only). ``load_state(folder)`` loads it into ``ticket`` before the model's
    weights, so they load under the checkpoint's masks, with any backend. Use it instead of
    ``register_for_checkpointing(ticket)``, not with it.

    Args:
        accelerator: an ``accelerate.Accelerator``.
        ticket: a :class:`~torch_lottery.LotteryTicket` over the prepared model, built with the saved settings.

    Returns:
        The two ``RemovableHandle`` of the save and load hooks (``handle.remove()`` unregisters).

    Raises:
        TypeError: ``accelerator`` is not an Accelerator or ``ticket`` not a LotteryTicket.
        FileNotFoundError: (from ``load_state``) the folder holds no ticket state.

    Example:
        >>> accelerator = accelerate.Accelerator()  # doctest: +SKIP
        >>> model, optimizer = accelerator.prepare(model, optimizer)  # doctest: +SKIP
        >>> ticket = LotteryTicket(model, rate=0.2, rounds=5, optimizer=optimizer)  # doctest: +SKIP
        >>> register_ticket(accelerator, ticket)  # doctest: +SKIP
    """
    fn = "register_ticket()"
    if not all(callable(getattr(accelerator, a, None)) for a in ("register_save_state_pre_hook", "register_load_state_pre_hook")):
        raise TypeError(f"{fn}: accelerator={type(accelerator).__name__!r} is not an accelerate.Accelerator; pass your Accelerator")
    if not isinstance(ticket, LotteryTicket):
        raise TypeError(f"{fn}: ticket={type(ticket).__name__!r} is not a LotteryTicket; pass the ticket over the prepared model")

    def save(models: Any, weights: Any, output_dir: str) -> None:
        if accelerator.is_main_process:
            os.makedirs(output_dir, exist_ok=True)
            torch.save(ticket.state_dict(), os.path.join(output_dir, STATE_FILE))
            logger.info("saved ticket state (round %d) to %s", ticket.round, output_dir)

    def load(models: Any, input_dir: str) -> None:
        path = os.path.join(input_dir, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Accelerator.load_state(): {path!r} does not exist, so the ticket's masks and IMP state cannot come back; "
                "load a folder saved with register_ticket() in place"
            )
        ticket.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        logger.info("loaded ticket state (round %d) from %s", ticket.round, input_dir)

    return accelerator.register_save_state_pre_hook(save), accelerator.register_load_state_pre_hook(load)
