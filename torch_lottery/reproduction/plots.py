"""Draw the reproduction's results as PNG figures in the style of Frankle & Carbin (2019).

Every figure puts the percentage of weights remaining on a log x axis running from 100% (dense) down
to the sparsest round, as the paper does; lines are means over seeds and error bars span the minimum
and maximum over seeds (the paper's convention). matplotlib is optional: it is imported inside
:func:`plot_results` only, with the non-interactive ``Agg`` backend. :func:`plot_runs` picks what the
``torch-lottery reproduce`` figures show from an IMP experiment's run records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from .config import ReproConfig
from .report import summarize

__all__ = ["plot_results", "plot_runs"]

PathLike = Union[str, Path]

_STYLE = {
    "ticket": {"label": "winning ticket (iterative, rewound to $\\theta_0$)", "color": "tab:blue", "marker": "o"},
    "oneshot": {"label": "one-shot pruning, rewound to $\\theta_0$", "color": "tab:green", "marker": "s"},
    "reinit": {"label": "same masks, random re-init", "color": "tab:orange", "marker": "^"},
    "random": {"label": "random masks (same per-layer counts), $\\theta_0$", "color": "tab:red", "marker": "v"},
}


def _series(summary: Sequence[Mapping[str, Any]], kind: str, metric: str, scale: float) -> tuple[list[float], ...]:
    rows = sorted((r for r in summary if r["kind"] == kind), key=lambda r: r["round"])
    if kind != "ticket":  # controls start from the dense network, the ticket's round 0
        rows = [r for r in summary if r["kind"] == "ticket" and r["round"] == 0] + rows
    x = [100 * r["weights_remaining_mean"] for r in rows]
    y = [scale * r[f"{metric}_mean"] for r in rows]
    lo = [scale * (r[f"{metric}_mean"] - r[f"{metric}_min"]) for r in rows]
    hi = [scale * (r[f"{metric}_max"] - r[f"{metric}_mean"]) for r in rows]
    return x, y, lo, hi


def _panel(ax: Any, summary: Sequence[Mapping[str, Any]], metric: str, kinds: Sequence[str], scale: float,
           ylabel: str) -> None:
    for kind in kinds:
        if not any(r["kind"] == kind for r in summary):
            continue
        x, y, lo, hi = _series(summary, kind, metric, scale)
        style = _STYLE[kind]
        ax.errorbar(x, y, yerr=[lo, hi], label=style["label"], color=style["color"], marker=style["marker"],
                    markersize=4, capsize=3, linewidth=1.5)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("percent of weights remaining")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ticks = sorted({round(100 * r["weights_remaining_mean"], 1) for r in summary if r["kind"] == "ticket"},
                   reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45, fontsize=7)
    ax.minorticks_off()


def plot_results(
    summary: Sequence[Mapping[str, Any]],
    out_dir: PathLike,
    *,
    title: str = "",
    curves: Mapping[float, Sequence[Sequence[float]]] | None = None,
) -> dict[str, Path]:
    """Write the reproduction's figures into ``out_dir``.

    Files:
        ``accuracy.png``: test accuracy at early stop vs weights remaining, ticket vs one-shot.
        ``early_stop.png``: early-stop iteration vs weights remaining, ticket vs one-shot.
        ``controls.png``: ticket vs the random re-init and random-mask controls, three panels
        (early-stop iteration, test accuracy at early stop, test accuracy at the end of training).
        ``curves.png`` (if ``curves`` is given): validation accuracy over training iterations of
        the ticket at a few rounds (the paper's Figure 3 shows test accuracy the same way).

    Args:
        summary: rows of :func:`torch_lottery.reproduction.report.summarize`.
        out_dir: folder for the PNGs (created if missing).
        title: suptitle, e.g. the model, dataset and profile.
        curves: ``{weights remaining % : [[iteration, val_loss, val_acc], ...]}`` (one seed).

    Returns:
        name -> path of each PNG written.

    Raises:
        ModuleNotFoundError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("plot_results(): matplotlib is required; pip install torch_lottery[plot]") from exc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        paths[name] = out / name
        fig.savefig(paths[name], dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    _panel(ax, summary, "test_acc_early_stop", ("ticket", "oneshot"), 100, "test accuracy at early stop (%)")
    ax.legend(fontsize=7)
    save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(6, 4.2))
    _panel(ax, summary, "early_stop_iteration", ("ticket", "oneshot"), 1, "early-stop iteration (val. loss min)")
    ax.legend(fontsize=7)
    save(fig, "early_stop.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    kinds = ("ticket", "reinit", "random")
    _panel(axes[0], summary, "early_stop_iteration", kinds, 1, "early-stop iteration")
    _panel(axes[1], summary, "test_acc_early_stop", kinds, 100, "test accuracy at early stop (%)")
    _panel(axes[2], summary, "test_acc_end", kinds, 100, "test accuracy at end of training (%)")
    axes[0].legend(fontsize=7)
    save(fig, "controls.png")

    if curves:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for remaining, curve in sorted(curves.items(), reverse=True):
            ax.plot([c[0] for c in curve], [100 * c[2] for c in curve], label=f"{remaining:.1f}% remaining")
        ax.set_xlabel("training iteration")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "curves.png")
    return paths


def plot_runs(runs: Sequence[Mapping[str, Any]], config: ReproConfig, out_dir: PathLike) -> dict[str, Path]:
    """The figures of an IMP experiment's ``runs``: :func:`plot_results` of their summary, titled with the
    budget, with the validation curves of the first seed's ticket at the dense, middle and last rounds.

    Returns:
        name -> path of each PNG written.

    Raises:
        ModuleNotFoundError: matplotlib is not installed.
    """
    title = f"{config.model} on {config.dataset}, profile {config.profile}: {config.iterations} it/run, " \
            f"{len(config.seeds)} seeds"
    return plot_results(summarize(runs), out_dir, title=title, curves=_ticket_curves(runs, config))


def _ticket_curves(runs: Sequence[Mapping[str, Any]], config: ReproConfig) -> dict[float, Any]:
    """``{weights remaining % : curve}`` of the first seed's ticket at rounds 0, ``rounds // 2`` and ``rounds``."""
    seed0 = [r for r in runs if r["kind"] == "ticket" and r["seed"] == config.seeds[0]]
    pick = sorted({0, config.rounds // 2, config.rounds})
    return {100 * r["weights_remaining"]: r["curve"] for r in seed0 if r["round"] in pick}
