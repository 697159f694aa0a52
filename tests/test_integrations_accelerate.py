"""accelerate: save_state/load_state with a ticket registered for checkpointing keep zeros, masks and the IMP state."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

accelerate = pytest.importorskip("accelerate")

from torch_lottery import BACKENDS, LotteryTicket  # noqa: E402
from torch_lottery.integrations.accelerate import STATE_FILE, register_ticket  # noqa: E402


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))


def setup(backend: str, how: str = "register_ticket"):
    """A fresh process's objects: accelerator, prepared model and AdamW, and the ticket registered for checkpointing."""
    accelerator = accelerate.Accelerator(cpu=True)
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    ticket = LotteryTicket(model, rate=0.3, rounds=3, optimizer=optimizer, backend=backend)
    if how == "register_ticket":
        register_ticket(accelerator, ticket)
    else:
        accelerator.register_for_checkpointing(ticket)
    return accelerator, model, optimizer, ticket


def train(accelerator, model, optimizer, steps: range) -> None:
    for step in steps:  # each step's batch depends on the step only, so a resumed run sees the same data
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 2, (16,), generator=g)
        optimizer.zero_grad()
        accelerator.backward(nn.functional.cross_entropy(model(x), y))
        optimizer.step()


def plain(model) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("how", ["register_ticket", "register_for_checkpointing"])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_load_state_into_a_fresh_process_continues_imp_bitwise(backend, how, tmp_path):
    acc, model, opt, ticket = setup(backend, how)  # uninterrupted: rounds 1 and 2, round 2 in two halves
    with ticket:
        train(acc, model, opt, range(0, 6))
    with ticket:
        train(acc, model, opt, range(6, 9))
        train(acc, model, opt, range(9, 12))

    acc1, model1, opt1, ticket1 = setup(backend, how)  # interrupted: round 1, then half of round 2, then saved
    with ticket1:
        train(acc1, model1, opt1, range(0, 6))
    acc1.save_state(tmp_path / "between")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "between" / "model.safetensors")
    assert sorted(saved) == sorted(make_model().state_dict())  # plain keys
    for fqn, mask in ticket1.masks.items():
        assert int((saved[fqn][~mask] != 0).sum()) == 0, fqn  # the zeros are in the file
    with ticket1:
        train(acc1, model1, opt1, range(6, 9))
        acc1.save_state(tmp_path / "inside")

    for folder in ("between", "inside"):  # a new process resumes from either checkpoint
        acc2, model2, opt2, ticket2 = setup(backend, how)
        acc2.load_state(tmp_path / folder)
        assert ticket2.round == 1
        with ticket2:
            if folder == "between":
                train(acc2, model2, opt2, range(6, 9))
            train(acc2, model2, opt2, range(9, 12))
        assert ticket2.round == 2
        assert same(ticket2.masks, ticket.masks), folder
        assert same(plain(model2), plain(model)), folder
        # the rewind reset AdamW (its fresh state, zeros, written in place), as in the uninterrupted run
        assert all(not v.any() for s in opt2.optimizer.state.values() for v in s.values())
        assert ticket2.history == ticket.history


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_register_ticket_loads_an_older_checkpoint_into_a_ticket_that_pruned_further_since(backend, tmp_path):
    # accelerate loads the model before custom objects: a baked backend would zero the weights that the
    # older masks keep, so register_ticket loads the ticket first
    acc, model, opt, ticket = setup(backend)
    with ticket:
        train(acc, model, opt, range(0, 6))
    with ticket:
        train(acc, model, opt, range(6, 9))
    acc.save_state(tmp_path / "round2")
    assert (tmp_path / "round2" / STATE_FILE).is_file()
    values, masks = plain(model), ticket.masks
    with ticket:
        train(acc, model, opt, range(9, 12))
    assert not same(ticket.masks, masks)
    acc.load_state(tmp_path / "round2")
    assert ticket.round == 2 and same(ticket.masks, masks) and same(plain(model), values)
    with ticket:  # round 3 again, from the restored state
        train(acc, model, opt, range(9, 12))
    assert ticket.round == 3


def test_register_ticket_checks_its_arguments_and_load_state_needs_the_ticket_file(tmp_path):
    acc, model, opt, ticket = setup("prune", "register_for_checkpointing")
    with pytest.raises(TypeError, match="is not an accelerate.Accelerator"):
        register_ticket(object(), ticket)
    with pytest.raises(TypeError, match="is not a LotteryTicket"):
        register_ticket(acc, model)
    acc.save_state(tmp_path / "plain")
    acc2, _, _, _ = setup("prune")
    with pytest.raises(FileNotFoundError, match="lottery_ticket.pt"):
        acc2.load_state(tmp_path / "plain")


def test_a_ticket_with_other_settings_refuses_the_checkpoint_and_the_model_keeps_no_masks(tmp_path):
    acc, model, opt, ticket = setup("prune")
    with ticket:
        train(acc, model, opt, range(3))
    acc.save_state(tmp_path / "ckpt")
    acc2 = accelerate.Accelerator(cpu=True)
    model2 = acc2.prepare(make_model())
    ticket2 = LotteryTicket(model2, rate=0.5, rounds=3)
    register_ticket(acc2, ticket2)
    with pytest.raises(ValueError, match="settings differ"):
        acc2.load_state(tmp_path / "ckpt")
    assert ticket2.round == 0 and ticket2.sparsity == 0.0
