"""The LotteryTicket engine: snapshot on entry, prune and rewind on exit, one IMP round per block."""

from __future__ import annotations

import copy
import functools
import logging
import numbers
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

import torch
from torch import Tensor, nn

from .backends import BACKENDS, MaskBackend, make_backend
from .controls import fresh_init
from .scoring import Criterion, get_criterion
from .selection import prune_lowest
from .summary import format_table, mask_rows, round_record, totals
from .snapshot import mmap_safetensors, write_safetensors_streaming
from .targets import Target, TargetSelector, find_targets, named_state_tensors, unwrap_model

__all__ = ["LotteryTicket", "per_round_rate"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_SCOPES = ("global", "layer")
_REWIND_MODES = ("init", "none", "reinit")
_RESTORE = ("all", "params", "targets")


def per_round_rate(sparsity: float, rounds: int) -> float:
    """The rate per round that reaches ``sparsity`` after ``rounds`` rounds: ``1 - (1 - s)**(1/n)``.

    Example:
        >>> round(per_round_rate(0.36, 2), 6)
        0.2
    """
    return 1.0 - (1.0 - sparsity) ** (1.0 / rounds)


def _round_count(
    *, survivors: int, total: int, done: int, rate: Optional[float], sparsity: Optional[float], rounds: Optional[int]
) -> int:
    """How many of ``survivors`` (out of ``total``) to prune in round ``done + 1``.

    With ``rate``: ``round(rate * survivors)``, torch's ``amount`` meaning. With ``sparsity``
    over ``rounds`` rounds: enough to bring the pruned count to
    ``round(total * (1 - (1 - sparsity)**((done + 1) / rounds)))``, so the last round lands on
    ``round(sparsity * total)`` exactly and each round prunes about ``per_round_rate`` of the survivors.
    """
    if rate is not None:
        n = round(rate * survivors)
    else:
        assert sparsity is not None and rounds is not None
        goal = round(total * (1.0 - (1.0 - sparsity) ** ((done + 1) / rounds)))
        n = goal - (total - survivors)
    return max(0, min(survivors, n))


def _check_fraction(value: object, arg: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"LotteryTicket(): {arg}={value!r} is not a number; pass a float in [0, 1)")
    value = float(value)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise ValueError(f"LotteryTicket(): {arg}={value!r} is outside [0, 1); pass a fraction such as 0.2")
    return value


class LotteryTicket:
    """Find a lottery ticket inside your own training loop.

    Each ``with ticket:`` block is one round of iterative magnitude pruning (IMP). On the first
    entry the ticket snapshots the model (theta_0, on the CPU by default). You train inside the
    block with any loop and optimizer. On a clean exit it scores the surviving weights (by their
    current effective values), prunes ``rate`` of them (globally or per tensor), installs the masks
    through ``torch.nn.utils.prune`` (``<name>_orig`` + ``<name>_mask``) and rewinds the survivors.
    If the block raises, nothing is pruned or rewound and the trained weights are kept.

    Args:
        model: any ``nn.Module`` (DataParallel/DDP wrappers are looked through).
        sparsity: final fraction of the target weights to prune, reached after ``rounds`` rounds
            (one round if ``rounds`` is ``None``). Give this or ``rate``.
        rate: fraction of the *surviving* target weights pruned each round (torch's ``amount``).
        rounds: number of rounds; with ``rate`` and no ``rounds`` there is no limit.
        scope: ``"global"`` ranks all targets together; ``"layer"`` prunes each at its own rate.
        rewind: what the survivors are reset to after pruning: ``"init"`` (theta_0, the snapshot
            taken on first entry); an int ``k`` (the weights after the k-th optimizer step of the
            first round: late rewinding, captured by hooking the optimizer, or by
            :meth:`mark_rewind_point`); ``"none"`` (keep the trained weights: fine-tuning and
            learning-rate rewinding); ``"reinit"`` (fresh random values from each layer's own
            initializer, seeded: the paper's random re-initialization control).
        targets: which tensors to prune: ``None`` for the paper's default (weights of Linear,
            ConvNd, ConvTranspose, MultiheadAttention projections and other >=2-D leaf weights;
            never biases, norms, embeddings or RNNs), glob patterns over FQNs, or a callable
            ``(fqn, module, parameter) -> bool``.
        exclude: glob patterns of FQNs to leave out.
        layer_rates: per-round rate overrides ``{fqn or glob: rate}``, e.g. ``{"fc3.weight": 0.1}``
            to prune the output layer at half the rate. Overridden tensors are pruned on their own
            (also under ``scope="global"``, where the rest are ranked together).
        layer_sparsity: per-tensor final sparsity overrides ``{fqn or glob: sparsity}``, reached
            after ``rounds`` rounds (one round if ``rounds`` is ``None``): one-shot pruning to given
            per-layer sparsities. When ``layer_rates`` and ``layer_sparsity`` together cover every
            target, ``rate`` and ``sparsity`` may both be left out.
        criterion: ``"magnitude"`` (default), ``"random"``, ``"magnitude_increase"``, ``"movement"``
            or a callable, see :mod:`torch_lottery.scoring`.
        restore: what a rewind restores besides the pruned weights: ``"all"`` (every parameter and
            buffer: biases, BatchNorm affine and running statistics; open_lth's behaviour),
            ``"params"`` (all parameters, but buffers such as running statistics keep their trained
            values) or ``"targets"`` (only the pruned tensors).
        optimizer: your optimizer, optional. If given, its state (momenta, Adam moments, learning
            rates) is restored to the rewind point on every rewind; if not, it is left as it is
            (masked weights stay zero either way, but momenta carry over: create a new optimizer
            or pass this one). Also used to count steps for ``rewind=k``.
        scheduler: your LR scheduler, optional; restored to the rewind point on every rewind
            (together with its optimizer's learning rates). With ``rewind="none"`` this gives
            learning-rate rewinding; leave it out for plain fine-tuning.
        seed: seed for ``"random"`` scores and ``"reinit"``.
        snapshot_device: where the snapshot lives: a torch device (``"cpu"`` by default), or
            ``"disk"``: a safetensors file, written one tensor at a time and read back
            memory-mapped, for models that do not fit in memory twice.
        snapshot_dir: the folder for ``snapshot_device="disk"`` (created if missing; the file is
            ``rewind.safetensors``); by default a temporary folder removed with the ticket.
        backend: mask backend name, ``"prune"`` (torch.nn.utils.prune hooks) by default.

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
        exclude: Sequence[str] = (),
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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"LotteryTicket(): model={type(model).__name__!r} is not an nn.Module; pass the model itself"
            )
        sparsity = _check_fraction(sparsity, "sparsity")
        rate = _check_fraction(rate, "rate")
        if sparsity is not None and rate is not None:
            raise ValueError(
                f"LotteryTicket(): sparsity={sparsity!r} and rate={rate!r}: give exactly one "
                "(sparsity: final fraction pruned; rate: fraction of survivors pruned per round)"
            )
        if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
            raise ValueError(f"LotteryTicket(): rounds={rounds!r} must be a positive int or None")
        if (sparsity is not None or layer_sparsity) and rounds is None:
            rounds = 1
        if scope not in _SCOPES:
            raise ValueError(f"LotteryTicket(): scope={scope!r} is not one of {list(_SCOPES)}")
        if isinstance(rewind, bool) or not (
            rewind in _REWIND_MODES or (isinstance(rewind, int) and rewind >= 0)
        ):
            raise ValueError(
                f"LotteryTicket(): rewind={rewind!r} is not valid; use 'init', 'none', 'reinit' "
                "or a step count k >= 0 (late rewinding)"
            )
        if restore not in _RESTORE:
            raise ValueError(f"LotteryTicket(): restore={restore!r} is not one of {list(_RESTORE)}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"LotteryTicket(): seed={seed!r} must be an int")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"LotteryTicket(): optimizer={type(optimizer).__name__!r} is not a torch.optim.Optimizer"
            )
        if scheduler is not None and not (hasattr(scheduler, "state_dict") and hasattr(scheduler, "load_state_dict")):
            raise TypeError(
                f"LotteryTicket(): scheduler={type(scheduler).__name__!r} has no state_dict()/load_state_dict(); "
                "pass a torch.optim.lr_scheduler instance"
            )
        if snapshot_device != "disk":
            try:
                snapshot_device = torch.device(snapshot_device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"LotteryTicket(): snapshot_device={snapshot_device!r} is not a torch device or 'disk'; "
                    "use 'cpu', 'cuda:0' or 'disk'"
                ) from None
            if snapshot_dir is not None:
                raise ValueError(
                    f"LotteryTicket(): snapshot_dir={str(snapshot_dir)!r} is only used with snapshot_device='disk'; "
                    "pass snapshot_device='disk' or drop snapshot_dir"
                )
        elif snapshot_dir is not None and Path(snapshot_dir).exists() and not Path(snapshot_dir).is_dir():
            raise ValueError(f"LotteryTicket(): snapshot_dir={str(snapshot_dir)!r} is a file; pass a folder")
        if backend not in BACKENDS:
            raise ValueError(
                f"LotteryTicket(): backend={backend!r} is not a mask backend; choose one of {sorted(BACKENDS)}"
            )
        self._criterion = get_criterion(criterion)
        self._criterion_name = criterion if isinstance(criterion, str) else getattr(criterion, "__qualname__", repr(criterion))

        self.model = unwrap_model(model)
        found = find_targets(self.model, targets, exclude)
        self._targets: list[Target] = found
        by_fqn = {t.fqn: t for t in found}
        self._layer_rates = self._resolve_overrides(layer_rates, by_fqn, "layer_rates")
        self._layer_sparsity = self._resolve_overrides(layer_sparsity, by_fqn, "layer_sparsity")
        both = sorted(set(self._layer_rates) & set(self._layer_sparsity))
        if both:
            raise ValueError(
                f"LotteryTicket(): {both!r} are in both layer_rates and layer_sparsity; give each tensor one of them"
            )
        uncovered = [f for f in by_fqn if f not in self._layer_rates and f not in self._layer_sparsity]
        if sparsity is None and rate is None and uncovered:
            raise ValueError(
                f"LotteryTicket(): sparsity=None and rate=None: give exactly one (sparsity: final fraction "
                "pruned; rate: fraction of survivors pruned per round), or cover every target with "
                f"layer_rates/layer_sparsity (not covered: {uncovered[:5]!r}{' ...' if len(uncovered) > 5 else ''})"
            )

        self.sparsity_goal = sparsity
        self.rate = rate
        self.rounds = rounds
        self.scope = scope
        self.rewind = rewind
        self.restore = restore
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.seed = seed
        self.snapshot_device = snapshot_device
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self._exclude = list(exclude)
        self._backend: MaskBackend = make_backend(backend, self.model)

        self.round = 0
        self.history: list[dict[str, Any]] = []
        self._snapshot: Optional[dict[str, Tensor]] = None
        self._opt_state: Optional[dict[str, Any]] = None
        self._sched_state: Optional[dict[str, Any]] = None
        self._rewind_captured = not isinstance(rewind, int) or rewind == 0
        self._sched_pending = False
        self._steps = 0
        self._active = False
        self._removed = False
        self._hooks: list[Any] = []

        # Adopt masks already in the model (a resumed run, or a model pruned by hand).
        for t in self._targets:
            if self._backend.is_masked(t):
                self._backend.apply_(t, self._backend.mask(t))

    # ------------------------------------------------------------------ validation helpers
    @staticmethod
    def _resolve_overrides(
        overrides: Optional[Mapping[str, float]], by_fqn: Mapping[str, Target], arg: str
    ) -> dict[str, float]:
        import fnmatch

        if overrides is None:
            return {}
        if not isinstance(overrides, Mapping):
            raise TypeError(
                f"LotteryTicket(): {arg}={overrides!r} must be a dict {{fqn or glob: fraction}}"
            )
        resolved: dict[str, float] = {}
        for pattern, value in overrides.items():
            r = _check_fraction(value, f"{arg}[{pattern!r}]")
            hits = [f for f in by_fqn if fnmatch.fnmatchcase(f, pattern)]
            if not hits:
                raise ValueError(
                    f"LotteryTicket(): {arg} key {pattern!r} matches no target; "
                    f"targets are {list(by_fqn)}"
                )
            for f in hits:
                resolved[f] = r  # type: ignore[assignment]
        return resolved

    # ------------------------------------------------------------------ read-only views
    @property
    def targets(self) -> list[Target]:
        """The pruned tensors, in model order."""
        return list(self._targets)

    @property
    def target_fqns(self) -> list[str]:
        """Canonical FQNs of the pruned tensors, in model order."""
        return [t.fqn for t in self._targets]

    @property
    def backend(self) -> MaskBackend:
        """The mask backend in use."""
        return self._backend

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
        return dict(self._snapshot or {})

    @property
    def done(self) -> bool:
        """Whether all ``rounds`` have been run."""
        return self.rounds is not None and self.round >= self.rounds

    def summary(self) -> list[dict[str, Any]]:
        """One row per target: ``fqn``, ``shape``, ``numel``, ``remaining``, ``sparsity``."""
        return mask_rows(self.masks)

    def summary_table(self) -> str:
        """:meth:`summary` as a fixed-width text table with a total line."""
        return format_table(self.summary())

    def config(self) -> dict[str, Any]:
        """The settings as JSON-able data (what :meth:`from_config` rebuilds a ticket from)."""
        return {
            "sparsity": self.sparsity_goal,
            "rate": self.rate,
            "rounds": self.rounds,
            "scope": self.scope,
            "rewind": self.rewind,
            "targets": self.target_fqns,
            "layer_rates": dict(self._layer_rates),
            "layer_sparsity": dict(self._layer_sparsity),
            "criterion": self._criterion_name,
            "restore": self.restore,
            "seed": self.seed,
            "snapshot_device": str(self.snapshot_device),
            "backend": self._backend.name,
        }

    @classmethod
    def from_config(cls, model: nn.Module, config: Mapping[str, Any], **overrides: Any) -> "LotteryTicket":
        """Build a ticket for ``model`` with the settings of :meth:`config`; ``overrides`` win."""
        kwargs = {k: v for k, v in config.items() if k in _CONFIG_KEYS}
        kwargs.update(overrides)
        return cls(model, **kwargs)

    def __repr__(self) -> str:
        goal = f"sparsity={self.sparsity_goal}" if self.rate is None else f"rate={self.rate}"
        return (
            f"LotteryTicket({type(self.model).__name__}, {goal}, rounds={self.rounds}, scope={self.scope!r}, "
            f"rewind={self.rewind!r}, round={self.round}, targets={len(self._targets)}, "
            f"sparsity={self.sparsity:.4f})"
        )

    # ------------------------------------------------------------------ the round
    def __enter__(self) -> "LotteryTicket":
        if self._active:
            raise RuntimeError("LotteryTicket.__enter__(): this ticket's block is already open; rounds do not nest")
        self._check_can_prune("__enter__")
        if self._snapshot is None:
            self.snapshot_()
        if not self._rewind_captured:
            self._steps = 0
            self._install_step_hooks()
        self._active = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._active = False
        self._remove_step_hooks()
        if exc_type is not None:
            logger.warning(
                "round %d interrupted by %s: nothing pruned or rewound, trained weights kept",
                self.round + 1,
                exc_type.__name__,
            )
            return False
        if self._sched_pending:
            self._capture_scheduler()
        if not self._rewind_captured:
            raise RuntimeError(
                f"LotteryTicket.__exit__(): rewind={self.rewind!r} but only {self._steps} optimizer steps ran "
                "in this block; train for at least that many steps, call mark_rewind_point(), or use "
                "rewind='init'. Nothing was pruned; the trained weights are kept."
            )
        self.prune_()
        self.rewind_()
        return False

    def __call__(self, fn: F) -> F:
        """Use the ticket as a decorator: every call of ``fn`` runs as one round."""

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

    # ------------------------------------------------------------------ pruning
    def compute_masks(self) -> dict[str, Tensor]:
        """The masks the next round would install, computed from the current weights. Pure.

        Raises:
            ValueError: a target holds NaN or infinite weights, or the criterion returns scores
                of the wrong shape or with NaN.
        """
        weights: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        for t in self._targets:
            w = self._backend.weight(t)
            if not torch.isfinite(w).all():
                bad = int((~torch.isfinite(w)).sum())
                raise ValueError(
                    f"LotteryTicket.prune_(): {t.fqn!r} has {bad} NaN or infinite weights; "
                    "fix the training run (lower the learning rate, clip gradients) before pruning. "
                    "Nothing was pruned."
                )
            weights[t.fqn] = w
            masks[t.fqn] = self._backend.mask(t)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.round)
        initial = self._snapshot or {}
        scores: dict[str, Tensor] = {}
        for fqn, w in weights.items():
            s = self._criterion(fqn, w, initial.get(fqn), generator)
            if not isinstance(s, Tensor) or s.shape != w.shape:
                raise ValueError(
                    f"LotteryTicket.prune_(): criterion={self._criterion_name!r} returned "
                    f"{getattr(s, 'shape', type(s).__name__)} for {fqn!r} of shape {tuple(w.shape)}; "
                    "return one score per weight"
                )
            if torch.isnan(s).any() and torch.isnan(s[masks[fqn]]).any():  # cheap check first
                raise ValueError(
                    f"LotteryTicket.prune_(): criterion={self._criterion_name!r} returned NaN scores for {fqn!r}"
                )
            scores[fqn] = s

        new: dict[str, Tensor] = {}
        # Each group is ranked on its own: (fqns, rate, sparsity); one of the two is set.
        groups: list[tuple[list[str], Optional[float], Optional[float]]] = []
        plain = [f for f in weights if f not in self._layer_rates and f not in self._layer_sparsity]
        if self.scope == "global" and plain:
            groups.append((plain, self.rate, self.sparsity_goal))
        elif self.scope == "layer":
            groups += [([f], self.rate, self.sparsity_goal) for f in plain]
        groups += [([f], self._layer_rates[f], None) for f in weights if f in self._layer_rates]
        groups += [([f], None, self._layer_sparsity[f]) for f in weights if f in self._layer_sparsity]
        numel = {t.fqn: t.numel for t in self._targets}
        for fqns, rate, sparsity in groups:
            survivors = sum(int(torch.count_nonzero(masks[f])) for f in fqns)
            total = sum(numel[f] for f in fqns)
            n = _round_count(
                survivors=survivors, total=total, done=self.round, rate=rate, sparsity=sparsity, rounds=self.rounds
            )
            new.update(prune_lowest({f: scores[f] for f in fqns}, {f: masks[f] for f in fqns}, n))
        new = self._sync_masks(new)
        return {t.fqn: new[t.fqn] for t in self._targets}

    def _sync_masks(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """Under torch.distributed, make every rank use rank 0's masks."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return masks
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        out = {}
        for fqn, mask in masks.items():
            buf = mask.to(device=device, dtype=torch.uint8)
            dist.broadcast(buf, src=0)
            out[fqn] = buf.to(device=mask.device, dtype=torch.bool)
        return out

    def prune_(self) -> dict[str, Tensor]:
        """Run the pruning half of a round now: compute masks from the current weights and install them.

        The round counter advances and the history gets a record. Nothing is rewound (see
        :meth:`rewind_`). If anything fails, the model keeps its previous masks and weights.

        Returns:
            The new masks, FQN -> bool tensor.
        """
        self._check_can_prune("prune_")
        new = self.compute_masks()
        self._install_masks_(new)
        self.round += 1
        record = round_record(self.round, new)
        self.history.append(record)
        logger.info(
            "round %d: sparsity %.4f (%d of %d target weights remain)",
            self.round, record["sparsity"], record["remaining"], record["total"],
        )
        return new

    def _install_masks_(self, masks: Mapping[str, Tensor]) -> None:
        previous = [(t, self._backend.is_masked(t), self._backend.mask(t)) for t in self._targets]
        done: list[tuple[Target, bool, Tensor]] = []
        try:
            for entry in previous:
                t = entry[0]
                self._backend.apply_(t, masks[t.fqn])
                done.append(entry)
        except BaseException:
            for t, was_masked, old in reversed(done):
                if was_masked:
                    self._backend.apply_(t, old)
                else:
                    self._backend.unapply_(t)
            raise
        finally:
            self._backend.commit_()  # the backend may drop what a rollback needed

    def set_masks_(self, masks: Mapping[str, Tensor], *, rewind: bool = True) -> None:
        """Install the given masks (a random-mask control, or masks from elsewhere), then rewind.

        Args:
            masks: FQN -> bool tensor for every target (see :attr:`target_fqns`).
            rewind: also run :meth:`rewind_`. If no snapshot was taken yet, the model's current
                weights become theta_0 first (so on a fresh model this is "masks on its init").

        Raises:
            ValueError: missing or unknown FQNs, wrong shapes; TypeError: non-bool masks.
        """
        if self._removed:
            raise RuntimeError("LotteryTicket.set_masks_(): remove_() made the pruning permanent; build a new ticket")
        expected = self.target_fqns
        missing = [f for f in expected if f not in masks]
        unknown = [f for f in masks if f not in expected]
        if missing or unknown:
            raise ValueError(
                f"LotteryTicket.set_masks_(): masks missing {missing!r} and unknown {unknown!r}; "
                f"pass one bool mask per target in {expected!r}"
            )
        for t in self._targets:
            m = masks[t.fqn]
            if not isinstance(m, Tensor) or m.dtype != torch.bool:
                raise TypeError(
                    f"LotteryTicket.set_masks_(): masks[{t.fqn!r}] is {getattr(m, 'dtype', type(m).__name__)}; "
                    "pass bool tensors"
                )
            if tuple(m.shape) != t.shape:
                raise ValueError(
                    f"LotteryTicket.set_masks_(): masks[{t.fqn!r}] has shape {tuple(m.shape)}, "
                    f"the tensor has {t.shape}"
                )
        if rewind and self._snapshot is None:
            self.snapshot_()  # nothing entered yet: the current weights are theta_0
        self._install_masks_(masks)
        if rewind:
            self.rewind_()

    # ------------------------------------------------------------------ snapshots and rewinding
    def live_tensors(self, *, buffers: bool = True) -> dict[str, Tensor]:
        """The model's parameters (and buffers) by canonical FQN, live, not copies.

        Each pruning target appears under its own FQN as the Parameter the optimizer updates
        (``<name>_orig`` with the prune backend), so keys match :attr:`masks` and the snapshot.
        """
        live = named_state_tensors(self.model, buffers=buffers)
        for t in self._targets:
            live[t.fqn] = self._backend.parameter(t)
        return live

    def _live(self) -> dict[str, Tensor]:
        return self.live_tensors(buffers=self.restore == "all")

    def _take_snapshot(self) -> dict[str, Tensor]:
        live = self._live()
        if self.restore == "targets":
            keys = self.target_fqns
        else:
            keys = list(live)
        return self._store_snapshot({k: live[k].detach() for k in keys})

    def _store_snapshot(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Copy ``tensors`` to where snapshots live (a device, or a memory-mapped file on disk)."""
        if self.snapshot_device != "disk":
            with torch.no_grad():
                return {k: v.detach().to(self.snapshot_device, copy=True) for k, v in tensors.items()}
        if self.snapshot_dir is None:
            self.snapshot_dir = Path(tempfile.mkdtemp(prefix="torch_lottery-"))
            weakref.finalize(self, shutil.rmtree, str(self.snapshot_dir), True)
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        path = self.snapshot_dir / "rewind.safetensors"
        write_safetensors_streaming(tensors, path)
        stored = mmap_safetensors(path)
        return {k: stored[k] for k in tensors}

    def _take_optim_state(self) -> tuple[Optional[dict[str, Any]], Optional[dict[str, Any]]]:
        opt = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None
        sched = self._scheduler_state() if self.scheduler is not None else None
        return opt, sched

    def _scheduler_state(self) -> dict[str, Any]:
        state = {"scheduler": copy.deepcopy(self.scheduler.state_dict())}
        sched_opt = getattr(self.scheduler, "optimizer", None)
        if sched_opt is not None:
            state["lrs"] = [g.get("lr") for g in sched_opt.param_groups]
            state["initial_lrs"] = [g.get("initial_lr") for g in sched_opt.param_groups]
        return state

    def snapshot_(self) -> None:
        """Take the theta_0 snapshot now (entering the first block does this if it was not done)."""
        self._snapshot = self._take_snapshot()
        self._opt_state, self._sched_state = self._take_optim_state()

    def mark_rewind_point(self) -> None:
        """Make the current state the rewind point (theta_k): weights, optimizer and scheduler."""
        self.snapshot_()
        self._rewind_captured = True
        self._sched_pending = False
        logger.info("rewind point captured after %d optimizer steps", self._steps)

    def _capture_scheduler(self) -> None:
        if self.scheduler is not None:
            self._sched_state = self._scheduler_state()
        self._sched_pending = False

    def rewind_(self) -> None:
        """Reset the model to the rewind point, masks kept, according to ``rewind`` and ``restore``.

        Tensors are written in place (``copy_`` under ``no_grad``), so every Parameter keeps its
        identity and your optimizer stays valid. The optimizer and scheduler given to the ticket
        are restored to their state at the rewind point.
        """
        if self._removed:
            raise RuntimeError("LotteryTicket.rewind_(): remove_() made the pruning permanent; nothing to rewind")
        if self.rewind != "none":
            if self._snapshot is None:
                raise RuntimeError(
                    "LotteryTicket.rewind_(): no snapshot yet; enter a `with ticket:` block (or call "
                    "snapshot_()) before rewinding"
                )
            values = dict(self._snapshot)
            if self.rewind == "reinit":
                values.update(fresh_init(self.model, self._targets, seed=self.seed + self.round))
            live = self._live()
            for key, value in values.items():
                if key not in live or tuple(live[key].shape) != tuple(value.shape):
                    raise RuntimeError(
                        f"LotteryTicket.rewind_(): the model no longer has {key!r} with shape "
                        f"{tuple(value.shape)}; was the model changed after the snapshot?"
                    )
            targets = {t.fqn: t for t in self._targets}
            with torch.no_grad():
                for key, value in values.items():
                    if key in targets:
                        self._backend.load_(targets[key], value)
                    else:
                        live[key].copy_(value)
        if self.optimizer is not None and self._opt_state is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._opt_state))
        if self.scheduler is not None and self._sched_state is not None:
            self.scheduler.load_state_dict(copy.deepcopy(self._sched_state["scheduler"]))
            sched_opt = getattr(self.scheduler, "optimizer", None)
            if sched_opt is not None and "lrs" in self._sched_state:
                for group, lr, initial in zip(
                    sched_opt.param_groups, self._sched_state["lrs"], self._sched_state["initial_lrs"]
                ):
                    group["lr"] = lr
                    if initial is not None:
                        group["initial_lr"] = initial

    def refresh_(self) -> None:
        """Re-apply the masks to the weights after writing to them where the backend cannot see it.

        Needed only after writes that bypass tensor version counters (through ``.data``) with a
        baked backend, or after writing a prune backend's ``*_orig`` outside a forward pass when
        you read ``module.weight`` before the next forward. Every other write (``copy_``,
        ``load_state_dict``, an optimizer step) is handled by the backend itself.
        """
        for t in self._targets:
            self._backend.refresh_(t)

    def remove_(self) -> None:
        """Make the pruning permanent (``prune.remove``): plain Parameters with zeros baked in."""
        for t in self._targets:
            self._backend.remove_(t)
        self._removed = True

    # ------------------------------------------------------------------ late rewinding hooks
    def _owns(self, optimizer: torch.optim.Optimizer) -> bool:
        ids = {id(p) for p in self.model.parameters()}
        return any(id(p) in ids for g in optimizer.param_groups for p in g["params"])

    def _install_step_hooks(self) -> None:
        def post(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if self.optimizer is None and not self._owns(optimizer):
                return
            self._steps += 1
            if not self._rewind_captured and self._steps == self.rewind:
                self._snapshot = self._take_snapshot()
                self._opt_state = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None
                self._rewind_captured = True
                self._sched_pending = self.scheduler is not None
                logger.info("rewind point theta_%d captured", self._steps)

        def pre(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if self._sched_pending and (self.optimizer is None or optimizer is self.optimizer):
                self._capture_scheduler()

        if self.optimizer is not None:
            self._hooks = [self.optimizer.register_step_post_hook(post), self.optimizer.register_step_pre_hook(pre)]
        else:
            from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

            self._hooks = [register_optimizer_step_post_hook(post), register_optimizer_step_pre_hook(pre)]

    def _remove_step_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ------------------------------------------------------------------ resumable state
    def save(
        self, path: Any, *, encoding: str = "compact", include_trained: bool = False,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None:
        """Save this ticket as one safetensors file; see :func:`torch_lottery.ticket_file.save_ticket`."""
        from .ticket_file import save_ticket

        save_ticket(self, path, encoding=encoding, include_trained=include_trained, metadata=metadata)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume an IMP run: settings, round, history, masks, snapshot.

        Save it with ``torch.save`` (or as a ticket file), together with your model and optimizer
        checkpoints. To resume: build the model, build the ticket with the same settings, call
        :meth:`load_state_dict` (this installs the masks, so the model's own pruned
        ``state_dict`` then loads), then load the model's checkpoint.
        """
        return {
            "config": self.config(),
            "round": self.round,
            "history": copy.deepcopy(self.history),
            "masks": {k: v.detach().cpu().clone() for k, v in self.masks.items()},
            "rewind_weights": {k: v.clone() for k, v in (self._snapshot or {}).items()},
            "rewind_captured": self._rewind_captured,
            "steps": self._steps,
            "optimizer_state": copy.deepcopy(self._opt_state),
            "scheduler_state": copy.deepcopy(self._sched_state),
        }

    def load_state_dict(self, state: Mapping[str, Any], *, rewind: bool = False) -> None:
        """Restore what :meth:`state_dict` returned: masks are installed, the snapshot restored.

        Args:
            state: a :meth:`state_dict`.
            rewind: also rewind the model to the restored snapshot (resuming between rounds
                without a model checkpoint); leave ``False`` when you load the model's own
                checkpoint next.

        Raises:
            ValueError: missing keys, targets or settings that differ from this ticket's,
                masks or snapshot tensors of the wrong shape. The model is left unchanged.
        """
        required = ("config", "round", "history", "masks", "rewind_weights")
        missing = [k for k in required if k not in state]
        if missing:
            raise ValueError(f"LotteryTicket.load_state_dict(): state is missing {missing!r}; pass ticket.state_dict()")
        mine, theirs = self.config(), dict(state["config"])
        keys = ("targets", "scope", "rate", "sparsity", "rounds", "rewind", "restore", "layer_rates", "layer_sparsity")
        saved = {k: theirs.get(k, {} if k.startswith("layer_") else None) for k in keys}
        differ = {k: (saved[k], mine[k]) for k in keys if saved[k] != mine[k]}
        if differ:
            raise ValueError(
                f"LotteryTicket.load_state_dict(): settings differ (saved, this ticket): {differ!r}; "
                "build the ticket with LotteryTicket.from_config(model, state['config'])"
            )
        masks = {k: v.to(torch.bool) if isinstance(v, Tensor) else v for k, v in state["masks"].items()}
        for t in self._targets:
            m = masks.get(t.fqn)
            if not isinstance(m, Tensor) or tuple(m.shape) != t.shape:
                raise ValueError(
                    f"LotteryTicket.load_state_dict(): mask for {t.fqn!r} is "
                    f"{tuple(m.shape) if isinstance(m, Tensor) else m!r}, expected shape {t.shape}"
                )
        live = self._live()
        for key, value in state["rewind_weights"].items():
            if key not in live or tuple(live[key].shape) != tuple(value.shape):
                raise ValueError(
                    f"LotteryTicket.load_state_dict(): snapshot tensor {key!r} does not fit this model"
                )
        self._install_masks_(masks)
        self.round = int(state["round"])
        self.history = copy.deepcopy(list(state["history"]))
        self._snapshot = self._store_snapshot(state["rewind_weights"]) or None
        self._rewind_captured = bool(state.get("rewind_captured", True))
        self._steps = int(state.get("steps", 0))
        self._opt_state = copy.deepcopy(state.get("optimizer_state"))
        self._sched_state = copy.deepcopy(state.get("scheduler_state"))
        if rewind:
            self.rewind_()


_CONFIG_KEYS = (
    "sparsity", "rate", "rounds", "scope", "rewind", "targets", "layer_rates", "layer_sparsity",
    "criterion", "restore", "seed", "snapshot_device", "backend",
)
