"""The IMP experiment of Frankle & Carbin (2019), one seed at a time: the iterative ticket, its controls, one-shot.

This module is the library's first client: it uses only the public API (``LotteryTicket``,
``random_masks_like``) around the plain training loop of :func:`~torch_lottery.reproduction.runner.train_run`.
For each seed it runs

* **ticket** (iterative pruning): round 0 trains the dense network; each ``with ticket:`` block
  trains, then the engine prunes layer-wise at the paper's rates and rewinds the survivors to
  theta_0. Round ``k`` trains the network with ``k`` prunes applied.
* **reinit** control: the round-``k`` masks on a freshly, randomly initialized network.
* **random** control: random masks with the same per-layer counts, on the ticket's theta_0.
* **oneshot**: the dense network's trained weights pruned once, straight to round ``k``'s per-layer
  sparsity, rewound to theta_0 and trained.

Every training run evaluates the validation loss every ``eval_every`` iterations; the early-stop
iteration is the one with the minimum validation loss, and test accuracy is reported at that
iteration and at the end of training.

Each finished run is written to ``<out_dir>/runs/<key>.json`` at once, and the iterative ticket's
state after each round to ``<out_dir>/state/``; running the seed again on the same ``out_dir``
skips what is finished. All kinds at the same ``(seed, round)`` see the same minibatch order, so
they differ only in mask and initialization.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

from torch import Tensor, nn

from .. import LotteryTicket, random_masks_like  # the public API only
from .config import ReproConfig
from .data import DatasetSplits
from .runner import Progress, SeedRun, load_tensors, save_tensors

__all__ = ["planned_runs", "run_seed"]

logger = logging.getLogger(__name__)


def planned_runs(config: ReproConfig) -> list[tuple[int, str, int]]:
    """Every ``(seed, kind, round)`` the experiment trains, in execution order.

    Example:
        >>> from torch_lottery.reproduction.config import make_config
        >>> planned_runs(make_config(rounds=1, seeds=[0], oneshot_every=1))
        [(0, 'ticket', 0), (0, 'ticket', 1), (0, 'reinit', 1), (0, 'random', 1), (0, 'oneshot', 1)]
    """
    plan = []
    for seed in config.seeds:
        for rnd in range(config.rounds + 1):
            plan.append((seed, "ticket", rnd))
            if rnd > 0:
                plan += [(seed, control, rnd) for control in config.controls]
                if rnd in config.oneshot_rounds:
                    plan.append((seed, "oneshot", rnd))
    return plan


def run_seed(config: ReproConfig, data: DatasetSplits, out_dir: Path, seed: int, *,
             progress: Progress | None = None, backend: str = "prune") -> None:
    """Every planned run of one seed, skipping finished ones (see the module docstring).

    Args:
        config: from :func:`torch_lottery.reproduction.config.make_config`.
        data: from :func:`torch_lottery.reproduction.data.load_dataset` (``config.dataset``).
        out_dir: the results directory (``runs/``, ``state/`` and the final ticket file).
        seed: the seed: initialization theta_0, data order and the random controls.
        progress: called with the number of training iterations just done.
        backend: the tickets' mask backend (``LotteryTicket(backend=...)``).
    """
    run = SeedRun(config, data, out_dir, seed, progress=progress, backend=backend)
    model = run.new_model()  # theta_0
    ticket = run.layer_ticket(model)  # the paper's per-layer rates, nothing global
    if run.path("ticket").is_file():
        ticket.load_state_dict(load_tensors(run.path("ticket")), rewind=True)  # masks, snapshot, weights
        logger.info("seed %d: resumed the iterative ticket after round %d", seed, ticket.round)
    for rnd in range(config.rounds + 1):
        if ticket.round == rnd:
            _ticket_round(run, ticket, model, rnd)
        if rnd == 0:
            continue
        masks = load_tensors(run.path(f"masks-r{rnd:02d}"))
        _controls(run, rnd, masks)
        if rnd in config.oneshot_rounds and run.pending("oneshot", rnd):
            _oneshot(run, rnd)
    # The final ticket: masks after the last round, weights rewound to theta_0 (a ticket file,
    # loadable into a fresh model with torch_lottery.ticket_file.load_ticket).
    final_path = out_dir / f"ticket-seed{seed}.safetensors"
    if not final_path.is_file():
        ticket.save(final_path)
        logger.info("seed %d: final ticket (round %d) saved to %s", seed, ticket.round, final_path)


def _ticket_round(run: SeedRun, ticket: LotteryTicket, model: nn.Module, rnd: int) -> None:
    """The iterative ticket at round ``rnd`` (``rnd`` prunes applied): train, then prune and rewind."""
    masks_path = run.path(f"masks-r{rnd:02d}")
    if not masks_path.is_file():
        save_tensors(masks_path, {k: v.clone() for k, v in ticket.masks.items()})
    if rnd < run.config.rounds:
        with ticket:
            result = run.train(model, rnd)
            if rnd == 0:
                save_tensors(run.path("dense-trained"), {k: v.detach().clone() for k, v in model.state_dict().items()})
            masks_trained = {k: v.clone() for k, v in ticket.masks.items()}
        save_tensors(run.path("ticket"), ticket.state_dict())
        run.record("ticket", rnd, masks_trained, result)
    elif run.pending("ticket", rnd):  # the last round trains without pruning afterwards
        run.record("ticket", rnd, ticket.masks, run.train(model, rnd))


def _controls(run: SeedRun, rnd: int, masks: Mapping[str, Tensor]) -> None:
    """The random re-initialization and random-mask controls on round ``rnd``'s ticket masks."""
    seed = run.seed
    if "reinit" in run.config.controls and run.pending("reinit", rnd):
        other = run.new_model(1_000_000 + 1000 * seed + rnd)  # a fresh random initialization
        control = run.layer_ticket(other)
        control.set_masks_(masks)  # the rewind point is this fresh initialization
        run.record("reinit", rnd, masks, run.train(other, rnd))
    if "random" in run.config.controls and run.pending("random", rnd):
        other = run.new_model()  # the ticket's theta_0
        control = run.layer_ticket(other)
        random_masks = random_masks_like(masks, seed=7919 * seed + rnd)
        control.set_masks_(random_masks)
        run.record("random", rnd, random_masks, run.train(other, rnd))


def _oneshot(run: SeedRun, rnd: int) -> None:
    """The dense network's trained weights pruned once to round ``rnd``'s per-layer sparsity, rewound, trained."""
    other = run.new_model()  # theta_0
    oneshot = run.layer_ticket(other, prunes=rnd)
    with oneshot:  # "training" = loading the dense network's trained weights
        other.load_state_dict(load_tensors(run.path("dense-trained")))
    run.record("oneshot", rnd, oneshot.masks, run.train(other, rnd))
