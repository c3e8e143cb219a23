"""The random draws of training augmentation: one stream per sample.

A task's `prepare_batch(batch, train, random)` draws its augmentation from `random`, a SampleRandom
of the batch: row i has its own generator, seeded by the run's seed, the epoch and the sample's
position in the training set, and by nothing else. A sample is so augmented alike whichever process
loads it, in whichever batch and place in it: on any number of processes, with any batch split, and
after a resume.

    random.rand(*size)               (n, *size) floats in [0, 1); row i from sample i's stream
    random.randn(*size)              (n, *size) standard normal
    random.randint(low, high, *size) (n, *size) integers in [low, high)
    random.generators                the n torch.Generators, for any other draw (torch's own
                                     functions, a torchvision transform's parameters)

Each call draws from every row's stream in turn, so the k-th draw of a sample is the same whatever
the batch around it. The streams are made on first use: a task that does not augment pays nothing.
The values are CPU tensors; move them with `.to(images.device)` where needed. What mixes samples
(MixUp's or CutMix's pairing) depends on the batch by nature, and so on the number of processes.
"""
import torch

from utils.seed import derived_seed

AUGMENTATION = 0x61756720  # keeps these streams apart from any other that the seed derives


class SampleRandom:
    def __init__(self, seed, epoch, indices):
        self.seed, self.epoch, self.indices = seed, epoch, indices
        self._generators = None

    def __len__(self):
        return len(self.indices)

    @property
    def generators(self):
        if self._generators is None:
            self._generators = [torch.Generator().manual_seed(derived_seed(self.seed, AUGMENTATION, self.epoch, index))
                                for index in torch.as_tensor(self.indices).tolist()]
        return self._generators

    def rand(self, *size):
        return self._stacked(torch.rand, size)

    def randn(self, *size):
        return self._stacked(torch.randn, size)

    def randint(self, low, high, *size):
        return self._stacked(lambda shape, generator: torch.randint(low, high, shape, generator=generator), size)

    def _stacked(self, draw, size):
        if not len(self):
            return torch.empty(0, *size)
        return torch.stack([draw(size, generator=generator) for generator in self.generators])


def augmentation_random(sampling, seed, rank, epoch, index, indices):
    """What training micro-batch `index` of `epoch` on process `rank`, the samples `indices`, draws its
    augmentation from: their SampleRandom; for a run begun with sampling rules 1 (state/checkpoint.py),
    one torch.Generator seeded by seed, rank, epoch and batch, as then, so that its resume stays exact."""
    if sampling > 1:
        return SampleRandom(seed, epoch, indices)
    return torch.Generator().manual_seed(derived_seed(seed, rank, epoch, index))
