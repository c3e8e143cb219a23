"""Tests for state/progress.py: the counters of a run, its epoch sums, when it is finished, its summary
in metrics.json, and its state through a checkpoint."""
import io

import torch

from state.checkpoint import KEYS
from state.progress import TrainingProgress
from state.status import Status


def step_stats(correct, samples):
    return {"correct": torch.tensor(float(correct)), "loss_sum": torch.tensor(0.5 * samples), "loss_samples": samples}


def record(epoch, accuracy):
    return {"epoch": epoch, "val/accuracy": accuracy, "lr": 0.001}


def test_step_done_counts_steps_and_sums_the_group_statistics():
    progress = TrainingProgress("max")
    progress.step_done(2, [step_stats(3, 8), step_stats(5, 8)])  # a step of two micro-batches
    progress.step_done(3, [step_stats(1, 4)])
    assert (progress.epoch, progress.batches_done, progress.global_step) == (0, 3, 2)
    assert progress.position == (0, 3, 2)
    assert progress.epoch_sums.reduced() == {"correct": 9.0, "loss_sum": 10.0, "loss_samples": 20}


def test_end_epoch_closes_the_epoch_and_resets_its_counters_and_sums():
    progress = TrainingProgress("max")
    progress.step_done(4, [step_stats(3, 8)])
    assert progress.end_epoch(record(1, 0.7), "val/accuracy") is True
    assert (progress.epoch, progress.batches_done, progress.global_step) == (1, 0, 1)
    assert progress.epoch_sums.reduced() == {}
    assert progress.history == [record(1, 0.7)]

    progress.step_done(4, [step_stats(2, 8)])
    assert progress.end_epoch(record(2, 0.6), "val/accuracy") is False  # lower, in max mode
    assert (progress.epoch, progress.batches_done, progress.global_step) == (2, 0, 2)
    assert (progress.monitor.best, progress.monitor.best_epoch, progress.monitor.bad_epochs) == (0.7, 1, 1)
    assert [entry["epoch"] for entry in progress.history] == [1, 2]


def test_is_finished_after_n_epoch_or_a_stop():
    progress = TrainingProgress()
    assert not progress.is_finished(2)
    progress.end_epoch(record(1, 0.5), "val/accuracy")
    assert not progress.is_finished(2) and progress.is_finished(1)
    progress.stop(Status.EARLY_STOPPED)
    assert progress.is_finished(2) and progress.is_finished(100)
    assert progress.stopped_by == Status.EARLY_STOPPED


def test_summary_holds_the_run_and_the_test_only_when_given(tmp_path):
    progress = TrainingProgress("max")
    progress.step_done(1, [step_stats(1, 2)])
    progress.skipped_steps, progress.nonfinite_batches = 1, 2
    progress.end_epoch(record(1, 0.7), "val/accuracy")
    progress.end_epoch(record(2, 0.6), "val/accuracy")
    running = progress.summary("val/accuracy", "max", Status.RUNNING)
    assert running == {"monitor": "val/accuracy", "monitor_mode": "max", "best_epoch": 1, "best_value": 0.7,
                       "status": "running", "epochs_done": 2, "global_step": 1, "skipped_steps": 1,
                       "nonfinite_batches": 2, "history": [record(1, 0.7), record(2, 0.6)]}
    tested = tmp_path / "Vanilla_best_ckpt.pth"
    done = progress.summary("val/accuracy", "max", Status.COMPLETED, {"test/accuracy": 0.65}, tested)
    assert done == {**running, "status": "completed", "test": {"test/accuracy": 0.65}, "test_checkpoint": str(tested)}


def test_state_dict_round_trips_through_a_weights_only_load_with_the_epoch_sums():
    progress = TrainingProgress("max", delta=0.01)
    progress.step_done(2, [step_stats(3, 8)])
    progress.end_epoch(record(1, 0.7), "val/accuracy")
    progress.end_epoch(record(2, 0.69), "val/accuracy")
    progress.step_done(3, [step_stats(5, 8), step_stats(4, 6)])  # the partial third epoch
    progress.skipped_steps, progress.nonfinite_batches = 1, 3
    progress.stop(Status.PRUNED)
    state = progress.state_dict()
    assert set(state) | {"epoch_sums"} <= KEYS  # the checkpoint keeps every entry
    buffer = io.BytesIO()
    torch.save({**state, "epoch_sums": [progress.epoch_sums.state_dict()]}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    restored = TrainingProgress("max", delta=0.01)
    restored.load_state_dict(loaded, loaded["epoch_sums"][0], "cpu")
    assert restored.position == progress.position == (2, 3, 2)
    assert (restored.skipped_steps, restored.nonfinite_batches, restored.stopped_by) == (1, 3, Status.PRUNED)
    assert restored.history == progress.history
    assert restored.monitor.state_dict() == progress.monitor.state_dict()
    assert restored.epoch_sums.reduced() == progress.epoch_sums.reduced() == \
        {"correct": 9.0, "loss_sum": 7.0, "loss_samples": 14}
    assert restored.state_dict() == state
    # Both go on alike: the monitor's best and its delta decide the next epoch the same way.
    for both in (progress, restored):
        both.stopped_by = None
        assert both.end_epoch(record(3, 0.705), "val/accuracy") is False  # within delta of 0.7
        assert both.monitor.bad_epochs == 2
