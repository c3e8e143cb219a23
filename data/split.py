"""Seeded splits by group: samples that share a group (the views of one car) stay together."""
import torch

from utils.errors import UserError


def _group_ids(size, groups):
    if groups is None:
        return torch.arange(size), size
    first_seen = {}
    ids = torch.tensor([first_seen.setdefault(group, len(first_seen)) for group in groups], dtype=torch.long)
    return ids, len(first_seen)


def sample_fraction(indices, fraction, seed, groups=None, what="samples"):
    """A seeded subset of `indices` keeping `fraction` of their groups (at least one)."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    if fraction >= 1.0:
        return indices
    members = None if groups is None else [groups[i] for i in indices.tolist()]
    ids, n_groups = _group_ids(len(indices), members)
    keep = max(1, round(fraction * n_groups))
    chosen = torch.zeros(n_groups, dtype=torch.bool)
    chosen[torch.randperm(n_groups, generator=torch.Generator().manual_seed(seed))[:keep]] = True
    return indices[chosen[ids]]


def split_by_group(indices, ratios, seed, groups=None):
    """Deal `indices` into disjoint parts: `ratios` maps part names to fractions of the groups,
    the rest goes to "train". A part that a ratio leaves empty is an error naming the ratio."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    members = None if groups is None else [groups[i] for i in indices.tolist()]
    ids, n_groups = _group_ids(len(indices), members)
    order = torch.randperm(n_groups, generator=torch.Generator().manual_seed(seed))
    unit = "groups" if groups is not None else "samples"
    assignment = torch.empty(n_groups, dtype=torch.long)
    start, names = 0, list(ratios) + ["train"]
    for part, (name, value) in enumerate(ratios.items()):
        count = round(value * n_groups)
        if count == 0:
            raise UserError(f"--{name}_ratio {value} leaves the {name} split empty ({n_groups} {unit} to split); "
                            f"expected a ratio of at least {1 / n_groups:.3g}")
        assignment[order[start:start + count]] = part
        start += count
    if start >= n_groups:
        raise UserError(f"ratios {', '.join(f'--{n}_ratio {v}' for n, v in ratios.items())} leave the train "
                        f"split empty ({n_groups} {unit}); expected them to sum to less than 1")
    assignment[order[start:]] = len(ratios)
    per_sample = assignment[ids]
    return {name: indices[per_sample == part] for part, name in enumerate(names)}
