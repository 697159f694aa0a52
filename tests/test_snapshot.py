"""Disk snapshots: the streaming safetensors writer, memory-mapped reads, and rewinding from disk."""

import gc
from pathlib import Path

import pytest
import safetensors.torch
import torch

from conftest import lenet, train_steps
from torch_lottery import LotteryTicket
from torch_lottery.snapshot import mmap_safetensors, write_safetensors_streaming


def sample() -> dict:
    torch.manual_seed(0)
    return {
        "w": torch.randn(3, 5),
        "steps": torch.tensor(7),
        "half": torch.randn(2, 2).to(torch.bfloat16),
        "empty": torch.zeros(0, 3),
        "idx": torch.arange(5),
        "flags": torch.tensor([True, False, True]),
        "noncontig": torch.randn(4, 6).t(),
    }


def test_streamed_file_is_a_valid_safetensors_file(tmp_path: Path):
    tensors = sample()
    path = tmp_path / "s.safetensors"
    write_safetensors_streaming(tensors, path)
    loaded = safetensors.torch.load_file(path)
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temporary left behind


def test_mmap_reads_views_of_one_file_mapping(tmp_path: Path):
    tensors = sample()
    path = tmp_path / "s.safetensors"
    write_safetensors_streaming(tensors, path)
    mapped = mmap_safetensors(path)
    for k, v in tensors.items():
        assert torch.equal(mapped[k], v)
    storages = {mapped[k].untyped_storage().data_ptr() for k in mapped if mapped[k].numel()}
    assert len(storages) == 1
    mapped["w"].add_(1.0)  # private mapping: the file keeps its values
    assert torch.equal(safetensors.torch.load_file(path)["w"], tensors["w"])


def test_mmap_reads_files_written_by_safetensors_with_misaligned_tensors(tmp_path: Path):
    path = tmp_path / "other.safetensors"
    tensors = {"a": torch.ones(3, dtype=torch.uint8), "b": torch.randn(5), "c": torch.arange(3)}
    safetensors.torch.save_file(tensors, path)
    mapped = mmap_safetensors(path)
    assert all(torch.equal(mapped[k], v) for k, v in tensors.items())


def test_unsupported_dtype_is_refused(tmp_path: Path):
    with pytest.raises(TypeError, match="'z' has dtype torch.complex128"):
        write_safetensors_streaming({"z": torch.zeros(2, dtype=torch.complex128)}, tmp_path / "x.safetensors")


def test_rewinding_from_a_disk_snapshot_is_bitwise_exact(tmp_path: Path):
    model = lenet()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = LotteryTicket(model, rate=0.5, rounds=2, snapshot_device="disk", snapshot_dir=tmp_path / "snap")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for r in range(2):
        with ticket:
            train_steps(model, opt, 3, seed=r)
        for fqn in ticket.masks:
            assert torch.equal(model.get_parameter(fqn + "_orig"), theta0[fqn])
        assert torch.equal(model.get_parameter("1.bias"), theta0["1.bias"])
    path = tmp_path / "snap" / "rewind.safetensors"
    assert path.exists()
    on_disk = safetensors.torch.load_file(path)
    assert set(on_disk) == set(ticket.rewind_weights)
    assert torch.equal(on_disk["1.weight"], theta0["1.weight"])


def test_default_disk_snapshot_folder_is_removed_with_the_ticket():
    model = lenet()
    ticket = LotteryTicket(model, rate=0.5, snapshot_device="disk")
    with ticket:
        pass
    folder = ticket.snapshot_dir
    assert (folder / "rewind.safetensors").exists()
    del ticket
    gc.collect()
    assert not folder.exists()


def test_late_rewind_point_replaces_the_disk_snapshot(tmp_path: Path):
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ticket = LotteryTicket(model, rate=0.5, rewind=2, snapshot_device="disk", snapshot_dir=tmp_path)
    with ticket:
        train_steps(model, opt, 2)
        theta2 = {k: v.detach().clone() for k, v in model.named_parameters()}
        train_steps(model, opt, 2, seed=5)
    for fqn in ticket.masks:
        assert torch.equal(model.get_parameter(fqn + "_orig"), theta2[fqn])


def test_snapshot_dir_without_disk_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="snapshot_dir=.* is only used with snapshot_device='disk'"):
        LotteryTicket(lenet(), rate=0.5, snapshot_dir=tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a folder"):
        LotteryTicket(lenet(), rate=0.5, snapshot_device="disk", snapshot_dir=tmp_path / "f")
