"""BatchNorm's running statistics folded in the global order, so that they are alike on any number of processes.

In training mode a BatchNorm layer folds each micro-batch's mean and variance into its running
statistics (r <- (1 - f) r + f m, with f its momentum, or 1 / the batches it has tracked). On one
process that is every micro-batch of a step in turn; under DDP each process folds its own, and rank
0's buffers overwrite the others' at the next forward, so the statistics would depend on the number
of processes. On W > 1 processes this callback reads what each training forward folded into every
layer, from the buffers before and after it (no pass over the activations), and before the optimizer
step folds every process's micro-batches, on every rank, in the order one process taking the same
global batch would have folded them: micro-batch by micro-batch of the step, rank by rank within one
(the consecutive deal of data/loader.py, sampling rules 2). A placeholder micro-batch (a rank the
epoch's short last step leaves empty) is not folded. The statistics then equal a single process's
within floating-point rounding, and every rank holds them.

The statistics are read around each forward of the model (`trainer.model`), tagged with the micro-batch
the trainer runs (`trainer.batch_index`): a task may run the model more than once a micro-batch, but a
BatchNorm layer run outside the model's forward (a submodule called by itself) is not seen. Not used
with --sync_bn, whose layers fold the statistics of every process's micro-batch together, nor for
SyncBatchNorm layers built into a model, nor for runs of sampling rules 1 (state/checkpoint.py), which
keep rank 0's as they did.
"""
import torch

from training.callbacks import Callback
from utils import distributed


class RunningStatsInGlobalOrder(Callback):
    def __init__(self):
        self.trainer = None
        self.hooks = []
        self.layers = []
        self.forwards = []  # (micro-batch, what its forward folded in) of each training forward since the last step
        self.before = None  # the statistics when the forward in progress began
        self.start = None  # the statistics when the step in progress began

    def on_fit_start(self, trainer):
        if trainer.world_size == 1 or trainer.sampling < 2 or trainer.args.sync_bn:
            return
        self.trainer = trainer
        self.layers = [module for module in trainer.model.modules()  # SyncBatchNorm folds every process's itself
                       if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats
                       and not isinstance(module, torch.nn.SyncBatchNorm)]
        if not self.layers:
            return
        self.sizes = torch.tensor([layer.num_features for layer in self.layers])
        self.cumulative = self.per_channel(torch.tensor([layer.momentum is None for layer in self.layers]))
        self.momentum = self.per_channel(torch.tensor([layer.momentum or 0.0 for layer in self.layers],
                                                      dtype=torch.float64))
        self.start = self.statistics()  # alike on every rank: the same initial or resumed weights
        device = self.start[0].device  # the layers' own, which the hooks compute on: copied there once
        self.precise = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.on_device = {"sizes": self.sizes.to(device), "cumulative": self.cumulative.to(device),
                          "momentum": self.momentum.to(device, self.precise)}
        self.hooks = [trainer.model.register_forward_pre_hook(self.keep_before),
                      trainer.model.register_forward_hook(self.read_folded)]

    def on_fit_end(self, trainer, status):
        """Unhook, and let go of the trainer: the cycle of model, hooks, this callback and the trainer would
        otherwise keep DDP's process group alive until the interpreter shuts down, whose teardown then
        can abort (gloo's threads at exit)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks, self.trainer = [], None

    def per_channel(self, values):
        """One value per layer as one per channel, as the statistics are laid out end to end."""
        return torch.repeat_interleave(values, self.sizes if values.device.type == "cpu" else self.on_device["sizes"])

    def statistics(self):
        return (torch.cat([layer.running_mean for layer in self.layers]),
                torch.cat([layer.running_var for layer in self.layers]),
                torch.stack([layer.num_batches_tracked for layer in self.layers]))

    def keep_before(self, model, inputs):
        if model.training:
            self.before = self.statistics()

    def read_folded(self, model, inputs, output):
        """What the forward folded into each layer (r_after = keep r_before + folded) over its `calls`:
        for a momentum f, keep = (1 - f)^calls and `folded` is kept as is; for a cumulative average
        (momentum None), keep = tracked before / tracked after and `folded` is kept times the tracked
        after (the sum of the calls' values), which does not depend on how many came before."""
        index = getattr(self.trainer, "batch_index", None)  # None: a forward of the lr finder, which is undone
        if not model.training or self.before is None or index is None:
            return
        (mean, variance, tracked), (mean_after, variance_after, tracked_after) = self.before, self.statistics()
        self.before = None
        precise, cumulative = self.precise, self.on_device["cumulative"]
        mean, variance, mean_after, variance_after = (value.to(precise) for value in
                                                      (mean, variance, mean_after, variance_after))
        calls = tracked_after - tracked
        after = self.per_channel(tracked_after).to(precise)
        keep = torch.where(cumulative, self.per_channel(tracked).to(precise) / after.clamp_min(1),
                           (1 - self.on_device["momentum"]) ** self.per_channel(calls))
        scale = torch.where(cumulative, after, torch.ones_like(after))
        self.forwards.append((index, torch.cat([calls.to(precise), (mean_after - keep * mean) * scale,
                                                (variance_after - keep * variance) * scale])))

    def on_before_optimizer_step(self, trainer):
        if self.layers:
            self.fold(distributed.all_gather_tensor(self.rows(trainer)).cpu().double())  # [rank, micro-batch, values]

    def rows(self, trainer):
        """One row per micro-batch of the step: whether it holds samples, then what its forwards folded in
        (a task may run the model more than once a micro-batch: the folds of its forwards in turn are one)."""
        progress, sampler = trainer.progress, trainer.loaders["train"].sampler
        count = min(trainer.args.accum_steps, len(sampler) - progress.batches_done)  # the step's micro-batches
        forwards, self.forwards = self.forwards, []
        layers, width = len(self.layers), len(self.layers) + 2 * int(self.sizes.sum())
        rows = []
        for index in range(progress.batches_done, progress.batches_done + count):
            row = torch.zeros(1 + width, dtype=torch.float64)
            row[0] = float(sampler.batch_size_at(index) > 0)
            for folded in (folded.cpu().double() for number, folded in forwards if number == index):
                calls = folded[:layers]
                keep = torch.where(self.cumulative, 1.0, (1 - self.momentum) ** self.per_channel(calls)).repeat(2)
                row[1:1 + layers] += calls
                row[1 + layers:] = keep * row[1 + layers:] + folded[layers:]
            rows.append(row)
        return torch.stack(rows).to(self.start[0].device)

    def fold(self, gathered):
        """Every rank's micro-batches folded into the statistics, micro-batch by micro-batch, rank by rank,
        as one product and sum: a momentum layer after K folds holds keep_1..keep_K r + the sum over j of
        folded_j times the keeps after j; a cumulative average, the tracked-weighted mean of all."""
        # From the statistics the step began with, alike on every rank, not from what this rank's forwards left.
        mean, variance, tracked = (value.cpu().double() for value in self.start)
        channels, layers = mean.numel(), len(self.layers)
        rows = gathered.transpose(0, 1).reshape(-1, gathered.shape[-1])  # the global order
        rows = rows[rows[:, 0] > 0]  # placeholders left out
        calls = rows[:, 1:1 + layers]
        folded_mean, folded_variance = rows[:, 1 + layers:1 + layers + channels], rows[:, 1 + layers + channels:]
        per_channel = self.per_channel(torch.arange(layers))
        keep = (1 - self.momentum) ** calls[:, per_channel]  # [fold, channel]
        after = torch.cat([keep.flip(0).cumprod(0).flip(0)[1:], torch.ones(1, channels, dtype=keep.dtype)])
        before, total = tracked[per_channel], tracked[per_channel] + calls[:, per_channel].sum(0)
        whole = keep.prod(0)
        averaged = self.cumulative & (total > 0)  # a cumulative layer no micro-batch called keeps its statistics
        mean = torch.where(averaged, (before * mean + folded_mean.sum(0)) / total.clamp_min(1),
                           whole * mean + (after * folded_mean).sum(0))
        variance = torch.where(averaged, (before * variance + folded_variance.sum(0)) / total.clamp_min(1),
                               whole * variance + (after * folded_variance).sum(0))
        tracked = tracked + calls.sum(0)
        device, sizes = self.start[0].device, self.sizes.tolist()
        for layer, layer_mean, layer_variance, count in zip(self.layers, mean.to(device).split(sizes),
                                                             variance.to(device).split(sizes), tracked.tolist()):
            layer.running_mean.copy_(layer_mean)
            layer.running_var.copy_(layer_variance)
            layer.num_batches_tracked.fill_(int(count))
        self.start = self.statistics()
