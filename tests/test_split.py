"""Tests for data/split.py: seeded, group-aware train/val/test splits and sampling."""
import re

import pytest
import torch

from data.split import sample_fraction, split_by_group
from utils.errors import UserError


def _assert_partition(parts, indices):
    joined = torch.cat(list(parts.values()))
    assert len(joined) == len(indices), "parts overlap or miss indices"
    assert sorted(joined.tolist()) == sorted(torch.as_tensor(indices).tolist())


def test_split_without_groups_sizes_and_partition():
    parts = split_by_group(torch.arange(100), {"val": 0.1, "test": 0.2}, seed=0)
    assert list(parts) == ["val", "test", "train"]
    assert [len(parts[name]) for name in ("val", "test", "train")] == [10, 20, 70]
    _assert_partition(parts, torch.arange(100))


def test_split_keeps_only_the_given_indices():
    indices = torch.arange(3, 200, 3)
    parts = split_by_group(indices, {"val": 0.25}, seed=1)
    _assert_partition(parts, indices)
    assert all(int(i) % 3 == 0 and i >= 3 for part in parts.values() for i in part)


def test_split_is_seeded():
    ratios = {"val": 0.2, "test": 0.1}
    first = split_by_group(torch.arange(60), ratios, seed=7)
    again = split_by_group(torch.arange(60), ratios, seed=7)
    other = split_by_group(torch.arange(60), ratios, seed=8)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.equal(first[name], other[name]) for name in first)


@pytest.mark.parametrize("group_of", [lambda i: f"car{i // 4}", lambda i: f"car{i % 25}"],
                         ids=["contiguous_views", "interleaved_views"])
def test_split_never_splits_a_group(group_of):
    groups = [group_of(i) for i in range(100)]  # 25 cars, 4 views each
    parts = split_by_group(torch.arange(100), {"val": 0.2, "test": 0.2}, seed=3, groups=groups)
    _assert_partition(parts, torch.arange(100))
    part_of_group = {}
    for name, part in parts.items():
        for index in part.tolist():
            assert part_of_group.setdefault(groups[index], name) == name, f"{groups[index]} straddles parts"
    # 20% of 25 groups is 5 groups of 4 views.
    assert len(parts["val"]) == 20 and len(parts["test"]) == 20 and len(parts["train"]) == 60


def test_split_empty_part_names_the_option():
    with pytest.raises(UserError, match="--val_ratio"):
        split_by_group(torch.arange(10), {"val": 0.01}, seed=0)
    groups = [i // 4 for i in range(40)]
    with pytest.raises(UserError, match="--test_ratio"):
        split_by_group(torch.arange(40), {"val": 0.3, "test": 0.02}, seed=0, groups=groups)


@pytest.mark.parametrize("ratios", [{"val": 0.5, "test": 0.5}, {"val": 0.6, "test": 0.5}, {"val": 1.0}])
def test_split_ratios_summing_to_one_or_more_are_refused(ratios):
    with pytest.raises(UserError, match="train"):
        split_by_group(torch.arange(50), ratios, seed=0)


def test_split_accepts_the_minimum_ratio_its_error_suggests():
    with pytest.raises(UserError) as error:
        split_by_group(torch.arange(6), {"val": 0.01}, seed=0)
    suggested = float(re.search(r"at least ([0-9.e-]+)", str(error.value)).group(1))
    parts = split_by_group(torch.arange(6), {"val": suggested}, seed=0)
    assert len(parts["val"]) >= 1


def test_sample_fraction_without_groups():
    kept = sample_fraction(torch.arange(200), 0.25, seed=0)
    assert len(kept) == 50
    assert len(set(kept.tolist())) == 50
    assert torch.equal(kept, sample_fraction(torch.arange(200), 0.25, seed=0))
    assert not torch.equal(kept, sample_fraction(torch.arange(200), 0.25, seed=1))
    assert torch.equal(sample_fraction(torch.arange(5, 9), 1.0, seed=0), torch.arange(5, 9))


def test_sample_fraction_keeps_whole_groups_and_at_least_one():
    groups = [f"car{i // 4}" for i in range(200)]  # 50 cars
    kept = sample_fraction(torch.arange(200), 0.3, seed=2, groups=groups)
    assert len(kept) == 15 * 4
    chosen = {groups[i] for i in kept.tolist()}
    assert len(chosen) == 15
    assert sorted(kept.tolist()) == sorted(i for i in range(200) if groups[i] in chosen)
    tiny = sample_fraction(torch.arange(200), 0.001, seed=2, groups=groups)
    assert len(tiny) == 4 and len({groups[i] for i in tiny.tolist()}) == 1


def test_sample_fraction_of_a_subset_uses_the_groups_of_those_indices():
    groups = [f"car{i // 4}" for i in range(200)]
    indices = torch.arange(100, 200)  # cars 25..49
    kept = sample_fraction(indices, 0.2, seed=0, groups=groups)
    assert len(kept) == 5 * 4
    assert all(100 <= i < 200 for i in kept.tolist())
