"""Smoke test of the whole reproduction on real Fashion-MNIST with a tiny budget, plus its bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torch_lottery.backends import BACKENDS
from torch_lottery.cli import main
from torch_lottery.data import DEBIAN_FASHION_MNIST, load_dataset
from torch_lottery.models import build_model
from torch_lottery.plots import plot_results
from torch_lottery.reproduce import (
    format_table,
    load_results,
    make_config,
    planned_runs,
    run_experiment,
    summarize,
    train_run,
    write_outputs,
)

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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batch-60 LeNet gains nothing from intra-op threads and slows down badly on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def data(data_root: Path):
    return load_dataset("fashion-mnist", root=data_root, train_limit=3000)


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
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(resumed) == strip(full)


def test_other_configuration_in_the_same_directory_is_refused(experiment, data) -> None:
    out, _, _ = experiment
    other = make_config(iterations=101, rounds=2, seeds=[0], eval_every=50, oneshot_every=2, train_limit=3000)
    with pytest.raises(ValueError, match=r"holds runs of a different configuration \(differs in \['iterations'\]\)"):
        run_experiment(other, data, out)


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


def test_summary_aggregates_over_seeds_with_sample_std() -> None:
    runs = [
        {"kind": "ticket", "round": 1, "weights_remaining": 0.5, "early_stop_iteration": 100,
         "test_acc_early_stop": 0.8, "test_acc_end": 0.7},
        {"kind": "ticket", "round": 1, "weights_remaining": 0.5, "early_stop_iteration": 300,
         "test_acc_early_stop": 0.9, "test_acc_end": 0.7},
    ]
    (row,) = summarize(runs)
    assert row["seeds"] == 2
    assert row["early_stop_iteration_mean"] == 200 and row["early_stop_iteration_std"] == pytest.approx(141.4213562)
    assert row["test_acc_early_stop_min"] == 0.8 and row["test_acc_early_stop_max"] == 0.9
    assert row["test_acc_end_std"] == 0.0


def test_train_run_leaves_the_model_in_its_end_state(data) -> None:
    model = build_model("lenet", seed=0)
    result = train_run(model, data, iterations=60, batch_size=60, lr=1.2e-3, eval_every=20, seed=0)
    assert [c[0] for c in result["curve"]] == [20, 40, 60]
    from torch_lottery.reproduce import evaluate

    assert evaluate(model, data.val)[0] == pytest.approx(result["val_loss_end"])


def test_make_config_marks_overridden_budgets_as_custom() -> None:
    assert make_config().profile == "quick"
    assert make_config(profile="full").iterations == 50_000
    assert make_config(profile="full", model="conv2").iterations == 20_000
    assert make_config(iterations=10).profile == "quick+custom"
    with pytest.raises(ValueError, match=r"make_config\(\): profile='huge' is unknown"):
        make_config(profile="huge")
    with pytest.raises(ValueError, match=r"controls=\['prune'\] has unknown \['prune'\]"):
        make_config(controls=["prune"])


def test_cli_reproduce_prints_table_and_writes_files(tmp_path: Path, data_root: Path, capsys) -> None:
    out = tmp_path / "cli"
    rc = main(["reproduce", "--iterations", "50", "--eval-every", "50", "--rounds", "1", "--seeds", "1",
               "--oneshot-every", "1", "--train-limit", "3000", "--data-dir", str(data_root), "--out", str(out),
               "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "profile 'quick+custom'" in printed and "NOTE: reduced budget" in printed
    assert "| 1 | 80.0 |" in printed
    for name in ("results.json", "runs.csv", "accuracy.png", "controls.png", "curves.png"):
        assert (out / name).is_file(), name
    assert len(load_results(out)) == 5


def test_parallel_workers_give_the_same_numbers_as_one_process(tmp_path: Path, data) -> None:
    cfg = make_config(iterations=50, rounds=0, seeds=[0, 1], eval_every=50, oneshot_every=0, train_limit=3000)
    ticks: list[int] = []
    parallel = run_experiment(cfg, data, tmp_path / "p", progress=ticks.append, jobs=2)
    serial = run_experiment(cfg, data, tmp_path / "s")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(parallel) == strip(serial)
    assert sum(ticks) == len(planned_runs(cfg)) * 50 == 100


def test_reproduce_modules_import_without_extras_and_name_the_extra_when_needed(tmp_path: Path) -> None:
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torchvision", "matplotlib", "tqdm"}:
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, Block())
        import torch_lottery.data, torch_lottery.models, torch_lottery.reproduce, torch_lottery.plots
        import torch_lottery.cli
        from torch_lottery.data import load_dataset
        from torch_lottery.plots import plot_results
        for call in (lambda: load_dataset("fashion-mnist", root=sys.argv[1]), lambda: plot_results([], sys.argv[1])):
            try:
                call()
            except ModuleNotFoundError as exc:
                print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install torch_lottery[vision]" in out.stdout
    assert "pip install torch_lottery[plot]" in out.stdout


def test_adding_seeds_reuses_the_finished_ones(tmp_path: Path, data) -> None:
    one = make_config(iterations=50, rounds=0, seeds=[0], eval_every=50, oneshot_every=0, train_limit=3000)
    two = make_config(iterations=50, rounds=0, seeds=[0, 1], eval_every=50, oneshot_every=0, train_limit=3000)
    first = run_experiment(one, data, tmp_path)
    ticks: list[int] = []
    both = run_experiment(two, data, tmp_path, progress=ticks.append)
    assert sum(ticks) == 50  # only seed 1 trained
    assert [r for r in both if r["seed"] == 0] == first
    assert json.loads((tmp_path / "config.json").read_text())["seeds"] == [0, 1]
    assert run_experiment(one, data, tmp_path) == first  # a subset of seeds returns only those


def test_cli_reports_missing_data_without_a_traceback(tmp_path, capsys):
    from torch_lottery.cli import main

    rc = main(["reproduce", "--dataset", "mnist", "--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path / "out"),
               "--iterations", "10", "--rounds", "1", "--seeds", "1", "--no-progress", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "torch-lottery reproduce: error: load_dataset(): name='mnist' not found under root=" in err
    assert "Traceback" not in err


def test_baked_backends_give_the_same_numbers_as_prune(tmp_path: Path, data) -> None:
    # LeNet with Adam on real Fashion-MNIST: an IMP round, both controls and one-shot; the baked
    # backends train bitwise-identically to prune's hooks, so every recorded number is the same
    cfg = make_config(iterations=60, rounds=2, seeds=[0], eval_every=30, oneshot_every=2, train_limit=3000)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    runs = {b: strip(run_experiment(cfg, data, tmp_path / b, backend=b)) for b in sorted(BACKENDS)}
    assert len(runs["prune"]) == len(planned_runs(cfg)) == 8
    assert {"baked", "baked-bits"} <= set(runs)
    for b in runs:
        assert runs[b] == runs["prune"], b
    with pytest.raises(ValueError, match=r"backend='bits' is not a mask backend; choose one of"):
        run_experiment(cfg, data, tmp_path / "x", backend="bits")
