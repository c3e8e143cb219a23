"""An exponential moving average of a model's weights.

    ema = EMA(model, decay=0.999)  # every=N: average on every N-th call only
    ...after each optimizer step:  ema.update(model)
    ema.module                     the averaged model, to evaluate

Call t of `update` (counted from 0) has the decay d_t = min(decay, (1 + t) / (10 + t)) under
warm-up (so the first averages are not dominated by the random initialisation) and d_t = decay
without it. With every=1, each call makes each float32 average w into d_t * w + (1 - d_t) * p for
the model's parameter p. With every=N, only calls N, 2N, ... average, and the one that closes calls
t-N+1..t uses the product d_{t-N+1} * ... * d_t, which is exactly what those N calls would have
applied had the weights held still between them; so the average spans as many steps as with
every=1 (decay**N per update once past the warm-up). The weights of the N-1 steps in between are
not seen, and the average lags by up to N-1 steps until the next update.

Buffers (BatchNorm statistics) are copied at each update, not averaged. Under DDP every rank holds
the same parameters after a step, so every rank computes the same average; the buffers each rank
copies are its own until the trainer sends rank 0's to all before validating.
"""
import copy

import torch


class EMA:
    def __init__(self, model, decay, warmup=True, every=1):
        if every < 1:
            raise ValueError(f"EMA every={every}: must be at least 1")
        self.decay = decay
        self.warmup = warmup
        self.every = every
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.calls = 0  # calls of update(), one per optimizer step
        self.updates = 0  # averages made: calls // every
        self.pairs = None  # (model, averages, its parameters, all float32?, buffer pairs), from the first update

    def decay_at(self, call):
        """The decay of call number `call` (0-based)."""
        return min(self.decay, (1 + call) / (10 + call)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model):
        self.calls += 1
        if self.calls % self.every:
            return
        if self.pairs is None or self.pairs[0] is not model:  # the tensors to average, listed once
            current = [p.detach() for p in model.parameters()]
            self.pairs = (model, list(self.module.parameters()), current,
                          all(p.dtype == torch.float32 for p in current), list(zip(self.module.buffers(), model.buffers())))
        _, averages, current, float32, buffers = self.pairs
        decay = self.decay_at(self.calls - self.every)
        for call in range(self.calls - self.every + 1, self.calls):
            decay *= self.decay_at(call)
        torch._foreach_lerp_(averages, current if float32 else [p.float() for p in current], 1.0 - decay)
        for average, buffer in buffers:
            average.copy_(buffer)
        self.updates += 1

    def state_dict(self):
        return {"weights": self.module.state_dict(), "updates": self.updates, "calls": self.calls}

    def load_state_dict(self, state):
        """Also a state from before `every` existed, whose every call was an update."""
        self.module.load_state_dict(state["weights"])
        self.updates = state["updates"]
        self.calls = state.get("calls", state["updates"])
