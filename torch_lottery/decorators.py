"""Model decorators: give a module class, or one module, a ``.ticket`` over itself.

``@lottery_ticket(rate=0.2, rounds=5)`` on an ``nn.Module`` subclass gives every instance a
``.ticket`` property: a :class:`~torch_lottery.LotteryTicket` over that instance, built on first
access (after ``__init__`` has built every layer, subclasses' included) and kept in the instance.
``lottery_ticket(model, rate=0.2)`` attaches one to an existing instance (a torchvision or
transformers model, say) and returns the model.

The ticket lives in the module's ``__dict__``, so ``copy.deepcopy(model)``, pickle and
``torch.save(model)`` copy it with the model: the copy's ``.ticket`` is a ticket over the copy, with
the same masks, theta_0, round and history, and an optimizer that was attached is copied onto the
copy's parameters. ``model.state_dict()`` is unchanged by the decorator (the ticket's state is
``model.ticket.state_dict()``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, TypeVar, Union, overload

from torch import nn

from .lottery import LotteryTicket
from .settings import TicketSettings

__all__ = ["lottery_ticket"]

M = TypeVar("M", bound=nn.Module)

_SLOT = "_lottery_ticket"  # where a decorated class's instances keep their ticket
_PER_INSTANCE = ("optimizer", "scheduler", "example_inputs")
_NAMES = frozenset(p for p in inspect.signature(LotteryTicket.__init__).parameters if p not in ("self", "model"))
_GOALS = ("sparsity", "rate", "layer_rates", "layer_sparsity")


@overload
def lottery_ticket(model: M, /, **options: Any) -> M: ...


@overload
def lottery_ticket(model: None = None, /, **options: Any) -> Callable[[M], M]: ...


def lottery_ticket(model: Optional[Union[nn.Module, type]] = None, /, **options: Any) -> Any:
    """Give a module class, or a module, a ``.ticket``: a :class:`LotteryTicket` over itself.

    Args:
        model: an ``nn.Module`` instance to attach a ticket to (returned, with ``.ticket`` set),
            an ``nn.Module`` subclass to decorate (returned, the same class), or nothing, to get a
            class decorator.
        **options: :class:`LotteryTicket`'s keyword arguments (``rate``, ``rounds``, ``scope``,
            ``rewind``, ``backend``, ...). For a class they are checked at decoration time; the
            per-instance objects ``optimizer``, ``scheduler`` and ``example_inputs`` are set on
            each instance's ticket instead (``model.ticket.optimizer = opt``).

    Returns:
        The model or class given, or a class decorator.

    Raises:
        TypeError: ``model`` is not a module or module class, an unknown option, a per-instance
            option on a class, or a module or class that already has a ``ticket`` attribute.
        ValueError: an invalid option value (from :class:`LotteryTicket`'s own checks).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> @lottery_ticket(rate=0.5, rounds=2)
        ... class Net(nn.Sequential):
        ...     def __init__(self):
        ...         super().__init__(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> net = Net()
        >>> with net.ticket:
        ...     pass  # train net here
        >>> net.ticket.sparsity
        0.5
        >>> mlp = lottery_ticket(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)), sparsity=0.75)
        >>> type(mlp.ticket).__name__
        'LotteryTicket'
    """
    if model is None:
        _check_class_options(options)
        return lambda cls: _decorate_class(cls, options)
    if isinstance(model, type):
        if not issubclass(model, nn.Module):
            raise TypeError(f"lottery_ticket(): model={model.__name__!r} is a class but not an nn.Module subclass; decorate a module class")
        _check_class_options(options)
        return _decorate_class(model, options)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"lottery_ticket(): model={type(model).__name__!r} is not an nn.Module; pass a module, a module class, "
            "or only options (for @lottery_ticket(...) on a class)"
        )
    return _attach(model, options)


def _check_class_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - _NAMES)
    if unknown:
        raise TypeError(f"lottery_ticket(): unknown option(s) {unknown}; the options are LotteryTicket's: {sorted(_NAMES)}")
    per_instance = sorted(set(options) & set(_PER_INSTANCE))
    if per_instance:
        raise TypeError(
            f"lottery_ticket(): {per_instance[0]}= belongs to one instance, not to a class; set it on each "
            f"instance's ticket (model.ticket.{per_instance[0]} = ...), or use lottery_ticket(model, ...)"
        )
    if not any(options.get(k) is not None for k in _GOALS):
        raise TypeError("lottery_ticket(): no goal given; pass rate= (with rounds=) or sparsity=, or layer_rates=/layer_sparsity=")
    fields = {k: v for k, v in options.items() if k in TicketSettings.__dataclass_fields__ and k not in ("criterion", "importance")}
    TicketSettings(**fields)  # the values, checked now rather than at each instance's first .ticket


def _decorate_class(cls: type, options: dict[str, Any]) -> type:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"lottery_ticket(): {cls!r} is not an nn.Module subclass; decorate a module class")
    if not isinstance(inspect.getattr_static(cls, "ticket", None), (_TicketProperty, type(None))):
        raise TypeError(f"lottery_ticket(): {cls.__name__} already has an attribute 'ticket'; rename it, or use LotteryTicket(model) directly")
    cls.ticket = _TicketProperty(dict(options))  # type: ignore[attr-defined]
    return cls


class _TicketProperty:
    """``Class.ticket``: the instance's ticket, built on first access with the decorator's options."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.__doc__ = f"This module's LotteryTicket (options {options!r}), built on first access."

    def __get__(self, module: Optional[nn.Module], owner: type) -> Any:
        if module is None:
            return self
        ticket = module.__dict__.get(_SLOT)
        if ticket is None:
            ticket = module.__dict__[_SLOT] = LotteryTicket(module, **self.options)
        return ticket

    def __set__(self, module: nn.Module, value: Any) -> None:
        raise AttributeError(
            f"{type(module).__name__}.ticket is built by @lottery_ticket and cannot be replaced; set its "
            "optimizer/scheduler (model.ticket.optimizer = ...) or build a LotteryTicket(model) of your own"
        )


def _attach(model: M, options: dict[str, Any]) -> M:
    if "ticket" in model.__dict__ or hasattr(type(model), "ticket") or "ticket" in model._modules or "ticket" in model._parameters or "ticket" in model._buffers:
        raise TypeError(
            f"lottery_ticket(): model={type(model).__name__!r} already has an attribute 'ticket'; "
            "build one with LotteryTicket(model, ...) and keep it beside the model"
        )
    ticket = LotteryTicket(model, **options)  # validates everything; the model is not touched
    model.__dict__["ticket"] = ticket
    return model
