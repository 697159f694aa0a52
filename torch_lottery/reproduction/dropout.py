"""The dropout experiment: IMP of LeNet-300-100 trained with and without dropout (Frankle & Carbin 2019, Section 5).

The paper trains its conv networks with dropout and reports that dropout raises the early-stop
iteration (training is slower) and the winning tickets' accuracy, and that iterative pruning
still finds tickets that learn faster. Here the same question on LeNet-300-100 (the paper ran
it on Conv-2/4/6 only): for each seed, two IMP runs from the same theta_0 (dropout layers have
no parameters), with the same minibatch order and the same dropout-free pruning schedule (the
paper's LeNet rates, rewinding to theta_0):

* **no-dropout**: the paper's LeNet.
* **dropout**: dropout with probability ``dropout`` (0.5, the usual rate for fully-connected
  layers) after each hidden layer, in training only; validation and test run without it.

The dropout masks are drawn from the global RNG, seeded per run, so runs are deterministic.
Each finished run is recorded at once and each ticket's state after every round is kept, so an
interrupted experiment resumes.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch

from ..files import atomic_write
from .data import DatasetSplits
from .models import PAPER_SETTINGS
from .runner import Progress, SeedRun, load_tensors, save_tensors, write_json

__all__ = [
    "KINDS",
    "PROFILES",
    "DropoutConfig",
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

PathLike = Union[str, Path]

KINDS: tuple[str, ...] = ("no-dropout", "dropout")
"""Kinds of run, in report order."""

PROFILES: dict[str, dict[str, Any]] = {
    # ~10 minutes on 2 idle CPU cores: 5,000 iterations a round (so that early stopping can happen
    # before the end), 8 rounds (16.9% of the weights), 2 seeds.
    "quick": {"iterations": 5000, "rounds": 8, "seeds": (0, 1)},
    # The paper's LeNet budget per round, 5 seeds, 16 rounds.
    "full": {"iterations": None, "rounds": 16, "seeds": (0, 1, 2, 3, 4)},
}


@dataclass(frozen=True)
class DropoutConfig:
    """Everything that determines the dropout experiment's numbers (saved as ``config.json``).

    Attributes:
        profile, dataset, model, iterations, eval_every, rounds, seeds: as in the IMP experiment
            (``model`` is ``"lenet"``).
        dropout: the dropout probability of the dropout runs.
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
    dropout: float
    batch_size: int
    lr: float
    validation_size: int = 5000
    train_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        d = asdict(self)
        d["seeds"] = list(d["seeds"])
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
    dropout: float = 0.5,
    train_limit: int | None = None,
) -> DropoutConfig:
    """Build a :class:`DropoutConfig` from a profile, the paper's settings and overrides.

    Raises:
        ValueError: unknown profile, a model other than ``"lenet"``, a non-positive budget,
            ``dropout`` outside ``(0, 1)``.

    Example:
        >>> make_config().dropout, make_config().rounds
        (0.5, 8)
    """
    if profile not in PROFILES:
        raise ValueError(f"make_config(): profile={profile!r} is unknown; use one of {list(PROFILES)}")
    if model != "lenet":
        raise ValueError(f"make_config(): model={model!r}: the dropout experiment builds dropout into 'lenet' only")
    base, paper = PROFILES[profile], PAPER_SETTINGS[model]
    iterations = iterations if iterations is not None else (base["iterations"] or paper.iterations)
    rounds = rounds if rounds is not None else base["rounds"]
    seeds = tuple(seeds) if seeds is not None else tuple(base["seeds"])
    # The label says whether the per-seed budget is the profile's; seeds are listed on their own.
    overridden = (iterations, rounds, dropout, train_limit) != (base["iterations"] or paper.iterations,
                                                                base["rounds"], 0.5, None)
    for name, value, low in (("iterations", iterations, 1), ("rounds", rounds, 1), ("eval_every", eval_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"make_config(): {name}={value!r} must be an int >= {low}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 < dropout < 1.0:
        raise ValueError(f"make_config(): dropout={dropout!r} must be a probability in (0, 1), such as 0.5")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"make_config(): seeds={seeds!r} must be a non-empty list of distinct ints")
    return DropoutConfig(
        profile=f"{profile}+custom" if overridden else profile, dataset=dataset, model=model,
        iterations=iterations, eval_every=eval_every, rounds=rounds, seeds=seeds, dropout=float(dropout),
        batch_size=paper.batch_size, lr=paper.lr, train_limit=train_limit,
    )


def describe(config: DropoutConfig) -> list[str]:
    """Lines saying what ``config`` runs (printed before it starts)."""
    return [
        f"{config.iterations} iterations per round (paper: {PAPER_SETTINGS[config.model].iterations}), "
        f"batch {config.batch_size}, Adam lr {config.lr:g}, validation every {config.eval_every}",
        f"{config.rounds} rounds, seeds {list(config.seeds)}; IMP without and with dropout {config.dropout:g}",
    ]


def planned_runs(config: DropoutConfig) -> list[tuple[int, str, int]]:
    """Every ``(seed, kind, round)`` trained, in execution order.

    Example:
        >>> planned_runs(make_config(rounds=1, seeds=[0]))
        [(0, 'no-dropout', 0), (0, 'no-dropout', 1), (0, 'dropout', 0), (0, 'dropout', 1)]
    """
    return [(seed, kind, rnd) for seed in config.seeds for kind in KINDS for rnd in range(config.rounds + 1)]


def _kind(run: SeedRun, kind: str) -> None:
    config, seed = run.config, run.seed
    if not any(run.pending(kind, r) for r in range(config.rounds + 1)):
        return
    model = run.new_model(dropout=config.dropout if kind == "dropout" else 0.0)  # theta_0 either way
    ticket = run.layer_ticket(model)
    state = run.path(kind)
    if state.is_file():
        ticket.load_state_dict(load_tensors(state), rewind=True)
    for rnd in range(ticket.round, config.rounds + 1):
        masks = {k: v.clone() for k, v in ticket.masks.items()}

        def train() -> dict[str, Any]:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(7_000_003 * seed + rnd)  # the dropout masks of this run
                return run.train(model, rnd)

        if rnd == config.rounds:
            result = train()
        else:
            with ticket:
                result = train()
        run.record(kind, rnd, masks, result)
        if rnd < config.rounds:  # after the record: a stop in between repeats the round
            save_tensors(state, ticket.state_dict())


def run_seed(config: DropoutConfig, data: DatasetSplits, out_dir: Path, seed: int, *,
             progress: Progress | None = None, backend: str = "prune") -> None:
    """Every planned run of one seed not yet recorded in ``out_dir`` (see the module docstring)."""
    run = SeedRun(config, data, out_dir, seed, progress=progress, backend=backend)
    for kind in KINDS:
        _kind(run, kind)


# ----------------------------------------------------------------------------- report

_METRICS = ("weights_remaining", "early_stop_iteration", "test_acc_early_stop", "test_acc_end")


def summarize(runs: Sequence[Mapping[str, Any]], config: DropoutConfig) -> list[dict[str, Any]]:
    """One row per ``(kind, round)``: mean, std, min, max over seeds; for ``dropout`` rows also the
    paired differences to ``no-dropout`` (``delta_es_*`` in iterations, ``delta_acc_*`` at early stop)."""
    by = {(r["seed"], r["kind"], r["round"]): r for r in runs}
    rows = []
    for kind in KINDS:
        for rnd in range(config.rounds + 1):
            group = [by[(s, kind, rnd)] for s in config.seeds if (s, kind, rnd) in by]
            if not group:
                continue
            pairs = [(g, by[(g["seed"], "no-dropout", rnd)]) for g in group
                     if kind == "dropout" and (g["seed"], "no-dropout", rnd) in by]
            series = [(m, [float(g[m]) for g in group]) for m in _METRICS]
            series += [("delta_es", [float(a["early_stop_iteration"] - b["early_stop_iteration"]) for a, b in pairs]),
                       ("delta_acc", [float(a["test_acc_early_stop"] - b["test_acc_early_stop"]) for a, b in pairs])]
            row: dict[str, Any] = {"kind": kind, "round": rnd, "seeds": len(group)}
            for metric, values in series:
                if values:
                    row[f"{metric}_mean"] = statistics.fmean(values)
                    row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
                    row[f"{metric}_min"], row[f"{metric}_max"] = min(values), max(values)
            rows.append(row)
    return rows


def format_report(runs: Sequence[Mapping[str, Any]], config: DropoutConfig) -> str:
    """Markdown: per round, early-stop iteration and test accuracy without and with dropout, and the paired differences."""
    by = {(r["kind"], r["round"]): r for r in summarize(runs, config)}
    lines = [f"Mean ± std over {len(config.seeds)} seeds; ES = early-stop iteration (minimum validation loss), "
             f"acc = test accuracy (%); Δ = dropout − no-dropout, paired by seed, mean [min, max].", "",
             "| round | weights % | no-dropout ES | dropout ES | Δ ES (it) | no-dropout acc@ES | dropout acc@ES "
             "| Δ acc@ES (pp) | no-dropout acc@end | dropout acc@end |", "|" + "---|" * 10]
    for rnd in range(config.rounds + 1):
        a, b = by.get(("no-dropout", rnd)), by.get(("dropout", rnd))
        ref = a or b
        if ref is None:
            continue
        cell = lambda r, m, s=1.0, f=".0f": "" if r is None else f"{s * r[m + '_mean']:{f}} ± {s * r[m + '_std']:{f}}"  # noqa: E731
        delta = lambda m, s, f: ("" if b is None or m + "_mean" not in b else  # noqa: E731
                                 f"{s * b[m + '_mean']:+{f}} [{s * b[m + '_min']:+{f}}, {s * b[m + '_max']:+{f}}]")
        lines.append(
            f"| {rnd} | {100 * ref['weights_remaining_mean']:.1f} | {cell(a, 'early_stop_iteration')} "
            f"| {cell(b, 'early_stop_iteration')} | {delta('delta_es', 1, '.0f')} "
            f"| {cell(a, 'test_acc_early_stop', 100, '.2f')} | {cell(b, 'test_acc_early_stop', 100, '.2f')} "
            f"| {delta('delta_acc', 100, '.2f')} | {cell(a, 'test_acc_end', 100, '.2f')} "
            f"| {cell(b, 'test_acc_end', 100, '.2f')} |"
        )
    return "\n".join(lines)


def write_outputs(runs: Sequence[Mapping[str, Any]], config: DropoutConfig, out_dir: PathLike) -> dict[str, Path]:
    """Write ``results.json`` (config, runs, summary) and ``table.md``."""
    out_dir = Path(out_dir)
    paths = {"results.json": out_dir / "results.json", "table.md": out_dir / "table.md"}
    write_json(paths["results.json"], {"config": config.to_dict(), "runs": list(runs), "summary": summarize(runs, config)})
    with atomic_write(paths["table.md"], fn="write_outputs") as f:  # whole or not at all
        f.write((format_report(runs, config) + "\n").encode("utf-8"))
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dropout`` of ``--experiment dropout``."""
    parser.add_argument("--dropout", type=float, default=0.5,
                        help="dropout: probability of the dropout runs (default 0.5)")


def plot(runs: Sequence[Mapping[str, Any]], config: DropoutConfig, out_dir: PathLike) -> dict[str, Path]:
    """``dropout.png``: early-stop iteration and test accuracy at early stop against weights remaining."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("plots need matplotlib: pip install torch_lottery[plots]") from exc
    summary = summarize(runs, config)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, scale, label in ((axes[0], "early_stop_iteration", 1.0, "early-stop iteration"),
                                     (axes[1], "test_acc_early_stop", 100.0, "test accuracy at early stop (%)")):
        for kind in KINDS:
            rows = sorted((r for r in summary if r["kind"] == kind), key=lambda r: r["round"])
            if not rows:
                continue
            ax.errorbar([100 * r["weights_remaining_mean"] for r in rows], [scale * r[metric + "_mean"] for r in rows],
                        yerr=[[scale * (r[metric + "_mean"] - r[metric + "_min"]) for r in rows],
                              [scale * (r[metric + "_max"] - r[metric + "_mean"]) for r in rows]],
                        marker="o", markersize=4, capsize=3,
                        label=kind if kind == "no-dropout" else f"dropout {config.dropout:g}")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("percent of weights remaining")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(out_dir) / "dropout.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"dropout.png": path}
