"""The stability experiment (torch-lottery reproduce --experiment stability) at smoke size on real data:
records per (kind, k), barriers from the recorded curves, masks held, resume, report and CLI."""

from __future__ import annotations

import json

import pytest
import torch

from torch_lottery.cli import main
from torch_lottery.reproduction.data import DEBIAN_FASHION_MNIST, load_dataset
from torch_lottery.reproduction.experiments import EXPERIMENTS, run_experiment
from torch_lottery.reproduction.stability import format_report, make_config, planned_runs, summarize

needs_data = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


def small(**kw):
    return make_config(iterations=12, rewind_points=(0, 4), remaining=(0.5, 0.25), points=3, train_limit=600, **kw)


def test_make_config_validates_and_marks_overrides() -> None:
    assert make_config().profile == "quick" and make_config().iterations == 3000
    assert small().profile == "quick+custom"
    with pytest.raises(ValueError, match=r"rewind_points=\[0, 3000\] must be distinct ints in \[0, iterations=3000\)"):
        make_config(rewind_points=(0, 3000))
    with pytest.raises(ValueError, match=r"remaining=\[0.05, 0.2\] must be decreasing fractions"):
        make_config(remaining=(0.05, 0.2))
    with pytest.raises(ValueError, match=r"points=1 must be an int >= 2"):
        make_config(points=1)
    assert planned_runs(small()) == [(0, kind, k) for k in (0, 4) for kind in ("dense", "ticket50", "ticket25")]
    assert "stability" in EXPERIMENTS


@needs_data
def test_stability_smoke_on_real_data(tmp_path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = small()
        data = load_dataset("fashion-mnist", root=tmp_path / "data", train_limit=600)
        runs = run_experiment(config, data, tmp_path / "out", experiment="stability")
        again = run_experiment(config, data, tmp_path / "out", experiment="stability")  # all finished: skipped
    finally:
        torch.set_num_threads(threads)
    assert sorted((r["kind"], r["round"]) for r in runs) == sorted((kind, k) for _s, kind, k in planned_runs(config))
    assert runs == again
    for r in runs:
        assert r["alphas"] == [0.0, 0.5, 1.0] and len(r["errors"]) == 3
        assert r["barrier"] == pytest.approx(max(r["errors"]) - (r["errors"][0] + r["errors"][-1]) / 2)
        assert r["train_iterations"] == 12 - r["round"]
        expected = {"dense": 1.0, "ticket50": 0.5, "ticket25": 0.25}[r["kind"]]
        assert r["weights_remaining"] == pytest.approx(expected, abs=1e-4)
    table = format_report(runs, config)
    assert table.splitlines()[0].startswith("| k | dense barrier (pp) | dense error % | 50% ticket barrier (pp)")
    assert len(summarize(runs, config)) == 6


@needs_data
def test_stability_from_the_command_line(tmp_path, capsys) -> None:
    code = main(["reproduce", "--experiment", "stability", "--iterations", "6", "--train-limit", "300",
                 "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "cli"), "--no-progress", "--no-plots",
                 "--rewind-points", "0,2", "--remaining", "0.5", "--points", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| k | dense barrier (pp)" in out
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert len(results["runs"]) == 4
