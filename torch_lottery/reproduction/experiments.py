"""The registry of the reproduction's experiments (:data:`EXPERIMENTS`) and :func:`run_experiment`, which runs one.

An experiment is one module with its per-seed function and an :class:`Experiment` entry here
that names the functions the command line and :func:`run_experiment` call: how to build its
configuration, what it trains, how to report and plot it. The shared machinery (training loop,
run records, resume, worker processes) is in :mod:`torch_lottery.reproduction.runner`; adding an
experiment adds a module and an entry, without editing the existing ones.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from ..backends import check_backend
import torch_lottery.reproduction.dropout as dropout
import torch_lottery.reproduction.early_bird as early_bird
import torch_lottery.reproduction.rewinding as rewinding

from .config import ReproConfig, describe, make_config
from .data import DatasetSplits
from .imp import planned_runs, run_seed
from .init_experiment import (InitConfig, add_init_arguments, describe_init, format_init_report, make_init_config,
                              planned_init_runs, plot_init, run_init_seed, write_init_outputs)
from .plots import plot_runs
from .report import format_report, write_outputs
from .planting import PlantedConfig
from .planting import describe as planted_describe, format_report as planted_report
from .planting import make_config as planted_config, planned_runs as planted_runs, run_seed as planted_seed
from .planting import write_outputs as planted_outputs
from .stability import StabilityConfig, add_arguments as stability_arguments
from .stability import describe as stability_describe, format_report as stability_report
from .stability import make_config as stability_config, planned_runs as stability_runs, plot as stability_plot
from .stability import run_seed as stability_seed, write_outputs as stability_outputs
from .runner import Progress, SeedRunner, run_seeds
from .strong import (
    StrongConfig,
    describe as strong_describe,
    format_report as strong_report,
    make_config as strong_config,
    planned_runs as strong_runs,
    plot_runs as strong_plot,
    run_seed as strong_seed,
    write_outputs as strong_outputs,
)
from .structured_imp import add_arguments as structured_arguments
from .structured_imp import format_report as structured_report
from .structured_imp import planned_runs as structured_runs
from .structured_imp import run_seed as structured_seed
from .structured_imp import write_outputs as structured_outputs

__all__ = ["EXPERIMENTS", "Experiment", "run_experiment"]

PathLike = Union[str, Path]
Runs = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Experiment:
    """One experiment of ``torch-lottery reproduce --experiment NAME``: the functions that plan, run and report it.

    Its configuration object (built by ``make_config``) must be a frozen dataclass with ``profile``,
    ``dataset``, ``model``, ``iterations`` (of every run), ``seeds``, ``validation_size``,
    ``train_limit`` and a JSON-able ``to_dict()``.

    Attributes:
        name: the ``--experiment`` value.
        help: one line for ``--help``.
        config_type: the class ``make_config`` returns (checked by :func:`run_experiment`).
        make_config: keyword options -> configuration; raises ``ValueError`` on bad values.
        options: the keyword options of ``make_config`` the command line passes (from the flags
            ``profile`` (``--full``), ``dataset``, ``model``, ``iterations``, ``rounds``, ``seeds``,
            ``eval_every``, ``oneshot_every``, ``controls``, ``train_limit``, and those of
            ``add_arguments``); a flag the experiment does not take is refused when given.
        describe: configuration -> lines that say what it runs (printed before it starts).
        planned_runs: configuration -> every ``(seed, kind, round)`` it trains.
        run_seed: the module-level per-seed function (see :class:`~torch_lottery.reproduction.runner.SeedRunner`).
        write_outputs: ``(runs, configuration, out_dir) -> {name: path}`` of the result files.
        format_report: ``(runs, configuration) -> text`` printed at the end.
        plot: ``(runs, configuration, out_dir) -> {name: path}`` of the figures, or ``None``.
        add_arguments: adds the experiment's own flags to the ``reproduce`` parser, or ``None``.
        needs_data: whether the command line loads ``config.dataset`` for it (``False``: the
            experiment makes its own data and receives ``None``).
    """

    name: str
    help: str
    config_type: type
    make_config: Callable[..., Any]
    options: tuple[str, ...]
    describe: Callable[[Any], list[str]]
    planned_runs: Callable[[Any], list[tuple[int, str, int]]]
    run_seed: SeedRunner
    write_outputs: Callable[[Runs, Any, PathLike], dict[str, Path]]
    format_report: Callable[[Runs, Any], str]
    plot: Optional[Callable[[Runs, Any, PathLike], dict[str, Path]]] = None
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None
    needs_data: bool = True


EXPERIMENTS: dict[str, Experiment] = {
    "imp": Experiment(
        name="imp",
        help="iterative magnitude pruning with rewinding to theta_0 against random re-init, random masks "
             "and one-shot pruning (Frankle & Carbin 2019)",
        config_type=ReproConfig,
        make_config=make_config,
        options=("profile", "dataset", "model", "iterations", "rounds", "seeds", "eval_every", "oneshot_every",
                 "controls", "train_limit"),
        describe=describe,
        planned_runs=planned_runs,
        run_seed=run_seed,
        write_outputs=write_outputs,
        format_report=format_report,
        plot=plot_runs,
    ),
    "strong": Experiment(
        name="strong",
        help="strong tickets: edge-popup supermasks over untrained random weights (kaiming normal, signed "
             "constant) at sparsity 0.3/0.5/0.7 against the trained dense network (Ramanujan et al. 2020)",
        config_type=StrongConfig,
        make_config=strong_config,
        options=("profile", "dataset", "model", "iterations", "seeds", "eval_every", "train_limit"),
        describe=strong_describe,
        planned_runs=strong_runs,
        run_seed=strong_seed,
        write_outputs=strong_outputs,
        format_report=strong_report,
        plot=strong_plot,
    ),
    "early-bird": Experiment(
        name="early-bird",
        help="IMP whose rounds stop when EarlyBird fires (You et al. 2020) against full IMP: training compute "
             "and accuracy of the ~10%-weights ticket",
        config_type=early_bird.EarlyBirdConfig,
        make_config=early_bird.make_config,
        options=("profile", "dataset", "model", "iterations", "rounds", "seeds", "eval_every", "train_limit",
                 "epsilon", "window"),
        describe=early_bird.describe,
        planned_runs=early_bird.planned_runs,
        run_seed=early_bird.run_seed,
        write_outputs=early_bird.write_outputs,
        format_report=early_bird.format_report,
        plot=early_bird.plot,
        add_arguments=early_bird.add_arguments,
    ),
    "rewinding": Experiment(
        name="rewinding",
        help="weight rewinding to theta_0 and theta_k, learning-rate rewinding and fine-tuning over the IMP "
             "rounds, under a step schedule (Renda et al. 2020)",
        config_type=rewinding.RewindingConfig,
        make_config=rewinding.make_config,
        options=("profile", "dataset", "model", "iterations", "rounds", "seeds", "eval_every", "train_limit",
                 "rewind_step"),
        describe=rewinding.describe,
        planned_runs=rewinding.planned_runs,
        run_seed=rewinding.run_seed,
        write_outputs=rewinding.write_outputs,
        format_report=rewinding.format_report,
        plot=rewinding.plot,
        add_arguments=rewinding.add_arguments,
    ),
    "dropout": Experiment(
        name="dropout",
        help="IMP of LeNet-300-100 with and without dropout: early-stop iteration and accuracy of the tickets",
        config_type=dropout.DropoutConfig,
        make_config=dropout.make_config,
        options=("profile", "dataset", "model", "iterations", "rounds", "seeds", "eval_every", "train_limit",
                 "dropout"),
        describe=dropout.describe,
        planned_runs=dropout.planned_runs,
        run_seed=dropout.run_seed,
        write_outputs=dropout.write_outputs,
        format_report=dropout.format_report,
        plot=dropout.plot,
        add_arguments=dropout.add_arguments,
    ),
    "structured": Experiment(
        name="structured",
        help="the imp experiment plus structured tickets (whole neurons, granularity='channel'): their reinit "
             "control, refill from the weight ticket (Chen et al. 2022) and the compact models' speed; "
             "also selected by --granularity channel",
        config_type=ReproConfig,
        make_config=make_config,
        options=("profile", "dataset", "model", "iterations", "rounds", "seeds", "eval_every", "oneshot_every",
                 "controls", "train_limit"),
        describe=describe,
        planned_runs=structured_runs,
        run_seed=structured_seed,
        write_outputs=structured_outputs,
        format_report=structured_report,
        add_arguments=structured_arguments,
    ),
    "init": Experiment(
        name="init",
        help="pruning at initialization (SNIP, GraSP, SynFlow, magnitude, random masks by density rule) against "
             "IMP, from 52%% to 0.5%% of the weights, with layer collapse and the shuffle ablation",
        config_type=InitConfig,
        make_config=make_init_config,
        options=("profile", "dataset", "model", "iterations", "seeds", "eval_every", "train_limit", "levels",
                 "synflow_iterations", "shuffle_every"),
        describe=describe_init,
        planned_runs=planned_init_runs,
        run_seed=run_init_seed,
        write_outputs=write_init_outputs,
        format_report=format_init_report,
        plot=plot_init,
        add_arguments=add_init_arguments,
    ),
    "stability": Experiment(
        name="stability",
        help="instability (linear mode connectivity) of the dense network and of IMP tickets for rewind "
             "points k (Frankle et al. 2020)",
        config_type=StabilityConfig,
        make_config=stability_config,
        options=("profile", "dataset", "model", "iterations", "seeds", "train_limit", "rewind_points", "remaining",
                 "points"),
        describe=stability_describe,
        planned_runs=stability_runs,
        run_seed=stability_seed,
        write_outputs=stability_outputs,
        format_report=stability_report,
        plot=stability_plot,
        add_arguments=stability_arguments,
    ),
    "planted": Experiment(
        name="planted",
        help="how much of a planted ticket (Plant 'n' Seek) IMP, one-shot and init pruning recover, by sparsity",
        config_type=PlantedConfig,
        make_config=planted_config,
        options=("profile", "iterations", "seeds"),
        describe=planted_describe,
        planned_runs=planted_runs,
        run_seed=planted_seed,
        write_outputs=planted_outputs,
        format_report=planted_report,
        needs_data=False,
    ),
}
"""Experiment name -> :class:`Experiment`; ``"imp"`` is the default of :func:`run_experiment` and the CLI."""


def run_experiment(
    config: Any,
    data: DatasetSplits,
    out_dir: PathLike,
    *,
    experiment: str = "imp",
    progress: Progress | None = None,
    jobs: int = 1,
    backend: str = "prune",
) -> list[dict[str, Any]]:
    """Run (or resume) every planned training run of ``config`` and return all run records.

    Args:
        config: from the experiment's ``make_config`` (for ``"imp"``:
            :func:`torch_lottery.reproduction.config.make_config`).
        data: from :func:`torch_lottery.reproduction.data.load_dataset` (``config.dataset``).
        out_dir: results directory; finished runs found there are not repeated.
        experiment: a name in :data:`EXPERIMENTS`.
        progress: called with the number of training iterations just done.
        jobs: worker processes; seeds are shared out among them (each seed's runs stay in one
            process, so results do not depend on ``jobs``). Each worker uses
            ``torch.get_num_threads()`` of the caller.
        backend: the tickets' mask backend (``LotteryTicket(backend=...)``). The paper's
            optimizers are elementwise, so every backend gives the same numbers; "baked" is
            faster. Like ``jobs``, it is not part of the configuration.

    Returns:
        One dict per run (see :func:`torch_lottery.reproduction.runner.train_run`, plus ``seed``,
        ``kind``, ``round``, ``weights_remaining``, ``remaining``, ``total``,
        ``remaining_per_layer``), in file order.

    Raises:
        ValueError: unknown ``experiment``, a ``config`` of another experiment, ``out_dir`` holds
            results of a different configuration (other than its seeds: adding seeds reuses the
            finished ones), ``jobs`` < 1, or an unknown ``backend``.
        RuntimeError: a worker process failed (its traceback is in the message).

    Example:
        >>> from torch_lottery.reproduction import load_dataset, make_config
        >>> data = load_dataset("fashion-mnist", root="data", train_limit=600)  # doctest: +SKIP
        >>> runs = run_experiment(make_config(iterations=20, rounds=1, seeds=[0]), data, "runs/x")  # doctest: +SKIP
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"run_experiment(): experiment={experiment!r} is unknown; use one of {list(EXPERIMENTS)}")
    entry = EXPERIMENTS[experiment]
    if not isinstance(config, entry.config_type):
        raise ValueError(
            f"run_experiment(): config is a {type(config).__name__}, but experiment={experiment!r} takes a "
            f"{entry.config_type.__name__}; build it with EXPERIMENTS[{experiment!r}].make_config"
        )
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"run_experiment(): jobs={jobs!r} must be an int >= 1")
    check_backend(backend, fn="run_experiment")
    return run_seeds(entry.run_seed, config, data, out_dir, progress=progress, jobs=jobs, backend=backend)
