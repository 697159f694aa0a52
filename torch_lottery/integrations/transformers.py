"""Hugging Face transformers glue: a ``TrainerCallback`` that runs IMP rounds inside ``Trainer.train()``, and a ``save_pretrained`` export of a ticket.

Needs the ``transformers`` extra (``pip install torch_lottery[transformers]``).

:class:`LotteryTicketCallback` builds a :class:`~torch_lottery.LotteryTicket` over the Trainer's
model and delegates to its round methods: one round per ``trainer.train()`` call, or with
``every_n_epochs=N`` one round every ``N`` epochs inside one call. At each rewind the Trainer's
optimizer and LR scheduler are restored to their state at the rewind point (a Trainer keeps its
optimizer across ``train()`` calls, so AdamW's moments would otherwise carry over). Each
``checkpoint-N/`` folder the Trainer writes gets the ticket file and the callback's resume state,
and ``trainer.train(resume_from_checkpoint=...)`` brings back the masks and the IMP state.

:func:`save_pretrained` writes a ``save_pretrained`` folder of a pruned model (plain keys, exact
zeros, checked after writing) with the ticket file beside it.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from typing import Any, Optional, Union

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ModuleNotFoundError as exc:  # an optional leaf: the core never imports this module
    raise ModuleNotFoundError(
        "torch_lottery.integrations.transformers needs the transformers package; "
        "install it with `pip install torch_lottery[transformers]`"
    ) from exc

import torch
from torch import Tensor, nn

from ..backends import BACKENDS, effective_state_dict
from ..files import atomic_write
from ..lottery import LotteryTicket
from ..scoring import get_criterion
from ..settings import TicketSettings
from ..targets import unwrap_model
from ..ticket_file import read_ticket_info, read_ticket_tensors

__all__ = ["LotteryTicketCallback", "save_pretrained", "TICKET_FILE", "STATE_FILE", "load_checkpoint_state"]

logger = logging.getLogger(__name__)

#: The ticket file written into each ``checkpoint-N/`` folder, the output folder and ``save_pretrained`` folders.
TICKET_FILE = "lottery_ticket.safetensors"
#: What a ticket file does not hold: the rewind point's optimizer and scheduler state (``torch.save``, weights only).
STATE_FILE = "lottery_ticket_state.pt"
_STATE_FORMAT = "torch_lottery.transformers_callback"
_CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR

_FRAMEWORK_OWNED = ("model", "optimizer", "scheduler")  # the Trainer supplies these
_TICKET_OPTIONS = tuple(p for p in inspect.signature(LotteryTicket.__init__).parameters if p not in ("self", *_FRAMEWORK_OWNED))


def _check_ticket_options(options: dict[str, Any], fn: str) -> None:
    """Validate LotteryTicket options without a model: names, settings values, criterion and backend."""
    for name in options:
        if name in _FRAMEWORK_OWNED:
            raise TypeError(
                f"{fn}: {name}= is supplied by the Trainer; drop it (pass your model, optimizers=(optimizer, scheduler) "
                "to transformers.Trainer)"
            )
        if name not in _TICKET_OPTIONS:
            raise TypeError(f"{fn}: unknown option {name}={options[name]!r}; LotteryTicket options are {list(_TICKET_OPTIONS)}")
    fields = {f for f in TicketSettings.__dataclass_fields__ if f not in ("criterion", "importance")}
    try:
        TicketSettings(**{k: v for k, v in options.items() if k in fields})
        get_criterion(options.get("criterion", "magnitude"))
    except (TypeError, ValueError) as exc:  # the same message, naming this constructor
        raise type(exc)(str(exc).replace("LotteryTicket():", fn)) from None
    backend = options.get("backend", "prune")
    if backend not in BACKENDS:
        raise ValueError(f"{fn}: backend={backend!r} is not one of {sorted(BACKENDS)}")


def _inner(obj: Any, attr: str) -> Any:
    """Look through accelerate's wrappers (``AcceleratedOptimizer.optimizer``, ``AcceleratedScheduler.scheduler``)."""
    while obj is not None and type(obj).__module__.startswith("accelerate") and getattr(obj, attr, None) is not None:
        obj = getattr(obj, attr)
    return obj


def _checkpoint_folder(args: TrainingArguments, state: TrainerState) -> str:
    """The ``checkpoint-<global_step>`` folder the Trainer writes at this step (``args.output_dir`` based)."""
    return os.path.join(args.output_dir, f"{_CHECKPOINT_PREFIX}-{state.global_step}")


def load_checkpoint_state(folder: Union[str, os.PathLike]) -> dict[str, Any]:
    """A ticket ``state_dict()`` rebuilt from a folder's :data:`TICKET_FILE` and :data:`STATE_FILE`.

    The ticket file (dense encoding) gives masks, rewind weights, settings, round and history; the state
    file the rewind point's optimizer and scheduler state and the global step it was written at (under
    ``"global_step"``). Both are validated; nothing is unpickled.

    Raises:
        FileNotFoundError: a file is missing. ValueError: the files are damaged or do not belong together.
    """
    fn = "load_checkpoint_state()"
    ticket_path, state_path = os.path.join(folder, TICKET_FILE), os.path.join(folder, STATE_FILE)
    for path in (ticket_path, state_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{fn}: {path!r} does not exist; resume from a checkpoint folder written by LotteryTicketCallback"
            )
    extra = torch.load(state_path, map_location="cpu", weights_only=True)
    if not isinstance(extra, dict) or extra.get("format") != _STATE_FORMAT:
        raise ValueError(f"{fn}: {state_path!r} is not a LotteryTicketCallback state file")
    content = read_ticket_tensors(ticket_path)  # checksum, shapes and counts checked
    if extra.get("ticket_checksum") != content.metadata.get("checksum"):
        raise ValueError(
            f"{fn}: {state_path!r} was written with another {TICKET_FILE} than the one in {os.fspath(folder)!r}; "
            "the checkpoint folder is damaged (resume from an earlier checkpoint)"
        )
    state = content.state_dict()
    state.update(optimizer_state=extra["optimizer_state"], scheduler_state=extra["scheduler_state"], global_step=extra["global_step"])
    return state


class LotteryTicketCallback(TrainerCallback):
    """Iterative magnitude pruning inside ``transformers.Trainer``: a ``TrainerCallback`` over a LotteryTicket.

    The ticket is built over the Trainer's model when the Trainer is built (or when training starts, for a
    callback added later) and is :attr:`ticket`. Without ``every_n_epochs`` each ``trainer.train()`` call is
    one round: theta_0 is taken when the first call starts, and when a call ends the round prunes and rewinds.
    With ``every_n_epochs=N`` a round ends every ``N`` epochs inside one call, and once ``rounds`` are done the
    remaining epochs train the final ticket. Each round's sparsity is appended to ``trainer.state.log_history``
    (``lottery_round``, ``lottery_sparsity``, ``lottery_remaining``, ``lottery_total``).

    At each rewind the optimizer and LR scheduler are restored to their state at the rewind point
    (``reset_optimizer=True``): AdamW's moments are reset (to its fresh state) and the schedule starts over, as IMP trains each
    round from theta_0. With ``every_n_epochs`` the Trainer's schedule spans the whole run, so each round
    replays its first ``N`` epochs; use ``lr_scheduler_type="constant"`` or a schedule that fits.

    Checkpoints: on every save the ticket file (:data:`TICKET_FILE`, dense encoding) and the resume state
    (:data:`STATE_FILE`) are written into the ``checkpoint-N/`` folder, and the ticket file into
    ``args.output_dir`` when training ends. ``trainer.train(resume_from_checkpoint=True)`` (or the path of a
    ``checkpoint-N`` folder in ``args.output_dir``) restores masks, round, history and rewind point, so the
    run continues as if uninterrupted. Resuming at a step with no ticket files raises ``RuntimeError``.

    If ``trainer.train()`` raises, the open round prunes and rewinds nothing (the trained weights stay); the
    Trainer tells callbacks nothing about the exception, so the round is closed (aborted, with a warning) when
    the next ``train()`` starts, or by ``callback.ticket.abort_round_()``.

    Args:
        every_n_epochs: end a round every this many epochs inside one ``train()`` call; ``None`` (default)
            ends one round per ``train()`` call.
        reset_optimizer: restore the optimizer and scheduler at each rewind (default ``True``); ``False``
            lets their state (AdamW's moments) carry over, which IMP does not do.
        **ticket_options: :class:`~torch_lottery.LotteryTicket` options (``rate``, ``sparsity``,
            ``rounds``, ``scope``, ``rewind``, ``targets``, ``backend``, ...); the model, optimizer and
            scheduler come from the Trainer.

    Raises:
        TypeError, ValueError: invalid options (before any Trainer or model is touched).

    Example:
        >>> from torch_lottery.integrations.transformers import LotteryTicketCallback
        >>> callback = LotteryTicketCallback(rate=0.2, rounds=3)
        >>> trainer = transformers.Trainer(model, args, train_dataset=data, callbacks=[callback])  # doctest: +SKIP
        >>> for _ in range(3):  # doctest: +SKIP
        ...     trainer.train()
        >>> callback.ticket.sparsity  # doctest: +SKIP
        0.488
    """

    def __init__(self, *, every_n_epochs: Optional[int] = None, reset_optimizer: bool = True, **ticket_options: Any) -> None:
        fn = "LotteryTicketCallback()"
        if every_n_epochs is not None and (
            isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1
        ):
            raise ValueError(f"{fn}: every_n_epochs={every_n_epochs!r} must be a positive int or None (one round per train() call)")
        if not isinstance(reset_optimizer, bool):
            raise TypeError(f"{fn}: reset_optimizer={reset_optimizer!r} must be a bool")
        _check_ticket_options(ticket_options, fn)
        self.every_n_epochs = every_n_epochs
        self.reset_optimizer = reset_optimizer
        self._options = dict(ticket_options)
        self._ticket: Optional[LotteryTicket] = None
        self._open = False  # a round of the ticket is open (begin_round_ ran, end_round_/abort_round_ not yet)

    @property
    def ticket(self) -> LotteryTicket:
        """The :class:`~torch_lottery.LotteryTicket` over the Trainer's model."""
        if self._ticket is None:
            raise RuntimeError(
                "LotteryTicketCallback.ticket: no model yet; pass the callback to transformers.Trainer(..., "
                "callbacks=[callback]) first"
            )
        return self._ticket

    def __repr__(self) -> str:
        return f"LotteryTicketCallback(every_n_epochs={self.every_n_epochs}, ticket={self._ticket!r})"

    # ------------------------------------------------------------------ Trainer events
    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._ensure_ticket(kwargs.get("model"))

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        ticket = self._ensure_ticket(kwargs.get("model"))
        if self._open:  # a previous train() raised: the Trainer never reached on_train_end
            self._open = False
            try:
                ticket.abort_round_("an exception in an earlier trainer.train() call")
            except RuntimeError:  # no round open: closed by hand (ticket.abort_round_()) since
                pass
        if state.global_step > 0:  # a resumed run: TrainerState came from a checkpoint
            self._restore(_checkpoint_folder(args, state), state, kwargs)
        elif self.reset_optimizer:
            ticket.attach(optimizer=_inner(kwargs.get("optimizer"), "optimizer"), scheduler=_inner(kwargs.get("lr_scheduler"), "scheduler"))
        if self.every_n_epochs is None and not ticket.done:
            self._begin_round()

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.every_n_epochs is not None and not self._open and not self.ticket.done:
            self._begin_round()

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        epochs = round(state.epoch or 0)
        whole = math.isclose(state.epoch or 0, epochs, abs_tol=1e-6)
        if self.every_n_epochs is not None and self._open and whole and epochs % self.every_n_epochs == 0:
            self._end_round(state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        ticket = self.ticket
        if self._open:
            if self.every_n_epochs is None:
                self._end_round(state)
            else:
                self._abort_round(f"the end of train() before {self.every_n_epochs} epochs of the round ran")
        if args.should_save:
            os.makedirs(args.output_dir, exist_ok=True)
            ticket.save(os.path.join(args.output_dir, TICKET_FILE))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not args.should_save:
            return
        folder = _checkpoint_folder(args, state)
        if not os.path.isdir(folder):
            raise RuntimeError(
                f"LotteryTicketCallback.on_save(): the Trainer's checkpoint folder {folder!r} does not exist, so the "
                "ticket cannot be saved beside it; hyperparameter-search runs are not supported"
            )
        self.save_checkpoint(folder, global_step=state.global_step)

    # ------------------------------------------------------------------ the work
    def save_checkpoint(self, folder: Union[str, os.PathLike], *, global_step: int) -> None:
        """Write :data:`TICKET_FILE` and :data:`STATE_FILE` into ``folder`` (what :meth:`on_save` does)."""
        ticket = self.ticket
        ticket_path = os.path.join(folder, TICKET_FILE)
        ticket.save(ticket_path, encoding="dense")  # dense: the rewind point exactly, pruned entries included
        state = ticket.state_dict()
        extra = {
            "format": _STATE_FORMAT,
            "version": 1,
            "global_step": int(global_step),
            "ticket_checksum": read_ticket_info(ticket_path)["checksum"],
            "optimizer_state": state.get("optimizer_state"),
            "scheduler_state": state.get("scheduler_state"),
        }
        with atomic_write(os.path.join(folder, STATE_FILE), fn="LotteryTicketCallback.save_checkpoint") as handle:
            torch.save(extra, handle)

    def _ensure_ticket(self, model: Optional[nn.Module]) -> LotteryTicket:
        if model is None:
            raise RuntimeError("LotteryTicketCallback: the Trainer passed no model; use it with transformers.Trainer")
        if self._ticket is None:
            self._ticket = LotteryTicket(model, **self._options)
        elif unwrap_model(model) is not self._ticket.model:
            raise RuntimeError(
                f"LotteryTicketCallback: the Trainer's model ({type(model).__name__}) is not the one the ticket prunes; "
                "model_init= re-creates the model and is not supported: pass model= to the Trainer, and one "
                "callback per model"
            )
        return self._ticket

    def _restore(self, folder: str, state: TrainerState, kwargs: dict[str, Any]) -> None:
        ticket = self.ticket
        try:
            saved = load_checkpoint_state(folder)
        except FileNotFoundError as exc:
            raise RuntimeError(
                f"LotteryTicketCallback: training resumes at global step {state.global_step}, but {folder!r} holds no "
                f"ticket ({exc}); resume with resume_from_checkpoint=True or the path of a checkpoint-N folder this "
                "callback wrote in args.output_dir, so the masks and IMP state come back with the weights"
            ) from None
        if saved["global_step"] != state.global_step:
            raise RuntimeError(
                f"LotteryTicketCallback: {folder!r} holds the ticket of global step {saved['global_step']}, but training "
                f"resumes at step {state.global_step}; resume from a checkpoint folder of this run"
            )
        if not saved["rewind_captured"]:
            raise RuntimeError(
                f"LotteryTicketCallback: the checkpoint at step {state.global_step} precedes the rewind step "
                f"rewind={ticket.rewind!r}, which resuming cannot count on; resume from a later checkpoint"
            )
        _check_belongs(ticket, saved["masks"], folder)
        if self.reset_optimizer:  # attached first: loading the state then sets the rewind point's optimizer state
            ticket.attach(optimizer=_inner(kwargs.get("optimizer"), "optimizer"), scheduler=_inner(kwargs.get("lr_scheduler"), "scheduler"))
        current = ticket.masks
        regrows = any(bool((saved["masks"][f].to(m.device) & ~m).any()) for f, m in current.items() if f in saved["masks"])
        ticket.load_state_dict(saved)  # the model holds the checkpoint's weights already: masks go over them
        if regrows:  # an older checkpoint than the masks in force: baked backends zeroed its values at load
            unwrap_model(kwargs["model"]).load_state_dict(_saved_tensors(folder, "LotteryTicketCallback"), strict=False)
        logger.info("restored ticket from %s (round %d, sparsity %.4f)", folder, ticket.round, ticket.sparsity)

    def _begin_round(self) -> None:
        self.ticket.begin_round_()
        self._open = True

    def _abort_round(self, reason: str) -> None:
        self._open = False
        self.ticket.abort_round_(reason)

    def _end_round(self, state: TrainerState) -> None:
        ticket = self.ticket
        self._open = False  # end_round_ closes the round even when pruning fails (the trained weights are kept)
        ticket.end_round_()
        record = ticket.history[-1]
        state.log_history.append({
            "lottery_round": ticket.round,
            "lottery_sparsity": record["sparsity"],
            "lottery_remaining": record["remaining"],
            "lottery_total": record["total"],
            "epoch": state.epoch,
            "step": state.global_step,
        })


def _check_belongs(ticket: LotteryTicket, masks: dict[str, Tensor], folder: str) -> None:
    """The weights the Trainer just loaded must be zero wherever the checkpoint's ticket prunes."""
    values = effective_state_dict(ticket.model, fn="LotteryTicketCallback")
    for fqn, mask in masks.items():
        value = values[fqn]
        if bool((value[~mask.to(value.device)] != 0).any()):
            raise RuntimeError(
                f"LotteryTicketCallback: the checkpoint's weights are nonzero where the ticket in {folder!r} prunes "
                f"{fqn!r}: that ticket belongs to another run; resume from a checkpoint folder of this run in "
                "args.output_dir"
            )


def save_pretrained(ticket_or_model: Union[LotteryTicket, nn.Module], folder: Union[str, os.PathLike], **kwargs: Any) -> None:
    """Write a ``save_pretrained`` folder of a pruned model, with the ticket file beside it.

    The model's own ``save_pretrained(folder, **kwargs)`` writes the folder: plain key names (never
    ``*_orig``/``*_mask``) with exact zeros at pruned entries, whatever the mask backend, so
    ``Model.from_pretrained(folder)`` gives the pruned model's outputs. Then every tensor written is read
    back and compared with the pruned model's values, bitwise. Given a ticket, its file (masks, rewind
    point, settings, history; :data:`TICKET_FILE`) is written into the folder too:
    ``torch_lottery.load_ticket(folder / TICKET_FILE, Model.from_pretrained(folder))`` continues IMP.

    Args:
        ticket_or_model: a :class:`~torch_lottery.LotteryTicket` over a transformers model, or the model.
        folder: the output folder (created if missing).
        **kwargs: passed to the model's ``save_pretrained`` (``max_shard_size``, ...); the check reads the
            local folder after the model's ``save_pretrained`` returns.

    Raises:
        TypeError: not a ticket or module, a model without ``save_pretrained``, a bad ``folder``.
        ValueError: ``folder`` is a file; tied weights masked differently (nothing is written then).
        RuntimeError: the written weights differ from the pruned model's (a pruned entry not zero).

    Example:
        >>> save_pretrained(callback.ticket, "pruned-bert")  # doctest: +SKIP
        >>> transformers.BertForSequenceClassification.from_pretrained("pruned-bert")  # doctest: +SKIP
    """
    fn = "save_pretrained()"
    ticket = ticket_or_model if isinstance(ticket_or_model, LotteryTicket) else None
    if ticket is None and not isinstance(ticket_or_model, nn.Module):
        raise TypeError(f"{fn}: ticket_or_model={type(ticket_or_model).__name__!r} is neither a LotteryTicket nor an nn.Module")
    model = ticket.model if ticket is not None else unwrap_model(ticket_or_model)  # type: ignore[arg-type]
    if not callable(getattr(model, "save_pretrained", None)):
        raise TypeError(
            f"{fn}: ticket_or_model={type(model).__name__!r} has no save_pretrained(); it is not a transformers model: "
            "write it with torch_lottery.export_plain()"
        )
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"{fn}: folder={folder!r} is not a path; pass a folder name")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{fn}: folder={os.fspath(folder)!r} is a file; pass a folder")
    if ticket is not None and ticket.removed:
        raise RuntimeError(f"{fn}: ticket.remove_() made the pruning permanent; pass the model (its zeros are kept) instead of the ticket")
    expected = effective_state_dict(model, fn=fn)  # raises on tied weights masked differently, before writing
    model.save_pretrained(folder, **kwargs)
    _verify_saved(folder, expected, [t.fqn for t in ticket.targets] if ticket is not None else [], fn)
    if ticket is not None:
        ticket.save(os.path.join(folder, TICKET_FILE))
    logger.info("saved pruned %s to %s", type(model).__name__, os.fspath(folder))


def _weight_files(folder: Union[str, os.PathLike], fn: str) -> list[str]:
    """The safetensors files of a ``save_pretrained`` folder (one file, or the shards its index names)."""
    import json

    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

    index = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            files = sorted(set(json.load(handle)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME)):
        files = [SAFE_WEIGHTS_NAME]
    else:
        raise RuntimeError(f"{fn}: {os.fspath(folder)!r} holds no {SAFE_WEIGHTS_NAME}; cannot read the model's weights")
    return [os.path.join(folder, name) for name in files]


def _saved_tensors(folder: Union[str, os.PathLike], fn: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    out: dict[str, Tensor] = {}
    for path in _weight_files(folder, fn):
        out.update(load_file(path))
    return out


def _verify_saved(folder: Union[str, os.PathLike], expected: dict[str, Tensor], targets: list[str], fn: str) -> None:
    """Every saved tensor equals the pruned model's value; every target is saved (itself or a tied alias)."""
    from safetensors import safe_open

    saved: set[str] = set()
    for path in _weight_files(folder, fn):
        with safe_open(path, framework="pt") as handle:  # one tensor in memory at a time
            for key in handle.keys():
                saved.add(key)
                want = expected.get(key)
                if want is not None and not torch.equal(handle.get_tensor(key), want.detach().cpu()):
                    raise RuntimeError(
                        f"{fn}: {key!r} in {os.fspath(folder)!r} differs from the pruned model's value (pruned entries "
                        "not zero?); the folder does not hold the ticket: do not use it"
                    )
    ids = {id(v): k for k, v in expected.items() if k in saved}
    missing = [f for f in targets if f not in saved and id(expected.get(f)) not in ids]
    if missing:
        raise RuntimeError(
            f"{fn}: save_pretrained wrote no tensor for the pruned {missing[:3]!r} into {os.fspath(folder)!r}; "
            "the folder does not hold the ticket"
        )

