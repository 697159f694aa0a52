"""Tests for torch_lottery.reproduction.data: offline Fashion-MNIST through torchvision, the validation hold-out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torch_lottery.reproduction.data import DEBIAN_FASHION_MNIST, load_dataset, prepare_fashion_mnist

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)

# Sizes of the idx files: 16-byte header + 28*28 bytes per image; 8-byte header + 1 byte per label.
EXPECTED_BYTES = {
    "train-images-idx3-ubyte": 16 + 60000 * 784,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 784,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert prepare_fashion_mnist(root)
    return root


@pytest.fixture(scope="module")
def splits(root: Path):
    return load_dataset("fashion-mnist", root=root)


def test_prepare_extracts_the_debian_files_where_torchvision_looks(root: Path) -> None:
    raw = root / "FashionMNIST" / "raw"
    assert {p.name: p.stat().st_size for p in raw.iterdir()} == EXPECTED_BYTES


def test_prepare_leaves_files_already_in_place_alone(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in EXPECTED_BYTES:
        (raw / name).write_bytes(b"mine")
    assert prepare_fashion_mnist(tmp_path, source=tmp_path / "nowhere")
    assert all((raw / name).read_bytes() == b"mine" for name in EXPECTED_BYTES)


def test_prepare_reports_missing_source_without_creating_anything(tmp_path: Path) -> None:
    assert not prepare_fashion_mnist(tmp_path / "root", source=tmp_path / "nowhere")
    assert not (tmp_path / "root").exists()


def test_load_holds_out_5000_training_images_for_validation(splits) -> None:
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    # Fashion-MNIST has exactly 6000 training images per class; the split only partitions them.
    counts = torch.bincount(splits.train.y, minlength=10) + torch.bincount(splits.val.y, minlength=10)
    assert counts.tolist() == [6000] * 10
    assert torch.bincount(splits.test.y, minlength=10).tolist() == [1000] * 10


def test_load_normalizes_training_images_to_zero_mean_unit_std(splits) -> None:
    assert abs(float(splits.train.x.mean())) < 0.01
    assert abs(float(splits.train.x.std()) - 1.0) < 0.01


def test_validation_split_depends_only_on_split_seed(root: Path, splits) -> None:
    again = load_dataset("fashion-mnist", root=root, train_limit=100)
    assert torch.equal(again.val.y, splits.val.y)
    assert torch.equal(again.train.x, splits.train.x[:100])
    other = load_dataset("fashion-mnist", root=root, split_seed=1, train_limit=100)
    assert not torch.equal(other.val.y, splits.val.y)


def test_load_rejects_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"load_dataset\(\): name='svhn' is not a known dataset"):
        load_dataset("svhn", root=tmp_path)


def test_load_without_files_or_download_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"name='mnist' not found under root=.*download=True"):
        load_dataset("mnist", root=tmp_path)
    assert not (tmp_path / "MNIST" / "raw").exists() or not any((tmp_path / "MNIST" / "raw").iterdir())


def test_load_rejects_validation_size_that_leaves_no_training_images(root: Path) -> None:
    with pytest.raises(ValueError, match=r"validation_size=60000 leaves no training images"):
        load_dataset("fashion-mnist", root=root, validation_size=60000)
