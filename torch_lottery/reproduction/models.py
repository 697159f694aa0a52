"""The networks of Frankle & Carbin (2019) and the training and pruning settings the paper used for each.

``LeNet300100`` is the fully-connected MNIST network (300-100-10). ``ConvNet`` with ``depth`` 2, 4
or 6 is Conv-2/4/6: pairs of 3x3 convolutions (64, 128, 256 channels) each followed by 2x2 max
pooling, then fully-connected 256-256-classes. The paper ran the conv networks on 32x32x3 CIFAR-10;
here they take any input shape (28x28x1 Fashion-MNIST included): the first fully-connected layer's
width follows from the input.

:data:`PAPER_SETTINGS` holds the paper's optimizer, batch size, iterations and layer-wise pruning
rates (Figure 2); :func:`paper_layer_rates` turns them into the ``{fqn: rate}`` dict that
``LotteryTicket(layer_rates=...)`` takes. The output layer is pruned at half the fully-connected rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "MODELS",
    "PAPER_SETTINGS",
    "ConvNet",
    "LeNet300100",
    "PaperSettings",
    "build_model",
    "paper_layer_rates",
]


class LeNet300100(nn.Module):
    """LeNet-300-100: flatten, fully-connected 300 -> 100 -> ``num_classes`` with ReLU.

    Args:
        input_shape: ``(C, H, W)`` of one image; ``(1, 28, 28)`` gives the paper's 784 inputs.
        num_classes: outputs of ``fc3``, the output layer.
        dropout: probability of dropping each hidden activation (after ``fc1`` and ``fc2``) in
            training; 0 (the paper's LeNet) adds no dropout layers.

    Example:
        >>> LeNet300100()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, *, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LeNet300100(): dropout={dropout!r} is outside [0, 1); pass a probability such as 0.5")
        n_in = 1
        for d in input_shape:
            n_in *= int(d)
        self.fc1 = nn.Linear(n_in, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        if self.dropout is not None:
            x = self.dropout(x)
        x = torch.relu(self.fc2(x))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc3(x)


class ConvNet(nn.Module):
    """Conv-2/4/6 of the paper: ``depth`` 3x3 conv layers in pairs with max pooling, then FC 256-256-out.

    Layers are named ``features.<i>`` (convolutions, in ``nn.Sequential`` order) and ``fc1``,
    ``fc2``, ``fc3`` (``fc3`` is the output layer).

    Args:
        depth: 2, 4 or 6 convolutions (channels 64,64 / +128,128 / +256,256).
        input_shape: ``(C, H, W)`` of one image: ``(3, 32, 32)`` for CIFAR-10, ``(1, 28, 28)`` for
            (Fashion-)MNIST.
        num_classes: outputs of ``fc3``.

    Raises:
        ValueError: ``depth`` not in (2, 4, 6), or an input too small for the poolings.

    Example:
        >>> ConvNet(depth=2, input_shape=(1, 28, 28))(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, *, depth: int = 2, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10
    ) -> None:
        super().__init__()
        if depth not in (2, 4, 6):
            raise ValueError(f"ConvNet(): depth={depth!r} is not a paper network; use 2, 4 or 6")
        channels, height, width = (int(d) for d in input_shape)
        layers: list[nn.Module] = []
        for i, out in enumerate((64, 64, 128, 128, 256, 256)[:depth]):
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU()]
            channels = out
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(
                f"ConvNet(): input_shape={tuple(input_shape)!r} is too small for depth={depth}; "
                f"it needs at least {2 ** (depth // 2)} pixels a side"
            )
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(channels * height * width, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.features(x), 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


@dataclass(frozen=True)
class PaperSettings:
    """Training and pruning settings of one network in Frankle & Carbin (2019), Figure 2.

    Rates are fractions of the *remaining* weights pruned per round (``amount`` in torch's sense).
    """

    lr: float
    batch_size: int
    iterations: int
    conv_rate: float
    fc_rate: float
    output_rate: float


PAPER_SETTINGS: dict[str, PaperSettings] = {
    "lenet": PaperSettings(lr=1.2e-3, batch_size=60, iterations=50_000, conv_rate=0.0, fc_rate=0.2, output_rate=0.1),
    "conv2": PaperSettings(lr=2e-4, batch_size=60, iterations=20_000, conv_rate=0.1, fc_rate=0.2, output_rate=0.1),
    "conv4": PaperSettings(lr=3e-4, batch_size=60, iterations=25_000, conv_rate=0.1, fc_rate=0.2, output_rate=0.1),
    "conv6": PaperSettings(lr=3e-4, batch_size=60, iterations=30_000, conv_rate=0.15, fc_rate=0.2, output_rate=0.1),
}
"""Per network: Adam learning rate, batch size, training iterations and per-round pruning rates."""

MODELS: tuple[str, ...] = tuple(PAPER_SETTINGS)
"""Model names :func:`build_model` accepts."""


def build_model(
    name: str, *, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, seed: int | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Build ``name`` (one of :data:`MODELS`), initialized under ``seed`` if given (PyTorch's default init).

    The global RNG state is left as it was when ``seed`` is given. ``dropout`` (LeNet only) adds
    dropout after each hidden layer; it has no parameters, so theta_0 is the same with or without it.

    Raises:
        ValueError: unknown ``name``, or ``dropout`` for a model other than ``"lenet"``.

    Example:
        >>> a, b = build_model("lenet", seed=3), build_model("lenet", seed=3)
        >>> bool(torch.equal(a.fc1.weight, b.fc1.weight))
        True
    """
    if name not in PAPER_SETTINGS:
        raise ValueError(f"build_model(): name={name!r} is not a known model; use one of {list(MODELS)}")
    if dropout and name != "lenet":
        raise ValueError(f"build_model(): dropout={dropout!r} is only built into 'lenet', not {name!r}; use model='lenet'")

    def make() -> nn.Module:
        if name == "lenet":
            return LeNet300100(input_shape=input_shape, num_classes=num_classes, dropout=dropout)
        return ConvNet(depth=int(name[-1]), input_shape=input_shape, num_classes=num_classes)

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def paper_layer_rates(model: nn.Module, settings: PaperSettings) -> dict[str, float]:
    """Per-round pruning rate of every conv and linear weight of ``model``, by the paper's rule.

    Convolution weights get ``settings.conv_rate``, the output layer (the last ``nn.Linear``)
    ``settings.output_rate``, every other linear weight ``settings.fc_rate``. Biases are not pruned.

    Returns:
        ``{fqn: rate}`` with explicit FQNs (``"fc1.weight"``), ready for ``LotteryTicket(layer_rates=...)``.

    Example:
        >>> paper_layer_rates(LeNet300100(), PAPER_SETTINGS["lenet"])
        {'fc1.weight': 0.2, 'fc2.weight': 0.2, 'fc3.weight': 0.1}
    """
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    rates: dict[str, float] = {f"{n}.weight": settings.conv_rate for n in convs}
    for i, n in enumerate(linears):
        rates[f"{n}.weight"] = settings.output_rate if i == len(linears) - 1 else settings.fc_rate
    return rates
