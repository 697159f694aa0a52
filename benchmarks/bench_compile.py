"""Benchmark a compiled masked training step against the compiled dense step, for every mask backend.

Each model is compiled with ``torch.compile`` (inductor unless ``--compiler`` says otherwise),
its optimizer step too (Adam). A dense copy and one copy per backend (IMP at rate 0.5: pruned
to sparsity 0.5 after a dense round, then to 0.75, each pruning rewinding the weights and
resetting the attached optimizer as IMP does) train on the same fixed batch; timings are interleaved (dense, prune, baked, ...,
dense, ...) and the median per-step time is reported with its ratio to the dense step measured in
the same run. Compiles are counted: after the warm-up no variant may compile again (a later
round's rewind included, which is run and timed too: the second block of rows). The masked
copies must end with exact zeros where pruned and with the same effective weights as each
other (they took the same steps; compiled kernels may round differently per backend, so within
1e-4); otherwise the script exits 1.

    python benchmarks/bench_compile.py             # lenet-300-100 and conv-4
    python benchmarks/bench_compile.py --smoke     # lenet, tiny batch, few steps (CI)
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys

import _common  # noqa: F401  (puts the checkout on sys.path)
import torch
import torch.nn.functional as F
from torch import nn

from _common import interleaved_medians, print_table
from _models import MODELS
from torch_lottery import LotteryTicket

BACKENDS = ("prune", "baked", "baked-bits")
BATCH = {"lenet-300-100": 60, "conv-4": 60}
STEPS = {"lenet-300-100": 400, "conv-4": 40}  # timed steps per round: a LeNet step is ~100x shorter


class Variant:
    """One copy of the model with its ticket (or none), compiled forward and compiled optimizer step."""

    def __init__(self, base: nn.Module, backend: str | None, compiler: str, counter: dict) -> None:
        self.model = copy.deepcopy(base)
        self.backend = backend
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.ticket = None
        if backend is not None:
            self.ticket = LotteryTicket(self.model, rate=0.5, rounds=3, backend=backend, optimizer=self.optimizer)
        self.counter = counter
        self.forward = torch.compile(self.model, backend=self._counting(compiler))
        self.step_fn = torch.compile(self.optimizer.step, backend=self._counting(compiler))

    def _counting(self, compiler: str):
        from torch._dynamo.backends.registry import lookup_backend

        inner = lookup_backend(compiler)

        def backend(gm, example_inputs):
            self.counter[self.backend] = self.counter.get(self.backend, 0) + 1
            return inner(gm, example_inputs)

        return backend

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.forward(x), y).backward()
        self.step_fn()


def run_model(name: str, batch: int, steps: int, warmup: int, compiler: str) -> tuple[list[list[object]], bool]:
    torch.manual_seed(0)
    base, make_input = MODELS[name]()
    x, y = make_input(batch), torch.randint(0, 10, (batch,))
    counter: dict = {}
    variants = [Variant(base, None, compiler, counter)] + [Variant(base, b, compiler, counter) for b in BACKENDS]
    masked = [v for v in variants if v.ticket is not None]
    for v in variants:  # round 0: dense training (everything compiles), then the first pruning
        if v.ticket is not None:
            v.ticket.begin_round_()
        for _ in range(warmup):
            v.train_step(x, y)
        if v.ticket is not None:
            v.ticket.end_round_()
    rows, ok = [], True
    for label, may_compile in (("masks new", True), ("after the 2nd pruning", False)):
        for v in masked:
            v.ticket.begin_round_()
        before = dict(counter)
        for v in variants:  # warm-up: a recompile for new masks may happen here, never in the timed steps
            for _ in range(warmup):
                v.train_step(x, y)
        warm = dict(counter)
        medians = interleaved_medians({v.backend: functools.partial(v.train_step, x, y) for v in variants}, steps, warmup=0)
        for k in counter:
            new = counter[k] - (warm if may_compile else before).get(k, 0)
            if new:
                print(f"{name}, {label}: {k or 'dense'} compiled {new} more time(s)", file=sys.stderr)
                ok = False
        dense = medians[None]
        for v in variants:
            med = medians[v.backend]
            sparsity = f"{v.ticket.sparsity:.2f}" if v.ticket is not None else "0"
            rows.append([name, label, v.backend or "dense", sparsity, f"{med * 1e3:.3f}", f"{med / dense:.3f}",
                         counter.get(v.backend, 0) - before.get(v.backend, 0)])
        if may_compile:
            for v in masked:  # the second pruning and its rewind
                v.ticket.end_round_()
    for v in masked:
        for t in v.ticket._targets:
            mask, weight = v.ticket.backend.mask(t), v.ticket.backend.weight(t)
            if not bool((weight[~mask] == 0).all()):
                print(f"{name}/{v.backend}: {t.fqn} has nonzero pruned entries", file=sys.stderr)
                ok = False
    ref = masked[0]
    for v in masked[1:]:
        for t, u in zip(ref.ticket._targets, v.ticket._targets):
            if not torch.allclose(ref.ticket.backend.weight(t), v.ticket.backend.weight(u), rtol=1e-4, atol=1e-6):
                print(f"{name}: {v.backend} and {ref.backend} differ at {t.fqn}", file=sys.stderr)
                ok = False
    return rows, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="LeNet, tiny batch, few steps")
    parser.add_argument("--steps", type=int, default=None, help=f"timed steps per round (default {STEPS})")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", nargs="+", choices=sorted(BATCH), default=None, help="default: all")
    parser.add_argument("--compiler", default="inductor", help="the torch.compile backend (default inductor)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Four models and optimizers share their code objects: room for every variant's entries.
    torch._dynamo.config.cache_size_limit = 64
    models = ["lenet-300-100"] if args.smoke else args.models or list(BATCH)
    warmup = 3 if args.smoke else 5
    all_rows, ok = [], True
    for name in models:
        steps = 5 if args.smoke else args.steps or STEPS[name]
        rows, good = run_model(name, 8 if args.smoke else BATCH[name], steps, warmup, args.compiler)
        all_rows += rows
        ok &= good
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, compiler {args.compiler}, Adam, IMP at rate 0.5; "
          f"medians of interleaved steps ({'5' if args.smoke else args.steps or STEPS} per round)")
    print_table(["model", "round", "variant", "sparsity", "step ms (median)", "vs compiled dense", "compiles in this round"], all_rows)
    print(f"\ncorrectness: no compiles in timed steps or after the 2nd pruning, exact zeros, backends agree: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
