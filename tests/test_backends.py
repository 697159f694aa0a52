"""The prune backend: torch.nn.utils.prune interop, layers that read child weights directly."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from torch_lottery import LotteryTicket, PruneBackend
from torch_lottery.backends import effective_state_dict
from torch_lottery.targets import find_targets


def step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad()
    out = model(x, x, x)[0] if isinstance(model, nn.MultiheadAttention) else model(x)
    out.pow(2).mean().backward()
    opt.step()


def test_mha_out_proj_stays_masked_although_its_forward_never_runs():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2)
    ticket = LotteryTicket(attn, rate=0.5, rewind="none")
    opt = torch.optim.SGD(attn.parameters(), lr=0.5)
    x = torch.randn(3, 2, 8)
    with ticket:
        step(attn, opt, x)
    mask = ticket.masks["out_proj.weight"]
    for _ in range(3):
        step(attn, opt, x)
    # MultiheadAttention passes out_proj.weight to the functional kernel directly; the value it
    # used in the last forward must be the current masked weight, not a stale one.
    attn(x, x, x)
    expected = attn.out_proj.weight_orig.detach() * mask
    assert torch.equal(attn.out_proj.weight.detach(), expected)


def test_transformer_encoder_fast_path_sees_current_masked_weights():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0)
    ticket = LotteryTicket(layer, rate=0.5, rewind="none")
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(4, 2, 8)
    with ticket:
        step(layer, opt, x)
    step(layer, opt, x)  # training step changes weight_orig after the last forward
    layer.eval()
    with torch.no_grad():
        fast = layer(x)  # eval + no_grad: the fused fast path reads the weights directly
    ref = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            module_name, attr = name.rsplit(".", 1)
            src = layer.get_submodule(module_name)
            value = getattr(src, attr + "_orig") * getattr(src, attr + "_mask") if hasattr(src, attr + "_orig") else getattr(src, attr)
            p.copy_(value)
        expected = ref(x)
    assert torch.allclose(fast, expected, atol=1e-6)


def test_interop_with_prune_remove_and_is_pruned():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    ticket = LotteryTicket(model, rate=0.5)
    with ticket:
        pass
    assert prune.is_pruned(model)
    masks = ticket.masks
    ticket.remove_()
    assert not prune.is_pruned(model)
    assert set(model.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert (model[0].weight[~masks["0.weight"]] == 0).all()


def test_parameter_order_survives_pruning_so_optimizer_states_load_by_index():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    before = torch.optim.Adam(model.parameters(), lr=0.1)
    step(model, before, torch.randn(5, 4))
    shapes = [tuple(p.shape) for p in model.parameters()]
    ticket = LotteryTicket(model, rate=0.5)
    with ticket:
        pass
    assert [tuple(p.shape) for p in model.parameters()] == shapes  # weight_orig where weight was, not last
    assert [n for n, _ in model.named_parameters()] == ["0.weight_orig", "0.bias", "1.weight_orig", "1.bias"]
    after = torch.optim.Adam(model.parameters(), lr=0.1)  # a resumed run builds its optimizer on the pruned model
    after.load_state_dict(before.state_dict())
    assert all(after.state[p]["exp_avg"].shape == p.shape for p in model.parameters())
    step(model, after, torch.randn(5, 4))
    ticket.remove_()
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_adopts_masks_made_by_torch_prune():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10))
    prune.l1_unstructured(model[0], "weight", amount=0.3)
    ticket = LotteryTicket(model, rate=0.5)
    assert int(ticket.masks["0.weight"].sum()) == 70
    with ticket:
        pass
    assert int(ticket.masks["0.weight"].sum()) == 35  # half of the 70 survivors


def test_unapply_restores_the_unpruned_module_exactly():
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    keys = list(model.state_dict())
    weight = model.weight
    target = find_targets(model)[0]
    backend = PruneBackend(model)
    backend.apply_(target, torch.tensor([[True, False, True]] * 3))
    backend.unapply_(target)
    assert list(model.state_dict()) == keys
    assert model.weight is weight
    assert not model._forward_pre_hooks


def test_weight_reads_effective_values_not_the_stale_attribute():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    target = find_targets(model)[0]
    backend = PruneBackend(model)
    backend.apply_(target, torch.tensor([[True, False], [False, True]]))
    with torch.no_grad():
        model.weight_orig.mul_(10)
    assert torch.equal(backend.weight(target), torch.tensor([[10.0, 0.0], [0.0, 40.0]]))
    assert torch.equal(model.weight, torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # prune's attribute is stale


def test_state_keys_stay_plain_for_every_tied_place_and_load_into_an_unpruned_model():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)
            self.b.weight = self.a.weight

    model = Tied()
    target = find_targets(model)[0]
    backend = PruneBackend(model)
    assert backend.state_keys(target) == ["a.weight", "b.weight"]
    backend.apply_(target, torch.eye(3, dtype=torch.bool))
    assert backend.state_keys(target) == ["a.weight", "b.weight"]
    assert set(model.state_dict()) == {"a.bias", "b.bias", *backend.state_keys(target)}
    assert prune.is_pruned(model) and hasattr(model.a, "weight_orig")  # the reparametrization is prune's
    fresh = Tied()
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(fresh.a.weight, model.a.weight_orig.detach() * torch.eye(3))
    assert fresh.a.weight is fresh.b.weight


# -- effective_state_dict: the plain state dict of a pruned model --------------------------------


def test_effective_state_dict_applies_masks_made_by_torch_prune_and_drops_them():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
    prune.custom_from_mask(model[0], "weight", torch.tensor([[True, False], [False, True]]))
    out = effective_state_dict(model)
    assert list(out) == ["0.bias", "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert torch.equal(out["0.weight"], torch.tensor([[1.0, 0.0], [0.0, -4.0]]))
    assert out["1.running_mean"] is not model[1].running_mean  # detached, as state_dict() gives it
    assert out["1.running_mean"].data_ptr() == model[1].running_mean.data_ptr()
    assert torch.equal(model[0].weight_orig, torch.tensor([[1.0, -2.0], [3.0, -4.0]]))  # model untouched


def test_effective_state_dict_zeroes_pruned_nan_and_inf():
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[float("nan"), float("inf"), 2.0]]))
    target = find_targets(model)[0]
    PruneBackend(model).apply_(target, torch.tensor([[False, False, True]]))
    assert effective_state_dict(model)["weight"].tolist() == [[0.0, 0.0, 2.0]]


def test_effective_state_dict_keeps_ties_as_one_object_and_refuses_differently_masked_ones():
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(6, 4)
            self.decoder = nn.Linear(4, 6)
            self.decoder.weight = self.embedding.weight

    torch.manual_seed(0)
    model = TiedLM()
    target = find_targets(model, ["embedding.weight"])[0]
    mask = torch.rand(6, 4) > 0.5
    PruneBackend(model).apply_(target, mask)  # one mask on both places
    out = effective_state_dict(model)
    assert out["embedding.weight"] is out["decoder.weight"]
    assert torch.equal(out["decoder.weight"], model.embedding.weight_orig.detach() * mask)

    other = TiedLM()
    prune.custom_from_mask(other.decoder, "weight", mask)  # only one place masked
    with pytest.raises(ValueError, match=r"^export_plain\(\): tied tensors 'embedding.weight' and 'decoder.weight' differ after masking"):
        effective_state_dict(other, fn="export_plain")


def test_effective_state_dict_looks_through_data_parallel():
    model = nn.Linear(2, 2)
    assert list(effective_state_dict(nn.DataParallel(model))) == ["weight", "bias"]
