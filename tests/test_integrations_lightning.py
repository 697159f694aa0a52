"""LotteryTicketCallback under a real lightning.Trainer: rounds per fit and per epochs, optimizer rewinding, checkpoints, logging."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

L = pytest.importorskip("lightning")
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from torch_lottery import load_ticket  # noqa: E402
from torch_lottery.integrations.lightning import LotteryTicketCallback, ticket_from_checkpoint  # noqa: E402

TARGETS = ("net.0.weight", "net.2.weight")
TOTAL = 8 * 16 + 16 * 2  # 160 target weights
STEPS_PER_EPOCH = 4


class Net(L.LightningModule):
    """A tiny deterministic classifier: Adam, optionally a StepLR halving the LR every epoch."""

    def __init__(self, lr: float = 0.01, scheduler: bool = False, fail_at: Optional[int] = None, interrupt: bool = False):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.hparams.fail_at is not None and self.trainer.global_step == self.hparams.fail_at:
            raise KeyboardInterrupt if self.hparams.interrupt else RuntimeError("boom in training_step")
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        if not self.hparams.scheduler:
            return opt
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


class Validated(Net):
    """With a validation loop: ModelCheckpoint then saves at validation end."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(16 * STEPS_PER_EPOCH, 8, generator=g), torch.randint(0, 2, (16 * STEPS_PER_EPOCH,), generator=g))
    return DataLoader(ds, batch_size=16, shuffle=False)


def make_trainer(root: Path, max_epochs: int, callbacks: list, *, name: str = "logs", checkpointing: bool = False) -> "L.Trainer":
    return L.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
        logger=CSVLogger(root, name=name), enable_checkpointing=checkpointing, default_root_dir=root,
        callbacks=callbacks, num_sanity_val_steps=0, log_every_n_steps=1,
    )


def plain(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def metric_rows(trainer: "L.Trainer", key: str = "lottery/sparsity") -> list[float]:
    path = Path(trainer.logger.log_dir) / "metrics.csv"
    if not path.exists():  # nothing was logged
        return []
    with open(path, newline="") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


class Probe(Callback):
    """Placed after the ticket's callback: records what each epoch starts from."""

    def __init__(self, k: Optional[int] = None) -> None:
        self.starts: list[dict[str, Any]] = []
        self.k, self.at_k = k, None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        opt = trainer.optimizers[0]
        self.starts.append({
            "weights": plain(pl_module), "lr": opt.param_groups[0]["lr"],
            "state": {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()},
        })

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if self.k is not None and trainer.global_step == self.k:
            opt = trainer.optimizers[0]
            self.at_k = {"lr": opt.param_groups[0]["lr"], "state": {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}}


def fresh(state: dict) -> bool:
    """Adam's state as freshly configured: none yet, or step 0 with zero moments (rewinds write it in place)."""
    return all(float(s["step"]) == 0 and not s["exp_avg"].any() and not s["exp_avg_sq"].any() for s in state.values())


def assert_rewound(model: nn.Module, masks: dict[str, torch.Tensor], theta0: dict[str, torch.Tensor]) -> None:
    """Survivors bitwise at theta_0, pruned entries zero; untargeted tensors (biases) at theta_0 too."""
    state = plain(model)
    for key, value in theta0.items():
        if key in masks:
            assert torch.equal(state[key][masks[key]], value[masks[key]]), key
            assert (state[key][~masks[key]] == 0).all(), key
        else:
            assert torch.equal(state[key], value), key


# ---------------------------------------------------------------------------------------------- rounds
def test_each_fit_is_one_round_with_exact_counts_rewinding_and_logged_sparsity(tmp_path: Path) -> None:
    model = Net()
    theta0 = plain(model)
    cb = LotteryTicketCallback(rate=0.2, rounds=3)
    previous = {k: torch.ones_like(theta0[k], dtype=torch.bool) for k in TARGETS}
    for r, remaining in enumerate((128, 102, 82), start=1):  # round(0.2 * 160) = 32, round(25.6) = 26, round(20.4) = 20
        trainer = make_trainer(tmp_path, 1, [cb], name=f"fit{r}")
        trainer.fit(model, loader())
        ticket = cb.ticket
        assert ticket.model is model and ticket.round == r
        masks = ticket.masks
        assert sum(int(m.sum()) for m in masks.values()) == remaining
        assert all(bool((masks[k] <= previous[k]).all()) for k in TARGETS)  # monotone: nothing regrows
        assert_rewound(model, masks, theta0)
        assert metric_rows(trainer) == [pytest.approx(1 - remaining / TOTAL, rel=1e-12)]
        assert metric_rows(trainer, "lottery/round") == [float(r)]
        previous = masks
    # the rounds are done: a further fit trains the ticket, keeps its zeros and prunes nothing
    trainer = make_trainer(tmp_path, 2, [cb], name="final")
    trainer.fit(model, loader())
    assert cb.ticket.round == 3 and metric_rows(trainer) == []
    state = plain(model)
    assert all((state[k][~previous[k]] == 0).all() and not torch.equal(state[k][previous[k]], theta0[k][previous[k]]) for k in TARGETS)
    # the ticket file under default_root_dir loads into a fresh module with the same masks
    path = tmp_path / "ticket.safetensors"
    assert cb.ticket_file(trainer) == str(path) and path.is_file()
    loaded = load_ticket(path, Net())
    assert all(torch.equal(loaded.masks[k], previous[k]) for k in TARGETS) and loaded.round == 3


def test_rounds_every_n_epochs_inside_one_fit_reset_adam_and_the_schedule(tmp_path: Path) -> None:
    model = Net(scheduler=True)
    theta0 = plain(model)
    probe = Probe()
    cb = LotteryTicketCallback(rate=0.5, rounds=2, every_n_epochs=2, ticket_path="out/t.safetensors")
    trainer = make_trainer(tmp_path, 5, [cb, probe])
    trainer.fit(model, loader())
    starts = probe.starts
    assert len(starts) == 5
    # epochs 0 and 1 train round 1; epoch 2 starts from the rewound ticket at 50%, Adam empty, LR back to 0.01
    assert starts[1]["state"] and not fresh(starts[1]["state"]) and starts[1]["lr"] == 0.005  # Adam had moments, StepLR had stepped
    for epoch, kept in ((2, 80), (4, 40)):
        weights = starts[epoch]["weights"]
        masks = {k: weights[k] != 0 for k in TARGETS}
        assert sum(int(m.sum()) for m in masks.values()) == kept
        assert all(torch.equal(weights[k][masks[k]], theta0[k][masks[k]]) for k in TARGETS)
        assert fresh(starts[epoch]["state"]) and starts[epoch]["lr"] == 0.01
    assert not fresh(starts[3]["state"]) and starts[3]["lr"] == 0.005
    assert cb.ticket.round == 2 and cb.ticket.done
    assert metric_rows(trainer) == [0.5, 0.75]
    state = plain(model)  # epoch 4 trained the final ticket with its zeros held
    masks = cb.ticket.masks
    assert all((state[k][~masks[k]] == 0).all() for k in TARGETS)
    assert (tmp_path / "out" / "t.safetensors").is_file()


@pytest.mark.parametrize("reset", [False, True])
def test_late_rewinding_restores_or_resets_adam_and_scheduler_at_step_k(tmp_path: Path, reset: bool) -> None:
    k = STEPS_PER_EPOCH + 1  # theta_k inside epoch 1, after StepLR stepped once
    model = Net(scheduler=True)
    probe = Probe(k=k)
    cb = LotteryTicketCallback(rate=0.5, rounds=1, rewind=k, every_n_epochs=2, reset_optimizer=reset)
    make_trainer(tmp_path, 3, [cb, probe]).fit(model, loader())
    after = probe.starts[2]  # the epoch after the rewind
    assert probe.at_k is not None and probe.at_k["lr"] == 0.005 and probe.at_k["state"]
    theta_k = cb.ticket.rewind_weights
    masks = cb.ticket.masks
    assert all(torch.equal(after["weights"][f][masks[f]], theta_k[f][masks[f]]) for f in TARGETS)
    if reset:
        assert fresh(after["state"]) and after["lr"] == 0.01
    else:  # Adam's moments and step count, and the LR, exactly as after step k
        assert after["lr"] == 0.005
        assert after["state"].keys() == probe.at_k["state"].keys()
        for pid, s in probe.at_k["state"].items():
            assert float(after["state"][pid]["step"]) == k
            assert all(torch.equal(after["state"][pid][name], s[name]) for name in ("exp_avg", "exp_avg_sq"))


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    "backend, opts, stop_after, rows, validate",
    [  # stopped inside round 2 (theta_2 and Adam after step 2 restored at each rewind)
        ("prune", dict(rate=0.5, rounds=3, every_n_epochs=1, rewind=2), 2, [0.75, 0.875], False),
        # the same, with ModelCheckpoint saving at validation end (before the epoch's on_train_epoch_end)
        ("prune", dict(rate=0.5, rounds=3, every_n_epochs=1, rewind=2), 2, [0.75, 0.875], True),
        # stopped inside round 1 before theta_6 was captured: the resumed round counts on from step 4
        ("baked", dict(rate=0.5, rounds=2, every_n_epochs=2, rewind=STEPS_PER_EPOCH + 2), 1, [0.5, 0.75], False),
    ],
)
def test_resume_from_checkpoint_equals_the_uninterrupted_run(
    tmp_path: Path, backend: str, opts: dict, stop_after: int, rows: list, validate: bool
) -> None:
    opts = dict(opts, backend=backend)
    cls = Validated if validate else Net
    val = [loader()] if validate else []
    model_a, cb_a = cls(scheduler=True), LotteryTicketCallback(**opts)
    make_trainer(tmp_path / "a", 5, [cb_a]).fit(model_a, loader(), *val)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=not validate)
    model_b, cb_b = cls(scheduler=True), LotteryTicketCallback(**opts)
    make_trainer(tmp_path / "b", stop_after, [cb_b, ckpt], checkpointing=True).fit(model_b, loader(), *val)
    path = tmp_path / "ckpt" / f"epoch={stop_after - 1}-step={stop_after * STEPS_PER_EPOCH}.ckpt"
    assert path.is_file()

    model_c, cb_c = cls(scheduler=True), LotteryTicketCallback(**opts)  # a fresh process's objects
    trainer_c = make_trainer(tmp_path / "c", 5, [cb_c])
    trainer_c.fit(model_c, loader(), *val, ckpt_path=path)
    assert cb_c.ticket.round == cb_a.ticket.round == opts["rounds"]
    assert cb_c.ticket.history == cb_a.ticket.history
    masks_a, masks_c = cb_a.ticket.masks, cb_c.ticket.masks
    assert all(torch.equal(masks_a[f], masks_c[f]) for f in TARGETS)
    rewind_a, rewind_c = cb_a.ticket.rewind_weights, cb_c.ticket.rewind_weights
    assert rewind_a.keys() == rewind_c.keys() and all(torch.equal(rewind_a[k], rewind_c[k]) for k in rewind_a)
    state_a, state_c = plain(model_a), plain(model_c)
    assert state_a.keys() == state_c.keys() and all(torch.equal(state_a[k], state_c[k]) for k in state_a)
    assert metric_rows(trainer_c) == rows  # the rounds the resumed run finished


def test_fit_ckpt_path_between_fits_continues_the_next_round_exactly(tmp_path: Path) -> None:
    opts = dict(rate=0.2, rounds=2, scope="layer")
    model_a, cb_a = Net(), LotteryTicketCallback(**opts)
    for r in range(2):
        make_trainer(tmp_path / "a", 1, [cb_a], name=f"r{r}").fit(model_a, loader())

    model_b, cb_b = Net(), LotteryTicketCallback(**opts)
    trainer_b = make_trainer(tmp_path / "b", 1, [cb_b])
    trainer_b.fit(model_b, loader())
    path = tmp_path / "after-round-1.ckpt"
    trainer_b.save_checkpoint(path)

    model_c, cb_c = Net(), LotteryTicketCallback(**opts)
    make_trainer(tmp_path / "c", 2, [cb_c]).fit(model_c, loader(), ckpt_path=path)  # epoch 1 = round 2
    assert cb_c.ticket.round == 2 and cb_c.ticket.history == cb_a.ticket.history
    assert [r["per_tensor"] for r in cb_c.ticket.history] == [
        {"net.0.weight": 102, "net.2.weight": 26}, {"net.0.weight": 82, "net.2.weight": 21},
    ]
    state_a, state_c = plain(model_a), plain(model_c)
    assert all(torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_load_from_checkpoint_gives_the_zeros_and_ticket_from_checkpoint_the_masks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, cb = Net(), LotteryTicketCallback(rate=0.5, rounds=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = make_trainer(tmp_path, 1, [cb, ckpt], checkpointing=True)
    trainer.fit(model, loader())
    # ModelCheckpoint saved at the epoch's end, inside the round (its ticket state: round open, nothing pruned)
    during = ticket_from_checkpoint(Net.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt"), tmp_path / "ckpt" / "last.ckpt")
    assert during.round == 0 and during.sparsity == 0.0
    pruned_path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(pruned_path)  # after the fit: the pruned, rewound ticket

    loaded = Net.load_from_checkpoint(pruned_path)
    assert not prune.is_pruned(loaded)  # plain weights: the zeros, no masks
    masks = cb.ticket.masks
    assert all((loaded.state_dict()[k][~masks[k]] == 0).all() for k in TARGETS)
    ticket = ticket_from_checkpoint(loaded, pruned_path)
    assert prune.is_pruned(loaded) and ticket.round == 1
    assert all(torch.equal(ticket.masks[k], masks[k]) for k in TARGETS)
    assert all(torch.equal(loaded.state_dict()[k], model.state_dict()[k]) for k in model.state_dict())
    with ticket:  # round 2 continues from the checkpoint's rewind point
        pass
    assert ticket.round == 2 and sum(int(m.sum()) for m in ticket.masks.values()) == 40

    # resuming without the callback: Lightning itself names the missing callback whose state is in the file
    with pytest.warns(UserWarning, match="LotteryTicketCallback"):
        make_trainer(tmp_path, 2, [], name="no-callback").fit(Net(), loader(), ckpt_path=pruned_path)

    weights_only = ModelCheckpoint(dirpath=tmp_path / "wo", filename="w", save_weights_only=True)
    with caplog.at_level("WARNING", logger="torch_lottery.integrations.lightning"):
        make_trainer(tmp_path, 1, [LotteryTicketCallback(rate=0.5), weights_only], checkpointing=True).fit(Net(), loader())
    assert "save_weights_only=True" in caplog.text
    with pytest.raises(ValueError, match="carries no masks"):
        ticket_from_checkpoint(Net(), tmp_path / "wo" / "w.ckpt")


# ---------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("interrupt", [False, True])
def test_exception_inside_fit_rolls_the_round_back_and_loses_nothing(tmp_path: Path, interrupt: bool) -> None:
    model = Net(fail_at=STEPS_PER_EPOCH + 2, interrupt=interrupt)
    cb = LotteryTicketCallback(rate=0.5, rounds=2, every_n_epochs=1)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit if interrupt else RuntimeError):  # Lightning turns Ctrl-C into exit(1)
            make_trainer(tmp_path, 2, [cb]).fit(model, loader())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a KeyboardInterrupt
    ticket = cb.ticket
    assert ticket.round == 1 and sum(int(m.sum()) for m in ticket.masks.values()) == 80
    trained = plain(model)  # round 2 trained two steps and was neither pruned nor rewound
    assert not torch.equal(trained["net.0.bias"], ticket.rewind_weights["net.0.bias"])
    assert all((trained[k][~ticket.masks[k]] == 0).all() for k in TARGETS)
    model.hparams.fail_at = None
    make_trainer(tmp_path, 1, [cb], name="again").fit(model, loader())  # a new round opens and completes
    assert ticket.round == 2 and sum(int(m.sum()) for m in ticket.masks.values()) == 40


def test_two_optimizers_are_refused_before_the_model_changes(tmp_path: Path) -> None:
    class TwoOpt(Net):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            return None

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.net[0].parameters(), lr=0.1), torch.optim.SGD(self.net[2].parameters(), lr=0.1)]

    model, cb = TwoOpt(), LotteryTicketCallback(rate=0.5)
    before = plain(model)
    with pytest.raises(RuntimeError, match="returned 2 optimizers"):
        make_trainer(tmp_path, 1, [cb]).fit(model, loader())
    assert cb.ticket.round == 0 and not prune.is_pruned(model)
    assert all(torch.equal(before[k], v) for k, v in plain(model).items())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rate=0.5, every_n_epochs=0), ValueError, r"LotteryTicketCallback\(\): every_n_epochs=0 is not a positive number of epochs; pass"),
        (dict(rate=0.5, every_n_epochs=True), TypeError, r"every_n_epochs=True is not an int"),
        (dict(rate=0.5, rounds=2, every_n_epochs=[2, 0]), ValueError, r"every_n_epochs=\[2, 0\] must list a positive int"),
        (dict(rate=0.5, rounds=3, every_n_epochs=[2, 1]), ValueError, r"gives 2 round lengths but rounds=3; pass rounds=2"),
        (dict(rate=2.0), ValueError, r"LotteryTicketCallback\(\): rate=2.0 is outside \[0, 1\)"),
        (dict(rate=0.5, scope="row"), ValueError, r"LotteryTicketCallback\(\): scope='row' is not one of"),
        (dict(rate=0.5, optimizer=None), TypeError, r"optimizer= is not accepted: the callback attaches"),
        (dict(rate=0.5, lr=0.1), TypeError, r"unknown option lr=; ticket options are"),
        (dict(rate=0.5, reset_optimizer="yes"), TypeError, r"reset_optimizer='yes' must be True or False"),
        (dict(rate=0.5, ticket_path=3), TypeError, r"ticket_path=3 is not a path"),
    ],
)
def test_invalid_options_raise_naming_the_argument(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        LotteryTicketCallback(**kwargs)


def test_a_second_module_is_refused(tmp_path: Path) -> None:
    cb = LotteryTicketCallback(rate=0.5, rounds=2)
    make_trainer(tmp_path, 1, [cb]).fit(Net(), loader())
    other = Net()
    with pytest.raises(RuntimeError, match="another Net instance"):
        make_trainer(tmp_path, 1, [cb]).fit(other, loader())
    assert not prune.is_pruned(other)


def test_the_module_without_lightning_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "lightning":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        import torch_lottery.integrations
        try:
            import torch_lottery.integrations.lightning
        except ModuleNotFoundError as e:
            print("ERR", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install torch_lottery[lightning]" in out.stdout


@pytest.mark.slow
def test_ddp_ranks_share_the_masks_and_only_rank_zero_logs_and_writes(tmp_path: Path) -> None:
    worker = Path(__file__).parent / "workers" / "lightning_ddp_worker.py"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank_0.pt"), torch.load(tmp_path / "rank_1.pt")
    assert r0["round"] == r1["round"] == 2
    assert all(torch.equal(r0["masks"][k], r1["masks"][k]) for k in TARGETS)
    assert sum(int(m.sum()) for m in r0["masks"].values()) == 40
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])  # DDP kept the ranks equal
    assert "round 2 done" in (tmp_path / "log_0.txt").read_text()
    assert "round 2 done" not in (tmp_path / "log_1.txt").read_text()
    rows = [r for r in csv.DictReader(open(next(tmp_path.glob("lightning_logs/version_*/metrics.csv")))) if r.get("lottery/sparsity")]
    assert [float(r["lottery/sparsity"]) for r in rows] == [0.5, 0.75]
    assert (tmp_path / "ticket.safetensors").is_file()
    assert len(load_ticket(tmp_path / "ticket.safetensors", Net()).history) == 2
