"""The structured-ticket experiment (reproduce --granularity channel) on real Fashion-MNIST with a tiny budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_pruning")

from torch_lottery.reproduction.config import make_config  # noqa: E402
from torch_lottery.reproduction.data import DEBIAN_FASHION_MNIST, load_dataset  # noqa: E402
from torch_lottery.reproduction.experiments import run_experiment  # noqa: E402
from torch_lottery.reproduction.runner import load_tensors  # noqa: E402
from torch_lottery.reproduction.structured_imp import format_report, planned_runs, write_outputs  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_dataset("fashion-mnist", root=tmp_path_factory.mktemp("data"), train_limit=3000)


@pytest.fixture(scope="module")
def config():
    return make_config(iterations=40, rounds=2, seeds=[0], eval_every=20, oneshot_every=0, controls=(), train_limit=3000)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, data, config):
    out = tmp_path_factory.mktemp("structured")
    ticks: list[int] = []
    runs = run_experiment(config, data, out, experiment="structured", progress=ticks.append)
    return out, runs, ticks


def test_every_planned_run_is_recorded_once(experiment, config):
    out, runs, ticks = experiment
    assert sorted((r["seed"], r["kind"], r["round"]) for r in runs) == sorted(planned_runs(config))
    assert [(k, r) for _, k, r in planned_runs(config)] == [
        ("ticket", 0), ("ticket", 1), ("ticket", 2),
        ("channel", 1), ("channel-reinit", 1), ("refill", 1), ("channel", 2), ("channel-reinit", 2), ("refill", 2),
    ]
    assert sum(ticks) == 9 * 40


def test_neurons_follow_the_paper_rates_and_refill_matches_the_weight_tickets_density(experiment):
    out, runs, _ = experiment
    by = {(r["kind"], r["round"]): r for r in runs}
    # 20% of each hidden layer's neurons per round: 300 -> 240 -> 192, 100 -> 80 -> 64
    assert by["channel", 1]["channels_per_layer"] == {"fc1": 240, "fc2": 80}
    assert by["channel", 2]["channels_per_layer"] == {"fc1": 192, "fc2": 64}
    assert by["channel-reinit", 2]["channels_per_layer"] == {"fc1": 192, "fc2": 64}
    # refill keeps as many neurons as the weight ticket's layer density: 0.8**k of fc1's and fc2's rows
    assert by["refill", 2]["channels_per_layer"] == {"fc1": 192, "fc2": 64}
    # weights counted over the weight matrices: fc1 rows, fc2 rows x columns, fc3 columns
    assert by["channel", 1]["remaining"] == 240 * 784 + 80 * 240 + 10 * 80
    assert by["refill", 2]["remaining_per_layer"] == {"fc1.weight": 192 * 784, "fc2.weight": 64 * 192, "fc3.weight": 640}
    masks = load_tensors(out / "state" / "seed0-channel-masks-r02.pt")
    assert int(masks["fc1.weight"].any(dim=1).sum()) == 192 and torch.equal(masks["fc1.weight"].any(dim=1), masks["fc1.bias"])


def test_compact_speed_is_recorded_against_the_dense_network(experiment):
    _, runs, _ = experiment
    for r in (r for r in runs if r["kind"] == "channel"):
        speed = r["compact"]
        assert speed["dense_params"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
        kept = r["channels_per_layer"]
        assert speed["compact_params"] == 784 * kept["fc1"] + kept["fc1"] + kept["fc1"] * kept["fc2"] + kept["fc2"] \
            + kept["fc2"] * 10 + 10
        assert speed["infer_ratio"] > 0 and speed["step_ratio"] > 0


def test_report_and_outputs(experiment, config, tmp_path):
    _, runs, _ = experiment
    text = format_report(runs, config)
    assert "| 2 | 64.1 | 61.4 | 64.0 | " in text and "refill acc@ES %" in text and "compact step / dense" in text
    paths = write_outputs(runs, config, tmp_path)
    assert json.loads(paths["results.json"].read_text())["config"]["rounds"] == 2
    assert "channel neurons %" in paths["table.md"].read_text()


def test_rerun_trains_nothing_more(experiment, data, config):
    out, runs, _ = experiment
    ticks: list[int] = []
    again = run_experiment(config, data, out, experiment="structured", progress=ticks.append)
    assert ticks == [] and len(again) == len(runs)


@pytest.mark.slow
def test_cli_granularity_channel_selects_the_structured_experiment(tmp_path):
    cmd = [sys.executable, "-m", "torch_lottery.cli", "reproduce", "--granularity", "channel", "--experiment", "imp",
           "--iterations", "30", "--rounds", "1", "--seeds", "1", "--eval-every", "30", "--oneshot-every", "0",
           "--controls", "", "--train-limit", "3000", "--out", str(tmp_path / "o"), "--no-plots", "--no-progress",
           "--data-dir", str(tmp_path / "d")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refill acc@ES %" in result.stdout
    assert (tmp_path / "o" / "runs" / "seed0-refill-r01.json").is_file()
