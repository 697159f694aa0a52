"""Benchmark the elementwise mask multiply the baked backend runs every step, by mask dtype.

The baked backends zero pruned entries with ``x.mul_(mask)``. How fast that is on a CPU depends
on the mask's dtype: a bool operand goes through torch's dynamic-cast loop, a uint8 view of the
same bytes takes the fast same-width path, a float mask is fastest but costs 4 bytes per weight.
"baked" multiplies by the uint8 view in 2^18-entry chunks (``mul_bytes_``); "baked-bits" keeps
1 bit per weight and expands each chunk through a 256-entry table first (``mul_bits_``).
Baseline: a float x float multiply, measured in the same run. Correctness: every variant gives
the same result.

    python benchmarks/bench_mask_multiply.py            # LeNet's fc1 (300x784) and 11.2M weights
    python benchmarks/bench_mask_multiply.py --smoke
"""

from __future__ import annotations

import argparse
import sys

import _common  # noqa: F401  (puts the checkout on sys.path)
import torch

from _common import median_time, print_table
from torch_lottery.masking import mul_bits_, mul_bytes_, pack_bits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [(300, 784)] if args.smoke else [(300, 784), (11_172_032,)]
    reps = 5 if args.smoke else 200
    rows, failures = [], []
    for shape in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g)
        mask = torch.rand(shape, generator=g) > 0.8
        variants = {
            "float mask": mask.to(torch.float32),
            "bool mask": mask,
            "uint8 view of bool": mask.view(torch.uint8),
        }
        times = {k: median_time(lambda m=m: x.mul_(m), reps=reps) for k, m in variants.items()}
        packed = pack_bits(mask)
        backends = {
            "bool, 2^18 chunks (baked)": (lambda y: mul_bytes_(y, mask), "1"),
            "bits, 2^18 chunks (baked-bits)": (lambda y: mul_bits_(y, packed), "1/8"),
        }
        for key, (fn, _) in backends.items():
            times[key] = median_time(lambda fn=fn: fn(x), reps=reps)
        numel = x.numel()
        for key, t in times.items():
            size = backends[key][1] if key in backends else f"{variants[key].element_size()}"
            rows.append([f"{numel:,}", key, size, f"{t * 1e6:.1f}", f"{t / times['float mask']:.2f}x"])
        ref = torch.randn(shape, generator=g)
        results = [ref.clone().mul_(m) for m in variants.values()]
        for fn, _ in backends.values():
            y = ref.clone()
            fn(y)
            results.append(y)
        if not all(torch.equal(results[0], r) for r in results[1:]):
            failures.append(f"{numel}: mask dtypes disagree")
    print(f"torch {torch.__version__}, {args.threads} threads; median of {reps} in-place multiplies")
    print_table(["weights", "mask", "bytes/weight", "us", "vs float mask"], rows)
    if failures:
        print("\n".join(["INCORRECT:"] + failures), file=sys.stderr)
        return 1
    print("\ncorrectness: every mask dtype gives the same product: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
