"""The monitored metric (--monitor): one tracker of its best value, which picks the best checkpoint,
and of the epochs since that best, which early stopping counts (training/callbacks.py), so the
best checkpoint and early stopping can never watch different things."""
import math


class Monitor:
    """The best value of a metric, its epoch, and the epochs since.

    An epoch improves when its value beats the best by more than `delta` (in the direction of
    `mode`); NaN never improves.
    """

    def __init__(self, mode="min", delta=0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.delta = delta
        self.best = None
        self.best_epoch = None
        self.bad_epochs = 0  # epochs since the best

    def is_improvement(self, value):
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.delta
        return value > self.best + self.delta

    def step(self, value, epoch):
        """Record the epoch's value; return True when it is a new best."""
        if self.is_improvement(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def state_dict(self):
        return {"mode": self.mode, "delta": self.delta, "best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
