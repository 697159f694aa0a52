"""Tests for ``reproduce --experiment init`` (torch_lottery.reproduction.init_experiment): plan, report, real-data runs."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch

from torch_lottery import DENSITY_RULES, kept_counts
from torch_lottery.cli import main
from torch_lottery.reproduction import init_experiment
from torch_lottery.reproduction.data import DEBIAN_FASHION_MNIST, load_dataset
from torch_lottery.reproduction.experiments import EXPERIMENTS, run_experiment
from torch_lottery.reproduction.init_experiment import format_init_report, make_init_config, planned_init_runs
from torch_lottery.reproduction.runner import load_results

needs_data = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_levels_are_geometric_down_to_the_final_density():
    c = make_init_config()
    assert c.profile == "quick" and c.iterations == 600 and c.seeds == (0, 1)
    assert c.levels == tuple(0.005 ** (r / 8) for r in range(1, 9))
    assert c.levels[-1] == pytest.approx(0.005) and c.shuffle_levels == (2, 4, 6, 8)
    assert make_init_config(levels=4).profile == "quick+custom"
    assert make_init_config(profile="full").iterations == 50_000


def test_plan_counts_every_run_once():
    c = make_init_config()
    plan = planned_init_runs(c)
    assert len(plan) == len(set(plan)) == 2 * (9 + 10 * 8 + 4 * 4)
    assert [k for s, k, r in plan if s == 0 and r == 2].count("synflow-shuffle") == 1
    assert not [k for s, k, r in plan if r == 1 and k.endswith("-shuffle")]


@pytest.mark.parametrize("bad, match", [({"iterations": 0}, "iterations=0 must be an int >= 1"),
                                        ({"profile": "huge"}, "profile='huge' is unknown"),
                                        ({"final_density": 1.0}, "final_density=1.0 must be a float in"),
                                        ({"seeds": [1, 1]}, "must be a non-empty list of distinct")])
def test_bad_configs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        make_init_config(**bad)


def _record(kind, rnd, acc, per_layer, seed=0):
    return {"seed": seed, "kind": kind, "round": rnd, "weights_remaining": sum(per_layer.values()) / 100,
            "remaining_per_layer": per_layer, "early_stop_iteration": 1, "test_acc_early_stop": acc,
            "test_acc_end": acc}


def test_report_marks_layer_collapse_in_its_cell():
    c = make_init_config(levels=2, seeds=[0, 1], shuffle_every=0)
    runs = [_record("imp", 0, 0.9, {"a": 90, "b": 10}), _record("imp", 0, 0.8, {"a": 90, "b": 10}, seed=1),
            _record("imp", 1, 0.85, {"a": 5, "b": 5}), _record("snip", 1, 0.5, {"a": 10, "b": 0}),
            _record("snip", 1, 0.7, {"a": 9, "b": 1}, seed=1)]
    table = format_init_report(runs, c).splitlines()
    assert table[0] == "| weights remaining | imp | snip |"
    assert table[2] == "| 100% (dense) | 85.0 ± 7.1 | |"
    assert table[3] == "| 7.1% | 85.0 ± 0.0 | 60.0 ± 14.1 † |"  # one seed of two collapsed: marked
    assert table[4] == "| 0.5% |  |  |"
    assert table[-1] == "† layer collapse (a layer with no weight left): snip at 7.1%: b"


def test_registered_with_its_flags():
    entry = EXPERIMENTS["init"]
    assert entry.make_config is make_init_config and entry.run_seed is init_experiment.run_init_seed
    assert {"levels", "synflow_iterations", "shuffle_every"} <= set(entry.options)


def test_doctests():
    assert doctest.testmod(init_experiment).failed == 0


@needs_data
@pytest.mark.slow
def test_the_command_runs_every_method_on_real_data_and_resumes(tmp_path: Path, capsys) -> None:
    out, root = tmp_path / "cli", tmp_path / "data"
    flags = ["--iterations", "5", "--eval-every", "5", "--seeds", "1", "--train-limit", "1200", "--levels", "1",
             "--synflow-iterations", "2", "--shuffle-every", "1", "--no-progress", "--data-dir", str(root)]
    assert main(["reproduce", "--experiment", "init", *flags, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| weights remaining | imp | snip | grasp | synflow | magnitude | random-uniform" in printed
    for name in ("results.json", "runs.csv", "table.md", "init_accuracy.png"):
        assert (out / name).is_file(), name
    config = make_init_config(iterations=5, eval_every=5, seeds=[0], train_limit=1200, levels=1,
                              synflow_iterations=2, shuffle_every=1)
    runs = load_results(out)
    assert sorted((r["seed"], r["kind"], r["round"]) for r in runs) == sorted(planned_init_runs(config))
    total = 784 * 300 + 300 * 100 + 100 * 10
    kept = total - round((1 - config.levels[0]) * total)
    counts = {r["kind"]: r["remaining_per_layer"] for r in runs if r["round"] == 1}
    for kind, per_layer in counts.items():  # every method trains at the level's count (IMP's schedule: +-1)
        assert abs(sum(per_layer.values()) - kept) <= (1 if kind == "imp" else 0), kind
    assert counts["snip-shuffle"] == counts["snip"] and counts["synflow-shuffle"] == counts["synflow"]
    shapes = {"fc1.weight": (300, 784), "fc2.weight": (100, 300), "fc3.weight": (10, 100)}
    for rule in DENSITY_RULES:  # random masks follow each rule's per-layer counts exactly (ER = ERK here)
        assert counts[f"random-{rule}"] == kept_counts(shapes, 1 - config.levels[0], rule=rule), rule
    called = []
    data = load_dataset("fashion-mnist", root=root, train_limit=1200)
    again = run_experiment(config, data, out, experiment="init", progress=called.append)
    assert not called and len(again) == len(runs)  # all finished: nothing trains again
    assert main(["reproduce", "--experiment", "init", "--rounds", "3", *flags, "--out", str(out)]) == 2
    assert "--experiment init does not take --rounds" in capsys.readouterr().err
