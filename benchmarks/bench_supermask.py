"""Benchmark the per-forward top-k of SupermaskTicket against a dense training step, in the same run.

Every forward pass of a supermask recomputes the top-(1 - sparsity) mask of each score tensor
(the scores changed at the last optimizer step). On small networks that selection, not the
matrix products, dominates the step. This script times, on the score tensors of each model
(sparsity 0.5, medians over interleaved repetitions):

* the mask computation alone, by method: the library's (a strided sample brackets the threshold,
  one ``kthvalue`` over the bracket), ``torch.kthvalue`` over everything, ``torch.topk``,
  a stable ``torch.sort``; per layer (one call per tensor) and batched (all tensors as rows of
  one padded matrix, one ``kthvalue`` along dim 1); for ``scope="global"``, one threshold over
  the concatenated scores (library) against ``torch.topk`` on the concatenation;
* a whole training step (forward, backward, SGD with momentum) of the dense model and of the
  same model inside ``with SupermaskTicket(...)``, layer and global scope.

Ratios are against the dense step measured in the same run. After timing, every method's masks
must equal the library's (ties broken alike) and keep exactly ``round(0.5 * n)`` entries, and the
supermask's frozen weights must be bitwise unchanged; otherwise the script exits 1.

    python benchmarks/bench_supermask.py                 # LeNet-300-100 and Conv-4
    python benchmarks/bench_supermask.py --smoke         # LeNet, few repetitions (CI)
"""

from __future__ import annotations

import argparse
import sys

import _common  # noqa: F401  (puts the checkout on sys.path)
import torch
import torch.nn.functional as F

from _common import interleaved_medians, print_table
from _models import MODELS
from torch_lottery import SupermaskTicket
from torch_lottery.topk import top_k_flat, top_k_masks

SPARSITY = 0.5


def ties_last(values: torch.Tensor, k: int, threshold: torch.Tensor) -> torch.Tensor:
    keep = values > threshold
    need = k - int(torch.count_nonzero(keep))
    if need:
        ties = (values == threshold).nonzero().view(-1)
        keep[ties[ties.numel() - need :]] = True
    return keep


def by_kthvalue(values, k):
    return ties_last(values, k, values.kthvalue(values.numel() - k).values)


def by_topk(values, k):
    return ties_last(values, k, values.topk(k, sorted=False).values.min())


def by_sort(values, k):
    keep = torch.zeros(values.numel(), dtype=torch.bool)
    keep[torch.sort(values, stable=True).indices[values.numel() - k :]] = True
    return keep


def batched_kthvalue(flat: list[torch.Tensor], keeps: list[int]) -> list[torch.Tensor]:
    """All tensors as rows of one matrix: row i gets (K - pruned_i) entries of -1 in front and +inf
    padding behind, so one kthvalue(K) along dim 1 is every row's threshold."""
    pruned = [v.numel() - k for v, k in zip(flat, keeps)]
    big_k = max(pruned)
    width = max(v.numel() + big_k - p for v, p in zip(flat, pruned))
    rows = torch.full((len(flat), width), float("inf"))
    for i, (v, p) in enumerate(zip(flat, pruned)):
        rows[i, : big_k - p] = -1.0
        rows[i, big_k - p : big_k - p + v.numel()] = v
    thresholds = rows.kthvalue(big_k, dim=1).values
    return [ties_last(v, k, thresholds[i]) for i, (v, k) in enumerate(zip(flat, keeps))]


def run_model(name: str, *, batch: int, reps: int) -> tuple[list[list[object]], list[str]]:
    failures: list[str] = []
    build = MODELS[name]
    torch.manual_seed(0)
    dense, make_input = build()
    torch.manual_seed(0)
    masked, _ = build()
    x = make_input(batch)
    y = torch.randint(0, 10, (batch,))
    opt_dense = torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9)

    tickets = {scope: SupermaskTicket(masked, sparsity=SPARSITY, scope=scope) for scope in ("layer", "global")}
    scores = {f: s.detach().clone() for f, s in tickets["layer"].scores.items()}  # training changes the originals
    flat = [s.reshape(-1).abs() for s in scores.values()]
    keeps = [round((1 - SPARSITY) * v.numel()) for v in flat]
    cat = torch.cat(flat)
    cat_keep = round((1 - SPARSITY) * cat.numel())

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    timings = {
        "dense step": lambda: step(dense, opt_dense),
        "top-k: library, per layer": lambda: top_k_masks(scores, dict(zip(scores, keeps))),
        "top-k: kthvalue, per layer": lambda: [by_kthvalue(v, k) for v, k in zip(flat, keeps)],
        "top-k: topk, per layer": lambda: [by_topk(v, k) for v, k in zip(flat, keeps)],
        "top-k: sort, per layer": lambda: [by_sort(v, k) for v, k in zip(flat, keeps)],
        "top-k: kthvalue, batched rows": lambda: batched_kthvalue(flat, keeps),
        "top-k: library, global threshold": lambda: top_k_masks(scores, cat_keep),
        "top-k: topk, global threshold": lambda: by_topk(cat, cat_keep),
    }
    results = interleaved_medians(timings, reps)
    before = {k: v.detach().clone() for k, v in masked.state_dict().items()}
    for scope, ticket in tickets.items():
        opt = torch.optim.SGD(ticket.parameters(), lr=0.1, momentum=0.9)
        with ticket:
            step_time = interleaved_medians({"dense": lambda: step(dense, opt_dense), "masked": lambda: step(masked, opt)}, reps)
        results[f"supermask step, {scope}"] = step_time["masked"]
        results[f"dense step (with {scope})"] = step_time["dense"]
        if scope == "layer":  # put the model back for the global ticket: undo the installed mask
            for t in ticket.lottery.targets:
                ticket.lottery.backend.unapply_(t)
        for t in ticket.targets:
            if not torch.equal(ticket.lottery.backend.parameter(t).detach(), before[t.fqn]):
                failures.append(f"{name}: {t.fqn} changed while training the {scope} scores")

    # correctness: every method keeps the same entries as the library
    lib = top_k_masks(scores, dict(zip(scores, keeps)))
    lib_flat = [lib[f].reshape(-1) for f in scores]
    for label, got in (
        ("kthvalue", [by_kthvalue(v, k) for v, k in zip(flat, keeps)]),
        ("topk", [by_topk(v, k) for v, k in zip(flat, keeps)]),
        ("sort", [by_sort(v, k) for v, k in zip(flat, keeps)]),
        ("batched", batched_kthvalue(flat, keeps)),
    ):
        for fqn, a, b, k in zip(scores, got, lib_flat, keeps):
            if not torch.equal(a, b) or int(b.sum()) != k:
                failures.append(f"{name}: {label} and the library keep different entries of {fqn}")
    glob = torch.cat([m.reshape(-1) for m in top_k_masks(scores, cat_keep).values()])
    if not torch.equal(glob, by_topk(cat, cat_keep)) or int(glob.sum()) != cat_keep:
        failures.append(f"{name}: global threshold masks differ")

    rows = []
    for label, seconds in results.items():
        if label.startswith("dense step ("):
            continue
        scope = label.rpartition(", ")[2]
        base = results[f"dense step (with {scope})"] if label.startswith("supermask step") else results["dense step"]
        rows.append([name, label, f"{seconds * 1e3:.3f}", f"{base * 1e3:.3f}", f"{seconds / base:.2f}x"])
    return rows, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="LeNet only, few repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = ["lenet-300-100"] if args.smoke else ["lenet-300-100", "conv-4"]
    reps = args.reps or (3 if args.smoke else 30)
    batch = 8 if args.smoke else 60
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch}, sparsity {SPARSITY}, "
          f"median of {reps} interleaved repetitions; ratio: against the dense step of the same run")
    rows, failures = [], []
    for name in models:
        r, f = run_model(name, batch=batch, reps=reps)
        rows += r
        failures += f
    print_table(["model", "what", "ms", "dense step ms (same loop)", "ratio"], rows)
    for failure in failures:
        print("FAILED:", failure)
    print("correctness:", "FAILED" if failures else "all methods keep the same entries, weights unchanged: OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
