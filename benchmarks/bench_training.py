"""Benchmark masked training and inference against the dense model, for every mask backend.

Models: LeNet-300-100, Conv-4 (28x28x1), torchvision resnet18 at 32x32, a 2-layer
nn.TransformerEncoder. Each model is pruned to sparsity 0.8 (one round, global magnitude),
then dense, prune, baked and baked-bits copies train on the same fixed batch with SGD (momentum
0.9, weight decay 5e-4); timings are interleaved (dense, prune, baked, ..., dense, ...) and the median
per-step time is reported with its ratio to dense measured in the same run. Tensor memory
counts unique storages of parameters, gradients, buffers, tensors held as module attributes
(prune's recomputed ``weight``), optimizer state and the backend's masks. After timing, the
prune and baked copies must hold bitwise-identical effective weights and give identical
outputs (they took the same steps), and the baked copies must hold exact zeros where pruned;
otherwise the script exits 1.

    python benchmarks/bench_training.py            # all four models
    python benchmarks/bench_training.py --smoke    # LeNet, tiny batch (CI)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import _common  # noqa: F401  (puts the checkout on sys.path)
import torch
import torch.nn.functional as F
from torch import nn

from _common import median_time, print_table
from _models import MODELS
from torch_lottery import LotteryTicket

BACKENDS = ("prune", "baked", "baked-bits")
BATCH = {"lenet-300-100": 60, "conv-4": 60, "resnet18-32x32": 32, "transformer-encoder": 16}


def tensor_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, extra=()) -> int:
    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for p in model.parameters():
        add(p)
        add(p.grad)
    for b in model.buffers():
        add(b)
    for module in model.modules():
        for value in vars(module).values():
            add(value)
    for state in optimizer.state.values():
        for value in state.values():
            add(value)
    for t in extra:
        add(t)
    return sum(seen.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="LeNet, tiny batch, few steps (CI)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size for every model (default: " + ", ".join(f"{k} {v}" for k, v in BATCH.items()) + ")")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["lenet-300-100"] if args.smoke else args.models.split(",")
    rounds, steps = (2, 1) if args.smoke else (args.rounds, args.steps)
    batches = "batch 4" if args.smoke else ", ".join(f"{n} batch {args.batch or BATCH[n]}" for n in names)
    print(f"torch {torch.__version__}, {args.threads} threads; {batches}; sparsity 0.8; SGD momentum 0.9, wd 5e-4; "
          f"median over {rounds} interleaved rounds of {steps} steps\n")
    rows, failures, passes = [], [], []
    for name in names:
        torch.manual_seed(0)
        dense, make_input = MODELS[name]()
        batch = 4 if args.smoke else (args.batch or BATCH[name])
        x = make_input(batch)
        y = torch.randint(0, 10, (batch,))
        variants = {"dense": (dense, None)}
        for backend in BACKENDS:
            model = copy.deepcopy(dense)
            ticket = LotteryTicket(model, sparsity=0.8, backend=backend)
            with ticket:
                pass
            variants[backend] = (model, ticket)
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
                for k, (m, _) in variants.items()}

        def train(key: str, k: int) -> float:
            model, opt = variants[key][0], opts[key]
            model.train()
            start = time.perf_counter()
            for _ in range(k):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            return (time.perf_counter() - start) / k

        def infer(key: str, k: int) -> float:
            model = variants[key][0]
            model.eval()
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(k):
                    model(x)
            return (time.perf_counter() - start) / k

        for key in variants:  # warm-up step (also creates the momentum buffers)
            train(key, 1)
        step_t = {k: [] for k in variants}
        infer_t = {k: [] for k in variants}
        for _ in range(rounds):
            for key in variants:
                step_t[key].append(train(key, steps))
        for _ in range(rounds):
            for key in variants:
                infer_t[key].append(infer(key, steps * 2))
        mem = {}
        for key, (model, ticket) in variants.items():
            extra = ticket.backend.mask_tensors() if key.startswith("baked") else []
            mem[key] = tensor_bytes(model, opts[key], extra)
        med = {k: statistics.median(v) for k, v in step_t.items()}
        imed = {k: statistics.median(v) for k, v in infer_t.items()}
        # the baked backends' per-step gradient pass and the (skipped once clean) re-zeroing pass,
        # timed alone (grads exist after the last step)
        for key in BACKENDS[1:]:
            bticket = variants[key][1]
            backend = bticket.backend
            params = [backend.parameter(t) for t in bticket.targets]
            stored = backend.mask_tensors()

            def mask_pass(attr: str) -> None:  # the same multiply over every masked .grad, or weight
                with torch.no_grad():
                    for p, m in zip(params, stored):
                        backend._mul_(getattr(p, attr) if attr else p, m)

            passes.append([
                name, key, f"{sum(p.numel() for p in params):,}", f"{med['dense'] * 1e3:.2f}",
                f"{median_time(lambda: mask_pass('grad'), reps=rounds) / med['dense']:.1%}",
                f"{median_time(lambda: mask_pass(''), reps=rounds) / med['dense']:.1%}",
            ])
        for key in variants:
            rows.append([
                name, key, f"{med[key] * 1e3:.2f}", f"{med[key] / med['dense']:.3f}x",
                f"{imed[key] * 1e3:.2f}", f"{imed[key] / imed['dense']:.3f}x",
                f"{mem[key] / 2**20:.1f}", f"{mem[key] / mem['dense']:.3f}x",
            ])
        # correctness: prune and baked took the same steps from the same weights and masks
        pm, pt = variants["prune"]
        pm.eval()
        for key in BACKENDS[1:]:
            bm, bt = variants[key]
            for t_p, t_b in zip(pt.targets, bt.targets):
                wp, wb = pt.backend.weight(t_p), bt.backend.weight(t_b)
                if not torch.equal(wp, wb) or not torch.equal(pt.masks[t_p.fqn], bt.masks[t_b.fqn]):
                    failures.append(f"{name}: effective {t_p.fqn} differs between prune and {key}")
                if bool((bt.backend.parameter(t_b)[~bt.masks[t_b.fqn]] != 0).any()):
                    failures.append(f"{name}: {key} {t_b.fqn} has nonzero pruned entries")
            bm.eval()
            with torch.no_grad():
                if not torch.equal(pm(x), bm(x)):
                    failures.append(f"{name}: prune and {key} outputs differ")
    print_table(["model", "variant", "step ms", "step / dense", "infer ms", "infer / dense",
                 "tensor MiB", "memory / dense"], rows)
    print("\nbaked backends, their passes timed alone, as a share of the dense step (the gradient pass runs"
          "\nevery step; the re-zeroing pass only on the first step after a change, see docs/performance.md):")
    print_table(["model", "backend", "masked weights", "dense step ms", "grad mask pass", "re-zero pass"], passes)
    if failures:
        print("\n".join(["INCORRECT:"] + failures), file=sys.stderr)
        return 1
    print("\ncorrectness: prune and baked backends bitwise-identical effective weights and outputs; "
          "baked zeros in place: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
