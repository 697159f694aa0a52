"""torchrun worker: tickets of an FSDP2 (fully_shard) model on gloo CPU ranks; writes what each rank saw.

``fsdp_worker.py OUT rounds``: IMP rounds (global and layer scope, memory and disk snapshots,
late rewinding with Adam state) with every check recorded in ``OUT/checks_<rank>.json``, the
sharded masks equal to the single-process masks on the gathered weights, a ticket file saved
from the sharded model and the ticket's resumable state (torch.distributed.checkpoint).
``fsdp_worker.py OUT resume``: a fresh process group resumes from that state; then a plain
ticket file written by one process is loaded into the sharded model.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from torch_lottery import LotteryTicket
from torch_lottery import load_ticket, save_ticket
from torch_lottery.sharded_files import load_ticket_state, save_ticket_state
from torch_lottery.controls import fresh_init
from torch_lottery.pruning import next_masks, score_weights
from torch_lottery.scoring import get_criterion


def build(seed: int = 0) -> nn.Module:
    """Rows that do not split evenly over 2 ranks (9 and 3) and weights with many ties across the ranks."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.mul_(4).round_().add_(0.25)  # a few values only: ties at the threshold on each rank, no zeros
    return model


def shard(model: nn.Module) -> nn.Module:
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    return model


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + dist.get_rank())  # each rank its own data, like data parallelism
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 6, generator=g)).pow(2).mean().backward()
        opt.step()


def full(tensors: dict) -> dict:
    return {k: v.full_tensor() for k, v in tensors.items()}


def reference_masks(ticket: LotteryTicket) -> dict:
    """What one process computes on the gathered weights (the test's reference; the ticket never gathers)."""
    weights = full({t.fqn: ticket.backend.weight(t) for t in ticket.targets})
    masks = full(ticket.masks)
    initial = full({k: v for k, v in ticket.rewind_weights.items() if k in masks})
    criterion = get_criterion(ticket.settings.criterion)
    gen = torch.Generator().manual_seed(ticket.seed * 1_000_003 + ticket.round)
    scores = score_weights(weights, masks, initial, criterion, name=ticket.settings.criterion, generator=gen)
    return next_masks(scores, masks, ticket.settings, done=ticket.round)


def zeros_held(ticket: LotteryTicket, opt: torch.optim.Optimizer) -> bool:
    """Pruned entries are zero in every rank's local shard of the weight, its gradient and Adam's moments."""
    ok = True
    for t in ticket.targets:
        p = ticket.backend.parameter(t)
        pruned = ~ticket.masks[t.fqn].to_local()
        ok &= bool((p.to_local()[pruned] == 0).all())
        for key in ("exp_avg", "exp_avg_sq"):
            if key in opt.state.get(p, {}):
                ok &= bool((opt.state[p][key].to_local()[pruned] == 0).all())
    return ok


def rewound_bitwise(ticket: LotteryTicket, theta0_local: dict) -> bool:
    """Every local shard equals theta_0's shard times the mask, bit for bit (biases: theta_0's shard)."""
    live = ticket.live_tensors()
    masks = ticket.masks
    ok = True
    for fqn, start in theta0_local.items():
        expected = start * masks[fqn].to_local() if fqn in masks else start
        ok &= torch.equal(live[fqn].to_local(), expected)
    return ok


def rounds(out: str) -> None:
    rank = dist.get_rank()
    checks: dict = {}
    for scope, backend, device in (("global", "baked", "cpu"), ("layer", "baked-bits", "disk")):
        model = shard(build())
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        theta0 = {k: v.to_local().clone() for k, v in model.state_dict().items()}
        ticket = LotteryTicket(model, rate=0.5, rounds=3, scope=scope, backend=backend, optimizer=opt,
                               snapshot_device=device, snapshot_dir=f"{out}/snap-{scope}" if device == "disk" else None)
        key = f"{scope}-{backend}-{device}"
        for r in range(2):
            with ticket:
                train(model, opt, 3, 10 * r)
                checks[f"{key}-round{r}-masks-equal"] = all(
                    torch.equal(a, b) for a, b in zip(reference_masks(ticket).values(), full(ticket.compute_masks()).values())
                )
            checks[f"{key}-round{r}-rewound-bitwise"] = rewound_bitwise(ticket, theta0)
            train(model, opt, 3, 100 + r)  # FSDP all-gather, reduce-scatter, Adam steps on masked shards
            checks[f"{key}-round{r}-zeros-held"] = zeros_held(ticket, opt)
        checks[f"{key}-remaining"] = ticket.history[-1]["remaining"]
        checks[f"{key}-sparsity"] = ticket.sparsity
    # late rewinding to theta_k (k = 2 Adam steps), the optimizer restored to its state there
    model = shard(build(1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ticket = LotteryTicket(model, rate=0.5, rounds=2, rewind=2, backend="baked", optimizer=opt)
    with ticket:
        train(model, opt, 2, 7)
        theta_k = {k: v.to_local().clone() for k, v in model.state_dict().items()}
        moment_k = {ticket.backend.parameter(t): opt.state[ticket.backend.parameter(t)]["exp_avg"].to_local().clone()
                    for t in ticket.targets}
        train(model, opt, 3, 8)
        checks["late-masks-equal"] = all(
            torch.equal(a, b) for a, b in zip(reference_masks(ticket).values(), full(ticket.compute_masks()).values())
        )
    checks["late-rewound-bitwise"] = rewound_bitwise(ticket, theta_k)
    checks["late-optimizer-restored"] = all(  # Adam's moments as they were at step k, shard by shard
        torch.equal(opt.state[p]["exp_avg"].to_local(), m) for p, m in moment_k.items()
    )
    # a ticket file streamed through rank 0, and resumable state for a later process group
    ticket.save(f"{out}/sharded.safetensors")
    save_ticket_state(ticket, f"{out}/state")
    late_masks, late_rewind = full(ticket.masks), full(ticket.rewind_weights)  # collectives: on every rank
    if rank == 0:
        torch.save(late_masks, f"{out}/late_masks.pt")
        torch.save(late_rewind, f"{out}/late_rewind.pt")
    # rewind="reinit": each layer's reset_parameters() drawn full-size under the seed, then cut to the shard
    model, plain = shard(build(3)), build(3)
    ticket = LotteryTicket(model, rate=0.5, rewind="reinit", backend="baked", seed=5)
    reference = fresh_init(plain, LotteryTicket(plain, rate=0.5).targets, seed=11)
    drawn = full(fresh_init(model, ticket.targets, seed=11))
    checks["reinit-equal"] = list(drawn) == list(reference) and all(torch.equal(drawn[k], reference[k]) for k in drawn)
    with ticket:
        train(model, opt, 0, 0)
    expected = fresh_init(plain, LotteryTicket(plain, rate=0.5).targets, seed=5 + 1)
    masks = full(ticket.masks)
    live = full({k: v for k, v in ticket.live_tensors().items() if k in masks})
    checks["reinit-rewound"] = all(torch.equal(live[k], expected[k] * masks[k]) for k in masks)
    checks.update(refusals(out))
    with open(f"{out}/checks_{rank}.json", "w") as f:
        json.dump(checks, f)


def refusals(out: str) -> dict:
    """What a sharded model refuses, with the fix in the message (the same on every rank)."""
    seen = {}
    for name, make in (
        ("refuse-prune-backend", lambda: LotteryTicket(shard(build()), rate=0.5)),
        ("refuse-plain-and-sharded", lambda: (fully_shard((m := build())[0]), LotteryTicket(m, rate=0.5, backend="baked"))),
        ("refuse-save-ticket", lambda: save_ticket(LotteryTicket(shard(build()), rate=0.5, backend="baked"), f"{out}/x")),
    ):
        try:
            make()
            seen[name] = "no error"
        except (TypeError, ValueError) as exc:
            seen[name] = str(exc)
    return seen


def resume(out: str) -> None:
    rank = dist.get_rank()
    checks: dict = {}
    model = shard(build(1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ticket = LotteryTicket(model, rate=0.5, rounds=2, rewind=2, backend="baked", optimizer=opt)
    load_ticket_state(ticket, f"{out}/state", rewind=True)
    masks, rewind = full(ticket.masks), full(ticket.rewind_weights)
    saved_masks, saved_rewind = torch.load(f"{out}/late_masks.pt"), torch.load(f"{out}/late_rewind.pt")
    checks["resume-masks"] = all(torch.equal(masks[k], saved_masks[k]) for k in saved_masks)
    checks["resume-rewind"] = all(torch.equal(rewind[k], saved_rewind[k]) for k in saved_rewind)
    checks["resume-round"] = ticket.round
    with ticket:  # the second round runs on the resumed ticket
        train(model, opt, 3, 9)
        checks["resume-masks-equal"] = all(
            torch.equal(a, b) for a, b in zip(reference_masks(ticket).values(), full(ticket.compute_masks()).values())
        )
    checks["resume-sparsity"] = ticket.sparsity
    # a ticket file from one unsharded process, loaded into a sharded model
    model = shard(build(2))
    loaded = load_ticket(f"{out}/plain.safetensors", model, backend="baked")
    plain = torch.load(f"{out}/plain_expected.pt")
    checks["plain-masks"] = all(torch.equal(v.full_tensor(), plain["masks"][k]) for k, v in loaded.masks.items())
    checks["plain-weights"] = all(
        torch.equal(v.full_tensor(), plain["weights"][k]) for k, v in model.state_dict().items()
    )
    checks["plain-round"] = loaded.round
    with open(f"{out}/checks_resume_{rank}.json", "w") as f:
        json.dump(checks, f)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        {"rounds": rounds, "resume": resume}[sys.argv[2]](sys.argv[1])
        dist.barrier()  # both ranks done before either tears the group down (a rank leaving early can abort the other's gloo threads)
    finally:
        dist.destroy_process_group()
    # Leave without interpreter teardown: every result is on disk, and torch's C++ teardown of the gloo group
    # intermittently aborted a rank under load ("terminate called without an active exception").
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)
