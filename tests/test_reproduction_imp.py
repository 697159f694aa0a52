"""Tests for torch_lottery.reproduction.imp: the IMP experiment on real Fashion-MNIST with a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torch_lottery.backends import BACKENDS
from torch_lottery.reproduction.config import make_config
from torch_lottery.reproduction.data import DEBIAN_FASHION_MNIST, load_dataset
from torch_lottery.reproduction.experiments import run_experiment
from torch_lottery.reproduction.imp import planned_runs
from torch_lottery.reproduction.models import build_model
from torch_lottery.reproduction.plots import plot_results
from torch_lottery.reproduction.report import format_table, summarize, write_outputs

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)

# Hand-computed layer-wise schedule of LeNet-300-100: each round prunes round(rate * survivors),
# 20% of fc1 and fc2, 10% of the output layer fc3.
SCHEDULE = {
    0: {"fc1.weight": 235200, "fc2.weight": 30000, "fc3.weight": 1000},
    1: {"fc1.weight": 188160, "fc2.weight": 24000, "fc3.weight": 900},
    2: {"fc1.weight": 150528, "fc2.weight": 19200, "fc3.weight": 810},
}


def _strip(runs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batch-60 LeNet gains nothing from intra-op threads and slows down badly on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("fashion-mnist", root=tmp_path_factory.mktemp("data"), train_limit=3000)


@pytest.fixture(scope="module")
def config():
    return make_config(iterations=100, rounds=2, seeds=[0], eval_every=50, oneshot_every=2, train_limit=3000)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory, data, config):
    out = tmp_path_factory.mktemp("repro")
    ticks: list[int] = []
    runs = run_experiment(config, data, out, progress=ticks.append)
    return out, runs, ticks


def test_every_planned_run_is_recorded_once(experiment, config) -> None:
    out, runs, ticks = experiment
    assert sorted((r["seed"], r["kind"], r["round"]) for r in runs) == sorted(planned_runs(config))
    assert [(k, r) for _, k, r in planned_runs(config)] == [
        ("ticket", 0), ("ticket", 1), ("reinit", 1), ("random", 1),
        ("ticket", 2), ("reinit", 2), ("random", 2), ("oneshot", 2),
    ]
    assert sum(ticks) == 8 * 100
    assert len(list((out / "runs").glob("*.json"))) == 8


def test_weights_remaining_follow_the_compounding_layer_wise_schedule(experiment) -> None:
    _, runs, _ = experiment
    for run in runs:
        assert run["remaining_per_layer"] == SCHEDULE[run["round"]], (run["kind"], run["round"])
        assert run["weights_remaining"] == pytest.approx(sum(SCHEDULE[run["round"]].values()) / 266200)


def test_controls_use_other_masks_or_other_init(experiment) -> None:
    out, _, _ = experiment
    ticket_masks = torch.load(out / "state" / "seed0-masks-r02.pt", weights_only=True)
    assert set(ticket_masks) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    state = torch.load(out / "state" / "seed0-ticket.pt", weights_only=True)
    assert state["round"] == 2
    assert all(torch.equal(state["masks"][k], ticket_masks[k]) for k in ticket_masks)
    # The ticket's rewind point is theta_0 of seed 0's model.
    assert torch.equal(state["rewind_weights"]["fc1.weight"], build_model("lenet", seed=0).fc1.weight)


def test_final_ticket_file_holds_the_last_round_masks_and_theta_0(experiment) -> None:
    from torch_lottery import load_ticket, read_ticket_info

    out, _, _ = experiment
    info = read_ticket_info(out / "ticket-seed0.safetensors")
    assert info["round"] == 2
    assert {row["fqn"]: row["remaining"] for row in info["summary"]} == SCHEDULE[2]
    model = build_model("lenet", seed=123)  # another init: the file must bring theta_0 of seed 0
    ticket = load_ticket(out / "ticket-seed0.safetensors", model)
    theta_0 = build_model("lenet", seed=0)
    masks = torch.load(out / "state" / "seed0-masks-r02.pt", weights_only=True)
    assert all(torch.equal(ticket.masks[k], masks[k]) for k in masks)
    assert torch.equal(model.fc1.weight, theta_0.fc1.weight * masks["fc1.weight"])
    assert torch.equal(model.fc1.bias, theta_0.fc1.bias)


def test_early_stop_is_the_minimum_validation_loss(experiment) -> None:
    _, runs, _ = experiment
    for run in runs:
        iters, losses = [c[0] for c in run["curve"]], [c[1] for c in run["curve"]]
        assert iters == [50, 100]
        assert run["early_stop_iteration"] == iters[losses.index(min(losses))]
        assert run["early_stop_val_loss"] == min(losses)
        assert 0.1 < run["test_acc_early_stop"] <= 1.0 and 0.1 < run["test_acc_end"] <= 1.0


def test_rerun_skips_finished_runs_and_retrains_only_missing_ones(experiment, data, config) -> None:
    out, runs, _ = experiment
    ticks: list[int] = []
    assert run_experiment(config, data, out, progress=ticks.append) == runs
    assert ticks == []
    (out / "runs" / "seed0-random-r01.json").unlink()
    again = run_experiment(config, data, out, progress=ticks.append)
    assert sum(ticks) == 100
    before = {(r["kind"], r["round"]): r for r in runs}
    after = {(r["kind"], r["round"]): r for r in again}
    # Deterministic seeds: the retrained run gets the same numbers.
    for key in ("early_stop_iteration", "test_acc_early_stop", "test_acc_end", "remaining"):
        assert after["random", 1][key] == before["random", 1][key]


def test_resume_after_an_interrupted_round_continues_the_ticket(tmp_path: Path, data) -> None:
    small = make_config(iterations=50, rounds=2, seeds=[0], eval_every=50, oneshot_every=0,
                        controls=(), train_limit=3000)
    full = run_experiment(small, data, tmp_path / "a")
    run_experiment(make_config(iterations=50, rounds=1, seeds=[0], eval_every=50, oneshot_every=0,
                               controls=(), train_limit=3000), data, tmp_path / "b")
    # Pretend the 2-round run was interrupted after round 1: reuse the 1-round directory's files.
    (tmp_path / "b" / "config.json").write_text(json.dumps(small.to_dict()))
    resumed = run_experiment(small, data, tmp_path / "b")
    assert _strip(resumed) == _strip(full)


def test_outputs_and_plots_are_written(experiment, config) -> None:
    out, runs, _ = experiment
    files = write_outputs(runs, config, out)
    files.update(plot_results(summarize(runs), out, title="smoke"))
    for name in ("results.json", "runs.csv", "summary.csv", "table.md", "accuracy.png", "early_stop.png",
                 "controls.png"):
        assert files[name].stat().st_size > 100, name
    assert files["accuracy.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(files["results.json"].read_text())
    assert saved["config"] == config.to_dict() and len(saved["runs"]) == 8
    assert len(files["runs.csv"].read_text().splitlines()) == 1 + 8
    table = format_table(summarize(runs), config)
    assert table.splitlines()[2].startswith("| 0 | 100.0 |")
    assert table.splitlines()[4].startswith("| 2 | 64.1 |")


def test_baked_backends_give_the_same_numbers_as_prune(tmp_path: Path, data) -> None:
    # LeNet with Adam on real Fashion-MNIST: an IMP round, both controls and one-shot; the baked
    # backends train bitwise-identically to prune's hooks, so every recorded number is the same
    cfg = make_config(iterations=60, rounds=2, seeds=[0], eval_every=30, oneshot_every=2, train_limit=3000)
    runs = {b: _strip(run_experiment(cfg, data, tmp_path / b, backend=b)) for b in sorted(BACKENDS)}
    assert len(runs["prune"]) == len(planned_runs(cfg)) == 8
    assert {"baked", "baked-bits"} <= set(runs)
    for b in runs:
        assert runs[b] == runs["prune"], b
    with pytest.raises(ValueError, match=r"backend='bits' is not a mask backend; choose one of"):
        run_experiment(cfg, data, tmp_path / "x", backend="bits")


def test_planned_runs_follow_controls_and_oneshot_rounds() -> None:
    cfg = make_config(rounds=3, seeds=[4, 2], controls=["random"], oneshot_every=2)
    assert planned_runs(cfg) == [
        (4, "ticket", 0), (4, "ticket", 1), (4, "random", 1), (4, "ticket", 2), (4, "random", 2),
        (4, "oneshot", 2), (4, "ticket", 3), (4, "random", 3),
        (2, "ticket", 0), (2, "ticket", 1), (2, "random", 1), (2, "ticket", 2), (2, "random", 2),
        (2, "oneshot", 2), (2, "ticket", 3), (2, "random", 3),
    ]
