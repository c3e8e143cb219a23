import time

import numpy as np
import pytest
import torch

from utils.rle import rle_decode, rle_encode


def test_known_example_is_row_major_and_one_based():
    mask = np.array([[0, 1, 1, 0],
                     [0, 0, 0, 1],
                     [1, 1, 0, 0]])
    # Row-major pixel numbers 2-3 and 8-10 are set.
    assert rle_encode(mask) == "2 2 8 3"
    assert np.array_equal(rle_decode("2 2 8 3", (3, 4)), mask.astype(bool))


def test_empty_and_full_masks():
    assert rle_encode(np.zeros((5, 7), dtype=bool)) == ""
    assert not rle_decode("", (5, 7)).any()
    assert rle_encode(np.ones((5, 7), dtype=np.uint8)) == "1 35"
    assert rle_decode("1 35", (5, 7)).all()


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (6, 1), (13, 17), (64, 48)])
def test_random_masks_round_trip(shape):
    generator = np.random.default_rng(sum(shape))
    for density in (0.1, 0.5, 0.9):
        mask = generator.random(shape) < density
        decoded = rle_decode(rle_encode(mask), shape)
        assert decoded.dtype == bool
        assert np.array_equal(decoded, mask)


def test_accepts_torch_tensors():
    mask = torch.zeros(4, 6, dtype=torch.uint8)
    mask[1, 2:5] = 1
    assert rle_encode(mask) == "9 3"


def test_full_size_carvana_mask_is_fast():
    height, width = 1280, 1918
    rows, columns = np.ogrid[:height, :width]
    mask = ((rows - 640) / 400.0) ** 2 + ((columns - 960) / 800.0) ** 2 <= 1
    mask |= np.random.default_rng(0).random((height, width)) < 0.01
    started = time.perf_counter()
    decoded = rle_decode(rle_encode(mask), (height, width))
    assert time.perf_counter() - started < 2.0
    assert np.array_equal(decoded, mask)


@pytest.mark.parametrize("bad", ["1", "a 2", "0 3", "5 10", "1 -1"])
def test_malformed_rle_raises(bad):
    with pytest.raises(ValueError):
        rle_decode(bad, (2, 3))


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((1, 2, 3)))
