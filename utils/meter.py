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

    def reduced(self):
        """Plain Python sums, added over every process when running distributed."""
        if not self.sums and not self.counts:
            return {}
        names = sorted(self.sums)
        device = self.sums[names[0]].device if names else "cpu"
        flat = torch.cat([self.sums[name].reshape(-1) for name in names]
                         + [torch.tensor([float(self.counts[name]) for name in sorted(self.counts)], dtype=torch.float64,
                                         device=device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flat)
        flat = flat.cpu()
        result, offset = {}, 0
        for name in names:
            size = self.sums[name].numel()
            chunk = flat[offset:offset + size]
            result[name] = chunk.item() if self.sums[name].dim() == 0 else chunk.reshape(self.sums[name].shape)
            offset += size
        for name, value in zip(sorted(self.counts), flat[offset:].tolist()):
            result[name] = value
        return result
