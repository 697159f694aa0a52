"""The ``torch-lottery`` command line: one argparse subcommand per job; this module owns printing.

Subcommands:
    inspect     print a ticket file's metadata and per-tensor sparsity table.
    reproduce   run the lottery-ticket experiments of Frankle & Carbin (2019) on real data
                (progress bar, table, JSON/CSV, PNG plots, the final ticket files).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

__all__ = ["main"]


# ----------------------------------------------------------------------------------------------------------------
# torch-lottery inspect FILE
# ----------------------------------------------------------------------------------------------------------------


def _add_inspect(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="print a ticket file's metadata and per-tensor sparsity",
        description="Print a ticket file's metadata and a per-tensor sparsity table (reads the header only "
        "unless --verify is given). A file that is not an intact ticket file is one error line and exit status 2.",
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
    from torch_lottery.summary import format_table, totals
    from torch_lottery.ticket_file import read_ticket_info, read_ticket_tensors

    try:
        info = read_ticket_info(args.file)
        if args.verify:
            _verify_summary(info, read_ticket_tensors(args.file).masks)
    except (OSError, ValueError) as exc:  # every bad file is one of these: a message, never a traceback
        print(_printable(f"torch-lottery inspect: error: {exc}"), file=sys.stderr)
        return 2
    if args.json:
        print(_printable(json.dumps(info, indent=2, sort_keys=True)))
        return 0
    summary = info["summary"]
    remaining, total, _ = totals(summary)
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
        lines.append("verified:      checksum, tensor names, shapes, mask counts, summary and sparsity agree")
    print(_printable("\n".join(lines)))
    print()
    print(_printable(format_table(summary)))
    if args.history:
        print()
        for entry in info["history"]:
            print(_printable(json.dumps(entry, sort_keys=True)))
    return 0


def _printable(text: str) -> str:
    """``text`` with control characters (terminal escape sequences included) shown as ``\\xNN``; newlines kept."""
    return "".join(
        c if c == "\n" or (c.isprintable() and not 0x7F <= ord(c) <= 0x9F) else f"\\x{ord(c):02x}" if ord(c) < 256
        else f"\\u{ord(c):04x}"
        for c in text
    )


def _verify_summary(info: dict, masks: dict) -> None:
    """The file's summary rows and sparsity must be what its masks say (a re-signed file can lie in both)."""
    from torch_lottery.summary import mask_rows, totals

    rows = mask_rows(masks)
    if [dict(r) for r in info["summary"]] != rows:
        raise ValueError(f"path={info.get('path', '?')!r}: the summary in the metadata contradicts the stored masks; the file was edited")
    if abs(float(info["sparsity"]) - totals(rows)[2]) > 1e-12:
        raise ValueError(
            f"sparsity {info['sparsity']!r} in the metadata contradicts the stored masks ({totals(rows)[2]!r}); the file was edited"
        )


# ----------------------------------------------------------------------------- reproduce


def _add_reproduce(subparsers: Any) -> None:
    from .backends import BACKENDS
    from .reproduction.experiments import EXPERIMENTS

    p = subparsers.add_parser(
        "reproduce",
        help="reproduce the lottery-ticket experiments (winning tickets vs controls) on real data",
        description=(
            "Find winning tickets by iterative magnitude pruning with rewinding to theta_0, and compare "
            "them with random re-initialization, random masks and one-shot pruning, over several seeds. "
            "The default 'quick' profile fits in about 10 minutes on 2 CPU cores with a reduced budget; "
            "--full runs the paper's budget. Interrupted runs resume: rerun the same command."
        ),
    )
    p.add_argument("--experiment", default="imp", choices=list(EXPERIMENTS),
                   help="which experiment (default: imp); " + "; ".join(f"{e.name}: {e.help}"
                                                                        for e in EXPERIMENTS.values()))
    p.add_argument("--full", action="store_true", help="the paper's budget (iterations, 16 rounds, 5 seeds)")
    p.add_argument("--model", default="lenet", choices=["lenet", "conv2", "conv4", "conv6"])
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist", "cifar10"])
    p.add_argument("--data-dir", default="data", help="torchvision root (default: ./data)")
    p.add_argument("--download", action="store_true", help="let torchvision download missing data (needs internet)")
    p.add_argument("--out", default=None, help="output directory (default: runs/<model>-<dataset>-<profile>, "
                                               "runs/<experiment>-<model>-<dataset>-<profile> for other experiments)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations per run (overrides profile)")
    p.add_argument("--rounds", type=int, default=None, help="iterative pruning rounds (overrides profile)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1 (overrides profile)")
    p.add_argument("--oneshot-every", type=int, default=None, help="one-shot comparison every N rounds; 0: none")
    p.add_argument("--controls", default="reinit,random",
                   help="comma-separated controls at every pruned round: reinit, random (default both; '' for none)")
    p.add_argument("--eval-every", type=int, default=100, help="validation period in iterations (paper: 100)")
    p.add_argument("--train-limit", type=int, default=None, help=argparse.SUPPRESS)  # smoke tests only
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: batch-60 nets gain little from more, and it stays fast "
                        "on a busy machine)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes, one seed each at a time (default: the CPU count, at most the seeds)")
    p.add_argument("--backend", default="prune", choices=sorted(BACKENDS),
                   help="the tickets' mask backend (same numbers with every backend; see docs/performance.md)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the engine's per-round log")
    for experiment in EXPERIMENTS.values():
        if experiment.add_arguments is not None:
            experiment.add_arguments(p)
    p.set_defaults(func=_cmd_reproduce, parser=p)


def _progress_bar(total: int, enabled: bool) -> tuple[Callable[[int], None], Callable[[str], None], Callable[[], None]]:
    """(advance, write, close) for a tqdm bar, or plain stderr output if tqdm is missing or disabled."""
    if enabled:
        try:
            from tqdm import tqdm
        except ModuleNotFoundError:
            print("(no progress bar: pip install torch_lottery[progress])", file=sys.stderr)
        else:
            bar = tqdm(total=total, unit="it", desc="training", dynamic_ncols=True, smoothing=0.05)
            return bar.update, lambda s: bar.write(s, file=sys.stderr), bar.close
    return (lambda n: None), (lambda s: print(s, file=sys.stderr)), (lambda: None)


class _WriteHandler(logging.Handler):
    def __init__(self, write: Callable[[str], None]) -> None:
        super().__init__()
        self._write = write

    def emit(self, record: logging.LogRecord) -> None:
        self._write(self.format(record))


# The flags every experiment may take, as make_config keyword options (the experiment's `options`).
_REPRODUCE_OPTIONS = {"profile": "--full", "dataset": "--dataset", "model": "--model", "iterations": "--iterations",
                      "rounds": "--rounds", "seeds": "--seeds", "eval_every": "--eval-every",
                      "oneshot_every": "--oneshot-every", "controls": "--controls", "train_limit": "--train-limit"}


def _reproduce_config(args: argparse.Namespace, experiment: Any) -> Any:
    """The experiment's configuration from the flags; a flag it does not take, when given, is an error."""
    options = {
        "profile": "full" if args.full else "quick",
        "dataset": args.dataset,
        "model": args.model,
        "iterations": args.iterations,
        "rounds": args.rounds,
        "seeds": None if args.seeds is None else list(range(args.seeds)),
        "eval_every": args.eval_every,
        "oneshot_every": args.oneshot_every,
        "controls": [c for c in args.controls.split(",") if c],
        "train_limit": args.train_limit,
    }
    dest = {"profile": "full"}
    unused = [flag for name, flag in _REPRODUCE_OPTIONS.items()
              if name not in experiment.options
              and getattr(args, dest.get(name, name)) != args.parser.get_default(dest.get(name, name))]
    if unused:
        raise ValueError(f"--experiment {experiment.name} does not take {', '.join(unused)}; leave them out")
    extra = {name: getattr(args, name) for name in experiment.options if name not in options}
    return experiment.make_config(**{name: options[name] for name in experiment.options if name in options}, **extra)


def _run_with_progress(args: argparse.Namespace, experiment: Any, config: Any, data: Any, out: Path) -> list:
    """Run the experiment under a progress bar, with its log lines (and the engine's, with -v) above it."""
    from .reproduction.experiments import run_experiment
    from .reproduction.runner import load_results

    finished = {(r["seed"], r["kind"], r["round"]) for r in load_results(out)}
    pending = [run for run in experiment.planned_runs(config) if run not in finished]
    if finished:
        print(f"  resuming: {len(finished)} runs already finished in {out}, {len(pending)} to go")
    advance, write, close = _progress_bar(len(pending) * config.iterations, not args.no_progress)
    handler = _WriteHandler(write)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("torch_lottery" if args.verbose else "torch_lottery.reproduction")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
        return run_experiment(config, data, out, experiment=experiment.name, progress=advance,
                              jobs=max(1, min(jobs, len(config.seeds))), backend=args.backend)
    finally:
        close()
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import torch

    from .reproduction.data import load_dataset
    from .reproduction.experiments import EXPERIMENTS

    if getattr(args, "granularity", "weight") == "channel":  # structured tickets beside the weight ticket
        if args.experiment not in ("imp", "structured"):
            print(f"torch-lottery reproduce: error: --granularity channel runs the 'structured' experiment, "
                  f"not --experiment {args.experiment}; leave one of them out", file=sys.stderr)
            return 2
        args.experiment = "structured"
    experiment = EXPERIMENTS[args.experiment]
    torch.set_num_threads(max(1, args.threads))
    try:
        config = _reproduce_config(args, experiment)
    except ValueError as exc:
        print(f"torch-lottery reproduce: error: {exc}", file=sys.stderr)
        return 2
    prefix = "" if experiment.name == "imp" else f"{experiment.name}-"  # imp keeps its historical path
    out = Path(args.out or f"runs/{prefix}{config.model}-{config.dataset}-{config.profile.replace('+', '-')}")
    print(f"torch-lottery reproduce: {config.model} on {config.dataset}, profile {config.profile!r} -> {out}")
    for line in experiment.describe(config):
        print(f"  {line}")
    if config.profile != "full":
        print("  NOTE: reduced budget (not the paper's); numbers are indicative. Use --full for the paper's budget.")
    try:
        data = load_dataset(config.dataset, root=args.data_dir, download=args.download,
                            validation_size=config.validation_size,
                            train_limit=config.train_limit) if experiment.needs_data else None
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"torch-lottery reproduce: error: {exc}", file=sys.stderr)
        return 2
    runs = _run_with_progress(args, experiment, config, data, out)
    files = experiment.write_outputs(runs, config, out)
    print()
    print(experiment.format_report(runs, config))
    if not args.no_plots and experiment.plot is not None:
        files.update(experiment.plot(runs, config, out))
    tickets = sorted(out.glob("ticket-seed*.safetensors"))
    print("\nwrote: " + ", ".join(str(p) for p in [*files.values(), *tickets]))
    return 0


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    """The ``torch-lottery`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="torch-lottery", description="Lottery tickets for PyTorch models.")
    subparsers = parser.add_subparsers(dest="command", metavar="command")
    _add_inspect(subparsers)
    _add_reproduce(subparsers)
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
