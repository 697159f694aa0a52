"""The rewind point: the weights a rewind restores plus optimizer and scheduler state, and the step hooks of late rewinding.

A :class:`RewindPoint` holds theta_0 or theta_k (in a snapshot store), the optimizer's and LR
scheduler's state at that point, and, for ``rewind=k``, counts optimizer steps through
``torch.optim`` step hooks and captures theta_k after the k-th step. It never writes to the
model; the ticket decides what to restore.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .snapshot import SnapshotStore
from .targets import Target

if TYPE_CHECKING:
    from .backends import MaskBackend

__all__ = [
    "RewindPoint", "ZERO_FRESH_STATE", "check_fits", "check_optimizer", "check_scheduler", "load_optimizer_state_in_place_",
    "restore_optimizer_state_", "scheduler_state", "write_tensors_",
]

logger = logging.getLogger(__name__)


def check_optimizer(optimizer: object, fn: str) -> Optional[torch.optim.Optimizer]:
    """``optimizer`` if it is ``None`` or a ``torch.optim.Optimizer``; ``TypeError`` naming ``fn`` otherwise."""
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{fn}: optimizer={type(optimizer).__name__!r} is not a torch.optim.Optimizer; pass your optimizer")
    return optimizer  # type: ignore[return-value]


def check_scheduler(scheduler: object, fn: str) -> Any:
    """``scheduler`` if it is ``None`` or has ``state_dict``/``load_state_dict``; ``TypeError`` otherwise."""
    if scheduler is not None and not (hasattr(scheduler, "state_dict") and hasattr(scheduler, "load_state_dict")):
        raise TypeError(
            f"{fn}: scheduler={type(scheduler).__name__!r} has no state_dict()/load_state_dict(); "
            "pass a torch.optim.lr_scheduler instance"
        )
    return scheduler


def check_fits(values: Mapping[str, Tensor], live: Mapping[str, Tensor], fn: str) -> None:
    """Every value must have a live tensor of its shape to go into; ``RuntimeError`` naming the first that does not."""
    for key, value in values.items():
        if key not in live or tuple(live[key].shape) != tuple(value.shape):
            raise RuntimeError(
                f"{fn}: the model no longer has {key!r} with shape {tuple(value.shape)}; "
                "was the model changed after the snapshot?"
            )


def write_tensors_(
    live: Mapping[str, Tensor], values: Mapping[str, Tensor], backend: "MaskBackend", targets: Sequence[Target]
) -> None:
    """Write ``values`` into the model in place: targets through ``backend.load_`` (masks kept), the rest by ``copy_``."""
    by_fqn = {t.fqn: t for t in targets}
    with torch.no_grad():
        for key, value in values.items():
            if key in by_fqn:
                backend.load_(by_fqn[key], value)
            else:
                live[key].copy_(value)


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """A scheduler's state plus its optimizer's learning rates (which ``load_state_dict`` does not restore)."""
    state: dict[str, Any] = {"scheduler": copy.deepcopy(scheduler.state_dict())}
    sched_opt = getattr(scheduler, "optimizer", None)
    if sched_opt is not None:
        state["lrs"] = [g.get("lr") for g in sched_opt.param_groups]
        state["initial_lrs"] = [g.get("initial_lr") for g in sched_opt.param_groups]
    return state


#: Optimizers whose lazily created per-parameter state is all zeros (``step`` included): for them a
#: state written to zeros in place is bitwise the fresh state their first step would create.
ZERO_FRESH_STATE: tuple[type, ...] = (
    torch.optim.Adam, torch.optim.AdamW, torch.optim.RAdam, torch.optim.Adamax, torch.optim.RMSprop, torch.optim.Adadelta,
)


def load_optimizer_state_in_place_(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> bool:
    """Write ``saved`` (an ``optimizer.state_dict()``) into the optimizer's own state tensors.

    Keeping the state tensors (and the state dict's length) is what lets a compiled
    ``optimizer.step`` keep its compiled code across rewinds: ``load_state_dict`` would replace
    every state tensor. Done only when the result equals ``load_state_dict``'s: the same groups and
    parameters, and per parameter the same state keys with tensors of the same shape, or a saved
    empty state over a live one for the optimizers of :data:`ZERO_FRESH_STATE` (written as zeros).
    Returns False, touching nothing, when any of that does not hold.
    """
    groups, live_groups = saved.get("param_groups"), optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(live_groups):
        return False
    if any(len(g["params"]) != len(lg["params"]) for g, lg in zip(groups, live_groups)):
        return False
    if getattr(optimizer, "_optimizer_load_state_dict_pre_hooks", None) or getattr(optimizer, "_optimizer_load_state_dict_post_hooks", None):
        return False  # the user's load hooks run only through load_state_dict
    states = saved.get("state", {})
    plan: list[tuple[dict[str, Any], Optional[Mapping[str, Any]]]] = []
    for index, param in zip((i for g in groups for i in g["params"]), (p for g in live_groups for p in g["params"])):
        live, state = optimizer.state.get(param), states.get(index)
        if not state:
            if live:
                if type(optimizer) not in ZERO_FRESH_STATE or not all(isinstance(v, Tensor) for v in live.values()):
                    return False
                plan.append((live, None))
            continue
        if not live or set(live) != set(state):
            return False
        for key, value in state.items():
            if isinstance(value, Tensor) != isinstance(live[key], Tensor):
                return False
            if isinstance(value, Tensor) and (value.shape != live[key].shape or value.dtype != live[key].dtype):
                return False
        plan.append((live, state))
    with torch.no_grad():
        for live, state in plan:
            for key, value in live.items():
                if state is None:
                    value.zero_()
                elif isinstance(value, Tensor):
                    value.copy_(state[key])
                else:
                    live[key] = copy.deepcopy(state[key])
    for group, lg in zip(groups, live_groups):  # the groups become the saved ones, as with load_state_dict
        for key in [k for k in lg if k not in group]:
            del lg[key]
        for key, value in group.items():
            if key == "params":
                continue
            if isinstance(value, Tensor) and isinstance(lg[key], Tensor) and value.shape == lg[key].shape:
                lg[key].copy_(value)
            else:
                lg[key] = copy.deepcopy(value)
    return True


def restore_optimizer_state_(
    optimizer: Optional[torch.optim.Optimizer],
    optimizer_state: Optional[Mapping[str, Any]],
    scheduler: Optional[Any],
    sched_state: Optional[Mapping[str, Any]],
) -> None:
    """Load saved optimizer and scheduler state (copies, so the saved state can be loaded again).

    The optimizer's state is written into its existing state tensors where it can be (see
    :func:`load_optimizer_state_in_place_`), so a compiled ``optimizer.step`` is not recompiled
    at each rewind; otherwise ``optimizer.load_state_dict`` loads it.
    """
    if optimizer is not None and optimizer_state is not None:
        if not load_optimizer_state_in_place_(optimizer, optimizer_state):
            optimizer.load_state_dict(copy.deepcopy(dict(optimizer_state)))
    if scheduler is not None and sched_state is not None:
        scheduler.load_state_dict(copy.deepcopy(sched_state["scheduler"]))
        sched_opt = getattr(scheduler, "optimizer", None)
        if sched_opt is not None and "lrs" in sched_state:
            for group, lr, initial in zip(sched_opt.param_groups, sched_state["lrs"], sched_state["initial_lrs"]):
                group["lr"] = lr
                if initial is not None:
                    group["initial_lr"] = initial


class RewindPoint:
    """theta_0 or theta_k with the optimizer and scheduler state that go with it.

    Args:
        store: where the weights live (memory or disk).
        step: ``k`` for late rewinding (captured after the k-th optimizer step of the first
            round), or ``0`` for a point taken on entry.
        optimizer, scheduler: the attached optimizer and LR scheduler whose state the point
            records and restores (see :meth:`attach`).
    """

    def __init__(
        self, store: SnapshotStore, *, step: int = 0, optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None
    ) -> None:
        self.store = store
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.step = step
        self.tensors: Optional[dict[str, Tensor]] = None
        self.optimizer_state: Optional[dict[str, Any]] = None
        self.scheduler_state: Optional[dict[str, Any]] = None
        self.captured = step == 0
        self.steps = 0
        self.scheduler_pending = False
        self._hooks: list[Any] = []
        self._counting: Optional[tuple[Callable[..., Any], Callable[..., Any]]] = None  # (live, owns) while counting

    def __getstate__(self) -> dict[str, Any]:
        # Hook handles and their closures do not copy; a copy (deepcopy, pickle) registers its own.
        state = self.__dict__.copy()
        state["_hooks"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.store.on_disk and self.tensors is not None:  # copied into memory: back into the copy's own file
            self.tensors = self.store.put(self.tensors)
        if self._counting is not None and not self.captured:
            self._register_counting(*self._counting)

    @property
    def taken(self) -> bool:
        """Whether weights have been stored at all (theta_0 at least)."""
        return self.tensors is not None

    def attach(self, optimizer: Optional[torch.optim.Optimizer], scheduler: Any) -> None:
        """Use ``optimizer`` and ``scheduler`` from now on (validated by the caller).

        Once a point is taken, a newly attached optimizer's (or scheduler's) current state
        becomes the state restored at each rewind: a fresh optimizer is reset on every rewind.
        """
        if optimizer is not self.optimizer and self.taken:
            self.optimizer_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
        if scheduler is not self.scheduler and self.taken:
            self.scheduler_state = scheduler_state(scheduler) if scheduler is not None else None
        self.optimizer, self.scheduler = optimizer, scheduler

    def take_(self, tensors: Mapping[str, Tensor]) -> None:
        """Store ``tensors`` and the optimizer's and scheduler's current state as the rewind point."""
        stored = self.store.put(tensors)
        opt = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None
        sched = scheduler_state(self.scheduler) if self.scheduler is not None else None
        self.tensors, self.optimizer_state, self.scheduler_state = stored, opt, sched  # one step: never half a point

    def fields(self) -> tuple[Any, ...]:
        """Everything the point holds, for :meth:`set_fields` to put back after a failed step."""
        return (self.tensors, self.optimizer_state, self.scheduler_state, self.captured, self.steps, self.scheduler_pending)

    def set_fields(self, fields: tuple[Any, ...]) -> None:
        """Put back what :meth:`fields` returned."""
        (self.tensors, self.optimizer_state, self.scheduler_state, self.captured, self.steps, self.scheduler_pending) = fields

    def current_states(self) -> tuple[Any, Any]:
        """The attached optimizer's and scheduler's state now, for :meth:`restore_states` (copies: a rewind
        writes the optimizer's state tensors in place, see :func:`load_optimizer_state_in_place_`)."""
        opt = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None
        return opt, (scheduler_state(self.scheduler) if self.scheduler is not None else None)

    def restore_states(self, states: tuple[Any, Any]) -> None:
        """Put the optimizer and scheduler back to :meth:`current_states`."""
        if self.optimizer is not None and states[0] is not None:
            self.optimizer.load_state_dict(states[0])
        restore_optimizer_state_(None, None, self.scheduler, states[1])

    def mark_captured(self) -> None:
        """This point is theta_k: stop waiting for step ``k``."""
        self.captured = True
        self.scheduler_pending = False

    def capture_scheduler(self) -> None:
        """Record the scheduler's state now (after the step that captured theta_k, once it stepped)."""
        if self.scheduler is not None:
            self.scheduler_state = scheduler_state(self.scheduler)
        self.scheduler_pending = False

    def restore_(self) -> None:
        """Restore the optimizer and scheduler to this point (weights are the ticket's job)."""
        restore_optimizer_state_(self.optimizer, self.optimizer_state, self.scheduler, self.scheduler_state)

    # -- late rewinding: counting optimizer steps --------------------------------------------
    def start_counting(
        self,
        live: Callable[[], Mapping[str, Tensor]],
        owns: Callable[[torch.optim.Optimizer], bool],
        *,
        steps: int = 0,
    ) -> None:
        """Hook optimizer steps until step ``k`` has run; then take ``live()`` as theta_k.

        With ``optimizer`` only its steps count; without, every optimizer that updates a
        parameter of the model (``owns``) counts, through torch's global step hooks. ``steps``
        already ran (a round resumed from a checkpoint taken inside it).
        """
        self.steps = steps
        self._register_counting(live, owns)

    def _register_counting(
        self, live: Callable[[], Mapping[str, Tensor]], owns: Callable[[torch.optim.Optimizer], bool]
    ) -> None:
        self._counting = (live, owns)
        optimizer, scheduler = self.optimizer, self.scheduler

        def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if optimizer is None and not owns(opt):
                return
            self.steps += 1
            if not self.captured and self.steps == self.step:
                self.tensors = self.store.put(live())
                self.optimizer_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
                self.captured = True
                self.scheduler_pending = scheduler is not None
                logger.info("rewind point theta_%d captured", self.steps)

        def pre(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if self.scheduler_pending and (optimizer is None or opt is optimizer):
                self.capture_scheduler()

        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        for register, hook in ((register_optimizer_step_post_hook, post), (register_optimizer_step_pre_hook, pre)):
            if optimizer is not None:
                register = optimizer.register_step_post_hook if hook is post else optimizer.register_step_pre_hook
            self._hooks.append(register(hook))  # each handle kept as soon as it exists

    def stop_counting(self) -> None:
        """Remove the step hooks (idempotent)."""
        self._counting = None
        while self._hooks:
            self._hooks[-1].remove()
            self._hooks.pop()

    # -- resumable state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The point as plain data: weights (cloned), captured flag, steps, optimizer and scheduler state."""
        return {
            "rewind_weights": {k: v.clone() for k, v in (self.tensors or {}).items()},
            "rewind_captured": self.captured,
            "steps": self.steps,
            "optimizer_state": copy.deepcopy(self.optimizer_state),
            "scheduler_state": copy.deepcopy(self.scheduler_state),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (validated by the caller)."""
        weights = state["rewind_weights"]
        fields = (
            self.store.put(weights) if weights else None,
            copy.deepcopy(state.get("optimizer_state")),
            copy.deepcopy(state.get("scheduler_state")),
            bool(state.get("rewind_captured", True)),
            int(state.get("steps", 0)),
            False,
        )
        self.set_fields(fields)
