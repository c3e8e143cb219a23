"""Learning-rate schedules as a function of where training stands, per optimizer step or per epoch.

One small class instead of chained torch schedulers. The lr is computed from the position (epoch
and optimizer step) every time it is set, never accumulated, so a resumed run, mid-epoch
included, has exactly the lr sequence of an uninterrupted one; the only state saved is what
plateau learns from the metric.
"""
import bisect
import math

SCHEDULERS = ("none", "step", "multistep", "cosine", "linear", "onecycle", "plateau")
SCHEDULES_OVER_N_EPOCH = ("cosine", "linear", "onecycle")  # every lr depends on the run's length
STEP_BY_DEFAULT = ("cosine", "linear", "onecycle")  # --lr_interval step unless told otherwise
ONECYCLE_START, ONECYCLE_RISE = 1 / 25, 0.3  # onecycle starts at lr/25 and peaks after 30% of the steps


def lr_interval(args):
    """The resolved --lr_interval: per step for cosine, linear and onecycle, else per epoch."""
    return args.lr_interval or ("step" if args.lr_scheduler in STEP_BY_DEFAULT else "epoch")


class LRSchedule:
    """Sets every param group's lr to `base_lr * factor(position)`.

    The position is counted in units of the interval: optimizer steps (`interval="step"`,
    `steps_per_epoch` of them an epoch) or epochs (the lr changes at epoch boundaries only).

    - warm-up: the first `warmup` units ramp linearly up to the schedule, (u + 1) / (warmup + 1);
    - none: 1; step: `decay_rate ** (epoch // decay_epochs[0])`; multistep: `decay_rate ** (number
      of milestones in decay_epochs passed)`, both counted in epochs;
    - cosine, linear: from 1 down to `min_ratio` (= min_lr / lr) over the units after warm-up;
    - onecycle: up from 1/25 to 1 over the warm-up (30% of the run when there is none), then down
      to `min_ratio` (or 1/25 of 1/10,000), both along half cosines;
    - plateau: multiply by `decay_rate` when the monitored metric has not improved for
      `plateau_patience` epochs (`end_epoch(metric)` receives it); per epoch only.
    """

    def __init__(self, optimizer, kind="none", n_epochs=1, steps_per_epoch=1, interval="epoch", warmup=0,
                 decay_epochs=(30,), decay_rate=0.1, min_ratio=0.0, mode="min", plateau_patience=5):
        if kind not in SCHEDULERS:
            raise ValueError(f"unknown lr scheduler {kind!r}; expected one of {', '.join(SCHEDULERS)}")
        self.optimizer = optimizer
        self.kind = kind
        self.interval = interval
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total = n_epochs * (self.steps_per_epoch if interval == "step" else 1)
        self.warmup = warmup
        self.decay_epochs = sorted(decay_epochs)
        self.decay_rate = decay_rate
        self.min_ratio = min_ratio
        self.mode = mode
        self.plateau_patience = plateau_patience
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.plateau_factor = 1.0
        self.plateau_best = None
        self.plateau_bad_epochs = 0
        self.epoch = 0
        self.set_position(0, 0)

    def factor(self, epoch, step):
        """The lr multiplier at `epoch` (completed epochs) and `step` (optimizer steps done)."""
        unit = step if self.interval == "step" else epoch
        if self.kind == "onecycle":
            return self._onecycle(unit)
        if unit < self.warmup:
            return (unit + 1) / (self.warmup + 1)
        if self.kind == "step":
            return self.decay_rate ** (epoch // self.decay_epochs[0])
        if self.kind == "multistep":
            return self.decay_rate ** bisect.bisect_right(self.decay_epochs, epoch)
        if self.kind in ("cosine", "linear"):
            span = max(1, self.total - self.warmup)
            done = min(unit - self.warmup, span) / span
            shape = 0.5 * (1.0 + math.cos(math.pi * done)) if self.kind == "cosine" else 1.0 - done
            return self.min_ratio + (1.0 - self.min_ratio) * shape
        if self.kind == "plateau":
            return self.plateau_factor
        return 1.0

    def _onecycle(self, unit):
        rise = self.warmup or max(1, round(ONECYCLE_RISE * self.total))
        low = self.min_ratio or ONECYCLE_START / 1e4
        if unit < rise:
            return ONECYCLE_START + (1.0 - ONECYCLE_START) * 0.5 * (1.0 - math.cos(math.pi * unit / rise))
        span = max(1, self.total - rise)
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * min(unit - rise, span) / span))

    def set_position(self, epoch, step):
        """Set the lr for the step that follows `step` optimizer steps, in epoch `epoch` (0-based)."""
        self.epoch = epoch
        factor = self.factor(epoch, step)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor

    @property
    def per_step(self):
        return self.interval == "step"

    def end_epoch(self, metric=None):
        """Plateau's bookkeeping at the end of an epoch, from the monitored `metric`."""
        if self.kind != "plateau" or metric is None or self.epoch < self.warmup:
            return
        better = (self.plateau_best is None or (metric < self.plateau_best if self.mode == "min"
                                               else metric > self.plateau_best))
        if better:
            self.plateau_best, self.plateau_bad_epochs = metric, 0
        else:
            self.plateau_bad_epochs += 1
            if self.plateau_bad_epochs > self.plateau_patience:
                self.plateau_factor *= self.decay_rate
                self.plateau_bad_epochs = 0

    def state_dict(self):
        return {"base_lrs": list(self.base_lrs), "plateau_factor": self.plateau_factor,
                "plateau_best": self.plateau_best, "plateau_bad_epochs": self.plateau_bad_epochs}

    def load_state_dict(self, state):
        """Restore plateau's state; the caller sets the position (`set_position`) after it."""
        self.base_lrs = list(state["base_lrs"])
        self.plateau_factor = state["plateau_factor"]
        self.plateau_best = state["plateau_best"]
        self.plateau_bad_epochs = state["plateau_bad_epochs"]
