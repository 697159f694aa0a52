"""DTensor helpers and the sharded round on one process (plain tensors: one rank); real shards run in test_fsdp.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_lottery import LotteryTicket, load_ticket
from torch_lottery.distributed import ProcessGroupCollective, sharded_next_masks, sharding_mesh
from torch_lottery.pruning import next_masks, score_weights
from torch_lottery.scoring import get_criterion
from torch_lottery.settings import TicketSettings
from torch_lottery.shards import count_true, is_sharded, like, local, local_piece


def test_helpers_leave_plain_tensors_alone() -> None:
    t = torch.tensor([[True, False], [True, True]])
    assert not is_sharded(t) and local(t) is t and like(t, t) is t and local_piece(t, t) is t
    assert count_true(t) == 3
    assert sharding_mesh({"a": t}) is None


def test_one_rank_collective_without_a_process_group() -> None:
    comm = ProcessGroupCollective()
    assert (comm.rank, comm.world_size) == (0, 1)
    x = torch.tensor([1, 2, 3])
    assert torch.equal(comm.all_reduce_sum(x), x) and comm.all_reduce_sum(x) is not x
    assert comm.all_gather(x).tolist() == [[1, 2, 3]]


def _weights() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randint(-3, 4, (6, 4), generator=g).float(), "b": torch.randn(5, generator=g)}
    masks = {k: torch.rand(v.shape, generator=g) > 0.2 for k, v in weights.items()}
    return weights, masks


@pytest.mark.parametrize("criterion", ["magnitude", "random", "movement"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sharded_round_on_one_rank_equals_the_single_process_round(criterion: str, scope: str) -> None:
    weights, masks = _weights()
    initial = {k: v.flip(0) for k, v in weights.items()}
    settings = TicketSettings(rate=0.4, scope=scope, criterion=criterion).resolve(list(masks))
    fn = get_criterion(criterion)
    expected = next_masks(
        score_weights(weights, masks, initial, fn, name=criterion, generator=torch.Generator().manual_seed(3)),
        masks, settings, done=0,
    )
    got = sharded_next_masks(weights, masks, initial, fn, settings, done=0, name=criterion,
                             generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_sharded_round_refuses_nan_weights_and_bad_scores() -> None:
    weights, masks = _weights()
    settings = TicketSettings(rate=0.4).resolve(list(masks))
    fn = get_criterion("magnitude")
    bad = {**weights, "b": weights["b"].clone()}
    bad["b"][0] = float("nan")
    with pytest.raises(ValueError, match=r"'b' has 1 NaN or infinite weights"):
        sharded_next_masks(bad, masks, {}, fn, settings, done=0, name="magnitude", generator=torch.Generator())
    with pytest.raises(ValueError, match=r"criterion='flat' returned scores of the wrong shape for 'a'"):
        sharded_next_masks(weights, masks, {}, lambda f, w, i, g: w.flatten(), settings, done=0, name="flat",
                           generator=torch.Generator())
    nan_scores = lambda f, w, i, g: torch.full_like(w, float("nan"))  # noqa: E731
    with pytest.raises(ValueError, match=r"criterion='nan' returned NaN scores for 'a'"):
        sharded_next_masks(weights, masks, {}, nan_scores, settings, done=0, name="nan", generator=torch.Generator())


def test_load_ticket_backend_override(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    ticket = LotteryTicket(model, rate=0.5)
    with ticket:
        pass
    ticket.save(tmp_path / "t.safetensors")
    fresh = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    loaded = load_ticket(tmp_path / "t.safetensors", fresh, backend="baked")
    assert loaded.backend.name == "baked" and loaded.settings.backend == "baked"
    assert all(torch.equal(loaded.masks[k], ticket.masks[k]) for k in ticket.masks)
    assert torch.equal(fresh[0].weight, model[0].weight_orig * ticket.masks["0.weight"])
