"""torchrun worker: IMP rounds under DistributedDataParallel (gloo, CPU); writes each rank's masks and weights."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from torch_lottery import LotteryTicket


def main(out_dir: str, backend: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    ticket = LotteryTicket(ddp, rate=0.5, rounds=2, backend=backend)
    for r in range(2):
        with ticket:
            g = torch.Generator().manual_seed(100 * r + rank)  # each rank sees different data
            for _ in range(3):
                opt.zero_grad()
                ddp(torch.randn(8, 16, generator=g)).pow(2).mean().backward()
                opt.step()
            if r == 1:
                with torch.no_grad():  # make the ranks' weights disagree: masks must still agree
                    ticket.backend.parameter(ticket.targets[0]).add_(torch.randn(32, 16, generator=g))
    # DDP still trains after pruning (weight_orig, or the baked weight, is the registered Parameter);
    # after the rewind the ranks agree again, and averaged gradients keep them in step
    g = torch.Generator().manual_seed(7 + rank)
    for _ in range(3):
        opt.zero_grad()
        ddp(torch.randn(8, 16, generator=g)).sum().backward()
        opt.step()
    torch.save({k: v.cpu() for k, v in ticket.masks.items()}, f"{out_dir}/masks_{rank}.pt")
    torch.save({t.fqn: ticket.backend.weight(t).cpu() for t in ticket.targets}, f"{out_dir}/weights_{rank}.pt")
    torch.save({t.fqn: ticket.backend.parameter(t).detach().cpu() for t in ticket.targets}, f"{out_dir}/raw_{rank}.pt")
    dist.barrier()  # both ranks done before the group is torn down
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # Leave without interpreter teardown: every result is on disk, and torch's C++ teardown of the gloo group
    # intermittently aborted a rank under load ("terminate called without an active exception").
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)
