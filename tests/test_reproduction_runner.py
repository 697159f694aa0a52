"""Tests for torch_lottery.reproduction.runner: the training loop, run records, resume and worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torch_lottery.reproduction.config import make_config
from torch_lottery.reproduction.data import DEBIAN_FASHION_MNIST, load_dataset
from torch_lottery.reproduction.experiments import run_experiment
from torch_lottery.reproduction.imp import planned_runs
from torch_lottery.reproduction.models import build_model
from torch_lottery.reproduction.runner import (
    SeedRun,
    evaluate,
    finished_runs,
    load_results,
    record_run,
    run_key,
    run_seeds,
    train_run,
)

needs_data = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


def _strip(runs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("fashion-mnist", root=tmp_path_factory.mktemp("data"), train_limit=3000)


def _failing_seed(config, data, out_dir, seed, *, progress, backend):
    """A per-seed function that fails at seed 1 (module level: worker processes import it by name)."""
    if seed == 1:
        raise RuntimeError(f"seed {seed} broke on purpose")


def test_run_key_and_record_run_count_the_masks(tmp_path: Path) -> None:
    masks = {"a.weight": torch.tensor([[True, False], [True, True]]), "b.weight": torch.tensor([False, True, False])}
    result = {"early_stop_iteration": 20, "test_acc_early_stop": 0.5, "test_acc_end": 0.25, "curve": [[20, 1.0, 0.5]]}
    rec = record_run(tmp_path, seed=3, kind="reinit", rnd=7, masks=masks, result=result)
    assert run_key(3, "reinit", 7) == "seed3-reinit-r07"
    assert rec == {"seed": 3, "kind": "reinit", "round": 7, "remaining": 4, "total": 7, "weights_remaining": 4 / 7,
                   "remaining_per_layer": {"a.weight": 3, "b.weight": 1}, **result}
    assert json.loads((tmp_path / "runs" / "seed3-reinit-r07.json").read_text()) == rec
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["seed3-reinit-r07.json"]  # no temporary file left
    assert finished_runs(tmp_path) == {"seed3-reinit-r07"} and load_results(tmp_path) == [rec]
    assert finished_runs(tmp_path / "nothing") == set() and load_results(tmp_path / "nothing") == []
    empty = record_run(tmp_path, seed=0, kind="ticket", rnd=0, masks={"e.weight": torch.zeros(0, 3, dtype=torch.bool)},
                       result=result)
    assert (empty["remaining"], empty["total"], empty["weights_remaining"]) == (0, 0, 1.0)


@needs_data
def test_train_run_leaves_the_model_in_its_end_state(data) -> None:
    model = build_model("lenet", seed=0)
    result = train_run(model, data, iterations=60, batch_size=60, lr=1.2e-3, eval_every=20, seed=0)
    assert [c[0] for c in result["curve"]] == [20, 40, 60]
    assert evaluate(model, data.val)[0] == pytest.approx(result["val_loss_end"])


@needs_data
def test_train_run_is_deterministic_given_the_seed(data) -> None:
    runs = [train_run(build_model("lenet", seed=0), data, iterations=30, batch_size=60, lr=1.2e-3, eval_every=10,
                      seed=5) for _ in range(2)]
    assert _strip(runs[:1]) == _strip(runs[1:])


@needs_data
def test_other_configuration_in_the_same_directory_is_refused(tmp_path: Path, data) -> None:
    one = make_config(iterations=20, rounds=0, seeds=[0], eval_every=20, oneshot_every=0, train_limit=3000)
    run_experiment(one, data, tmp_path)
    other = make_config(iterations=21, rounds=0, seeds=[0], eval_every=20, oneshot_every=0, train_limit=3000)
    with pytest.raises(ValueError, match=r"holds runs of a different configuration \(differs in \['iterations'\]\)"):
        run_experiment(other, data, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == one.to_dict()  # left as it was


@needs_data
def test_parallel_workers_give_the_same_numbers_as_one_process(tmp_path: Path, data) -> None:
    cfg = make_config(iterations=50, rounds=0, seeds=[0, 1], eval_every=50, oneshot_every=0, train_limit=3000)
    ticks: list[int] = []
    parallel = run_experiment(cfg, data, tmp_path / "p", progress=ticks.append, jobs=2)
    serial = run_experiment(cfg, data, tmp_path / "s")
    assert _strip(parallel) == _strip(serial)
    assert sum(ticks) == len(planned_runs(cfg)) * 50 == 100


@needs_data
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


def test_a_failing_worker_raises_with_its_traceback(tmp_path: Path) -> None:
    cfg = make_config(iterations=10, rounds=0, seeds=[0, 1], oneshot_every=0)
    with pytest.raises(RuntimeError, match=r"(?s)a worker process failed:.*seed 1 broke on purpose"):
        run_seeds(_failing_seed, cfg, None, tmp_path, jobs=2)
    with pytest.raises(RuntimeError, match=r"seed 1 broke on purpose"):  # in this process: the error itself
        run_seeds(_failing_seed, cfg, None, tmp_path, jobs=1)


# ----------------------------------------------------------------------------- SeedRun: one seed's shared setup


def test_runner_doctests() -> None:
    import doctest

    from torch_lottery.reproduction import runner

    assert doctest.testmod(runner).failed == 0


@needs_data
def test_seed_run_builds_theta_0_and_the_paper_tickets(tmp_path: Path, data) -> None:
    config = make_config(iterations=30, rounds=1, seeds=[2], eval_every=10, train_limit=3000)
    run = SeedRun(config, data, tmp_path, 2)
    theta_0 = build_model("lenet", seed=2).state_dict()
    assert all(torch.equal(v, theta_0[k]) for k, v in run.new_model().state_dict().items())
    assert not torch.equal(run.new_model(3).fc1.weight, theta_0["fc1.weight"])  # another initialization
    assert run.new_model(dropout=0.5).dropout.p == 0.5 and run.new_model().dropout is None
    assert run.rates == {"fc1.weight": 0.2, "fc2.weight": 0.2, "fc3.weight": 0.1}
    # iterative: one exit prunes each layer at its rate; prunes=3: straight to three rounds' sparsity
    for prunes, rounds in ((None, 1), (3, 3)):
        model = run.new_model()
        ticket = run.layer_ticket(model, prunes=prunes)
        with ticket:
            pass
        for fqn, rate in run.rates.items():
            kept, numel = int(ticket.masks[fqn].sum()), ticket.masks[fqn].numel()
            assert abs(kept - numel * (1 - rate) ** rounds) <= 1, (prunes, fqn)
        state = model.state_dict()  # survivors rewound to theta_0, the pruned entries zero
        assert all(torch.equal(state[k], theta_0[k] * ticket.masks[k] if k in ticket.masks else theta_0[k])
                   for k in theta_0)
    model = run.new_model()
    optimizer = torch.optim.Adam(model.parameters())
    assert run.layer_ticket(model, rewind="none", optimizer=optimizer).optimizer is optimizer


@needs_data
def test_seed_run_trains_with_the_configuration_and_the_rounds_data_order(tmp_path: Path, data) -> None:
    config = make_config(iterations=30, rounds=1, seeds=[2], eval_every=10, train_limit=3000)
    ticks: list[int] = []
    run = SeedRun(config, data, tmp_path, 2, progress=ticks.append)
    result = run.train(run.new_model(), 1)
    plain = train_run(build_model("lenet", seed=2), data, iterations=30, batch_size=60, lr=1.2e-3, eval_every=10,
                      seed=100_003 * 2 + 1)
    assert _strip([result]) == _strip([plain]) and ticks == [10, 10, 10]
    other_round = run.train(run.new_model(), 2, progress=None)
    assert other_round["curve"] != result["curve"] and ticks == [10, 10, 10]
    short = run.train(run.new_model(), 1, iterations=20, eval_every=20, progress=None)
    assert short["iterations_trained"] == 20 and [c[0] for c in short["curve"]] == [20]


def test_seed_run_records_and_knows_what_is_done(tmp_path: Path) -> None:
    config = make_config(iterations=30, rounds=1, seeds=[2])
    run = SeedRun(config, None, tmp_path, 2)
    assert run.path("ticket") == tmp_path / "state" / "seed2-ticket.pt"
    assert run.pending("ticket", 0)
    result = {"early_stop_iteration": 10, "test_acc_early_stop": 0.5, "test_acc_end": 0.5}
    rec = run.record("ticket", 0, {"w": torch.ones(3, dtype=torch.bool)}, result)
    assert rec["seed"] == 2 and rec["remaining"] == 3 and not run.pending("ticket", 0)
    assert finished_runs(tmp_path) == {"seed2-ticket-r00"}
    assert not SeedRun(config, None, tmp_path, 2).pending("ticket", 0)  # read back from the records
    assert SeedRun(config, None, tmp_path, 3).pending("ticket", 0) and run.pending("ticket", 1)
