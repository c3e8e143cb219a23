"""Where a training run stands: the counters, the history, the partial epoch, the monitored metric
and, when a callback ended training early, why.

One object, created with the trainer, saved and restored through one `state_dict`, so that no
part of the progress can be restored without the rest.
"""
from state.metric_sums import MetricSums
from state.monitor import Monitor


class TrainingProgress:
    """Counters of a run, the per-epoch history, and the monitored metric's tracker.

    `epoch` counts completed epochs. `batches_done` counts the micro-batches of the epoch in
    progress that finished optimizer steps have consumed: the resume point. `epoch_sums` holds
    this process's statistics of those batches; under DDP each process has its own.
    """

    def __init__(self, monitor_mode="min", delta=0.0):
        self.monitor = Monitor(monitor_mode, delta)
        self.epoch = 0
        self.batches_done = 0
        self.global_step = 0  # optimizer steps
        self.skipped_steps = 0  # steps not taken: inf/NaN gradients (fp16), or every batch skipped
        self.nonfinite_batches = 0  # batches skipped with --skip_nonfinite
        self.history = []  # one record per completed epoch
        self.epoch_sums = MetricSums()
        self.stopped_by = None  # the status a callback ended training with (early_stopped, pruned), else None

    def is_finished(self, n_epoch):
        return self.epoch >= n_epoch or self.stopped_by is not None

    def location(self, n_batches):
        """The epoch, the batch of its `n_batches` and the optimizer step reached, as the progress lines name them."""
        return f"epoch {self.epoch + 1} batch {self.batches_done}/{n_batches} step {self.global_step}"

    def where(self, n_epoch, n_batches):
        """Where the run is, for a message: in the test, or at a position in training."""
        return f"in the test, after step {self.global_step}" if self.is_finished(n_epoch) else f"at {self.location(n_batches)}"

    def stop(self, status):
        """End training after this epoch; `status` (a Status) says why, in metrics.json."""
        self.stopped_by = status

    def step_done(self, batches_done, group_stats):
        """An optimizer step finished after `batches_done` micro-batches of the epoch."""
        for stats in group_stats:
            self.epoch_sums.add(stats)
        self.global_step += 1
        self.batches_done = batches_done

    def end_epoch(self, record, monitor):
        """Close the epoch with its `record` of metrics; return True when `record[monitor]` is a new best."""
        improved = self.monitor.step(record[monitor], self.epoch + 1)
        self.history.append(record)
        self.epoch += 1
        self.batches_done = 0
        self.epoch_sums = MetricSums()
        return improved

    @property
    def position(self):
        """What identifies a saved state: equal positions hold equal training states."""
        return self.epoch, self.batches_done, self.global_step

    def summary(self, monitor, monitor_mode, status, test=None, tested=None):
        """metrics.json: the history, the best epoch, the status and (at the end) the test metrics."""
        summary = {"monitor": monitor, "monitor_mode": monitor_mode, "best_epoch": self.monitor.best_epoch,
                   "best_value": self.monitor.best, "status": status, "epochs_done": self.epoch,
                   "global_step": self.global_step, "skipped_steps": self.skipped_steps,
                   "nonfinite_batches": self.nonfinite_batches, "history": self.history}
        if test is not None:
            summary["test"] = test
            summary["test_checkpoint"] = str(tested)
        return summary

    def state_dict(self):
        """The shared progress; `epoch_sums` are per process and saved by the caller."""
        return {"epoch": self.epoch, "batches_done": self.batches_done, "global_step": self.global_step,
                "skipped_steps": self.skipped_steps, "nonfinite_batches": self.nonfinite_batches,
                "history": list(self.history), "monitor": self.monitor.state_dict(), "stopped_by": self.stopped_by,
                "best_metric": self.monitor.best, "best_epoch": self.monitor.best_epoch}

    def load_state_dict(self, state, epoch_sums, device):
        self.epoch = state["epoch"]
        self.batches_done = state["batches_done"]
        self.global_step = state["global_step"]
        self.skipped_steps = state["skipped_steps"]
        self.nonfinite_batches = state["nonfinite_batches"]
        self.history = list(state["history"])
        self.stopped_by = state["stopped_by"]
        self.monitor.load_state_dict(state["monitor"])
        self.epoch_sums = MetricSums()
        self.epoch_sums.load_state_dict(epoch_sums, device)
