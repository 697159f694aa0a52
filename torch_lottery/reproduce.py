"""Run the lottery-ticket experiments of Frankle & Carbin (2019) on real data and return every number.

This module is the library's first client: it uses only the public API (``LotteryTicket``,
``random_masks_like``) around its own plain training loop. For each seed it runs

* **ticket** (iterative pruning): round 0 trains the dense network; each ``with ticket:`` block
  trains, then the engine prunes layer-wise at the paper's rates and rewinds the survivors to
  theta_0. Round ``k`` trains the network with ``k`` prunes applied.
* **reinit** control: the round-``k`` masks on a freshly, randomly initialized network.
* **random** control: random masks with the same per-layer counts, on the ticket's theta_0.
* **oneshot**: the dense network's trained weights pruned once, straight to round ``k``'s per-layer
  sparsity, rewound to theta_0 and trained.

Every training run evaluates the validation loss every ``eval_every`` iterations; the early-stop
iteration is the one with the minimum validation loss, and test accuracy is reported at that
iteration and at the end of training.

Each finished run is written to ``<out_dir>/runs/<key>.json`` at once, and the iterative ticket's
state after each round to ``<out_dir>/state/``; calling :func:`run_experiment` again on the same
``out_dir`` skips what is finished. Nothing here prints: progress goes to a callback and to
``logging``; the CLI (``torch-lottery reproduce``) owns the progress bar, table and plots.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import DatasetSplits, Split
from .models import PAPER_SETTINGS, build_model, paper_layer_rates

__all__ = [
    "KINDS",
    "PROFILES",
    "ReproConfig",
    "evaluate",
    "format_table",
    "load_results",
    "make_config",
    "planned_runs",
    "run_experiment",
    "summarize",
    "train_run",
    "write_outputs",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[int], None]

KINDS: tuple[str, ...] = ("ticket", "reinit", "random", "oneshot")
"""Kinds of training run, in report order (see the module docstring)."""


@dataclass(frozen=True)
class ReproConfig:
    """Everything that determines the experiment's numbers (saved as ``config.json`` in the output dir).

    Attributes:
        profile: ``"quick"``, ``"full"`` or ``"custom"``; informational.
        dataset, model: names for :func:`torch_lottery.data.load_dataset` and
            :func:`torch_lottery.models.build_model`.
        iterations: training iterations (minibatches) of every run.
        eval_every: validation period in iterations (100 in the paper).
        rounds: iterative pruning rounds; rounds ``0..rounds`` are trained (round 0 is dense).
        seeds: one full experiment per seed (initialization, data order, random controls).
        controls: which of ``"reinit"``, ``"random"`` run at every pruned round.
        oneshot_rounds: rounds at which a one-shot pruned network is trained for comparison.
        batch_size, lr: Adam training settings.
        validation_size: training images held out for validation.
        train_limit: use only this many training images (smoke tests); ``None`` = all.
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


# ----------------------------------------------------------------------------- training loop


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, batch_size: int = 5000) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``split``."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return loss_sum / len(split), correct / len(split)


def train_run(
    model: nn.Module,
    data: DatasetSplits,
    *,
    iterations: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``model`` with Adam for ``iterations`` minibatches, tracking the early-stop point.

    Minibatches are drawn without replacement from a fresh permutation each epoch (seeded by
    ``seed``). The validation loss is measured every ``eval_every`` iterations and at the last one;
    the model state at the minimum validation loss is kept, so the test accuracy at the early-stop
    iteration is measured on exactly that state. The model is left in its end-of-training state.

    Returns:
        dict with ``early_stop_iteration``, ``early_stop_val_loss``, ``val_acc_early_stop``,
        ``test_acc_early_stop``, ``test_acc_end``, ``val_loss_end``, ``curve`` (list of
        ``[iteration, val_loss, val_acc]``) and ``seconds``.
    """
    start_time = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data.train)
    perm, pos = torch.randperm(n, generator=generator), 0
    best_loss, best_iter, best_acc = math.inf, 0, 0.0
    best_state: dict[str, Tensor] | None = None
    curve: list[list[float]] = []
    model.train()
    since_report = 0
    for it in range(1, iterations + 1):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        loss = F.cross_entropy(model(data.train.x[idx]), data.train.y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        since_report += 1
        if it % eval_every == 0 or it == iterations:
            val_loss, val_acc = evaluate(model, data.val)
            curve.append([it, val_loss, val_acc])
            if val_loss < best_loss:
                best_loss, best_iter, best_acc = val_loss, it, val_acc
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if progress is not None:
                progress(since_report)
            since_report = 0
    _, test_acc_end = evaluate(model, data.test)
    end_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best_state is not None  # the last iteration is always evaluated
    model.load_state_dict(best_state)
    _, test_acc_es = evaluate(model, data.test)
    model.load_state_dict(end_state)
    return {
        "early_stop_iteration": best_iter,
        "early_stop_val_loss": best_loss,
        "val_acc_early_stop": best_acc,
        "test_acc_early_stop": test_acc_es,
        "test_acc_end": test_acc_end,
        "val_loss_end": curve[-1][1],
        "curve": curve,
        "seconds": time.perf_counter() - start_time,
    }


# ----------------------------------------------------------------------------- bookkeeping


def _run_key(seed: int, kind: str, rnd: int) -> str:
    return f"seed{seed}-{kind}-r{rnd:02d}"


def planned_runs(config: ReproConfig) -> list[tuple[int, str, int]]:
    """Every ``(seed, kind, round)`` the experiment trains, in execution order."""
    plan = []
    for seed in config.seeds:
        for rnd in range(config.rounds + 1):
            plan.append((seed, "ticket", rnd))
            if rnd > 0:
                plan += [(seed, control, rnd) for control in config.controls]
                if rnd in config.oneshot_rounds:
                    plan.append((seed, "oneshot", rnd))
    return plan


def _write_json(path: Path, obj: Any) -> None:
    """Write atomically (temp file + rename), so an interrupted run never leaves a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _save_tensors(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_tensors(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_results(out_dir: PathLike) -> list[dict[str, Any]]:
    """Every finished run recorded under ``<out_dir>/runs/``, in file-name order (all seeds there)."""
    runs = Path(out_dir) / "runs"
    if not runs.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]


def _check_config(out_dir: Path, config: ReproConfig) -> None:
    """Refuse an ``out_dir`` holding another configuration. Seeds may differ: each seed's runs are
    independent and keyed by seed, so adding seeds to a finished experiment reuses its runs."""
    path = out_dir / "config.json"
    new = config.to_dict()
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(new) if k != "seeds" and old.get(k) != new.get(k))
        if diff:
            raise ValueError(
                f"run_experiment(): out_dir={str(out_dir)!r} holds runs of a different configuration "
                f"(differs in {diff}); use another output directory or delete it to start over"
            )
    _write_json(path, new)


# ----------------------------------------------------------------------------- the experiment


def _remaining(masks: Mapping[str, Tensor]) -> tuple[int, int, dict[str, int]]:
    per = {k: int(m.sum()) for k, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    return sum(per.values()), total, per


def run_experiment(
    config: ReproConfig,
    data: DatasetSplits,
    out_dir: PathLike,
    *,
    progress: Progress | None = None,
    jobs: int = 1,
    backend: str = "prune",
) -> list[dict[str, Any]]:
    """Run (or resume) every planned training run of ``config`` and return all run records.

    Args:
        config: from :func:`make_config`.
        data: from :func:`torch_lottery.data.load_dataset` (``config.dataset``).
        out_dir: results directory; finished runs found there are not repeated.
        progress: called with the number of training iterations just done.
        jobs: worker processes; seeds are shared out among them (each seed's runs stay in one
            process, so results do not depend on ``jobs``). Each worker uses
            ``torch.get_num_threads()`` of the caller.
        backend: the tickets' mask backend (``LotteryTicket(backend=...)``). The paper's
            optimizers are elementwise, so every backend gives the same numbers; "baked" is
            faster. Like ``jobs``, it is not part of the configuration.

    Returns:
        One dict per run (see :func:`train_run`, plus ``seed``, ``kind``, ``round``,
        ``weights_remaining``, ``remaining``, ``total``, ``remaining_per_layer``), in file order.

    Raises:
        ValueError: ``out_dir`` holds results of a different configuration (other than its seeds:
            adding seeds reuses the finished ones), ``jobs`` < 1, or an unknown ``backend``.
        RuntimeError: a worker process failed (its traceback is in the message).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"run_experiment(): jobs={jobs!r} must be an int >= 1")
    from . import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"run_experiment(): backend={backend!r} is not a mask backend; choose one of {sorted(BACKENDS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, config)
    jobs = min(jobs, len(config.seeds))
    if jobs == 1:
        for seed in config.seeds:
            _run_seed(config, data, out_dir, seed, progress, backend)
    else:
        _run_parallel(config, data, out_dir, jobs, progress, backend)
    return [r for r in load_results(out_dir) if r["seed"] in config.seeds]


def _run_seed(
    config: ReproConfig, data: DatasetSplits, out_dir: Path, seed: int, progress: Progress | None,
    backend: str = "prune",
) -> None:
    """Every planned run of one seed, skipping finished ones (see the module docstring)."""
    from . import LotteryTicket, random_masks_like  # the public API only

    settings = PAPER_SETTINGS[config.model]
    runs_dir, state_dir = out_dir / "runs", out_dir / "state"
    done = {p.stem for p in runs_dir.glob("*.json")} if runs_dir.is_dir() else set()

    def new_model(seed: int) -> nn.Module:
        return build_model(config.model, input_shape=data.input_shape, num_classes=data.num_classes, seed=seed)

    def new_ticket(model: nn.Module, rates: Mapping[str, float], seed: int) -> Any:
        # layer_rates covers every target: the paper's per-layer rates, nothing global.
        return LotteryTicket(model, scope="layer", layer_rates=dict(rates), targets=list(rates),
                             rewind="init", seed=seed, backend=backend)

    def record(seed: int, kind: str, rnd: int, masks: Mapping[str, Tensor], result: dict[str, Any]) -> dict[str, Any]:
        kept, total, per = _remaining(masks)
        rec = {"seed": seed, "kind": kind, "round": rnd, "remaining": kept, "total": total,
               "weights_remaining": kept / total, "remaining_per_layer": per, **result}
        _write_json(runs_dir / f"{_run_key(seed, kind, rnd)}.json", rec)
        done.add(_run_key(seed, kind, rnd))
        logger.info(
            "seed %d %-7s round %2d: %6.2f%% weights, early stop at %5d, test acc %.4f (early stop) %.4f (end)",
            seed, kind, rnd, 100 * kept / total, result["early_stop_iteration"],
            result["test_acc_early_stop"], result["test_acc_end"],
        )
        return rec

    def train(model: nn.Module, seed: int, kind: str, rnd: int) -> dict[str, Any]:
        # Same data order for every kind at a given (seed, round): the comparisons differ only in
        # mask and initialization.
        return train_run(model, data, iterations=config.iterations, batch_size=config.batch_size,
                         lr=config.lr, eval_every=config.eval_every, seed=100_003 * seed + rnd, progress=progress)

    model = new_model(seed)
    rates = paper_layer_rates(model, settings)
    ticket = new_ticket(model, rates, seed)
    state_path = state_dir / f"seed{seed}-ticket.pt"
    if state_path.is_file():
        ticket.load_state_dict(_load_tensors(state_path), rewind=True)  # masks, snapshot, weights
        logger.info("seed %d: resumed the iterative ticket after round %d", seed, ticket.round)
    dense_path = state_dir / f"seed{seed}-dense-trained.pt"

    for rnd in range(config.rounds + 1):
        masks_path = state_dir / f"seed{seed}-masks-r{rnd:02d}.pt"
        # --- iterative ticket, round rnd (rnd prunes applied) ---
        if ticket.round == rnd:
            if not masks_path.is_file():
                _save_tensors(masks_path, {k: v.clone() for k, v in ticket.masks.items()})
            key = _run_key(seed, "ticket", rnd)
            if rnd < config.rounds:
                with ticket:
                    result = train(model, seed, "ticket", rnd)
                    if rnd == 0:
                        _save_tensors(dense_path, {k: v.detach().clone() for k, v in model.state_dict().items()})
                    masks_trained = {k: v.clone() for k, v in ticket.masks.items()}
                _save_tensors(state_path, ticket.state_dict())
                record(seed, "ticket", rnd, masks_trained, result)
            elif key not in done:
                record(seed, "ticket", rnd, ticket.masks, train(model, seed, "ticket", rnd))
        masks = _load_tensors(masks_path)
        if rnd == 0:
            continue
        # --- controls on this round's masks ---
        if "reinit" in config.controls and _run_key(seed, "reinit", rnd) not in done:
            other = new_model(1_000_000 + 1000 * seed + rnd)  # a fresh random initialization
            control = new_ticket(other, rates, seed)
            control.set_masks_(masks)  # the rewind point is this fresh initialization
            record(seed, "reinit", rnd, masks, train(other, seed, "reinit", rnd))
        if "random" in config.controls and _run_key(seed, "random", rnd) not in done:
            other = new_model(seed)  # the ticket's theta_0
            control = new_ticket(other, rates, seed)
            random_masks = random_masks_like(masks, seed=7919 * seed + rnd)
            control.set_masks_(random_masks)
            record(seed, "random", rnd, random_masks, train(other, seed, "random", rnd))
        # --- one-shot pruning straight to this round's per-layer sparsity ---
        if rnd in config.oneshot_rounds and _run_key(seed, "oneshot", rnd) not in done:
            other = new_model(seed)  # theta_0
            # this round's per-layer sparsity, reached in one prune
            oneshot = LotteryTicket(other, layer_sparsity={k: 1.0 - (1.0 - r) ** rnd for k, r in rates.items()},
                                    targets=list(rates), scope="layer", rewind="init", seed=seed,
                                    backend=backend)
            with oneshot:  # "training" = loading the dense network's trained weights
                other.load_state_dict(_load_tensors(dense_path))
            record(seed, "oneshot", rnd, oneshot.masks, train(other, seed, "oneshot", rnd))

    # The final ticket: masks after the last round, weights rewound to theta_0 (a ticket file,
    # loadable into a fresh model with torch_lottery.ticket_file.load_ticket).
    final_path = out_dir / f"ticket-seed{seed}.safetensors"
    if not final_path.is_file():
        ticket.save(final_path)
        logger.info("seed %d: final ticket (round %d) saved to %s", seed, ticket.round, final_path)



def _worker(config: ReproConfig, data: DatasetSplits, out_dir: str, seeds: Sequence[int], queue: Any,
            threads: int, level: int, backend: str) -> None:
    """Entry point of a worker process: run ``seeds``, report progress and log lines through ``queue``."""
    import traceback

    torch.set_num_threads(threads)

    class _Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            queue.put(("log", record.getMessage()))

    logger.addHandler(_Forward())
    logger.setLevel(level)
    logger.propagate = False
    try:
        for seed in seeds:
            _run_seed(config, data, Path(out_dir), seed, lambda n: queue.put(("progress", n)), backend)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        queue.put(("error", traceback.format_exc()))
    else:
        queue.put(("done", None))


def _run_parallel(config: ReproConfig, data: DatasetSplits, out_dir: Path, jobs: int,
                  progress: Progress | None, backend: str) -> None:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    groups = [list(config.seeds[i::jobs]) for i in range(jobs)]
    procs = [ctx.Process(target=_worker, args=(config, data, str(out_dir), g, queue, torch.get_num_threads(),
                                               logger.getEffectiveLevel(), backend), daemon=True) for g in groups]
    for proc in procs:
        proc.start()
    errors, running = [], len(procs)
    try:
        while running:
            kind, payload = queue.get()
            if kind == "progress":
                if progress is not None:
                    progress(payload)
            elif kind == "log":
                logger.info("%s", payload)
            else:
                running -= 1
                if kind == "error":
                    errors.append(payload)
    finally:
        for proc in procs:
            if proc.is_alive() and (errors or running):
                proc.terminate()
            proc.join()
    if errors:
        raise RuntimeError("run_experiment(): a worker process failed:\n" + "\n".join(errors))


# ----------------------------------------------------------------------------- summaries and files

_METRICS = ("weights_remaining", "early_stop_iteration", "test_acc_early_stop", "test_acc_end")


def summarize(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Aggregate runs over seeds: one row per ``(kind, round)`` with mean, std, min and max.

    ``std`` is the sample standard deviation (0.0 for a single seed). The ticket's round 0 is the
    dense network. Rows are ordered by kind (as in :data:`KINDS`) then round.
    """
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["kind"], run["round"]), []).append(run)
    rows = []
    for (kind, rnd), group in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
        row: dict[str, Any] = {"kind": kind, "round": rnd, "seeds": len(group)}
        for metric in _METRICS:
            values = [float(g[metric]) for g in group]
            row[f"{metric}_mean"] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{metric}_min"] = min(values)
            row[f"{metric}_max"] = max(values)
        rows.append(row)
    return rows


def format_table(summary: Sequence[Mapping[str, Any]], config: ReproConfig) -> str:
    """A Markdown table: per round, weights remaining, then early-stop iteration and test accuracy
    (at early stop / at the end) of each kind, as mean ± std over seeds."""
    by = {(r["kind"], r["round"]): r for r in summary}
    kinds = [k for k in KINDS if any(key[0] == k for key in by)]
    head = ["round", "weights %"]
    for kind in kinds:
        head += [f"{kind} ES iter", f"{kind} acc@ES %", f"{kind} acc@end %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rnd in range(config.rounds + 1):
        ticket = by.get(("ticket", rnd))
        if ticket is None:
            continue
        cells = [str(rnd), f"{100 * ticket['weights_remaining_mean']:.1f}"]
        for kind in kinds:
            row = by.get((kind, rnd)) or (by.get(("ticket", 0)) if rnd == 0 and kind != "ticket" else None)
            if row is None or (rnd == 0 and kind != "ticket"):
                cells += ["", "", ""]
                continue
            cells += [
                f"{row['early_stop_iteration_mean']:.0f} ± {row['early_stop_iteration_std']:.0f}",
                f"{100 * row['test_acc_early_stop_mean']:.2f} ± {100 * row['test_acc_early_stop_std']:.2f}",
                f"{100 * row['test_acc_end_mean']:.2f} ± {100 * row['test_acc_end_std']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(runs: Sequence[Mapping[str, Any]], config: ReproConfig, out_dir: PathLike) -> dict[str, Path]:
    """Write ``results.json`` (config, runs, summary), ``runs.csv``, ``summary.csv`` and ``table.md``.

    Returns:
        name -> path of each file written.
    """
    out_dir = Path(out_dir)
    summary = summarize(runs)
    paths = {name: out_dir / name for name in ("results.json", "runs.csv", "summary.csv", "table.md")}
    _write_json(paths["results.json"], {"config": config.to_dict(), "runs": list(runs), "summary": summary})
    columns = ["seed", "kind", "round", "remaining", "total", "weights_remaining", "early_stop_iteration",
               "early_stop_val_loss", "val_acc_early_stop", "test_acc_early_stop", "test_acc_end",
               "val_loss_end", "seconds"]
    with open(paths["runs.csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(runs, key=lambda r: (r["seed"], KINDS.index(r["kind"]), r["round"])))
    with open(paths["summary.csv"], "w", newline="") as f:
        if summary:
            writer = csv.DictWriter(f, fieldnames=list(summary[0]))
            writer.writeheader()
            writer.writerows(summary)
    paths["table.md"].write_text(format_table(summary, config) + "\n")
    return paths
