"""The early-bird, rewinding and dropout experiments on real Fashion-MNIST with tiny budgets: bookkeeping,
invariants between their kinds, resume, and the train_run hooks they use."""

from __future__ import annotations

import json
import math

import pytest
import torch

from torch_lottery.cli import main
from torch_lottery.reproduction import config as imp_config
from torch_lottery.reproduction import dropout, early_bird, rewinding
from torch_lottery.reproduction.data import DEBIAN_FASHION_MNIST, load_dataset
from torch_lottery.reproduction.experiments import EXPERIMENTS, run_experiment
from torch_lottery.reproduction.models import LeNet300100, build_model
from torch_lottery.reproduction.runner import load_results, train_run

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
    return load_dataset("fashion-mnist", root=tmp_path_factory.mktemp("data"), train_limit=600, validation_size=500)


def by_key(runs):
    return {(r["seed"], r["kind"], r["round"]): r for r in runs}


def same_training(a, b):
    keys = ("early_stop_iteration", "test_acc_early_stop", "test_acc_end", "curve", "remaining_per_layer")
    return all(a[k] == b[k] for k in keys)


# ----------------------------------------------------------------------------- train_run hooks


def test_train_run_stop_hook_ends_training_at_that_validation(data):
    seen = []
    result = train_run(build_model("lenet", seed=0), data, iterations=50, batch_size=60, lr=1e-3, eval_every=10,
                       seed=0, stop=lambda it: seen.append(it) or it == 30)
    assert seen == [10, 20, 30] and result["iterations_trained"] == 30
    assert [row[0] for row in result["curve"]] == [10, 20, 30]
    full = train_run(build_model("lenet", seed=0), data, iterations=50, batch_size=60, lr=1e-3, eval_every=10, seed=0)
    assert full["iterations_trained"] == 50 and full["curve"][:3] == result["curve"]  # the same run, cut short


def test_train_run_uses_the_given_optimizer_and_steps_the_scheduler(data):
    model = build_model("lenet", seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[5], gamma=0.1)
    train_run(model, data, iterations=8, batch_size=60, lr=123.0, eval_every=8, seed=0, optimizer=lambda params: optimizer,
              scheduler=scheduler)
    assert scheduler.last_epoch == 8 and optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert optimizer.state  # this optimizer took the steps


# ----------------------------------------------------------------------------- early-bird


@pytest.fixture(scope="module")
def eb_experiment(tmp_path_factory, data):
    config = early_bird.make_config(iterations=80, rounds=2, seeds=[0], eval_every=10, epsilon=1.0, window=3,
                                    train_limit=600)
    out = tmp_path_factory.mktemp("eb")
    return config, out, run_experiment(config, data, out, experiment="early-bird")


def test_early_bird_records_every_planned_run_once(eb_experiment):
    config, out, runs = eb_experiment
    assert sorted((r["seed"], r["kind"], r["round"]) for r in runs) == sorted(early_bird.planned_runs(config))


def test_early_bird_rounds_stop_when_it_fires(eb_experiment):
    # epsilon = 1: every search fires at the first full window, the 3rd validation (iteration 30 of 80).
    config, out, runs = eb_experiment
    runs = by_key(runs)
    for key in [(0, "eb-imp", 0), (0, "eb-imp", 1), (0, "eb-oneshot", 0)]:
        assert runs[key]["eb_fired"] and runs[key]["eb_emerged_at"] == 2 and runs[key]["iterations_trained"] == 30
    for key in [(0, "imp", 0), (0, "imp", 1), (0, "imp", 2), (0, "eb-imp", 2), (0, "eb-oneshot", 2)]:
        assert runs[key]["iterations_trained"] == 80


def test_early_bird_does_not_disturb_training_and_keeps_the_ticket_counts(eb_experiment):
    config, out, runs = eb_experiment
    runs = by_key(runs)
    # Same theta_0 and minibatch order: the watched dense round is imp's dense round, cut short.
    assert runs[(0, "eb-imp", 0)]["curve"] == runs[(0, "imp", 0)]["curve"][:3]
    # The early-bird masks have the ticket's own per-layer counts, round by round.
    for rnd in (1, 2):
        assert runs[(0, "eb-imp", rnd)]["remaining_per_layer"] == runs[(0, "imp", rnd)]["remaining_per_layer"]
    assert runs[(0, "eb-oneshot", 2)]["remaining_per_layer"] == runs[(0, "oneshot", 2)]["remaining_per_layer"]
    # ... but not the same masks as full training (they were drawn 50 iterations earlier).
    overlap = json.loads((out / "overlap" / "seed0.json").read_text())
    assert 0.0 < overlap["eb-imp"] < 1.0


def test_early_bird_summary_counts_compute_from_the_records(eb_experiment):
    config, out, runs = eb_experiment
    rows = {r["kind"]: r for r in early_bird.summarize(runs, config)}
    assert rows["imp"]["search_mean"] == 160 and rows["imp"]["total_mean"] == 240 and rows["imp"]["ratio_mean"] == 1.0
    assert rows["eb-imp"]["search_mean"] == 60 and rows["eb-imp"]["total_mean"] == 140
    assert rows["eb-oneshot"]["total_mean"] == 110 and rows["oneshot"]["total_mean"] == 160
    assert rows["eb-imp"]["ratio_mean"] == pytest.approx(140 / 240)
    report = early_bird.format_report(runs, config)
    assert "| eb-imp | 64.1 | 60 | 140 | 0.58" in report


def test_early_bird_config_errors():
    with pytest.raises(ValueError, match=r"epsilon=1.5 must be a fraction in \[0, 1\]"):
        early_bird.make_config(epsilon=1.5)
    with pytest.raises(ValueError, match=r"window=1 must be an int >= 2"):
        early_bird.make_config(window=1)
    assert early_bird.make_config().profile == "quick" and early_bird.make_config(window=4).profile == "quick+custom"


# ----------------------------------------------------------------------------- rewinding


@pytest.fixture(scope="module")
def rewinding_experiment(tmp_path_factory, data):
    config = rewinding.make_config(iterations=40, rounds=1, seeds=[0], eval_every=10, rewind_step=10, train_limit=600)
    out = tmp_path_factory.mktemp("rewinding")
    return config, out, run_experiment(config, data, out, experiment="rewinding")


def test_rewinding_kinds_share_the_dense_round_and_differ_after(rewinding_experiment):
    config, out, runs = rewinding_experiment
    runs = by_key(runs)
    assert sorted(runs) == sorted(rewinding.planned_runs(config))
    dense = runs[(0, "rewind-init", 0)]
    for kind in rewinding.KINDS[1:]:
        assert same_training(runs[(0, kind, 0)], dense)  # same theta_0, data order and schedule
    pruned = [runs[(0, kind, 1)] for kind in rewinding.KINDS]
    assert len({json.dumps(r["curve"]) for r in pruned}) == 4  # four different retrainings
    assert len({json.dumps(r["remaining_per_layer"]) for r in pruned}) == 1  # of masks with the same counts


def test_rewinding_schedules(rewinding_experiment):
    config, out, runs = rewinding_experiment
    runs = by_key(runs)
    assert config.milestones == (20, 30)
    assert runs[(0, "rewind-k", 1)]["iterations_trained"] == 30  # theta_k: the rest of the schedule, 40 - 10
    for kind in ("rewind-init", "lrr", "finetune"):
        assert runs[(0, kind, 1)]["iterations_trained"] == 40
    for kind in rewinding.KINDS:  # every retraining ends at the schedule's last learning rate
        assert runs[(0, kind, 1)]["lr_end"] == pytest.approx(config.lr / 100)


def test_rewinding_resume_repeats_nothing_and_gives_the_same_numbers(rewinding_experiment, data):
    config, out, runs = rewinding_experiment
    for kind in rewinding.KINDS:
        (out / "runs" / f"seed0-{kind}-r01.json").unlink()
    again = by_key(run_experiment(config, data, out, experiment="rewinding"))
    for key, run in by_key(runs).items():
        assert same_training(again[key], run), key


def test_rewinding_config_errors():
    with pytest.raises(ValueError, match=r"rewind_step=2000 must be an int in \[1, iterations=2000\)"):
        rewinding.make_config(rewind_step=2000)
    assert rewinding.make_config(iterations=500).rewind_step == 50


# ----------------------------------------------------------------------------- dropout


def test_dropout_lenet_has_the_same_theta_0_and_drops_only_in_training():
    plain, dropped = build_model("lenet", seed=3), build_model("lenet", seed=3, dropout=0.5)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), dropped.state_dict().values()))
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    x = torch.randn(8, 1, 28, 28)
    dropped.eval()
    assert torch.equal(dropped(x), plain(x))
    dropped.train()
    assert not torch.equal(dropped(x), plain(x))
    with pytest.raises(ValueError, match=r"dropout=1.0 is outside \[0, 1\)"):
        LeNet300100(dropout=1.0)
    with pytest.raises(ValueError, match=r"dropout=0.5 is only built into 'lenet'"):
        build_model("conv2", dropout=0.5)


def test_dropout_experiment_without_dropout_is_the_imp_ticket(tmp_path, data):
    config = dropout.make_config(iterations=30, rounds=1, seeds=[0], eval_every=10, train_limit=600)
    runs = by_key(run_experiment(config, data, tmp_path / "d", experiment="dropout"))
    assert sorted(runs) == sorted(dropout.planned_runs(config))
    imp = imp_config.make_config(iterations=30, rounds=1, seeds=[0], eval_every=10, controls=(), oneshot_every=0,
                                 train_limit=600)
    ticket = by_key(run_experiment(imp, data, tmp_path / "imp"))
    for rnd in (0, 1):
        assert same_training(runs[(0, "no-dropout", rnd)], ticket[(0, "ticket", rnd)])
        assert not same_training(runs[(0, "dropout", rnd)], ticket[(0, "ticket", rnd)])
    row = [r for r in dropout.summarize(list(runs.values()), config) if r["kind"] == "dropout" and r["round"] == 1][0]
    delta = runs[(0, "dropout", 1)]["early_stop_iteration"] - runs[(0, "no-dropout", 1)]["early_stop_iteration"]
    assert row["delta_es_mean"] == delta


@pytest.mark.slow
def test_dropout_runs_are_deterministic(tmp_path, data):
    config = dropout.make_config(iterations=20, rounds=1, seeds=[1], eval_every=10, train_limit=600)
    a = by_key(run_experiment(config, data, tmp_path / "a", experiment="dropout"))
    b = by_key(run_experiment(config, data, tmp_path / "b", experiment="dropout"))
    assert all(same_training(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- command line


@pytest.mark.slow
@pytest.mark.parametrize("experiment, flags", [
    ("early-bird", ["--epsilon", "1.0", "--window", "2"]),
    ("rewinding", ["--rewind-step", "5"]),
    ("dropout", ["--dropout", "0.3"]),
])
def test_cli_runs_each_experiment(tmp_path, capsys, experiment, flags):
    code = main(["reproduce", "--experiment", experiment, "--iterations", "20", "--rounds", "1", "--seeds", "1",
                 "--eval-every", "10", "--train-limit", "300", "--data-dir", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out"), "--no-progress", "--no-plots", *flags])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| round |" in printed or "| kind |" in printed
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["profile"] == "quick+custom" and len(load_results(tmp_path / "out")) == len(
        EXPERIMENTS[experiment].planned_runs(EXPERIMENTS[experiment].config_type(**{
            **config, "seeds": tuple(config["seeds"]),
            **({"milestones": tuple(config["milestones"])} if "milestones" in config else {})})))


def test_cli_refuses_another_experiments_flag(tmp_path, capsys):
    code = main(["reproduce", "--experiment", "dropout", "--controls", "reinit", "--data-dir", str(tmp_path),
                 "--no-progress"])
    assert code == 2 and "does not take --controls" in capsys.readouterr().err
