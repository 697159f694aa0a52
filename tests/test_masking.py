"""Tests for torch_lottery.masking: bit packing and in-place multiplication by stored masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_lottery.masking import CHUNK, mul_bits_, mul_bytes_, pack_bits, unpack_bits


def test_pack_bits_hand_computed():
    mask = torch.tensor([True, False, True, True, False, False, False, False, True])
    assert pack_bits(mask).tolist() == [0b10110000, 0b10000000]
    assert unpack_bits(pack_bits(mask), (9,)).tolist() == mask.tolist()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_pack_bits_is_numpy_packbits_and_unpack_inverts_it(n, density, seed):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < density
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert packed.tolist() == np.packbits(mask.numpy()).tolist()
    assert torch.equal(unpack_bits(packed, (n,)), mask)


@pytest.mark.parametrize("n", [CHUNK - 3, CHUNK, 2 * CHUNK + 13])
def test_chunk_boundaries(n):
    g = torch.Generator().manual_seed(n)
    mask = torch.rand(n, generator=g) > 0.5
    x = torch.randn(n, generator=g)
    assert torch.equal(unpack_bits(pack_bits(mask), (n,)), mask)
    for mul_, stored in ((mul_bytes_, mask), (mul_bits_, pack_bits(mask))):
        y = x.clone()
        mul_(y, stored)
        assert torch.equal(y, x * mask)


@pytest.mark.parametrize("kind", ["bytes", "bits"])
def test_non_contiguous_tensors_take_the_whole_tensor_path(kind):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    x = base.t()  # (5, 6), not contiguous
    mask = torch.rand(5, 6, generator=g) > 0.5
    expected = x * mask
    if kind == "bytes":
        mul_bytes_(x, mask)
    else:
        mul_bits_(x, pack_bits(mask))
    assert torch.equal(x, expected)
    assert torch.equal(base.t(), expected)  # written in place, through the view
