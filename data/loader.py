"""Batches in a seeded, resumable order, for in-memory tensors and for datasets that read files.

The order of epoch `e` is a permutation drawn from a generator seeded with `seed + e`: it depends
on nothing else, so a resumed run sees exactly the batches the uninterrupted run would have seen,
and skipping the first `k` batches of an epoch resumes in the middle of it. Training deals it by
the global batch (GlobalBatchSampler), so that each optimizer step takes the same samples on any
number of processes.
"""
from typing import Protocol, Sequence, runtime_checkable

import torch

from utils.errors import UserError


@runtime_checkable
class SampleDataset(Protocol):
    """What the trainer needs of a dataset (`build_datasets` returns these).

    Required: `__len__`, and `__getitem__(i)` returning one sample (a tensor, or a tuple / dict
    of tensors) that torch's default collate stacks into a batch.
    Optional:
    - `batched = True` with `get_batch(indices)`: a whole batch in one indexing operation
      (`indices` a LongTensor or a slice), for data held in memory; no DataLoader is used then.
    - `groups`: one hashable key per sample; samples that share a key (the views of one car)
      always land in the same split.
    - `names`: one unique string per sample; `split.json` then stores names, so the split
      survives a re-ordered or extended folder.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index): ...


def check_dataset(dataset, what):
    """A clear error, naming `what`, for a dataset that breaks the `SampleDataset` contract."""
    if not isinstance(dataset, SampleDataset):
        raise UserError(f"{what} ({type(dataset).__name__}) is not a dataset: it needs __len__ and __getitem__")
    size = len(dataset)
    if size == 0:
        raise UserError(f"{what} ({type(dataset).__name__}) holds no samples")
    if getattr(dataset, "batched", False) and not callable(getattr(dataset, "get_batch", None)):
        raise UserError(f"{what} ({type(dataset).__name__}) sets batched = True but has no get_batch(indices)")
    for attribute in ("groups", "names"):
        values = getattr(dataset, attribute, None)
        if values is not None and (not isinstance(values, Sequence) or len(values) != size):
            count = len(values) if isinstance(values, Sequence) else type(values).__name__
            raise UserError(f"{what} ({type(dataset).__name__}) has {count} {attribute} for {size} samples; "
                            f"expected one per sample")
    names = getattr(dataset, "names", None)
    if names is not None and len(set(names)) != size:
        raise UserError(f"{what} ({type(dataset).__name__}) has repeated names; expected one unique name per sample")


class EpochBatchSampler:
    """Yields LongTensors of indices, one per batch, for this process's share of an epoch.

    With several processes the epoch's order is shared and dealt out round-robin
    (`order[rank::world_size]`). For training the order is first padded by wrapping around so
    every process gets the same number of batches (DDP needs that); for evaluation nothing is
    padded, so every sample is counted exactly once across processes.
    """

    def __init__(self, size, batch_size, shuffle, seed=0, rank=0, world_size=1, pad=False, drop_last=False):
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.drop_last = drop_last
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch, skip_batches=0):
        self.epoch = epoch
        self.skip = skip_batches

    def indices(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        if self.world_size > 1:
            if self.pad and self.size % self.world_size:
                extra = self.world_size - self.size % self.world_size
                order = torch.cat([order, order[:extra].repeat(extra // max(1, self.size) + 1)[:extra]])
            order = order[self.rank::self.world_size]
        return order

    @property
    def num_samples(self):
        """How many indices this process gets per epoch (before drop_last)."""
        if self.world_size == 1:
            return self.size
        if self.pad:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def batch_size_at(self, index):
        """The size of batch `index` of an epoch: full, except perhaps the last."""
        return min(self.batch_size, self.num_samples - index * self.batch_size)

    def __len__(self):
        size = self.num_samples
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __iter__(self):
        if not self.shuffle and self.world_size == 1:
            # In order and unsharded, a batch is a range: slicing it costs nothing, gathering does.
            stop = self.size - self.size % self.batch_size if self.drop_last else self.size
            return (slice(start, min(start + self.batch_size, stop))
                    for start in range(self.skip * self.batch_size, stop, self.batch_size))
        indices = self.indices()
        if len(indices) == 0:  # split() would give one empty batch
            return iter(())
        batches = indices.split(self.batch_size)
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        return iter(batches[self.skip:])


class GlobalBatchSampler(EpochBatchSampler):
    """Training batches dealt from the epoch's global order, so that each optimizer step takes the same
    samples on any number of processes.

    Micro-batch `m` of the epoch, over all W processes, is positions [m*B*W, (m+1)*B*W) of the epoch's
    order; a step of K micro-batches so takes the G = B*W*K positions [s*G, (s+1)*G), whatever B, W
    and K are. Within it, rank r takes the B consecutive positions [r*B, (r+1)*B) (`deal="consecutive"`):
    every micro-batch is B consecutive samples of the order, so with B kept each holds the same
    samples on any number of processes, and BatchNorm normalises the same groups. Runs begun before
    that rule (checkpoints of sampling rules 1, state/checkpoint.py) deal round-robin
    (`deal="round_robin"`: rank r takes every W-th position from r), as they did. Nothing is padded:
    the epoch's last micro-batch may leave a rank short, or empty; an empty rank gets a placeholder of
    weight 0 (`share_at`): rank 0's samples of it (round-robin: one sample), so that every rank joins
    the step's gradient sync and no sample counts twice.
    """

    DEALS = ("consecutive", "round_robin")

    def __init__(self, size, batch_size, seed=0, rank=0, world_size=1, deal="consecutive"):
        super().__init__(size, batch_size, shuffle=True, seed=seed, rank=rank, world_size=world_size, pad=True)
        assert deal in self.DEALS, deal
        self.deal = deal

    def __len__(self):
        return -(-self.size // (self.batch_size * self.world_size))

    def batch_size_at(self, index):
        """The samples this rank takes in micro-batch `index` (0 for a placeholder)."""
        chunk = self.batch_size * self.world_size
        dealt = max(0, min(chunk, self.size - index * chunk))
        if self.deal == "consecutive":
            return max(0, min(self.batch_size, dealt - self.rank * self.batch_size))
        return len(range(self.rank, dealt, self.world_size))

    def share_at(self, index, accum_steps):
        """The weight of micro-batch `index`'s mean loss: its samples' share of its step's samples over
        every process, times the processes (DDP averages their gradients): the step's gradient is the
        mean over its global batch, also for the epoch's short last step."""
        global_batch = self.batch_size * self.world_size * accum_steps
        step_samples = min(global_batch, self.size - index // accum_steps * global_batch)
        return self.batch_size_at(index) * self.world_size / step_samples

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        chunk, start = self.batch_size * self.world_size, self.rank * self.batch_size
        for index in range(self.skip, len(self)):
            dealt = order[index * chunk:(index + 1) * chunk]
            if self.deal == "consecutive":  # a placeholder of B samples: BatchNorm cannot train on one
                yield dealt[start:start + self.batch_size] if len(dealt) > start else dealt[:self.batch_size]
            else:
                yield dealt[self.rank::self.world_size] if len(dealt) > self.rank else dealt[:1]


def global_batch_loader(loader, deal="consecutive"):
    """`loader` (a training BatchLoader) drawing from a GlobalBatchSampler of its sampler's data, seed and rank."""
    sampler = loader.sampler
    return BatchLoader(loader.dataset, GlobalBatchSampler(sampler.size, sampler.batch_size, sampler.seed,
                                                          sampler.rank, sampler.world_size, deal),
                       loader.num_workers, loader.pin_memory)


class _IndexLists:
    """The sampler's batches as lists, the form DataLoader hands to `__getitem__`."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        return (list(range(batch.start, batch.stop)) if isinstance(batch, slice) else batch.tolist()
                for batch in self.sampler)

    def __len__(self):
        return len(self.sampler)


class Subset:
    """A view of `dataset` restricted to `indices`, batched when the dataset is."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        # A run of consecutive indices (an official test set, say) lets a slice of the view be a
        # slice of the dataset.
        first = int(self.indices[0]) if len(self.indices) else 0
        self.offset = first if torch.equal(self.indices, torch.arange(first, first + len(self.indices))) else None

    @property
    def batched(self):
        return getattr(self.dataset, "batched", False)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[int(self.indices[index])]

    def get_batch(self, indices):
        """`indices`: a LongTensor of positions in this view, or a slice of them."""
        if isinstance(indices, slice) and self.offset is not None:
            return self.dataset.get_batch(slice(indices.start + self.offset, indices.stop + self.offset))
        return self.dataset.get_batch(self.indices[indices])


class BatchLoader:
    """Iterates a dataset in the sampler's order, as `(indices, batch)`: `indices` (a LongTensor)
    are the positions in `dataset` of the batch's rows.

    A dataset held in memory (`batched = True`, with `get_batch(indices)`) gives each batch in one
    indexing operation, with no per-sample `__getitem__`, collate or worker round-trip. Any other
    map-style dataset goes through a DataLoader with workers; its generator is private so that
    creating an iterator never draws from the global random state a checkpoint restores.
    """

    def __init__(self, dataset, sampler, num_workers=0, pin_memory=False):
        self.dataset = dataset
        self.sampler = sampler
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.loader = None
        if not getattr(dataset, "batched", False):
            self.loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=_IndexLists(sampler), num_workers=num_workers, pin_memory=pin_memory,
                persistent_workers=num_workers > 0, generator=torch.Generator())

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        if self.loader is not None:
            # The DataLoader walks the same deterministic sampler, so the two stay in step.
            return zip((torch.as_tensor(batch) for batch in _IndexLists(self.sampler)), self.loader)
        return ((_as_tensor(indices), self.dataset.get_batch(indices)) for indices in self.sampler)


def _as_tensor(indices):
    return torch.arange(indices.start, indices.stop) if isinstance(indices, slice) else indices


def first_samples(dataset, n):
    """A batch of the first `n` samples of `dataset`, as its loader would give it."""
    n = min(n, len(dataset))
    if getattr(dataset, "batched", False):
        return dataset.get_batch(torch.arange(n))
    return torch.utils.data.default_collate([dataset[index] for index in range(n)])
