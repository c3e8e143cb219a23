"""Tests for utils/scheduler.py: the EpochLR learning-rate schedules."""
import io
import math

import pytest
import torch
from torch import nn

from utils.scheduler import EpochLR


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
