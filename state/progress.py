"""Where a training run stands: the counters, the history, the partial epoch and the early stopper.

One object, created with the trainer, saved and restored through one `state_dict`, so that no
part of the progress can be restored without the rest.
"""
from state.early_stopping import EarlyStopper
from state.metric_sums import MetricSums


class TrainingProgress:
    """Counters of a run, the per-epoch history, and the monitored metric's tracker.

    `epoch` counts completed epochs. `batches_done` counts the micro-batches of the epoch in
    progress that finished optimizer steps have consumed: the resume point. `epoch_sums` holds
    this process's statistics of those batches; under DDP each process has its own.
    """

    def __init__(self, monitor_mode="min", patience=0, delta=0.0):
        self.stopper = EarlyStopper(monitor_mode, patience, delta)
        self.epoch = 0
        self.batches_done = 0
        self.global_step = 0  # optimizer steps
        self.skipped_steps = 0  # steps not taken: inf/NaN gradients (fp16), or every batch skipped
        self.nonfinite_batches = 0  # batches skipped with --skip_nonfinite
        self.history = []  # one record per completed epoch
        self.epoch_sums = MetricSums()
        self.top_k = []  # with --save_top_k: {"epoch", "value", "file"} of the kept checkpoints, best first
        self.pruned = False  # a trial of a sweep that the sweep stopped after this epoch

    def is_finished(self, n_epoch):
        return self.epoch >= n_epoch or self.stopper.should_stop or self.pruned

    def step_done(self, batches_done, group_stats):
        """An optimizer step finished after `batches_done` micro-batches of the epoch."""
        for stats in group_stats:
            self.epoch_sums.add(stats)
        self.global_step += 1
        self.batches_done = batches_done

    def end_epoch(self, record, monitor):
        """Close the epoch with its `record` of metrics; return True when `record[monitor]` is a new best."""
        improved = self.stopper.step(record[monitor], self.epoch + 1)
        self.history.append(record)
        self.epoch += 1
        self.batches_done = 0
        self.epoch_sums = MetricSums()
        return improved

    def rank_top_k(self, value, k, name, mode):
        """Enter the epoch just ended (monitor `value`, checkpoint file `name`) into the k best.
        Returns (whether it is kept, the files that drop out). Ties keep the earlier epoch; NaN ranks last."""
        entry = {"epoch": self.epoch, "value": value, "file": name}

        def rank(item):
            number = item["value"]
            worst = number != number
            return worst, (-number if mode == "max" else number) if not worst else 0.0, item["epoch"]
        ranked = sorted([*self.top_k, entry], key=rank)
        self.top_k = ranked[:k]
        return entry in self.top_k, [item["file"] for item in ranked[k:]]

    @property
    def position(self):
        """What identifies a saved state: equal positions hold equal training states."""
        return self.epoch, self.batches_done, self.global_step

    def summary(self, monitor, monitor_mode, status, test=None, tested=None):
        """metrics.json: the history, the best epoch, the status and (at the end) the test metrics."""
        summary = {"monitor": monitor, "monitor_mode": monitor_mode, "best_epoch": self.stopper.best_epoch,
                   "best_value": self.stopper.best, "status": status, "epochs_done": self.epoch,
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
                "history": list(self.history), "early_stopper": self.stopper.state_dict(), "top_k": list(self.top_k),
                "best_metric": self.stopper.best, "best_epoch": self.stopper.best_epoch, "pruned": self.pruned}

    def load_state_dict(self, state, epoch_sums, device):
        self.epoch = state["epoch"]
        self.batches_done = state["batches_done"]
        self.global_step = state["global_step"]
        self.skipped_steps = state["skipped_steps"]
        self.nonfinite_batches = state["nonfinite_batches"]
        self.history = list(state["history"])
        self.top_k = list(state.get("top_k", []))
        self.pruned = bool(state.get("pruned", False))
        self.stopper.load_state_dict(state["early_stopper"])
        self.epoch_sums = MetricSums()
        self.epoch_sums.load_state_dict(epoch_sums, device)
