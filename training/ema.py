"""An exponential moving average of a model's weights.

    ema = EMA(model, decay=0.999)
    ...after each optimizer step:  ema.update(model)
    ema.module                     the averaged model, to evaluate

After update t (counted from 0), each float32 average w becomes d_t * w + (1 - d_t) * p for the
model's parameter p, with d_t = min(decay, (1 + t) / (10 + t)) under warm-up (so the first
averages are not dominated by the random initialisation) and d_t = decay without it. Buffers
(BatchNorm statistics) are copied, not averaged. Under DDP every rank holds the same parameters
after a step, so every rank computes the same average; the buffers each rank copies are its own
until the trainer sends rank 0's to all before validating.
"""
import copy

import torch


class EMA:
    def __init__(self, model, decay, warmup=True):
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.updates = 0
        self.pairs = None  # (model, averages, its parameters, all float32?, buffer pairs), from the first update

    def decay_at(self, update):
        """The decay of update number `update` (0-based)."""
        return min(self.decay, (1 + update) / (10 + update)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model):
        if self.pairs is None or self.pairs[0] is not model:  # the tensors to average, listed once
            current = [p.detach() for p in model.parameters()]
            self.pairs = (model, list(self.module.parameters()), current,
                          all(p.dtype == torch.float32 for p in current), list(zip(self.module.buffers(), model.buffers())))
        _, averages, current, float32, buffers = self.pairs
        weight = 1.0 - self.decay_at(self.updates)
        torch._foreach_lerp_(averages, current if float32 else [p.float() for p in current], weight)
        for average, buffer in buffers:
            average.copy_(buffer)
        self.updates += 1

    def state_dict(self):
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["weights"])
        self.updates = state["updates"]
