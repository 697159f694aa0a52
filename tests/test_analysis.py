"""Mask comparisons by hand, and the early-bird signal on a real IMP run."""

import doctest

import pytest
import torch

import torch_lottery.analysis as analysis
from torch_lottery import LotteryTicket
from torch_lottery.analysis import mask_distance, mask_overlap

from conftest import lenet, train_steps


def test_by_hand():
    a = {"x": torch.tensor([[True, True], [False, False]]), "y": torch.tensor([True])}
    b = {"x": torch.tensor([[True, False], [True, False]]), "y": torch.tensor([True])}
    assert mask_overlap(a, b) == pytest.approx(2 / 4)
    assert mask_distance(a, b) == pytest.approx(2 / 5)
    assert mask_overlap(a, a) == 1.0 and mask_distance(a, a) == 0.0


def test_mismatched_masks_are_refused():
    with pytest.raises(ValueError, match=r"different tensors: \['x', 'z'\]"):
        mask_overlap({"x": torch.ones(1, dtype=torch.bool)}, {"z": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="has shape"):
        mask_distance({"x": torch.ones(2, dtype=torch.bool)}, {"x": torch.ones(3, dtype=torch.bool)})


def test_masks_drawn_later_in_training_agree_more():
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ticket = LotteryTicket(model, rate=0.5)
    drawn = []
    for epoch in range(3):
        train_steps(model, opt, 30, seed=epoch)
        drawn.append(ticket.compute_masks())
    assert mask_distance(drawn[1], drawn[2]) < mask_distance(drawn[0], drawn[2])


def test_doctests():
    assert doctest.testmod(analysis).failed == 0
