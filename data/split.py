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
    if n_groups < len(names):  # no ratio can help: each part needs one of them
        raise UserError(f"only {n_groups} {unit} to split into {', '.join(names)}; use more data (a larger "
                        "--train_val_sample_rate, or the full dataset)")
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


def make_split(pool, test_pool, ratios, seed, train_val_sample_rate=1.0, test_sample_rate=1.0):
    """The run's split, as split.json stores it: train / val (/ test) indices dealt from `pool` by
    `ratios` ({"val": r} and, when there is no `test_pool`, "test"), and the test set from
    `test_pool` when there is one; with sample names when the datasets have them."""
    groups = getattr(pool, "groups", None)
    if test_pool is None and "test" not in ratios:
        raise UserError("the dataset has no test set of its own, and the task gives no test ratio to carve one "
                        "from the pool (its split_ratios() must return a 'test' entry)")
    indices = sample_fraction(torch.arange(len(pool)), train_val_sample_rate, seed, groups)
    parts = split_by_group(indices, {name: value for name, value in ratios.items()
                                     if test_pool is None or name != "test"}, seed, groups)
    if test_pool is not None:
        parts["test"] = sample_fraction(torch.arange(len(test_pool)), test_sample_rate, seed + 1,
                                        getattr(test_pool, "groups", None))
    else:
        parts["test"] = sample_fraction(parts["test"], test_sample_rate, seed + 1, groups)
    split = {"seed": seed, "test_from": "pool" if test_pool is None else "test_set"}
    for phase in ("train", "val", "test"):
        source = test_pool if phase == "test" and test_pool is not None else pool
        split[phase] = parts[phase].tolist()
        names = getattr(source, "names", None)
        if names is not None:
            split[f"{phase}_names"] = [names[i] for i in split[phase]]
    return split


def split_indices(source, split, phase):
    """Indices of a saved split's `phase` in `source`, matched by sample name when it has names."""
    names = getattr(source, "names", None)
    if names is not None and f"{phase}_names" in split:
        position = {name: i for i, name in enumerate(names)}
        missing = [name for name in split[f"{phase}_names"] if name not in position]
        if missing:
            raise UserError(f"{len(missing)} {phase} samples of the saved split are not in the dataset "
                            f"(first: {missing[0]}); is --data_dir the folder the run used?")
        return [position[name] for name in split[f"{phase}_names"]]
    indices = split[phase]
    if indices and max(indices) >= len(source):
        raise UserError(f"the saved {phase} split indexes sample {max(indices)} but the dataset has {len(source)}; "
                        "is --data_dir the folder the run used?")
    return indices
