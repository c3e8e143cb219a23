"""Tests for data/fashion_mnist.py: reading IDX files and the FashionMNIST dataset."""
from pathlib import Path

import numpy as np
import pytest
import torch

from data.fashion_mnist import FILES, FashionMNIST, raw_dir, read_idx
from data.synthetic_fashion_mnist import write_fashion_mnist, write_idx
from utils.errors import UserError


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(5, 28, 28), (7,)])
def test_read_idx_round_trip(tmp_path, compress, shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / ("data.idx.gz" if compress else "data.idx")
    write_idx(path, array, compress)
    loaded = read_idx(path)
    assert loaded.dtype == torch.uint8
    assert np.array_equal(loaded.numpy(), array)


@pytest.mark.parametrize("keep", [16 + 2 * 784 - 1, 16 + 700, 14], ids=["last_byte", "half", "in_header"])
def test_read_idx_truncated_file_names_the_path(tmp_path, keep):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:keep])  # the header is 16 bytes
    with pytest.raises(UserError, match="truncated") as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_truncated_gzip_is_a_user_error(tmp_path):
    path = tmp_path / "labels.gz"
    write_idx(path, np.zeros(1000, dtype=np.uint8), compress=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes((1234).to_bytes(4, "big") + bytes(20))
    with pytest.raises(UserError, match="magic number 1234"):
        read_idx(path)
    path.write_bytes(b"ab")
    with pytest.raises(UserError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_packed_and_unpacked_files(tmp_path, compress):
    folder = write_fashion_mnist(tmp_path, n_train=50, n_test=20, compress=compress)
    suffix = ".gz" if compress else ""
    assert all((folder / f"{name}{suffix}").is_file() for pair in FILES.values() for name in pair)
    train, test = FashionMNIST(tmp_path, train=True), FashionMNIST(tmp_path, train=False)
    assert (len(train), len(test)) == (50, 20)
    assert train.images.shape == (50, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and int(train.labels.max()) < 10
    images, labels = train.get_batch(torch.tensor([4, 0]))
    assert torch.equal(images[1], train[0][0]) and labels[0] == train[4][1]
    assert not torch.equal(train.images[:20], test.images)


def test_fashion_mnist_same_data_packed_or_not(tmp_path):
    write_fashion_mnist(tmp_path / "packed", n_train=10, n_test=5, compress=True)
    write_fashion_mnist(tmp_path / "unpacked", n_train=10, n_test=5, compress=False)
    packed, unpacked = FashionMNIST(tmp_path / "packed"), FashionMNIST(tmp_path / "unpacked")
    assert torch.equal(packed.images, unpacked.images)
    assert torch.equal(packed.labels, unpacked.labels)


def test_fashion_mnist_missing_folder_or_file(tmp_path):
    with pytest.raises(UserError, match="--download"):
        FashionMNIST(tmp_path / "nothing_here")
    folder = write_fashion_mnist(tmp_path, n_train=5, n_test=5, compress=False)
    (folder / FILES["test"][1]).unlink()
    with pytest.raises(UserError, match=FILES["test"][1]) as error:
        FashionMNIST(tmp_path, train=False)
    assert "--download" in str(error.value)
    assert len(FashionMNIST(tmp_path, train=True)) == 5
    assert raw_dir(tmp_path) == Path(tmp_path) / "FashionMNIST" / "raw"


def test_fashion_mnist_swapped_or_mismatched_files(tmp_path):
    folder = write_fashion_mnist(tmp_path, n_train=6, n_test=5, compress=False)
    images, labels = FILES["train"]
    write_idx(folder / labels, np.zeros(4, dtype=np.uint8), compress=False)
    with pytest.raises(UserError, match="6 images but"):
        FashionMNIST(tmp_path)
    write_idx(folder / labels, np.full(6, 12, dtype=np.uint8), compress=False)
    with pytest.raises(UserError, match="label 12"):
        FashionMNIST(tmp_path)
    (folder / labels).write_bytes((folder / images).read_bytes())
    with pytest.raises(UserError, match="swapped"):
        FashionMNIST(tmp_path)
