"""LotteryTicketCallback and save_pretrained with a real transformers.Trainer on tiny random BERT and GPT-2."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from torch import Tensor

transformers = pytest.importorskip("transformers")

from torch_lottery import LotteryTicket, load_ticket, read_ticket_info  # noqa: E402
from torch_lottery.integrations.transformers import (  # noqa: E402
    STATE_FILE,
    TICKET_FILE,
    LotteryTicketCallback,
    save_pretrained,
)

transformers.logging.set_verbosity_error()


# -- tiny models and synthetic data ------------------------------------------------------------


def bert(seed: int = 0):
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config)


def gpt2(seed: int = 0):
    config = transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


class Data(torch.utils.data.Dataset):
    """``n`` fixed random sequences: labels for classification, or language-modelling targets."""

    def __init__(self, n: int = 16, length: int = 8, *, lm: bool = False, seed: int = 0, fail_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 40, (n, length), generator=g)
        self.labels = self.ids.clone() if lm else (self.ids.sum(dim=1) % 2)
        self.fail_at = fail_at

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if self.fail_at is not None and i == self.fail_at:
            raise RuntimeError("the data broke")
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def make_args(tmp_path, **overrides):
    options = dict(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
        per_device_train_batch_size=4, num_train_epochs=1, learning_rate=5e-3, logging_strategy="no",
        seed=0, dataloader_num_workers=0,
    )
    options.update(overrides)
    return transformers.TrainingArguments(**options)


def effective(model) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_zeros(model, masks: dict[str, Tensor]) -> None:
    state = model.state_dict()
    for fqn, mask in masks.items():
        assert int((state[fqn][~mask] != 0).sum()) == 0, fqn


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- IMP across repeated train() calls ---------------------------------------------------------


def test_one_round_per_train_call_prunes_exact_counts_rewinds_bitwise_and_resets_adamw(tmp_path):
    model = bert()
    theta0 = effective(model)
    callback = LotteryTicketCallback(rate=0.2, rounds=2)
    trainer = transformers.Trainer(model=model, args=make_args(tmp_path), train_dataset=Data(), callbacks=[callback])
    ticket = callback.ticket  # built when the Trainer was built
    assert ticket.model is model and ticket.round == 0
    total = sum(t.numel for t in ticket.targets)

    trainer.train()
    assert ticket.round == 1
    assert sum(int((~m).sum()) for m in ticket.masks.values()) == round(0.2 * total)
    check_zeros(model, ticket.masks)
    for key, value in effective(model).items():  # rewound to theta_0 under the masks, bitwise
        mask = ticket.masks.get(key)
        assert torch.equal(value, theta0[key] if mask is None else theta0[key] * mask), key
    inner = trainer.optimizer.optimizer  # accelerate's wrapper around the Trainer's AdamW
    # AdamW's moments were reset at the rewind: its fresh state, zeros, written in place
    assert inner.state and all(not v.any() for s in inner.state.values() for v in s.values())
    log = [r for r in trainer.state.log_history if "lottery_round" in r]
    assert log == [{"lottery_round": 1, "lottery_sparsity": ticket.history[0]["sparsity"], "lottery_remaining":
                    ticket.history[0]["remaining"], "lottery_total": total, "epoch": 1.0, "step": 4}]

    # the same Trainer's second round equals a fresh Trainer (fresh AdamW) on the rewound, masked model
    ref_model = bert()
    ref_model.load_state_dict(model.state_dict())
    ref_ticket = LotteryTicket(ref_model, rate=0.2, rounds=2)
    ref_ticket.set_masks_(ticket.masks, rewind=False)
    trainer.train()
    ref = transformers.Trainer(model=ref_model, args=make_args(tmp_path / "ref"), train_dataset=Data())
    with ref_ticket:
        ref.train()
    assert ticket.round == 2 and ref_ticket.round == 1  # set_masks_ is not a round
    assert same(ticket.masks, ref_ticket.masks)
    assert same(effective(model), effective(ref_model))
    assert sum(int((~m).sum()) for m in ticket.masks.values()) == round(0.2 * total) + round(0.2 * (total - round(0.2 * total)))

    trainer.train()  # rounds are done: the third call trains the ticket with its masks held
    assert ticket.round == 2
    check_zeros(model, ticket.masks)
    assert read_ticket_info(tmp_path / TICKET_FILE)["round"] == 2


def test_without_reset_optimizer_adamw_keeps_its_moments_across_the_rewind(tmp_path):
    model = bert()
    callback = LotteryTicketCallback(rate=0.2, rounds=2, reset_optimizer=False)
    trainer = transformers.Trainer(model=model, args=make_args(tmp_path), train_dataset=Data(), callbacks=[callback])
    trainer.train()
    assert callback.ticket.round == 1
    state = trainer.optimizer.optimizer.state  # what reset_optimizer=True (the default) sets back to zeros
    assert state and any(v.any() for s in state.values() for k, v in s.items() if k != "step")


# -- rounds inside one train() call, checkpoints and resuming ------------------------------------


class Crash(transformers.TrainerCallback):
    """Raises after optimizer step ``at``, keeping the model's values at that moment."""

    def __init__(self, at: int) -> None:
        self.at, self.values = at, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at:
            self.values = effective(model)
            raise KeyboardInterrupt  # what a preempted or interrupted job sees


def test_every_n_epochs_runs_rounds_inside_one_train_call_and_saves_the_ticket_in_each_checkpoint(tmp_path):
    model = bert()
    callback = LotteryTicketCallback(rate=0.25, rounds=2, every_n_epochs=1)
    args = make_args(tmp_path, num_train_epochs=3, save_strategy="epoch", lr_scheduler_type="constant")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[callback])
    trainer.train()
    ticket = callback.ticket
    assert ticket.round == 2 and ticket.done
    log = [(r["lottery_round"], r["step"], r["lottery_sparsity"]) for r in trainer.state.log_history if "lottery_round" in r]
    assert log == [(1, 4, ticket.history[0]["sparsity"]), (2, 8, ticket.history[1]["sparsity"])]
    total = sum(t.numel for t in ticket.targets)
    first = round(0.25 * total)
    assert ticket.history[1]["remaining"] == total - first - round(0.25 * (total - first))
    check_zeros(model, ticket.masks)  # the third epoch trained the final ticket with its masks held
    for step, rounds in ((4, 1), (8, 2), (12, 2)):
        folder = tmp_path / f"checkpoint-{step}"
        assert (folder / STATE_FILE).is_file()
        assert read_ticket_info(folder / TICKET_FILE)["round"] == rounds
    saved = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "checkpoint-12")
    check_zeros(saved, ticket.masks)  # the Trainer's own model checkpoint holds the zeros
    assert read_ticket_info(tmp_path / TICKET_FILE)["round"] == 2


def _imp_in_one_call(tmp_path, crash_at=None, resume=None):
    model = bert()
    callback = LotteryTicketCallback(rate=0.25, rounds=2, every_n_epochs=1)
    crash = Crash(crash_at) if crash_at else None
    args = make_args(tmp_path, num_train_epochs=3, save_strategy="steps", save_steps=3)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Data(), callbacks=[callback] + ([crash] if crash else []),
    )
    if crash is not None:
        with pytest.raises(KeyboardInterrupt):
            trainer.train(resume_from_checkpoint=resume)
    else:
        trainer.train(resume_from_checkpoint=resume)
    return model, callback, crash


def test_a_crash_then_resume_from_checkpoint_gives_the_uninterrupted_run_bitwise(tmp_path):
    model, callback, _ = _imp_in_one_call(tmp_path / "straight")
    crashed_model, crashed, crash = _imp_in_one_call(tmp_path / "run", crash_at=7)
    # the crash in round 2 (epoch 2) lost nothing: round 1's masks, no pruning, the trained weights kept
    assert crashed.ticket.round == 1
    assert same(effective(crashed_model), crash.values)
    # a new process: fresh model, callback and Trainer; resume from checkpoint-6 (mid-round 2)
    resumed_model, resumed, _ = _imp_in_one_call(tmp_path / "run", resume=str(tmp_path / "run" / "checkpoint-6"))
    assert resumed.ticket.round == callback.ticket.round == 2
    assert same(resumed.ticket.masks, callback.ticket.masks)
    assert same(resumed.ticket.rewind_weights, callback.ticket.rewind_weights)
    assert same(effective(resumed_model), effective(model))
    assert resumed.ticket.history == callback.ticket.history


def test_resuming_from_a_checkpoint_without_the_ticket_raises(tmp_path):
    _imp_in_one_call(tmp_path, crash_at=4)
    os.remove(tmp_path / "checkpoint-3" / TICKET_FILE)
    with pytest.raises(RuntimeError, match="holds no ticket"):
        _imp_in_one_call(tmp_path, resume=str(tmp_path / "checkpoint-3"))


def _gpt2_rounds(tmp_path, *, crash_in_second=None, resume=None):
    """Two rounds, one per train() call, on GPT-2; optionally crash the second call, or resume it."""
    model = gpt2()
    callback = LotteryTicketCallback(rate=0.3, rounds=2)
    crash = Crash(crash_in_second) if crash_in_second else None
    data = Data(lm=True)
    args = make_args(tmp_path, save_strategy="steps", save_steps=2, weight_decay=0.1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    if resume is None:
        trainer.train()  # round 1
        assert callback.ticket.round == 1
        if crash is not None:
            trainer.add_callback(crash)
            with pytest.raises(KeyboardInterrupt):
                trainer.train()
            return model, callback, crash
    trainer.train(resume_from_checkpoint=resume)  # round 2, or the rest of it
    return model, callback, crash


def test_gpt2_rounds_across_train_calls_keep_the_lm_head_tied_and_resume_exactly(tmp_path):
    model, callback, _ = _gpt2_rounds(tmp_path / "straight")
    assert callback.ticket.round == 2
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie survives pruning and rewinding
    check_zeros(model, callback.ticket.masks)
    crashed_model, crashed, crash = _gpt2_rounds(tmp_path / "run", crash_in_second=3)
    assert crashed.ticket.round == 1 and same(effective(crashed_model), crash.values)
    # the crashed process is gone; a new one resumes the second train() call from its checkpoint-2
    resumed_model, resumed, _ = _gpt2_rounds(tmp_path / "run", resume=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.ticket.round == 2
    assert same(resumed.ticket.masks, callback.ticket.masks)
    assert same(effective(resumed_model), effective(model))
    assert resumed_model.lm_head.weight is resumed_model.transformer.wte.weight


def test_a_round_aborted_by_hand_after_an_exception_lets_the_next_train_call_run_a_whole_one(tmp_path):
    model = bert()
    callback = LotteryTicketCallback(rate=0.2, rounds=2)
    trainer = transformers.Trainer(model=model, args=make_args(tmp_path), train_dataset=Data(), callbacks=[callback, Crash(2)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    callback.ticket.abort_round_()  # as the docs say, instead of waiting for the next train()
    trainer.pop_callback(Crash)
    trainer.train()
    assert callback.ticket.round == 1


def test_after_an_exception_the_next_train_call_aborts_the_stale_round_and_runs_a_whole_one(tmp_path, caplog):
    model = bert()
    callback = LotteryTicketCallback(rate=0.2, rounds=2)
    trainer = transformers.Trainer(model=model, args=make_args(tmp_path), train_dataset=Data(), callbacks=[callback])
    crash = Crash(2)
    trainer.add_callback(crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    ticket = callback.ticket
    assert ticket.round == 0 and ticket.sparsity == 0.0 and same(effective(model), crash.values)  # nothing lost
    trainer.remove_callback(crash)
    with caplog.at_level(logging.WARNING, logger="torch_lottery"):
        trainer.train()
    assert any("earlier trainer.train()" in r.getMessage() for r in caplog.records)
    assert ticket.round == 1 and ticket.sparsity > 0
    check_zeros(model, ticket.masks)


def test_callback_options_are_checked_before_any_trainer_exists(tmp_path):
    with pytest.raises(TypeError, match="unknown option ratee=0.2"):
        LotteryTicketCallback(ratee=0.2)
    with pytest.raises(TypeError, match="optimizer= is supplied by the Trainer"):
        LotteryTicketCallback(rate=0.2, optimizer=None)
    with pytest.raises(ValueError, match=r"rate=1.5 is outside \[0, 1\)"):
        LotteryTicketCallback(rate=1.5)
    with pytest.raises(ValueError, match="every_n_epochs=0 must be a positive int"):
        LotteryTicketCallback(rate=0.2, every_n_epochs=0)
    with pytest.raises(ValueError, match="backend='bogus'"):
        LotteryTicketCallback(rate=0.2, backend="bogus")
    with pytest.raises(RuntimeError, match="no model yet"):
        LotteryTicketCallback(rate=0.2).ticket


# -- save_pretrained ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["prune", "baked"])
@pytest.mark.parametrize("build", [bert, gpt2], ids=["bert", "gpt2"])
def test_save_pretrained_writes_zeros_that_from_pretrained_reads_and_the_ticket_beside_them(build, backend, tmp_path):
    model = build()
    model.eval()
    ticket = LotteryTicket(model, sparsity=0.5, rounds=1, backend=backend)
    with ticket:
        pass
    save_pretrained(ticket, tmp_path / "saved")
    loaded = type(model).from_pretrained(tmp_path / "saved")
    loaded.eval()
    check_zeros(loaded, ticket.masks)
    ids = torch.tensor([[1, 5, 7, 2, 9]])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    if build is gpt2:
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
    again = load_ticket(tmp_path / "saved" / TICKET_FILE, type(model).from_pretrained(tmp_path / "saved"))
    assert again.round == 1 and same(again.masks, ticket.masks)  # masks and rewind point: IMP continues


def test_save_pretrained_refuses_what_it_cannot_write_and_checks_what_was_written(tmp_path):
    model = bert()
    ticket = LotteryTicket(model, sparsity=0.5, rounds=1)
    with ticket:
        pass
    with pytest.raises(TypeError, match="no save_pretrained"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(TypeError, match="neither a LotteryTicket nor an nn.Module"):
        save_pretrained("model", tmp_path / "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file; pass a folder"):
        save_pretrained(ticket, tmp_path / "file")
    assert not (tmp_path / "x").exists()
    dense = bert().state_dict()  # a state dict whose pruned entries are not zero
    with pytest.raises(RuntimeError, match="differs from the pruned model's value"):
        save_pretrained(ticket, tmp_path / "dense", state_dict=dense)
    assert not (tmp_path / "dense" / TICKET_FILE).exists()


@pytest.mark.parametrize("backend", ["prune", "baked"])
def test_resuming_an_older_checkpoint_in_the_same_process_replays_the_run_exactly(backend, tmp_path):
    # the Trainer loads the model before the callback restores the older (larger) masks: under a baked
    # backend the weights those masks keep were zeroed at load, so the callback loads them again
    model = bert()
    callback = LotteryTicketCallback(rate=0.25, rounds=2, every_n_epochs=1, backend=backend)
    args = make_args(tmp_path, num_train_epochs=3, save_strategy="epoch")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[callback])
    trainer.train()
    final, masks, history = effective(model), callback.ticket.masks, callback.ticket.history
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))  # back to the end of round 1
    assert callback.ticket.round == 2 and callback.ticket.history == history
    assert same(callback.ticket.masks, masks)
    assert same(effective(model), final)


def test_the_integrations_are_leaves_that_name_their_extra_when_the_package_is_missing():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import importlib, sys
        blocked = set()
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in blocked:
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, Block())
        import torch_lottery.integrations
        for package in ("transformers", "accelerate"):
            blocked.add(package)
            try:
                importlib.import_module("torch_lottery.integrations." + package)
            except ModuleNotFoundError as exc:
                print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for package in ("transformers", "accelerate"):
        assert f"pip install torch_lottery[{package}]" in out.stdout


class Record(transformers.TrainerCallback):
    """Keeps the model's values and AdamW's state after optimizer step ``at``."""

    def __init__(self, at: int) -> None:
        self.at, self.values, self.moments = at, None, None

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step == self.at:
            self.values = effective(model)
            inner = optimizer.optimizer
            self.moments = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(inner.state.values())}


def test_late_rewinding_restores_theta_k_and_adamws_state_at_step_k(tmp_path):
    model = bert()
    callback = LotteryTicketCallback(rate=0.2, rounds=2, rewind=2)
    record = Record(2)
    trainer = transformers.Trainer(model=model, args=make_args(tmp_path), train_dataset=Data(), callbacks=[callback, record])
    trainer.train()
    ticket = callback.ticket
    assert ticket.round == 1
    for key, value in effective(model).items():
        mask = ticket.masks.get(key)
        assert torch.equal(value, record.values[key] if mask is None else record.values[key] * mask), key
    inner = trainer.optimizer.optimizer
    restored = {i: s for i, s in enumerate(inner.state.values())}
    assert restored.keys() == record.moments.keys() and len(restored) > 0
    for i, saved in record.moments.items():  # AdamW's moments and step count as they were at step k
        assert all(torch.equal(restored[i][k], v) for k, v in saved.items())


def test_resuming_before_the_rewind_step_was_reached_raises(tmp_path):
    def run(resume=None, crash=None):
        callback = LotteryTicketCallback(rate=0.2, rounds=2, rewind=3)
        args = make_args(tmp_path, save_strategy="steps", save_steps=2)
        callbacks = [callback] + ([Crash(crash)] if crash else [])
        trainer = transformers.Trainer(model=bert(), args=args, train_dataset=Data(), callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)

    with pytest.raises(KeyboardInterrupt):
        run(crash=3)
    with pytest.raises(RuntimeError, match="precedes the rewind step rewind=3"):
        run(resume=str(tmp_path / "checkpoint-2"))


def test_resuming_with_the_ticket_files_of_another_run_raises(tmp_path):
    _imp_in_one_call(tmp_path / "a", crash_at=7)
    model = bert(seed=1)  # another run: other weights, other masks
    callback = LotteryTicketCallback(rate=0.25, rounds=2, every_n_epochs=1)
    args = make_args(tmp_path / "b", num_train_epochs=3, save_strategy="steps", save_steps=3)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[callback, Crash(7)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    for name in (TICKET_FILE, STATE_FILE):  # a's ticket files beside b's weights
        os.replace(tmp_path / "a" / "checkpoint-6" / name, tmp_path / "b" / "checkpoint-6" / name)
    with pytest.raises(RuntimeError, match="belongs to another run"):
        _imp_in_one_call(tmp_path / "b", resume=str(tmp_path / "b" / "checkpoint-6"))


def test_one_callback_per_model(tmp_path):
    callback = LotteryTicketCallback(rate=0.2)
    transformers.Trainer(model=bert(), args=make_args(tmp_path), train_dataset=Data(), callbacks=[callback])
    with pytest.raises(RuntimeError, match="not the one the ticket prunes"):
        transformers.Trainer(model=bert(), args=make_args(tmp_path), train_dataset=Data(), callbacks=[callback])


def test_save_pretrained_checks_every_shard_of_a_sharded_folder(tmp_path):
    model = gpt2()
    ticket = LotteryTicket(model, sparsity=0.5, rounds=1)
    with ticket:
        pass
    save_pretrained(ticket, tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "sharded")
    check_zeros(loaded, ticket.masks)


@pytest.mark.parametrize("backend", ["prune", "baked"])
def test_a_pruned_tied_embedding_and_lm_head_stay_tied_through_rounds_and_save_pretrained(backend, tmp_path):
    model = gpt2()
    callback = LotteryTicketCallback(rate=0.3, rounds=2, targets=["lm_head.weight", "*c_attn.weight"], backend=backend)
    trainer = transformers.Trainer(model=model, args=make_args(tmp_path), train_dataset=Data(lm=True), callbacks=[callback])
    ticket = callback.ticket
    assert ticket.target_fqns[0] == "transformer.wte.weight" and ticket.targets[0].aliases == (("lm_head", "weight"),)
    trainer.train()
    trainer.train()
    assert ticket.round == 2
    head, wte = model.lm_head, model.transformer.wte
    trainable = (lambda m: m.weight_orig) if backend == "prune" else (lambda m: m.weight)
    assert trainable(head) is trainable(wte)  # one Parameter under both names, as before pruning
    assert torch.equal(head.weight, wte.weight)
    mask = ticket.masks["transformer.wte.weight"]
    assert int((~mask).sum()) > 0 and int((wte.weight[~mask] != 0).sum()) == 0
    save_pretrained(ticket, tmp_path / "saved")
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "saved")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded.transformer.wte.weight, wte.weight)


@pytest.mark.slow
def test_ddp_trainer_under_torchrun_prunes_alike_on_every_rank_and_resumes_exactly(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).parent / "workers" / "hf_ddp_worker.py"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = {name: [torch.load(tmp_path / f"{name}_{r}.pt") for r in (0, 1)] for name in ("straight", "resumed")}
    reference = runs["straight"][0]
    assert reference["round"] == 2 and any(not m.all() for m in reference["masks"].values())
    for name, ranks in runs.items():
        for result in ranks:
            assert result["round"] == 2
            assert same(result["masks"], reference["masks"]), name
            assert same(result["weights"], reference["weights"]), name
    assert (tmp_path / "run" / "checkpoint-2" / TICKET_FILE).is_file()


def test_a_new_trainer_per_round_with_the_same_callback_equals_one_trainer_called_twice(tmp_path):
    one = bert()
    callback = LotteryTicketCallback(rate=0.2, rounds=2)
    trainer = transformers.Trainer(model=one, args=make_args(tmp_path / "one"), train_dataset=Data(), callbacks=[callback])
    trainer.train()
    trainer.train()
    many = bert()
    shared = LotteryTicketCallback(rate=0.2, rounds=2)
    for r in range(2):  # a fresh Trainer, AdamW and schedule each round; the ticket carries on
        fresh = transformers.Trainer(model=many, args=make_args(tmp_path / f"r{r}"), train_dataset=Data(), callbacks=[shared])
        fresh.train()
    assert shared.ticket.round == 2
    assert same(shared.ticket.masks, callback.ticket.masks)
    assert same(effective(many), effective(one))
