"""The LotteryTicket engine: orchestrates rounds (snapshot on entry, prune and rewind on exit) over settings, schedule, rewind point and backend."""

from __future__ import annotations

import copy
import functools
import logging
import os
import sys
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

import torch
from torch import Tensor, nn

from .backends import MaskBackend, make_backend
from .controls import fresh_init
from .rewind import RewindPoint, check_optimizer, check_scheduler, check_fits, write_tensors_
from .installing import Undo, check_no_regrowth, deferred_interrupts, install_masks_, mask_state, restore_masks_
from .pruning import broadcast_masks, next_masks, score_weights
from .schedule import per_round_rate
from .scoring import Criterion, get_criterion
from .settings import SETTINGS_KEYS, TicketSettings, check_saved_state
from .snapshot import DiskStore, make_store
from .summary import format_table, mask_rows, round_record, totals, unmasked_zeros
from .targets import Target, TargetSelector, check_masks, find_targets, named_state_tensors, unwrap_model

__all__ = ["LotteryTicket", "per_round_rate"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_SET_MASK_MODES = ("replace", "intersect")


def _check_snapshot_dir(device: str, snapshot_dir: object) -> None:
    if snapshot_dir is None:
        return
    if not isinstance(snapshot_dir, (str, os.PathLike)):
        raise TypeError(f"LotteryTicket(): snapshot_dir={snapshot_dir!r} is not a path; pass a folder name")
    if device != "disk":
        raise ValueError(
            f"LotteryTicket(): snapshot_dir={os.fspath(snapshot_dir)!r} is only used with snapshot_device='disk'; "
            "pass snapshot_device='disk' or drop snapshot_dir"
        )
    if os.path.exists(snapshot_dir) and not os.path.isdir(snapshot_dir):
        raise ValueError(f"LotteryTicket(): snapshot_dir={os.fspath(snapshot_dir)!r} is a file; pass a folder")


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this package."""
    package, frame, level = os.path.dirname(os.path.abspath(__file__)), sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _sharding_mesh(model: nn.Module, targets: Sequence[Target], structured: bool) -> Any:
    """The device mesh of FSDP2-sharded targets, or ``None``; refuses layouts a ticket cannot rank."""
    from .distributed import sharding_mesh

    params = dict(model.named_parameters())
    mesh = sharding_mesh({t.fqn: params[t.fqn] for t in targets if t.fqn in params})
    if mesh is not None and structured:
        raise ValueError(
            "LotteryTicket(): granularity='channel' on an FSDP2-sharded model is not supported (channel "
            "tracing needs the full model); use granularity='weight'"
        )
    return mesh


def _sharded_masks(ticket: "LotteryTicket", weights: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """:meth:`LotteryTicket.compute_masks` of an FSDP2-sharded ticket (a collective call)."""
    from .distributed import sharded_next_masks

    generator = torch.Generator().manual_seed(ticket.seed * 1_000_003 + ticket.round)
    return sharded_next_masks(
        weights, masks, ticket.rewind_weights, ticket._criterion, ticket.settings, done=ticket.round,
        name=ticket.settings.criterion, generator=generator,
    )


class LotteryTicket:
    """Find a lottery ticket inside your own training loop.

    Each ``with ticket:`` block is one round of iterative magnitude pruning (IMP). On the first
    entry the ticket snapshots the model (theta_0, on the CPU by default). You train inside the
    block with any loop and optimizer. On a clean exit it scores the surviving weights (by their
    current effective values), prunes ``rate`` of them (globally or per tensor), installs the masks
    through the mask backend (``torch.nn.utils.prune``'s ``<name>_orig`` + ``<name>_mask`` by
    default) and rewinds the survivors. If the block raises, nothing is pruned or rewound and the
    trained weights are kept. The block delegates to :meth:`begin_round_`, :meth:`end_round_` and
    :meth:`abort_round_`, which callbacks of other training frameworks can call directly.

    Args:
        model: any ``nn.Module`` (DataParallel/DDP wrappers are looked through); not modified
            here (masks installed earlier are read as they are; see :meth:`adopt_masks_`).
        sparsity: final fraction of the target weights pruned after ``rounds`` rounds (default 1).
        rate: fraction of the *surviving* target weights pruned each round (torch's ``amount``);
            give ``sparsity`` or ``rate``. With ``rate`` and no ``rounds`` there is no limit.
        rounds: the number of rounds.
        scope: ``"global"`` ranks all targets together; ``"layer"`` prunes each at its own rate.
        rewind: ``"init"`` (theta_0), an int ``k`` (late rewinding to the weights after the k-th
            optimizer step of the first round, or :meth:`mark_rewind_point`), ``"none"``
            (fine-tuning; learning-rate rewinding with a ``scheduler``) or ``"reinit"`` (seeded
            fresh values from each layer's initializer: the random re-initialization control).
        targets: ``None`` for the paper's default (Linear, ConvNd, ConvTranspose, attention
            projections and other >=2-D leaf weights; never biases, norms, embeddings or RNNs),
            glob patterns over FQNs, or a callable ``(fqn, module, parameter) -> bool``.
        exclude: glob patterns of FQNs to leave out.
        layer_rates, layer_sparsity: per-tensor overrides ``{fqn or glob: fraction}`` of the
            per-round rate or the final sparsity; each overridden tensor is ranked on its own.
        criterion: ``"magnitude"``, ``"random"``, ``"magnitude_increase"``, ``"movement"`` or a
            callable, see :mod:`torch_lottery.scoring`.
        restore: what a rewind restores besides the pruned weights: ``"all"`` (parameters and
            buffers, BatchNorm statistics included), ``"params"`` or ``"targets"``.
        optimizer, scheduler: optional; restored to the rewind point on every rewind (the
            optimizer also counts steps for ``rewind=k``); attachable later (:meth:`attach`).
            Without an optimizer, momenta carry over a rewind: create a new one.
        seed: seed of ``"random"`` scores and ``"reinit"``, in ``[0, 2**43)``.
        snapshot_device: a torch device (``"cpu"``), or ``"disk"``: a safetensors file in
            ``snapshot_dir`` (a temporary folder by default), read memory-mapped.
        snapshot_dir: the folder of the disk snapshot.
        backend: mask backend name (:data:`torch_lottery.BACKENDS`), ``"prune"`` by default.
        granularity: ``"weight"`` (default) prunes single weights; ``"channel"`` whole channels
            (conv filters, Linear neurons) with everything coupled to them, so :meth:`compact`
            builds a smaller dense model (needs torch-pruning; docs/structured.md). Rates,
            sparsities and overrides then count channels, keyed by channel-group name.
        example_inputs: with ``"channel"``, one batch the model accepts (a tensor, a tuple or a
            dict of tensors), traced once on a copy to find the coupled channels.
        importance: with ``"channel"``, how channels are ranked: ``"l1"`` (default), ``"l2"``, a
            callable ``(group, tensors) -> scores`` or a torch_pruning importance.
        Settings are validated and kept as a frozen :class:`~torch_lottery.settings.TicketSettings`.

    Raises:
        TypeError, ValueError: for invalid arguments; the model is not touched.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_lottery import LotteryTicket
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> ticket = LotteryTicket(model, rate=0.5, rounds=2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> for _ in range(2):
        ...     with ticket:
        ...         for _ in range(5):
        ...             opt.zero_grad()
        ...             model(torch.randn(4, 8)).pow(2).mean().backward()
        ...             opt.step()
        >>> round(ticket.sparsity, 2)
        0.75
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: Optional[float] = None,
        rate: Optional[float] = None,
        rounds: Optional[int] = None,
        scope: str = "global",
        rewind: Union[str, int] = "init",
        targets: TargetSelector = None,
        exclude: Optional[Sequence[str]] = (),
        layer_rates: Optional[Mapping[str, float]] = None,
        layer_sparsity: Optional[Mapping[str, float]] = None,
        criterion: Union[str, Criterion] = "magnitude",
        restore: str = "all",
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Optional[Any] = None,
        seed: int = 0,
        snapshot_device: Union[str, torch.device] = "cpu",
        snapshot_dir: Optional[Union[str, os.PathLike]] = None,
        backend: str = "prune",
        granularity: str = "weight",
        example_inputs: Any = None,
        importance: Any = "l1",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"LotteryTicket(): model={type(model).__name__!r} is not an nn.Module; pass the model itself")
        self._criterion = get_criterion(criterion)
        name = criterion if isinstance(criterion, str) else getattr(criterion, "__qualname__", repr(criterion))
        settings = TicketSettings(
            sparsity=sparsity, rate=rate, rounds=rounds, scope=scope, rewind=rewind, layer_rates=layer_rates,
            layer_sparsity=layer_sparsity, criterion=name, restore=restore, seed=seed,
            snapshot_device=snapshot_device, backend=backend, granularity=granularity,  # type: ignore[arg-type]
            importance=importance if isinstance(importance, str)
            else getattr(importance, "__qualname__", None) or type(importance).__qualname__,
        )
        _check_snapshot_dir(settings.snapshot_device, snapshot_dir)
        optimizer = check_optimizer(optimizer, "LotteryTicket()")
        scheduler = check_scheduler(scheduler, "LotteryTicket()")
        self._model = unwrap_model(model)
        exclude = () if exclude is None else exclude
        self._channels = None  # the channel plan of a structured ticket (granularity="channel")
        if settings.granularity == "channel":
            from .structured import plan_for_ticket

            self._channels = plan_for_ticket(self._model, example_inputs, criterion=name, targets=targets, exclude=exclude, importance=importance)
            targets, exclude = self._channels.targets, ()
        elif example_inputs is not None:
            raise ValueError("LotteryTicket(): example_inputs is only used with granularity='channel'; drop it or pass granularity='channel'")
        self._targets: list[Target] = find_targets(self._model, targets, exclude)
        names = self._channels.group_names if self._channels is not None else [t.fqn for t in self._targets]
        self._settings = settings.resolve(names)
        self._backend: MaskBackend = make_backend(settings.backend, self._model)
        self._mesh = _sharding_mesh(self._model, self._targets, self._channels is not None)  # FSDP2: DTensor targets
        for t in self._targets:  # read-only: a backend refuses targets it cannot mask (prune hooks under "baked")
            self._backend.is_masked(t)
        k = settings.rewind if isinstance(settings.rewind, int) else 0
        self._point = RewindPoint(make_store(settings.snapshot_device, snapshot_dir), step=k, optimizer=optimizer, scheduler=scheduler)
        if optimizer is not None and not self._owns(optimizer):
            raise ValueError(f"LotteryTicket(): optimizer={type(optimizer).__name__} updates none of the model's parameters; pass the optimizer of this model")
        self._round = 0
        self._history: list[dict[str, Any]] = []
        self._active = False
        self._removed = False
        self._pinned: Optional[dict[str, Tensor]] = None

    # ------------------------------------------------------------------ read-only views
    model = property(lambda self: self._model, doc="The model being pruned (wrappers looked through).")
    settings = property(lambda self: self._settings, doc="The validated :class:`TicketSettings`.")
    sparsity_goal = property(lambda self: self._settings.sparsity, doc="The final sparsity asked for, or ``None``.")
    rate = property(lambda self: self._settings.rate, doc="The per-round rate, or ``None``.")
    rounds = property(lambda self: self._settings.rounds, doc="The number of rounds, or ``None`` (no limit).")
    scope = property(lambda self: self._settings.scope, doc="``'global'`` or ``'layer'``.")
    rewind = property(lambda self: self._settings.rewind, doc="The rewind mode or step ``k``.")
    restore = property(lambda self: self._settings.restore, doc="What a rewind restores.")
    seed = property(lambda self: self._settings.seed, doc="The seed of random scores and re-initialization.")
    round = property(lambda self: self._round, doc="How many rounds have been applied.")
    backend = property(lambda self: self._backend, doc="The mask backend in use.")
    device_mesh = property(lambda self: self._mesh, doc="The DeviceMesh of an FSDP2-sharded model's targets, else ``None``.")

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per applied round (a copy): round, sparsity, remaining, total, per-tensor counts."""
        return copy.deepcopy(self._history)

    @property
    def snapshot_device(self) -> Union[str, torch.device]:
        """``"disk"`` or the torch device snapshots live on."""
        device = self._settings.snapshot_device
        return device if device == "disk" else torch.device(device)

    @property
    def snapshot_dir(self) -> Optional[os.PathLike]:
        """The folder of the disk snapshot (``None`` for memory snapshots, or before the first one)."""
        store = self._point.store
        return store.folder if isinstance(store, DiskStore) else None

    @property
    def optimizer(self) -> Optional[torch.optim.Optimizer]:
        """The attached optimizer; assignable after construction (frameworks create it late), see :meth:`attach`."""
        return self._point.optimizer

    @optimizer.setter
    def optimizer(self, optimizer: Optional[torch.optim.Optimizer]) -> None:
        self.attach(optimizer=optimizer, scheduler=self.scheduler)

    @property
    def scheduler(self) -> Any:
        """The attached LR scheduler; assignable like :attr:`optimizer`."""
        return self._point.scheduler

    @scheduler.setter
    def scheduler(self, scheduler: Any) -> None:
        self.attach(optimizer=self.optimizer, scheduler=scheduler)

    def attach(self, *, optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None) -> None:
        """Attach (or replace, or with ``None`` detach) the optimizer and scheduler.

        Once theta_0 is taken, a newly attached optimizer's current state becomes the state
        restored at each rewind (a fresh optimizer is reset on every rewind).

        Raises:
            TypeError: not an optimizer / scheduler. ValueError: the optimizer updates none of
                the model's parameters. RuntimeError: while a block waits to capture theta_k.
        """
        fn = "LotteryTicket.attach()"
        optimizer, scheduler = check_optimizer(optimizer, fn), check_scheduler(scheduler, fn)
        if optimizer is not None and not self._owns(optimizer):
            raise ValueError(f"{fn}: optimizer={type(optimizer).__name__} updates none of the model's parameters; pass the optimizer of ticket.model")
        if self._active and not self._point.captured:
            raise RuntimeError(f"{fn}: the block is counting steps for rewind={self.rewind!r}; attach before entering it")
        self._point.attach(optimizer, scheduler)

    @property
    def targets(self) -> list[Target]:
        """The pruned tensors, in model order."""
        return list(self._targets)

    @property
    def target_fqns(self) -> list[str]:
        """Canonical FQNs of the pruned tensors, in model order."""
        return [t.fqn for t in self._targets]

    @property
    def masks(self) -> dict[str, Tensor]:
        """FQN -> bool mask now in force (all ``True`` before the first prune)."""
        return {t.fqn: self._backend.mask(t) for t in self._targets}

    @property
    def sparsity(self) -> float:
        """Fraction of the target weights pruned, over all targets (``0.0`` if they hold no elements)."""
        return totals(mask_rows(self.masks))[2]

    @property
    def rewind_weights(self) -> dict[str, Tensor]:
        """The snapshot a rewind restores (theta_0 or theta_k), FQN -> tensor; empty before entry."""
        return dict(self._point.tensors or {})

    @property
    def removed(self) -> bool:
        """Whether :meth:`remove_` made the pruning permanent (the ticket prunes no more)."""
        return self._removed

    @property
    def pinned_masks(self) -> Optional[dict[str, Tensor]]:
        """The masks :meth:`pin_masks_` fixed for the next prune, or ``None``."""
        return None if self._pinned is None else dict(self._pinned)

    @property
    def done(self) -> bool:
        """Whether all ``rounds`` have been run."""
        return self.rounds is not None and self._round >= self.rounds

    def summary(self) -> list[dict[str, Any]]:
        """One row per target: ``fqn``, ``shape``, ``numel``, ``remaining``, ``sparsity``."""
        return mask_rows(self.masks)

    def summary_table(self) -> str:
        """:meth:`summary` as a fixed-width text table with a total line."""
        return format_table(self.summary())

    def config(self) -> dict[str, Any]:
        """The settings as JSON-able data (what :meth:`from_config` rebuilds a ticket from)."""
        data = self._settings.to_dict()
        data["targets"] = self.target_fqns
        return {k: data[k] for k in SETTINGS_KEYS}

    @classmethod
    def from_config(cls, model: nn.Module, config: Mapping[str, Any], **overrides: Any) -> "LotteryTicket":
        """Build a ticket for ``model`` with the settings of :meth:`config`; ``overrides`` win."""
        kwargs = {k: v for k, v in config.items() if k in SETTINGS_KEYS}
        kwargs.update(overrides)
        return cls(model, **kwargs)

    def __repr__(self) -> str:
        goal = f"sparsity={self.sparsity_goal}" if self.rate is None else f"rate={self.rate}"
        return (
            f"LotteryTicket({type(self._model).__name__}, {goal}, rounds={self.rounds}, scope={self.scope!r}, "
            f"rewind={self.rewind!r}, round={self._round}, targets={len(self._targets)}, "
            f"sparsity={self.sparsity:.4f})"
        )

    # ------------------------------------------------------------------ the round
    def begin_round_(self, *, steps: int = 0) -> None:
        """Open a round: take theta_0 on the first one, start counting steps for ``rewind=k``.

        Args:
            steps: optimizer steps this round already ran before a checkpoint it is resumed from
                (``state_dict()["steps"]``); they count toward ``k``. ``0`` for a new round.
        """
        if self._active:
            raise RuntimeError("LotteryTicket.begin_round_(): this ticket's round is already open; rounds do not nest")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"LotteryTicket.begin_round_(): steps={steps!r} is not a step count; pass an int >= 0")
        self._check_can_prune("begin_round_")
        if not self._point.taken:
            self._warn_unmasked_zeros()
            self.snapshot_()
        with deferred_interrupts():  # hooks and the open flag go together
            try:
                if not self._point.captured:
                    self._point.start_counting(self._live, self._owns, steps=steps)
                self._active = True
            except BaseException:
                self._point.stop_counting()
                raise

    def _warn_unmasked_zeros(self) -> None:
        """Loudly: targets that look pruned (many exact zeros) but carry no mask would regrow in training."""
        masks = self.masks
        found = unmasked_zeros({t.fqn: self._backend.weight(t) for t in self._targets}, masks)
        if found:
            shown = ", ".join(f"{k} ({v:.0%})" for k, v in list(found.items())[:3])
            warnings.warn(
                f"LotteryTicket: {len(found)} target(s) hold many exact zeros but no mask: {shown}"
                f"{' ...' if len(found) > 3 else ''}. Was the model loaded from the plain checkpoint of a pruned "
                "model? Without its ticket those weights regrow in training. Restore the ticket first "
                "(load_ticket(path, model), or ticket.load_state_dict(saved_ticket_state)), or keep the zeros "
                "pruned with ticket.set_masks_({fqn: weight != 0}, rewind=False)",
                UserWarning, stacklevel=_caller_level(),
            )

    def abort_round_(self, reason: str = "abort_round_()") -> None:
        """Close the open round without pruning or rewinding: the trained weights are kept."""
        self._close_round("abort_round_")
        logger.warning("round %d interrupted by %s: nothing pruned or rewound, trained weights kept", self._round + 1, reason)

    def end_round_(self) -> dict[str, Tensor]:
        """Close the open round: prune, rewind and count it, all or nothing. Returns the new masks."""
        self._close_round("end_round_")
        point = self._point
        if point.scheduler_pending:
            point.capture_scheduler()
        if not point.captured:
            raise RuntimeError(
                f"LotteryTicket.end_round_(): rewind={self.rewind!r} but only {point.steps} optimizer steps ran "
                "in this block; train for at least that many steps, call mark_rewind_point(), or use "
                "rewind='init'. Nothing was pruned; the trained weights are kept."
            )
        return self._apply_round()

    def _close_round(self, where: str) -> None:
        if not self._active:
            raise RuntimeError(f"LotteryTicket.{where}(): no round is open; call begin_round_() (or enter the block) first")
        with deferred_interrupts():
            try:
                self._point.stop_counting()
            finally:
                self._active = False

    def __enter__(self) -> "LotteryTicket":
        self.begin_round_()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None:
            self.abort_round_(exc_type.__name__)
        else:
            self.end_round_()
        return False

    def __call__(self, fn: F) -> F:
        """Use the ticket as a decorator: every call of ``fn`` runs as one round."""
        if isinstance(fn, nn.Module) or (isinstance(fn, type) and issubclass(fn, nn.Module)):
            what = fn.__name__ if isinstance(fn, type) else type(fn).__name__
            raise TypeError(
                f"LotteryTicket.__call__(): fn={what!r} is a module{' class' if isinstance(fn, type) else ''}, not a "
                "training function; use `with ticket:` around training, build a ticket over the model with "
                "LotteryTicket(model, ...), or give the model its own with torch_lottery.lottery_ticket(model, ...)"
                " (@lottery_ticket(...) on a module class)"
            )

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        wrapper.ticket = self  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def _check_can_prune(self, where: str) -> None:
        if self._removed:
            raise RuntimeError(
                f"LotteryTicket.{where}(): remove_() made the pruning permanent; build a new ticket to prune further"
            )
        if self.done:
            raise RuntimeError(
                f"LotteryTicket.{where}(): all rounds={self.rounds} are done (sparsity {self.sparsity:.4f}); "
                "build a ticket with more rounds, or use rate= without rounds to keep going"
            )

    def _apply_round(self) -> dict[str, Tensor]:
        new = self._next_masks("end_round_")
        self._transact_(new, count=True, rewind=True)
        self._pinned = None
        self._log_round()
        return new

    def _transact_(
        self, masks: Mapping[str, Tensor], *, count: bool, rewind: bool, point_state: Any = None,
        new_round: Optional[tuple[int, list[dict[str, Any]]]] = None,
    ) -> None:
        """Install ``masks``, then optionally load a rewind point, count a round and rewind: all or nothing.

        Ctrl-C is deferred until the step is whole; any exception inside it (from the backend,
        the rewind, a damaged state) puts back the masks, the trained weights, the optimizer's
        and scheduler's state, the rewind point, the round and the history.
        """
        point, round_, history = self._point, self._round, list(self._history)
        saved_point = point.fields()
        trained = self._trained_copy() if rewind and (self.rewind != "none" or point_state is not None) else None
        states = point.current_states() if rewind else None
        previous = mask_state(self._backend, self._targets)
        with deferred_interrupts():
            try:
                install_masks_(self._backend, self._targets, masks, commit=False)
                if point_state is not None:
                    point.load_state_dict(point_state)
                if new_round is not None:
                    self._round, self._history = new_round
                if count:
                    self._round += 1
                    self._history.append(round_record(self._round, masks))
                if rewind:
                    # computed with the new masks in place: a re-initialization draws in the module's current order
                    self._write_rewind(self._rewind_values(self._round))
                self._backend.commit_()
            except BaseException:
                point.set_fields(saved_point)
                if states is not None:
                    point.restore_states(states)
                restore_masks_(self._backend, previous)
                if trained is not None:
                    live = self.live_tensors()
                    with torch.no_grad():
                        for key, value in trained.items():
                            live[key].copy_(value)
                    self.refresh_()
                self._round, self._history = round_, history
                raise

    def _trained_copy(self) -> dict[str, Tensor]:
        """The values a rewind overwrites, copied where snapshots live (a temporary file for ``"disk"``)."""
        return make_store(self._settings.snapshot_device).put(self._live())

    def _log_round(self) -> None:
        record = self._history[-1]
        logger.info(
            "round %d: sparsity %.4f (%d of %d target weights remain)",
            self._round, record["sparsity"], record["remaining"], record["total"],
        )

    # ------------------------------------------------------------------ pruning
    def compute_masks(self) -> dict[str, Tensor]:
        """The masks the next round would install, computed from the current weights. Pure.

        Raises:
            ValueError: a target holds NaN or infinite weights, or the criterion returns scores
                of the wrong shape or with NaN.
        """
        masks = self.masks
        weights = {t.fqn: self._backend.weight(t) for t in self._targets}
        if self._mesh is not None:  # FSDP2: every rank scores and selects its own shards
            return _sharded_masks(self, weights, masks)
        if self._channels is not None:  # structured: the channel plan chooses whole channels
            values = {**self.live_tensors(), **weights}
            return broadcast_masks(self._channels.next_masks(values, masks, self._settings, done=self._round))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._round)
        scores = score_weights(
            weights, masks, self._point.tensors or {}, self._criterion, name=self._settings.criterion, generator=generator
        )
        return broadcast_masks(next_masks(scores, masks, self._settings, done=self._round))

    @property
    def channel_plan(self) -> Any:
        """The :class:`~torch_lottery.structured.ChannelPlan` of a ``granularity="channel"`` ticket, else ``None``."""
        return self._channels

    def compact(self, *, weights: Union[str, Mapping[str, Tensor]] = "current", verify: bool = True) -> nn.Module:
        """A physically smaller dense model without this structured ticket's pruned channels.

        See :func:`torch_lottery.structured.compact_ticket`: ``weights`` is ``"current"`` (the
        model's weights now: the rewound theta_0 after a round), ``"rewind"`` (the rewind
        point) or FQN -> tensors. Torch-Pruning makes new Parameters: train it with a new optimizer.
        """
        from .structured import compact_ticket

        return compact_ticket(self, weights=weights, verify=verify)

    def prune_(self) -> dict[str, Tensor]:
        """Run the pruning half of a round now: compute masks from the current weights and install them.

        The round counter advances and the history gets a record. Nothing is rewound (see
        :meth:`rewind_`). If anything fails, the model keeps its previous masks and weights.

        Returns:
            The new masks, FQN -> bool tensor.
        """
        self._check_can_prune("prune_")
        new = self._next_masks("prune_")
        self._transact_(new, count=True, rewind=False)
        self._pinned = None
        self._log_round()
        return new

    def pin_masks_(self, masks: Optional[Mapping[str, Tensor]]) -> None:
        """Make the next prune (:meth:`end_round_`, leaving the block, or :meth:`prune_`) install exactly ``masks``.

        The pruning half of the next round then skips :meth:`compute_masks` and installs these
        masks as given, so a mask decided earlier in the round (an early-bird ticket, see
        :class:`torch_lottery.EarlyBird`) is the one pruned, not one recomputed from the weights
        at the end of training. The pin is used once; ``pin_masks_(None)`` drops it. An aborted
        round keeps it. It is not part of :meth:`state_dict`. Nothing in the model changes until
        the prune.

        Args:
            masks: FQN -> bool tensor for every target, each a subset of the mask now in force
                (pruning never regrows), or ``None`` to drop the pin.

        Raises:
            ValueError: missing or unknown FQNs, wrong shapes, or entries that are pruned now
                but kept in ``masks``; TypeError: non-bool masks. The pin is left as it was.
            RuntimeError: the rounds are done, or :meth:`remove_` was called.
        """
        if masks is None:
            self._pinned = None
            return
        self._check_can_prune("pin_masks_")
        pinned = {k: m.detach().clone() for k, m in check_masks(masks, self._targets, "LotteryTicket.pin_masks_()").items()}
        check_no_regrowth(self._backend, self._targets, pinned, "LotteryTicket.pin_masks_()")
        self._pinned = pinned

    def _next_masks(self, where: str) -> dict[str, Tensor]:
        """The pinned masks (checked again: the masks in force may have changed) or :meth:`compute_masks`."""
        if self._pinned is None:
            return self.compute_masks()
        check_no_regrowth(self._backend, self._targets, self._pinned, f"LotteryTicket.{where}()")
        return dict(self._pinned)

    def _install_masks_(self, masks: Mapping[str, Tensor]) -> Undo:
        return install_masks_(self._backend, self._targets, masks)

    def set_masks_(self, masks: Mapping[str, Tensor], *, rewind: bool = True, mode: str = "replace") -> None:
        """Install the given masks (a random-mask control, or masks from elsewhere), then rewind.

        Args:
            masks: FQN -> bool tensor for every target (see :attr:`target_fqns`).
            rewind: also run :meth:`rewind_`. If no snapshot was taken yet, the model's current
                weights become theta_0 first (so on a fresh model this is "masks on its init").
            mode: ``"replace"`` installs ``masks`` as given, so entries pruned before may come
                back (this is how a control swaps in different masks); ``"intersect"`` keeps
                only entries alive in both the current and the given masks, like
                ``torch.nn.utils.prune.custom_from_mask``: nothing regrows.

        Raises:
            ValueError: missing or unknown FQNs, wrong shapes, unknown ``mode``; TypeError:
                non-bool masks. The model is left unchanged.
        """
        fn = "LotteryTicket.set_masks_()"
        if self._removed:
            raise RuntimeError(f"{fn}: remove_() made the pruning permanent; build a new ticket")
        if mode not in _SET_MASK_MODES:
            raise ValueError(f"{fn}: mode={mode!r} is not one of {list(_SET_MASK_MODES)}")
        masks = check_masks(masks, self._targets, fn)
        if mode == "intersect":
            current = self.masks
            masks = {f: current[f] & masks[f].to(current[f].device) for f in current}
        if rewind and not self._point.taken:
            self.snapshot_()  # nothing entered yet: the current weights are theta_0
        self._transact_(masks, count=False, rewind=rewind)

    def adopt_masks_(self) -> list[str]:
        """Hand masks already installed in the model (pruned by hand with ``torch.nn.utils.prune``,
        or by an earlier ticket) to this ticket's backend, so it keeps them in force. Returns their FQNs."""
        adopted = [t for t in self._targets if self._backend.is_masked(t)]
        try:
            for t in adopted:  # re-applying a mask over itself changes no value
                self._backend.apply_(t, self._backend.mask(t))
        finally:
            self._backend.commit_()
        return [t.fqn for t in adopted]

    # ------------------------------------------------------------------ snapshots and rewinding
    def live_tensors(self, *, buffers: bool = True) -> dict[str, Tensor]:
        """The model's parameters (and buffers) by canonical FQN, live, not copies.

        Each pruning target appears under its own FQN as the Parameter the optimizer updates
        (whatever the backend stores it as), so keys match :attr:`masks` and the snapshot.
        """
        live = named_state_tensors(self._model, buffers=buffers)
        for t in self._targets:
            live[t.fqn] = self._backend.parameter(t)
        return live

    def _live(self) -> dict[str, Tensor]:
        live = self.live_tensors(buffers=self.restore == "all")
        keys = self.target_fqns if self.restore == "targets" else list(live)
        return {k: live[k].detach() for k in keys}

    def snapshot_(self) -> None:
        """Take the theta_0 snapshot now (entering the first block does this if it was not done)."""
        self._point.take_(self._live())

    def mark_rewind_point(self) -> None:
        """Make the current state the rewind point (theta_k): weights, optimizer and scheduler."""
        self.snapshot_()
        self._point.mark_captured()
        logger.info("rewind point captured after %d optimizer steps", self._point.steps)

    def _rewind_values(self, round_index: int) -> Optional[dict[str, Tensor]]:
        """What a rewind after round ``round_index`` writes, FQN -> tensor, checked against the model."""
        if self.rewind == "none":
            return None
        if self._point.tensors is None:
            raise RuntimeError(
                "LotteryTicket.rewind_(): no snapshot yet; enter a `with ticket:` block (or call "
                "snapshot_()) before rewinding"
            )
        values = dict(self._point.tensors)
        if self.rewind == "reinit":
            values.update(fresh_init(self._model, self._targets, seed=self.seed + round_index))
        check_fits(values, self.live_tensors(), "LotteryTicket.rewind_()")
        return values

    def _write_rewind(self, values: Optional[Mapping[str, Tensor]]) -> None:
        if values is not None:
            write_tensors_(self.live_tensors(), values, self._backend, self._targets)
        self._point.restore_()

    def rewind_(self) -> None:
        """Reset the model to the rewind point, masks kept, according to ``rewind`` and ``restore``.

        Tensors are written in place (``copy_`` under ``no_grad``), so every Parameter keeps its
        identity and your optimizer stays valid. The attached optimizer and scheduler are
        restored to their state at the rewind point.
        """
        if self._removed:
            raise RuntimeError("LotteryTicket.rewind_(): remove_() made the pruning permanent; nothing to rewind")
        self._write_rewind(self._rewind_values(self._round))

    def refresh_(self) -> None:
        """Re-apply the masks to the weights after writing to them where the backend cannot see it.

        Needed only after writes that bypass tensor version counters (through ``.data``) with a
        baked backend, or after writing a prune backend's parameter outside a forward pass when
        you read ``module.weight`` before the next forward. Every other write (``copy_``,
        ``load_state_dict``, an optimizer step) is handled by the backend itself.
        """
        for t in self._targets:
            self._backend.refresh_(t)

    def remove_(self) -> None:
        """Make the pruning permanent (``prune.remove``): plain Parameters with zeros baked in.

        Raises:
            RuntimeError: no target has a mask installed yet (nothing to make permanent), or
                :meth:`remove_` already ran.
        """
        if self._removed:
            raise RuntimeError("LotteryTicket.remove_(): remove_() already made the pruning permanent")
        if not any(self._backend.is_masked(t) for t in self._targets):
            raise RuntimeError(
                "LotteryTicket.remove_(): no target has a mask installed yet, so there is nothing to make "
                "permanent; run a round (or set_masks_) first"
            )
        for t in self._targets:
            self._backend.remove_(t)
        self._removed = True

    def _owns(self, optimizer: torch.optim.Optimizer) -> bool:
        ids = {id(p) for p in self._model.parameters()}
        return any(id(p) in ids for g in optimizer.param_groups for p in g["params"])

    # ------------------------------------------------------------------ resumable state
    def save(
        self, path: Any, *, encoding: str = "compact", include_trained: bool = False,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None:
        """Save this ticket as one safetensors file; see :func:`torch_lottery.ticket_file.save_ticket`."""
        if self._mesh is not None:  # FSDP2: one file, shard by shard through rank 0 (call it on every rank)
            from .sharded_files import save_sharded_ticket as save_ticket
        else:
            from .ticket_file import save_ticket
        save_ticket(self, path, encoding=encoding, include_trained=include_trained, metadata=metadata)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume an IMP run: settings, round, history, masks, rewind point.

        Save it with ``torch.save`` (or as a ticket file), together with your model and optimizer
        checkpoints. To resume: build the model, build the ticket with the same settings, call
        :meth:`load_state_dict` (this installs the masks, so the model's own pruned
        ``state_dict`` then loads), then load the model's checkpoint.
        """
        state = {
            "config": self.config(),
            "round": self._round,
            "history": copy.deepcopy(self._history),
            "masks": {k: v.detach().cpu().clone() for k, v in self.masks.items()},
        }
        state.update(self._point.state_dict())
        return state

    def load_state_dict(self, state: Mapping[str, Any], *, rewind: bool = False) -> None:
        """Restore what :meth:`state_dict` returned: masks are installed, the rewind point restored.

        Args:
            state: a :meth:`state_dict`.
            rewind: also rewind the model to the restored snapshot (resuming between rounds
                without a model checkpoint); leave ``False`` when you load the model's own
                checkpoint next.

        Raises:
            ValueError, TypeError: missing keys, targets or settings that differ from this
                ticket's, masks or snapshot tensors of the wrong shape, a damaged round or
                history. The model is left unchanged.
        """
        masks = self._check_state(state)
        new_round = (int(state["round"]), copy.deepcopy(list(state["history"])))
        self._transact_(masks, count=False, rewind=rewind, point_state=state, new_round=new_round)

    def _check_state(self, state: Mapping[str, Any]) -> dict[str, Tensor]:
        fn = "LotteryTicket.load_state_dict()"
        check_saved_state(state, self.config(), fn)
        masks = {k: v.to(torch.bool) if isinstance(v, Tensor) else v for k, v in state["masks"].items()}
        masks = check_masks(masks, self._targets, fn, what="state['masks']")
        live = self._live()
        for key, value in state["rewind_weights"].items():
            if key not in live or not isinstance(value, Tensor) or tuple(live[key].shape) != tuple(value.shape):
                raise ValueError(f"{fn}: snapshot tensor {key!r} does not fit this model")
        return masks
