"""Sums of per-batch statistics, reduced across processes: the numbers every metric is made of."""
import math

import torch

from utils import distributed


class MetricSums:
    """Sums of per-batch statistics, kept on the device so a step never waits for the GPU.

    A metric is a ratio of sums (correct / samples, loss_sum / samples), never an average of
    per-batch averages, so uneven batches and uneven shards across processes weigh correctly.
    """

    def __init__(self):
        self.sums = {}  # name -> float64 tensor on the device
        self.counts = {}  # name -> Python number, for statistics known without the device

    def add(self, stats):
        """Add a batch's statistics: tensors (0-d or not), or plain numbers such as sample counts."""
        for name, value in stats.items():
            if not isinstance(value, torch.Tensor):
                self.counts[name] = self.counts.get(name, 0) + value
            elif name in self.sums:
                self.sums[name].add_(value.detach())
            else:
                self.sums[name] = value.detach().to(torch.float64, copy=True)

    def state_dict(self):
        return {"sums": {name: value.cpu() for name, value in self.sums.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state, device):
        self.sums = {name: value.to(device, torch.float64) for name, value in state["sums"].items()}
        self.counts = dict(state["counts"])

    def reduced(self, device="cpu"):
        """Plain Python sums, added over every process when running distributed.

        Under DDP every process joins the reduction, also one whose shard was empty: the processes
        first agree on the statistics' names and shapes, and a process that lacks one adds zeros.
        `device` is where the reduction runs (the process group's device).
        """
        names = {name: tuple(value.shape) for name, value in self.sums.items()}
        counts = set(self.counts)
        if distributed.is_distributed():
            for other_names, other_counts in distributed.all_gather_object((names, sorted(counts))):
                names.update(other_names)
                counts.update(other_counts)
        if not names and not counts:
            return {}
        names, counts = sorted(names.items()), sorted(counts)
        flat = torch.cat([self.sums[name].reshape(-1) if name in self.sums
                          else torch.zeros(shape, dtype=torch.float64, device=device).reshape(-1)
                          for name, shape in names]
                         + [torch.tensor([float(self.counts.get(name, 0)) for name in counts], dtype=torch.float64,
                                         device=device)])
        if distributed.is_distributed():
            flat = flat.to(device)
            torch.distributed.all_reduce(flat)
        flat = flat.cpu()
        result, offset = {}, 0
        for name, shape in names:
            size = math.prod(shape)
            chunk = flat[offset:offset + size]
            result[name] = chunk.reshape(shape) if shape else chunk.item()
            offset += size
        for name, value in zip(counts, flat[offset:].tolist()):
            result[name] = value
        return result
