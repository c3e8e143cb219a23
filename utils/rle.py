"""Run-length encoding of binary masks in the format of Kaggle's Carvana submissions.

A mask becomes "start length start length ...": pixels are numbered from 1 in row-major order
(along the first row, then the next), as in the competition's train_masks.csv, and each pair
marks a run of foreground pixels. An empty mask encodes as "".
"""
import numpy as np
import torch


def rle_encode(mask):
    """Encode a 2-D bool or 0/1 mask (numpy array or tensor) as a Carvana RLE string."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode needs a 2-D mask, got shape {mask.shape}")
    # A background pixel on either end makes every run have both a start and an end.
    pixels = np.concatenate([[False], mask.astype(bool).ravel(), [False]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1])
    starts = changes[0::2]
    lengths = changes[1::2] - starts
    # changes are 0-based positions of the first pixel of each run; Kaggle counts from 1.
    return " ".join(map(str, np.column_stack([starts + 1, lengths]).ravel().tolist()))


def rle_decode(rle, shape):
    """Decode a Carvana RLE string into a bool mask of shape (height, width)."""
    height, width = shape
    pixel_count = height * width
    try:
        numbers = np.array(rle.split(), dtype=np.int64)
    except ValueError as error:
        raise ValueError(f"RLE must hold whole numbers only: {error}") from error
    if numbers.size % 2:
        raise ValueError(f"RLE must hold start/length pairs, got {numbers.size} numbers")
    starts = numbers[0::2] - 1
    ends = starts + numbers[1::2]
    if numbers.size and (starts.min() < 0 or (ends < starts).any() or ends.max() > pixel_count):
        raise ValueError(f"RLE runs fall outside a {height}x{width} mask")
    # Mark +1 where a run starts and -1 where it ends; the running sum is inside a run.
    boundaries = np.zeros(pixel_count + 1, dtype=np.int32)
    np.add.at(boundaries, starts, 1)
    np.add.at(boundaries, ends, -1)
    return (np.cumsum(boundaries[:-1]) > 0).reshape(height, width)
