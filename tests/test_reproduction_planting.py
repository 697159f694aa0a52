"""The planted-ticket experiment (torch-lottery reproduce --experiment planted) at smoke size."""

from __future__ import annotations

import pytest
import torch

from torch_lottery.reproduction.experiments import EXPERIMENTS, run_experiment
from torch_lottery.reproduction.planting import format_report, imp_rounds, make_config, methods, planned_runs


def test_imp_rounds_reach_the_sparsity_at_20_percent_a_round() -> None:
    assert [imp_rounds(s) for s in (0.2, 0.5, 0.8, 0.9, 0.95, 0.98)] == [1, 4, 8, 11, 14, 18]
    assert 0.8 ** imp_rounds(0.9) <= 0.1 < 0.8 ** (imp_rounds(0.9) - 1)


def test_make_config_validation() -> None:
    assert make_config().profile == "quick"
    with pytest.raises(ValueError, match=r"sparsities=\[1.0\] must be fractions in \(0, 1\)"):
        make_config(sparsities=(1.0,))
    with pytest.raises(ValueError, match=r"iterations=0 must be an int >= 1"):
        make_config(iterations=0)
    assert "planted" in EXPERIMENTS


def test_planted_smoke(tmp_path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = make_config(iterations=5, seeds=(0,), sparsities=(0.5,))
        runs = run_experiment(config, None, tmp_path, experiment="planted")
    finally:
        torch.set_num_threads(threads)
    assert len(runs) == len(planned_runs(config)) == 2 * len(methods())
    by = {(r["scale"], r["method"]): r for r in runs}
    assert by[("scaled", "chance")]["overlap"] == pytest.approx(0.5 / 1.5)
    for (scale, method), r in by.items():
        assert 0.0 <= r["overlap"] <= 1.0
        if method != "chance":
            assert r["recall"] == pytest.approx(2 * r["overlap"] / (1 + r["overlap"]))  # equal counts
    assert by[("scaled", "imp")]["trained_rounds"] == 4
    assert "| imp |" in format_report(runs, config)


def test_planted_from_the_command_line_needs_no_dataset(tmp_path, capsys) -> None:
    from torch_lottery.cli import main

    code = main(["reproduce", "--experiment", "planted", "--iterations", "2", "--seeds", "1",
                 "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path / "cli"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "mask overlap with the planted mask" in out or "mask overlap (Jaccard)" in out
    assert not (tmp_path / "no-data").exists()  # nothing was loaded
    assert (tmp_path / "cli" / "table.md").is_file()
