"""The rewinding experiment: what the survivors restart from after each IMP round (Renda et al. 2020).

Four ways to retrain after each pruning round, over the same IMP rounds (the paper's LeNet rates,
layer-wise), each from the same theta_0, minibatch order and learning-rate schedule (Adam at the
paper's rate, divided by 10 after 50% and again after 75% of ``iterations``; Renda et al.
compare under a step schedule, without one learning-rate rewinding and fine-tuning would be the
same thing):

* **rewind-init**: weight rewinding to theta_0 (``rewind="init"``); weights, optimizer and
  schedule restart from step 0, ``iterations`` a round.
* **rewind-k**: weight rewinding to theta_k, the weights after step ``rewind_step``
  (``rewind=k``); optimizer and schedule restart from step k and retrain ``iterations - k``, so
  that every round ends where the schedule ends (Renda et al.'s weight rewinding).
* **lrr**: learning-rate rewinding: the trained weights are kept (``rewind="none"``), the
  optimizer state and the schedule restart from step 0 (the ticket is given both), ``iterations``
  a round.
* **finetune**: the trained weights are kept and training goes on at the schedule's final (lowest)
  learning rate for ``iterations`` a round, optimizer state carried over (the ticket is given
  neither).

Round 0 (the dense network) is the same training for all four. Every training run is recorded
with its early-stop and end-of-training test accuracy; each ticket's state (with the optimizer
and scheduler state it restores) is kept after every round, so an interrupted experiment resumes.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

from .. import LotteryTicket  # the public API only
from ..files import atomic_write
from .data import DatasetSplits
from .models import PAPER_SETTINGS
from .runner import Progress, SeedRun, load_tensors, save_tensors, write_json

__all__ = [
    "KINDS",
    "PROFILES",
    "RewindingConfig",
    "add_arguments",
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

KINDS: tuple[str, ...] = ("rewind-init", "rewind-k", "lrr", "finetune")
"""Kinds of retraining, in report order (see the module docstring)."""

PROFILES: dict[str, dict[str, Any]] = {
    # ~10 minutes on 2 idle CPU cores: 2,000 iterations a round (with the step schedule), 10 rounds
    # (10.8% of the weights), 2 seeds. theta_k is taken after 10% of a round's iterations unless
    # rewind_step says otherwise.
    "quick": {"iterations": 2000, "rounds": 10, "seeds": (0, 1)},
    # The paper's LeNet budget per round, 5 seeds, 16 rounds.
    "full": {"iterations": None, "rounds": 16, "seeds": (0, 1, 2, 3, 4)},
}


@dataclass(frozen=True)
class RewindingConfig:
    """Everything that determines the rewinding experiment's numbers (saved as ``config.json``).

    Attributes:
        profile, dataset, model, iterations, eval_every, rounds, seeds: as in the IMP experiment.
        rewind_step: k of rewind-k (optimizer steps of the dense round; 10% of ``iterations`` by default).
        milestones: the iterations after which the learning rate is divided by 10.
        batch_size, lr: Adam settings (the paper's).
        validation_size, train_limit: the data split.
    """

    profile: str
    dataset: str
    model: str
    iterations: int
    eval_every: int
    rounds: int
    seeds: tuple[int, ...]
    rewind_step: int
    milestones: tuple[int, ...]
    batch_size: int
    lr: float
    validation_size: int = 5000
    train_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        d = asdict(self)
        d["seeds"], d["milestones"] = list(d["seeds"]), list(d["milestones"])
        return d


def make_config(
    *,
    profile: str = "quick",
    dataset: str = "fashion-mnist",
    model: str = "lenet",
    iterations: int | None = None,
    rounds: int | None = None,
    seeds: Sequence[int] | None = None,
    eval_every: int = 100,
    rewind_step: int | None = None,
    train_limit: int | None = None,
) -> RewindingConfig:
    """Build a :class:`RewindingConfig` from a profile, the paper's settings and overrides.

    Raises:
        ValueError: unknown profile or model, a non-positive budget, ``rewind_step`` not in
            ``[1, iterations)``.

    Example:
        >>> c = make_config()
        >>> c.iterations, c.milestones, c.rewind_step
        (2000, (1000, 1500), 200)
    """
    if profile not in PROFILES:
        raise ValueError(f"make_config(): profile={profile!r} is unknown; use one of {list(PROFILES)}")
    if model not in PAPER_SETTINGS:
        raise ValueError(f"make_config(): model={model!r} is unknown; use one of {list(PAPER_SETTINGS)}")
    base, paper = PROFILES[profile], PAPER_SETTINGS[model]
    default_iterations = base["iterations"] or paper.iterations
    iterations = iterations if iterations is not None else default_iterations
    rounds = rounds if rounds is not None else base["rounds"]
    seeds = tuple(seeds) if seeds is not None else tuple(base["seeds"])
    rewind_step = rewind_step if rewind_step is not None else max(1, iterations // 10)
    # The label says whether the per-seed budget is the profile's; seeds are listed on their own.
    overridden = (iterations, rounds, rewind_step, train_limit) != (
        default_iterations, base["rounds"], max(1, default_iterations // 10), None)
    for name, value, low in (("iterations", iterations, 2), ("rounds", rounds, 1), ("eval_every", eval_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"make_config(): {name}={value!r} must be an int >= {low}")
    if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or not 1 <= rewind_step < iterations:
        raise ValueError(f"make_config(): rewind_step={rewind_step!r} must be an int in [1, iterations={iterations})")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"make_config(): seeds={seeds!r} must be a non-empty list of distinct ints")
    return RewindingConfig(
        profile=f"{profile}+custom" if overridden else profile, dataset=dataset, model=model,
        iterations=iterations, eval_every=eval_every, rounds=rounds, seeds=seeds, rewind_step=rewind_step,
        milestones=(iterations // 2, 3 * iterations // 4), batch_size=paper.batch_size, lr=paper.lr,
        train_limit=train_limit,
    )


def describe(config: RewindingConfig) -> list[str]:
    """Lines saying what ``config`` runs (printed before it starts)."""
    return [
        f"{config.iterations} iterations per round (paper: {PAPER_SETTINGS[config.model].iterations}), batch "
        f"{config.batch_size}, Adam lr {config.lr:g} / 10 after {config.milestones[0]} and again after "
        f"{config.milestones[1]}, validation every {config.eval_every}",
        f"{config.rounds} rounds, seeds {list(config.seeds)}; {', '.join(KINDS)} "
        f"(theta_k: k = {config.rewind_step})",
    ]


def planned_runs(config: RewindingConfig) -> list[tuple[int, str, int]]:
    """Every ``(seed, kind, round)`` trained, in execution order.

    Example:
        >>> planned_runs(make_config(rounds=1, seeds=[0]))[:3]
        [(0, 'rewind-init', 0), (0, 'rewind-init', 1), (0, 'rewind-k', 0)]
    """
    return [(seed, kind, rnd) for seed in config.seeds for kind in KINDS for rnd in range(config.rounds + 1)]


# ----------------------------------------------------------------------------- one seed


def _setup(run: SeedRun, model: nn.Module, kind: str) -> tuple[LotteryTicket, torch.optim.Optimizer, Any]:
    config = run.config
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=0.1)
    rewind = {"rewind-init": "init", "rewind-k": config.rewind_step, "lrr": "none", "finetune": "none"}[kind]
    restores = kind != "finetune"  # fine-tuning: the optimizer and the schedule go on as they are
    ticket = run.layer_ticket(model, rewind=rewind, optimizer=optimizer if restores else None,
                              scheduler=scheduler if restores else None)
    return ticket, optimizer, scheduler


def _kind(run: SeedRun, kind: str) -> None:
    config = run.config
    if not any(run.pending(kind, r) for r in range(config.rounds + 1)):
        return
    model = run.new_model()  # theta_0
    ticket, optimizer, scheduler = _setup(run, model, kind)
    state = run.path(kind)
    if state.is_file():  # resume after the last finished round: masks, weights, optimizer, schedule
        saved = load_tensors(state)
        ticket.load_state_dict(saved["ticket"])
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    for rnd in range(ticket.round, config.rounds + 1):
        iterations = config.iterations
        if kind == "rewind-k" and rnd > 0:
            iterations -= config.rewind_step  # the schedule restarts at step k and ends where it ends
        masks = {k: v.clone() for k, v in ticket.masks.items()}

        def train() -> dict[str, Any]:
            return run.train(model, rnd, iterations=iterations, optimizer=lambda _params: optimizer,
                             scheduler=scheduler)

        if rnd == config.rounds:
            result = train()  # the last round trains without pruning afterwards
        else:
            with ticket:
                result = train()
        result["lr_end"] = optimizer.param_groups[0]["lr"]
        run.record(kind, rnd, masks, result)
        if rnd < config.rounds:
            save_tensors(state, {"ticket": ticket.state_dict(), "model": model.state_dict(),
                                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})


def run_seed(config: RewindingConfig, data: DatasetSplits, out_dir: Path, seed: int, *,
             progress: Progress | None = None, backend: str = "prune") -> None:
    """Every planned run of one seed not yet recorded in ``out_dir`` (see the module docstring)."""
    run = SeedRun(config, data, out_dir, seed, progress=progress, backend=backend)
    for kind in KINDS:
        _kind(run, kind)


# ----------------------------------------------------------------------------- report

_METRICS = ("weights_remaining", "early_stop_iteration", "test_acc_early_stop", "test_acc_end")


def summarize(runs: Sequence[Mapping[str, Any]], config: RewindingConfig) -> list[dict[str, Any]]:
    """One row per ``(kind, round)``: mean, std, min, max over seeds, and the paired difference of
    the end-of-training accuracy to rewind-init's (``delta_end_*``)."""
    by = {(r["seed"], r["kind"], r["round"]): r for r in runs}
    rows = []
    for kind in KINDS:
        for rnd in range(config.rounds + 1):
            group = [by[(s, kind, rnd)] for s in config.seeds if (s, kind, rnd) in by]
            if not group:
                continue
            row: dict[str, Any] = {"kind": kind, "round": rnd, "seeds": len(group)}
            deltas = [by[(g["seed"], kind, rnd)]["test_acc_end"] - by[(g["seed"], "rewind-init", rnd)]["test_acc_end"]
                      for g in group if (g["seed"], "rewind-init", rnd) in by]
            for metric, values in [(m, [float(g[m]) for g in group]) for m in _METRICS] + [("delta_end", deltas)]:
                if not values:
                    continue
                row[f"{metric}_mean"] = statistics.fmean(values)
                row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
                row[f"{metric}_min"], row[f"{metric}_max"] = min(values), max(values)
            rows.append(row)
    return rows


def format_report(runs: Sequence[Mapping[str, Any]], config: RewindingConfig) -> str:
    """Markdown: per round, the end-of-training test accuracy of each kind, then paired differences."""
    summary = summarize(runs, config)
    by = {(r["kind"], r["round"]): r for r in summary}
    head = ["round", "weights %"] + [f"{k} acc@end %" for k in KINDS] + [f"{k} acc@ES %" for k in KINDS]
    lines = [f"Test accuracy (%) after retraining, mean ± std over {len(config.seeds)} seeds; round 0 is the "
             "dense network (the same run for every kind).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rnd in range(config.rounds + 1):
        rows = [by.get((k, rnd)) for k in KINDS]
        known = [r for r in rows if r is not None]
        if not known:
            continue
        cells = [str(rnd), f"{100 * known[0]['weights_remaining_mean']:.1f}"]
        for metric in ("test_acc_end", "test_acc_early_stop"):
            cells += ["" if r is None else f"{100 * r[metric + '_mean']:.2f} ± {100 * r[metric + '_std']:.2f}"
                      for r in rows]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Paired difference of acc@end to rewind-init (pp), mean [min, max] over seeds:", "",
              "| round | weights % | " + " | ".join(k for k in KINDS[1:]) + " |", "|---|---|" + "---|" * (len(KINDS) - 1)]
    for rnd in range(1, config.rounds + 1):
        rows = [by.get((k, rnd)) for k in KINDS[1:]]
        if by.get(("rewind-init", rnd)) is None:
            continue
        cells = [str(rnd), f"{100 * by[('rewind-init', rnd)]['weights_remaining_mean']:.1f}"]
        cells += ["" if r is None or "delta_end_mean" not in r else
                  f"{100 * r['delta_end_mean']:+.2f} [{100 * r['delta_end_min']:+.2f}, {100 * r['delta_end_max']:+.2f}]"
                  for r in rows]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(runs: Sequence[Mapping[str, Any]], config: RewindingConfig, out_dir: PathLike) -> dict[str, Path]:
    """Write ``results.json`` (config, runs, summary) and ``table.md``."""
    out_dir = Path(out_dir)
    paths = {"results.json": out_dir / "results.json", "table.md": out_dir / "table.md"}
    write_json(paths["results.json"], {"config": config.to_dict(), "runs": list(runs), "summary": summarize(runs, config)})
    with atomic_write(paths["table.md"], fn="write_outputs") as f:  # whole or not at all
        f.write((format_report(runs, config) + "\n").encode("utf-8"))
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rewind-step`` of ``--experiment rewinding``."""
    parser.add_argument("--rewind-step", type=int, default=None,
                        help="rewinding: k of the theta_k variant (default: 10%% of the iterations per round)")


def plot(runs: Sequence[Mapping[str, Any]], config: RewindingConfig, out_dir: PathLike) -> dict[str, Path]:
    """``rewinding.png``: test accuracy at the end of retraining against weights remaining, per kind."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("plots need matplotlib: pip install torch_lottery[plots]") from exc
    labels = {"rewind-init": "weight rewinding to $\\theta_0$", "rewind-k": f"weight rewinding to $\\theta_k$, k={config.rewind_step}",
              "lrr": "learning-rate rewinding", "finetune": "fine-tuning"}
    summary = summarize(runs, config)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind in KINDS:
        rows = sorted((r for r in summary if r["kind"] == kind), key=lambda r: r["round"])
        if not rows:
            continue
        x = [100 * r["weights_remaining_mean"] for r in rows]
        y = [100 * r["test_acc_end_mean"] for r in rows]
        err = [[100 * (r["test_acc_end_mean"] - r["test_acc_end_min"]) for r in rows],
               [100 * (r["test_acc_end_max"] - r["test_acc_end_mean"]) for r in rows]]
        ax.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=3, label=labels[kind])
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("percent of weights remaining")
    ax.set_ylabel("test accuracy at the end of retraining (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(out_dir) / "rewinding.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"rewinding.png": path}
