"""BatchNorm's running statistics taken in the global order, so that they are alike on any number of processes.

In training mode a BatchNorm layer folds each micro-batch's mean and variance into its running
statistics. On one process that is every micro-batch of a step in turn; under DDP each process folds
its own, and rank 0's buffers overwrite the others' at the next forward, so the statistics would
depend on the number of processes. On W > 1 processes this callback records each layer's input
mean and (unbiased) variance for every micro-batch, and before the optimizer step folds all the
processes' micro-batches, on every rank, in the order that one process taking the same global batch
would have folded them: micro-batch by micro-batch of the step, rank by rank within one (the
consecutive deal of data/loader.py, sampling rules 2). A placeholder micro-batch (a rank the epoch's
short last step leaves empty) is not folded. The statistics then equal a single process's within
floating-point rounding, and every rank holds them.

Not used with --sync_bn, whose layers already fold the statistics of the whole global micro-batch,
nor for runs of sampling rules 1 (state/checkpoint.py), which keep rank 0's as they did.
"""
import torch

from training.callbacks import Callback
from utils import distributed


class RunningStatsInGlobalOrder(Callback):
    def __init__(self):
        self.layers = []
        self.forwards = 0  # the model's training forwards so far: each micro-batch is one
        self.records = {}  # layer -> [(forward, mean, variance)] of its calls in training mode

    def on_fit_start(self, trainer):
        if trainer.world_size == 1 or trainer.sampling < 2 or trainer.args.sync_bn:
            return
        self.layers = [module for module in trainer.model.modules()
                       if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats]
        if not self.layers:
            return
        trainer.model.register_forward_pre_hook(self.count_forward)
        for layer in self.layers:
            layer.register_forward_pre_hook(self.record)
        self.records = {layer: [] for layer in self.layers}
        self.folded = self.statistics()  # what every rank holds now; each step folds onto it

    def count_forward(self, model, inputs):
        if model.training:
            self.forwards += 1

    def record(self, layer, inputs):
        if layer.training:
            x = inputs[0].detach().float()
            variance, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=1)
            self.records[layer].append((self.forwards, mean, variance))

    def statistics(self):
        return [(layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked.clone())
                for layer in self.layers]

    def on_before_optimizer_step(self, trainer):
        if not self.layers:
            return
        progress, sampler = trainer.progress, trainer.loaders["train"].sampler
        count = min(trainer.args.accum_steps, len(sampler) - progress.batches_done)  # the step's micro-batches
        forwards = range(self.forwards - count + 1, self.forwards + 1)
        # One row per micro-batch: whether it holds samples, then each layer's means and variances, call by
        # call (a layer may run more than once in a forward). Older records (the lr finder's) are dropped.
        rows = torch.stack([torch.cat(
            [torch.tensor([float(sampler.batch_size_at(progress.batches_done + offset) > 0)], device=trainer.device)]
            + [value for layer in self.layers for number, mean, variance in self.records[layer] if number == forward
               for value in (mean, variance)]) for offset, forward in enumerate(forwards)])
        uses = [sum(1 for number, _, _ in self.records[layer] if number == self.forwards) for layer in self.layers]
        self.records = {layer: [] for layer in self.layers}
        gathered = distributed.all_gather_tensor(rows)  # [rank][micro-batch][values]
        start = 1
        for layer, folded, calls in zip(self.layers, self.folded, uses):
            mean, variance, tracked = (value.clone() for value in folded)
            width = layer.num_features
            for offset in range(count):
                for rank_rows in gathered:  # micro-batch by micro-batch, rank by rank: the global order
                    row = rank_rows[offset]
                    for at in range(start, start + 2 * width * calls, 2 * width) if row[0] else ():
                        tracked += 1
                        factor = layer.momentum if layer.momentum is not None else 1.0 / float(tracked)
                        mean.mul_(1 - factor).add_(row[at:at + width].to(mean.dtype), alpha=factor)
                        variance.mul_(1 - factor).add_(row[at + width:at + 2 * width].to(variance.dtype), alpha=factor)
            start += 2 * width * calls
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(variance)
            layer.num_batches_tracked.copy_(tracked)
        self.folded = self.statistics()
