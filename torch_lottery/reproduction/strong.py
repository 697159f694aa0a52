"""The strong-ticket experiment (Ramanujan et al. 2020): supermasks over untrained random weights against the trained dense net.

``torch-lottery reproduce --experiment strong``. For each seed it trains

* **dense**: the network itself, every weight trained (Adam at the paper's settings), the baseline;
* **kaiming_normal** and **signed_constant** at each sparsity (0.3, 0.5, 0.7 by default): a
  :class:`~torch_lottery.SupermaskTicket` re-initializes the weights (N(0, 2/fan_in), or
  +-sqrt(2/fan_in)), freezes every parameter, and trains only the scores with edge-popup's optimizer
  (SGD, momentum 0.9, weight decay 1e-4, lr 0.1, batch 128, as in the reference code's MNIST FC
  config, but with a constant learning rate). The weights are never trained.

All runs use :func:`~torch_lottery.reproduction.runner.train_run` (validation every ``eval_every``
iterations, early stop at the minimum validation loss, test accuracy there and at the end), and
each finished run is recorded at once, so an interrupted experiment resumes. A run's ``round`` is
its sparsity in percent (0 for dense).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch

from .. import SupermaskTicket, find_targets  # the public API only
from .data import DatasetSplits
from .models import PAPER_SETTINGS
from .report import summarize
from .runner import Progress, SeedRun, evaluate, write_json

__all__ = ["KINDS", "PROFILES", "StrongConfig", "describe", "format_report", "make_config", "planned_runs",
           "plot_runs", "run_seed", "write_outputs"]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

KINDS: tuple[str, ...] = ("dense", "kaiming_normal", "signed_constant")
"""Kinds of run: the trained dense network, then a supermask over each weight initialization."""

PROFILES: dict[str, dict[str, Any]] = {
    # 2 seeds, 2,000 iterations per run (the IMP quick profile's: its dense run is this one's dense
    # run; 4.3 epochs of score training at batch 128).
    "quick": {"iterations": 2000, "seeds": (0, 1)},
    # Longer score training (about 21 epochs at batch 128), 5 seeds.
    "full": {"iterations": 10000, "seeds": (0, 1, 2, 3, 4)},
}


@dataclass(frozen=True)
class StrongConfig:
    """Everything that determines the strong-ticket experiment's numbers (saved as ``config.json``).

    Attributes:
        profile: ``"quick"``, ``"full"``, or either ``+custom``.
        dataset, model: as for the IMP experiment.
        iterations: training iterations of every run (dense and supermask).
        eval_every: validation period in iterations.
        seeds: one experiment per seed (initialization, scores, data order).
        sparsities: fractions of each layer's weights pruned by the supermask.
        weight_inits: the ``SupermaskTicket(weight_init=...)`` values compared.
        batch_size, lr, momentum, weight_decay: the scores' SGD settings (edge-popup's).
        dense_batch_size, dense_lr: the dense network's Adam settings (the paper's).
        validation_size, train_limit: as for the IMP experiment.
    """

    profile: str
    dataset: str
    model: str
    iterations: int
    eval_every: int
    seeds: tuple[int, ...]
    sparsities: tuple[float, ...] = (0.3, 0.5, 0.7)
    weight_inits: tuple[str, ...] = ("kaiming_normal", "signed_constant")
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    dense_batch_size: int = 60
    dense_lr: float = 1.2e-3
    validation_size: int = 5000
    train_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        for key in ("seeds", "sparsities", "weight_inits"):
            d[key] = list(d[key])
        return d


def make_config(
    *,
    profile: str = "quick",
    dataset: str = "fashion-mnist",
    model: str = "lenet",
    iterations: int | None = None,
    seeds: Sequence[int] | None = None,
    eval_every: int = 100,
    train_limit: int | None = None,
) -> StrongConfig:
    """Build a :class:`StrongConfig` from a profile and overrides (an override marks the profile ``+custom``).

    Raises:
        ValueError: unknown profile or model, a non-positive budget, repeated seeds.

    Example:
        >>> make_config().iterations
        2000
    """
    if profile not in PROFILES:
        raise ValueError(f"make_config(): profile={profile!r} is unknown; use one of {list(PROFILES)}")
    if model not in PAPER_SETTINGS:
        raise ValueError(f"make_config(): model={model!r} is unknown; use one of {list(PAPER_SETTINGS)}")
    base = PROFILES[profile]
    overridden = any(v is not None for v in (iterations, seeds, train_limit))
    iterations = iterations if iterations is not None else base["iterations"]
    seeds = tuple(seeds) if seeds is not None else tuple(base["seeds"])
    for name, value in (("iterations", iterations), ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"make_config(): {name}={value!r} must be an int >= 1")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"make_config(): seeds={seeds!r} must be a non-empty list of distinct ints")
    paper = PAPER_SETTINGS[model]
    return StrongConfig(
        profile=f"{profile}+custom" if overridden else profile, dataset=dataset, model=model,
        iterations=iterations, eval_every=eval_every, seeds=seeds,
        dense_batch_size=paper.batch_size, dense_lr=paper.lr, train_limit=train_limit,
    )


def describe(config: StrongConfig) -> list[str]:
    """Lines saying what ``config`` runs (printed before it starts)."""
    return [
        f"{config.iterations} iterations/run; scores: SGD lr {config.lr:g}, momentum {config.momentum:g}, "
        f"weight decay {config.weight_decay:g}, batch {config.batch_size}; dense: Adam lr {config.dense_lr:g}, "
        f"batch {config.dense_batch_size}",
        f"sparsities {list(config.sparsities)}, weight inits {list(config.weight_inits)}, seeds {list(config.seeds)}",
    ]


def planned_runs(config: StrongConfig) -> list[tuple[int, str, int]]:
    """Every ``(seed, kind, round)`` trained, in execution order; ``round`` is the sparsity in percent.

    Example:
        >>> planned_runs(make_config(seeds=[0]))[:3]
        [(0, 'dense', 0), (0, 'kaiming_normal', 30), (0, 'kaiming_normal', 50)]
    """
    plan = []
    for seed in config.seeds:
        plan.append((seed, "dense", 0))
        for init in config.weight_inits:
            plan += [(seed, init, _percent(s)) for s in config.sparsities]
    return plan


def _percent(sparsity: float) -> int:
    return int(round(100 * sparsity))


def run_seed(config: StrongConfig, data: DatasetSplits, out_dir: Path, seed: int, *,
             progress: Progress | None = None, backend: str = "prune") -> None:
    """Every planned run of one seed not yet recorded in ``out_dir`` (see the module docstring)."""
    run = SeedRun(config, data, out_dir, seed, progress=progress, backend=backend)
    if run.pending("dense", 0):
        model = run.new_model()
        ones = {t.fqn: torch.ones(t.shape, dtype=torch.bool) for t in find_targets(model)}
        result = run.train(model, 0, batch_size=config.dense_batch_size, lr=config.dense_lr)
        run.record("dense", 0, ones, result)
    for init in config.weight_inits:
        for sparsity in config.sparsities:
            if not run.pending(init, _percent(sparsity)):
                continue
            model = run.new_model()
            ticket = SupermaskTicket(model, sparsity=sparsity, weight_init=init, seed=seed, backend=backend)

            def sgd(params: list[torch.Tensor]) -> torch.optim.Optimizer:
                return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                       weight_decay=config.weight_decay)

            with ticket:  # every supermask sees the data order of "round" 1, the dense network that of 0
                result = run.train(model, 1, parameters=ticket.parameters(), optimizer=sgd)
            # the installed mask is the one the last forward used: the same test accuracy, checked
            _, installed = evaluate(model, data.test)
            if installed != result["test_acc_end"]:
                raise RuntimeError(
                    f"strong experiment: the installed supermask scores {installed:.4f} on the test set, the "
                    f"trained scores gave {result['test_acc_end']:.4f}; the mask was not installed as trained"
                )
            run.record(init, _percent(sparsity), ticket.masks, result)


def format_table(summary: Sequence[Mapping[str, Any]], config: StrongConfig) -> str:
    """Markdown: per sparsity, test accuracy (early stop / end) of each weight init, and the dense network."""
    by = {(r["kind"], r["round"]): r for r in summary}
    head = ["weights pruned", "weights kept %"]
    for init in config.weight_inits:
        head += [f"{init} acc@ES %", f"{init} acc@end %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def acc(row: Mapping[str, Any] | None, metric: str) -> str:
        if row is None:
            return ""
        return f"{100 * row[f'{metric}_mean']:.2f} ± {100 * row[f'{metric}_std']:.2f}"

    dense = by.get(("dense", 0))
    if dense is not None:
        cells = ["dense, trained", "100.0"]
        for _ in config.weight_inits:
            cells += [acc(dense, "test_acc_early_stop"), acc(dense, "test_acc_end")]
        lines.append("| " + " | ".join(cells) + " |")
    for sparsity in config.sparsities:
        rows = [by.get((init, _percent(sparsity))) for init in config.weight_inits]
        if not any(rows):
            continue
        kept = next(r for r in rows if r)["weights_remaining_mean"]
        cells = [f"{100 * sparsity:.0f}% (supermask, untrained weights)", f"{100 * kept:.1f}"]
        for row in rows:
            cells += [acc(row, "test_acc_early_stop"), acc(row, "test_acc_end")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_report(runs: Sequence[Mapping[str, Any]], config: StrongConfig) -> str:
    """The table of :func:`format_table` over ``runs`` with its legend (what the CLI prints)."""
    return (format_table(summarize(runs, kinds=KINDS), config)
            + "\n(mean ± sample std over seeds; ES = early stop at the minimum validation loss; the dense row "
            "repeats under each init)")


def write_outputs(runs: Sequence[Mapping[str, Any]], config: StrongConfig, out_dir: PathLike) -> dict[str, Path]:
    """Write ``results.json`` (config, runs, summary) and ``table.md``; return name -> path."""
    out_dir = Path(out_dir)
    summary = summarize(runs, kinds=KINDS)
    paths = {"results.json": out_dir / "results.json", "table.md": out_dir / "table.md"}
    write_json(paths["results.json"], {"config": config.to_dict(), "runs": list(runs), "summary": summary})
    paths["table.md"].write_text(format_table(summary, config) + "\n")
    return paths


def plot_runs(runs: Sequence[Mapping[str, Any]], config: StrongConfig, out_dir: PathLike) -> dict[str, Path]:
    """``strong.png``: test accuracy at early stop against weights pruned, per init, the dense net as a line.

    Raises:
        ModuleNotFoundError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("plot_runs(): matplotlib is required; pip install torch_lottery[plot]") from exc
    summary = summarize(runs, kinds=KINDS)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    style = {"kaiming_normal": ("tab:orange", "o"), "signed_constant": ("tab:blue", "s")}
    for init in config.weight_inits:
        rows = sorted((r for r in summary if r["kind"] == init), key=lambda r: r["round"])
        if not rows:
            continue
        color, marker = style.get(init, ("tab:gray", "^"))
        ax.errorbar([r["round"] for r in rows], [100 * r["test_acc_early_stop_mean"] for r in rows],
                    yerr=[[100 * (r["test_acc_early_stop_mean"] - r["test_acc_early_stop_min"]) for r in rows],
                          [100 * (r["test_acc_early_stop_max"] - r["test_acc_early_stop_mean"]) for r in rows]],
                    label=f"supermask, {init.replace('_', ' ')} weights (untrained)", color=color, marker=marker,
                    capsize=3)
    dense = [r for r in summary if r["kind"] == "dense"]
    if dense:
        ax.axhline(100 * dense[0]["test_acc_early_stop_mean"], color="black", linestyle="--",
                   label="dense network, weights trained")
    ax.set_xlabel("weights pruned by the supermask (%)")
    ax.set_ylabel("test accuracy at early stop (%)")
    ax.set_title(f"{config.model} on {config.dataset}, profile {config.profile}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "strong.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"strong.png": path}
