"""Mask summaries: one implementation behind summaries, sparsity, history and file metadata."""

import doctest

import pytest
import torch

from torch_lottery import LotteryTicket, summary
from torch_lottery.summary import format_table, mask_rows, round_record, totals


def test_rows_count_survivors_exactly():
    masks = {"a": torch.tensor([[True, False, True]]), "b": torch.zeros(2, 2, dtype=torch.bool)}
    rows = mask_rows(masks)
    assert rows == [
        {"fqn": "a", "shape": [1, 3], "numel": 3, "remaining": 2, "sparsity": pytest.approx(1 / 3)},
        {"fqn": "b", "shape": [2, 2], "numel": 4, "remaining": 0, "sparsity": 1.0},
    ]
    assert totals(rows) == (2, 7, pytest.approx(5 / 7))


def test_empty_tensors_have_zero_sparsity_and_no_division_by_zero():
    rows = mask_rows({"empty": torch.ones(0, 3, dtype=torch.bool)})
    assert rows[0]["sparsity"] == 0.0
    assert totals(rows) == (0, 0, 0.0)
    assert "total" in format_table(rows)


def test_round_record_matches_rows():
    masks = {"w": torch.tensor([True, False, False, True])}
    assert round_record(3, masks) == {
        "round": 3, "sparsity": 0.5, "remaining": 2, "total": 4, "per_tensor": {"w": 2},
    }


def test_ticket_reports_agree_with_summary(tiny):
    ticket = LotteryTicket(tiny, rate=0.5)
    with ticket:
        pass
    rows = ticket.summary()
    assert rows == mask_rows(ticket.masks)
    assert ticket.sparsity == totals(rows)[2] == ticket.history[-1]["sparsity"]
    assert ticket.summary_table() == format_table(rows)


def test_doctests():
    assert doctest.testmod(summary).failed == 0
