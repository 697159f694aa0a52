"""The planted-ticket experiment: how much of a planted mask IMP, one-shot and init pruning recover, by sparsity.

For each seed, scale and sparsity of the configuration, a fresh ``width``-wide MLP
(``inputs - width - width - outputs``, ReLU) gets a ticket planted by
:func:`torch_lottery.planted.plant` (regression data from the teacher). Each method then prunes a
fresh copy of that planted initialization to the planted sparsity, layer by layer (the planted
mask has each layer at that sparsity), and :func:`torch_lottery.mask_overlap` (Jaccard) compares
the result with the planted mask:

* ``chance``: the expected overlap of random masks with the same counts, ``d / (2 - d)``;
* ``init``: magnitude pruning of the untrained planted initialization;
* ``oneshot``: train the dense network once, prune by magnitude;
* ``imp``: iterative magnitude pruning, 20% of the surviving weights per round, rewinding to
  the planted initialization, each round trained;
* ``snip``, ``synflow`` (when :func:`torch_lottery.prune_at_init` exists): pruning at
  initialization, scored on the planted data.

Every training uses Adam on the mean squared error against the teacher's outputs. Each result is
written to ``<out_dir>/runs/seed<s>-<scale>-<method>-r<sparsity in permille>.json``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..files import atomic_write
from .runner import Progress, finished_runs, write_json

logger = logging.getLogger(__name__)


__all__ = ["PlantedConfig", "describe", "format_report", "make_config", "planned_runs", "run_seed", "summarize",
           "write_outputs"]


@dataclass(frozen=True)
class PlantedConfig:
    """Everything that determines the planted-ticket experiment's numbers (saved as ``config.json``).

    Attributes:
        profile: ``"quick"`` (``"+custom"`` when overridden); informational.
        dataset, model: ``"planted"`` and ``"mlp"``: the data come from the planted teacher.
        iterations: Adam steps of every training (one per IMP round, one for one-shot).
        sparsities: planted (and pruned) sparsities.
        scales: ``plant(scale=...)`` values; ``None`` is the default ``1 / sqrt(density)``.
        width, inputs, outputs: the MLP ``inputs - width - width - outputs``.
        n_samples, batch_size, lr: the planted data and the training settings.
        seeds: one experiment per seed (initialization, mask, data, minibatches).
    """

    profile: str = "quick"
    dataset: str = "planted"
    model: str = "mlp"
    iterations: int = 500
    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.98)
    scales: tuple[Optional[float], ...] = (None, 1.0)
    width: int = 100
    inputs: int = 20
    outputs: int = 4
    n_samples: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1)
    validation_size: int = 0
    train_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("sparsities", "scales", "seeds"):
            d[key] = list(d[key])
        return d


def make_config(*, profile: str = "quick", iterations: Optional[int] = None, seeds: Optional[Sequence[int]] = None,
                sparsities: Sequence[float] = (0.5, 0.8, 0.9, 0.95, 0.98)) -> PlantedConfig:
    """Build a :class:`PlantedConfig` (``profile`` becomes ``"quick+custom"`` when anything is overridden).

    Raises:
        ValueError: an unknown profile, ``iterations`` < 1, sparsities outside (0, 1), bad seeds.
    """
    if profile != "quick":
        raise ValueError(f"make_config(): profile={profile!r} is unknown; the planted experiment has only 'quick'")
    overridden = iterations is not None or seeds is not None or tuple(sparsities) != (0.5, 0.8, 0.9, 0.95, 0.98)
    iterations = 500 if iterations is None else iterations
    seeds = (0, 1) if seeds is None else tuple(seeds)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"make_config(): iterations={iterations!r} must be an int >= 1")
    if not sparsities or any(not 0.0 < float(s) < 1.0 for s in sparsities):
        raise ValueError(f"make_config(): sparsities={list(sparsities)!r} must be fractions in (0, 1)")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"make_config(): seeds={list(seeds)!r} must be a non-empty list of distinct ints")
    return PlantedConfig(profile="quick+custom" if overridden else "quick", iterations=iterations,
                         sparsities=tuple(float(s) for s in sparsities), seeds=seeds)


def describe(config: PlantedConfig) -> list[str]:
    """Lines saying what ``config`` runs (the CLI prints them before starting)."""
    return [
        f"planted {config.inputs}-{config.width}-{config.width}-{config.outputs} MLPs, {config.n_samples} "
        f"regression samples, {config.iterations} Adam steps per training (lr {config.lr:g}, batch {config.batch_size})",
        f"sparsities {list(config.sparsities)}, scales {[scale_name(s) for s in config.scales]}, "
        f"methods {methods()}, seeds {list(config.seeds)}",
    ]


def planned_runs(config: PlantedConfig) -> list[tuple[int, str, int]]:
    """Every ``(seed, method, sparsity in permille)`` measured, per scale (so methods repeat)."""
    return [(seed, kind(scale, method), round(1000 * s)) for seed in config.seeds for scale in config.scales
            for s in config.sparsities for method in methods()]


def methods() -> list[str]:
    out = ["chance", "init", "oneshot", "imp"]
    try:
        from torch_lottery import prune_at_init  # noqa: F401
    except ImportError:
        return out
    return out + ["snip", "synflow"]


def scale_name(scale: Optional[float]) -> str:
    return "scaled" if scale is None else f"x{scale:g}"


def kind(scale: Optional[float], method: str) -> str:
    """A record's ``kind``: ``"<scale>-<method>"``, e.g. ``"scaled-imp"``."""
    return f"{scale_name(scale)}-{method}"


def run_key(seed: int, scale: Optional[float], method: str, sparsity: float) -> str:
    """``seed<s>-<scale>-<method>-r<sparsity in permille>``, the record's file name."""
    return f"seed{seed}-{kind(scale, method)}-r{round(1000 * sparsity):04d}"


def imp_rounds(sparsity: float) -> int:
    """Rounds of 20% that reach ``sparsity``: the first ``n`` with ``0.8**n <= 1 - sparsity``."""
    return max(1, math.ceil(math.log(1.0 - sparsity) / math.log(0.8) - 1e-9))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: PlantedConfig, data_seed: int) -> None:
    """Adam on the mean squared error against the teacher's outputs, ``config.iterations`` steps."""
    g = torch.Generator().manual_seed(data_seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    for _ in range(config.iterations):
        idx = torch.randint(0, len(x), (config.batch_size,), generator=g)
        optimizer.zero_grad()
        F.mse_loss(model(x[idx]), y[idx]).backward()
        optimizer.step()


def _prune(method: str, model: nn.Module, truth: Any, config: PlantedConfig, sparsity: float, seed: int,
           backend: str) -> tuple[Any, int]:
    """Prune ``model`` (a planted initialization) to ``sparsity`` by ``method``; (masks, trained rounds)."""
    from .. import LotteryTicket  # the public API only

    x, y = truth.inputs, truth.targets
    if method == "init":
        ticket = LotteryTicket(model, sparsity=sparsity, scope="layer", backend=backend)
        ticket.prune_()
        return ticket.masks, 0
    if method == "oneshot":
        ticket = LotteryTicket(model, sparsity=sparsity, scope="layer", backend=backend)
        with ticket:
            _train(model, x, y, config, 100_003 * seed)
        return ticket.masks, 1
    if method == "imp":
        rounds = imp_rounds(sparsity)
        ticket = LotteryTicket(model, sparsity=sparsity, rounds=rounds, scope="layer", backend=backend)
        for rnd in range(rounds):
            with ticket:
                _train(model, x, y, config, 100_003 * seed + rnd)
        return ticket.masks, rounds
    from .. import prune_at_init  # type: ignore[attr-defined]

    ticket = prune_at_init(model, method=method, sparsity=sparsity, scope="layer", inputs=(x[:512], y[:512]),
                           loss_fn=F.mse_loss, backend=backend)
    return ticket.masks, 0


def run_seed(config: PlantedConfig, data: Any, out_dir: Path, seed: int, *, progress: Optional[Progress] = None,
             backend: str = "prune") -> None:
    """Every measurement of one seed not yet in ``out_dir`` (``data`` is not used: the teacher makes it)."""
    from ..planted import plant  # the public API only
    from .. import mask_overlap

    out_dir = Path(out_dir)
    done = finished_runs(out_dir)

    def planted_model(scale: Optional[float], sparsity: float) -> tuple[nn.Module, Any]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(config.inputs, config.width), nn.ReLU(),
                                  nn.Linear(config.width, config.width), nn.ReLU(),
                                  nn.Linear(config.width, config.outputs))
        return model, plant(model, sparsity=sparsity, n_samples=config.n_samples, seed=seed, scale=scale)

    for scale in config.scales:
        for sparsity in config.sparsities:
            todo = [m for m in methods() if run_key(seed, scale, m, sparsity) not in done]
            if not todo:
                continue
            _, truth = planted_model(scale, sparsity)
            for method in todo:
                t0 = time.perf_counter()
                rec: dict[str, Any] = {"seed": seed, "kind": kind(scale, method), "method": method,
                                       "round": round(1000 * sparsity),
                                       "scale": scale_name(scale), "sparsity": sparsity, "trained_rounds": 0}
                if method == "chance":  # expected Jaccard of random masks with the same counts
                    rec["overlap"] = (1.0 - sparsity) / (1.0 + sparsity)
                else:
                    masks, rec["trained_rounds"] = _prune(method, planted_model(scale, sparsity)[0], truth, config,
                                                          sparsity, seed, backend)
                    rec["overlap"] = mask_overlap(masks, truth.masks)
                    found = sum(int((masks[k] & truth.masks[k]).sum()) for k in truth.masks)
                    rec["recall"] = found / sum(int(m.sum()) for m in truth.masks.values())
                rec["seconds"] = time.perf_counter() - t0
                (out_dir / "runs").mkdir(parents=True, exist_ok=True)
                write_json(out_dir / "runs" / f"{run_key(seed, scale, method, sparsity)}.json", rec)
                if progress is not None:
                    progress(config.iterations)
                logger.info("seed %d %-6s sparsity %.3f %-8s overlap %.3f", seed, scale_name(scale), sparsity,
                            method, rec["overlap"])


# ----------------------------------------------------------------------------- report


def summarize(runs, config: PlantedConfig) -> list[dict[str, Any]]:
    """One row per ``(scale, method, sparsity)``: the overlap (and recall), mean and std over seeds."""
    import statistics

    rows = []
    for scale in config.scales:
        for method in methods():
            for sparsity in config.sparsities:
                group = [r for r in runs if r["scale"] == scale_name(scale) and r["method"] == method
                         and r["sparsity"] == sparsity]
                if not group:
                    continue
                values = [g["overlap"] for g in group]
                rows.append({"scale": scale_name(scale), "method": method, "sparsity": sparsity, "seeds": len(group),
                             "overlap_mean": statistics.fmean(values),
                             "overlap_std": statistics.stdev(values) if len(values) > 1 else 0.0})
    return rows


def format_report(runs, config: PlantedConfig) -> str:
    """One Markdown table per scale: overlap with the planted mask by method (rows) and sparsity (columns)."""
    summary = {(r["scale"], r["method"], r["sparsity"]): r for r in summarize(runs, config)}
    blocks = []
    for scale in config.scales:
        name = scale_name(scale)
        title = "planted entries scaled by 1/sqrt(density)" if scale is None else f"planted entries scaled by {scale:g}"
        head = ["method"] + [f"{100 * s:g}% pruned" for s in config.sparsities]
        lines = [f"{title}: mask overlap (Jaccard) with the planted mask", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in methods():
            cells = [method]
            for s in config.sparsities:
                row = summary.get((name, method, s))
                if row is None:
                    cells.append("")
                elif row["seeds"] > 1 and method != "chance":
                    cells.append(f"{row['overlap_mean']:.3f} ± {row['overlap_std']:.3f}")
                else:
                    cells.append(f"{row['overlap_mean']:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_outputs(runs: Sequence[Any], config: PlantedConfig, out_dir: Any) -> dict[str, Path]:
    """Write ``results.json`` (config, runs, summary) and ``table.md``; return name -> path."""
    out_dir = Path(out_dir)
    paths = {"results.json": out_dir / "results.json", "table.md": out_dir / "table.md"}
    write_json(paths["results.json"], {"config": config.to_dict(), "runs": list(runs),
                                       "summary": summarize(runs, config)}, fn="write_outputs")
    with atomic_write(paths["table.md"], fn="write_outputs") as f:
        f.write((format_report(runs, config) + "\n").encode("utf-8"))
    return paths
