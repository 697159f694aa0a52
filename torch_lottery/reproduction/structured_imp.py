"""The structured-ticket experiment: IMP over whole neurons (granularity="channel") beside the IMP ticket.

``torch-lottery reproduce --granularity channel`` runs everything the IMP experiment runs
(:mod:`torch_lottery.reproduction.imp`: the weight ticket and its controls), then for each seed

* **channel**: a ``LotteryTicket(granularity="channel")`` that prunes each hidden layer's neurons
  (conv channels) at the paper's per-layer rates and rewinds the survivors to theta_0. Its round 0
  is the dense network (the IMP ticket's round 0; its trained weights are reused for the first
  prune). After each prune its compact model (``ticket.compact()``) is timed against the dense
  network: inference on 1,000 test images and one Adam training step at the paper's batch size.
* **channel-reinit**: round ``k``'s channel masks on a freshly, randomly initialized network (the
  same initialization as the IMP experiment's reinit control).
* **refill** (Chen et al. 2022): the IMP weight ticket's round-``k`` masks turned into channels
  (keep the neurons whose weights hold the most survivors, as many as each layer's density
  allows), on theta_0.

Runs are recorded like the IMP experiment's (``weights_remaining`` counts the weight matrices),
plus ``channels_remaining`` and, for **channel**, the compact model's timing under ``compact``.
Timings depend on the machine and its load; the accuracies do not. All kinds at the same
``(seed, round)`` see the same minibatch order.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import LotteryTicket  # the public API
from ..structured import ChannelPlan
from .imp import planned_runs as imp_planned_runs
from .imp import run_seed as imp_run_seed
from .config import KINDS, ReproConfig
from .data import DatasetSplits
from .report import summarize
from .runner import Progress, SeedRun, load_tensors, save_tensors, write_json

__all__ = ["ALL_KINDS", "STRUCTURED_KINDS", "format_report", "planned_runs", "run_seed", "write_outputs"]

logger = logging.getLogger(__name__)

STRUCTURED_KINDS: tuple[str, ...] = ("channel", "channel-reinit", "refill")
ALL_KINDS: tuple[str, ...] = KINDS + STRUCTURED_KINDS
PathLike = Union[str, Path]


def planned_runs(config: ReproConfig) -> list[tuple[int, str, int]]:
    """The IMP experiment's runs, then each seed's structured runs at every pruned round.

    Example:
        >>> from torch_lottery.reproduction.config import make_config
        >>> planned_runs(make_config(rounds=1, seeds=[0], oneshot_every=0, controls=()))
        [(0, 'ticket', 0), (0, 'ticket', 1), (0, 'channel', 1), (0, 'channel-reinit', 1), (0, 'refill', 1)]
    """
    plan = imp_planned_runs(config)
    for seed in config.seeds:
        for rnd in range(1, config.rounds + 1):
            plan += [(seed, kind, rnd) for kind in STRUCTURED_KINDS]
    return plan


def _weight_masks(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The masks of weight matrices only (what ``weights_remaining`` counts, as for the weight ticket)."""
    return {k: v for k, v in masks.items() if v.dim() >= 2}


def _median_ms(fn: Any, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def compact_speed(small: nn.Module, dense: nn.Module, data: DatasetSplits, *, batch_size: int, lr: float,
                  reps: int = 15) -> dict[str, Any]:
    """Parameters, inference time (1,000 test images) and Adam step time of ``small`` against ``dense``."""
    x_test = data.test.x[:1000]
    x, y = data.train.x[:batch_size], data.train.y[:batch_size]
    out: dict[str, Any] = {}
    for name, model in (("dense", dense), ("compact", small)):
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def infer(model: nn.Module = model) -> None:
            model.eval()
            with torch.no_grad():
                model(x_test)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        out[f"{name}_params"] = sum(p.numel() for p in model.parameters())
        out[f"{name}_infer_ms"] = _median_ms(infer, reps)
        out[f"{name}_step_ms"] = _median_ms(step, reps)
    out["infer_ratio"] = out["compact_infer_ms"] / out["dense_infer_ms"]
    out["step_ratio"] = out["compact_step_ms"] / out["dense_step_ms"]
    return out


class _Structured:
    """One seed's structured tickets: the IMP experiment's context plus the channel ticket's settings."""

    def __init__(self, run: SeedRun, example: Tensor) -> None:
        self.run, self.example = run, example
        groups = ChannelPlan.trace(run.new_model(), example).group_names  # the root layer of each prunable group
        self.rates = {g: run.rates[f"{g}.weight"] for g in groups}

    def ticket(self, model: nn.Module) -> LotteryTicket:
        return LotteryTicket(model, scope="layer", layer_rates=dict(self.rates), granularity="channel",
                             example_inputs=self.example, rewind="init", seed=self.run.seed, backend=self.run.backend)

    def record(self, kind: str, rnd: int, ticket: LotteryTicket, masks: Mapping[str, Tensor], result: dict[str, Any]) -> None:
        plan = ticket.channel_plan
        kept = plan.kept_counts(plan.keep_from_masks(masks))
        total = sum(g.size for g in plan.prunable_groups)
        result = {**result, "channels_remaining": sum(kept.values()) / total, "channels_per_layer": kept}
        self.run.record(kind, rnd, _weight_masks(masks), result)


def run_seed(config: ReproConfig, data: DatasetSplits, out_dir: Path, seed: int, *,
             progress: Progress | None = None, backend: str = "prune") -> None:
    """The IMP experiment's runs of ``seed``, then its structured runs (see the module docstring); resumable."""
    imp_run_seed(config, data, out_dir, seed, progress=progress, backend=backend)
    run = SeedRun(config, data, out_dir, seed, progress=progress, backend=backend)
    st = _Structured(run, data.train.x[:1])
    model = run.new_model(seed)
    ticket = st.ticket(model)
    state_path = run.path("channel")
    if state_path.is_file():
        ticket.load_state_dict(load_tensors(state_path), rewind=True)
    if ticket.round == 0:  # the dense round is the IMP ticket's: prune its trained weights
        with ticket:
            model.load_state_dict(load_tensors(run.path("dense-trained")))
        save_tensors(state_path, ticket.state_dict())
    for rnd in range(1, config.rounds + 1):
        masks_path = run.path(f"channel-masks-r{rnd:02d}")
        if ticket.round == rnd:
            if not masks_path.is_file():
                save_tensors(masks_path, {k: v.clone() for k, v in ticket.masks.items()})
            if run.pending("channel", rnd):
                speed = compact_speed(ticket.compact(), run.new_model(seed), data,
                                      batch_size=config.batch_size, lr=config.lr)
                masks = {k: v.clone() for k, v in ticket.masks.items()}
                if rnd < config.rounds:
                    with ticket:
                        result = run.train(model, rnd)
                    save_tensors(state_path, ticket.state_dict())
                else:
                    result = run.train(model, rnd)
                st.record("channel", rnd, ticket, masks, {**result, "compact": speed})
        masks = load_tensors(masks_path)
        if run.pending("channel-reinit", rnd):
            other = run.new_model(1_000_000 + 1000 * seed + rnd)  # the IMP experiment's reinit initialization
            control = st.ticket(other)
            control.set_masks_(masks)
            st.record("channel-reinit", rnd, control, masks, run.train(other, rnd))
        if run.pending("refill", rnd):
            other = run.new_model(seed)  # theta_0
            control = st.ticket(other)
            plan = control.channel_plan
            refill = plan.masks(plan.refill(load_tensors(run.path(f"masks-r{rnd:02d}"))))
            control.set_masks_(refill)
            st.record("refill", rnd, control, refill, run.train(other, rnd))


# ---------------------------------------------------------------------- report
def format_table(summary: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]], config: ReproConfig) -> str:
    """Per round: the weight ticket's and the channel ticket's weights and neurons remaining, the
    test accuracy at early stop of the weight ticket and the three structured kinds (mean ± std over
    seeds), and the compact model's time against the dense network (median over seeds)."""
    by = {(r["kind"], r["round"]): r for r in summary}
    head = ["round", "ticket weights %", "channel weights %", "channel neurons %", "ticket acc@ES %",
            "channel acc@ES %", "channel-reinit acc@ES %", "refill acc@ES %", "compact infer / dense",
            "compact step / dense"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def acc(kind: str, rnd: int) -> str:
        row = by.get((kind, rnd))
        if row is None:
            return ""
        return f"{100 * row['test_acc_early_stop_mean']:.2f} ± {100 * row['test_acc_early_stop_std']:.2f}"

    for rnd in range(1, config.rounds + 1):
        ticket, channel = by.get(("ticket", rnd)), by.get(("channel", rnd))
        speeds = [r["compact"] for r in runs if r["kind"] == "channel" and r["round"] == rnd and "compact" in r]
        neurons = [r["channels_remaining"] for r in runs if r["kind"] == "channel" and r["round"] == rnd]
        cells = [
            str(rnd),
            f"{100 * ticket['weights_remaining_mean']:.1f}" if ticket else "",
            f"{100 * channel['weights_remaining_mean']:.1f}" if channel else "",
            f"{100 * statistics.fmean(neurons):.1f}" if neurons else "",
            acc("ticket", rnd), acc("channel", rnd), acc("channel-reinit", rnd), acc("refill", rnd),
            f"{statistics.median(s['infer_ratio'] for s in speeds):.2f}x" if speeds else "",
            f"{statistics.median(s['step_ratio'] for s in speeds):.2f}x" if speeds else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    dense = by.get(("ticket", 0))
    if dense is not None:
        lines.append(f"\ndense network (round 0): test acc@ES {100 * dense['test_acc_early_stop_mean']:.2f} ± "
                     f"{100 * dense['test_acc_early_stop_std']:.2f} %")
    return "\n".join(lines)


def format_report(runs: Sequence[Mapping[str, Any]], config: ReproConfig) -> str:
    """The structured table with the line that explains it (what the CLI prints)."""
    return format_table(summarize(runs, kinds=ALL_KINDS), runs, config) + (
        "\n(mean ± sample std over seeds; ES = early stop at the minimum validation loss; compact times are "
        "medians over seeds of the compact model's time over the dense network's, on this machine)"
    )


def write_outputs(runs: Sequence[Mapping[str, Any]], config: ReproConfig, out_dir: PathLike) -> dict[str, Path]:
    """Write ``results.json`` (config, runs, summary over all kinds) and ``table.md``."""
    out_dir = Path(out_dir)
    summary = summarize(runs, kinds=ALL_KINDS)
    paths = {name: out_dir / name for name in ("results.json", "table.md")}
    write_json(paths["results.json"], {"config": config.to_dict(), "runs": list(runs), "summary": summary})
    paths["table.md"].write_text(format_table(summary, runs, config) + "\n")
    return paths


def add_arguments(parser: Any) -> None:
    """``--granularity channel``: run this experiment (the IMP experiment plus structured tickets)."""
    parser.add_argument("--granularity", default="weight", choices=["weight", "channel"],
                        help="'channel': also find structured (whole-neuron) tickets, their reinit control, "
                             "refill from the weight ticket, and time the compact models (the 'structured' "
                             "experiment)")
