"""Tests for ``torch-lottery reproduce`` (torch_lottery.cli's reproduce part) on real Fashion-MNIST, tiny budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torch_lottery.cli import main
from torch_lottery.reproduction.data import DEBIAN_FASHION_MNIST
from torch_lottery.reproduction.runner import load_results

needs_data = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)

TINY = ["--iterations", "50", "--eval-every", "50", "--rounds", "1", "--seeds", "1", "--train-limit", "3000",
        "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the command sets --threads (default 1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def _strip(runs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs]


@needs_data
def test_cli_reproduce_prints_table_and_writes_files(tmp_path: Path, data_root: Path, capsys) -> None:
    out = tmp_path / "cli"
    rc = main(["reproduce", *TINY, "--oneshot-every", "1", "--data-dir", str(data_root), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "profile 'quick+custom'" in printed and "NOTE: reduced budget" in printed
    assert "| 1 | 80.0 |" in printed
    assert "(mean ± sample std over seeds; ES = early stop at the minimum validation loss)" in printed
    for name in ("results.json", "runs.csv", "accuracy.png", "controls.png", "curves.png", "ticket-seed0.safetensors"):
        assert (out / name).is_file(), name
    assert len(load_results(out)) == 5


@needs_data
def test_experiment_imp_is_what_the_command_runs_without_the_flag(tmp_path: Path, data_root: Path, capsys) -> None:
    common = ["reproduce", *TINY, "--controls", "", "--oneshot-every", "0", "--data-dir", str(data_root), "--no-plots"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--experiment", "imp", "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out.replace(str(tmp_path / "b"), str(tmp_path / "a")).splitlines()
    half = len(printed) // 2
    assert len(printed) == 2 * half and printed[:half] == printed[half:]  # the same lines, apart from the output directory
    a, b = load_results(tmp_path / "a"), load_results(tmp_path / "b")
    assert len(a) == 2 and _strip(a) == _strip(b)


@needs_data
def test_verbose_prints_each_run_line_once_and_the_engine_log(tmp_path: Path, data_root: Path, capsys) -> None:
    # Regression: with -v, the handler sat on both the reproduction's and the package's logger,
    # so every run line was printed twice.
    rc = main(["reproduce", *TINY, "--controls", "", "--oneshot-every", "0", "--data-dir", str(data_root),
               "--out", str(tmp_path / "v"), "--no-plots", "-v"])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("seed 0 ticket  round  0:") for line in err) == 1
    assert sum(line.startswith("seed 0: final ticket (round 1) saved") for line in err) == 1
    assert any(line.startswith("round 1: sparsity") for line in err)  # the engine's per-round log


def test_cli_reports_a_bad_budget_without_a_traceback(tmp_path: Path, capsys) -> None:
    rc = main(["reproduce", "--iterations", "0", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "torch-lottery reproduce: error: make_config(): iterations=0 must be an int >= 1" in err
    assert not (tmp_path / "out").exists()


def test_cli_reports_missing_data_without_a_traceback(tmp_path: Path, capsys) -> None:
    rc = main(["reproduce", "--dataset", "mnist", "--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path / "out"),
               "--iterations", "10", "--rounds", "1", "--seeds", "1", "--no-progress", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "torch-lottery reproduce: error: load_dataset(): name='mnist' not found under root=" in err
    assert "Traceback" not in err
