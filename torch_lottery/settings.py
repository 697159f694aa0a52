"""Validated ticket settings: one frozen object, one list of keys for state dicts, files and configs.

:class:`TicketSettings` holds what configures a ticket and checks every value when it is built,
so an invalid combination never reaches the model. ``to_dict``/``from_dict`` give the JSON-able
form that ``LotteryTicket.config()``, ``state_dict()``, ticket files and ``from_config`` all use;
:data:`SETTINGS_KEYS` lists its keys, and :data:`MATCHING_KEYS` the ones a saved state must share
with the ticket it is loaded into.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import numbers
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence, Union

import torch

__all__ = ["MATCHING_KEYS", "check_saved_state", "REWIND_MODES", "RESTORE_MODES", "SCOPES", "SETTINGS_KEYS", "TicketSettings", "check_fraction"]

SCOPES = ("global", "layer")
GRANULARITIES = ("weight", "channel")
REWIND_MODES = ("init", "none", "reinit")
RESTORE_MODES = ("all", "params", "targets")

_FN = "LotteryTicket()"


def check_fraction(value: object, arg: str, *, fn: str = _FN) -> Optional[float]:
    """``value`` as a float in ``[0, 1)``, or ``None``; ``TypeError``/``ValueError`` naming ``arg`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {arg}={value!r} is not a number; pass a float in [0, 1)")
    value = float(value)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise ValueError(f"{fn}: {arg}={value!r} is outside [0, 1); pass a fraction such as 0.2")
    return value


def _check_overrides(overrides: object, arg: str) -> Mapping[str, float]:
    if overrides is None:
        return MappingProxyType({})
    if not isinstance(overrides, Mapping):
        raise TypeError(f"{_FN}: {arg}={overrides!r} must be a dict {{fqn or glob: fraction}}")
    out = {}
    for pattern, value in overrides.items():
        if not isinstance(pattern, str):
            raise TypeError(f"{_FN}: {arg} key {pattern!r} is not a string; use an FQN or glob such as 'fc3.weight'")
        out[pattern] = check_fraction(value, f"{arg}[{pattern!r}]")
    return MappingProxyType(out)


def _check_snapshot_device(device: object) -> str:
    if device == "disk":
        return "disk"
    try:
        parsed = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"{_FN}: snapshot_device={device!r} is not a torch device or 'disk'; use 'cpu', 'cuda:0' or 'disk'"
        ) from None
    if parsed.type == "meta":
        raise ValueError(
            f"{_FN}: snapshot_device={device!r} holds no data, so a rewind would have nothing to restore; "
            "use 'cpu', a GPU such as 'cuda:0', or 'disk'"
        )
    return str(parsed)


@dataclasses.dataclass(frozen=True)
class TicketSettings:
    """What configures a ticket, validated on construction. Immutable.

    The fields mean what :class:`~torch_lottery.LotteryTicket`'s arguments of the same names mean.
    ``layer_rates``/``layer_sparsity`` keys may be globs until :meth:`resolve` maps them onto the
    ticket's target FQNs. ``criterion`` is the criterion's name (a callable's ``__qualname__``).

    Raises:
        TypeError, ValueError: an invalid value, in the library's message form.

    Example:
        >>> s = TicketSettings(rate=0.2, rounds=5)
        >>> s.to_dict()["rate"], TicketSettings.from_dict(s.to_dict()) == s
        (0.2, True)
    """

    sparsity: Optional[float] = None
    rate: Optional[float] = None
    rounds: Optional[int] = None
    scope: str = "global"
    rewind: Union[str, int] = "init"
    layer_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
    layer_sparsity: Mapping[str, float] = dataclasses.field(default_factory=dict)
    criterion: str = "magnitude"
    restore: str = "all"
    seed: int = 0
    snapshot_device: str = "cpu"
    backend: str = "prune"
    granularity: str = "weight"
    importance: str = "l1"

    def __post_init__(self) -> None:
        put = object.__setattr__
        sparsity = check_fraction(self.sparsity, "sparsity")
        rate = check_fraction(self.rate, "rate")
        if sparsity is not None and rate is not None:
            raise ValueError(
                f"{_FN}: sparsity={sparsity!r} and rate={rate!r}: give exactly one "
                "(sparsity: final fraction pruned; rate: fraction of survivors pruned per round)"
            )
        rounds = self.rounds
        if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
            raise ValueError(f"{_FN}: rounds={rounds!r} must be a positive int or None")
        layer_rates = _check_overrides(self.layer_rates, "layer_rates")
        layer_sparsity = _check_overrides(self.layer_sparsity, "layer_sparsity")
        if (sparsity is not None or layer_sparsity) and rounds is None:
            rounds = 1
        if not isinstance(self.scope, str) or self.scope not in SCOPES:
            raise ValueError(f"{_FN}: scope={self.scope!r} is not one of {list(SCOPES)}")
        rewind = self.rewind
        if isinstance(rewind, bool) or not (
            (isinstance(rewind, str) and rewind in REWIND_MODES) or (isinstance(rewind, int) and rewind >= 0)
        ):
            raise ValueError(
                f"{_FN}: rewind={rewind!r} is not valid; use 'init', 'none', 'reinit' "
                "or a step count k >= 0 (late rewinding)"
            )
        if not isinstance(self.restore, str) or self.restore not in RESTORE_MODES:
            raise ValueError(f"{_FN}: restore={self.restore!r} is not one of {list(RESTORE_MODES)}")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{_FN}: seed={seed!r} must be an int")
        if not (0 <= seed < 2**43):
            raise ValueError(
                f"{_FN}: seed={seed!r} is outside [0, 2**43); pass a small non-negative int such as 0 "
                "(seeds are combined with round numbers into a 64-bit generator seed)"
            )
        if not isinstance(self.criterion, str):
            raise TypeError(f"{_FN}: criterion name {self.criterion!r} must be a string")
        if not isinstance(self.granularity, str) or self.granularity not in GRANULARITIES:
            raise ValueError(
                f"{_FN}: granularity={self.granularity!r} is not one of {list(GRANULARITIES)}; 'weight' prunes "
                "single weights, 'channel' whole channels (needs example_inputs and torch-pruning)"
            )
        if not isinstance(self.importance, str):
            raise TypeError(f"{_FN}: importance name {self.importance!r} must be a string")
        if not isinstance(self.backend, str):
            raise TypeError(f"{_FN}: backend={self.backend!r} must be a backend name (a string)")
        for name, value in (
            ("sparsity", sparsity), ("rate", rate), ("rounds", rounds), ("layer_rates", layer_rates),
            ("layer_sparsity", layer_sparsity), ("snapshot_device", _check_snapshot_device(self.snapshot_device)),
        ):
            put(self, name, value)

    def resolve(self, fqns: Sequence[str]) -> "TicketSettings":
        """These settings with override globs expanded onto ``fqns`` (the ticket's targets).

        Raises:
            ValueError: an override key matching no target, a tensor in both override dicts, or
                neither ``sparsity`` nor ``rate`` while some target has no override.
        """
        resolved = {}
        for arg in ("layer_rates", "layer_sparsity"):
            out: dict[str, float] = {}
            for pattern, value in getattr(self, arg).items():
                hits = [f for f in fqns if fnmatch.fnmatchcase(f, pattern)]
                if not hits:
                    raise ValueError(f"{_FN}: {arg} key {pattern!r} matches no target; targets are {list(fqns)}")
                out.update((f, value) for f in hits)
            resolved[arg] = out
        both = sorted(set(resolved["layer_rates"]) & set(resolved["layer_sparsity"]))
        if both:
            raise ValueError(f"{_FN}: {both!r} are in both layer_rates and layer_sparsity; give each tensor one of them")
        uncovered = [f for f in fqns if f not in resolved["layer_rates"] and f not in resolved["layer_sparsity"]]
        if self.sparsity is None and self.rate is None and uncovered:
            raise ValueError(
                f"{_FN}: sparsity=None and rate=None: give exactly one (sparsity: final fraction "
                "pruned; rate: fraction of survivors pruned per round), or cover every target with "
                f"layer_rates/layer_sparsity (not covered: {uncovered[:5]!r}{' ...' if len(uncovered) > 5 else ''})"
            )
        return dataclasses.replace(self, **resolved)

    def __reduce__(self) -> tuple[Any, ...]:
        # Copies and pickles rebuild (and so re-validate) from plain data; MappingProxyType does not pickle.
        return (type(self).from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able data, keyed by :data:`SETTINGS_KEYS` less ``targets``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["layer_rates"] = dict(self.layer_rates)
        out["layer_sparsity"] = dict(self.layer_sparsity)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TicketSettings":
        """Rebuild settings from :meth:`to_dict` output (unknown keys such as ``targets`` are ignored)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"TicketSettings.from_dict(): data={data!r:.80} is not a dict; pass ticket.config()")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


#: Keys of ``LotteryTicket.config()``: the settings plus the target FQNs.
SETTINGS_KEYS: tuple[str, ...] = (
    "sparsity", "rate", "rounds", "scope", "rewind", "targets", "layer_rates", "layer_sparsity",
    "criterion", "restore", "seed", "snapshot_device", "backend", "granularity", "importance",
)

#: Keys a saved state must share with the ticket it is loaded into (the rest may differ).
MATCHING_KEYS: tuple[str, ...] = (
    "targets", "scope", "rate", "sparsity", "rounds", "rewind", "restore", "layer_rates", "layer_sparsity",
    "granularity",
)
_MISSING = {"layer_rates": {}, "layer_sparsity": {}, "granularity": "weight"}  # what a key absent from older states meant


def check_saved_state(state: object, config: Mapping[str, Any], fn: str) -> None:
    """Check the plain parts of a saved ticket state against this ticket's ``config``.

    Keys ``config``, ``round``, ``history``, ``masks`` and ``rewind_weights`` must be present,
    the :data:`MATCHING_KEYS` settings equal, the round an int >= 0 and the history a list of
    records. Tensors are the caller's to check. Raises ``TypeError``/``ValueError`` naming ``fn``.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"{fn}: state={type(state).__name__} is not a dict; pass ticket.state_dict()")
    missing = [k for k in ("config", "round", "history", "masks", "rewind_weights") if k not in state]
    if missing:
        raise ValueError(f"{fn}: state is missing {missing!r}; pass ticket.state_dict()")
    if not isinstance(state["config"], Mapping):
        raise ValueError(f"{fn}: state['config'] is {type(state['config']).__name__}, not a dict; pass ticket.state_dict()")
    theirs = dict(state["config"])
    saved = {k: theirs.get(k, _MISSING.get(k)) for k in MATCHING_KEYS}
    differ = {k: (saved[k], config[k]) for k in MATCHING_KEYS if saved[k] != config[k]}
    if differ:
        raise ValueError(
            f"{fn}: settings differ (saved, this ticket): {differ!r}; "
            "build the ticket with LotteryTicket.from_config(model, state['config'])"
        )
    rnd, history = state["round"], state["history"]
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
        raise ValueError(f"{fn}: state['round']={rnd!r} is not a round count (an int >= 0); the state is damaged")
    if not isinstance(history, (list, tuple)) or not all(isinstance(r, Mapping) for r in history):
        raise ValueError(f"{fn}: state['history']={history!r:.80} is not a list of round records; the state is damaged")
    if not isinstance(state["masks"], Mapping) or not isinstance(state["rewind_weights"], Mapping):
        raise ValueError(f"{fn}: state['masks'] and state['rewind_weights'] must be dicts of tensors; the state is damaged")
