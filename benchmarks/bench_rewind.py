"""Benchmark rewinding (LotteryTicket.rewind_) against one plain tensor copy of the same bytes.

The snapshot lives on the CPU (the default ``snapshot_device``), or on disk
(``snapshot_device="disk"``: a memory-mapped safetensors file, read from the page cache here). The baseline is a single
``dst.copy_(src)`` of a float32 tensor holding as many bytes as the snapshot, measured in the
same run; the ratio says what the per-tensor bookkeeping of a rewind costs on top of moving
the bytes. Correctness is checked after timing: the effective weights equal snapshot * mask and
every other tensor equals the snapshot.

    python benchmarks/bench_rewind.py            # LeNet-300-100, Conv-4, resnet18, encoder
    python benchmarks/bench_rewind.py --smoke    # LeNet only, few repetitions
"""

from __future__ import annotations

import argparse
import sys

import _common  # noqa: F401  (puts the checkout on sys.path)
import torch

from _common import median_time, print_table
from _models import MODELS
from torch_lottery import LotteryTicket


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="LeNet only, few repetitions (CI)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=21)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["lenet-300-100"] if args.smoke else list(MODELS)
    reps = 3 if args.smoke else args.reps
    print(f"torch {torch.__version__}, {args.threads} threads; sparsity 0.8, restore='all', snapshot on CPU; "
          f"median of {reps} rewinds\n")
    rows, failures = [], []
    for name in names:
        for backend, where in (("prune", "cpu"), ("baked", "cpu"), ("baked-bits", "cpu"), ("prune", "disk")):
            torch.manual_seed(0)
            model, _ = MODELS[name]()
            ticket = LotteryTicket(model, sparsity=0.8, backend=backend, snapshot_device=where)
            with ticket:
                pass
            snapshot = ticket.rewind_weights
            nbytes = sum(t.numel() * t.element_size() for t in snapshot.values())
            src = torch.randn(nbytes // 4)
            dst = torch.empty_like(src)
            t_copy = median_time(lambda: dst.copy_(src), reps=reps)
            t_rewind = median_time(ticket.rewind_, reps=reps)
            t_copy2 = median_time(lambda: dst.copy_(src), reps=reps)  # bracket the rewind: drift check
            t_copy = min(t_copy, t_copy2)
            rows.append([name, backend, where, len(snapshot), f"{nbytes / 2**20:.1f}", f"{t_copy * 1e3:.2f}",
                         f"{t_rewind * 1e3:.2f}", f"{t_rewind / t_copy:.1f}x"])
            masks = ticket.masks
            live = {t.fqn: ticket.backend.weight(t) for t in ticket.targets}
            state = model.state_dict()
            for key, value in snapshot.items():
                got = live.get(key, state.get(key))
                want = value * masks[key] if key in masks else value
                if got is None or not torch.equal(got.cpu(), want):
                    failures.append(f"{name}/{backend}/{where}: {key} differs from the snapshot after rewind_()")
    print_table(["model", "backend", "snapshot", "tensors", "snapshot MiB", "one copy ms", "rewind_ ms", "rewind / copy"], rows)
    if failures:
        print("\n".join(["INCORRECT:"] + failures), file=sys.stderr)
        return 1
    print("\ncorrectness: rewound weights == snapshot (x mask on targets): OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
