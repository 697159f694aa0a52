"""Tests for torch_lottery.reproduction.report: summaries over seeds, the Markdown table and the result files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from torch_lottery.reproduction.config import make_config
from torch_lottery.reproduction.report import format_report, format_table, summarize, write_outputs


def _run(seed: int, kind: str, rnd: int, es: int, acc_es: float, acc_end: float, remaining: float) -> dict:
    return {"seed": seed, "kind": kind, "round": rnd, "remaining": int(remaining * 1000), "total": 1000,
            "weights_remaining": remaining, "early_stop_iteration": es, "early_stop_val_loss": 0.5,
            "val_acc_early_stop": 0.8, "test_acc_early_stop": acc_es, "test_acc_end": acc_end,
            "val_loss_end": 0.6, "seconds": 1.5, "remaining_per_layer": {"w": int(remaining * 1000)},
            "curve": [[es, 0.5, 0.8]]}


RUNS = [
    _run(0, "ticket", 0, 100, 0.80, 0.70, 1.0), _run(1, "ticket", 0, 300, 0.90, 0.70, 1.0),
    _run(0, "ticket", 1, 200, 0.85, 0.80, 0.8), _run(1, "ticket", 1, 200, 0.85, 0.82, 0.8),
    _run(0, "random", 1, 100, 0.60, 0.50, 0.8), _run(1, "random", 1, 300, 0.70, 0.60, 0.8),
]


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


def test_summary_rows_follow_the_kinds_order_then_rounds() -> None:
    shuffled = [RUNS[4], RUNS[2], RUNS[0], RUNS[5], RUNS[3], RUNS[1]]
    assert [(r["kind"], r["round"]) for r in summarize(shuffled)] == [("ticket", 0), ("ticket", 1), ("random", 1)]
    other = [{**r, "kind": {"ticket": "dense", "random": "sparse"}[r["kind"]]} for r in RUNS]
    rows = summarize(other, kinds=("sparse", "dense"))
    assert [(r["kind"], r["round"]) for r in rows] == [("sparse", 1), ("dense", 0), ("dense", 1)]


def test_format_table_is_the_hand_computed_markdown() -> None:
    config = make_config(rounds=1, seeds=[0, 1], controls=["random"], oneshot_every=0)
    assert format_table(summarize(RUNS), config).splitlines() == [
        "| round | weights % | ticket ES iter | ticket acc@ES % | ticket acc@end % | random ES iter | random acc@ES % "
        "| random acc@end % |",
        "|---|---|---|---|---|---|---|---|",
        "| 0 | 100.0 | 200 ± 141 | 85.00 ± 7.07 | 70.00 ± 0.00 |  |  |  |",
        "| 1 | 80.0 | 200 ± 0 | 85.00 ± 0.00 | 81.00 ± 1.41 | 200 ± 141 | 65.00 ± 7.07 | 55.00 ± 7.07 |",
    ]
    assert format_report(RUNS, config) == format_table(summarize(RUNS), config) + (
        "\n(mean ± sample std over seeds; ES = early stop at the minimum validation loss)")


def test_write_outputs_writes_json_csv_and_the_table(tmp_path: Path) -> None:
    config = make_config(rounds=1, seeds=[0, 1], controls=["random"], oneshot_every=0)
    files = write_outputs(RUNS, config, tmp_path)
    assert sorted(files) == ["results.json", "runs.csv", "summary.csv", "table.md"]
    saved = json.loads(files["results.json"].read_text())
    assert saved == {"config": config.to_dict(), "runs": RUNS, "summary": json.loads(json.dumps(summarize(RUNS)))}
    with open(files["runs.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    # sorted by seed, kind (in KINDS order), round; no curve or per-layer columns
    assert [(r["seed"], r["kind"], r["round"]) for r in rows] == [
        ("0", "ticket", "0"), ("0", "ticket", "1"), ("0", "random", "1"),
        ("1", "ticket", "0"), ("1", "ticket", "1"), ("1", "random", "1"),
    ]
    assert "curve" not in rows[0] and rows[0]["test_acc_end"] == "0.7"
    with open(files["summary.csv"], newline="") as f:
        assert [r["kind"] for r in csv.DictReader(f)] == ["ticket", "ticket", "random"]
    assert files["table.md"].read_text() == format_table(summarize(RUNS), config) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # no temporary file left
    assert files["runs.csv"].read_bytes().startswith(b"seed,kind,round,remaining,total,weights_remaining,")
    assert files["runs.csv"].read_bytes().count(b"\r\n") == 1 + len(RUNS)  # csv's line ends, as before


def test_a_failed_write_leaves_the_previous_results_whole(tmp_path: Path) -> None:
    config = make_config(rounds=1, seeds=[0, 1], controls=["random"], oneshot_every=0)
    before = write_outputs(RUNS, config, tmp_path)["results.json"].read_bytes()
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_outputs([*RUNS[:-1], {**RUNS[-1], "curve": object()}], config, tmp_path)
    assert (tmp_path / "results.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "runs.csv", "summary.csv", "table.md"]
