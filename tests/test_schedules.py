"""Tests for training/schedules.py: the learning-rate schedules, per epoch and per optimizer step."""
import io
import math

import pytest
import torch
from torch import nn

from training.schedules import LRSchedule


def lrs_of(schedule):
    """The lr of each parameter group that `schedule` has set."""
    return [group["lr"] for group in schedule.optimizer.param_groups]


def _optimizer(*lrs):
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def EpochLR(optimizer, kind="none", warmup_epochs=0, **options):
    """A per-epoch schedule, as the trainer builds it for --lr_interval epoch."""
    return LRSchedule(optimizer, kind, interval="epoch", warmup=warmup_epochs, **options)


def _step(scheduler, metric=None):
    """The end of an epoch, as the trainer does it: plateau's bookkeeping, then the next epoch's lr."""
    scheduler.end_epoch(metric)
    scheduler.set_position(scheduler.epoch + 1, 0)


def _lrs(scheduler, epochs, metrics=None):
    """The first group's lr at the start of each epoch."""
    values = []
    for epoch in range(epochs):
        values.append(lrs_of(scheduler)[0])
        _step(scheduler, None if metrics is None else metrics[epoch])
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
    assert lrs_of(scheduler) == pytest.approx([0.05, 0.01])
    _step(scheduler)
    assert lrs_of(scheduler) == pytest.approx([0.05, 0.01])  # 0.5 ** (1 // 1)
    _step(scheduler)
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
    assert lrs_of(scheduler)[0] == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["cosine", "plateau", "multistep"])
def test_epoch_lr_state_dict_round_trip(kind):
    options = {"n_epochs": 8, "warmup_epochs": 1, "decay_epochs": (2, 4), "decay_rate": 0.5, "plateau_patience": 0}
    scheduler = EpochLR(_optimizer(0.3), kind, **options)
    for metric in [1.0, 0.9, 0.95, 0.97]:
        _step(scheduler, metric)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    optimizer = _optimizer(0.3)
    restored = EpochLR(optimizer, kind, **options)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored.set_position(scheduler.epoch, 0)
    assert lrs_of(restored) == lrs_of(scheduler)
    assert optimizer.param_groups[0]["lr"] == lrs_of(scheduler)[0]
    assert lrs_of(scheduler)[0] != pytest.approx(0.3)
    for metric in [0.99, 0.98, 0.8]:
        _step(scheduler, metric)
        _step(restored, metric)
        assert lrs_of(restored) == lrs_of(scheduler)


def test_epoch_lr_rejects_unknown_kind():
    with pytest.raises(ValueError, match="cosine"):
        EpochLR(_optimizer(0.1), "exponential")


def _step_lrs(scheduler, steps, steps_per_epoch):
    """The lr each optimizer step uses, as the trainer sets it."""
    values = []
    for step in range(steps):
        scheduler.set_position(step // steps_per_epoch, step)
        values.append(lrs_of(scheduler)[0])
    return values


def test_per_step_cosine_and_linear_warm_up_smoothly_and_end_at_min_lr():
    cosine = LRSchedule(_optimizer(1.0), "cosine", n_epochs=2, steps_per_epoch=5, interval="step", warmup=2,
                        min_ratio=0.1)
    expected = [1 / 3, 2 / 3] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert _step_lrs(cosine, 10, 5) == pytest.approx(expected, abs=1e-12)
    linear = LRSchedule(_optimizer(2.0), "linear", n_epochs=1, steps_per_epoch=4, interval="step")
    assert _step_lrs(linear, 5, 4) == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.0])


def test_per_step_step_decay_counts_epochs_and_warmup_counts_steps():
    scheduler = LRSchedule(_optimizer(1.0), "step", n_epochs=3, steps_per_epoch=3, interval="step", warmup=2,
                           decay_epochs=(1,), decay_rate=0.5)
    assert _step_lrs(scheduler, 7, 3) == pytest.approx([1 / 3, 2 / 3, 1.0, 0.5, 0.5, 0.5, 0.25])


def test_onecycle_rises_from_a_25th_to_the_peak_then_anneals():
    scheduler = LRSchedule(_optimizer(1.0), "onecycle", n_epochs=2, steps_per_epoch=50, interval="step")
    lrs = _step_lrs(scheduler, 101, 50)
    assert lrs[0] == pytest.approx(1 / 25) and lrs[30] == pytest.approx(1.0) and max(lrs) == lrs[30]
    assert all(a < b for a, b in zip(lrs[:30], lrs[1:31])) and all(a > b for a, b in zip(lrs[30:100], lrs[31:101]))
    assert lrs[100] == pytest.approx(1 / 25 / 1e4)


def test_the_lr_depends_on_the_position_alone():
    """Where a resumed run restarts, the lr is the uninterrupted run's: nothing is accumulated."""
    options = {"n_epochs": 3, "steps_per_epoch": 7, "interval": "step", "warmup": 4, "min_ratio": 0.01}
    for kind in ("cosine", "linear", "onecycle", "multistep"):
        straight = _step_lrs(LRSchedule(_optimizer(0.5), kind, **options), 21, 7)
        resumed = LRSchedule(_optimizer(0.5), kind, **options)
        resumed.load_state_dict(LRSchedule(_optimizer(0.5), kind, **options).state_dict())
        assert [(resumed.set_position(s // 7, s), lrs_of(resumed)[0])[1] for s in range(9, 21)] == straight[9:]
