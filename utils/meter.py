"""Running averages weighted by the real batch size, and metric sums reduced across processes."""
import torch


class AverageMeter:
    """Mean of values where each value counts for `n` samples (the last batch is often smaller)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sum = 0.0
        self.count = 0

    def update(self, value, n=1):
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self):
        return self.sum / self.count if self.count else float("nan")


class MetricSums:
    """Sums of per-batch statistics, kept on the device so a step never waits for the GPU.

    A metric is a ratio of sums (correct / samples, loss_sum / samples), never an average of
    per-batch averages, so uneven batches and uneven shards across processes weigh correctly.
    """

    def __init__(self):
        self.sums = {}

    def add(self, stats):
        for name, value in stats.items():
            value = value.detach().to(torch.float64)
            if name in self.sums:
                self.sums[name] += value
            else:
                self.sums[name] = value.clone()

    def reduced(self):
        """Plain Python sums, added over every process when running distributed."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        flat = torch.cat([self.sums[name].reshape(-1) for name in names])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flat)
        flat = flat.cpu()
        result, offset = {}, 0
        for name in names:
            size = self.sums[name].numel()
            chunk = flat[offset:offset + size]
            result[name] = chunk.item() if self.sums[name].dim() == 0 else chunk.reshape(self.sums[name].shape)
            offset += size
        return result
