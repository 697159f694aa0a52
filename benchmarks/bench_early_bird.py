"""Benchmark the cost of one EarlyBird.update() against one training step, on torchvision resnet18.

An early-bird search calls ``update()`` once per epoch (or every few hundred steps); what it
costs is the ticket's own mask computation (scores, exact global selection over every target)
plus the distances to the stored window. The baseline is one SGD training step (forward,
backward, step) of the same model inside the same ticket's block, measured in the same run, at
CIFAR-size inputs (32x32). Both are timed in round 1 (no masks installed yet) and in round 2
(the ticket's masks in force through the prune backend). Medians over ``--reps``.

Correctness, checked after timing: the updates left the model's state_dict bitwise unchanged;
the last recorded distance equals ``mask_distance`` (over the round's survivors) recomputed from
masks kept in full; the window holds ``window - 1`` masks of ``ceil(numel / 8)`` bytes per tensor.

    python benchmarks/bench_early_bird.py            # resnet18 at 32x32, batch 128
    python benchmarks/bench_early_bird.py --smoke    # LeNet-300-100, batch 16
"""

from __future__ import annotations

import argparse
import sys

import _common  # noqa: F401  (puts the checkout on sys.path)
import torch
from torch import nn

from _common import median_time, print_table
from _models import MODELS
from torch_lottery import EarlyBird, LotteryTicket, mask_distance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--window", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = "lenet-300-100" if args.smoke else "resnet18-32x32"
    batch, reps = (16, 3) if args.smoke else (args.batch, args.reps)
    torch.manual_seed(0)
    model, make_input = MODELS[name]()
    x, y = make_input(batch), torch.randint(0, 10, (batch,))
    ticket = LotteryTicket(model, rate=0.2, rewind="none")
    eb = EarlyBird(ticket, epsilon=0.0, window=args.window)  # epsilon 0: the steady state, no pin
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    numel = sum(t.numel for t in ticket.targets)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    rows, failures = [], []
    for rnd in (1, 2):
        with ticket:
            for _ in range(args.window):  # fill the window, so each timed update compares window - 1 masks
                step()
                eb.update()
            t_step = median_time(step, reps=reps)
            t_masks = median_time(ticket.compute_masks, reps=reps)
            kept = [ticket.compute_masks()]  # the masks the timed updates will draw (weights no longer change)
            before = {k: v.clone() for k, v in model.state_dict().items()}
            t_update = median_time(eb.update, reps=reps)
            after = model.state_dict()
            if not all(torch.equal(before[k], after[k]) for k in before):
                failures.append(f"round {rnd}: update() changed the model's state_dict")
            alive = ticket.masks
            step()
            kept.append(ticket.compute_masks())
            eb.update()
            expected = mask_distance({k: kept[1][k][alive[k]] for k in alive}, {k: kept[0][k][alive[k]] for k in alive})
            if eb.distances[-1] != expected:
                failures.append(f"round {rnd}: distance {eb.distances[-1]} != mask_distance {expected}")
            packed = (args.window - 1) * sum((t.numel + 7) // 8 for t in ticket.targets)
            if eb.stored_bytes != packed:
                failures.append(f"round {rnd}: window holds {eb.stored_bytes} bytes, expected {packed}")
        rows.append([name, f"{numel:,}", rnd, f"{1000 * t_step:.1f}", f"{1000 * t_update:.1f}", f"{1000 * t_masks:.1f}",
                     f"{t_update / t_step:.2f}", f"{eb.stored_bytes / 2**20:.2f}"])
    print(f"torch {torch.__version__}, {args.threads} threads; batch {batch}, window {args.window}, global rate 0.2; "
          f"medians of {reps} runs")
    print_table(["model", "target weights", "round", "train step ms", "update() ms", "of which compute_masks ms",
                 "update / step", "window MiB"], rows)
    if failures:
        print("\n".join(["INCORRECT:"] + failures), file=sys.stderr)
        return 1
    print("\ncorrectness: updates leave the model bitwise unchanged; distances equal mask_distance; window in bits: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
