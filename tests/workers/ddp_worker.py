"""torchrun worker: an IMP round under DistributedDataParallel (gloo, CPU); writes each rank's masks."""

import sys

import torch
import torch.distributed as dist
from torch import nn

from torch_lottery import LotteryTicket


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    ticket = LotteryTicket(ddp, rate=0.5, rounds=2)
    for r in range(2):
        with ticket:
            g = torch.Generator().manual_seed(100 * r + rank)  # each rank sees different data
            for _ in range(3):
                opt.zero_grad()
                ddp(torch.randn(8, 16, generator=g)).pow(2).mean().backward()
                opt.step()
            if r == 1:
                with torch.no_grad():  # make the ranks' weights disagree: masks must still agree
                    model[0].weight_orig.add_(torch.randn(32, 16, generator=g))
    # DDP still trains after pruning (weight_orig is the registered Parameter)
    opt.zero_grad()
    ddp(torch.randn(8, 16)).sum().backward()
    opt.step()
    torch.save({k: v.cpu() for k, v in ticket.masks.items()}, f"{out_dir}/masks_{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
