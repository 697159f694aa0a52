"""One rank of a 2-process Lightning DDP fit with LotteryTicketCallback (run by tests/test_integrations_lightning.py under torchrun)."""

import logging
import os
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torch_lottery.integrations.lightning import LotteryTicketCallback


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def main() -> None:
    out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
    handler = logging.FileHandler(out / f"log_{rank}.txt")
    lib = logging.getLogger("torch_lottery")
    lib.setLevel(logging.INFO)
    lib.addHandler(handler)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 2, (64,), generator=g))
    model, callback = Net(), LotteryTicketCallback(rate=0.5, rounds=2, every_n_epochs=1)
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", devices=2, strategy="ddp", logger=CSVLogger(out), default_root_dir=out, callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )
    trainer.fit(model, DataLoader(data, batch_size=8))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"masks": callback.ticket.masks, "state": state, "round": callback.ticket.round}, out / f"rank_{rank}.pt")


if __name__ == "__main__":
    main()
    # Leave without interpreter teardown: every result is on disk, and torch's C++ teardown of the gloo group
    # intermittently aborted a rank under load ("terminate called without an active exception").
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)
