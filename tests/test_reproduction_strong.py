"""Tests for torch_lottery.reproduction.strong (the strong-ticket experiment) and train_run's ``parameters=``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torch_lottery import SupermaskTicket
from torch_lottery.cli import main
from torch_lottery.reproduction import strong
from torch_lottery.reproduction.data import DEBIAN_FASHION_MNIST, load_dataset
from torch_lottery.reproduction.experiments import EXPERIMENTS, run_experiment
from torch_lottery.reproduction.models import build_model
from torch_lottery.reproduction.runner import evaluate, load_results, train_run

needs_data = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("fashion-mnist", root=tmp_path_factory.mktemp("data"), train_limit=1200)


def test_make_config_and_planned_runs():
    config = strong.make_config(seeds=[3])
    assert config.profile == "quick+custom" and config.iterations == 2000
    assert strong.planned_runs(config) == [
        (3, "dense", 0), (3, "kaiming_normal", 30), (3, "kaiming_normal", 50), (3, "kaiming_normal", 70),
        (3, "signed_constant", 30), (3, "signed_constant", 50), (3, "signed_constant", 70),
    ]
    assert strong.make_config(profile="full").seeds == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="iterations=0 must be an int >= 1"):
        strong.make_config(iterations=0)
    with pytest.raises(ValueError, match="profile='huge' is unknown"):
        strong.make_config(profile="huge")
    assert EXPERIMENTS["strong"].config_type is strong.StrongConfig


def _score_run(data, iterations):
    model = build_model("lenet", seed=0)
    ticket = SupermaskTicket(model, sparsity=0.5, weight_init="signed_constant")
    with ticket:
        result = train_run(model, data, iterations=iterations, batch_size=64, lr=0.1, eval_every=5, seed=0,
                           parameters=ticket.parameters(),
                           optimizer=lambda p: torch.optim.SGD(p, lr=2.0, momentum=0.9))
        _, acc = evaluate(model, data.test)
    return result, acc


@needs_data
def test_train_run_measures_early_stop_on_the_early_stop_scores_and_leaves_the_end_ones(data):
    result, acc = _score_run(data, 40)
    assert acc == result["test_acc_end"]  # the scores are left in their end state
    best = result["early_stop_iteration"]
    shorter, _ = _score_run(data, best)  # the same run stopped at the early-stop iteration
    assert shorter["test_acc_end"] == result["test_acc_early_stop"]


@pytest.mark.slow
@needs_data
def test_the_experiment_runs_on_real_data_resumes_and_reports(tmp_path, data):
    config = strong.make_config(iterations=10, seeds=[0], eval_every=10, train_limit=1200)
    out = tmp_path / "strong"
    runs = run_experiment(config, data, out, experiment="strong")
    assert sorted((r["kind"], r["round"]) for r in runs) == sorted((k, r) for _s, k, r in strong.planned_runs(config))
    for r in runs:
        want = {0: 1.0, 30: 0.7, 50: 0.5, 70: 0.3}[r["round"]]
        assert r["weights_remaining"] == pytest.approx(want, abs=1e-9)  # exact per-layer counts, LeNet sizes
        assert 0.1 < r["test_acc_end"] <= 1.0
    per_layer = next(r for r in runs if r["kind"] == "signed_constant" and r["round"] == 70)["remaining_per_layer"]
    assert per_layer == {"fc1.weight": round(0.3 * 784 * 300), "fc2.weight": round(0.3 * 300 * 100),
                         "fc3.weight": round(0.3 * 100 * 10)}
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    again = run_experiment(config, data, out, experiment="strong")  # everything finished: nothing reruns
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == mtimes
    assert len(again) == len(runs)
    files = strong.write_outputs(runs, config, out)
    table = files["table.md"].read_text()
    assert "| dense, trained | 100.0 |" in table and "| 70% (supermask, untrained weights) | 30.0 |" in table
    assert json.loads(files["results.json"].read_text())["config"]["sparsities"] == [0.3, 0.5, 0.7]


@pytest.mark.slow
@needs_data
def test_the_cli_runs_the_strong_experiment(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    code = main(["reproduce", "--experiment", "strong", "--iterations", "10", "--seeds", "1", "--eval-every", "5",
                 "--train-limit", "1200", "--no-progress", "--out", "out"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "signed_constant acc@ES %" in printed
    assert (tmp_path / "out" / "strong.png").is_file()
    assert len(load_results(tmp_path / "out")) == 7
    assert main(["reproduce", "--experiment", "strong", "--rounds", "3", "--out", "x"]) == 2  # not its flag
