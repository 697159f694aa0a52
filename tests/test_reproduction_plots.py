"""Tests for torch_lottery.reproduction.plots: the PNG figures from a summary and from an IMP experiment's runs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from torch_lottery.reproduction.config import make_config  # noqa: E402
from torch_lottery.reproduction.plots import plot_results, plot_runs  # noqa: E402
from torch_lottery.reproduction.report import summarize  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _runs() -> list[dict]:
    runs = []
    for seed in (0, 1):
        for rnd, remaining in enumerate((1.0, 0.8, 0.64)):
            for kind in ("ticket", "reinit", "random", "oneshot") if rnd else ("ticket",):
                runs.append({"seed": seed, "kind": kind, "round": rnd, "weights_remaining": remaining,
                             "early_stop_iteration": 100 + 10 * rnd, "test_acc_early_stop": 0.8 + 0.01 * rnd,
                             "test_acc_end": 0.79, "curve": [[50, 1.0, 0.5 + seed / 10], [100, 0.9, 0.6]]})
    return runs


def test_plot_results_writes_the_three_figures_without_curves(tmp_path: Path) -> None:
    files = plot_results(summarize(_runs()), tmp_path / "new", title="t")
    assert sorted(files) == ["accuracy.png", "controls.png", "early_stop.png"]
    for path in files.values():
        assert path.parent == tmp_path / "new" and path.read_bytes()[:8] == PNG


def test_plot_runs_adds_the_first_seeds_curves(tmp_path: Path) -> None:
    files = plot_runs(_runs(), make_config(rounds=2, seeds=[0, 1]), tmp_path)
    assert sorted(files) == ["accuracy.png", "controls.png", "curves.png", "early_stop.png"]
    assert files["curves.png"].read_bytes()[:8] == PNG


def test_the_curves_are_the_first_seeds_ticket_at_the_dense_middle_and_last_rounds() -> None:
    from torch_lottery.reproduction.plots import _ticket_curves

    runs = _runs()
    curves = _ticket_curves(runs, make_config(rounds=2, seeds=[1, 0]))
    assert sorted(curves) == [64.0, 80.0, 100.0]
    assert all(curve[0][2] == 0.6 for curve in curves.values())  # seed 1's curves (val acc 0.5 + seed / 10)
    deeper = [{**r, "round": 2 * r["round"]} for r in runs]  # rounds 0, 2, 4 of a 4-round experiment
    assert sorted(_ticket_curves(deeper, make_config(rounds=4, seeds=[0, 1]))) == [64.0, 80.0, 100.0]
    assert sorted(_ticket_curves(deeper, make_config(rounds=8, seeds=[0, 1]))) == [64.0, 100.0]  # picks 0, 4, 8
