"""Criteria: the built-in scores by hand, and custom callables through the engine."""

import pytest
import torch
from torch import nn

from torch_lottery import CRITERIA, LotteryTicket

W = torch.tensor([[0.5, -2.0], [1.0, -0.1]])
W0 = torch.tensor([[1.0, -1.0], [0.2, 0.3]])
G = torch.Generator()


def test_magnitude():
    assert torch.equal(CRITERIA["magnitude"]("w", W, None, G), W.abs())
    assert CRITERIA["large_final"] is CRITERIA["magnitude"]


def test_magnitude_increase_and_movement_by_hand():
    assert torch.allclose(CRITERIA["magnitude_increase"]("w", W, W0, G), torch.tensor([[-0.5, 1.0], [0.8, -0.2]]))
    assert torch.allclose(CRITERIA["movement"]("w", W, W0, G), torch.tensor([[0.5, 1.0], [0.8, 0.4]]))
    with pytest.raises(ValueError, match="needs a rewind snapshot"):
        CRITERIA["movement"]("w", W, None, G)


def test_movement_criterion_prunes_the_weights_that_moved_least():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(W0)
    ticket = LotteryTicket(model, rate=0.5, criterion="movement", rewind="none")
    with ticket:
        with torch.no_grad():
            model.weight.copy_(W)
    assert ticket.masks["weight"].tolist() == [[False, True], [True, False]]


def test_custom_criterion_callable():
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 1.0, 2.0]]))
    # prefer small weights: the negated magnitude
    ticket = LotteryTicket(model, rate=1 / 3, criterion=lambda fqn, w, w0, g: -w.abs())
    with ticket:
        pass
    assert ticket.masks["weight"].tolist() == [[False, True, True]]
