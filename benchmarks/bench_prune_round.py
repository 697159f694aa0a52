"""Benchmark one whole global pruning round (LotteryTicket.prune_) against torch.nn.utils.prune.

``prune_`` reads the effective weights, checks them, scores them, selects globally and installs
the masks. The baseline does the same job with torch's own tools on an identical copy of the
model: ``prune.global_unstructured(..., L1Unstructured, amount=...)`` over the same tensors,
measured in the same run. Correctness: both keep the same number of weights per round, and
the masks differ only among entries whose magnitude ties at the threshold (torch's ``topk`` and
our positional rule break ties differently; vgg11_bn's 102M-weight classifier, drawn from
N(0, 0.01) in float32, has such ties).

    python benchmarks/bench_prune_round.py              # torchvision resnet18 and vgg11_bn
    python benchmarks/bench_prune_round.py --smoke      # LeNet-300-100
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import _common  # noqa: F401  (puts the checkout on sys.path)
import torch
from torch.nn.utils import prune

from _common import print_table
from _models import MODELS
from torch_lottery import LotteryTicket


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name in MODELS:
        return MODELS[name]()[0]
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="resnet18,vgg11_bn")
    parser.add_argument("--rate", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["lenet-300-100"] if args.smoke else args.models.split(",")
    rows, failures = [], []
    for name in names:
        ours = build(name)
        theirs = copy.deepcopy(ours)
        ticket = LotteryTicket(ours, rate=args.rate, restore="targets")
        params = [(theirs.get_submodule(t.module_name), t.name) for t in ticket.targets]
        numel = sum(t.numel for t in ticket.targets)
        thresholds: list[float] = []  # per round: the largest magnitude we pruned
        for rnd in (1, 2):
            before = ticket.masks
            start = time.perf_counter()
            ticket.prune_()
            t_ours = time.perf_counter() - start
            start = time.perf_counter()
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=args.rate)
            t_theirs = time.perf_counter() - start
            ties: list[int] = []
            # Same survivor count, and masks may differ only where |w| ties at the threshold
            # (torch's topk and our positional rule order ties differently).
            ours_alive = theirs_alive = 0
            tied = []
            for t, (module, attr) in zip(ticket.targets, params):
                mine, other = ticket.masks[t.fqn], getattr(module, attr + "_mask") != 0
                ours_alive += int(mine.sum())
                theirs_alive += int(other.sum())
                tied.append(getattr(module, attr + "_orig").detach().abs()[mine != other])
            tied = torch.cat(tied)
            thresholds.append(max(
                float(ticket.backend.parameter(t).detach().abs()[before[t.fqn] & ~ticket.masks[t.fqn]].max())
                for t in ticket.targets if bool((before[t.fqn] & ~ticket.masks[t.fqn]).any())
            ))
            if ours_alive != theirs_alive:
                failures.append(f"{name} round {rnd}: {ours_alive} survivors, torch kept {theirs_alive}")
            if tied.numel() and not bool(torch.isin(tied, torch.tensor(thresholds, dtype=tied.dtype)).all()):
                failures.append(f"{name} round {rnd}: masks differ beyond ties at a round's threshold")
            ties.append(tied.numel())
            rows.append([name, f"{numel:,}", rnd, f"{t_ours:.2f}", f"{t_theirs:.2f}", f"{t_theirs / t_ours:.1f}x",
                         f"{ties[0]:,}"])
    print(f"torch {torch.__version__}, {args.threads} threads; global magnitude pruning, rate {args.rate} of the "
          "survivors per round; one timing per round (rounds differ in survivors)")
    print_table(["model", "target weights", "round", "prune_ s", "prune.global_unstructured s", "speed-up",
                 "entries decided differently (ties)"], rows)
    if failures:
        print("\n".join(["INCORRECT:"] + failures), file=sys.stderr)
        return 1
    print("\ncorrectness: same survivor counts as torch.nn.utils.prune; masks differ only at ties: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
