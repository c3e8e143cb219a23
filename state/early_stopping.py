"""One tracker for the monitored metric: it picks the best checkpoint and decides early stopping."""
import math


class EarlyStopper:
    """Track the best value of a metric; stop after `patience` epochs without improvement.

    An epoch improves when its value beats the best by more than `delta` (in the direction of
    `mode`). `patience=0` never stops, but still tracks the best for checkpoint selection, so
    the best checkpoint and early stopping can never watch different things.
    """

    def __init__(self, mode="min", patience=0, delta=0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.patience = patience
        self.delta = delta
        self.best = None
        self.best_epoch = None
        self.bad_epochs = 0

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

    @property
    def should_stop(self):
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self):
        return {"mode": self.mode, "patience": self.patience, "delta": self.delta, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
