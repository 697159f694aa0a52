"""Smoke runs of the benchmark scripts: each must finish its --smoke run and pass its correctness checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


# Every benchmark script; bench_ticket_file.py has its own smoke test in test_ticket_file.py.
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py") if p.name != "bench_ticket_file.py")


def test_the_list_holds_every_benchmark():
    assert len(SCRIPTS) >= 9 and "bench_compile.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke_run_exits_zero_with_correct_results(script):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "correctness:" in result.stdout and ": OK" in result.stdout


@pytest.mark.slow
def test_fsdp_benchmark_smoke_run_launches_one_and_two_ranks():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_fsdp.py"), "--smoke", "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "correctness: OK" in result.stdout and "count=ok,equal=ok" in result.stdout
