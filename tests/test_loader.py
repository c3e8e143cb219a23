"""Tests for data/loader.py: EpochBatchSampler, Subset and BatchLoader."""
import math

import pytest
import torch

from data.loader import BatchLoader, EpochBatchSampler, Subset


def _batches(sampler):
    return [batch.clone() for batch in sampler]


def _same_batches(first, second):
    return len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second))


def test_sampler_order_depends_on_seed_and_epoch_only():
    sampler = EpochBatchSampler(50, 8, shuffle=True, seed=5)
    sampler.set_epoch(2)
    epoch_two = _batches(sampler)
    other = EpochBatchSampler(50, 8, shuffle=True, seed=5)
    other.set_epoch(2)
    assert _same_batches(epoch_two, _batches(other))
    other.set_epoch(3)
    assert not _same_batches(epoch_two, _batches(other))
    different_seed = EpochBatchSampler(50, 8, shuffle=True, seed=6)
    different_seed.set_epoch(2)
    assert not _same_batches(epoch_two, _batches(different_seed))
    assert sorted(torch.cat(epoch_two).tolist()) == list(range(50))
    assert [len(batch) for batch in epoch_two] == [8] * 6 + [2]


def test_sampler_without_shuffle_gives_slices_in_order():
    sampler = EpochBatchSampler(10, 3, shuffle=False, seed=5)
    sampler.set_epoch(4)
    assert list(sampler) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert len(sampler) == 4
    sampler.set_epoch(4, skip_batches=2)
    assert list(sampler) == [slice(6, 9), slice(9, 10)]
    dropping = EpochBatchSampler(10, 3, shuffle=False, drop_last=True)
    assert list(dropping) == [slice(0, 3), slice(3, 6), slice(6, 9)] and len(dropping) == 3


def test_subset_slices_a_consecutive_view_and_gathers_otherwise():
    dataset = _InMemory()
    consecutive, scattered = Subset(dataset, torch.arange(5, 15)), Subset(dataset, torch.arange(20, 0, -2))
    assert consecutive.offset == 5 and scattered.offset is None
    for view in (consecutive, scattered):
        images, labels = view.get_batch(slice(2, 6))
        expected = view.indices[2:6]
        assert torch.equal(images, dataset.images[expected]) and torch.equal(labels, dataset.labels[expected])


@pytest.mark.parametrize("world_size, rank", [(1, 0), (2, 1)])
def test_sampler_skip_resumes_in_the_middle_of_an_epoch(world_size, rank):
    sampler = EpochBatchSampler(37, 4, shuffle=True, seed=11, rank=rank, world_size=world_size, pad=True)
    sampler.set_epoch(3)
    full = _batches(sampler)
    sampler.set_epoch(3, skip_batches=2)
    assert _same_batches(_batches(sampler), full[2:])
    # The length is the whole epoch's: a resumed loop counts its batches from the skipped ones on.
    assert len(sampler) == len(full)
    sampler.set_epoch(4)
    assert len(_batches(sampler)) == len(full)


@pytest.mark.parametrize("size, batch_size", [(11, 4), (10, 3), (1, 2), (16, 4)])
def test_sampler_padded_ranks_get_equal_batches_covering_everything(size, batch_size):
    per_rank = []
    for rank in range(2):
        sampler = EpochBatchSampler(size, batch_size, shuffle=True, seed=1, rank=rank, world_size=2, pad=True)
        sampler.set_epoch(1)
        batches = _batches(sampler)
        assert len(batches) == len(sampler)
        per_rank.append(batches)
    assert len(per_rank[0]) == len(per_rank[1])
    assert sum(map(len, per_rank[0])) == sum(map(len, per_rank[1])) == math.ceil(size / 2)
    seen = set(torch.cat(per_rank[0] + per_rank[1]).tolist())
    assert seen == set(range(size))


@pytest.mark.parametrize("size", [11, 10, 3])
def test_sampler_unpadded_ranks_count_every_sample_once(size):
    indices = []
    for rank in range(2):
        sampler = EpochBatchSampler(size, 3, shuffle=False, rank=rank, world_size=2, pad=False)
        batches = _batches(sampler)
        assert len(batches) == len(sampler)
        indices.append(torch.cat(batches).tolist() if batches else [])
    assert not set(indices[0]) & set(indices[1])
    assert sorted(indices[0] + indices[1]) == list(range(size))


@pytest.mark.parametrize("size, rank, world_size", [(1, 1, 2), (0, 0, 1)])
def test_sampler_with_nothing_to_deal_yields_no_batches(size, rank, world_size):
    sampler = EpochBatchSampler(size, 4, shuffle=False, rank=rank, world_size=world_size, pad=False)
    assert len(sampler) == 0
    assert list(sampler) == []


def test_sampler_drop_last():
    sampler = EpochBatchSampler(10, 4, shuffle=True, seed=0, drop_last=True)
    batches = _batches(sampler)
    assert len(sampler) == len(batches) == 2
    assert all(len(batch) == 4 for batch in batches)
    exact = EpochBatchSampler(8, 4, shuffle=True, seed=0, drop_last=True)
    assert len(exact) == len(_batches(exact)) == 2
    distributed = EpochBatchSampler(11, 4, shuffle=True, seed=0, rank=1, world_size=2, pad=True, drop_last=True)
    assert len(distributed) == len(_batches(distributed)) == 1


class _InMemory:
    batched = True

    def __init__(self, n=23):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, 4, 4, generator=generator)
        self.labels = torch.randint(0, 10, (n,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def get_batch(self, indices):
        return self.images[indices], self.labels[indices]


class _MapStyle:
    """The same samples without the batched fast path."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        return self.source[index]


def _assert_loaders_agree(fast, slow):
    fast_batches, slow_batches = list(fast), list(slow)
    assert len(fast_batches) == len(slow_batches) == len(fast) == len(slow)
    for (indices, (images, labels)), (slow_indices, (slow_images, slow_labels)) in zip(fast_batches, slow_batches):
        assert torch.equal(indices, slow_indices)
        assert torch.equal(images, slow_images)
        assert torch.equal(labels, slow_labels)


def _sampler(size):
    sampler = EpochBatchSampler(size, 5, shuffle=True, seed=3)
    sampler.set_epoch(2)
    return sampler


def test_batched_dataset_gives_the_same_batches_as_the_dataloader_path():
    dataset = _InMemory()
    fast = BatchLoader(dataset, _sampler(len(dataset)))
    slow = BatchLoader(_MapStyle(dataset), _sampler(len(dataset)))
    assert fast.loader is None and slow.loader is not None
    _assert_loaders_agree(fast, slow)


def test_subset_batches_through_both_paths():
    dataset = _InMemory()
    indices = torch.tensor([20, 3, 7, 11, 0, 19, 5, 14, 2, 9, 22])
    fast_subset, slow_subset = Subset(dataset, indices), Subset(_MapStyle(dataset), indices)
    assert fast_subset.batched and not slow_subset.batched
    assert len(fast_subset) == len(slow_subset) == 11
    images, labels = fast_subset.get_batch(torch.tensor([0, 2]))
    assert torch.equal(labels, dataset.labels[torch.tensor([20, 7])])
    assert torch.equal(slow_subset[1][0], dataset.images[3])
    _assert_loaders_agree(BatchLoader(fast_subset, _sampler(11)), BatchLoader(slow_subset, _sampler(11)))


@pytest.mark.parametrize("batched", [True, False])
def test_loader_does_not_touch_the_global_random_state(batched):
    dataset = _InMemory() if batched else _MapStyle(_InMemory())
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    loader = BatchLoader(dataset, _sampler(len(dataset)))
    for _ in range(2):
        assert len(list(loader)) == 5
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_loader_hands_out_the_positions_of_each_batch(batched, shuffle):
    dataset = _InMemory() if batched else _MapStyle(_InMemory())
    sampler = EpochBatchSampler(len(dataset), 5, shuffle=shuffle, seed=3)
    seen = []
    for indices, (images, labels) in BatchLoader(dataset, sampler):
        assert indices.dtype == torch.long and len(indices) == len(labels)
        assert torch.equal(labels, torch.stack([dataset[i][1] for i in indices.tolist()]))
        seen += indices.tolist()
    assert sorted(seen) == list(range(len(dataset)))
    assert (seen == sorted(seen)) is not shuffle


def test_check_dataset_names_what_breaks_the_contract():
    from data.loader import check_dataset
    from utils.errors import UserError
    check_dataset(_InMemory(), "the pool")
    with pytest.raises(UserError, match="the pool .*needs __len__ and __getitem__"):
        check_dataset(object(), "the pool")
    empty = _InMemory(0)
    with pytest.raises(UserError, match="holds no samples"):
        check_dataset(empty, "the pool")
    grouped = _InMemory(5)
    grouped.groups = ["a", "a", "b"]
    with pytest.raises(UserError, match="has 3 groups for 5 samples"):
        check_dataset(grouped, "the pool")
    named = _InMemory(3)
    named.names = ["x", "y", "x"]
    with pytest.raises(UserError, match="repeated names"):
        check_dataset(named, "the pool")
    no_batch = _MapStyle(_InMemory(3))
    no_batch.batched = True
    with pytest.raises(UserError, match="batched = True but has no get_batch"):
        check_dataset(no_batch, "the pool")
