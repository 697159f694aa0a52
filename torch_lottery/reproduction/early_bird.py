"""The early-bird experiment: IMP whose rounds stop when :class:`~torch_lottery.EarlyBird` fires, against full IMP.

The question (You et al. 2020, "Drawing Early-Bird Tickets"): can the mask of each pruning round
be drawn long before training converges, and how much training does that save for a ticket of
the same accuracy? For each seed, with the paper's LeNet settings (layer-wise rates 20% / 20% /
10%, rewinding to theta_0) and ``rounds`` rounds (10 rounds: 10.8% of the weights remain):

* **imp**: full IMP. Rounds ``0..rounds-1`` train ``iterations`` each and prune; round ``rounds``
  trains the final ticket.
* **eb-imp**: the same IMP, but each pruning round stops as soon as ``EarlyBird(ticket,
  epsilon, window)`` fires (one ``update()`` per validation, every ``eval_every`` iterations)
  and prunes with the early-bird mask; a round that never fires trains the full ``iterations``.
  The final ticket (round ``rounds``) trains the full ``iterations``, like imp's.
* **eb-oneshot**: the early-bird paper's own method: one dense run, watched by an EarlyBird on a
  one-shot ticket aimed straight at the final per-layer sparsity, stopped when it fires, pruned
  once, rewound and trained for ``iterations`` (recorded as rounds 0 and ``rounds``).
* **oneshot**: imp's fully trained dense network pruned once to the final sparsity, rewound and
  trained (its search is imp's round 0).

The training compute of a kind is its search (iterations trained in the rounds that chose the
masks) plus the final ticket's training. Every kind sees the same minibatch order at a given
``(seed, round)``. Runs are recorded as they finish and the tickets' state after every round is
kept under ``state/``, so an interrupted experiment resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from torch import nn

from .. import EarlyBird, mask_overlap  # the public API only
from ..files import atomic_write
from .data import DatasetSplits
from .models import PAPER_SETTINGS
from .runner import Progress, SeedRun, load_tensors, save_tensors, write_json

__all__ = [
    "KINDS",
    "PROFILES",
    "EarlyBirdConfig",
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

KINDS: tuple[str, ...] = ("imp", "eb-imp", "eb-oneshot", "oneshot")
"""Kinds of run, in report order (see the module docstring)."""

PROFILES: dict[str, dict[str, Any]] = {
    # ~10 minutes on 2 idle CPU cores: 5,000 iterations a round (the shortest budget in which the
    # dense network reaches its minimum validation loss, see docs/results.md), 10 rounds (10.8% of
    # the weights), 2 seeds.
    "quick": {"iterations": 5000, "rounds": 10, "seeds": (0, 1)},
    # The paper's LeNet budget per round, 5 seeds.
    "full": {"iterations": None, "rounds": 10, "seeds": (0, 1, 2, 3, 4)},
}


@dataclass(frozen=True)
class EarlyBirdConfig:
    """Everything that determines the early-bird experiment's numbers (saved as ``config.json``).

    Attributes:
        profile: ``"quick"``, ``"full"``, or ``"<profile>+custom"`` when overridden.
        dataset, model: what is trained.
        iterations: the full training budget of a round (and of every final ticket).
        eval_every: validation period; the EarlyBird updates at every validation.
        rounds: pruning rounds of imp and eb-imp; the final tickets have ``rounds`` prunes.
        seeds: one experiment per seed.
        epsilon, window: the EarlyBird settings (the paper's 0.1 and 5).
        batch_size, lr: Adam settings (the paper's).
        validation_size, train_limit: the data split (``train_limit`` for smoke tests).
    """

    profile: str
    dataset: str
    model: str
    iterations: int
    eval_every: int
    rounds: int
    seeds: tuple[int, ...]
    epsilon: float
    window: int
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
    epsilon: float = 0.1,
    window: int = 5,
    train_limit: int | None = None,
) -> EarlyBirdConfig:
    """Build an :class:`EarlyBirdConfig` from a profile, the paper's settings and overrides.

    Raises:
        ValueError: unknown profile or model, a non-positive budget, ``epsilon`` outside [0, 1],
            ``window`` < 2.

    Example:
        >>> make_config().rounds, make_config().epsilon, make_config(iterations=10).profile
        (10, 0.1, 'quick+custom')
    """
    if profile not in PROFILES:
        raise ValueError(f"make_config(): profile={profile!r} is unknown; use one of {list(PROFILES)}")
    if model not in PAPER_SETTINGS:
        raise ValueError(f"make_config(): model={model!r} is unknown; use one of {list(PAPER_SETTINGS)}")
    base, paper = PROFILES[profile], PAPER_SETTINGS[model]
    iterations = iterations if iterations is not None else (base["iterations"] or paper.iterations)
    rounds = rounds if rounds is not None else base["rounds"]
    seeds = tuple(seeds) if seeds is not None else tuple(base["seeds"])
    # The label says whether the per-seed budget is the profile's; seeds are listed on their own.
    overridden = (iterations, rounds, epsilon, window, train_limit) != (
        base["iterations"] or paper.iterations, base["rounds"], 0.1, 5, None)
    for name, value, low in (("iterations", iterations, 1), ("rounds", rounds, 1), ("eval_every", eval_every, 1),
                             ("window", window, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"make_config(): {name}={value!r} must be an int >= {low}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"make_config(): epsilon={epsilon!r} must be a fraction in [0, 1], such as 0.1")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"make_config(): seeds={seeds!r} must be a non-empty list of distinct ints")
    return EarlyBirdConfig(
        profile=f"{profile}+custom" if overridden else profile, dataset=dataset, model=model,
        iterations=iterations, eval_every=eval_every, rounds=rounds, seeds=seeds, epsilon=float(epsilon),
        window=window, batch_size=paper.batch_size, lr=paper.lr, train_limit=train_limit,
    )


def describe(config: EarlyBirdConfig) -> list[str]:
    """Lines saying what ``config`` runs (printed before it starts)."""
    return [
        f"{config.iterations} iterations per round (paper: {PAPER_SETTINGS[config.model].iterations}), "
        f"batch {config.batch_size}, Adam lr {config.lr:g}, validation every {config.eval_every}",
        f"{config.rounds} rounds, seeds {list(config.seeds)}; EarlyBird epsilon {config.epsilon:g}, "
        f"window {config.window}, one update per validation",
    ]


def planned_runs(config: EarlyBirdConfig) -> list[tuple[int, str, int]]:
    """Every ``(seed, kind, round)`` trained, in execution order.

    Example:
        >>> planned_runs(make_config(rounds=1, seeds=[0]))
        [(0, 'imp', 0), (0, 'imp', 1), (0, 'oneshot', 1), (0, 'eb-imp', 0), (0, 'eb-imp', 1), (0, 'eb-oneshot', 0), (0, 'eb-oneshot', 1)]
    """
    plan = []
    for seed in config.seeds:
        plan += [(seed, "imp", r) for r in range(config.rounds + 1)] + [(seed, "oneshot", config.rounds)]
        plan += [(seed, "eb-imp", r) for r in range(config.rounds + 1)]
        plan += [(seed, "eb-oneshot", 0), (seed, "eb-oneshot", config.rounds)]
    return plan


# ----------------------------------------------------------------------------- one seed


class _Seed(SeedRun):
    """One seed's runs: the shared setup, plus training watched by an early bird."""

    def train_watched(self, model: nn.Module, rnd: int, eb: EarlyBird | None = None) -> dict[str, Any]:
        """:meth:`train` round ``rnd``, stopped when ``eb`` (updated at every validation) fires."""
        result = self.train(model, rnd, stop=None if eb is None else (lambda it: eb.update()))
        if eb is not None:
            result.update(eb_distances=list(eb.distances), eb_emerged_at=eb.emerged_at,
                          eb_fired=eb.emerged_at is not None)
        return result


def _iterative(run: _Seed, kind: str, watch: bool) -> None:
    """imp (``watch=False``) or eb-imp (``watch=True``): every round, resuming from ``state/``."""
    config = run.config
    model = run.new_model()
    ticket = run.layer_ticket(model)
    state = run.path(f"{kind}-ticket")
    if state.is_file():
        ticket.load_state_dict(load_tensors(state), rewind=True)
    for rnd in range(ticket.round, config.rounds):
        eb = EarlyBird(ticket, epsilon=config.epsilon, window=config.window) if watch else None
        with ticket:
            result = run.train_watched(model, rnd, eb)
            if rnd == 0 and not watch:
                save_tensors(run.path("dense-trained"), {k: v.detach().clone() for k, v in model.state_dict().items()})
            masks = {k: v.clone() for k, v in ticket.masks.items()}
        run.record(kind, rnd, masks, result)  # the record first: a stop in between repeats the round
        save_tensors(state, ticket.state_dict())
    if run.pending(kind, config.rounds):
        run.record(kind, config.rounds, ticket.masks, run.train(model, config.rounds))


def _oneshot(run: _Seed) -> None:
    """imp's trained dense network pruned once to the final per-layer sparsity, rewound, trained."""
    model = run.new_model()
    ticket = run.layer_ticket(model, prunes=run.config.rounds)
    with ticket:  # "training" = loading imp's trained dense weights
        model.load_state_dict(load_tensors(run.path("dense-trained")))
    run.record("oneshot", run.config.rounds, ticket.masks, run.train(model, run.config.rounds))


def _eb_oneshot(run: _Seed) -> None:
    """One dense run stopped by an EarlyBird on a one-shot ticket, pruned once, rewound, trained."""
    model = run.new_model()
    ticket = run.layer_ticket(model, prunes=run.config.rounds)
    state = run.path("eb-oneshot-ticket")
    if state.is_file():
        ticket.load_state_dict(load_tensors(state), rewind=True)
    else:
        eb = EarlyBird(ticket, epsilon=run.config.epsilon, window=run.config.window)
        with ticket:
            result = run.train_watched(model, 0, eb)
            dense = {k: v.clone() for k, v in ticket.masks.items()}
        run.record("eb-oneshot", 0, dense, result)
        save_tensors(state, ticket.state_dict())
    if run.pending("eb-oneshot", run.config.rounds):
        run.record("eb-oneshot", run.config.rounds, ticket.masks, run.train(model, run.config.rounds))


def run_seed(config: EarlyBirdConfig, data: DatasetSplits, out_dir: Path, seed: int, *,
             progress: Progress | None = None, backend: str = "prune") -> None:
    """Every planned run of one seed not yet recorded in ``out_dir`` (see the module docstring)."""
    run = _Seed(config, data, out_dir, seed, progress=progress, backend=backend)
    for kind, watch in (("imp", False), ("eb-imp", True)):
        if any(run.pending(kind, r) for r in range(config.rounds + 1)):
            _iterative(run, kind, watch=watch)
        if kind == "imp" and run.pending("oneshot", config.rounds):
            _oneshot(run)
    if run.pending("eb-oneshot", 0) or run.pending("eb-oneshot", config.rounds):
        _eb_oneshot(run)
    # How much of imp's final ticket the cheaper tickets share (Jaccard overlap of the survivors).
    masks = {k: load_tensors(run.path(f"{k}-ticket"))["masks"] for k in ("imp", "eb-imp", "eb-oneshot")}
    write_json(out_dir / "overlap" / f"seed{seed}.json",
               {k: mask_overlap(masks["imp"], masks[k]) for k in ("eb-imp", "eb-oneshot")})


# ----------------------------------------------------------------------------- report


def _search_iterations(runs: Sequence[Mapping[str, Any]], config: EarlyBirdConfig, seed: int, kind: str) -> int:
    """Iterations trained to choose the final masks of ``kind`` for ``seed``."""
    by = {(r["kind"], r["round"]): r for r in runs if r["seed"] == seed}
    if kind == "oneshot":
        return int(by[("imp", 0)]["iterations_trained"])
    if kind == "eb-oneshot":
        return int(by[("eb-oneshot", 0)]["iterations_trained"])
    return sum(int(by[(kind, r)]["iterations_trained"]) for r in range(config.rounds))


def _complete(runs: Sequence[Mapping[str, Any]], config: EarlyBirdConfig, seed: int, kind: str) -> bool:
    keys = {(r["kind"], r["round"]) for r in runs if r["seed"] == seed}
    need = {"imp": [("imp", r) for r in range(config.rounds + 1)],
            "eb-imp": [("eb-imp", r) for r in range(config.rounds + 1)],
            "oneshot": [("imp", 0), ("oneshot", config.rounds)],
            "eb-oneshot": [("eb-oneshot", 0), ("eb-oneshot", config.rounds)]}[kind]
    return all(k in keys for k in need)


def summarize(runs: Sequence[Mapping[str, Any]], config: EarlyBirdConfig) -> list[dict[str, Any]]:
    """One row per kind: the final ticket's accuracy and the training compute, mean/std/min/max over seeds.

    ``total`` is search + the final ticket's training; ``ratio`` is ``total`` over imp's total of
    the same seed; ``delta_*`` are accuracy differences to imp's final ticket of the same seed.
    """
    rows = []
    for kind in KINDS:
        seeds = [s for s in config.seeds if _complete(runs, config, s, kind) and _complete(runs, config, s, "imp")]
        if not seeds:
            continue
        per_seed: dict[str, list[float]] = {m: [] for m in (
            "weights_remaining", "test_acc_early_stop", "test_acc_end", "search", "total", "ratio",
            "delta_acc_early_stop", "delta_acc_end")}
        for s in seeds:
            by = {(r["kind"], r["round"]): r for r in runs if r["seed"] == s}
            final, imp = by[(kind, config.rounds)], by[("imp", config.rounds)]
            search = _search_iterations(runs, config, s, kind)
            total = search + int(final["iterations_trained"])
            imp_total = _search_iterations(runs, config, s, "imp") + int(imp["iterations_trained"])
            for m, v in (("weights_remaining", final["weights_remaining"]),
                         ("test_acc_early_stop", final["test_acc_early_stop"]), ("test_acc_end", final["test_acc_end"]),
                         ("search", search), ("total", total), ("ratio", total / imp_total),
                         ("delta_acc_early_stop", final["test_acc_early_stop"] - imp["test_acc_early_stop"]),
                         ("delta_acc_end", final["test_acc_end"] - imp["test_acc_end"])):
                per_seed[m].append(float(v))
        row: dict[str, Any] = {"kind": kind, "seeds": len(seeds)}
        for m, values in per_seed.items():
            row[f"{m}_mean"] = statistics.fmean(values)
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{m}_min"], row[f"{m}_max"] = min(values), max(values)
        rows.append(row)
    return rows


def _goal(row: Mapping[str, Any]) -> str:
    """The issue's goal, on means over seeds: compute <= 1/3 of imp's, accuracy at most 0.5 pt below imp's."""
    compute = row["ratio_mean"] <= 1 / 3
    accuracy = row["delta_acc_early_stop_mean"] >= -0.005
    return {(True, True): "met", (True, False): "compute only", (False, True): "accuracy only",
            (False, False): "not met"}[(compute, accuracy)]


def format_report(runs: Sequence[Mapping[str, Any]], config: EarlyBirdConfig) -> str:
    """Markdown: the final tickets against imp, then when eb-imp fired in each round."""
    summary = summarize(runs, config)
    lines = [
        f"Final tickets after {config.rounds} rounds; mean ± std over {len(config.seeds)} seeds; [min, max] of the "
        "paired difference to imp. Compute = training iterations (search + final ticket). Goal (on the means): "
        "accuracy at early stop at most 0.5 pt below imp's for at most 1/3 of imp's compute.",
        "",
        "| kind | weights % | search it | total it | compute / imp | acc@ES % | Δ acc@ES vs imp (pp) | acc@end % "
        "| Δ acc@end (pp) | goal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        pp = lambda m: f"{100 * r[m + '_mean']:+.2f} [{100 * r[m + '_min']:+.2f}, {100 * r[m + '_max']:+.2f}]"  # noqa: E731
        lines.append(
            f"| {r['kind']} | {100 * r['weights_remaining_mean']:.1f} | {r['search_mean']:,.0f} | {r['total_mean']:,.0f} "
            f"| {r['ratio_mean']:.2f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] "
            f"| {100 * r['test_acc_early_stop_mean']:.2f} ± {100 * r['test_acc_early_stop_std']:.2f} "
            f"| {pp('delta_acc_early_stop') if r['kind'] != 'imp' else ''} "
            f"| {100 * r['test_acc_end_mean']:.2f} ± {100 * r['test_acc_end_std']:.2f} "
            f"| {pp('delta_acc_end') if r['kind'] != 'imp' else ''} | {_goal(r) if r['kind'] != 'imp' else ''} |"
        )
    fired = [r for r in runs if r["kind"] == "eb-imp" and r["round"] < config.rounds]
    if fired:
        lines += ["", "eb-imp: iterations trained in each pruning round (mean over seeds; the full budget is "
                  f"{config.iterations}), and in how many seeds the early bird fired.", "",
                  "| round | weights % | iterations | fired |", "|---|---|---|---|"]
        for rnd in range(config.rounds):
            rs = [r for r in fired if r["round"] == rnd]
            if rs:
                lines.append(f"| {rnd} | {100 * statistics.fmean(r['weights_remaining'] for r in rs):.1f} "
                             f"| {statistics.fmean(r['iterations_trained'] for r in rs):,.0f} "
                             f"| {sum(bool(r['eb_fired']) for r in rs)}/{len(rs)} |")
    once = [r for r in runs if r["kind"] == "eb-oneshot" and r["round"] == 0]
    if once:
        lines += ["", "eb-oneshot: the dense run stopped after "
                  + ", ".join(f"{r['iterations_trained']:,} (seed {r['seed']}, {'fired' if r['eb_fired'] else 'never fired'})"
                              for r in once) + " iterations."]
    return "\n".join(lines)


def write_outputs(runs: Sequence[Mapping[str, Any]], config: EarlyBirdConfig, out_dir: PathLike) -> dict[str, Path]:
    """Write ``results.json`` (config, runs, summary, mask overlaps) and ``table.md``."""
    out_dir = Path(out_dir)
    overlap = {p.stem: json.loads(p.read_text()) for p in sorted((out_dir / "overlap").glob("*.json"))}
    paths = {"results.json": out_dir / "results.json", "table.md": out_dir / "table.md"}
    write_json(paths["results.json"], {"config": config.to_dict(), "runs": list(runs),
                                       "summary": summarize(runs, config), "overlap_with_imp": overlap})
    with atomic_write(paths["table.md"], fn="write_outputs") as f:  # whole or not at all
        f.write((format_report(runs, config) + "\n").encode("utf-8"))
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--epsilon`` and ``--window`` of ``--experiment early-bird``."""
    parser.add_argument("--epsilon", type=float, default=0.1,
                        help="early-bird: largest mask distance that counts as settled (default 0.1)")
    parser.add_argument("--window", type=int, default=5, help="early-bird: masks compared (default 5)")


def plot(runs: Sequence[Mapping[str, Any]], config: EarlyBirdConfig, out_dir: PathLike) -> dict[str, Path]:
    """``early_bird.png``: accuracy against training compute per kind, and eb-imp's distances per round (seed 0)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("plots need matplotlib: pip install torch_lottery[plots]") from exc
    out_dir = Path(out_dir)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row, color in zip(summarize(runs, config), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        left.errorbar([row["total_mean"]], [100 * row["test_acc_early_stop_mean"]],
                      xerr=[[row["total_mean"] - row["total_min"]], [row["total_max"] - row["total_mean"]]],
                      yerr=[[100 * (row["test_acc_early_stop_mean"] - row["test_acc_early_stop_min"])],
                            [100 * (row["test_acc_early_stop_max"] - row["test_acc_early_stop_mean"])]],
                      marker="o", capsize=3, color=color, label=row["kind"])
    left.set_xlabel("training iterations (search + final ticket)")
    left.set_ylabel("final ticket: test accuracy at early stop (%)")
    left.grid(alpha=0.3)
    left.legend()
    seed = min(config.seeds)
    for r in sorted((r for r in runs if r["kind"] == "eb-imp" and r["seed"] == seed and r.get("eb_distances")),
                    key=lambda r: r["round"]):
        d = [(config.eval_every * (i + 1), v) for i, v in enumerate(r["eb_distances"]) if v is not None]
        right.plot([x for x, _ in d], [v for _, v in d], label=f"round {r['round']}", linewidth=1)
    right.axhline(config.epsilon, color="k", linestyle="--", linewidth=1, label=f"epsilon {config.epsilon:g}")
    right.set_xlabel("iteration of the round")
    right.set_ylabel("max distance to the window")
    right.set_title(f"eb-imp, seed {seed}")
    right.grid(alpha=0.3)
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / "early_bird.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"early_bird.png": path}
