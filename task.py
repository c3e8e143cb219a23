"""TaskBase: what a task is — its options, data, model, loss, metrics and pictures — and nothing else.

A task is one part, given to the trainer (trainer.py), the evaluator (eval.py), the lr finder, the
sweep and the benchmark alike; none of them is a task, and a task knows none of them. A task script
subclasses TaskBase, overrides the hooks below, and names it in its trainer and evaluator
(`task_class = MyTask`).

    add_arguments(parser)         classmethod: the task's options, each with its rules (cli/options.py:
                                  `add_option`), and `parser.set_defaults(...)` for the base's
    build_datasets()              -> (pool, test_pool), datasets as data/loader.SampleDataset describes:
                                     train and val come from `pool`; the test set is `test_pool`, or is
                                     carved from `pool` when None (default: the --data_type entry of
                                     data/data_entry.py)
    split_ratios()                -> {"val": ratio[, "test": ratio]}: the fractions of the pool's groups
                                     held out (a task whose data has no test set adds "test")
    build_model()                 -> nn.Module (default: the --model_type entry of model/model_entry.py)
    build_loss()                  -> callable(outputs, targets) -> scalar loss, kept as `self.loss_fn`
    prepare_batch(batch, train, random)
                                  on the device: dtype conversion, normalisation, and (train only)
                                  augmentation drawn from `random`, one stream per sample, alike on any
                                  number of processes (data/sample_random.py); None when not training
    forward_batch(model, batch)   -> (loss, outputs) for one batch, under autocast
    predict_batch(model, batch)   -> outputs for a batch of inputs without targets (default: model(batch))
    batch_stats(batch, outputs)   -> dict of tensors to sum over the epoch (counts, sums)
    sample_stats(phase, dataset, outputs, indices)
                                  -> dict of sums that need each row's sample (its files, its size),
                                     `indices` being positions in the evaluated `dataset`; default none
    compute_metrics(totals)       -> dict of floats from the summed stats
    report(phase, totals, epoch, writer)
                                  extra logging (per-class accuracy, ...); `writer` is TensorBoard's
                                  on the process that writes, else None; optional
    visualize(writer, epoch, batch, outputs)
                                  the first validation batch of each epoch, for TensorBoard
"""


class TaskBase:
    """The hooks of a task. `args` are the parsed options, `log` the run's logger."""

    name = None  # what checkpoints record as their task (a subclass of a task keeps its name)
    model_types = ()  # the --model_type choices: names in model/model_entry.MODELS, or its own (build_model)
    data_types = ()  # the --data_type choices: names in data/data_entry.DATASETS, or its own (build_datasets)
    metric_names = ("loss",)  # what compute_metrics returns, plus "loss"; --monitor must name one
    eval_stats_every = 16  # evaluated batches whose batch_stats are computed together (1: keep memory flat)

    def __init__(self, args, log):
        self.args = args
        self.log = log
        self.loss_fn = self.build_loss()

    @classmethod
    def add_arguments(cls, parser):
        """Add the task's options and change the base's defaults with `parser.set_defaults`."""

    # ------------------------------------------------------------------ hooks
    def build_datasets(self):
        from data.data_entry import build_datasets
        return build_datasets(self.args, log=self.log)

    def split_ratios(self):
        return {"val": self.args.val_ratio}

    def build_model(self):
        from model.model_entry import build_model
        return build_model(self.args)

    def build_loss(self):
        raise NotImplementedError

    def prepare_batch(self, batch, train, random):
        return batch

    def forward_batch(self, model, batch):
        raise NotImplementedError

    def predict_batch(self, model, batch):
        return model(batch)

    def batch_stats(self, batch, outputs):
        return {}

    def sample_stats(self, phase, dataset, outputs, indices):
        return {}

    def compute_metrics(self, totals):
        return {}

    def report(self, phase, totals, epoch, writer):
        """Extra logging of an evaluated phase (called on every rank; `writer` only on rank 0)."""

    def visualize(self, writer, epoch, batch, outputs):
        """Write a few validation examples to TensorBoard."""
