"""Train and evaluate one network, record each finished run, and run an experiment's seeds (resume, workers).

This is the machinery every experiment of the reproduction shares:

* :func:`train_run` trains a model with Adam on in-memory data and tracks the early-stop point
  (the minimum validation loss); :func:`evaluate` measures loss and accuracy.
* :class:`SeedRun` is one seed's setup, shared by the experiments' per-seed functions: its
  theta_0 (the model built under the seed), the paper's layer-wise ticket, training with the
  configuration's settings and the seed's data order, run records and resume files.
* :func:`record_run` writes one finished run to ``<out_dir>/runs/<key>.json`` at once (with the
  per-tensor remaining counts of its masks); :func:`finished_runs` and :func:`load_results` read
  them back, which is what makes an interrupted experiment resumable.
* :func:`run_seeds` calls an experiment's per-seed function for every seed of a configuration,
  in this process or spread over worker processes (a seed's runs always stay in one process, so
  the numbers do not depend on the number of workers), after refusing an output directory that
  holds another configuration.

Nothing here prints: progress goes to a callback and to ``logging``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import LotteryTicket  # the public API only
from ..files import atomic_write
from ..summary import mask_rows, totals
from .data import DatasetSplits, Split
from .models import PAPER_SETTINGS, build_model, paper_layer_rates

__all__ = [
    "Progress",
    "SeedRun",
    "SeedRunner",
    "evaluate",
    "finished_runs",
    "load_results",
    "load_tensors",
    "record_run",
    "run_key",
    "run_seeds",
    "save_tensors",
    "train_run",
    "write_json",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[int], None]
"""Called with the number of training iterations just done."""


class SeedRunner(Protocol):
    """An experiment's per-seed function: trains every planned run of ``seed`` not yet in ``out_dir``.

    It must be a module-level function (worker processes receive it by reference), write each
    finished run with :func:`record_run`, and skip the runs :func:`finished_runs` lists.
    """

    def __call__(self, config: Any, data: DatasetSplits, out_dir: Path, seed: int, *,
                 progress: Progress | None, backend: str) -> None: ...


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
    parameters: Iterable[Tensor] | None = None,
    optimizer: Callable[[list[Tensor]], torch.optim.Optimizer] | None = None,
    scheduler: Any = None,
    stop: Callable[[int], bool] | None = None,
) -> dict[str, Any]:
    """Train ``model`` with Adam for ``iterations`` minibatches, tracking the early-stop point.

    Minibatches are drawn without replacement from a fresh permutation each epoch (seeded by
    ``seed``). The validation loss is measured every ``eval_every`` iterations and at the last one;
    the model state at the minimum validation loss is kept, so the test accuracy at the early-stop
    iteration is measured on exactly that state. The model is left in its end-of-training state.

    ``parameters`` (default ``model.parameters()``) are the tensors trained; tensors given here
    that are not in ``model.state_dict()`` (a supermask's scores) are kept at the early-stop point
    and restored with the model's state. ``optimizer`` builds the optimizer from them (default
    ``Adam(lr=lr)``; return an optimizer kept by the caller to carry its state across runs).
    ``scheduler``, an LR scheduler, is stepped after every optimizer step. ``stop`` is called after
    each validation but the last with the iteration; returning ``True`` ends training there (an
    early-bird search stops when its ticket has emerged).

    Returns:
        dict with ``early_stop_iteration``, ``early_stop_val_loss``, ``val_acc_early_stop``,
        ``test_acc_early_stop``, ``test_acc_end``, ``val_loss_end``, ``curve`` (list of
        ``[iteration, val_loss, val_acc]``), ``iterations_trained`` and ``seconds``.
    """
    start_time = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    params = list(parameters) if parameters is not None else list(model.parameters())
    own = {id(t) for t in model.state_dict(keep_vars=True).values()}
    extra = [p for p in params if id(p) not in own]  # trained tensors the model's state does not hold
    opt = optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=lr)
    n = len(data.train)
    perm, pos = torch.randperm(n, generator=generator), 0
    best_loss, best_iter, best_acc = math.inf, 0, 0.0
    best_state: dict[str, Tensor] | None = None
    best_extra: list[Tensor] = []
    curve: list[list[float]] = []
    model.train()
    since_report, trained = 0, 0
    for it in range(1, iterations + 1):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        loss = F.cross_entropy(model(data.train.x[idx]), data.train.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        since_report += 1
        trained = it
        if it % eval_every == 0 or it == iterations:
            val_loss, val_acc = evaluate(model, data.val)
            curve.append([it, val_loss, val_acc])
            if val_loss < best_loss:
                best_loss, best_iter, best_acc = val_loss, it, val_acc
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_extra = [p.detach().clone() for p in extra]
            if progress is not None:
                progress(since_report)
            since_report = 0
            if stop is not None and it < iterations and stop(it):
                break
    _, test_acc_end = evaluate(model, data.test)
    end_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    end_extra = [p.detach().clone() for p in extra]
    assert best_state is not None  # the last iteration is always evaluated
    _load(model, extra, best_state, best_extra)
    _, test_acc_es = evaluate(model, data.test)
    _load(model, extra, end_state, end_extra)
    return {
        "early_stop_iteration": best_iter,
        "early_stop_val_loss": best_loss,
        "val_acc_early_stop": best_acc,
        "test_acc_early_stop": test_acc_es,
        "test_acc_end": test_acc_end,
        "val_loss_end": curve[-1][1],
        "curve": curve,
        "iterations_trained": trained,
        "seconds": time.perf_counter() - start_time,
    }


def _load(model: nn.Module, extra: Sequence[Tensor], state: Mapping[str, Tensor], values: Sequence[Tensor]) -> None:
    model.load_state_dict(state)
    with torch.no_grad():
        for p, v in zip(extra, values):
            p.copy_(v)


# ----------------------------------------------------------------------------- run records and files


def run_key(seed: int, kind: str, rnd: int) -> str:
    """The name of a run's record, ``seed<seed>-<kind>-r<round, 2 digits>`` (e.g. ``seed0-ticket-r03``)."""
    return f"seed{seed}-{kind}-r{rnd:02d}"


def write_json(path: Path, obj: Any, *, fn: str = "run_experiment") -> None:
    """Write ``obj`` as JSON through :func:`torch_lottery.files.atomic_write` (creating the folder), so an
    interrupted run never leaves a half file; ``fn`` is the function named in an ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, fn=fn) as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"))


def save_tensors(path: Path, obj: Any) -> None:
    """``torch.save`` through :func:`torch_lottery.files.atomic_write`: a resume point is either whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, fn="run_experiment") as f:
        torch.save(obj, f)


def load_tensors(path: Path) -> Any:
    """Read what :func:`save_tensors` wrote (``weights_only``: tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def record_run(out_dir: Path, *, seed: int, kind: str, rnd: int, masks: Mapping[str, Tensor],
               result: Mapping[str, Any]) -> dict[str, Any]:
    """Write one finished run to ``<out_dir>/runs/<run_key>.json`` and return its record.

    The record is ``result`` (from :func:`train_run`) plus ``seed``, ``kind``, ``round`` and the
    weights the run trained with: ``remaining``, ``total``, ``weights_remaining`` (their ratio; 1.0
    without weights) and ``remaining_per_layer`` (``{fqn: count}``), counted from ``masks`` by
    :func:`torch_lottery.summary.mask_rows`.
    """
    rows = mask_rows(masks)
    kept, total, _ = totals(rows)
    rec = {"seed": seed, "kind": kind, "round": rnd, "remaining": kept, "total": total,
           "weights_remaining": kept / total if total else 1.0,
           "remaining_per_layer": {row["fqn"]: row["remaining"] for row in rows}, **result}
    write_json(out_dir / "runs" / f"{run_key(seed, kind, rnd)}.json", rec)
    logger.info(
        "seed %d %-7s round %2d: %6.2f%% weights, early stop at %5d, test acc %.4f (early stop) %.4f (end)",
        seed, kind, rnd, 100 * rec["weights_remaining"], result["early_stop_iteration"],
        result["test_acc_early_stop"], result["test_acc_end"],
    )
    return rec


def finished_runs(out_dir: Path) -> set[str]:
    """The :func:`run_key` of every run recorded under ``<out_dir>/runs/``."""
    runs_dir = out_dir / "runs"
    return {p.stem for p in runs_dir.glob("*.json")} if runs_dir.is_dir() else set()


def load_results(out_dir: PathLike) -> list[dict[str, Any]]:
    """Every finished run recorded under ``<out_dir>/runs/``, in file-name order (all seeds there)."""
    runs = Path(out_dir) / "runs"
    if not runs.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]


def _check_config(out_dir: Path, config: Any) -> None:
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
    write_json(path, new)


# ----------------------------------------------------------------------------- one seed's setup


class SeedRun:
    """One seed of an experiment: its models, tickets, training, run records and resume files.

    Every experiment's per-seed function starts from the same setup: theta_0 is the model built
    under the seed, pruning follows the paper's layer-wise rates, each run trains with the
    configuration's settings on the data order of its ``(seed, round)`` (so the kinds of an
    experiment differ only in what they compare), and what is recorded under ``out_dir`` is not
    run again. Experiments with more per-seed state subclass it.

    Args:
        config: the experiment's configuration; :meth:`train` reads its ``iterations``,
            ``batch_size``, ``lr`` and ``eval_every`` unless given, :meth:`new_model` its ``model``.
        data: the dataset splits (their ``input_shape`` and ``num_classes`` shape the models).
        out_dir: the experiment's output directory.
        seed: the seed (initialization, data order).
        progress: called with the number of training iterations just done.
        backend: the tickets' mask backend.

    Example:
        >>> from types import SimpleNamespace
        >>> run = SeedRun(SimpleNamespace(model="lenet"), SimpleNamespace(input_shape=(1, 28, 28), num_classes=10),
        ...               Path("runs/x"), 3)
        >>> run.path("ticket"), run.data_seed(2), run.rates["fc3.weight"]
        (PosixPath('runs/x/state/seed3-ticket.pt'), 300011, 0.1)
    """

    def __init__(self, config: Any, data: DatasetSplits, out_dir: Path, seed: int, *,
                 progress: Progress | None = None, backend: str = "prune") -> None:
        self.config, self.data, self.out_dir, self.seed = config, data, Path(out_dir), seed
        self.progress, self.backend = progress, backend
        self.done = finished_runs(self.out_dir)
        self._rates: dict[str, float] | None = None

    def pending(self, kind: str, rnd: int) -> bool:
        """Whether the run ``(kind, rnd)`` of this seed is not recorded yet."""
        return run_key(self.seed, kind, rnd) not in self.done

    def path(self, what: str) -> Path:
        """A resume file of this seed: ``<out_dir>/state/seed<seed>-<what>.pt``."""
        return self.out_dir / "state" / f"seed{self.seed}-{what}.pt"

    def data_seed(self, rnd: int) -> int:
        """The minibatch-order seed of round ``rnd`` (the same for every kind at a given round)."""
        return 100_003 * self.seed + rnd

    def new_model(self, seed: int | None = None, **options: Any) -> nn.Module:
        """``config.model`` built under ``seed`` (default: this seed, so theta_0); ``options`` go to
        :func:`~torch_lottery.reproduction.models.build_model` (``dropout``)."""
        return build_model(self.config.model, input_shape=self.data.input_shape, num_classes=self.data.num_classes,
                           seed=self.seed if seed is None else seed, **options)

    @property
    def rates(self) -> dict[str, float]:
        """The paper's per-layer pruning rates of ``config.model`` (FQN -> fraction pruned per round)."""
        if self._rates is None:
            self._rates = paper_layer_rates(self.new_model(), PAPER_SETTINGS[self.config.model])
        return self._rates

    def layer_ticket(self, model: nn.Module, *, prunes: int | None = None, rewind: Any = "init",
                     **options: Any) -> LotteryTicket:
        """A layer-wise ticket on the paper's targets: pruning at :attr:`rates` each round, or with
        ``prunes=n`` straight to the sparsity ``n`` such rounds reach (one-shot); ``options`` go to
        :class:`~torch_lottery.LotteryTicket` (``optimizer``, ``scheduler``)."""
        if prunes is None:
            schedule: dict[str, Any] = {"layer_rates": dict(self.rates)}
        else:
            schedule = {"layer_sparsity": {k: 1.0 - (1.0 - r) ** prunes for k, r in self.rates.items()}}
        return LotteryTicket(model, scope="layer", targets=list(self.rates), rewind=rewind, seed=self.seed,
                             backend=self.backend, **schedule, **options)

    def train(self, model: nn.Module, rnd: int, **options: Any) -> dict[str, Any]:
        """:func:`train_run` of round ``rnd``: the configuration's ``iterations``, ``batch_size``, ``lr``
        and ``eval_every``, the round's :meth:`data_seed` and this seed's progress, unless ``options``
        give them (any other :func:`train_run` option passes through)."""
        for name in ("iterations", "batch_size", "lr", "eval_every"):
            if name not in options:
                options[name] = getattr(self.config, name)
        options.setdefault("seed", self.data_seed(rnd))
        options.setdefault("progress", self.progress)
        return train_run(model, self.data, **options)

    def record(self, kind: str, rnd: int, masks: Mapping[str, Tensor], result: Mapping[str, Any]) -> dict[str, Any]:
        """:func:`record_run` of this seed's run ``(kind, rnd)``; it is no longer :meth:`pending`."""
        rec = record_run(self.out_dir, seed=self.seed, kind=kind, rnd=rnd, masks=masks, result=result)
        self.done.add(run_key(self.seed, kind, rnd))
        return rec


# ----------------------------------------------------------------------------- seeds, resume, workers


def run_seeds(run_seed: SeedRunner, config: Any, data: DatasetSplits, out_dir: PathLike, *,
              progress: Progress | None = None, jobs: int = 1, backend: str = "prune") -> list[dict[str, Any]]:
    """Run ``run_seed`` for every seed of ``config`` into ``out_dir`` and return the seeds' run records.

    ``config`` needs ``seeds`` and ``to_dict()`` (saved as ``config.json``; an ``out_dir`` holding
    another configuration, other than its seeds, is refused). With ``jobs > 1`` the seeds are shared
    out among that many spawned worker processes, each using ``torch.get_num_threads()`` threads;
    their progress and log lines come back through a queue.

    Raises:
        ValueError: ``out_dir`` holds results of a different configuration.
        RuntimeError: a worker process failed (its traceback is in the message).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, config)
    jobs = min(jobs, len(config.seeds))
    if jobs == 1:
        for seed in config.seeds:
            run_seed(config, data, out_dir, seed, progress=progress, backend=backend)
    else:
        _run_parallel(run_seed, config, data, out_dir, jobs, progress, backend)
    return [r for r in load_results(out_dir) if r["seed"] in config.seeds]


_PACKAGE_LOGGER = __name__.rpartition(".")[0]  # "torch_lottery.reproduction": every experiment's log lines


def _worker(run_seed: SeedRunner, config: Any, data: DatasetSplits, out_dir: str, seeds: Sequence[int], queue: Any,
            threads: int, level: int, backend: str) -> None:
    """Entry point of a worker process: run ``seeds``, report progress and log lines through ``queue``."""
    import traceback

    torch.set_num_threads(threads)

    class _Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            queue.put(("log", record.getMessage()))

    package_logger = logging.getLogger(_PACKAGE_LOGGER)
    package_logger.addHandler(_Forward())
    package_logger.setLevel(level)
    package_logger.propagate = False
    try:
        for seed in seeds:
            run_seed(config, data, Path(out_dir), seed, progress=lambda n: queue.put(("progress", n)),
                     backend=backend)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        queue.put(("error", traceback.format_exc()))
    else:
        queue.put(("done", None))


def _run_parallel(run_seed: SeedRunner, config: Any, data: DatasetSplits, out_dir: Path, jobs: int,
                  progress: Progress | None, backend: str) -> None:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    groups = [list(config.seeds[i::jobs]) for i in range(jobs)]
    level = logging.getLogger(_PACKAGE_LOGGER).getEffectiveLevel()
    procs = [ctx.Process(target=_worker, args=(run_seed, config, data, str(out_dir), g, queue,
                                               torch.get_num_threads(), level, backend), daemon=True)
             for g in groups]
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
