"""The benchmark models: LeNet-300-100, Conv-4 (28x28x1), resnet18 at 32x32, a small TransformerEncoder."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["MODELS", "lenet", "conv4", "resnet18", "encoder"]


def lenet() -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    return model, lambda b: torch.randn(b, 1, 28, 28)


def conv4() -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    model = nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10),
    )
    return model, lambda b: torch.randn(b, 1, 28, 28)


def resnet18() -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    try:
        import torchvision
    except ModuleNotFoundError:
        raise ModuleNotFoundError("benchmarks need torchvision for resnet18: pip install torch_lottery[vision]") from None
    return torchvision.models.resnet18(num_classes=10), lambda b: torch.randn(b, 3, 32, 32)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=256, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def encoder() -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    return _Encoder(), lambda b: torch.randn(b, 32, 128)


MODELS = {"lenet-300-100": lenet, "conv-4": conv4, "resnet18-32x32": resnet18, "transformer-encoder": encoder}
