"""An exponential moving average of a model's weights.

    ema = EMA(model, decay=0.999)
    ...after each optimizer step:  ema.update(model)
    ema.module                     the averaged model, to evaluate

After update t (counted from 0), each float32 average w becomes d_t * w + (1 - d_t) * p for the
model's parameter p, with d_t = min(decay, (1 + t) / (10 + t)) under warm-up (so the first
averages are not dominated by the random initialisation) and d_t = decay without it. Buffers
(BatchNorm statistics) are copied, not averaged. Under DDP every rank holds the same parameters
after a step, so every rank computes the same average.
"""
import copy

import torch


class EMA:
    def __init__(self, model, decay, warmup=True):
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.updates = 0

    def decay_at(self, update):
        """The decay of update number `update` (0-based)."""
        return min(self.decay, (1 + update) / (10 + update)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model):
        weight = 1.0 - self.decay_at(self.updates)
        averages = list(self.module.parameters())
        current = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(averages, current, weight)
        for average, buffer in zip(self.module.buffers(), model.buffers()):
            average.copy_(buffer)
        self.updates += 1

    def state_dict(self):
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["weights"])
        self.updates = state["updates"]
