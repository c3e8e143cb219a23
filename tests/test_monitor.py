"""Tests for state/monitor.py and the EarlyStopping callback that counts on it."""
import io

import pytest
import torch

from state.monitor import Monitor
from training.callbacks import EarlyStopping


class EarlyStopper(Monitor):
    """The monitor with the decision of the EarlyStopping callback of the same patience."""

    def __init__(self, mode="min", patience=0, delta=0.0):
        super().__init__(mode, delta)
        self.callback = EarlyStopping(patience)

    @property
    def should_stop(self):
        return self.callback.should_stop(self)


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
