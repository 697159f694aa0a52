"""Smoke runs of the benchmark scripts: each must finish its --smoke run and pass its correctness checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["bench_selection.py", "bench_rewind.py", "bench_training.py", "bench_mask_multiply.py", "bench_prune_round.py", "bench_supermask.py", "bench_structured.py", "bench_early_bird.py"])
def test_benchmark_smoke_run_exits_zero_with_correct_results(script):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", "--threads", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "correctness:" in result.stdout and ": OK" in result.stdout
