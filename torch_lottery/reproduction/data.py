"""Load an image-classification dataset through torchvision into in-memory train/validation/test tensors.

The reproduction trains small networks for thousands of short iterations, so the whole dataset is
read once through torchvision's dataset classes (``FashionMNIST``, ``MNIST``, ``CIFAR10``) and kept as
normalized float tensors; minibatches are then plain index lookups. ``validation_size`` training
images are held out for validation (5,000 in Frankle & Carbin 2019) with a fixed split seed, so every
run and every seed sees the same split.

Offline Fashion-MNIST: Debian's ``dataset-fashion-mnist`` package installs the original ``.gz`` files
in ``/usr/share/datasets/fashion-mnist``. torchvision 0.29 checks for the *extracted* idx files in
``<root>/FashionMNIST/raw/`` (``MNIST._check_exists`` strips the ``.gz``), so
:func:`prepare_fashion_mnist` decompresses the Debian files there when they are missing. Nothing is
downloaded unless ``download=True`` is passed (torchvision's own download path).

torchvision is optional: it is imported inside :func:`load_dataset` only.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import Tensor

from ..files import atomic_write

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DatasetSplits",
    "Split",
    "load_dataset",
    "prepare_fashion_mnist",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where ``apt-get install dataset-fashion-mnist`` puts the original Fashion-MNIST ``.gz`` files."""

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# name -> (torchvision class name, per-channel mean, per-channel std) of the training images.
_STATS: dict[str, tuple[str, tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ("FashionMNIST", (0.2860,), (0.3530,)),
    "mnist": ("MNIST", (0.1307,), (0.3081,)),
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

DATASETS: tuple[str, ...] = tuple(_STATS)
"""Dataset names :func:`load_dataset` accepts."""


@dataclass(frozen=True)
class Split:
    """One split held in memory: ``x`` float images ``(N, C, H, W)``, ``y`` int64 labels ``(N,)``."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class DatasetSplits:
    """Train, validation and test splits of one dataset, plus what a model needs to know about it."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]


def prepare_fashion_mnist(root: PathLike, *, source: PathLike = DEBIAN_FASHION_MNIST) -> bool:
    """Put extracted Fashion-MNIST idx files where torchvision's ``FashionMNIST(root)`` looks for them.

    Decompresses ``<source>/<name>.gz`` into ``<root>/FashionMNIST/raw/<name>`` for each of the four
    files that is missing there. Files already present are left alone; nothing is downloaded.

    Args:
        root: the ``root`` later passed to ``torchvision.datasets.FashionMNIST``.
        source: folder holding the four original ``.gz`` files (Debian's package by default).

    Returns:
        ``True`` if all four files are now in place, ``False`` if some are missing from both places
        (the caller may then fall back to torchvision's ``download=True``).
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    source = Path(source)
    missing = [name for name in _IDX_FILES if not (raw / name).is_file()]
    if not missing:
        return True
    if not all((source / f"{name}.gz").is_file() for name in missing):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name in missing:  # each file whole or not at all: an interrupted extraction is redone next time
        with gzip.open(source / f"{name}.gz", "rb") as fin, atomic_write(raw / name, fn="prepare_fashion_mnist") as fout:
            shutil.copyfileobj(fin, fout)
        logger.info("extracted %s into %s", source / f"{name}.gz", raw)
    return True


def _to_float_images(data: object) -> Tensor:
    """torchvision's ``.data`` (uint8 tensor ``N,H,W`` or numpy ``N,H,W,C``) -> float ``N,C,H,W`` in [0, 1]."""
    x = torch.as_tensor(data)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    else:
        x = x.permute(0, 3, 1, 2)
    return x.contiguous().float().div_(255.0)


def load_dataset(
    name: str,
    *,
    root: PathLike = "data",
    download: bool = False,
    validation_size: int = 5000,
    split_seed: int = 0,
    train_limit: int | None = None,
) -> DatasetSplits:
    """Read ``name`` through torchvision and return normalized in-memory splits.

    Args:
        name: one of :data:`DATASETS` (``"fashion-mnist"``, ``"mnist"``, ``"cifar10"``).
        root: torchvision's ``root``; for Fashion-MNIST the Debian files are extracted here if needed.
        download: let torchvision download missing files (needs internet). Never used when the
            files are already present.
        validation_size: training images held out as the validation split (5,000 in the paper).
        split_seed: seed of the random train/validation split.
        train_limit: keep only the first ``train_limit`` training images after the split (for smoke
            tests); ``None`` keeps all.

    Returns:
        :class:`DatasetSplits` with images normalized by the dataset's per-channel mean and std.

    Raises:
        ValueError: unknown ``name`` or a ``validation_size`` outside ``[1, N-1]``.
        ModuleNotFoundError: torchvision is not installed.
        RuntimeError: the files are not under ``root`` and ``download`` is False.

    Example:
        >>> splits = load_dataset("fashion-mnist", root="data")  # doctest: +SKIP
        >>> len(splits.train), len(splits.val), len(splits.test)  # doctest: +SKIP
        (55000, 5000, 10000)
    """
    if name not in _STATS:
        raise ValueError(f"load_dataset(): name={name!r} is not a known dataset; use one of {list(DATASETS)}")
    if not isinstance(validation_size, int) or validation_size < 1:
        raise ValueError(f"load_dataset(): validation_size={validation_size!r} must be a positive int")
    if train_limit is not None and (not isinstance(train_limit, int) or train_limit < 1):
        raise ValueError(f"load_dataset(): train_limit={train_limit!r} must be a positive int or None")
    try:
        import torchvision.datasets as tvd
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "load_dataset(): torchvision is required to read datasets; pip install torch_lottery[vision]"
        ) from exc
    class_name, mean, std = _STATS[name]
    root = Path(root)
    if name == "fashion-mnist" and prepare_fashion_mnist(root):
        download = False  # the files are there; never touch the network
    cls = getattr(tvd, class_name)
    try:
        train_set = cls(str(root), train=True, download=download)
        test_set = cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        hint = (
            "apt-get install dataset-fashion-mnist, or pass download=True (--download)"
            if name == "fashion-mnist"
            else f"put torchvision's {class_name} files under {str(root)!r} or pass download=True (--download)"
        )
        raise RuntimeError(f"load_dataset(): name={name!r} not found under root={str(root)!r}; {hint}") from exc

    x_all = _to_float_images(train_set.data)
    y_all = torch.as_tensor(train_set.targets, dtype=torch.long)
    x_test = _to_float_images(test_set.data)
    y_test = torch.as_tensor(test_set.targets, dtype=torch.long)
    if validation_size >= len(y_all):
        raise ValueError(
            f"load_dataset(): validation_size={validation_size!r} leaves no training images "
            f"(the training set has {len(y_all)}); use a smaller value"
        )
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    x_all = (x_all - mean_t) / std_t
    x_test = (x_test - mean_t) / std_t

    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:validation_size], perm[validation_size:]
    if train_limit is not None:
        train_idx = train_idx[:train_limit]
    splits = DatasetSplits(
        name=name,
        train=Split(x_all[train_idx].contiguous(), y_all[train_idx].contiguous()),
        val=Split(x_all[val_idx].contiguous(), y_all[val_idx].contiguous()),
        test=Split(x_test, y_test),
        num_classes=int(y_all.max()) + 1,
        input_shape=tuple(x_all.shape[1:]),  # type: ignore[arg-type]
    )
    logger.info(
        "%s: %d train, %d validation, %d test images of shape %s",
        name, len(splits.train), len(splits.val), len(splits.test), splits.input_shape,
    )
    return splits
