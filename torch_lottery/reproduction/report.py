"""Summarize the reproduction's run records over seeds and write them as JSON, CSV and a Markdown table.

:func:`summarize` turns run records (from :func:`torch_lottery.reproduction.runner.load_results`)
into one row per ``(kind, round)`` with mean, sample std, min and max over seeds;
:func:`format_table` renders the IMP experiment's rows as Markdown; :func:`write_outputs` writes
``results.json``, ``runs.csv``, ``summary.csv`` and ``table.md``. Pure except for
:func:`write_outputs`; nothing here prints.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from ..files import atomic_write
from .config import KINDS, ReproConfig
from .runner import write_json

__all__ = ["format_report", "format_table", "summarize", "write_outputs"]

PathLike = Union[str, Path]

_METRICS = ("weights_remaining", "early_stop_iteration", "test_acc_early_stop", "test_acc_end")

_RUN_COLUMNS = ["seed", "kind", "round", "remaining", "total", "weights_remaining", "early_stop_iteration",
                "early_stop_val_loss", "val_acc_early_stop", "test_acc_early_stop", "test_acc_end",
                "val_loss_end", "seconds"]


def summarize(runs: Iterable[Mapping[str, Any]], *, kinds: Sequence[str] = KINDS) -> list[dict[str, Any]]:
    """Aggregate runs over seeds: one row per ``(kind, round)`` with mean, std, min and max.

    ``std`` is the sample standard deviation (0.0 for a single seed). The ticket's round 0 is the
    dense network. Rows are ordered by kind (as in ``kinds``, the IMP experiment's :data:`KINDS`
    by default) then round.

    Example:
        >>> run = {"kind": "ticket", "round": 0, "weights_remaining": 1.0, "early_stop_iteration": 100,
        ...        "test_acc_early_stop": 0.8, "test_acc_end": 0.7}
        >>> summarize([run])[0]["test_acc_end_mean"]
        0.7
    """
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["kind"], run["round"]), []).append(run)
    rows = []
    for (kind, rnd), group in sorted(groups.items(), key=lambda kv: (list(kinds).index(kv[0][0]), kv[0][1])):
        row: dict[str, Any] = {"kind": kind, "round": rnd, "seeds": len(group)}
        for metric in _METRICS:
            values = [float(g[metric]) for g in group]
            row[f"{metric}_mean"] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{metric}_min"] = min(values)
            row[f"{metric}_max"] = max(values)
        rows.append(row)
    return rows


def format_table(summary: Sequence[Mapping[str, Any]], config: ReproConfig) -> str:
    """A Markdown table: per round, weights remaining, then early-stop iteration and test accuracy
    (at early stop / at the end) of each kind, as mean ± std over seeds."""
    by = {(r["kind"], r["round"]): r for r in summary}
    kinds = [k for k in KINDS if any(key[0] == k for key in by)]
    head = ["round", "weights %"]
    for kind in kinds:
        head += [f"{kind} ES iter", f"{kind} acc@ES %", f"{kind} acc@end %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rnd in range(config.rounds + 1):
        ticket = by.get(("ticket", rnd))
        if ticket is None:
            continue
        cells = [str(rnd), f"{100 * ticket['weights_remaining_mean']:.1f}"]
        for kind in kinds:
            row = by.get((kind, rnd)) or (by.get(("ticket", 0)) if rnd == 0 and kind != "ticket" else None)
            if row is None or (rnd == 0 and kind != "ticket"):
                cells += ["", "", ""]
                continue
            cells += [
                f"{row['early_stop_iteration_mean']:.0f} ± {row['early_stop_iteration_std']:.0f}",
                f"{100 * row['test_acc_early_stop_mean']:.2f} ± {100 * row['test_acc_early_stop_std']:.2f}",
                f"{100 * row['test_acc_end_mean']:.2f} ± {100 * row['test_acc_end_std']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_report(runs: Sequence[Mapping[str, Any]], config: ReproConfig) -> str:
    """The table of :func:`format_table` over ``runs`` with the line that explains it (what the CLI prints)."""
    return format_table(summarize(runs), config) + "\n(mean ± sample std over seeds; ES = early stop at the " \
        "minimum validation loss)"


def write_outputs(runs: Sequence[Mapping[str, Any]], config: ReproConfig, out_dir: PathLike) -> dict[str, Path]:
    """Write ``results.json`` (config, runs, summary), ``runs.csv``, ``summary.csv`` and ``table.md``.

    Each file is written through :func:`torch_lottery.files.atomic_write`: whole or not at all.

    Returns:
        name -> path of each file written.
    """
    out_dir = Path(out_dir)
    summary = summarize(runs)
    paths = {name: out_dir / name for name in ("results.json", "runs.csv", "summary.csv", "table.md")}
    write_json(paths["results.json"], {"config": config.to_dict(), "runs": list(runs), "summary": summary},
               fn="write_outputs")
    ordered = sorted(runs, key=lambda r: (r["seed"], KINDS.index(r["kind"]), r["round"]))
    _write_text(paths["runs.csv"], _csv(ordered, _RUN_COLUMNS))
    _write_text(paths["summary.csv"], _csv(summary, list(summary[0])) if summary else "")
    _write_text(paths["table.md"], format_table(summary, config) + "\n")
    return paths


def _csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as CSV text with a header line (``csv``'s default dialect: ``\\r\\n`` line ends)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, fn="write_outputs") as f:
        f.write(text.encode("utf-8"))
