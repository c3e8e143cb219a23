"""Gradient clipping by global norm or by value; 0 turns it off."""
import torch


class Clipper:
    def __init__(self, mode="norm", max_value=0.0):
        if mode not in ("norm", "value"):
            raise ValueError(f"clip mode must be 'norm' or 'value', got {mode!r}")
        self.mode = mode
        self.max_value = max_value

    @property
    def enabled(self):
        return self.max_value > 0

    def __call__(self, parameters):
        """Clip the gradients in place. Returns the total norm before clipping (mode norm), else None."""
        if not self.enabled:
            return None
        if self.mode == "norm":
            return torch.nn.utils.clip_grad_norm_(parameters, self.max_value)
        torch.nn.utils.clip_grad_value_(parameters, self.max_value)
        return None
