"""Tests for torch_lottery.ticket_file: encoding, files on disk, loading, plain export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import safetensors
import safetensors.torch
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune

import torch_lottery
from torch_lottery import LotteryTicket, export_plain, load_ticket, read_ticket_info
from torch_lottery import ticket_file, ticket_io
from torch_lottery.targets import named_state_tensors
from torch_lottery.ticket_file import compact_values, expand_values, pack_mask, unpack_mask

# ----------------------------------------------------------------------------------------------------------------
# Pure encoding
# ----------------------------------------------------------------------------------------------------------------


def test_pack_mask_puts_first_entry_in_most_significant_bit_and_pads_with_zeros():
    mask = torch.tensor([True, False, True, True, False, False, False, False, True])
    # 1011 0000 = 176, then 1 followed by seven zero padding bits = 128
    assert pack_mask(mask).tolist() == [176, 128]


@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (8,), (9,), (3, 5), (4, 3, 3, 3), (2, 0, 4)])
def test_pack_unpack_round_trip_matches_numpy_packbits(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numpy().tobytes() == np.packbits(mask.numpy().reshape(-1)).tobytes()
    unpacked = unpack_mask(packed, mask.shape)
    assert unpacked.dtype == torch.bool and unpacked.shape == mask.shape
    assert torch.equal(unpacked, mask)


def test_pack_mask_rejects_float_masks():
    with pytest.raises(TypeError, match=r"pack_mask\(\): mask=.* is not a bool tensor"):
        pack_mask(torch.ones(3))


def test_unpack_mask_rejects_set_padding_bits():
    with pytest.raises(ValueError, match="padding bits set"):
        unpack_mask(torch.tensor([0b1110_0001], dtype=torch.uint8), (3,))


def test_unpack_mask_rejects_wrong_byte_count():
    with pytest.raises(ValueError, match=r"packed has 2 bytes but shape=\(8,\) needs 1"):
        unpack_mask(torch.zeros(2, dtype=torch.uint8), (8,))


def test_compact_values_keeps_survivors_in_flat_order_and_expand_puts_zeros_back():
    values = torch.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]])
    mask = torch.tensor([[True, False, True], [False, False, True]])
    compact = compact_values(values, mask)
    assert compact.tolist() == [1.0, 3.0, -6.0]
    assert expand_values(compact, mask).tolist() == [[1.0, 0.0, 3.0], [0.0, 0.0, -6.0]]


def test_expand_values_rejects_a_count_that_disagrees_with_the_mask():
    with pytest.raises(ValueError, match="mask keeps 2 entries; the stored values and the mask disagree"):
        expand_values(torch.ones(3), torch.tensor([True, False, True]))


# ----------------------------------------------------------------------------------------------------------------
# Models of the engine's sweep, each pruned for one round
# ----------------------------------------------------------------------------------------------------------------


class TinyLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 12, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.lstm(x)[0][:, -1])


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 8)
        self.hidden = nn.Linear(8, 8)
        self.decoder = nn.Linear(8, 20)
        self.decoder.weight = self.embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.hidden(self.embedding(x))))


class MLP(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _vgg11_bn_small_head() -> nn.Module:
    """torchvision's vgg11_bn feature extractor with a small classifier (the 102M-weight head is only slow)."""
    model = torchvision.models.vgg11_bn(num_classes=10)
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 10))
    return model


def _vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    )


def _transformer() -> nn.Module:
    return nn.Transformer(
        d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32, dropout=0.0, batch_first=True
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]] = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), {}),
    "vgg11_bn": (_vgg11_bn_small_head, {}),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), {}),
    "vit": (_vit, {}),
    "transformer": (_transformer, {}),
    "lstm": (TinyLSTM, {"targets": ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc.weight"]}),
    "tied": (TiedLM, {"targets": ["decoder.weight", "hidden.weight"]}),
}


def _train_a_little(model: nn.Module, seed: int) -> None:
    """Stand-in for training: move every float tensor by a seeded amount (what the ticket sees is the same)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        buffers = [b for n, b in model.named_buffers() if b.is_floating_point() and not n.endswith("_mask")]
        for tensor in list(model.parameters()) + buffers:
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.01)


def _pruned(name: str, *, rounds: int = 2, **overrides: Any) -> LotteryTicket:
    factory, kwargs = MODELS[name]
    torch.manual_seed(0)
    ticket = LotteryTicket(factory(), **{"rate": 0.5, "rounds": rounds + 1, **kwargs, **overrides})
    for r in range(rounds):
        with ticket:
            _train_a_little(ticket.model, seed=r)
    return ticket


_CACHE: dict[str, LotteryTicket] = {}


def _source(name: str) -> LotteryTicket:
    if name not in _CACHE:
        _CACHE[name] = _pruned(name, rounds=1)
    return _CACHE[name]


def _fresh(name: str, seed: int = 123) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name][0]()



def _own_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own Parameter and buffer objects (``*_orig`` / ``*_mask`` included), by local name."""
    return {
        **dict(model.named_parameters(remove_duplicate=False)),
        **dict(model.named_buffers(remove_duplicate=False)),
    }


def _state(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every parameter and buffer: (the object itself, a copy of its value), by state_dict key."""
    return {k: (v, v.detach().clone()) for k, v in _own_tensors(model).items()}


def _assert_unchanged(model: nn.Module, before: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    after = _own_tensors(model)
    assert list(after) == list(before)
    for key, (obj, value) in before.items():
        assert after[key] is obj, key
        assert torch.equal(after[key].detach(), value), key
    assert not prune.is_pruned(model) or any(k.endswith("_mask") for k in before)


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical name -> the value the forward uses (masks applied)."""
    out = {}
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig") and key[:-5] + "_mask" in state:
            out[key[:-5]] = value * state[key[:-5] + "_mask"]
        else:
            out[key] = value.clone()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["compact", "dense"])
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_into_a_fresh_model_is_bitwise_exact(name, encoding, tmp_path):
    source = _source(name)
    path = tmp_path / "ticket.safetensors"
    source.save(path, encoding=encoding)
    model = _fresh(name)
    ticket = load_ticket(path, model)

    assert ticket.model is model and prune.is_pruned(model)
    assert ticket.target_fqns == source.target_fqns
    assert ticket.round == source.round == 1 and ticket.history == source.history
    assert ticket.config() == source.config()
    for fqn, mask in source.masks.items():
        assert torch.equal(ticket.masks[fqn], mask), fqn
    assert set(ticket.rewind_weights) == set(source.rewind_weights)
    masks = source.masks
    for fqn, original in source.rewind_weights.items():
        loaded = ticket.rewind_weights[fqn]
        expected = torch.where(masks[fqn], original, 0) if encoding == "compact" and fqn in masks else original
        assert loaded.dtype == original.dtype and torch.equal(loaded, expected), fqn
    live = named_state_tensors(model)
    for target in ticket.targets:
        live[target.fqn] = ticket.backend.parameter(target)
    for fqn, value in ticket.rewind_weights.items():
        assert torch.equal(live[fqn].detach(), value), fqn
    source_effective, loaded_effective = _effective(source.model), _effective(model)
    assert source_effective.keys() == loaded_effective.keys()
    for key, value in source_effective.items():
        assert torch.equal(loaded_effective[key], value), key


def test_loaded_ticket_runs_the_next_round_exactly_like_the_original(tmp_path):
    source = _pruned("mobilenet_v3_small", rounds=1)
    source.save(tmp_path / "t.safetensors")
    ticket = load_ticket(tmp_path / "t.safetensors", _fresh("mobilenet_v3_small"))
    for t in (source, ticket):
        with t:
            _train_a_little(t.model, seed=7)
    assert ticket.round == source.round == 2
    assert ticket.history == source.history
    for fqn, mask in source.masks.items():
        assert torch.equal(ticket.masks[fqn], mask)
    for key, value in _effective(source.model).items():
        assert torch.equal(_effective(ticket.model)[key], value), key


def test_reinit_ticket_loads_the_same_seeded_reinitialization(tmp_path):
    source = _pruned("lstm", rounds=1, rewind="reinit")
    source.save(tmp_path / "t.safetensors")
    model = _fresh("lstm")
    load_ticket(tmp_path / "t.safetensors", model)
    for key, value in _effective(source.model).items():
        assert torch.equal(_effective(model)[key], value), key


@pytest.mark.parametrize("encoding", ["compact", "dense"])
def test_include_trained_stores_the_current_weights_and_weights_trained_loads_them(encoding, tmp_path):
    source = _pruned("lstm", rounds=1)
    with source:
        _train_a_little(source.model, seed=5)
        source.save(tmp_path / "t.safetensors", encoding=encoding, include_trained=True)
        trained = _effective(source.model)
        masks, rewind = source.masks, source.rewind_weights
    model = _fresh("lstm")
    ticket = load_ticket(tmp_path / "t.safetensors", model, weights="trained")
    for key, value in trained.items():
        assert torch.equal(_effective(model)[key], value), key
    for fqn, value in rewind.items():  # the rewind point is kept for the next round
        expected = torch.where(masks[fqn], value, 0) if encoding == "compact" and fqn in masks else value
        assert torch.equal(ticket.rewind_weights[fqn], expected)


def test_weights_trained_needs_a_file_saved_with_include_trained(tmp_path):
    _source("lstm").save(tmp_path / "t.safetensors")
    model = _fresh("lstm")
    before = _state(model)
    with pytest.raises(ValueError, match=r"load_ticket\(\): path=.* has no trained weights; save with include_trained"):
        load_ticket(tmp_path / "t.safetensors", model, weights="trained")
    _assert_unchanged(model, before)


def test_ticket_saved_before_its_first_round_loads_with_full_masks_and_no_snapshot(tmp_path):
    ticket = LotteryTicket(MLP(), sparsity=0.5)
    ticket.save(tmp_path / "t.safetensors")
    loaded = load_ticket(tmp_path / "t.safetensors", MLP())
    assert loaded.round == 0 and loaded.rewind_weights == {}
    assert all(bool(m.all()) for m in loaded.masks.values())


# ----------------------------------------------------------------------------------------------------------------
# Layout, sizes and metadata
# ----------------------------------------------------------------------------------------------------------------


def _one_layer_ticket(sparsity: float) -> LotteryTicket:
    torch.manual_seed(0)
    ticket = LotteryTicket(nn.Sequential(nn.Linear(100, 100)), sparsity=sparsity)
    with ticket:
        pass
    return ticket


def test_compact_file_stores_one_bit_per_weight_and_only_survivors(tmp_path):
    ticket = _one_layer_ticket(0.9)
    ticket.save(tmp_path / "c.safetensors", encoding="compact")
    ticket.save(tmp_path / "d.safetensors", encoding="dense")
    compact = read_ticket_info(tmp_path / "c.safetensors")["tensor_bytes"]
    dense = read_ticket_info(tmp_path / "d.safetensors")["tensor_bytes"]
    # 10,000 mask bits = 1,250 bytes; 1,000 surviving fp32 weights = 4,000 bytes plus the dense 100-float bias
    assert compact == {"mask": 1250, "rewind": 4000 + 400, "trained": 0}
    # a bool per weight; every weight and the bias in fp32
    assert dense == {"mask": 10_000, "rewind": 40_000 + 400, "trained": 0}


def test_compact_file_shrinks_with_sparsity(tmp_path):
    sizes = []
    for sparsity in (0.5, 0.8, 0.95):
        _one_layer_ticket(sparsity).save(tmp_path / f"{sparsity}.safetensors")
        sizes.append(os.path.getsize(tmp_path / f"{sparsity}.safetensors"))
    assert sizes[0] > sizes[1] > sizes[2]


def test_dense_file_is_plain_safetensors_with_bool_masks_and_full_weights(tmp_path):
    ticket = _one_layer_ticket(0.9)
    ticket.save(tmp_path / "d.safetensors", encoding="dense")
    tensors = safetensors.torch.load_file(tmp_path / "d.safetensors")
    assert sorted(tensors) == ["mask/0.weight", "rewind/0.bias", "rewind/0.weight"]
    assert tensors["mask/0.weight"].dtype == torch.bool
    assert torch.equal(tensors["mask/0.weight"], ticket.masks["0.weight"])
    assert torch.equal(tensors["rewind/0.weight"], ticket.rewind_weights["0.weight"])


def test_read_ticket_info_reports_settings_history_and_per_tensor_sparsity(tmp_path):
    ticket = _pruned("lstm", rounds=2)
    ticket.save(tmp_path / "t.safetensors", metadata={"note": "hello"})
    info = read_ticket_info(tmp_path / "t.safetensors")
    assert info["format"] == "torch_lottery.ticket" and info["format_version"] == "1"
    assert info["encoding"] == "compact" and info["include_trained"] is False
    assert info["torch_version"] == torch.__version__ and info["torch_lottery_version"] == torch_lottery.__version__
    assert info["model_class"] == f"{__name__}.TinyLSTM"
    assert info["round"] == 2 and info["history"] == ticket.history
    assert info["scope"] == "global" and info["rewind"] == "init" and info["seed"] == 0
    assert info["config"] == ticket.config() and info["targets"] == ticket.target_fqns
    assert info["summary"] == ticket.summary()
    assert info["sparsity"] == pytest.approx(ticket.sparsity)
    # rate 0.5 twice over 48*6 + 48*12 + 3*12 = 900 weights: 450 then 225 remain
    assert sum(row["remaining"] for row in info["summary"]) == 225
    assert info["note"] == "hello"


def test_save_rejects_reserved_metadata_keys_and_unknown_encodings(tmp_path):
    ticket = _one_layer_ticket(0.5)
    with pytest.raises(ValueError, match=r"save_ticket\(\): metadata keys \['round'\] are reserved"):
        ticket.save(tmp_path / "t.safetensors", metadata={"round": "9"})
    with pytest.raises(ValueError, match=r"save_ticket\(\): encoding='sparse' is not supported"):
        ticket.save(tmp_path / "t.safetensors", encoding="sparse")
    assert not (tmp_path / "t.safetensors").exists()


# ----------------------------------------------------------------------------------------------------------------
# Bad files: a clear ValueError, and the model exactly as it was
# ----------------------------------------------------------------------------------------------------------------


def _mlp_ticket_file(path, *, encoding: str = "compact") -> LotteryTicket:
    torch.manual_seed(0)
    ticket = LotteryTicket(MLP(), rate=0.5, rounds=3)
    with ticket:
        _train_a_little(ticket.model, seed=0)
    ticket.save(path, encoding=encoding)
    return ticket


def _rewrite(path, *, tensors=None, metadata=None) -> None:
    """Edit a ticket file's tensors and metadata and sign it again (a consistent, deliberate tampering)."""
    with safetensors.safe_open(str(path), "pt") as handle:
        old_meta = handle.metadata()
    old_tensors = safetensors.torch.load_file(str(path))
    new_tensors = tensors(old_tensors) if tensors else old_tensors
    new_meta = metadata(dict(old_meta)) if metadata else dict(old_meta)
    new_meta["checksum"] = ticket_file._checksum(new_tensors, new_meta)
    safetensors.torch.save_file(new_tensors, str(path), metadata=new_meta)


def _load_fails(path, model: nn.Module, match: str) -> None:
    before = _state(model)
    with pytest.raises(ValueError, match=match):
        load_ticket(path, model)
    _assert_unchanged(model, before)
    assert not prune.is_pruned(model)


@pytest.mark.parametrize("keep", [0, 7, 8, 100, "half", -1])
def test_truncated_file_is_rejected_and_model_untouched(keep, tmp_path):
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    data = path.read_bytes()
    keep = {"half": len(data) // 2, -1: len(data) - 1}.get(keep, keep)
    path.write_bytes(data[:keep])
    _load_fails(path, MLP(), r"load_ticket\(\): path=.*(too short|does not fit|not a valid safetensors|truncated)")


def test_flipped_data_byte_fails_the_checksum(tmp_path):
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    _load_fails(path, MLP(), r"fails its checksum .*corrupted or modified after saving")


def test_edited_metadata_without_resigning_fails_the_checksum(tmp_path):
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    with safetensors.safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    meta["round"] = "7"
    safetensors.torch.save_file(safetensors.torch.load_file(str(path)), str(path), metadata=meta)
    _load_fails(path, MLP(), "fails its checksum")


@pytest.mark.parametrize("encoding", ["compact", "dense"])
def test_mask_whose_count_disagrees_with_stored_values_is_rejected(encoding, tmp_path):
    path = tmp_path / "t.safetensors"
    kept = int(_mlp_ticket_file(path, encoding=encoding).masks["fc1.weight"].sum())

    def flip_one_pruned_bit(tensors):
        if encoding == "compact":
            mask = unpack_mask(tensors["mask/fc1.weight"], (16, 10))
        else:
            mask = tensors["mask/fc1.weight"].clone()
        mask.view(-1)[int((~mask).reshape(-1).nonzero()[0])] = True
        tensors["mask/fc1.weight"] = pack_mask(mask) if encoding == "compact" else mask
        return tensors

    _rewrite(path, tensors=flip_one_pruned_bit)
    if encoding == "compact":
        _load_fails(path, MLP(), rf"has {kept} stored values for 'rewind/fc1.weight' but its mask keeps {kept + 1}; the")
    else:  # dense values are all there: a consistently edited dense mask is a different, valid ticket
        assert int(load_ticket(path, MLP()).masks["fc1.weight"].sum()) == kept + 1


def test_missing_and_unexpected_tensors_are_rejected(tmp_path):
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    _rewrite(path, tensors=lambda t: {**{k: v for k, v in t.items() if k != "rewind/bn.bias"}, "extra": torch.ones(1)})
    _load_fails(path, MLP(), r"missing tensors \['rewind/bn.bias'\] and unexpected tensors \['extra'\]")


def test_misshaped_dense_mask_is_rejected(tmp_path):
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path, encoding="dense")
    _rewrite(path, tensors=lambda t: {**t, "mask/fc1.weight": t["mask/fc1.weight"].reshape(10, 16).clone()})
    _load_fails(path, MLP(), r"mask 'mask/fc1.weight' of dtype torch.bool and shape \(10, 16\), expected torch.bool and \(16, 10\)")


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    _rewrite(path, metadata=lambda m: {**m, "format_version": "2"})
    _load_fails(path, MLP(), r"format_version='2', this torch_lottery reads 1; upgrade torch_lottery")


def test_plain_safetensors_file_is_not_taken_for_a_ticket(tmp_path):
    export_plain(MLP(), tmp_path / "plain.safetensors")
    _load_fails(tmp_path / "plain.safetensors", MLP(), r"is not a torch_lottery ticket file \(format='pt'.*load_model")


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"PK\x03\x04" + bytes(100), b"\x08" + bytes(7) + b"[1,2,3]!"])
def test_files_of_other_formats_are_rejected(content, tmp_path):
    path = tmp_path / "other.bin"
    path.write_bytes(content)
    _load_fails(path, MLP(), r"load_ticket\(\): path=")


def _huge_sparse(path) -> None:
    os.truncate(path, path.stat().st_size + 64 * 2**30)  # 64 GiB more, a hole on disk


def _infinite_offsets(path) -> None:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header[next(k for k in header if k != "__metadata__")]["data_offsets"][1] = "END"
    raw = json.dumps(header).replace('"END"', "Infinity").encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])


def _device(path) -> None:
    path.unlink()
    os.symlink("/dev/zero", path)


def _fifo(path) -> None:
    path.unlink()
    os.mkfifo(path)


BAD_FILES = {
    "dev-zero": (_device, "is a character device, not a regular file"),
    "fifo": (_fifo, "is a FIFO, not a regular file"),
    "huge-sparse": (_huge_sparse, r"holds \d+ bytes of tensor data but its header describes \d+"),
    "infinite-offsets": (_infinite_offsets, "non-finite number Infinity"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_devices_fifos_huge_sparse_files_and_bad_offsets_are_refused_before_reading(kind, tmp_path):
    make_bad, match = BAD_FILES[kind]
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    make_bad(path)
    tracemalloc.start()
    try:
        for reader in (read_ticket_info, ticket_file.read_ticket_tensors):
            with pytest.raises(ValueError, match=rf"^{reader.__name__}\(\): path=.*{match}"):
                reader(path)
        _load_fails(path, MLP(), rf"^load_ticket\(\): path=.*{match}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # nothing like the 64 GiB hole, nor an endless /dev/zero


def test_another_architecture_is_refused_before_the_tensors_are_read(tmp_path):
    """The architecture is in the header: a ticket for another model fails on it even when its data is damaged."""
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # would fail the checksum, which needs the tensor data
    path.write_bytes(bytes(data))
    _load_fails(path, MLP(hidden=32), r"whose tensors differ from model=.*different shapes: bn.bias \(32,\) vs \(16,\)")
    _load_fails(path, MLP(), "fails its checksum")


def test_a_stored_tensor_larger_than_its_layout_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    _rewrite(path, tensors=lambda t: {**t, "rewind/bn.bias": torch.zeros(1000)})
    _load_fails(path, MLP(), r"stores 4000 bytes for 'rewind/bn.bias' but its layout shape \(16,\) holds at most 64")


def test_ticket_for_a_different_architecture_is_rejected(tmp_path):
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    _load_fails(path, MLP(hidden=32), r"whose tensors differ from model=.*MLP \(different shapes: bn.bias \(32,\) vs \(16,\)")
    _load_fails(path, TinyLSTM(), r"whose tensors differ from model=.*TinyLSTM \(missing from the model")


def test_resnet18_ticket_is_rejected_by_resnet34(tmp_path):
    source = _source("resnet18")
    source.save(tmp_path / "t.safetensors")
    _load_fails(tmp_path / "t.safetensors", torchvision.models.resnet34(num_classes=10), r"not in the ticket: \['layer1.2")


def test_model_of_another_dtype_is_rejected(tmp_path):
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    _load_fails(path, MLP().double(), r"as torch.float32 but the model holds torch.float64; convert the model")


def test_rollback_restores_parameters_hooks_and_values_after_a_failed_mutation():
    model = MLP()
    before = _state(model)
    params_before = list(model.parameters())
    with pytest.raises(RuntimeError, match="boom"):
        with ticket_io._rollback_on_error(model):
            prune.custom_from_mask(model.fc1, "weight", torch.rand(16, 10) > 0.5)
            with torch.no_grad():
                model.fc2.weight.mul_(3)
                model.bn.running_mean.add_(1)
            raise RuntimeError("boom")
    _assert_unchanged(model, before)
    assert not prune.is_pruned(model) and "weight" not in model.fc1.__dict__
    assert all(a is b for a, b in zip(model.parameters(), params_before))
    model(torch.randn(3, 10))  # still runs


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------------


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    ticket = _mlp_ticket_file(path)
    previous = path.read_bytes()

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ticket.save(path, encoding="dense")
    assert path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


@pytest.mark.parametrize("crash_in", ["fsync", "replace"])
def test_crash_mid_write_keeps_the_previous_file_loadable(crash_in, tmp_path):
    path = tmp_path / "t.safetensors"
    _mlp_ticket_file(path)
    previous = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, signal, sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_ticket_file import MLP
        from torch_lottery import LotteryTicket
        ticket = LotteryTicket(MLP(), sparsity=0.9)
        with ticket:
            pass
        os.{crash_in} = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        ticket.save({str(path)!r}, encoding="dense")
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert path.read_bytes() == previous
    assert load_ticket(path, MLP()).round == 1


def test_save_into_a_missing_directory_raises_and_creates_nothing(tmp_path):
    ticket = _one_layer_ticket(0.5)
    with pytest.raises(FileNotFoundError):
        ticket.save(tmp_path / "no" / "such" / "dir.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_250_character_file_name_saves_and_loads(tmp_path):
    path = tmp_path / ("t" * (250 - len(".safetensors")) + ".safetensors")
    assert len(path.name) == 250
    source = _mlp_ticket_file(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    loaded = load_ticket(path, MLP())
    assert all(torch.equal(loaded.masks[k], m) for k, m in source.masks.items())


def test_disk_full_keeps_the_previous_ticket_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    ticket = _mlp_ticket_file(path)
    previous = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match=r"save_ticket\(\): path=.* could not be written \(syncing to disk: No space left"):
        ticket.save(path, encoding="dense")
    monkeypatch.undo()
    assert path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


# ----------------------------------------------------------------------------------------------------------------
# Plain export
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_plain_export_loads_into_an_unpruned_model_with_zeros_baked_in(name, tmp_path):
    source = _source(name)
    path = tmp_path / "plain.safetensors"
    export_plain(source, path)
    stored = safetensors.torch.load_file(str(path))
    assert not any(k.endswith(("_orig", "_mask")) for k in stored)
    model = _fresh(name)
    missing, unexpected = safetensors.torch.load_model(model, str(path))
    assert not missing and not unexpected
    assert not prune.is_pruned(model)
    plain = model.state_dict()
    for key, value in _effective(source.model).items():
        assert torch.equal(plain[key], value), key
    for fqn, mask in source.masks.items():
        assert int(torch.count_nonzero(plain[fqn])) <= int(mask.sum())


def test_plain_export_stores_tied_weights_once_like_safetensors_save_model(tmp_path):
    source = _source("tied")
    export_plain(source, tmp_path / "plain.safetensors")
    with safetensors.safe_open(str(tmp_path / "plain.safetensors"), "pt") as handle:
        keys, meta = set(handle.keys()), handle.metadata()
    # kept under the first name in sorted order, the other recorded in the metadata, as save_model does
    assert "embedding.weight" not in keys and "decoder.weight" in keys
    assert meta["embedding.weight"] == "decoder.weight"
    model = TiedLM()
    safetensors.torch.load_model(model, str(tmp_path / "plain.safetensors"))
    assert model.decoder.weight is model.embedding.weight
    assert torch.equal(model.decoder.weight, _effective(source.model)["decoder.weight"])


def test_plain_export_leaves_the_model_as_it_was(tmp_path):
    source = _pruned("lstm", rounds=1)
    before = _state(source.model)
    export_plain(source.model, tmp_path / "plain.safetensors")
    _assert_unchanged(source.model, before)


def test_plain_export_refuses_tied_weights_masked_differently(tmp_path):
    model = TiedLM()
    prune.custom_from_mask(model.decoder, "weight", torch.rand(20, 8) > 0.5)
    with pytest.raises(ValueError, match=r"export_plain\(\): tied tensors 'embedding.weight' and 'decoder.weight' differ after masking"):
        export_plain(model, tmp_path / "plain.safetensors")
    assert not (tmp_path / "plain.safetensors").exists()


# ----------------------------------------------------------------------------------------------------------------
# Fuzzing the loader: mutated files give a ValueError and leave the model alone, or load consistently
# ----------------------------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def base_ticket_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "base.safetensors"
    _mlp_ticket_file(path)
    return path.read_bytes()


def _load_or_clean_error(path) -> None:
    model = MLP()
    before = _state(model)
    try:
        ticket = load_ticket(path, model)
    except ValueError:
        _assert_unchanged(model, before)
        assert not prune.is_pruned(model)
    else:
        assert ticket.model is model
        for target in ticket.targets:
            assert ticket.masks[target.fqn].shape == target.shape


@FUZZ
@given(data=st.data())
def test_fuzzed_bytes_never_crash_or_half_load(data, base_ticket_file, tmp_path):
    raw = bytearray(base_ticket_file)
    header_end = 8 + int.from_bytes(raw[:8], "little")
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        in_header = data.draw(st.booleans(), label="in header")
        pos = data.draw(st.integers(0, header_end - 1) if in_header else st.integers(0, len(raw) - 1), label="pos")
        raw[pos] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw)), label="keep")]
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(bytes(raw))
    _load_or_clean_error(path)


_JSONISH = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["[]", "{}", "null", "true", "-1", "1e309", "[-3]", '{"a": [1, 2]}', '["fc1.weight"]', "[[16, 10]]"]),
)


@FUZZ
@given(data=st.data())
def test_consistently_tampered_files_give_value_errors_only(data, base_ticket_file, tmp_path):
    path = tmp_path / "tampered.safetensors"
    path.write_bytes(base_ticket_file)
    with safetensors.safe_open(str(path), "pt") as handle:
        meta_keys = sorted(handle.metadata())
    tensor_keys = sorted(safetensors.torch.load_file(str(path)))

    def edit_meta(meta):
        for _ in range(data.draw(st.integers(0, 2), label="metadata edits")):
            key = data.draw(st.sampled_from(meta_keys), label="meta key")
            if data.draw(st.booleans(), label="drop"):
                meta.pop(key, None)
            elif key in meta and meta[key][:1] in ("[", "{") and data.draw(st.booleans(), label="json edit"):
                value = json.loads(meta[key])
                meta[key] = json.dumps(_perturb(value, data))
            else:
                meta[key] = data.draw(_JSONISH, label="value")
        return meta

    def edit_tensors(tensors):
        for _ in range(data.draw(st.integers(0, 2), label="tensor edits")):
            key = data.draw(st.sampled_from(tensor_keys), label="tensor key")
            if key not in tensors:
                continue
            action = data.draw(st.sampled_from(["drop", "reshape", "retype", "flip", "extend"]), label="action")
            value = tensors[key]
            if action == "drop":
                del tensors[key]
            elif action == "reshape" and value.numel() > 1:
                tensors[key] = value.reshape(-1)[1:].clone()
            elif action == "retype":
                tensors[key] = value.to(data.draw(st.sampled_from([torch.float64, torch.uint8, torch.bool, torch.int64])))
            elif action == "flip" and value.numel():
                flat = value.clone().reshape(-1)
                i = data.draw(st.integers(0, flat.numel() - 1), label="index")
                flat[i] = ~flat[i] if flat.dtype == torch.bool else flat[i] + 1
                tensors[key] = flat.reshape(value.shape)
            elif action == "extend":
                tensors[key] = torch.cat([value.reshape(-1), value.reshape(-1)[:1]])
        return tensors

    _rewrite(path, tensors=edit_tensors, metadata=edit_meta)
    _load_or_clean_error(path)


def _perturb(value: Any, data: Any) -> Any:
    """Change one leaf of a JSON value (a number, string or list entry), recursively."""
    if isinstance(value, dict) and value:
        key = data.draw(st.sampled_from(sorted(value)), label="json key")
        return {**value, key: _perturb(value[key], data)}
    if isinstance(value, list) and value:
        i = data.draw(st.integers(0, len(value) - 1), label="json index")
        return value[:i] + [_perturb(value[i], data)] + value[i + 1 :]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return data.draw(st.sampled_from([value + 1, -1, 0, 1e9, 0.5, None, "x"]), label="number")
    if isinstance(value, str):
        return data.draw(st.sampled_from([value + "x", "", "*", "fc1.weight", None, 3]), label="string")
    return data.draw(st.sampled_from([None, 1, "x", [], {}]), label="other")


def test_loading_into_an_already_pruned_model_replaces_its_masks(tmp_path):
    source = _mlp_ticket_file(tmp_path / "t.safetensors")
    model = MLP()
    prune.custom_from_mask(model.fc1, "weight", torch.ones(16, 10, dtype=torch.bool))
    ticket = load_ticket(tmp_path / "t.safetensors", model)
    for fqn, mask in source.masks.items():
        assert torch.equal(ticket.masks[fqn], mask)
    for key, value in _effective(source.model).items():
        assert torch.equal(_effective(model)[key], value), key


@pytest.mark.parametrize("restore", ["params", "targets"])
def test_tensors_outside_the_snapshot_keep_the_fresh_models_values(restore, tmp_path):
    torch.manual_seed(0)
    source = LotteryTicket(MLP(), rate=0.5, rounds=2, restore=restore)
    with source:
        _train_a_little(source.model, seed=0)
    source.save(tmp_path / "t.safetensors", encoding="dense")
    model = MLP()
    fresh = _effective(model)
    loaded = load_ticket(tmp_path / "t.safetensors", model)
    after = _effective(model)
    for key in after:
        if key in source.rewind_weights:
            expected = source.rewind_weights[key] * source.masks[key] if key in source.masks else source.rewind_weights[key]
            assert torch.equal(after[key], expected), key
        else:
            assert torch.equal(after[key], fresh[key]), key
    assert set(loaded.rewind_weights) == set(source.rewind_weights)


def test_late_rewinding_point_survives_the_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    source = LotteryTicket(model, rate=0.5, rounds=3, rewind=2, optimizer=optimizer)
    with source:
        for _ in range(4):
            optimizer.zero_grad()
            model(torch.randn(8, 10)).pow(2).mean().backward()
            optimizer.step()
    source.save(tmp_path / "t.safetensors", encoding="dense")
    loaded = load_ticket(tmp_path / "t.safetensors", MLP())
    assert loaded.config()["rewind"] == 2
    state, original = loaded.state_dict(), source.state_dict()
    assert state["rewind_captured"] is True and state["steps"] == original["steps"] == 4
    for key, value in original["rewind_weights"].items():
        assert torch.equal(state["rewind_weights"][key], value), key


def test_benchmark_smoke_run_checks_its_round_trips():
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench_ticket_file.py")
    result = subprocess.run([sys.executable, script, "--smoke", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| 0.90 | compact |" in result.stdout
    assert "correctness: 4 saved tickets load with equal masks and effective weights: OK" in result.stdout
