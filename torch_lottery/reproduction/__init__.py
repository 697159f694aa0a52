"""The reproduction of Frankle & Carbin (2019) on real data, built on the library's public API only.

``torch-lottery reproduce`` runs it; from Python the pieces are:

* :mod:`~torch_lottery.reproduction.data`: datasets through torchvision into in-memory splits;
* :mod:`~torch_lottery.reproduction.models`: the paper's networks and their settings;
* :mod:`~torch_lottery.reproduction.config`: the IMP experiment's settings and budget profiles;
* :mod:`~torch_lottery.reproduction.runner`: the training loop, run records, resume, worker processes;
* :mod:`~torch_lottery.reproduction.imp`: the IMP experiment, one seed at a time;
* :mod:`~torch_lottery.reproduction.experiments`: the registry of experiments and :func:`run_experiment`;
* :mod:`~torch_lottery.reproduction.report`: summaries over seeds, the table, JSON and CSV files;
* :mod:`~torch_lottery.reproduction.plots`: the figures (matplotlib, optional).

``import torch_lottery`` does not import this subpackage; torchvision and matplotlib are imported
only where they are used.
"""

from .config import KINDS, PROFILES, ReproConfig, make_config
from .data import DATASETS, DatasetSplits, Split, load_dataset
from .experiments import EXPERIMENTS, Experiment, run_experiment
from .imp import planned_runs
from .models import MODELS, PAPER_SETTINGS, build_model, paper_layer_rates
from .plots import plot_results
from .report import format_table, summarize, write_outputs
from .runner import evaluate, load_results, train_run

__all__ = [
    "DATASETS",
    "DatasetSplits",
    "EXPERIMENTS",
    "Experiment",
    "KINDS",
    "MODELS",
    "PAPER_SETTINGS",
    "PROFILES",
    "ReproConfig",
    "Split",
    "build_model",
    "evaluate",
    "format_table",
    "load_dataset",
    "load_results",
    "make_config",
    "paper_layer_rates",
    "planned_runs",
    "plot_results",
    "run_experiment",
    "summarize",
    "train_run",
    "write_outputs",
]
