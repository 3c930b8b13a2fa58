import pytest
import torch

from modelpress.primitives.bitpack import (
    pack_bits,
    packed_nbytes,
    stream_to_container,
    to_container,
    unpack_bits,
)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 13, 1001])
def test_roundtrip_exact_every_width_and_odd_lengths(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(bits * 1000 + n))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(n, bits) == -(-n * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, n), codes.to(torch.uint8))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 5, 131072 * 2 + 13])  # spans several conversion chunks
def test_stream_to_container_equals_unpack_then_repack(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(bits + n))
    packed = pack_bits(codes, bits)
    assert torch.equal(stream_to_container(packed, bits, n), to_container(codes, bits))
    # the packing also fills across chunk boundaries exactly
    assert torch.equal(unpack_bits(packed, bits, n), codes.to(torch.uint8))


def test_layout_is_lsb_first_bit_stream():
    # 3-bit codes 5 (101), 3 (011), 7 (111): stream bits 1,0,1, 1,1,0, 1,1,1 -> bytes 0b11011101, 0b1
    assert pack_bits(torch.tensor([5, 3, 7]), 3).tolist() == [0b11011101, 0b1]
    assert pack_bits(torch.tensor([1, 2]), 4).tolist() == [0x21]


def test_bad_input():
    with pytest.raises(ValueError, match="bits must be"):
        pack_bits(torch.tensor([1]), 9)
    with pytest.raises(ValueError, match=r"lie in \[0, 8\)"):
        pack_bits(torch.tensor([8]), 3)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 3, 4)
