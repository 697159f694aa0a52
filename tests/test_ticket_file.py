"""Tests for torch_lottery.ticket_file: encoding, files on disk, loading, plain export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
