"""Benchmark global magnitude selection: torch_lottery.prune_lowest vs torch.nn.utils.prune vs cat+kthvalue.

Each (method, size) runs in a fresh child process so that its peak memory is its own. Time is
the median wall time of the selection call; memory is the peak RSS increase during the call
(``/proc/self/status`` VmHWM after resetting it, with ``MALLOC_MMAP_THRESHOLD_`` fixed), which
includes the result masks each method produces. Correctness is checked after timing: exactly
``n`` entries pruned, every pruned score <= every surviving score, agreement with the
cat+kthvalue threshold, and (up to 10M) equality with the sort-based reference.

    python benchmarks/bench_selection.py                 # 1M, 10M, 100M params in 50 tensors
    python benchmarks/bench_selection.py --smoke         # tiny CI run
    python benchmarks/bench_selection.py --plot docs/selection_cost.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import _common  # noqa: F401  (puts the checkout on sys.path if needed)
import torch
from torch import nn

from _common import median_time, peak_rss_delta, print_table

METHODS = ("torch_lottery", "prune.global_unstructured", "cat+kthvalue")
AMOUNT = 0.9


def _scores(total: int, tensors: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    each = total // tensors
    return {f"layer{i}.weight": torch.randn(each, generator=gen).abs_() for i in range(tensors)}


def _ours(scores):
    from torch_lottery import prune_lowest

    masks = {k: torch.ones(v.shape, dtype=torch.bool) for k, v in scores.items()}
    n = round(AMOUNT * sum(v.numel() for v in scores.values()))
    return lambda: prune_lowest(scores, masks, n)


def _kthvalue(scores):
    n = round(AMOUNT * sum(v.numel() for v in scores.values()))

    def run():
        flat = torch.cat([v.reshape(-1) for v in scores.values()])
        threshold = flat.kthvalue(n).values
        del flat
        return {k: v > threshold for k, v in scores.items()}

    return run


def _prune(scores):
    from torch.nn.utils import prune

    n = round(AMOUNT * sum(v.numel() for v in scores.values()))

    def run():
        holders = []
        for v in scores.values():
            holder = nn.Module()
            holder.weight = nn.Parameter(v, requires_grad=False)  # shares the score storage
            holders.append(holder)
        prune.global_unstructured([(h, "weight") for h in holders], pruning_method=prune.L1Unstructured, amount=n)
        masks = {k: h.weight_mask.bool() for k, h in zip(scores, holders)}
        for h in holders:  # drop prune's tensors, keep the bool masks
            prune.remove(h, "weight")
        return masks

    return run


def child(method: str, total: int, tensors: int, reps: int) -> dict:
    scores = _scores(total, tensors)
    fn = {"torch_lottery": _ours, "cat+kthvalue": _kthvalue, "prune.global_unstructured": _prune}[method](scores)
    if total > 1_000_000:  # warm up torch's kernels on a small problem, not on the timed one
        child_fn = {"torch_lottery": _ours, "cat+kthvalue": _kthvalue, "prune.global_unstructured": _prune}[method]
        child_fn(_scores(100_000, tensors))()
    else:
        fn()
    masks, peak = peak_rss_delta(fn)
    seconds = median_time(fn, reps=reps, warmup=0)
    n = round(AMOUNT * total)
    pruned = sum(int((~m).sum()) for m in masks.values())
    max_pruned = max(float(scores[k][~m].max()) for k, m in masks.items() if (~m).any())
    min_kept = min(float(scores[k][m].min()) for k, m in masks.items() if m.any())
    kth = float(torch.cat([v.reshape(-1) for v in scores.values()]).kthvalue(n).values)
    same_as_reference = None
    if method == "torch_lottery" and total <= 10_000_000:
        from torch_lottery.selection import _prune_lowest_reference

        ref = _prune_lowest_reference(scores, {k: torch.ones_like(m) for k, m in masks.items()}, n)
        same_as_reference = all(torch.equal(ref[k], masks[k]) for k in masks)
    return {
        "seconds": seconds,
        "peak_bytes": peak,
        "pruned": pruned,
        "n": n,
        "ordered": max_pruned <= min_kept,
        "threshold_ok": max_pruned == kth or method == "cat+kthvalue",
        "same_as_reference": same_as_reference,
    }


def run_child(method: str, total: int, tensors: int, reps: int, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", method, str(total), str(tensors), str(reps)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")], default=None,
                        help="comma-separated total parameter counts (default 1e6,1e7,1e8)")
    parser.add_argument("--tensors", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads in the measuring processes (default: torch's default)")
    parser.add_argument("--plot", default=None, help="write a PNG of time and memory vs size here")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, total, tensors, reps = args.child
        print(json.dumps(child(method, int(total), int(tensors), int(reps))))
        return 0

    sizes = [20_000] if args.smoke else (args.sizes or [1_000_000, 10_000_000, 100_000_000])
    tensors = 5 if args.smoke else args.tensors
    print(f"torch {torch.__version__}, {args.threads} threads; amount={AMOUNT} (first round, all alive); "
          f"{tensors} float32 tensors of |N(0,1)| scores")
    print("time: median wall seconds of the selection call; mem: peak RSS increase during the first call "
          "(VmHWM, MALLOC_MMAP_THRESHOLD_=65536; after a warm-up), bytes per parameter, result masks included\n")
    results: dict[tuple[str, int], dict] = {}
    failures = []
    for total in sizes:
        for method in METHODS:
            if method == "prune.global_unstructured":
                reps = 1 if total >= 50_000_000 else 3
            else:
                reps = 3 if total >= 50_000_000 else 5
            if args.smoke:  # in-process: CI needs the correctness check, not clean memory figures
                torch.set_num_threads(args.threads)
                r = child(method, total, tensors, reps)
            else:
                r = run_child(method, total, tensors, reps, args.threads)
            results[(method, total)] = r
            exact = method != "cat+kthvalue"
            if r["pruned"] != r["n"] and exact or not r["ordered"] or not r["threshold_ok"] \
                    or r["same_as_reference"] is False:
                failures.append((method, total, r))
    rows = []
    for total in sizes:
        base = results[("prune.global_unstructured", total)]
        kth = results[("cat+kthvalue", total)]
        for method in METHODS:
            r = results[(method, total)]
            rows.append([
                f"{total:,}", method, f"{r['seconds']:.3f}",
                f"{base['seconds'] / r['seconds']:.1f}x", f"{kth['seconds'] / r['seconds']:.2f}x",
                f"{r['peak_bytes'] / total:.2f}", "yes" if r["pruned"] == r["n"] else f"no ({r['pruned']:,})",
            ])
    print_table(["params", "method", "time s", "speed-up vs prune", "speed-up vs kthvalue",
                 "mem B/param", "exact count"], rows)
    if args.plot:
        _plot(args.plot, sizes, results)
    if failures:
        for method, total, r in failures:
            print(f"INCORRECT: {method} at {total:,}: {r}", file=sys.stderr)
        return 1
    print("\ncorrectness: exact counts, pruned <= kept, threshold == kthvalue"
          + (", equal to the sort reference up to 10M" if min(sizes) <= 10_000_000 else "") + ": OK")
    return 0


def _plot(path: str, sizes, results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for method in METHODS:
        ax_t.plot(sizes, [results[(method, s)]["seconds"] for s in sizes], marker="o", label=method)
        ax_m.plot(sizes, [results[(method, s)]["peak_bytes"] / s for s in sizes], marker="o", label=method)
    ax_t.set(xscale="log", yscale="log", xlabel="parameters (50 tensors)", ylabel="seconds (median)",
             title=f"global selection, amount={AMOUNT}")
    ax_m.set(xscale="log", xlabel="parameters (50 tensors)", ylabel="peak RSS increase, bytes/param",
             title="peak extra memory (result masks included)")
    ax_t.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    sys.exit(main())
