"""The settings of the IMP reproduction: :class:`ReproConfig`, the two budget profiles and the kinds of run.

Everything that determines the experiment's numbers is in one frozen :class:`ReproConfig`, saved as
``config.json`` in the output directory (a rerun with another configuration there is refused).
:func:`make_config` builds one from a profile (``"quick"`` or ``"full"``), the paper's settings of
the model (:data:`torch_lottery.reproduction.models.PAPER_SETTINGS`) and explicit overrides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from .models import PAPER_SETTINGS

__all__ = ["KINDS", "PROFILES", "ReproConfig", "describe", "make_config"]

KINDS: tuple[str, ...] = ("ticket", "reinit", "random", "oneshot")
"""Kinds of training run of the IMP experiment, in report order (see :mod:`torch_lottery.reproduction.imp`)."""


@dataclass(frozen=True)
class ReproConfig:
    """Everything that determines the experiment's numbers (saved as ``config.json`` in the output dir).

    Attributes:
        profile: ``"quick"``, ``"full"`` or ``"custom"``; informational.
        dataset, model: names for :func:`torch_lottery.reproduction.data.load_dataset` and
            :func:`torch_lottery.reproduction.models.build_model`.
        iterations: training iterations (minibatches) of every run.
        eval_every: validation period in iterations (100 in the paper).
        rounds: iterative pruning rounds; rounds ``0..rounds`` are trained (round 0 is dense).
        seeds: one full experiment per seed (initialization, data order, random controls).
        controls: which of ``"reinit"``, ``"random"`` run at every pruned round.
        oneshot_rounds: rounds at which a one-shot pruned network is trained for comparison.
        batch_size, lr: Adam training settings.
        validation_size: training images held out for validation.
        train_limit: use only this many training images (smoke tests); ``None`` = all.

    Example:
        >>> make_config(rounds=2).to_dict()["oneshot_rounds"]
        []
    """

    profile: str
    dataset: str
    model: str
    iterations: int
    eval_every: int
    rounds: int
    seeds: tuple[int, ...]
    controls: tuple[str, ...]
    oneshot_rounds: tuple[int, ...]
    batch_size: int
    lr: float
    validation_size: int = 5000
    train_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        for key in ("seeds", "controls", "oneshot_rounds"):
            d[key] = list(d[key])
        return d


# Budgets of the two profiles; everything else comes from the paper (models.PAPER_SETTINGS).
PROFILES: dict[str, dict[str, Any]] = {
    # ~10 minutes of LeNet on 2 CPU cores: short training (2,000 iterations = 2.2 epochs instead of
    # the paper's 50,000), 2 seeds, 8 rounds (down to ~17% of weights), one-shot at rounds 4 and 8.
    "quick": {"iterations": 2000, "rounds": 8, "seeds": (0, 1), "oneshot_every": 4},
    # The paper's budget: its iteration count per network, 5 seeds, pruned to ~2-3% of weights.
    "full": {"iterations": None, "rounds": 16, "seeds": (0, 1, 2, 3, 4), "oneshot_every": 1},
}


def make_config(
    *,
    profile: str = "quick",
    dataset: str = "fashion-mnist",
    model: str = "lenet",
    iterations: int | None = None,
    rounds: int | None = None,
    seeds: Sequence[int] | None = None,
    eval_every: int = 100,
    controls: Sequence[str] = ("reinit", "random"),
    oneshot_every: int | None = None,
    train_limit: int | None = None,
) -> ReproConfig:
    """Build a :class:`ReproConfig` from a profile, the paper's settings for ``model``, and overrides.

    Any explicit argument overrides the profile; if one does, ``profile`` is reported as
    ``"<profile>+custom"`` so outputs never claim a budget they did not run. ``oneshot_every=0``
    disables the one-shot comparison.

    Raises:
        ValueError: unknown profile, model or control, or a non-positive budget.

    Example:
        >>> make_config(profile="quick").iterations
        2000
    """
    if profile not in PROFILES:
        raise ValueError(f"make_config(): profile={profile!r} is unknown; use one of {list(PROFILES)}")
    if model not in PAPER_SETTINGS:
        raise ValueError(f"make_config(): model={model!r} is unknown; use one of {list(PAPER_SETTINGS)}")
    bad = [c for c in controls if c not in ("reinit", "random")]
    if bad:
        raise ValueError(f"make_config(): controls={list(controls)!r} has unknown {bad!r}; use 'reinit' and/or 'random'")
    base = PROFILES[profile]
    paper = PAPER_SETTINGS[model]
    overridden = any(v is not None for v in (iterations, rounds, seeds, oneshot_every, train_limit)) or (
        tuple(controls) != ("reinit", "random")
    )
    iterations = iterations if iterations is not None else (base["iterations"] or paper.iterations)
    rounds = rounds if rounds is not None else base["rounds"]
    seeds = tuple(seeds) if seeds is not None else tuple(base["seeds"])
    oneshot_every = oneshot_every if oneshot_every is not None else base["oneshot_every"]
    for name, value, low in (("iterations", iterations, 1), ("rounds", rounds, 0), ("eval_every", eval_every, 1),
                             ("oneshot_every", oneshot_every, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"make_config(): {name}={value!r} must be an int >= {low}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"make_config(): seeds={seeds!r} must be a non-empty list of distinct ints")
    oneshot_rounds = tuple(range(oneshot_every, rounds + 1, oneshot_every)) if oneshot_every else ()
    return ReproConfig(
        profile=f"{profile}+custom" if overridden else profile,
        dataset=dataset,
        model=model,
        iterations=iterations,
        eval_every=eval_every,
        rounds=rounds,
        seeds=seeds,
        controls=tuple(controls),
        oneshot_rounds=oneshot_rounds,
        batch_size=paper.batch_size,
        lr=paper.lr,
        train_limit=train_limit,
    )


def describe(config: ReproConfig) -> list[str]:
    """Lines saying what ``config`` runs, against the paper's budget (the CLI prints them before starting).

    Example:
        >>> describe(make_config())[0]
        '2000 iterations/run (paper: 50000), batch 60, Adam lr 0.0012, validation every 100'
    """
    paper_iterations = PAPER_SETTINGS[config.model].iterations
    return [
        f"{config.iterations} iterations/run (paper: {paper_iterations}), batch {config.batch_size}, "
        f"Adam lr {config.lr:g}, validation every {config.eval_every}",
        f"{config.rounds} pruning rounds, seeds {list(config.seeds)}, controls {list(config.controls)}, "
        f"one-shot at rounds {list(config.oneshot_rounds)}",
    ]
