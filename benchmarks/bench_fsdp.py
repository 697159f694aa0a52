"""Benchmark FSDP2 tickets: selection time with 1 and 2 ranks, peak memory per rank against the model size.

Each (size, ranks) point is one ``torchrun`` launch (gloo, CPU) of this script in worker mode on
an MLP of ``layers`` square ``Linear`` layers, every layer and the root ``fully_shard``-ed. Each
rank reports:

* the median wall time of ``ticket.compute_masks()`` (scoring plus the sharded radix selection:
  histograms all-reduced, never the weights) over ``--reps`` runs;
* the peak RSS increase during one ``compute_masks()`` (``/proc/self/status`` VmHWM after a reset);
* the peak RSS increase during ``ticket.save()`` (rank 0 gathers, encodes and spools one tensor at a time).

The ratios put the 2-rank figures against the 1-rank run of the same model in the same
benchmark run: time ratio ``t(2 ranks) / t(1 rank)`` and per-rank selection memory against the
rank's share of the model. Correctness is checked after timing: exactly ``round(rate * total)``
weights pruned, and (``--smoke`` and sizes up to 4M) the sharded masks equal to
:func:`torch_lottery.prune_lowest` on the gathered weights.

    python benchmarks/bench_fsdp.py                # 4M, 16M, 64M float32 weights
    python benchmarks/bench_fsdp.py --smoke        # tiny CI run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts the checkout on sys.path if needed)
import torch

from _common import median_time, peak_rss_delta, print_table

RATE = 0.8


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    from torch_lottery import LotteryTicket, prune_lowest

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    width = int((args.size / args.layers) ** 0.5)
    model = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(args.layers)])
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    ticket = LotteryTicket(model, rate=RATE, backend="baked")
    ticket.snapshot_()
    local_bytes = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    seconds = median_time(ticket.compute_masks, reps=args.reps)
    masks, select_peak = peak_rss_delta(ticket.compute_masks)
    path = Path(args.out) / "ticket.safetensors"
    _, save_peak = peak_rss_delta(lambda: ticket.save(path))
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.to_local().sum()) for m in masks.values())
    kept_all = torch.tensor([kept])
    dist.all_reduce(kept_all)
    checks = {"count": int(kept_all) == total - round(RATE * total)}
    if args.size <= 4_000_000:  # the reference needs the full weights: gathered only for this check
        full_w = {t.fqn: ticket.backend.weight(t).full_tensor().abs() for t in ticket.targets}
        full_m = {k: m.full_tensor() for k, m in masks.items()}
        ref = prune_lowest(full_w, {k: torch.ones_like(v, dtype=torch.bool) for k, v in full_w.items()}, round(RATE * total))
        checks["equal"] = all(torch.equal(ref[k], full_m[k]) for k in ref)
    record = {"rank": rank, "world": world, "seconds": seconds, "select_peak": select_peak, "save_peak": save_peak,
              "local_bytes": local_bytes, "largest_tensor": largest, "model_bytes": total * 4, "checks": checks}
    with open(Path(args.out) / f"rank{rank}.json", "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()


def launch(size: int, world: int, args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", __file__,
               "--worker", "--size", str(size), "--layers", str(args.layers), "--reps", str(args.reps), "--out", out]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode:
            sys.exit(f"torchrun failed for size={size} world={world}:\n{done.stderr[-3000:]}")
        return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    sizes = [65_536] if args.smoke else [4_000_000, 16_000_000, 64_000_000]
    if args.smoke:
        args.reps = 2
    mib = 1 << 20
    rows, ok = [], True
    for size in sizes:
        runs = {world: launch(size, world, args) for world in (1, 2)}
        base = runs[1][0]["seconds"]
        for world, ranks in runs.items():
            for r in ranks:
                ok &= all(r["checks"].values())
                rows.append([
                    f"{r['model_bytes'] / mib:.1f}", world, r["rank"], f"{r['local_bytes'] / mib:.1f}",
                    f"{r['seconds'] * 1e3:.1f}", f"{r['seconds'] / base:.2f}",
                    f"{r['select_peak'] / mib:.1f}", f"{r['select_peak'] / r['local_bytes']:.2f}",
                    f"{r['save_peak'] / mib:.1f}", f"{r['largest_tensor'] / mib:.1f}",
                    ",".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in r["checks"].items()),
                ])
    print_table(
        ["model MiB", "ranks", "rank", "shard MiB", "select ms", "t/t(1 rank)", "select peak MiB",
         "peak/shard", "save peak MiB", "largest tensor MiB", "checks"],
        rows,
    )
    print(f"correctness: {'OK' if ok else 'FAILED'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
