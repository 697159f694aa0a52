"""Lightning glue: a Callback that runs lottery-ticket rounds inside ``Trainer.fit`` and keeps the ticket in checkpoints.

:class:`LotteryTicketCallback` builds a :class:`~torch_lottery.LotteryTicket` over the
``LightningModule`` and drives its round methods from Lightning's hooks: one round per
``trainer.fit`` call, or one round every ``every_n_epochs`` epochs inside one ``fit``. It attaches
the optimizer and LR scheduler Lightning creates, so each rewind restores (or resets) them too;
it puts the ticket's state (masks, round, history, rewind point) into every Lightning checkpoint
and brings it back on resume; it logs the sparsity of each round to the trainer's loggers on rank
zero and writes the ticket file under ``trainer.default_root_dir`` when a fit ends.
:func:`ticket_from_checkpoint` rebuilds the ticket of a checkpoint over a module loaded without
the callback (``LightningModule.load_from_checkpoint``). Needs the ``lightning`` extra.
"""

from __future__ import annotations

import copy
import inspect
import logging
import numbers
import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
except ModuleNotFoundError as error:  # pragma: no cover - exercised by a subprocess test
    raise ModuleNotFoundError(
        "torch_lottery.integrations.lightning needs Lightning (the `lightning` package); "
        "install it with `pip install torch_lottery[lightning]`",
        name="lightning",
    ) from error

from ..lottery import LotteryTicket
from ..rewind import restore_optimizer_state_, scheduler_state
from ..settings import TicketSettings

__all__ = ["LotteryTicketCallback", "ticket_from_checkpoint"]

logger = logging.getLogger(__name__)

_FN = "LotteryTicketCallback()"
#: Arguments of LotteryTicket the callback supplies itself.
_RESERVED = {
    "model": "the callback builds the ticket over the LightningModule it is given",
    "optimizer": "the callback attaches the optimizer Lightning creates from configure_optimizers()",
    "scheduler": "the callback attaches the LR scheduler Lightning creates from configure_optimizers()",
}
_STATE_VERSION = 1


def _ticket_option_names() -> list[str]:
    params = inspect.signature(LotteryTicket.__init__).parameters
    return [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _check_ticket_options(options: Mapping[str, Any]) -> None:
    """Unknown and reserved names, then every settings value, checked before anything is built."""
    names = _ticket_option_names()
    for key in options:
        if key in _RESERVED:
            raise TypeError(f"{_FN}: {key}= is not accepted: {_RESERVED[key]}; drop it")
        if key not in names:
            raise TypeError(f"{_FN}: unknown option {key}=; ticket options are {sorted(n for n in names if n not in _RESERVED)}")
    fields = {f for f in TicketSettings.__dataclass_fields__}
    values = {k: v for k, v in options.items() if k in fields and not (k in ("criterion", "importance") and not isinstance(v, str))}
    try:
        TicketSettings(**values)
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace("LotteryTicket(): ", f"{_FN}: ", 1)) from None


def _check_schedule(every_n_epochs: object) -> Optional[tuple[int, ...]]:
    """``None`` (one round per fit), or the length in epochs of each round."""
    if every_n_epochs is None:
        return None
    if isinstance(every_n_epochs, numbers.Integral) and not isinstance(every_n_epochs, bool):
        if every_n_epochs < 1:
            raise ValueError(
                f"{_FN}: every_n_epochs={every_n_epochs!r} is not a positive number of epochs; pass an int >= 1 "
                "(a round every that many epochs), a list of epochs per round, or None (one round per trainer.fit)"
            )
        return (int(every_n_epochs),)
    if isinstance(every_n_epochs, Sequence) and not isinstance(every_n_epochs, str):
        lengths = list(every_n_epochs)
        bad = [n for n in lengths if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1]
        if not lengths or bad:
            raise ValueError(
                f"{_FN}: every_n_epochs={every_n_epochs!r} must list a positive int of epochs for each round; "
                "pass e.g. [3, 2, 2]"
            )
        return tuple(int(n) for n in lengths)
    raise TypeError(
        f"{_FN}: every_n_epochs={every_n_epochs!r} is not an int, a list of ints or None; pass e.g. 2 or [3, 2, 2]"
    )


def _trainer_optimizer(trainer: "pl.Trainer") -> tuple[Optional[torch.optim.Optimizer], Any]:
    """The one optimizer and the one LR scheduler of the fit (either may be ``None``)."""
    optimizers = list(trainer.optimizers)
    schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
    if len(optimizers) > 1 or len(schedulers) > 1:
        raise RuntimeError(
            f"LotteryTicketCallback.on_fit_start(): configure_optimizers() returned {len(optimizers)} optimizers and "
            f"{len(schedulers)} schedulers; a ticket restores one of each at a rewind. Return one optimizer (with "
            "parameter groups) and at most one scheduler"
        )
    return (optimizers[0] if optimizers else None), (schedulers[0] if schedulers else None)


class LotteryTicketCallback(pl.Callback):
    """Iterative magnitude pruning inside ``lightning.Trainer.fit``, resumable from Lightning checkpoints.

    The callback builds ``callback.ticket``, a :class:`~torch_lottery.LotteryTicket` over the
    ``LightningModule``, in :meth:`setup`, with ``ticket_options``. theta_0 is the module's weights
    when the first round begins (the start of the first training run).

    - ``every_n_epochs=None``: each ``trainer.fit`` is one round. Training ends, the round prunes
      and rewinds; call ``fit`` again (same or new Trainer, same module) for the next round.
    - ``every_n_epochs=N`` (or a list of epochs per round): inside one ``fit``, a round every N
      epochs until the ticket's ``rounds`` are done; the remaining epochs train the final ticket.
      A round ends at the start of the epoch after its last (after Lightning has stepped epoch
      schedulers), or when the fit ends. A round still short of its epochs when a fit ends stays
      open and continues in the next ``fit``.

    At each rewind the optimizer and LR scheduler Lightning created are restored to their state
    at the rewind point (at theta_0: as they were when training began, so Adam's moments are
    empty and the schedule starts over; at theta_k: as after step k). With
    ``reset_optimizer=True`` they go back to their freshly configured state instead, whatever
    the rewind point. Each checkpoint (``trainer.save_checkpoint``, ``ModelCheckpoint``) holds the
    ticket's state; ``trainer.fit(..., ckpt_path=...)`` with this callback brings back the masks
    and the IMP state, so the run continues as if never stopped. The model's own ``state_dict``
    in the checkpoint is plain with zeros at pruned entries: ``load_from_checkpoint`` gives those
    weights without masks; :func:`ticket_from_checkpoint` restores the ticket over them.

    An exception inside ``fit`` (an error in ``training_step``, Ctrl-C) closes the open round with
    :meth:`~torch_lottery.LotteryTicket.abort_round_`: nothing is pruned or rewound and the
    trained weights are kept.

    Args:
        every_n_epochs: ``None`` (one round per ``fit``), an int >= 1, or a list of the epochs
            of each round (one entry per round of the ticket).
        reset_optimizer: at each rewind, reset the optimizer and scheduler to their freshly
            configured state instead of restoring them to the rewind point.
        ticket_path: where the ticket file is written at the end of each ``fit`` that has
            pruned at least once; relative paths are under ``trainer.default_root_dir``;
            ``None`` writes none.
        log_prefix: prefix of the metrics logged per round (``<prefix>sparsity``,
            ``<prefix>remaining``, ``<prefix>round``).
        ticket_options: keyword options of :class:`~torch_lottery.LotteryTicket` (``rate``,
            ``sparsity``, ``rounds``, ``scope``, ``rewind``, ``targets``, ``backend``, ...), all
            but ``optimizer`` and ``scheduler``, which come from Lightning.

    Raises:
        TypeError, ValueError: an invalid option, unknown ticket option, or ``optimizer``/
            ``scheduler``/``model`` among the ticket options; raised here, before any fit.

    Example:
        >>> cb = LotteryTicketCallback(rate=0.2, rounds=3, every_n_epochs=2)
        >>> cb.ticket is None  # built when the Trainer sets the callback up
        True
    """

    def __init__(
        self,
        *,
        every_n_epochs: Union[int, Sequence[int], None] = None,
        reset_optimizer: bool = False,
        ticket_path: Union[str, os.PathLike, None] = "ticket.safetensors",
        log_prefix: str = "lottery/",
        **ticket_options: Any,
    ) -> None:
        schedule = _check_schedule(every_n_epochs)
        if not isinstance(reset_optimizer, bool):
            raise TypeError(f"{_FN}: reset_optimizer={reset_optimizer!r} must be True or False")
        if ticket_path is not None and not isinstance(ticket_path, (str, os.PathLike)):
            raise TypeError(f"{_FN}: ticket_path={ticket_path!r} is not a path; pass a file name or None")
        if not isinstance(log_prefix, str):
            raise TypeError(f"{_FN}: log_prefix={log_prefix!r} must be a string such as 'lottery/'")
        _check_ticket_options(ticket_options)
        rounds = TicketSettings(**{k: ticket_options[k] for k in ("sparsity", "rate", "rounds") if k in ticket_options}).rounds
        if schedule is not None and len(schedule) > 1 and len(schedule) != rounds:
            raise ValueError(
                f"{_FN}: every_n_epochs={list(schedule)!r} gives {len(schedule)} round lengths but rounds={rounds!r}; "
                f"pass rounds={len(schedule)} or one length per round"
            )
        self._schedule = schedule
        self._reset = reset_optimizer
        self._ticket_path = ticket_path
        self._prefix = log_prefix
        self._options = dict(ticket_options)
        self._ticket: Optional[LotteryTicket] = None
        self._open = False  # a round of the ticket is open (begin_round_ ran, end/abort not yet)
        self._reopen = False  # a loaded checkpoint was taken inside a round: reopen it when training starts
        self._resumed = False  # this fit restored a checkpoint: keep its epoch bookkeeping
        self._pending: Optional[dict[str, Any]] = None  # loaded ticket state, applied again after attach
        self._epochs_done = 0  # epochs of the open round run in earlier fits
        self._start_epoch = 0  # trainer.current_epoch when this fit's part of the open round began
        self._fresh: Optional[tuple[Any, Any]] = None  # freshly configured optimizer/scheduler state
        self._resume_steps = 0  # optimizer steps the reopened round ran before its checkpoint (rewind=k)

    # ------------------------------------------------------------------ views
    @property
    def ticket(self) -> Optional[LotteryTicket]:
        """The ticket over the LightningModule (``None`` until the Trainer calls :meth:`setup`)."""
        return self._ticket

    @property
    def every_n_epochs(self) -> Optional[tuple[int, ...]]:
        """The epochs of each round (one entry: every round), or ``None`` (one round per ``fit``)."""
        return self._schedule

    def _round_length(self) -> int:
        assert self._schedule is not None and self._ticket is not None
        return self._schedule[min(self._ticket.round, len(self._schedule) - 1)]

    def _elapsed(self, trainer: "pl.Trainer") -> int:
        return self._epochs_done + trainer.current_epoch - self._start_epoch

    # ------------------------------------------------------------------ setup and optimizers
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Build the ticket over ``pl_module`` (once; later fits must use the same module)."""
        if self._ticket is None:
            self._ticket = LotteryTicket(pl_module, **self._options)
            if self._pending is not None:
                self._ticket.load_state_dict(self._pending["ticket"])
            logger.debug("ticket built over %s: %d targets", type(pl_module).__name__, len(self._ticket.targets))
        elif self._ticket.model is not pl_module:
            raise RuntimeError(
                f"LotteryTicketCallback.setup(): this callback's ticket is over another {type(self._ticket.model).__name__} "
                f"instance than the {type(pl_module).__name__} given to the Trainer; pass the same module to every "
                "fit, or a new LotteryTicketCallback for a new module"
            )
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_weights_only:
                rank_zero_only(logger.warning)(
                    "ModelCheckpoint(save_weights_only=True) writes the pruned zeros but not the ticket: its checkpoints "
                    "cannot resume IMP and carry no masks; use save_weights_only=False to keep the ticket in them"
                )

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Attach the optimizer and scheduler Lightning just created (before a checkpoint restores their state)."""
        optimizer, scheduler = _trainer_optimizer(trainer)
        ticket = self._require_ticket("on_fit_start")
        ticket.attach(optimizer=optimizer, scheduler=scheduler)
        if self._pending is not None:  # the rewind point's optimizer state is the checkpoint's, not this fresh one
            ticket.load_state_dict(self._pending["ticket"])
            self._pending = None
        self._fresh = (
            copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None,
            scheduler_state(scheduler) if scheduler is not None else None,
        )

    def _require_ticket(self, where: str) -> LotteryTicket:
        if self._ticket is None:
            raise RuntimeError(f"LotteryTicketCallback.{where}(): no ticket yet; the Trainer calls setup() first")
        return self._ticket

    # ------------------------------------------------------------------ rounds
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Open the round of a ``fit`` (one round per fit), or reopen the round a checkpoint was taken in."""
        ticket = self._require_ticket("on_train_start")
        if self._open and not self._resumed:  # a round carried over from an earlier fit: count on from here
            self._start_epoch = trainer.current_epoch
        if self._schedule is None:
            if not self._open and not ticket.done:
                self._begin(trainer, reset_epochs=True, steps=self._resume_steps if self._reopen else 0)
            elif ticket.done:
                logger.info("all %s rounds are done: this fit trains the ticket without pruning", ticket.rounds)
        elif self._reopen and not ticket.done:
            self._begin(trainer, reset_epochs=False, steps=self._resume_steps)
        self._reopen = self._resumed = False
        self._resume_steps = 0

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Every ``every_n_epochs``: end the round whose epochs have run, open the next one."""
        if self._schedule is None:
            return
        ticket = self._require_ticket("on_train_epoch_start")
        if self._open and self._elapsed(trainer) >= self._round_length():
            self._end(trainer)
        if not self._open and not ticket.done:
            self._begin(trainer, reset_epochs=True)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """End the open round (per fit, or when its epochs are complete); a shorter one waits for the next fit."""
        if not self._open:
            return
        if self._schedule is None or self._elapsed(trainer) >= self._round_length():
            self._end(trainer)
            return
        self._epochs_done = self._elapsed(trainer)
        logger.info(
            "round %d is open after %d of its %d epochs; it continues in the next fit",
            self._require_ticket("on_train_end").round + 1, self._epochs_done, self._round_length(),
        )

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        """Roll the open round back: nothing pruned or rewound, the trained weights kept."""
        if self._open and self._ticket is not None:
            self._open = False
            self._ticket.abort_round_(type(exception).__name__)

    def _begin(self, trainer: "pl.Trainer", *, reset_epochs: bool, steps: int = 0) -> None:
        self._require_ticket("on_train_start").begin_round_(steps=steps)
        self._open = True
        if reset_epochs:
            self._epochs_done, self._start_epoch = 0, trainer.current_epoch

    def _end(self, trainer: "pl.Trainer") -> None:
        ticket = self._require_ticket("on_train_end")
        self._open = False  # end_round_ closes the round even when it fails (and then rolls everything back)
        ticket.end_round_()
        if self._reset:
            self._reset_optimizer_(ticket)
        self._log_round(trainer)

    def _reset_optimizer_(self, ticket: LotteryTicket) -> None:
        """Put the optimizer and scheduler back to their freshly configured state (``reset_optimizer=True``)."""
        if self._fresh is None:
            return
        restore_optimizer_state_(ticket.optimizer, self._fresh[0], ticket.scheduler, self._fresh[1])

    @rank_zero_only
    def _log_round(self, trainer: "pl.Trainer") -> None:
        record = self._require_ticket("on_train_end").history[-1]
        metrics = {
            f"{self._prefix}round": float(record["round"]),
            f"{self._prefix}sparsity": float(record["sparsity"]),
            f"{self._prefix}remaining": float(record["remaining"]),
        }
        logger.info(
            "round %d done at epoch %d: sparsity %.4f (%d of %d weights remain)",
            record["round"], trainer.current_epoch, record["sparsity"], record["remaining"], record["total"],
        )
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
            lg.save()

    # ------------------------------------------------------------------ ticket file
    def ticket_file(self, trainer: "pl.Trainer") -> Optional[str]:
        """The path the ticket file is written to for ``trainer`` (``None`` if ``ticket_path=None``)."""
        if self._ticket_path is None:
            return None
        path = os.fspath(self._ticket_path)
        return path if os.path.isabs(path) else os.path.join(trainer.default_root_dir, path)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Write the ticket file (rank zero) once the ticket has pruned."""
        path = self.ticket_file(trainer)
        ticket = self._require_ticket("on_fit_end")
        if path is None or ticket.round == 0 or not trainer.is_global_zero:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        ticket.save(path)
        logger.info("ticket after round %d written to %s", ticket.round, path)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a Lightning checkpoint keeps: the ticket's state and where the open round stands."""
        if self._ticket is None:
            return {}
        return {
            "version": _STATE_VERSION,
            "ticket": self._ticket.state_dict(),
            "round_open": self._open,
            "epochs_done": self._epochs_done,
            "start_epoch": self._start_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: masks installed and IMP state restored at once; the round reopens when training starts.

        Raises:
            ValueError: the state is not one this callback wrote, or does not fit the ticket
                (see :meth:`~torch_lottery.LotteryTicket.load_state_dict`); nothing is changed.
        """
        if not state_dict:
            return
        fn = "LotteryTicketCallback.load_state_dict()"
        if not isinstance(state_dict, Mapping) or "ticket" not in state_dict or state_dict.get("version") != _STATE_VERSION:
            raise ValueError(f"{fn}: state_dict={state_dict!r:.80} was not written by LotteryTicketCallback (version {_STATE_VERSION})")
        state = dict(state_dict)
        if self._ticket is not None:
            if self._open:
                self._open = False
                self._ticket.abort_round_("a checkpoint load")
            self._ticket.load_state_dict(state["ticket"])
        self._pending = state
        self._reopen = bool(state["round_open"])
        ticket_state = state["ticket"]
        self._resume_steps = 0 if ticket_state.get("rewind_captured", True) else int(ticket_state.get("steps", 0))
        self._epochs_done, self._start_epoch = int(state["epochs_done"]), int(state["start_epoch"])
        self._resumed = True


def ticket_from_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Any]], **overrides: Any) -> LotteryTicket:
    """The ticket a :class:`LotteryTicketCallback` saved in a Lightning checkpoint, rebuilt over ``model``.

    ``LightningModule.load_from_checkpoint`` loads the plain weights (zeros at pruned entries)
    but not the masks, which live in the callback's state. This restores them: the masks are
    installed on ``model`` and the IMP state (round, history, rewind point) restored, so
    ``with ticket:`` (or a new callback) continues the run. The model's weights are not changed.

    Args:
        model: the module loaded from the checkpoint (or any module with the same targets).
        checkpoint: a checkpoint file path, or the loaded checkpoint dict.
        overrides: ticket options that win over the saved ones (e.g. ``snapshot_device``).

    Raises:
        ValueError: the checkpoint holds no LotteryTicketCallback state (saved without the
            callback, or with ``save_weights_only=True``).

    Example:
        >>> # model = MyModule.load_from_checkpoint(path); ticket = ticket_from_checkpoint(model, path)
    """
    fn = "ticket_from_checkpoint()"
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"{fn}: checkpoint={type(checkpoint).__name__} is not a path or a checkpoint dict")
    states = [s for k, s in (checkpoint.get("callbacks") or {}).items() if str(k).startswith(LotteryTicketCallback.__qualname__) and s]
    if len(states) != 1:
        raise ValueError(
            f"{fn}: the checkpoint holds {len(states)} LotteryTicketCallback states (need exactly one); it was saved "
            "without the callback or with ModelCheckpoint(save_weights_only=True), so it carries no masks"
        )
    state = states[0]["ticket"]
    ticket = LotteryTicket.from_config(model, state["config"], **overrides)
    ticket.load_state_dict(state)
    return ticket
