import argparse
import io
import json
import math
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from data.data_entry import DATASETS, build_datasets
from data.fashion_mnist import FILES, FashionMNIST, raw_dir, read_idx
from data.loader import BatchLoader, EpochBatchSampler, Subset
from data.split import sample_fraction, split_by_group
from data.synthetic_fashion_mnist import write_fashion_mnist, write_idx
from model.model_entry import MODELS, build_model
from utils.checkpoint import (load_checkpoint, load_weights, save_atomic, strip_wrapper_prefixes, weights_of,
                              write_json_atomic)
from utils.clipper import Clipper
from utils.earlystopper import EarlyStopper
from utils.errors import UserError
from utils.meter import AverageMeter, MetricSums
from utils.metrics import (classification_metrics, classification_stats, dice_iou_per_image, per_class_accuracy,
                           segmentation_metrics, segmentation_stats)
from utils.options import Parser, add_flag, explicit_options, positive_float
from utils.scheduler import EpochLR
from utils.seed import get_rng_state, set_rng_state
from utils.timestamp import make_run_dir


# --- utils/meter.py ---------------------------------------------------------------------------

def test_average_meter_weights_by_batch_size():
    meter = AverageMeter()
    meter.update(1.0, n=64)
    meter.update(3.0, n=16)
    assert meter.count == 80
    assert meter.avg == pytest.approx((64 * 1.0 + 16 * 3.0) / 80)
    assert meter.avg != pytest.approx(2.0)


def test_average_meter_accepts_tensors_and_resets():
    meter = AverageMeter()
    assert math.isnan(meter.avg)
    meter.update(torch.tensor(0.5), n=4)
    meter.update(torch.tensor(2.0))
    assert meter.avg == pytest.approx((0.5 * 4 + 2.0) / 5)
    meter.reset()
    assert meter.count == 0
    assert math.isnan(meter.avg)


def test_metric_sums_reduce_to_python_numbers_and_tensors():
    sums = MetricSums()
    sums.add({"samples": torch.tensor(3.0), "correct": torch.tensor(2), "confusion": torch.tensor([[1, 0], [1, 1]])})
    sums.add({"samples": torch.tensor(5.0), "correct": torch.tensor(4), "confusion": torch.tensor([[2, 1], [0, 2]])})
    totals = sums.reduced()
    assert set(totals) == {"samples", "correct", "confusion"}
    assert type(totals["samples"]) is float and totals["samples"] == 8.0
    assert type(totals["correct"]) is float and totals["correct"] == 6.0
    assert isinstance(totals["confusion"], torch.Tensor)
    assert totals["confusion"].dtype == torch.float64
    assert torch.equal(totals["confusion"], torch.tensor([[3.0, 1.0], [1.0, 3.0]], dtype=torch.float64))


def test_metric_sums_accumulate_in_float64():
    sums = MetricSums()
    sums.add({"total": torch.tensor(2.0 ** 24, dtype=torch.float32)})
    sums.add({"total": torch.tensor(1.0, dtype=torch.float32)})
    # In float32, 2**24 + 1 rounds back to 2**24.
    assert sums.reduced()["total"] == 2.0 ** 24 + 1


def test_metric_sums_do_not_alias_the_added_tensors():
    value = torch.tensor([1.0, 2.0], dtype=torch.float64)
    sums = MetricSums()
    sums.add({"v": value})
    value += 100
    sums.add({"v": torch.tensor([1.0, 1.0])})
    assert torch.equal(sums.reduced()["v"], torch.tensor([2.0, 3.0], dtype=torch.float64))
    assert MetricSums().reduced() == {}


# --- utils/earlystopper.py --------------------------------------------------------------------

def test_early_stopper_min_mode_stops_after_patience():
    stopper = EarlyStopper("min", patience=2)
    assert [stopper.step(value, epoch) for epoch, value in enumerate([1.0, 0.8, 0.85])] == [True, True, False]
    assert not stopper.should_stop
    assert stopper.step(0.9, 3) is False
    assert stopper.should_stop
    assert (stopper.best, stopper.best_epoch) == (0.8, 1)


def test_early_stopper_improvement_resets_the_count():
    stopper = EarlyStopper("min", patience=2)
    for epoch, value in enumerate([1.0, 1.1, 0.5, 0.6]):
        stopper.step(value, epoch)
    assert stopper.bad_epochs == 1
    assert not stopper.should_stop
    assert (stopper.best, stopper.best_epoch) == (0.5, 2)


def test_early_stopper_max_mode():
    stopper = EarlyStopper("max", patience=1)
    assert stopper.step(0.5, 0)
    assert stopper.step(0.7, 1)
    assert not stopper.step(0.6, 2)
    assert stopper.should_stop
    assert (stopper.best, stopper.best_epoch) == (0.7, 1)


@pytest.mark.parametrize("mode, values, expected", [
    ("min", [2.0, 1.75, 1.5, 1.25], [True, False, False, True]),   # must beat 2.0 by more than 0.5
    ("max", [2.0, 2.25, 2.5, 2.75], [True, False, False, True]),
])
def test_early_stopper_delta_needs_more_than_delta(mode, values, expected):
    stopper = EarlyStopper(mode, patience=10, delta=0.5)
    assert [stopper.step(value, epoch) for epoch, value in enumerate(values)] == expected
    assert stopper.best == values[-1]


def test_early_stopper_patience_zero_never_stops_but_tracks_best():
    stopper = EarlyStopper("max", patience=0)
    stopper.step(0.9, 0)
    for epoch in range(1, 100):
        stopper.step(0.1, epoch)
    assert stopper.bad_epochs == 99
    assert not stopper.should_stop
    assert (stopper.best, stopper.best_epoch) == (0.9, 0)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_early_stopper_nan_never_improves(mode):
    stopper = EarlyStopper(mode, patience=3)
    assert stopper.step(float("nan"), 0) is False
    assert stopper.best is None
    assert stopper.step(1.0, 1) is True
    assert stopper.step(float("nan"), 2) is False
    assert (stopper.best, stopper.best_epoch, stopper.bad_epochs) == (1.0, 1, 1)


def test_early_stopper_state_dict_round_trip():
    stopper = EarlyStopper("min", patience=3, delta=0.01)
    for epoch, value in enumerate([1.0, 0.5, 0.7, 0.8]):
        stopper.step(value, epoch)
    buffer = io.BytesIO()
    torch.save(stopper.state_dict(), buffer)
    buffer.seek(0)
    restored = EarlyStopper("min", patience=3, delta=0.01)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state_dict() == stopper.state_dict()
    assert restored.step(0.9, 4) is False
    assert restored.should_stop


def test_early_stopper_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        EarlyStopper("maximum")


# --- utils/clipper.py -------------------------------------------------------------------------

def _parameters_with_grads():
    first = nn.Parameter(torch.zeros(2))
    second = nn.Parameter(torch.zeros(3))
    first.grad = torch.tensor([3.0, 4.0])
    second.grad = torch.tensor([0.0, 0.0, 12.0])  # global norm sqrt(9 + 16 + 144) = 13
    return [first, second]


def _global_norm(parameters):
    return torch.cat([p.grad.reshape(-1) for p in parameters]).norm().item()


def test_clip_by_norm_scales_down_to_max_and_returns_pre_clip_norm():
    parameters = _parameters_with_grads()
    total = Clipper("norm", 6.5)(parameters)
    assert float(total) == pytest.approx(13.0)
    assert _global_norm(parameters) == pytest.approx(6.5, rel=1e-5)
    # The direction is kept: every gradient is scaled by the same factor.
    assert torch.allclose(parameters[0].grad, torch.tensor([1.5, 2.0]), rtol=1e-5)
    assert torch.allclose(parameters[1].grad, torch.tensor([0.0, 0.0, 6.0]), rtol=1e-5)


def test_clip_by_norm_leaves_small_gradients_alone():
    parameters = _parameters_with_grads()
    total = Clipper("norm", 20.0)(parameters)
    assert float(total) == pytest.approx(13.0)
    assert torch.equal(parameters[0].grad, torch.tensor([3.0, 4.0]))
    assert torch.equal(parameters[1].grad, torch.tensor([0.0, 0.0, 12.0]))


def test_clip_by_value_bounds_every_element():
    parameters = _parameters_with_grads()
    parameters[1].grad = torch.tensor([-7.0, 0.25, 12.0])
    assert Clipper("value", 2.5)(parameters) is None
    assert torch.equal(parameters[0].grad, torch.tensor([2.5, 2.5]))
    assert torch.equal(parameters[1].grad, torch.tensor([-2.5, 0.25, 2.5]))


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_clipper_zero_is_disabled(mode):
    parameters = _parameters_with_grads()
    clipper = Clipper(mode, 0.0)
    assert not clipper.enabled
    assert clipper(parameters) is None
    assert torch.equal(parameters[0].grad, torch.tensor([3.0, 4.0]))
    assert torch.equal(parameters[1].grad, torch.tensor([0.0, 0.0, 12.0]))


def test_clipper_rejects_unknown_mode():
    with pytest.raises(ValueError, match="clip mode"):
        Clipper("l2", 1.0)


# --- data/split.py ----------------------------------------------------------------------------

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


# --- data/loader.py ---------------------------------------------------------------------------

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
    for (images, labels), (slow_images, slow_labels) in zip(fast_batches, slow_batches):
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


# --- utils/timestamp.py -----------------------------------------------------------------------

def test_run_dirs_are_unique_within_one_second(tmp_path):
    output_dir = tmp_path / "runs" / "nested"
    made = [make_run_dir(output_dir) for _ in range(20)]
    assert len(set(made)) == 20
    assert all(path.is_dir() and path.parent == output_dir for path in made)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", made[0].name)
    assert len(list(output_dir.iterdir())) == 20


# --- utils/scheduler.py -----------------------------------------------------------------------

def _optimizer(*lrs):
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def _lrs(scheduler, epochs, metrics=None):
    """The first group's lr at the start of each epoch."""
    values = []
    for epoch in range(epochs):
        values.append(scheduler.get_last_lr()[0])
        scheduler.step(None if metrics is None else metrics[epoch])
    return values


@pytest.mark.parametrize("kind, options, expected", [
    ("none", {}, [1.0] * 4),
    ("none", {"warmup_epochs": 2}, [1 / 3, 2 / 3, 1.0, 1.0]),
    ("step", {"decay_epochs": (3,), "decay_rate": 0.5}, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]),
    ("step", {"decay_epochs": (3,), "decay_rate": 0.5, "warmup_epochs": 2}, [1 / 3, 2 / 3, 1.0, 0.5, 0.5, 0.5, 0.25]),
    ("multistep", {"decay_epochs": (4, 2), "decay_rate": 0.1}, [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]),
    ("cosine", {"n_epochs": 5, "warmup_epochs": 1},
     [0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0, 0.0]),
    ("cosine", {"n_epochs": 4}, [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
])
def test_epoch_lr_schedules(kind, options, expected):
    scheduler = EpochLR(_optimizer(1.0), kind, **options)
    assert _lrs(scheduler, len(expected)) == pytest.approx(expected, abs=1e-12)


def test_epoch_lr_scales_every_param_group():
    optimizer = _optimizer(0.1, 0.02)
    scheduler = EpochLR(optimizer, "step", decay_epochs=(1,), decay_rate=0.5, warmup_epochs=1)
    assert scheduler.get_last_lr() == pytest.approx([0.05, 0.01])
    scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([0.05, 0.01])  # 0.5 ** (1 // 1)
    scheduler.step()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.025, 0.005])


def test_epoch_lr_plateau_decays_after_patience_epochs_without_improvement():
    scheduler = EpochLR(_optimizer(1.0), "plateau", decay_rate=0.5, plateau_patience=1, mode="min")
    metrics = [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.7, 0.8]
    assert _lrs(scheduler, 9, metrics) == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25])


def test_epoch_lr_plateau_max_mode_and_warmup_ignores_early_metrics():
    scheduler = EpochLR(_optimizer(1.0), "plateau", warmup_epochs=2, decay_rate=0.1, plateau_patience=0, mode="max")
    # The warm-up epochs' metrics are ignored, so 0.9 does not become the best to beat.
    metrics = [0.9, 0.9, 0.5, 0.6, 0.6]
    assert _lrs(scheduler, 5, metrics) == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["cosine", "plateau", "multistep"])
def test_epoch_lr_state_dict_round_trip(kind):
    options = {"n_epochs": 8, "warmup_epochs": 1, "decay_epochs": (2, 4), "decay_rate": 0.5, "plateau_patience": 0}
    scheduler = EpochLR(_optimizer(0.3), kind, **options)
    for metric in [1.0, 0.9, 0.95, 0.97]:
        scheduler.step(metric)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    optimizer = _optimizer(0.3)
    restored = EpochLR(optimizer, kind, **options)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.get_last_lr() == scheduler.get_last_lr()
    assert optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0]
    assert scheduler.get_last_lr()[0] != pytest.approx(0.3)
    for metric in [0.99, 0.98, 0.8]:
        scheduler.step(metric)
        restored.step(metric)
        assert restored.get_last_lr() == scheduler.get_last_lr()


def test_epoch_lr_rejects_unknown_kind():
    with pytest.raises(ValueError, match="cosine"):
        EpochLR(_optimizer(0.1), "exponential")


# --- utils/options.py -------------------------------------------------------------------------

def _parser():
    parser = Parser(prog="train")
    add_flag(parser, "--viz")
    add_flag(parser, "--parallel", default=True)
    parser.add_argument("--learning_rate", type=positive_float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=8)
    group = parser.add_argument_group("task")
    group.add_argument("--dropout", type=float, default=0.2)
    return parser


@pytest.mark.parametrize("argv, expected", [
    ([], False),
    (["--viz"], True),
    (["--viz", "True"], True),
    (["--viz", "true"], True),
    (["--viz", "1"], True),
    (["--viz", "YES"], True),
    (["--viz", "false"], False),
    (["--viz", "False"], False),
    (["--viz", "0"], False),
    (["--viz=off"], False),
    (["--viz", "--batch_size", "3"], True),
])
def test_flags_mean_what_was_written(argv, expected):
    assert _parser().parse_args(argv).viz is expected


def test_flag_false_turns_a_default_on_flag_off():
    assert _parser().parse_args([]).parallel is True
    assert _parser().parse_args(["--parallel", "False"]).parallel is False


def test_bad_flag_value_exits_with_code_2(capsys):
    with pytest.raises(SystemExit) as error:
        _parser().parse_args(["--viz", "maybe"])
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert "maybe" in err and "--viz" in err


@pytest.mark.parametrize("text", ["-1", "0", "abc", "nan", "inf", ""])
def test_positive_float_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float(text)


def test_positive_float_accepts_and_parser_rejects_bad_value(capsys):
    assert positive_float("2.5e-3") == 0.0025
    with pytest.raises(SystemExit) as error:
        _parser().parse_args(["--learning_rate", "0"])
    assert error.value.code == 2
    assert "positive" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--bogus", "1"], ["--learning", "0.1"], ["--batch", "4"]],
                         ids=["unknown", "abbreviation", "abbreviation_of_int"])
def test_parser_refuses_unknown_and_abbreviated_flags(argv, capsys):
    with pytest.raises(SystemExit) as error:
        _parser().parse_args(argv)
    assert error.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_explicit_options_lists_only_what_was_given():
    parser = _parser()
    assert explicit_options(parser, []) == set()
    given = explicit_options(parser, ["--viz", "--batch_size", "8", "--dropout", "0.5"])
    assert given == {"viz", "batch_size", "dropout"}  # given even when equal to the default
    # The parser's defaults are untouched afterwards.
    args = parser.parse_args([])
    assert (args.viz, args.parallel, args.learning_rate, args.batch_size, args.dropout) == (False, True, 0.1, 8, 0.2)


def test_explicit_options_ignores_defaults_set_by_a_task():
    parser = _parser()
    parser.set_defaults(learning_rate=0.001, batch_size=64)
    parser._action_groups[-1].set_defaults(dropout=0.0)
    args = parser.parse_args([])
    assert (args.learning_rate, args.batch_size, args.dropout) == (0.001, 64, 0.0)
    assert explicit_options(parser, []) == set()
    assert explicit_options(parser, ["--viz", "--batch_size", "64"]) == {"viz", "batch_size"}
    assert parser.parse_args([]).batch_size == 64


# --- utils/seed.py ----------------------------------------------------------------------------

def _draws():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.normal(),
            torch.rand(4).tolist(), torch.randint(0, 1000, (3,)).tolist())


@pytest.fixture
def restore_global_rng():
    state = get_rng_state()
    yield
    set_rng_state(state)


def test_rng_state_restores_every_stream(restore_global_rng):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)
    np.random.normal()  # leaves a cached Gaussian in both Python and NumPy state
    state = get_rng_state()
    expected = _draws()
    assert _draws() != expected
    set_rng_state(state)
    assert _draws() == expected


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path, restore_global_rng):
    random.seed(4)
    np.random.seed(5)
    torch.manual_seed(6)
    np.random.normal()
    buffer = io.BytesIO()
    torch.save(get_rng_state(), buffer)
    save_atomic({"rng": get_rng_state()}, tmp_path / "rng.pth")
    expected = _draws()
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert _draws() == expected
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    assert _draws() == expected


# --- utils/checkpoint.py ----------------------------------------------------------------------

def _checkpoint():
    return {"model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}, "epoch": 3,
            "best": 0.25, "name": "run", "history": [1.5, None, (2, "x")], "flags": {"amp": False}}


def test_save_and_load_round_trip_without_temp_files(tmp_path):
    path = tmp_path / "last_ckpt.pth"
    save_atomic(_checkpoint(), path)
    save_atomic({**_checkpoint(), "epoch": 4}, path)  # overwrite in place
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 4
    assert loaded["best"] == 0.25 and loaded["name"] == "run" and loaded["flags"] == {"amp": False}
    assert loaded["history"] == [1.5, None, (2, "x")]
    assert torch.equal(loaded["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(loaded["model"]["b"], torch.tensor([1, 2]))
    assert [p.name for p in tmp_path.iterdir()] == ["last_ckpt.pth"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_atomic({"epoch": 1}, path)
    with pytest.raises(Exception):
        save_atomic({"epoch": 2, "hook": lambda: None}, path)
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
    with pytest.raises(UserError, match="could not write"):
        save_atomic({"epoch": 1}, tmp_path / "missing" / "ckpt.pth")


def test_write_json_atomic(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic({"accuracy": 0.5, "dir": tmp_path}, path)
    assert path.read_text().endswith("\n")
    assert json.loads(path.read_text()) == {"accuracy": 0.5, "dir": str(tmp_path)}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch_save", "pickle_dump", "torch_save_nested"])
def test_malicious_checkpoint_is_refused_without_running_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = _RunsCommand(f"touch {marker}")
    path = tmp_path / "evil.pth"
    if writer == "torch_save":
        torch.save(payload, path)
    elif writer == "torch_save_nested":
        torch.save({"model": {"w": torch.zeros(1)}, "extra": payload}, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_missing_and_foreign_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere.pth")
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UserError, match="empty.pth"):
        load_checkpoint(tmp_path / "empty.pth")
    save_atomic({"w": torch.ones(100)}, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pth"):
        load_checkpoint(tmp_path / "cut.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pth")


@pytest.mark.parametrize("text", ['{"epoch": 3}\n', "x"])
def test_json_and_short_text_files_are_user_errors(tmp_path, text):
    path = tmp_path / "notes.pth"
    path.write_text(text)
    with pytest.raises(UserError, match="notes.pth"):
        load_checkpoint(path)


@pytest.mark.parametrize("text", ["hello world\n", "this is not a checkpoint\n", "epoch: 3\n"])
def test_plain_text_file_is_a_user_error(tmp_path, text):
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(UserError):
        load_checkpoint(path)


def test_strip_wrapper_prefixes():
    assert strip_wrapper_prefixes({"module.a": 1, "module.e.module.f": 2}) == {"a": 1, "e.module.f": 2}
    assert strip_wrapper_prefixes({"module._orig_mod.a": 1, "module._orig_mod.b": 2}) == {"a": 1, "b": 2}
    assert strip_wrapper_prefixes({"_orig_mod.module.a": 1}) == {"a": 1}
    # A prefix that only some keys carry is a name, not a wrapper.
    assert strip_wrapper_prefixes({"module.a": 1, "modules.g": 2}) == {"module.a": 1, "modules.g": 2}


def _small_model(seed, hidden=3, extra_layer=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2)]
    if extra_layer:
        layers.append(nn.Linear(2, 2))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_load_weights_strips_wrapper_prefixes(prefix, restore_global_rng):
    source = _small_model(0)
    wrapped = {prefix + key: value for key, value in source.state_dict().items()}
    target = _small_model(1)
    load_weights(target, wrapped, "ckpt.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_load_weights_refuses_another_architecture(restore_global_rng):
    source = _small_model(0).state_dict()
    source["extra.weight"] = torch.zeros(2)
    target = _small_model(1, hidden=5, extra_layer=True)
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(UserError) as error:
        load_weights(target, source, "other.pth")
    message = str(error.value)
    assert "other.pth" in message
    assert re.search(r"missing: 3\.weight, 3\.bias", message)
    assert re.search(r"unexpected: extra\.weight", message)
    assert re.search(r"shape mismatch: 0\.weight \(3, 4\) vs \(5, 4\)", message)
    assert "2.weight (2, 3) vs (2, 5)" in message
    assert all(torch.equal(target.state_dict()[key], value) for key, value in before.items())


def test_load_weights_partial_loads_what_fits(restore_global_rng):
    source = _small_model(0, hidden=3).state_dict()
    source = {"module." + key: value for key, value in source.items()}
    target = _small_model(1, hidden=3, extra_layer=True)
    target[2] = nn.Linear(3, 7)
    target[3] = nn.Linear(7, 2)
    before = {key: value.clone() for key, value in target.state_dict().items()}
    messages = []
    load_weights(target, source, "ckpt.pth", partial=True, log=messages.append)
    loaded = target.state_dict()
    assert torch.equal(loaded["0.weight"], source["module.0.weight"])
    assert torch.equal(loaded["0.bias"], source["module.0.bias"])
    for key in ("2.weight", "2.bias", "3.weight", "3.bias"):
        assert torch.equal(loaded[key], before[key])
    assert len(messages) == 1 and "2.weight" in messages[0] and "3.bias" in messages[0]


def test_load_weights_into_a_model_with_a_submodule_named_module(restore_global_rng):
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    torch.manual_seed(0)
    source, target = Wrapped(), Wrapped()
    load_weights(target, source.state_dict(), "ckpt.pth")
    assert torch.equal(target.module.weight, source.module.weight)


def test_weights_of_finds_the_state_dict():
    weights = {"w": torch.zeros(1)}
    assert weights_of({"model": weights, "epoch": 1}) is weights
    assert weights_of({"state_dict": weights}) is weights
    assert weights_of(weights) is weights
    with pytest.raises(UserError, match="no model weights"):
        weights_of({"epoch": 1})


# --- utils/metrics.py -------------------------------------------------------------------------

def _classification_batch():
    logits = torch.tensor([[5.0, 1.0, 0.0],    # target 0, predicted 0
                           [0.0, 2.0, 3.0],    # target 1, predicted 2, class 1 second
                           [1.0, 0.0, 4.0],    # target 2, predicted 2
                           [0.5, 3.0, 0.0]])   # target 1, predicted 1
    return logits, torch.tensor([0, 1, 2, 1])


def test_classification_stats_counts():
    logits, target = _classification_batch()
    stats = classification_stats(logits, target, topk=(2, 3, 5))
    assert set(stats) == {"samples", "correct_top2", "confusion"}  # top-k only below n_classes
    assert stats["samples"] == 4
    assert stats["confusion"].trace().item() == 3
    assert stats["correct_top2"].item() == 4
    assert torch.equal(stats["confusion"], torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1]]))


def test_classification_metrics_over_batches():
    logits, target = _classification_batch()
    sums = MetricSums()
    sums.add(classification_stats(logits, target, topk=(2,)))
    # Two samples of class 0, both wrong, and class 0 outside both top-2 sets.
    sums.add(classification_stats(torch.tensor([[0.0, 0.5, 1.0], [0.2, 1.0, 0.5]]), torch.tensor([0, 0]), topk=(2,)))
    totals = sums.reduced()
    metrics = classification_metrics(totals)
    assert metrics == pytest.approx({"accuracy": 3 / 6, "top2_accuracy": 4 / 6})
    assert per_class_accuracy(totals["confusion"]) == pytest.approx([1 / 3, 1 / 2, 1.0])


def test_per_class_accuracy_of_an_absent_class_is_zero():
    assert per_class_accuracy([[2, 0], [0, 0]]) == [1.0, 0.0]


def _mask(shape, *pixels):
    mask = torch.zeros(shape, dtype=torch.bool)
    for row, column in pixels:
        mask[row, column] = True
    return mask


def test_dice_iou_per_image():
    shape = (4, 4)
    square = _mask(shape, (0, 0), (0, 1), (1, 0), (1, 1))
    predicted = torch.stack([
        square,                                             # perfect
        square,                                             # disjoint
        torch.zeros(shape, dtype=torch.bool),               # both empty
        torch.zeros(shape, dtype=torch.bool),               # missed everything
        square,                                             # 3 of 4 predicted pixels in a 6-pixel target
    ])
    target = torch.stack([
        square,
        _mask(shape, (3, 3), (2, 3)),
        torch.zeros(shape, dtype=torch.bool),
        square,
        _mask(shape, (0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (3, 0)),
    ])
    dice, iou = dice_iou_per_image(predicted, target)
    assert dice.tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0, 2 * 3 / (4 + 6)])
    assert iou.tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0, 3 / 7])


def test_segmentation_stats_single_channel():
    target = torch.zeros(2, 1, 3, 3, dtype=torch.long)
    target[0, 0, 0, :] = 1               # 3 pixels
    predicted = torch.zeros(2, 3, 3, dtype=torch.bool)
    predicted[0, 0, :2] = True           # 2 of them, nothing else
    predicted[1, 2, 2] = True            # image 1 has an empty target
    logits = torch.where(predicted, 8.0, -8.0)[:, None]
    stats = segmentation_stats(logits, target)
    assert stats["images"] == 2
    assert stats["dice_sum"].item() == pytest.approx(2 * 2 / 5 + 0.0)
    assert stats["iou_sum"].item() == pytest.approx(2 / 3 + 0.0)
    assert stats["pixels"] == 18
    assert stats["correct_pixels"].item() == 16
    metrics = segmentation_metrics(_summed(stats))
    assert metrics["dice"] == pytest.approx(0.4)
    assert metrics["iou"] == pytest.approx(1 / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(16 / 18)


def _summed(stats):
    sums = MetricSums()
    sums.add(stats)
    return sums.reduced()


def test_segmentation_stats_multi_class_uses_argmax_foreground():
    target = torch.tensor([[[0, 2], [1, 0]]])          # classes 1 and 2 are both foreground
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logits[0, 2] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    logits[0, 1, 1, 1] = 1.0                           # a false positive
    stats = segmentation_stats(logits, target)
    # predicted foreground (0,1), (1,0), (1,1); target foreground (0,1), (1,0)
    assert stats["dice_sum"].item() == pytest.approx(2 * 2 / 5)
    assert stats["iou_sum"].item() == pytest.approx(2 / 3)
    assert stats["correct_pixels"].item() == 3


# --- model/model_entry.py and data/data_entry.py ----------------------------------------------

def test_model_selector_builds_vanilla(restore_global_rng):
    assert {"Vanilla", "UNet", "UNet++"} <= set(MODELS)
    model = build_model(argparse.Namespace(model_type="Vanilla", dropout=0.0)).eval()
    with torch.no_grad():
        logits = model(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 10)


@pytest.mark.parametrize("model_type", ["UNet", "UNet++"])
def test_model_selector_builds_segmentation_models(model_type, restore_global_rng):
    args = argparse.Namespace(model_type=model_type, n_channels=3, n_classes=1, depth=2, base_width=4,
                              deep_supervision=False)
    model = build_model(args).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)


def test_dataset_selector(tmp_path):
    assert {"FashionMNIST", "Carvana"} <= set(DATASETS)
    write_fashion_mnist(tmp_path, n_train=30, n_test=10)
    args = argparse.Namespace(data_type="FashionMNIST", data_dir=tmp_path, download=False)
    pool, test_pool = build_datasets(args, log=lambda message: None)
    assert (len(pool), len(test_pool)) == (30, 10)


# --- data/fashion_mnist.py --------------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(5, 28, 28), (7,)])
def test_read_idx_round_trip(tmp_path, compress, shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / ("data.idx.gz" if compress else "data.idx")
    write_idx(path, array, compress)
    loaded = read_idx(path)
    assert loaded.dtype == torch.uint8
    assert np.array_equal(loaded.numpy(), array)


@pytest.mark.parametrize("keep", [16 + 2 * 784 - 1, 16 + 700, 14], ids=["last_byte", "half", "in_header"])
def test_read_idx_truncated_file_names_the_path(tmp_path, keep):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:keep])  # the header is 16 bytes
    with pytest.raises(UserError, match="truncated") as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_truncated_gzip_is_a_user_error(tmp_path):
    path = tmp_path / "labels.gz"
    write_idx(path, np.zeros(1000, dtype=np.uint8), compress=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes((1234).to_bytes(4, "big") + bytes(20))
    with pytest.raises(UserError, match="magic number 1234"):
        read_idx(path)
    path.write_bytes(b"ab")
    with pytest.raises(UserError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_packed_and_unpacked_files(tmp_path, compress):
    folder = write_fashion_mnist(tmp_path, n_train=50, n_test=20, compress=compress)
    suffix = ".gz" if compress else ""
    assert all((folder / f"{name}{suffix}").is_file() for pair in FILES.values() for name in pair)
    train, test = FashionMNIST(tmp_path, train=True), FashionMNIST(tmp_path, train=False)
    assert (len(train), len(test)) == (50, 20)
    assert train.images.shape == (50, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and int(train.labels.max()) < 10
    images, labels = train.get_batch(torch.tensor([4, 0]))
    assert torch.equal(images[1], train[0][0]) and labels[0] == train[4][1]
    assert not torch.equal(train.images[:20], test.images)


def test_fashion_mnist_same_data_packed_or_not(tmp_path):
    write_fashion_mnist(tmp_path / "packed", n_train=10, n_test=5, compress=True)
    write_fashion_mnist(tmp_path / "unpacked", n_train=10, n_test=5, compress=False)
    packed, unpacked = FashionMNIST(tmp_path / "packed"), FashionMNIST(tmp_path / "unpacked")
    assert torch.equal(packed.images, unpacked.images)
    assert torch.equal(packed.labels, unpacked.labels)


def test_fashion_mnist_missing_folder_or_file(tmp_path):
    with pytest.raises(UserError, match="--download"):
        FashionMNIST(tmp_path / "nothing_here")
    folder = write_fashion_mnist(tmp_path, n_train=5, n_test=5, compress=False)
    (folder / FILES["test"][1]).unlink()
    with pytest.raises(UserError, match=FILES["test"][1]) as error:
        FashionMNIST(tmp_path, train=False)
    assert "--download" in str(error.value)
    assert len(FashionMNIST(tmp_path, train=True)) == 5
    assert raw_dir(tmp_path) == Path(tmp_path) / "FashionMNIST" / "raw"


def test_fashion_mnist_swapped_or_mismatched_files(tmp_path):
    folder = write_fashion_mnist(tmp_path, n_train=6, n_test=5, compress=False)
    images, labels = FILES["train"]
    write_idx(folder / labels, np.zeros(4, dtype=np.uint8), compress=False)
    with pytest.raises(UserError, match="6 images but"):
        FashionMNIST(tmp_path)
    write_idx(folder / labels, np.full(6, 12, dtype=np.uint8), compress=False)
    with pytest.raises(UserError, match="label 12"):
        FashionMNIST(tmp_path)
    (folder / labels).write_bytes((folder / images).read_bytes())
    with pytest.raises(UserError, match="swapped"):
        FashionMNIST(tmp_path)


def test_metric_sums_mix_tensors_and_counts_and_round_trip():
    sums = MetricSums()
    sums.add({"correct": torch.tensor(3), "samples": 4, "confusion": torch.eye(2, dtype=torch.long)})
    sums.add({"correct": torch.tensor(1), "samples": 2, "confusion": torch.eye(2, dtype=torch.long)})
    restored = MetricSums()
    restored.load_state_dict(sums.state_dict(), "cpu")
    for totals in (sums.reduced(), restored.reduced()):
        assert totals["correct"] == 4.0 and totals["samples"] == 6
        assert torch.equal(totals["confusion"], 2 * torch.eye(2, dtype=torch.float64))
