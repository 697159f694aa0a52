"""The ``torch-lottery`` command line: one argparse subcommand per job; this module owns printing.

Subcommands:
    inspect     print a ticket file's metadata and per-tensor sparsity table.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional, Sequence

__all__ = ["main"]


# ----------------------------------------------------------------------------------------------------------------
# torch-lottery inspect FILE
# ----------------------------------------------------------------------------------------------------------------


def _add_inspect(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="print a ticket file's metadata and per-tensor sparsity",
        description="Print a ticket file's metadata and a per-tensor sparsity table (reads the header only "
        "unless --verify is given).",
    )
    parser.add_argument("file", help="a ticket file written by LotteryTicket.save / save_ticket")
    parser.add_argument("--json", action="store_true", help="print the metadata as one JSON object instead")
    parser.add_argument(
        "--verify", action="store_true", help="also read every tensor and check checksum, counts and shapes"
    )
    parser.add_argument("--history", action="store_true", help="also print the per-round history")
    parser.set_defaults(func=_run_inspect)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _run_inspect(args: argparse.Namespace) -> int:
    from torch_lottery.ticket_file import read_ticket_info, read_ticket_tensors

    try:
        info = read_ticket_info(args.file)
        if args.verify:
            read_ticket_tensors(args.file)
    except (OSError, ValueError) as exc:
        print(f"torch-lottery inspect: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    summary = info["summary"]
    total = sum(row["numel"] for row in summary)
    remaining = sum(row["remaining"] for row in summary)
    by_role = info["tensor_bytes"]
    lines = [
        f"file:          {args.file} ({_human_bytes(info['file_size'])})",
        f"format:        {info['format']} v{info['format_version']}, {info['encoding']} encoding",
        f"written by:    torch_lottery {info.get('torch_lottery_version')}, torch {info.get('torch_version')}",
        f"model:         {info.get('model_class')}",
        f"round:         {info['round']}",
        f"sparsity:      {info['sparsity']:.2%} ({remaining:,} of {total:,} target weights remain)",
        f"scope:         {info['config'].get('scope')}",
        f"rewind:        {info['config'].get('rewind')}",
        f"seed:          {info['config'].get('seed')}",
        f"config:        {json.dumps(info['config'], sort_keys=True)}",
        f"trained:       {'stored' if info['include_trained'] else 'not stored'}",
        "tensor bytes:  " + ", ".join(f"{role} {_human_bytes(n)}" for role, n in by_role.items()),
    ]
    if args.verify:
        lines.append("verified:      checksum, tensor names, shapes and mask counts are intact")
    print("\n".join(lines))
    print()
    headers = ("tensor", "shape", "numel", "remaining", "sparsity")
    rows = [
        (
            row["fqn"],
            "x".join(str(d) for d in row["shape"]) or "scalar",
            f"{row['numel']:,}",
            f"{row['remaining']:,}",
            f"{row['sparsity']:.2%}",
        )
        for row in summary
    ]
    rows.append(("total", "", f"{total:,}", f"{remaining:,}", f"{1 - remaining / total:.2%}" if total else "-"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if args.history:
        print()
        for entry in info["history"]:
            print(json.dumps(entry, sort_keys=True))
    return 0


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    """The ``torch-lottery`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="torch-lottery", description="Lottery tickets for PyTorch models.")
    subparsers = parser.add_subparsers(dest="command", metavar="command")
    _add_inspect(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``torch-lottery`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
