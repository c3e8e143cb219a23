"""Batches of any structure: tensors, or tuples / lists / dicts of them."""
import torch


def to_device(batch, device, channels_last=False):
    """`batch` on `device`; 4-d tensors in channels_last layout when asked (conv nets)."""
    if isinstance(batch, torch.Tensor):
        layout = torch.channels_last if channels_last and batch.dim() == 4 else torch.preserve_format
        return batch.to(device, non_blocking=True, memory_format=layout)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device, channels_last) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    return batch


def batch_size_of(batch):
    """The number of samples in a batch: the first dimension of its first tensor."""
    while isinstance(batch, (list, tuple, dict)):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return batch.shape[0]


def concatenate(batches):
    """One batch from several of the same structure."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)
    if isinstance(first, (list, tuple)):
        return type(first)(concatenate(parts) for parts in zip(*batches))
    if isinstance(first, dict):
        return {key: concatenate([batch[key] for batch in batches]) for key in first}
    return first
