"""One rank of a DDP transformers.Trainer run with LotteryTicketCallback: IMP, then a resumed run; writes masks per rank."""

import os
import sys

import torch
import transformers

from torch_lottery.integrations.transformers import LotteryTicketCallback

transformers.logging.set_verbosity_error()
out = sys.argv[1]
rank = int(os.environ["RANK"])


class Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 40, (16, 8), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i].sum() % 2}


def run(resume=None):
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(rank)  # different initial weights on each rank: DDP broadcasts rank 0's
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=os.path.join(out, "run"), report_to=[], use_cpu=True, disable_tqdm=True, ddp_backend="gloo",
        num_train_epochs=3, per_device_train_batch_size=4, save_strategy="epoch", lr_scheduler_type="constant",
        learning_rate=5e-3, seed=0,
    )
    callback = LotteryTicketCallback(rate=0.25, rounds=2, every_n_epochs=1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return callback.ticket


straight = run()
torch.save({"masks": straight.masks, "weights": straight.model.state_dict(), "round": straight.round}, os.path.join(out, f"straight_{rank}.pt"))
resumed = run(resume=os.path.join(out, "run", "checkpoint-2"))  # after round 1 (2 steps per epoch on 2 ranks)
torch.save({"masks": resumed.masks, "weights": resumed.model.state_dict(), "round": resumed.round}, os.path.join(out, f"resumed_{rank}.pt"))
# Leave without interpreter teardown: every result is on disk, and torch's C++ teardown of the gloo group
# intermittently aborted a rank under load ("terminate called without an active exception").
sys.stdout.flush(), sys.stderr.flush()
os._exit(0)
