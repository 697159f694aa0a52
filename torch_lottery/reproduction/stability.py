"""The stability experiment: instability of the dense network and of IMP tickets per rewind point k (Frankle et al., 2020).

For each seed and each rewind point ``k`` of ``config.rewind_points``, with ``T = config.iterations``:

* **dense**: theta_k is the dense network after ``k`` iterations of one training run from
  theta_0. Two copies are trained from theta_k to iteration ``T``, each on its own data order, and
  :func:`torch_lottery.instability` measures the test-error barrier on the linear path between
  them (``config.points`` points).
* **tickets**: IMP with rewinding to theta_k reaches each fraction of ``config.remaining`` in
  turn, in two rounds of global magnitude pruning per stage (``1 - sqrt(r_i / r_{i-1})`` of the
  survivors per round). Every IMP round trains from theta_k to iteration ``T``. The first round's
  training is the dense run from theta_0, shared by every ``k`` and done once. At each stage two
  copies are spawned from theta_k with the ticket's mask in force (:func:`torch_lottery.spawn_copies`),
  trained to ``T`` on their own data orders, and their barrier is measured the same way.

Training is the reproduction's loop (:func:`~torch_lottery.reproduction.runner.train_run`: Adam,
the paper's learning rate and batch size). Each measurement is written to
``<out_dir>/runs/seed<s>-<kind>-r<k>.json`` (``kind``: ``dense`` or ``ticket<percent>``) and the
dense trajectory to ``<out_dir>/state/``; a rerun skips what is finished. The library is used
through its public API only.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..files import atomic_write
from .data import DatasetSplits
from .models import PAPER_SETTINGS
from .runner import Progress, SeedRun, evaluate, load_tensors, run_key, save_tensors, write_json

__all__ = [
    "StabilityConfig",
    "describe",
    "format_report",
    "make_config",
    "planned_runs",
    "plot",
    "run_seed",
    "summarize",
    "write_outputs",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


@dataclass(frozen=True)
class StabilityConfig:
    """Everything that determines the stability experiment's numbers (saved as ``config.json``).

    Attributes:
        profile: ``"quick"`` or ``"full"`` (``"+custom"`` when overridden); informational.
        dataset, model: names for ``load_dataset`` and ``build_model``.
        iterations: ``T``, the iteration every network trains to (copies from theta_k train ``T - k``).
        rewind_points: the ``k`` values; each must be below ``iterations``.
        remaining: the tickets' fractions of weights remaining, decreasing.
        points: alphas on each linear path (30 in the paper).
        seeds: one experiment per seed (initialization and data orders).
        batch_size, lr: Adam training settings (the paper's for ``model``).
        validation_size, train_limit: data split settings (``train_limit`` for smoke tests).

    Example:
        >>> make_config().rewind_points
        (0, 100, 500, 2000)
    """

    profile: str
    dataset: str
    model: str
    iterations: int
    rewind_points: tuple[int, ...]
    remaining: tuple[float, ...]
    points: int
    seeds: tuple[int, ...]
    batch_size: int
    lr: float
    validation_size: int = 5000
    train_limit: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        for key in ("rewind_points", "remaining", "seeds"):
            d[key] = list(d[key])
        return d

    @property
    def kinds(self) -> list[str]:
        """``"dense"`` then ``"ticket<percent>"`` per fraction of ``remaining``, in report order."""
        return ["dense"] + [f"ticket{100 * r:g}" for r in self.remaining]


# quick: ~10 minutes of LeNet on one idle CPU core (T = 3,000 iterations, 3.3 epochs, one seed);
# full: Frankle et al. (2020) train LeNet for 24,000 iterations; three seeds.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"iterations": 3000, "seeds": (0,)},
    "full": {"iterations": 24_000, "seeds": (0, 1, 2)},
}


def make_config(
    *,
    profile: str = "quick",
    dataset: str = "fashion-mnist",
    model: str = "lenet",
    iterations: Optional[int] = None,
    seeds: Optional[Sequence[int]] = None,
    train_limit: Optional[int] = None,
    rewind_points: Sequence[int] = (0, 100, 500, 2000),
    remaining: Sequence[float] = (0.2, 0.05),
    points: int = 30,
) -> StabilityConfig:
    """Build a :class:`StabilityConfig` from a profile and overrides (``profile`` becomes ``"<profile>+custom"``).

    Raises:
        ValueError: unknown profile or model, a rewind point not below ``iterations``, fractions
            that are not decreasing in (0, 1), ``points`` < 2, or bad seeds.
    """
    if profile not in PROFILES:
        raise ValueError(f"make_config(): profile={profile!r} is unknown; use one of {list(PROFILES)}")
    if model not in PAPER_SETTINGS:
        raise ValueError(f"make_config(): model={model!r} is unknown; use one of {list(PAPER_SETTINGS)}")
    base = PROFILES[profile]
    overridden = any(v is not None for v in (iterations, seeds, train_limit)) or (
        tuple(rewind_points) != (0, 100, 500, 2000) or tuple(remaining) != (0.2, 0.05) or points != 30
    )
    iterations = base["iterations"] if iterations is None else iterations
    seeds = tuple(base["seeds"]) if seeds is None else tuple(seeds)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 2:
        raise ValueError(f"make_config(): iterations={iterations!r} must be an int >= 2")
    ks = tuple(rewind_points)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < iterations for k in ks) \
            or len(set(ks)) != len(ks):
        raise ValueError(
            f"make_config(): rewind_points={list(ks)!r} must be distinct ints in [0, iterations={iterations}); "
            "the copies train from k to iterations"
        )
    fractions = tuple(float(r) for r in remaining)
    if not fractions or any(not 0.0 < r < 1.0 for r in fractions) or list(fractions) != sorted(set(fractions), reverse=True):
        raise ValueError(f"make_config(): remaining={list(remaining)!r} must be decreasing fractions in (0, 1), e.g. [0.2, 0.05]")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"make_config(): points={points!r} must be an int >= 2")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"make_config(): seeds={list(seeds)!r} must be a non-empty list of distinct ints")
    paper = PAPER_SETTINGS[model]
    return StabilityConfig(
        profile=f"{profile}+custom" if overridden else profile, dataset=dataset, model=model,
        iterations=iterations, rewind_points=ks, remaining=fractions, points=points, seeds=seeds,
        batch_size=paper.batch_size, lr=paper.lr, train_limit=train_limit,
    )


def describe(config: StabilityConfig) -> list[str]:
    """Lines saying what ``config`` runs (the CLI prints them before starting)."""
    return [
        f"every network trains to iteration {config.iterations} (Frankle et al. 2020: 24000 for LeNet), "
        f"batch {config.batch_size}, Adam lr {config.lr:g}",
        f"rewind points k {list(config.rewind_points)}; dense and IMP tickets at "
        f"{[f'{100 * r:g}%' for r in config.remaining]} of the weights; {config.points} points per path; "
        f"seeds {list(config.seeds)}",
    ]


def planned_runs(config: StabilityConfig) -> list[tuple[int, str, int]]:
    """Every ``(seed, kind, k)`` measured, in execution order."""
    return [(seed, kind, k) for seed in config.seeds for k in config.rewind_points for kind in config.kinds]


# ----------------------------------------------------------------------------- running


def _state(model: nn.Module) -> dict[str, Tensor]:
    from ..targets import named_state_tensors

    return {k: v.detach().clone() for k, v in named_state_tensors(model).items()}


def _load_(model: nn.Module, weights: Mapping[str, Tensor]) -> None:
    from ..targets import named_state_tensors

    live = named_state_tensors(model)
    with torch.no_grad():
        for k, v in weights.items():
            live[k].copy_(v)


def _trajectory(run: SeedRun) -> dict[str, Any]:
    """theta_k for every rewind point and the trained dense weights theta_T: one run from theta_0, saved."""
    config, seed, path = run.config, run.seed, run.path("trajectory")
    if path.is_file():
        return load_tensors(path)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    model = run.new_model()
    thetas = {0: _state(model)}
    steps = [0]

    def capture(optimizer: Any, args: Any, kwargs: Any) -> None:
        steps[0] += 1
        if steps[0] in config.rewind_points:
            thetas[steps[0]] = _state(model)

    handle = register_optimizer_step_post_hook(capture)
    try:
        result = run.train(model, 0, eval_every=config.iterations, progress=None)
    finally:
        handle.remove()
    trajectory = {"thetas": {str(k): v for k, v in thetas.items()}, "trained": _state(model)}
    save_tensors(path, trajectory)
    logger.info("seed %d: dense run to %d iterations, test accuracy %.4f", seed, config.iterations,
                result["test_acc_end"])
    return trajectory


class _Seed(SeedRun):
    """One seed's measurements: the shared setup, plus spawning, measuring and recording."""

    def __init__(self, config: StabilityConfig, data: DatasetSplits, out_dir: Path, seed: int, *,
                 progress: Optional[Progress], backend: str) -> None:
        super().__init__(config, data, out_dir, seed, progress=progress, backend=backend)
        self.copy_seeds = (self.data_seed(1), self.data_seed(2))

    def train_from(self, model: nn.Module, data_seed: int, k: int) -> None:
        """Train ``model`` from iteration ``k`` to ``T`` on the data order of ``data_seed``."""
        length = self.config.iterations - k
        self.train(model, 0, iterations=length, eval_every=length, seed=data_seed, progress=None)

    def test_error(self, model: nn.Module) -> float:
        return 1.0 - evaluate(model, self.data.test)[1]

    def measure(self, kind: str, k: int, model: nn.Module, start: Mapping[str, Tensor],
                masks: Optional[Mapping[str, Tensor]]) -> None:
        from .. import instability, spawn_copies  # the public API only

        t0 = time.perf_counter()
        a, b = spawn_copies(model, start, lambda m, s: self.train_from(m, s, k), seeds=self.copy_seeds, masks=masks)
        result = instability(model, a, b, self.test_error, points=self.config.points, masks=masks)
        kept = sum(int(m.sum()) for m in masks.values()) if masks else None
        total = sum(m.numel() for m in masks.values()) if masks else None
        record = {"seed": self.seed, "kind": kind, "round": k, "rewind_step": k,
                  "train_iterations": self.config.iterations - k,
                  "weights_remaining": kept / total if masks else 1.0, "remaining": kept, "total": total,
                  "alphas": list(result.alphas), "errors": list(result.values), "barrier": result.barrier,
                  "error_a": result.values[0], "error_b": result.values[-1], "seconds": time.perf_counter() - t0}
        (self.out_dir / "runs").mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / "runs" / f"{run_key(self.seed, kind, k)}.json", record)
        self.done.add(run_key(self.seed, kind, k))
        if self.progress is not None:
            self.progress(self.config.iterations)
        logger.info("seed %d k=%5d %-10s barrier %.4f (test error %.4f, %.4f)", self.seed, k, kind,
                    result.barrier, result.values[0], result.values[-1])

    def rewind_point(self, k: int, trajectory: Mapping[str, Any]) -> None:
        from .. import LotteryTicket  # the public API only

        theta_k, trained = trajectory["thetas"][str(k)], trajectory["trained"]
        if run_key(self.seed, "dense", k) not in self.done:
            self.measure("dense", k, self.new_model(), theta_k, None)
        model = self.new_model()
        _load_(model, theta_k)
        previous, masks, first, order = 1.0, None, True, 10
        for remaining, kind in zip(self.config.remaining, self.config.kinds[1:]):
            ticket = LotteryTicket(model, rate=1.0 - math.sqrt(remaining / previous), rounds=2, scope="global",
                                   backend=self.backend)
            if masks is not None:
                ticket.set_masks_(masks, rewind=False)
            ticket.snapshot_()  # theta_k (masked after the first stage): the rewind point
            for _ in range(2):
                with ticket:
                    if first:  # IMP's first round trains the dense network from theta_0: done once
                        _load_(model, trained)
                        first = False
                    else:
                        order += 1
                        self.train_from(model, self.data_seed(order), k)
            masks, previous = ticket.masks, remaining
            if run_key(self.seed, kind, k) not in self.done:
                self.measure(kind, k, model, ticket.rewind_weights, masks)


def run_seed(config: StabilityConfig, data: DatasetSplits, out_dir: Path, seed: int, *,
             progress: Optional[Progress] = None, backend: str = "prune") -> None:
    """Every measurement of one seed not yet in ``out_dir`` (see the module docstring)."""
    work = _Seed(config, data, Path(out_dir), seed, progress=progress, backend=backend)
    trajectory = None
    for k in config.rewind_points:
        if all(run_key(seed, kind, k) in work.done for kind in config.kinds):
            continue
        if trajectory is None:
            trajectory = _trajectory(work)
        work.rewind_point(k, trajectory)


# ----------------------------------------------------------------------------- report


def summarize(runs: Sequence[Mapping[str, Any]], config: StabilityConfig) -> list[dict[str, Any]]:
    """One row per ``(kind, k)``: barrier (mean, sample std over seeds), endpoint error, mean error curve."""
    rows = []
    for kind in config.kinds:
        for k in config.rewind_points:
            group = [r for r in runs if r["kind"] == kind and r["round"] == k]
            if not group:
                continue
            barriers = [float(g["barrier"]) for g in group]
            rows.append({
                "kind": kind, "rewind_step": k, "seeds": len(group),
                "weights_remaining": group[0]["weights_remaining"],
                "barrier_mean": statistics.fmean(barriers),
                "barrier_std": statistics.stdev(barriers) if len(barriers) > 1 else 0.0,
                "endpoint_error_mean": statistics.fmean((g["error_a"] + g["error_b"]) / 2 for g in group),
                "alphas": list(group[0]["alphas"]),
                "curve_mean": [statistics.fmean(v) for v in zip(*[g["errors"] for g in group])],
            })
    return rows


def _label(kind: str) -> str:
    return "dense" if kind == "dense" else f"{kind[len('ticket'):]}% ticket"


def format_report(runs: Sequence[Mapping[str, Any]], config: StabilityConfig) -> str:
    """A Markdown table: per rewind point k, each network's barrier and mean endpoint test error (percent)."""
    rows = {(r["kind"], r["rewind_step"]): r for r in summarize(runs, config)}
    head = ["k"] + [f"{_label(kind)} {what}" for kind in config.kinds for what in ("barrier (pp)", "error %")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in config.rewind_points:
        cells = [str(k)]
        for kind in config.kinds:
            row = rows.get((kind, k))
            if row is None:
                cells += ["", ""]
                continue
            spread = f" ± {100 * row['barrier_std']:.2f}" if row["seeds"] > 1 else ""
            cells += [f"{100 * row['barrier_mean']:.2f}{spread}", f"{100 * row['endpoint_error_mean']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = max((r["seeds"] for r in rows.values()), default=0)
    note = "(barrier = max test error on the path minus the endpoints' mean, percentage points"
    note += "; mean ± sample std over seeds)" if seeds > 1 else f"; {seeds} seed)"
    return "\n".join(lines) + "\n" + note


def write_outputs(runs: Sequence[Mapping[str, Any]], config: StabilityConfig, out_dir: PathLike) -> dict[str, Path]:
    """Write ``results.json`` (config, runs, summary) and ``table.md``; return name -> path."""
    out_dir = Path(out_dir)
    paths = {"results.json": out_dir / "results.json", "table.md": out_dir / "table.md"}
    write_json(paths["results.json"], {"config": config.to_dict(), "runs": list(runs),
                                       "summary": summarize(runs, config)}, fn="write_outputs")
    with atomic_write(paths["table.md"], fn="write_outputs") as f:
        f.write((format_report(runs, config) + "\n").encode("utf-8"))
    return paths


def plot(runs: Sequence[Mapping[str, Any]], config: StabilityConfig, out_dir: PathLike) -> dict[str, Path]:
    """``plots/stability.png``: the barrier against k, and the test error along each path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise ModuleNotFoundError("plots need matplotlib: pip install 'torch_lottery[plot]'") from None
    summary = summarize(runs, config)
    fig, axes = plt.subplots(1, 1 + len(config.kinds), figsize=(4.0 * (1 + len(config.kinds)), 3.5))
    for kind in config.kinds:
        rows = {r["rewind_step"]: r for r in summary if r["kind"] == kind}
        xs = [i for i, k in enumerate(config.rewind_points) if k in rows]
        ks = [config.rewind_points[i] for i in xs]
        axes[0].errorbar(xs, [100 * rows[k]["barrier_mean"] for k in ks], yerr=[100 * rows[k]["barrier_std"] for k in ks],
                         marker="o", capsize=3, label=_label(kind))
    axes[0].set_xticks(range(len(config.rewind_points)), [str(k) for k in config.rewind_points])
    axes[0].set_xlabel("rewind point k (iterations)")
    axes[0].set_ylabel("instability (error barrier, pp)")
    axes[0].axhline(0.0, color="grey", lw=0.5)
    axes[0].legend(fontsize=8)
    for ax, kind in zip(axes[1:], config.kinds):
        for row in (r for r in summary if r["kind"] == kind):
            ax.plot(row["alphas"], [100 * v for v in row["curve_mean"]], label=f"k={row['rewind_step']}")
        ax.set_title(_label(kind), fontsize=10)
        ax.set_xlabel("alpha (copy A -> copy B)")
        ax.set_ylabel("test error %")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "plots" / "stability.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"stability.png": path}


def add_arguments(parser: Any) -> None:
    """The experiment's own flags: ``--rewind-points``, ``--remaining``, ``--points``."""
    parser.add_argument("--rewind-points", type=lambda s: tuple(int(v) for v in s.split(",") if v),
                        default=(0, 100, 500, 2000), help="stability: rewind points k, comma-separated (0,100,500,2000)")
    parser.add_argument("--remaining", type=lambda s: tuple(float(v) for v in s.split(",") if v), default=(0.2, 0.05),
                        help="stability: the tickets' fractions of weights remaining (0.2,0.05)")
    parser.add_argument("--points", type=int, default=30, help="stability: alphas on each linear path (30)")
