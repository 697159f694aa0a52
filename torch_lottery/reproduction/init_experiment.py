"""The pruning-at-initialization experiment: accuracy against weights remaining for SNIP, GraSP, SynFlow, magnitude and random masks at init, and IMP.

``torch-lottery reproduce --experiment init``. For each seed and each density level
``d_r = final ** (r / levels)`` (``r = 1..levels``; the default runs 51.6%, 26.6%, 13.7%, 7.1%, 3.6%,
1.9%, 0.97% and 0.5% of the weights) it trains, on the same minibatch order:

* ``snip``, ``grasp``, ``synflow``, ``magnitude``: :func:`torch_lottery.prune_at_init` on the
  network's theta_0, weights ranked globally (SynFlow iterated 100 rounds, data-free; SNIP and
  GraSP scored on ``prune_batches`` training batches);
* ``random-<rule>``: random masks with the per-layer densities of each rule of
  :func:`torch_lottery.layer_densities` (uniform, ERK, ER, smart-ratio, balanced, pyramidal);
* ``<method>-shuffle``: Frankle et al. (2021)'s ablation, each layer's mask randomly permuted
  (same per-layer counts), at ``shuffle_levels``;
* ``imp``: iterative magnitude pruning with rewinding to theta_0 (``LotteryTicket`` with
  ``sparsity=1 - final`` over ``levels`` rounds, ranked globally), whose round ``r`` has exactly
  the density ``d_r``; its round 0 is the dense network.

Training is :func:`~torch_lottery.reproduction.runner.train_run` (Adam, the paper's batch size
and learning rate), each run recorded as it finishes with its per-layer counts, so a layer with
no weight left (*layer collapse*) is visible in the records, the table and the plot. Runs resume
like the IMP experiment's.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from .. import DENSITY_RULES, LotteryTicket, prune_at_init  # the public API only
from ..files import atomic_write
from .data import DatasetSplits
from .models import PAPER_SETTINGS
from .report import summarize
from .runner import Progress, SeedRun, load_tensors, save_tensors, write_json

__all__ = [
    "INIT_PROFILES",
    "InitConfig",
    "add_init_arguments",
    "describe_init",
    "format_init_report",
    "make_init_config",
    "plan_kinds",
    "plot_init",
    "planned_init_runs",
    "run_init_seed",
    "write_init_outputs",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

SCORED = ("snip", "grasp", "synflow", "magnitude")
"""The scoring methods of the experiment (``prune_at_init`` with global ranking)."""

INIT_PROFILES: dict[str, dict[str, Any]] = {
    # About 10 minutes on 2 CPU cores: 600 iterations (0.7 epoch) per run, 2 seeds (one per core),
    # 8 density levels from 51.6% to 0.5%, the shuffle ablation at every other level.
    "quick": {"iterations": 600, "seeds": (0, 1), "shuffle_every": 2},
    # The paper's iteration count for LeNet (50,000), 3 seeds, the shuffle ablation at every level.
    "full": {"iterations": None, "seeds": (0, 1, 2), "shuffle_every": 1},
}


@dataclass(frozen=True)
class InitConfig:
    """Everything that determines the numbers of ``--experiment init`` (saved as ``config.json``).

    Attributes:
        profile: ``"quick"``, ``"full"`` or ``"<profile>+custom"``; informational.
        dataset, model: names for ``load_dataset`` and ``build_model``.
        iterations, eval_every, batch_size, lr: every run's training (Adam).
        seeds: one full experiment per seed.
        levels: the density levels, densest first.
        shuffle_levels: the level indices (1-based) with the shuffle ablation.
        synflow_iterations: SynFlow's rounds.
        prune_batches, prune_batch_size: the training batches SNIP and GraSP score on.
        validation_size, train_limit: data settings (``train_limit`` for smoke tests).
    """

    profile: str
    dataset: str
    model: str
    iterations: int
    eval_every: int
    seeds: tuple[int, ...]
    levels: tuple[float, ...]
    shuffle_levels: tuple[int, ...]
    batch_size: int
    lr: float
    synflow_iterations: int = 100
    prune_batches: int = 4
    prune_batch_size: int = 256
    validation_size: int = 5000
    train_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        for key in ("seeds", "levels", "shuffle_levels"):
            d[key] = list(d[key])
        return d


def make_init_config(
    *,
    profile: str = "quick",
    dataset: str = "fashion-mnist",
    model: str = "lenet",
    iterations: int | None = None,
    seeds: Sequence[int] | None = None,
    eval_every: int = 100,
    train_limit: int | None = None,
    levels: int = 8,
    final_density: float = 0.005,
    shuffle_every: int | None = None,
    synflow_iterations: int = 100,
) -> InitConfig:
    """Build an :class:`InitConfig` from a profile and overrides (an override makes the profile ``"+custom"``).

    Raises:
        ValueError: unknown profile or model, non-positive budgets, ``final_density`` outside (0, 1).

    Example:
        >>> c = make_init_config()
        >>> [round(100 * d, 2) for d in c.levels]
        [51.57, 26.59, 13.71, 7.07, 3.65, 1.88, 0.97, 0.5]
    """
    where = "make_init_config()"
    if profile not in INIT_PROFILES:
        raise ValueError(f"{where}: profile={profile!r} is unknown; use one of {list(INIT_PROFILES)}")
    if model not in PAPER_SETTINGS:
        raise ValueError(f"{where}: model={model!r} is unknown; use one of {list(PAPER_SETTINGS)}")
    if not isinstance(final_density, float) or not 0.0 < final_density < 1.0:
        raise ValueError(f"{where}: final_density={final_density!r} must be a float in (0, 1), such as 0.005")
    base, paper = INIT_PROFILES[profile], PAPER_SETTINGS[model]
    overridden = any(v is not None for v in (iterations, seeds, train_limit, shuffle_every)) or (
        levels != 8 or final_density != 0.005 or synflow_iterations != 100
    )
    iterations = iterations if iterations is not None else (base["iterations"] or paper.iterations)
    seeds = tuple(seeds) if seeds is not None else tuple(base["seeds"])
    shuffle_every = shuffle_every if shuffle_every is not None else base["shuffle_every"]
    for name, value, low in (("iterations", iterations, 1), ("eval_every", eval_every, 1), ("levels", levels, 1),
                             ("shuffle_every", shuffle_every, 0), ("synflow_iterations", synflow_iterations, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{where}: {name}={value!r} must be an int >= {low}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{where}: seeds={seeds!r} must be a non-empty list of distinct ints")
    return InitConfig(
        profile=f"{profile}+custom" if overridden else profile,
        dataset=dataset,
        model=model,
        iterations=iterations,
        eval_every=eval_every,
        seeds=seeds,
        levels=tuple(final_density ** (r / levels) for r in range(1, levels + 1)),
        shuffle_levels=tuple(range(shuffle_every, levels + 1, shuffle_every)) if shuffle_every else (),
        batch_size=paper.batch_size,
        lr=paper.lr,
        synflow_iterations=synflow_iterations,
        train_limit=train_limit,
    )


def add_init_arguments(parser: Any) -> None:
    """The flags of ``--experiment init`` on the ``reproduce`` parser (``--levels``, ``--synflow-iterations``, ``--shuffle-every``)."""
    parser.add_argument("--levels", type=int, default=8,
                        help="--experiment init: density levels from 0.5%%**(1/levels) down to 0.5%% (default 8)")
    parser.add_argument("--synflow-iterations", type=int, default=100,
                        help="--experiment init: SynFlow's pruning rounds (default 100, as in the paper)")
    parser.add_argument("--shuffle-every", type=int, default=None,
                        help="--experiment init: the shuffle ablation at every N-th level (quick: 2, full: 1; 0: none)")


def describe_init(config: InitConfig) -> list[str]:
    """Lines saying what ``config`` runs (printed before it starts)."""
    return [
        f"{config.iterations} iterations/run (paper: {PAPER_SETTINGS[config.model].iterations}), "
        f"batch {config.batch_size}, Adam lr {config.lr:g}, validation every {config.eval_every}",
        "weights remaining: " + ", ".join(f"{100 * d:.2g}%" for d in config.levels) + f"; seeds {list(config.seeds)}",
        f"methods: {', '.join(plan_kinds(config))}; shuffle ablation at levels {list(config.shuffle_levels)}",
    ]


def plan_kinds(config: InitConfig) -> list[str]:
    """Every kind of run, in report order: ``imp``, the scored methods, the random rules, the shuffles."""
    return ["imp", *SCORED, *(f"random-{rule}" for rule in DENSITY_RULES),
            *((f"{m}-shuffle" for m in SCORED) if config.shuffle_levels else ())]


def planned_init_runs(config: InitConfig) -> list[tuple[int, str, int]]:
    """Every ``(seed, kind, level)`` the experiment trains, in execution order (``imp`` level 0 is dense).

    Example:
        >>> c = make_init_config(levels=1, seeds=[0], shuffle_every=0)
        >>> planned_init_runs(c)[:4]
        [(0, 'imp', 0), (0, 'imp', 1), (0, 'snip', 1), (0, 'grasp', 1)]
    """
    plan = []
    for seed in config.seeds:
        plan += [(seed, "imp", r) for r in range(len(config.levels) + 1)]
        for r in range(1, len(config.levels) + 1):
            plan += [(seed, kind, r) for kind in plan_kinds(config)
                     if kind != "imp" and (not kind.endswith("-shuffle") or r in config.shuffle_levels)]
    return plan


# ----------------------------------------------------------------------------- one seed


class _Seed(SeedRun):
    """One seed's runs: the shared setup, plus the data batches the scored methods see."""

    def __init__(self, config: InitConfig, data: DatasetSplits, out_dir: Path, seed: int, *,
                 progress: Progress | None, backend: str) -> None:
        super().__init__(config, data, out_dir, seed, progress=progress, backend=backend)
        generator = torch.Generator().manual_seed(10_007 * seed + 1)
        n = min(len(data.train), config.prune_batches * config.prune_batch_size)
        idx = torch.randperm(len(data.train), generator=generator)[:n]
        self.batches = [(data.train.x[i], data.train.y[i]) for i in idx.split(config.prune_batch_size)]

    def train_and_record(self, kind: str, rnd: int, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        masks = {k: v.clone() for k, v in masks.items()}
        self.record(kind, rnd, masks, self.train(model, rnd))


def run_init_seed(config: InitConfig, data: DatasetSplits, out_dir: Path, seed: int, *,
                  progress: Progress | None = None, backend: str = "prune") -> None:
    """Every planned run of one seed, skipping finished ones (see the module docstring)."""
    run = _Seed(config, data, out_dir, seed, progress=progress, backend=backend)
    _imp(run)
    for r, density in enumerate(config.levels, start=1):
        sparsity = 1.0 - density
        for kind in plan_kinds(config)[1:]:
            if not run.pending(kind, r) or (kind.endswith("-shuffle") and r not in config.shuffle_levels):
                continue
            method, _, variant = kind.partition("-")
            options: dict[str, Any] = {"sparsity": sparsity, "seed": 7919 * seed + r, "backend": backend}
            if method == "random":
                options["density"] = variant
            elif variant == "shuffle":
                options["ablation"] = "shuffle"
            if method in ("snip", "grasp"):
                options["inputs"] = run.batches
            if method == "synflow":
                options.update(input_shape=(1, *data.input_shape), iterations=config.synflow_iterations)
            model = run.new_model()  # theta_0 of this seed
            ticket = prune_at_init(model, method=method, **options)
            run.train_and_record(kind, r, model, ticket.masks)


def _imp(run: _Seed) -> None:
    """IMP to the experiment's levels: round ``r`` trains at density ``levels[r - 1]``, round 0 is dense."""
    levels = run.config.levels
    if not any(run.pending("imp", r) for r in range(len(levels) + 1)):
        return
    model = run.new_model()
    ticket = LotteryTicket(model, sparsity=1.0 - levels[-1], rounds=len(levels), scope="global", rewind="init",
                           seed=run.seed, backend=run.backend)
    state = run.out_dir / "state" / f"seed{run.seed}-imp.pt"
    if state.is_file():
        ticket.load_state_dict(load_tensors(state), rewind=True)
        logger.info("seed %d: resumed IMP after round %d", run.seed, ticket.round)
    while ticket.round <= len(levels):
        rnd = ticket.round
        if rnd == len(levels):  # the last level: train it, nothing more to prune
            if run.pending("imp", rnd):
                run.train_and_record("imp", rnd, model, ticket.masks)
            return
        with ticket:
            masks = {k: v.clone() for k, v in ticket.masks.items()}
            run.train_and_record("imp", rnd, model, masks)
        save_tensors(state, ticket.state_dict())


# ----------------------------------------------------------------------------- report


def _collapsed(run: Mapping[str, Any]) -> list[str]:
    return [fqn for fqn, n in run["remaining_per_layer"].items() if n == 0]


def format_init_report(runs: Sequence[Mapping[str, Any]], config: InitConfig) -> str:
    """A Markdown table: one row per level, one column per kind, test accuracy at the end of training.

    Cells are ``mean ± std`` over seeds in percent; ``†`` marks a cell where some seed's network had a
    layer with no weight left (layer collapse), and the layers are listed under the table.
    """
    kinds = [k for k in plan_kinds(config) if any(r["kind"] == k for r in runs)]
    summary = summarize(runs, kinds=kinds)
    cell = {(row["kind"], row["round"]): row for row in summary}
    collapsed: dict[tuple[str, int], set[str]] = {}
    for r in runs:
        if _collapsed(r):
            collapsed.setdefault((r["kind"], r["round"]), set()).update(_collapsed(r))
    lines = ["| weights remaining | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    dense = cell.get(("imp", 0))
    if dense:
        lines.append(f"| 100% (dense) | {100 * dense['test_acc_end_mean']:.1f} ± {100 * dense['test_acc_end_std']:.1f} |"
                     + " |" * (len(kinds) - 1))
    for r, density in enumerate(config.levels, start=1):
        cells = []
        for kind in kinds:
            row = cell.get((kind, r))
            if row is None:
                cells.append("")
                continue
            mark = " †" if (kind, r) in collapsed else ""
            cells.append(f"{100 * row['test_acc_end_mean']:.1f} ± {100 * row['test_acc_end_std']:.1f}{mark}")
        lines.append(f"| {100 * density:.2g}% | " + " | ".join(cells) + " |")
    if collapsed:
        lines.append("")
        lines.append("† layer collapse (a layer with no weight left): " + "; ".join(
            f"{kind} at {100 * config.levels[r - 1]:.2g}%: {', '.join(sorted(layers))}"
            for (kind, r), layers in sorted(collapsed.items(), key=lambda kv: (kinds.index(kv[0][0]), kv[0][1]))))
    return "\n".join(lines)


def write_init_outputs(runs: Sequence[Mapping[str, Any]], config: InitConfig, out_dir: PathLike) -> dict[str, Path]:
    """Write ``results.json`` (config, runs, summary), ``runs.csv`` and ``table.md``; return their paths.

    Each file is written through :func:`torch_lottery.files.atomic_write`: whole or not at all.
    """
    out_dir = Path(out_dir)
    kinds = [k for k in plan_kinds(config) if any(r["kind"] == k for r in runs)]
    paths = {name: out_dir / name for name in ("results.json", "runs.csv", "table.md")}
    write_json(paths["results.json"], {"config": config.to_dict(), "runs": list(runs),
                                       "summary": summarize(runs, kinds=kinds)}, fn="write_init_outputs")
    columns = ["seed", "kind", "round", "remaining", "total", "weights_remaining", "collapsed_layers",
               "test_acc_early_stop", "test_acc_end", "early_stop_iteration", "seconds"]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in sorted(runs, key=lambda r: (r["seed"], kinds.index(r["kind"]), r["round"])):
        writer.writerow({**r, "collapsed_layers": " ".join(_collapsed(r))})
    for name, text in (("runs.csv", buffer.getvalue()), ("table.md", format_init_report(runs, config) + "\n")):
        with atomic_write(paths[name], fn="write_init_outputs") as f:  # whole or not at all
            f.write(text.encode("utf-8"))
    return paths


_STYLE = {"imp": ("k", "o"), "snip": ("tab:blue", "s"), "grasp": ("tab:orange", "^"), "synflow": ("tab:green", "D"),
          "magnitude": ("tab:purple", "v")}


def plot_init(runs: Sequence[Mapping[str, Any]], config: InitConfig, out_dir: PathLike) -> dict[str, Path]:
    """``init_accuracy.png``: test accuracy against weights remaining; layer collapse marked with a red ``x``.

    Left panel: IMP and the scored methods (solid) with their shuffle ablations (dashed); right
    panel: IMP and random masks under each density rule. matplotlib is imported here only.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise ModuleNotFoundError("plot_init() needs matplotlib: pip install torch_lottery[plot]") from None
    kinds = [k for k in plan_kinds(config) if any(r["kind"] == k for r in runs)]
    summary = summarize(runs, kinds=kinds)
    collapse = {(r["kind"], r["round"]) for r in runs if _collapsed(r)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    panels = [[k for k in kinds if k == "imp" or not k.startswith("random-")],
              [k for k in kinds if k == "imp" or k.startswith("random-")]]
    cmap = plt.get_cmap("tab10")
    for ax, panel in zip(axes, panels):
        for i, kind in enumerate(panel):
            rows = sorted((r for r in summary if r["kind"] == kind and r["round"] > 0), key=lambda r: r["round"])
            x = [100 * r["weights_remaining_mean"] for r in rows]
            y = [100 * r["test_acc_end_mean"] for r in rows]
            err = [100 * r["test_acc_end_std"] for r in rows]
            base = kind.removesuffix("-shuffle")
            color, marker = _STYLE.get(base, (cmap(i % 10), "o"))
            ax.errorbar(x, y, yerr=err, label=kind, color=color, marker=marker, markersize=4, capsize=2,
                        linestyle="--" if kind.endswith("-shuffle") else "-", linewidth=1.3)
            cx = [xi for xi, r in zip(x, rows) if (kind, r["round"]) in collapse]
            cy = [yi for yi, r in zip(y, rows) if (kind, r["round"]) in collapse]
            ax.scatter(cx, cy, marker="x", s=80, color="red", zorder=5)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("percent of weights remaining")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test accuracy at the end of training (%)")
    axes[0].set_title("pruning at init vs IMP (dashed: shuffled masks; red x: layer collapse)", fontsize=9)
    axes[1].set_title("random masks by density rule", fontsize=9)
    fig.suptitle(f"{config.model} on {config.dataset}, {config.iterations} it/run, {len(config.seeds)} seeds", fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / "init_accuracy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"init_accuracy.png": path}
