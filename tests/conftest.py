"""Shared fixtures: small deterministic models."""

import pytest
import torch
from torch import nn


class TinyMLP(nn.Module):
    """Two Linear layers with hand-set weights, so expected masks can be computed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 2)
        self.fc2 = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[0.1, -0.5, 0.3], [0.9, -0.2, 0.05]]))
            self.fc1.bias.copy_(torch.tensor([0.01, 0.02]))
            self.fc2.weight.copy_(torch.tensor([[0.4, -0.7], [0.15, 0.6]]))
            self.fc2.bias.copy_(torch.tensor([0.03, -0.04]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def tiny() -> TinyMLP:
    return TinyMLP()


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10)
    )


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1, in_features: int = 64) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, in_features, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
