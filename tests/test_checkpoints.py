"""Checkpoints and copies of pruned models keep their zeros: state_dict, torch.save, deepcopy, pickle, Hugging Face."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from torch_lottery import LotteryTicket, export_plain
from torch_lottery.backends import BACKENDS, effective_state_dict

NAMES = sorted(BACKENDS)


class Net(nn.Module):
    """A Linear layer, a MultiheadAttention (whose out_proj is read without calling it) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h).sum(dim=1)


def _pruned(backend: str, seed: int = 0) -> tuple[Net, LotteryTicket]:
    torch.manual_seed(seed)
    model = Net()
    ticket = LotteryTicket(model, sparsity=0.6, rounds=1, backend=backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with ticket:
        _train(model, optimizer, steps=3)
    return model, ticket


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, *, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 5, 6, generator=g)
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()


def _x() -> Tensor:
    return torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(7))


def _check_zeros(state: dict[str, Tensor], masks: dict[str, Tensor]) -> None:
    for fqn, mask in masks.items():
        assert not mask.all()
        assert int((state[fqn][~mask] != 0).sum()) == 0, fqn
        assert int((state[fqn][mask] == 0).sum()) == 0, fqn  # survivors are really there


@pytest.mark.parametrize("backend", NAMES)
def test_pruned_state_dict_loads_strict_into_a_fresh_unpruned_model_with_the_same_outputs(backend):
    model, ticket = _pruned(backend)
    state = model.state_dict()
    fresh = Net()
    assert sorted(state) == sorted(fresh.state_dict())  # plain keys: no *_orig / *_mask
    _check_zeros(state, ticket.masks)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh(_x()), model(_x()))
    if backend == "prune":
        assert prune.is_pruned(model) and hasattr(model.inp, "weight_orig")  # prune's reparametrization kept


@pytest.mark.parametrize("backend", NAMES)
def test_torch_save_then_weights_only_load_keeps_zeros_and_outputs(backend, tmp_path):
    model, ticket = _pruned(backend)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    _check_zeros(loaded, ticket.masks)
    fresh = Net()
    fresh.load_state_dict(loaded, strict=True)
    assert torch.equal(fresh(_x()), model(_x()))


@pytest.mark.parametrize("backend", NAMES)
def test_loading_dense_weights_into_a_pruned_model_keeps_its_masks_in_force(backend, tmp_path):
    # regression: the baked backend used nonzero pruned weights until the next optimizer step,
    # and export_plain wrote them
    model, ticket = _pruned(backend)
    masks = ticket.masks
    torch.manual_seed(5)
    dense = Net().state_dict()
    model.load_state_dict(dense, strict=True)
    expected = Net()
    expected.load_state_dict({k: v * masks[k] if k in masks else v for k, v in dense.items()})
    assert torch.equal(model(_x()), expected(_x()))
    assert all(torch.equal(ticket.masks[k], masks[k]) for k in masks)
    _check_zeros(model.state_dict(), masks)
    export_plain(model, tmp_path / "plain.safetensors")
    from safetensors.torch import load_file

    _check_zeros(load_file(tmp_path / "plain.safetensors"), masks)


def test_prune_form_checkpoint_with_the_same_mask_loads_and_another_mask_raises():
    model, ticket = _pruned("prune")
    other = Net()
    other.load_state_dict(model.state_dict())
    for fqn, mask in ticket.masks.items():  # prune's own form: weight_orig + weight_mask
        module_name, _, name = fqn.rpartition(".")
        prune.custom_from_mask(other.get_submodule(module_name), name, mask)
    old = other.state_dict()
    assert "inp.weight_orig" in old and "inp.weight_mask" in old
    model.load_state_dict(old, strict=True)
    assert torch.equal(model(_x()), other(_x()))

    changed = dict(old)
    changed["inp.weight_mask"] = torch.ones_like(old["inp.weight_mask"])  # would regrow everything
    before = model.inp.weight_mask.clone()
    with pytest.raises(ValueError, match=r"'inp.weight_mask' in the state dict differs from the mask installed"):
        model.load_state_dict(changed)
    assert torch.equal(model.inp.weight_mask, before)


def test_prune_remove_leaves_a_plain_module_without_state_hooks():
    model, ticket = _pruned("prune")
    ticket.remove_()
    assert not prune.is_pruned(model)
    for module in model.modules():
        assert not module._state_dict_hooks and not module._load_state_dict_pre_hooks
        assert "__getstate__" not in module.__dict__
    assert sorted(model.state_dict()) == sorted(Net().state_dict())


def test_combining_with_prunes_own_method_keeps_the_plain_state_dict():
    model, ticket = _pruned("prune")
    mine = ticket.masks["inp.weight"]
    prune.l1_unstructured(model.inp, "weight", amount=0.5)  # a PruningContainer on a ticket's target
    state = model.state_dict()
    assert "inp.weight" in state and "inp.weight_orig" not in state
    combined = model.inp.weight_mask.bool()
    assert int(combined.sum()) == int(mine.sum()) - round(0.5 * int(mine.sum()))  # prune's rate of what remains
    assert not (combined & ~mine).any()
    assert torch.equal(ticket.masks["inp.weight"], combined)  # the ticket reads the mask in force
    assert int((state["inp.weight"][~combined] != 0).sum()) == 0
    fresh = Net()
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh(_x()), model(_x()))


def _deepcopy(model: nn.Module, tmp_path) -> nn.Module:
    return copy.deepcopy(model)


def _pickle(model: nn.Module, tmp_path) -> nn.Module:
    return pickle.loads(pickle.dumps(model))


def _torch_save(model: nn.Module, tmp_path) -> nn.Module:
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("how", [_deepcopy, _pickle, _torch_save], ids=["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("backend", NAMES)
def test_copies_of_a_pruned_model_keep_zeros_through_training_and_never_touch_the_original(backend, how, tmp_path):
    # regressions: "Can't pickle local object 'PruneBackend._watch_readers.<locals>.refresh'", the copy's
    # forward writing into the original's out_proj.weight, deepcopy failing after a forward (non-leaf
    # prune weight), and baked copies regrowing pruned weights (hooks keyed on id(param))
    model, ticket = _pruned(backend)
    model(_x()).sum().backward()  # a forward with grad: prune's weights are non-leaf tensors now
    masks = ticket.masks
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone = how(model, tmp_path)
    assert torch.equal(clone(_x()), model(_x()))
    optimizer = torch.optim.Adam(clone.parameters(), lr=0.05)
    _train(clone, optimizer, steps=4, seed=3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the original is untouched
    state = clone.state_dict()
    _check_zeros(state, masks)
    assert not torch.equal(state["head.weight"], before["head.weight"])  # the copy did train
    fresh = Net()
    fresh.load_state_dict(state, strict=True)
    assert torch.allclose(fresh(_x()), clone(_x()), atol=1e-6, rtol=0)  # the copy's forward uses the zeros
    assert torch.equal(effective_state_dict(clone)["attn.out_proj.weight"], state["attn.out_proj.weight"])


def test_deepcopy_of_a_pruned_mha_model_forward_does_not_write_into_the_original():
    model, _ = _pruned("prune")
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.attn.out_proj.weight_orig.fill_(3.0)
    original = model.attn.out_proj.weight.clone()
    clone(_x())
    assert torch.equal(model.attn.out_proj.weight, original)
    assert torch.equal(clone.attn.out_proj.weight, 3.0 * clone.attn.out_proj.weight_mask)


# -- Hugging Face: save_pretrained / from_pretrained on tiny randomly initialized models ---------


def _bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config), transformers.BertModel


def _gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config), transformers.GPT2LMHeadModel


@pytest.mark.parametrize("backend", NAMES)
@pytest.mark.parametrize("build", [_bert, _gpt2], ids=["bert", "gpt2"])
def test_save_pretrained_then_from_pretrained_keeps_pruned_zeros(build, backend, tmp_path):
    # regression: after from_pretrained, 538 pruned entries of one BERT query.weight held random values
    model, cls = build()
    model.eval()
    ticket = LotteryTicket(model, sparsity=0.5, rounds=1, backend=backend)
    with ticket:
        pass
    masks = ticket.masks
    assert any(k.endswith("query.weight") or k.endswith("c_attn.weight") for k in masks)
    model.save_pretrained(tmp_path / "saved")
    loaded = cls.from_pretrained(tmp_path / "saved")
    loaded.eval()
    state = dict(loaded.named_parameters())
    _check_zeros({k: v.detach() for k, v in state.items()}, masks)
    ids = torch.tensor([[1, 5, 7, 2, 9]])
    out, ref = loaded(ids), model(ids)
    key = "last_hidden_state" if "last_hidden_state" in out else "logits"
    assert torch.equal(out[key], ref[key])
    if cls.__name__ == "GPT2LMHeadModel":
        assert loaded.lm_head.weight is loaded.transformer.wte.weight  # the tie survives


# -- torch.compile: tickets look through OptimizedModule ------------------------------------------


@pytest.mark.parametrize("backend", NAMES)
def test_ticket_on_a_compiled_model_has_the_plain_models_fqns_files_and_exports(backend, tmp_path):
    # regression: targets were "_orig_mod.0.weight", the ticket file did not load into the plain
    # model and export_plain wrote "_orig_mod."-prefixed keys
    from safetensors.torch import load_file

    from torch_lottery import load_ticket

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    plain = make()
    compiled = torch.compile(plain, backend="eager")
    ticket = LotteryTicket(compiled, sparsity=0.5, rounds=1, backend=backend)
    assert ticket.target_fqns == ["0.weight", "2.weight"] and ticket.model is plain
    optimizer = torch.optim.SGD(compiled.parameters(), lr=0.1)
    with ticket:
        compiled(torch.randn(3, 4)).pow(2).sum().backward()
        optimizer.step()
    x = torch.randn(5, 4)
    assert torch.equal(compiled(x), plain(x))
    export_plain(compiled, tmp_path / "plain.safetensors")
    exported = load_file(tmp_path / "plain.safetensors")
    assert sorted(exported) == sorted(make().state_dict())
    _check_zeros(exported, ticket.masks)
    ticket.save(tmp_path / "ticket.safetensors")
    other = make()
    loaded = load_ticket(tmp_path / "ticket.safetensors", other)
    assert all(torch.equal(loaded.masks[k], ticket.masks[k]) for k in ticket.masks)


def test_calling_a_ticket_on_a_module_or_a_module_class_raises_type_error():
    # regression: ticket(model) returned a function that ran a forward and a round per call, and
    # @ticket on an nn.Module class turned the class into a function
    model = nn.Linear(3, 2)
    ticket = LotteryTicket(model, sparsity=0.5, rounds=1)
    with pytest.raises(TypeError, match=r"fn='Linear' is a module, not a training function; use `with ticket:`"):
        ticket(model)
    with pytest.raises(TypeError, match=r"fn='Net' is a module class, not a training function"):
        ticket(Net)
    assert ticket.round == 0 and not prune.is_pruned(model)


# -- a plain checkpoint of a pruned model, loaded without its ticket ----------------------------------
def test_training_a_plain_pruned_checkpoint_without_its_ticket_warns_loudly():
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    ticket = LotteryTicket(model, sparsity=0.5)
    with ticket:
        pass
    fresh = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    fresh.load_state_dict(model.state_dict())  # zeros, no masks
    with pytest.warns(UserWarning, match=r"2 target\(s\) hold many exact zeros but no mask: 0.weight \(5\d%\)") as caught:
        with LotteryTicket(fresh, rate=0.2):
            pass
    assert caught[0].filename == __file__  # pointed at the user's line, not at the library
    # restored, the same model warns no more; nor does a dense model with a zero-initialized layer
    restored = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    restored.load_state_dict(model.state_dict())
    again = LotteryTicket(restored, sparsity=0.75)
    again.set_masks_({k: v != 0 for k, v in restored.state_dict().items() if k in again.target_fqns}, rewind=False)
    dense = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    nn.init.zeros_(dense[2].weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with again:
            pass
        with LotteryTicket(dense, rate=0.2):
            pass
    assert again.sparsity == pytest.approx(0.75, abs=0.02)
