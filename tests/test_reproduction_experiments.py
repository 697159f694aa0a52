"""Tests for torch_lottery.reproduction.experiments: the registry's contract, run_experiment's checks, and
that a new experiment is one module plus one registry entry (run here through run_experiment and the CLI)."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

from torch_lottery.cli import main
from torch_lottery.reproduction.config import make_config
from torch_lottery.reproduction.data import DEBIAN_FASHION_MNIST, load_dataset
from torch_lottery.reproduction.experiments import EXPERIMENTS, Experiment, run_experiment
from torch_lottery.reproduction.models import build_model
from torch_lottery.reproduction.runner import finished_runs, record_run, run_key, train_run, write_json

needs_data = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


# ----------------------------------------------------------------------------- a toy experiment


@dataclass(frozen=True)
class ToyConfig:
    profile: str
    dataset: str
    model: str
    iterations: int
    seeds: tuple[int, ...]
    keep: float
    validation_size: int = 5000
    train_limit: int | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "seeds": list(self.seeds)}


def toy_make_config(*, profile="quick", dataset="fashion-mnist", model="lenet", iterations=None, seeds=None,
                    train_limit=None, keep=1.0) -> ToyConfig:
    return ToyConfig(profile=profile, dataset=dataset, model=model, iterations=iterations or 20,
                     seeds=tuple(seeds or (0,)), keep=keep, train_limit=train_limit)


def toy_run_seed(config, data, out_dir, seed, *, progress, backend) -> None:
    """Train the dense network once, recording a mask that keeps the first ``keep`` of fc1's rows."""
    if run_key(seed, "dense", 0) in finished_runs(out_dir):
        return
    model = build_model(config.model, seed=seed)
    result = train_run(model, data, iterations=config.iterations, batch_size=60, lr=1e-3,
                       eval_every=config.iterations, seed=seed, progress=progress)
    mask = torch.zeros(model.fc1.weight.shape, dtype=torch.bool)
    mask[: int(config.keep * mask.shape[0])] = True
    record_run(out_dir, seed=seed, kind="dense", rnd=0, masks={"fc1.weight": mask}, result=result)


def toy_write_outputs(runs, config, out_dir) -> dict:
    path = Path(out_dir) / "toy.json"
    write_json(path, [r["weights_remaining"] for r in runs])
    return {"toy.json": path}


TOY = Experiment(
    name="toy",
    help="one dense run per seed",
    config_type=ToyConfig,
    make_config=toy_make_config,
    options=("profile", "dataset", "model", "iterations", "seeds", "train_limit", "keep"),
    describe=lambda c: [f"toy: {c.iterations} iterations, keep {c.keep}"],
    planned_runs=lambda c: [(s, "dense", 0) for s in c.seeds],
    run_seed=toy_run_seed,
    write_outputs=toy_write_outputs,
    format_report=lambda runs, c: f"toy report: {len(runs)} runs",
    add_arguments=lambda p: p.add_argument("--keep", type=float, default=1.0, help="toy: fraction of fc1 rows kept"),
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batch-60 LeNet gains nothing from intra-op threads and slows down badly on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Experiment:
    monkeypatch.setitem(EXPERIMENTS, "toy", TOY)
    return TOY


# ----------------------------------------------------------------------------- the registry's contract


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_registered_experiment_keeps_the_contract(name: str) -> None:
    entry = EXPERIMENTS[name]
    assert entry.name == name and entry.help
    config = entry.make_config()
    assert isinstance(config, entry.config_type)
    json.dumps(config.to_dict())
    for attr in ("profile", "dataset", "model", "iterations", "seeds", "validation_size", "train_limit"):
        assert hasattr(config, attr), attr
    # worker processes receive run_seed by reference: it must be a module-level function
    assert getattr(sys.modules[entry.run_seed.__module__], entry.run_seed.__qualname__) is entry.run_seed
    plan = entry.planned_runs(config)
    assert plan and len(set(plan)) == len(plan) and {seed for seed, _, _ in plan} == set(config.seeds)
    assert all(isinstance(line, str) for line in entry.describe(config))


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_the_cli_passes_every_registered_experiment_all_its_options(name: str) -> None:
    """A flag the command line adds but never passes to make_config would be silently ignored."""
    import argparse
    import inspect

    from torch_lottery.cli import build_parser

    entry = EXPERIMENTS[name]
    parsed = vars(build_parser().parse_args(["reproduce", "--experiment", name]))
    assert parsed["experiment"] == name
    accepted = inspect.signature(entry.make_config).parameters
    assert set(entry.options) <= set(accepted), "options make_config does not take"
    assert set(entry.options) - {"profile"} <= set(parsed), "options without a flag (profile comes from --full)"
    if entry.add_arguments is not None:
        own = argparse.ArgumentParser()
        entry.add_arguments(own)
        flags = set(vars(own.parse_args([])))
        # --granularity is the command line's own switch to the structured experiment, not an option
        assert flags - {"granularity"} <= set(entry.options), "flags the experiment adds but does not take"


def test_the_cli_offers_exactly_the_registered_experiments(capsys) -> None:
    from torch_lottery.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "--experiment", "nonexistent"])
    err = capsys.readouterr().err
    assert "choose from " + ", ".join(EXPERIMENTS) in err.replace("'", "")


def test_imp_is_the_default_experiment() -> None:
    from torch_lottery.cli import build_parser

    assert build_parser().parse_args(["reproduce"]).experiment == "imp"
    assert run_experiment.__kwdefaults__["experiment"] == "imp"


def test_run_experiment_checks_its_arguments_before_touching_out_dir(tmp_path: Path, toy) -> None:
    out = tmp_path / "out"
    config = make_config(iterations=10, rounds=0, seeds=[0], oneshot_every=0)
    with pytest.raises(ValueError, match=re.escape(f"experiment='nonexistent' is unknown; use one of {list(EXPERIMENTS)}")):
        run_experiment(config, None, out, experiment="nonexistent")
    with pytest.raises(ValueError, match=r"config is a ReproConfig, but experiment='toy' takes a ToyConfig; build "
                                         r"it with EXPERIMENTS\['toy'\].make_config"):
        run_experiment(config, None, out, experiment="toy")
    with pytest.raises(ValueError, match=r"run_experiment\(\): jobs=0 must be an int >= 1"):
        run_experiment(config, None, out, jobs=0)
    with pytest.raises(ValueError, match=r"run_experiment\(\): backend='bits' is not a mask backend; choose one of"):
        run_experiment(config, None, out, backend="bits")
    assert not out.exists()


# ----------------------------------------------------------------------------- a new experiment, end to end


@needs_data
def test_a_registered_experiment_runs_and_resumes_through_run_experiment(tmp_path: Path, toy) -> None:
    data = load_dataset("fashion-mnist", root=tmp_path / "data", train_limit=600)
    config = toy_make_config(seeds=[0, 1], keep=0.5, train_limit=600)
    runs = run_experiment(config, data, tmp_path / "out", experiment="toy")
    assert [(r["seed"], r["kind"], r["round"], r["remaining"], r["total"]) for r in runs] == [
        (0, "dense", 0, 150 * 784, 300 * 784), (1, "dense", 0, 150 * 784, 300 * 784)]
    ticks: list[int] = []
    assert run_experiment(config, data, tmp_path / "out", experiment="toy", progress=ticks.append) == runs
    assert ticks == []
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == config.to_dict()


@needs_data
def test_a_registered_experiment_runs_from_the_cli_with_its_own_flags(
        tmp_path: Path, toy, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["reproduce", "--experiment", "toy", "--iterations", "20", "--seeds", "1", "--train-limit", "600",
            "--keep", "0.25", "--data-dir", str(tmp_path / "data"), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    out = Path("runs/toy-lenet-fashion-mnist-quick")  # other experiments get their name in the default path
    assert f"-> {out}" in printed and "  toy: 20 iterations, keep 0.25" in printed
    assert "toy report: 1 runs" in printed and f"wrote: {out / 'toy.json'}" in printed
    assert json.loads((tmp_path / out / "toy.json").read_text()) == [0.25]


def test_the_cli_refuses_flags_the_experiment_does_not_take(tmp_path: Path, toy, capsys) -> None:
    rc = main(["reproduce", "--experiment", "toy", "--controls", "reinit", "--rounds", "3",
               "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "torch-lottery reproduce: error: --experiment toy does not take --rounds, --controls; leave them out" in err
    assert not (tmp_path / "out").exists()
