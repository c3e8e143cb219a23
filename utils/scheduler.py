"""Learning-rate schedules stepped once per epoch, with linear warm-up.

One small class instead of chained torch schedulers: its whole state is a few numbers, so a
checkpoint restores it exactly, and warm-up composes with every schedule, plateau included.
"""
import bisect
import math

SCHEDULERS = ("none", "step", "multistep", "cosine", "plateau")
SCHEDULES_OVER_N_EPOCH = ("cosine",)  # schedules whose every lr depends on the number of epochs


class EpochLR:
    """Sets every param group's lr to `base_lr * factor` at the start of each epoch.

    - none: constant; step: `decay_rate ** (epoch // decay_epochs[0])`;
      multistep: `decay_rate ** (number of milestones in decay_epochs passed)`;
      cosine: half cosine from 1 to 0 over the epochs after warm-up;
      plateau: multiply by `decay_rate` when the monitored metric has not improved for
      `plateau_patience` epochs (`step(metric)` receives it).
    - warm-up: during the first `warmup_epochs` epochs the factor ramps linearly up to 1.
    """

    def __init__(self, optimizer, kind="none", n_epochs=1, warmup_epochs=0, decay_epochs=(30,), decay_rate=0.1,
                 mode="min", plateau_patience=5):
        if kind not in SCHEDULERS:
            raise ValueError(f"unknown lr scheduler {kind!r}; expected one of {', '.join(SCHEDULERS)}")
        self.optimizer = optimizer
        self.kind = kind
        self.n_epochs = n_epochs
        self.warmup_epochs = warmup_epochs
        self.decay_epochs = sorted(decay_epochs)
        self.decay_rate = decay_rate
        self.mode = mode
        self.plateau_patience = plateau_patience
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.epoch = 0
        self.plateau_factor = 1.0
        self.plateau_best = None
        self.plateau_bad_epochs = 0
        self._apply()

    def factor(self, epoch):
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        if self.kind == "step":
            return self.decay_rate ** (epoch // self.decay_epochs[0])
        if self.kind == "multistep":
            return self.decay_rate ** bisect.bisect_right(self.decay_epochs, epoch)
        if self.kind == "cosine":
            span = max(1, self.n_epochs - self.warmup_epochs)
            return 0.5 * (1.0 + math.cos(math.pi * min(epoch - self.warmup_epochs, span) / span))
        if self.kind == "plateau":
            return self.plateau_factor
        return 1.0

    def _apply(self):
        factor = self.factor(self.epoch)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor

    def step(self, metric=None):
        """End of an epoch: move to the next epoch's learning rate."""
        if self.kind == "plateau" and metric is not None and self.epoch >= self.warmup_epochs:
            better = (self.plateau_best is None or (metric < self.plateau_best if self.mode == "min"
                                                   else metric > self.plateau_best))
            if better:
                self.plateau_best, self.plateau_bad_epochs = metric, 0
            else:
                self.plateau_bad_epochs += 1
                if self.plateau_bad_epochs > self.plateau_patience:
                    self.plateau_factor *= self.decay_rate
                    self.plateau_bad_epochs = 0
        self.epoch += 1
        self._apply()

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {"epoch": self.epoch, "base_lrs": list(self.base_lrs), "plateau_factor": self.plateau_factor,
                "plateau_best": self.plateau_best, "plateau_bad_epochs": self.plateau_bad_epochs}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]
        self.base_lrs = list(state["base_lrs"])
        self.plateau_factor = state["plateau_factor"]
        self.plateau_best = state["plateau_best"]
        self.plateau_bad_epochs = state["plateau_bad_epochs"]
        self._apply()
