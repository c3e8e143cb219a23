"""One optimizer step, done right: the optimizer, its lr schedule, the fp16 grad scaler and clipping."""
import torch

from training.clipping import Clipper
from training.optimizers import build_optimizer
from training.schedules import LRSchedule, lr_interval


class Optimization:
    """Everything that changes the weights, built from the parsed options, saved and restored together.

    `backward(loss)` scales the loss for fp16 (a no-op otherwise); `step()` unscales before
    clipping, so the threshold applies to the true gradients, steps, and zeroes the gradients.
    """

    def __init__(self, parameters, args, device_type, steps_per_epoch=1):
        self.parameters = list(parameters)
        self.optimizer = build_optimizer(self.parameters, args.optim, args.lr, args.weight_decay, args.momentum)
        interval = lr_interval(args)
        warmup = args.warmup_steps or args.warmup_epoch * (steps_per_epoch if interval == "step" else 1)
        self.scheduler = LRSchedule(self.optimizer, args.lr_scheduler, args.n_epoch, steps_per_epoch, interval, warmup,
                                    args.lr_decay_epochs, args.lr_decay_rate, args.min_lr / args.lr, args.monitor_mode,
                                    args.plateau_patience)
        # GradScaler only for float16: bfloat16 has float32's range and needs no scaling.
        self.scaler = torch.amp.GradScaler(device_type, enabled=args.amp and args.amp_dtype == "fp16")
        self.clipper = Clipper(args.clip_mode, args.clip)

    @property
    def lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def backward(self, loss):
        self.scaler.scale(loss).backward()

    def step(self):
        """Apply the accumulated gradients; returns False when the fp16 scaler skipped the step (inf/NaN)."""
        if self.clipper.enabled:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
            self.clipper(self.parameters)
        applied = True
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = self.scaler.get_scale() >= scale  # the scale only drops when the step was skipped
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return applied

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
