"""Shared helpers for the benchmark scripts: timing medians, peak-RSS deltas, table printing."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

# Benchmark the checkout these scripts live in, even if another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["interleaved_medians", "median_time", "peak_rss_delta", "print_table", "rss_bytes"]


def median_time(fn: Callable[[], object], *, reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``reps`` runs after ``warmup`` untimed runs, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: Mapping[str, Callable[[], object]], reps: int, *, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each ``fns[name]()`` in seconds, the calls interleaved (a, b, c, a, b, c, ...)
    over ``reps`` rounds after ``warmup`` untimed rounds: load that comes and goes hits every variant alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_delta(fn: Callable[[], object]) -> tuple[object, int]:
    """Run ``fn`` and return ``(result, peak RSS during fn - RSS before fn)`` in bytes (Linux).

    The peak counter is reset through ``/proc/self/clear_refs``. Run with
    ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed large buffers go back to the OS and later
    allocations show up as new resident memory.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_bytes()
    result = fn()
    return result, _status_kib("VmHWM") * 1024 - before


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a fixed-width, pipe-separated table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))
