"""Benchmark compact (channel-pruned) models against the dense model: parameters, file size, speed.

Models: LeNet-300-100 (neurons), Conv-4 (28x28x1), torchvision resnet18 and vgg11_bn at 32x32.
For each channel sparsity (50%, 70%, 90% of every prunable channel group's channels, each group
keeping at least one; channels ranked by L1 importance), the structured mask is computed from
the model's channel groups and ``compact_model`` builds the physically smaller model. Dense and
compact models then train on the same fixed batch with SGD (momentum 0.9, weight decay 5e-4) and
run inference on it; timings are interleaved (dense, 50%, 70%, 90%, dense, ...) and the median
per-step time is reported with its ratio to the dense model measured in the same run. File size
is the safetensors state dict of each model. After timing, each compact model (an untrained
copy) must give the channel-masked dense model's outputs; otherwise the script exits 1.

    python benchmarks/bench_structured.py            # all four models
    python benchmarks/bench_structured.py --smoke    # LeNet, tiny batch (CI)

Needs torch-pruning (and torchvision for resnet18 and vgg11_bn).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import _common  # noqa: F401  (puts the checkout on sys.path)
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from _common import print_table
from _models import MODELS as BASE_MODELS

from torch_lottery.channel_selection import channel_masks, channel_scores, full_keep, select_channels
from torch_lottery.channels import find_channel_groups, plain_copy
from torch_lottery.compact import compact_model

SPARSITIES = (0.5, 0.7, 0.9)
BATCH = {"lenet-300-100": 60, "conv-4": 60, "resnet18-32x32": 32, "vgg11_bn-32x32": 16}


def vgg11_bn():
    try:
        import torchvision
    except ModuleNotFoundError:
        raise ModuleNotFoundError("benchmarks need torchvision for vgg11_bn: pip install torch_lottery[vision]") from None
    return torchvision.models.vgg11_bn(num_classes=10), lambda b: torch.randn(b, 3, 32, 32)


MODELS = {k: BASE_MODELS[k] for k in ("lenet-300-100", "conv-4", "resnet18-32x32")}
MODELS["vgg11_bn-32x32"] = vgg11_bn


def per_group_keep(groups, scores, sparsity):
    """Each prunable group loses round(sparsity * size) channels (at least one stays)."""
    keep = full_keep(groups)
    n = {g.name: min(g.size - 1, round(sparsity * g.size)) for g in groups if g.prunable}
    return select_channels(scores, keep, n)


def file_bytes(model: nn.Module) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, path)
        return os.path.getsize(path)


def masked_reference(model, groups, keep):
    ref = plain_copy(model)
    live = dict(ref.named_parameters())
    with torch.no_grad():
        for fqn, m in channel_masks(groups, keep, live).items():
            live[fqn].mul_(m)
    return ref.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="LeNet, tiny batch, few steps (CI)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size for every model (default: " + ", ".join(f"{k} {v}" for k, v in BATCH.items()) + ")")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["lenet-300-100"] if args.smoke else args.models.split(",")
    rounds, steps = (2, 1) if args.smoke else (args.rounds, args.steps)
    print(f"torch {torch.__version__}, {args.threads} threads; channel sparsity per group {list(SPARSITIES)}, "
          f"L1 importance; SGD momentum 0.9, wd 5e-4; median over {rounds} interleaved rounds of {steps} steps\n")
    rows, failures = [], []
    for name in names:
        torch.manual_seed(0)
        dense, make_input = MODELS[name]()
        batch = 4 if args.smoke else (args.batch or BATCH[name])
        x, y = make_input(batch), torch.randint(0, 10, (batch,))
        dense.eval()
        groups = find_channel_groups(dense, make_input(1))
        scores = channel_scores(groups, dict(dense.named_parameters()))
        variants = {"dense": dense}
        checks = {}
        for s in SPARSITIES:
            keep = per_group_keep(groups, scores, s)
            small = compact_model(dense, groups, keep, example_inputs=make_input(2))
            variants[f"{s:.0%}"] = small
            checks[f"{s:.0%}"] = (copy.deepcopy(small).eval(), masked_reference(dense, groups, keep))
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for k, m in variants.items()}

        def train(key: str, k: int) -> float:
            model, opt = variants[key], opts[key]
            model.train()
            start = time.perf_counter()
            for _ in range(k):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            return (time.perf_counter() - start) / k

        def infer(key: str, k: int) -> float:
            model = variants[key]
            model.eval()
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(k):
                    model(x)
            return (time.perf_counter() - start) / k

        for key in variants:
            train(key, 1)  # warm-up (creates the momentum buffers)
        step_t = {k: [] for k in variants}
        infer_t = {k: [] for k in variants}
        for _ in range(rounds):
            for key in variants:
                step_t[key].append(train(key, steps))
        for _ in range(rounds):
            for key in variants:
                infer_t[key].append(infer(key, steps * 2))
        med = {k: statistics.median(v) for k, v in step_t.items()}
        imed = {k: statistics.median(v) for k, v in infer_t.items()}
        n_dense = sum(p.numel() for p in dense.parameters())
        f_dense = file_bytes(dense)
        for key, model in variants.items():
            n = sum(p.numel() for p in model.parameters())
            f = file_bytes(model)
            rows.append([
                name, key, f"{n:,}", f"{n / n_dense:.3f}", f"{f / 2**20:.2f}", f"{f / f_dense:.3f}",
                f"{imed[key] * 1e3:.2f}", f"{imed[key] / imed['dense']:.3f}x",
                f"{med[key] * 1e3:.2f}", f"{med[key] / med['dense']:.3f}x",
            ])
        for key, (small, ref) in checks.items():
            with torch.no_grad():
                got, want = small(x), ref(x)
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(want.abs().max()))):
                failures.append(f"{name} {key}: compact outputs differ from the channel-masked model's "
                                f"(max {float((got - want).abs().max()):.3g})")
    print_table(["model", "channels pruned", "params", "params / dense", "file MiB", "file / dense",
                 "infer ms", "infer / dense", "step ms", "step / dense"], rows)
    if failures:
        print("\n".join(["INCORRECT:"] + failures), file=sys.stderr)
        return 1
    print("\ncorrectness: every compact model gives the channel-masked dense model's outputs: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
