"""Benchmark ticket files: size, save time and load time against a dense safetensors state dict.

For each sparsity, a LotteryTicket prunes torchvision's resnet18 (one global magnitude round, restore="all",
so the rewind weights hold every parameter and buffer), then the ticket is saved in both encodings and
loaded into a freshly built resnet18. The baseline, measured in the same run, is the unpruned model's fp32
state dict written by ``safetensors.torch.save_model`` and read by ``load_model``. Times are medians over
``--repeats`` runs and include the fsync of the atomic write. After timing, every load is checked: masks
equal, effective weights equal.

    python benchmarks/bench_ticket_file.py            # resnet18, writes the markdown table to stdout
    python benchmarks/bench_ticket_file.py --smoke    # a tiny model, one repeat (CI)

Needs torchvision for the full run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Callable

import _common  # noqa: F401  (puts the checkout on sys.path)
import safetensors.torch
import torch
from torch import nn

from _common import median_time

from torch_lottery import LotteryTicket, load_ticket


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    out = {}
    for key, value in state.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig") and key[:-5] + "_mask" in state:
            out[key[:-5]] = value * state[key[:-5] + "_mask"]
        else:
            out[key] = value
    return out


def run(factory: Callable[[], nn.Module], sparsities: list[float], repeats: int, directory: str) -> dict[str, Any]:
    torch.manual_seed(0)
    baseline_path = os.path.join(directory, "dense_state_dict.safetensors")
    dense_model = factory()
    save_s = median_time(lambda: safetensors.torch.save_model(dense_model, baseline_path), reps=repeats, warmup=0)
    fresh = factory()
    load_s = median_time(lambda: safetensors.torch.load_model(fresh, baseline_path), reps=repeats, warmup=0)
    baseline = {"bytes": os.path.getsize(baseline_path), "save_s": save_s, "load_s": load_s}
    rows = []
    for sparsity in sparsities:
        torch.manual_seed(0)
        ticket = LotteryTicket(factory(), sparsity=sparsity)
        with ticket:
            pass
        for encoding in ("compact", "dense"):
            path = os.path.join(directory, f"ticket_{sparsity}_{encoding}.safetensors")
            save_s = median_time(lambda: ticket.save(path, encoding=encoding), reps=repeats, warmup=0)
            models = [factory() for _ in range(repeats)]
            loaded = []
            load_s = median_time(lambda: loaded.append(load_ticket(path, models[len(loaded)])), reps=repeats, warmup=0)
            for other in loaded:  # correctness after timing
                assert all(torch.equal(other.masks[k], m) for k, m in ticket.masks.items())
                expected, actual = _effective(ticket.model), _effective(other.model)
                assert all(torch.equal(actual[k], v) for k, v in expected.items())
            size = os.path.getsize(path)
            rows.append(
                {
                    "sparsity": round(ticket.sparsity, 4),
                    "encoding": encoding,
                    "bytes": size,
                    "size_ratio": size / baseline["bytes"],
                    "save_s": save_s,
                    "load_s": load_s,
                    "save_ratio": save_s / baseline["save_s"],
                    "load_ratio": load_s / baseline["load_s"],
                }
            )
            print(f"  sparsity {sparsity:.2f} {encoding:7s} {size / 1e6:8.2f} MB", file=sys.stderr)
    return {"baseline": baseline, "rows": rows}


def markdown(result: dict[str, Any], title: str) -> str:
    base = result["baseline"]
    lines = [
        f"{title}: baseline (dense fp32 state dict, safetensors save_model/load_model) "
        f"{base['bytes'] / 1e6:.2f} MB, save {base['save_s'] * 1e3:.0f} ms, load {base['load_s'] * 1e3:.0f} ms.",
        "",
        "| sparsity | encoding | file size | size / baseline | save | save / baseline | load | load / baseline |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['sparsity']:.2f} | {r['encoding']} | {r['bytes'] / 1e6:.2f} MB | {r['size_ratio']:.1%} "
            f"| {r['save_s'] * 1e3:.0f} ms | {r['save_ratio']:.2f}x | {r['load_s'] * 1e3:.0f} ms "
            f"| {r['load_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, one repeat: checks the script runs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 0.99])
    parser.add_argument("--json", help="also write the raw results to this JSON file")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: on a busy machine more threads mostly measure contention)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        factory: Callable[[], nn.Module] = lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        title, sparsities, repeats = "smoke (a 64-128-10 MLP)", [0.5, 0.9], 1
    else:
        import torchvision

        factory = torchvision.models.resnet18
        title, sparsities, repeats = f"torchvision resnet18, {args.threads} torch thread(s)", args.sparsities, args.repeats
    with tempfile.TemporaryDirectory() as directory:
        result = run(factory, sparsities, repeats, directory)
    print(markdown(result, title))
    print(f"\ncorrectness: {len(result['rows'])} saved tickets load with equal masks and effective weights: OK")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    if not args.smoke:
        at_90 = [r for r in result["rows"] if r["encoding"] == "compact" and abs(r["sparsity"] - 0.9) < 1e-3]
        for r in at_90:
            verdict = "meets" if r["size_ratio"] <= 0.15 else "MISSES"
            print(f"\ncompact ticket at 90% sparsity: {r['size_ratio']:.1%} of the dense state dict ({verdict} <= 15%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
