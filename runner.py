"""Runner: a task set up on this process — device, data, model — and `evaluate()`, the one
evaluation loop (validation, the test, the evaluator and prediction).

TrainerBase (trainer.py) and EvaluatorBase (eval.py) are runners of the task they are given
(`task_class`): they build it, set it up with `setup_runtime`, `setup_data` and `setup_model`, and
call its hooks (task.py). The runner owns what a task must not know: processes and devices, the
split and the loaders, the model's wrappers, autocast and the stop request.
"""
import math
import signal
from contextlib import nullcontext

import torch

from data.loader import BatchLoader, EpochBatchSampler, Subset, check_dataset, first_samples
from data.split import make_split, split_indices
from state.checkpoint import load_weights
from state.metric_sums import MetricSums
from utils import distributed
from utils.batch import batch_size_of, concatenate, to_device
from utils.logger import progress_bar, setup_logger
from utils.seed import seed_everything
from utils.signals import StopRequest
from utils.summary import describe, format_summary


class TrainingStopped(Exception):
    """Raised within one batch of SIGINT/SIGTERM, on every rank at the same point."""

    def __init__(self, signum, reason=None):
        super().__init__(reason or signal.Signals(signum).name)
        self.signum = signum


class Runner:
    """A task (`task_class`, built from `args`) with its data and model on this process's device."""

    task_class = None  # the task's TaskBase subclass

    def __init__(self, args):
        self.args = args
        self.log = setup_logger()
        self.stop = StopRequest(self.log)  # SIGINT / SIGTERM (handled while training), honoured within one batch
        self.rank, self.world_size, self.device, self.main_process = 0, 1, torch.device("cpu"), True
        self.task = self.task_class(args, self.log)

    @property
    def writer(self):
        """TensorBoard's writer of the run being trained (on the process that writes), else None."""
        return None

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, phase, on_batch=None, loader=None, model=None, name=None):
        """One pass without gradients over "val", "test", or "predict" (`loader` of inputs without
        targets: outputs only, no loss or statistics), with `model` (default: the task's model).
        `on_batch(batch, outputs, indices)` sees every batch, `indices` being the rows' positions in
        the evaluated dataset. Returns (metrics named `<name>/<metric>`, `name` defaulting to the
        phase; summed statistics reduced over every rank)."""
        task, loader = self.task, loader if loader is not None else self.loaders[phase]
        loader.sampler.set_epoch(0)
        model = model if model is not None else self.eval_model
        model.eval()
        sums, pending, stopped = MetricSums(), [], False
        with torch.inference_mode():
            for indices, batch in self.progress_bar(loader, phase):
                batch = task.prepare_batch(self.to_device(batch), False, None)
                with self.autocast():
                    if phase == "predict":
                        outputs = task.predict_batch(model, batch)
                    else:
                        loss, outputs = task.forward_batch(model, batch)
                        pending.append((batch, outputs, loss))
                        sums.add(task.sample_stats(phase, loader.dataset, outputs, indices))
                if len(pending) == task.eval_stats_every:
                    self.add_eval_stats(sums, pending)
                if on_batch is not None:
                    on_batch(batch, outputs, indices)
                if self.stop.requested:
                    stopped = True
                    break
            self.add_eval_stats(sums, pending)
        sums.add({"stop_requests": int(stopped)})  # every rank learns of a stop in the reduction it joins anyway
        totals = sums.reduced(self.device)
        if totals.pop("stop_requests", 0):
            raise TrainingStopped(self.stop.signum or signal.SIGTERM, self.stop.reason)
        return self.metrics_of(name or phase, totals), totals

    def add_eval_stats(self, sums, pending):
        """Statistics of several evaluated batches at once: the same sums from a few large operations
        instead of many small ones, which dominate the evaluation of a small model."""
        if not pending:
            return
        batches, outputs, losses = zip(*pending)
        sizes = [batch_size_of(batch) for batch in batches]
        stats = self.task.batch_stats(concatenate(batches), concatenate(outputs)) if len(pending) > 1 \
            else self.task.batch_stats(batches[0], outputs[0])
        weights = torch.tensor(sizes, dtype=torch.float64, device=losses[0].device)
        sums.add({**stats, "loss_sum": (torch.stack(losses).double() * weights).sum(), "loss_samples": sum(sizes)})
        pending.clear()

    def metrics_of(self, phase, totals):
        """`<phase>/<metric>` of the summed statistics; NaN for every metric of a phase without a counted
        sample (a training epoch whose every batch was skipped as non-finite)."""
        if not totals.get("loss_samples"):
            return {f"{phase}/{name}": math.nan for name in self.task.metric_names}
        metrics = {"loss": totals["loss_sum"] / totals["loss_samples"], **self.task.compute_metrics(totals)}
        return {f"{phase}/{name}": float(value) for name, value in metrics.items()}

    def progress_bar(self, loader, phase, initial=0):
        # Prediction counts its own progress, in images.
        return progress_bar(loader, phase, len(loader.sampler), initial, enabled=self.main_process and phase != "predict")

    def to_device(self, batch):
        return to_device(batch, self.device, self.args.channels_last)

    def autocast(self):
        if not self.args.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.args.amp_dtype == "bf16" else torch.float16)

    # ------------------------------------------------------------------ setup
    def setup_for_evaluation(self, weights, source, split=None, data=True):
        """What `evaluate()` needs: the device, the data of `split` (unless `data` is False: prediction
        brings its own loader), and the model with `weights` (a state dict read from `source`)."""
        self.setup_runtime()
        if data:
            self.setup_data(split)
        self.setup_model(weights, source)

    def setup_runtime(self):
        """Process group, device and seed."""
        self.rank, self.world_size, self.device = distributed.setup_process(self.args, self.log)
        self.main_process = self.rank == 0
        self.log = setup_logger(main_process=self.main_process)
        seed_everything(self.args.seed, self.args.deterministic)

    def setup_data(self, split=None):
        """Datasets and loaders of the train / val / test split: the saved `split`, or a new one."""
        args = self.args
        pool, test_pool = self.task.build_datasets()
        check_dataset(pool, f"the {args.data_type} pool")
        if test_pool is not None:
            check_dataset(test_pool, f"the {args.data_type} test set")
        self.split = split or make_split(pool, test_pool, self.task.split_ratios(), args.seed,
                                         args.train_val_sample_rate, args.test_sample_rate)
        sources = {phase: test_pool if phase == "test" and test_pool is not None else pool
                   for phase in ("train", "val", "test")}
        indices = self.debug_subsets({phase: split_indices(source, self.split, phase)
                                      for phase, source in sources.items()})
        self.datasets, self.loaders = {}, {}
        for phase, source in sources.items():
            self.datasets[phase] = Subset(source, indices[phase])
            self.loaders[phase] = self.make_loader(self.datasets[phase], train=phase == "train")
        sizes = ", ".join(f"{phase} {len(dataset)}" for phase, dataset in self.datasets.items())
        self.log.info(f"data: {args.data_type} from {args.data_dir}: {sizes}")

    def debug_subsets(self, indices):
        """The samples of each phase for a debug run: the first --fast_dev_run batches of each, or, with
        --overfit_batches, the first training batches for both training and validation. Their sizes
        are set by the training run's batch sizes and processes and kept in split.json, so that the
        evaluator, whatever its own batch size, evaluates the same samples."""
        args, processes, sizes = self.args, self.world_size, self.split.get("debug_sizes")
        if not (args.overfit_batches or args.fast_dev_run):
            return indices
        if sizes is None:
            eval_batch = args.eval_batch_size or args.batch_size
            batches = args.fast_dev_run or math.inf
            sizes = {phase: min(len(chosen), batches * (args.batch_size if phase == "train" else eval_batch) * processes)
                     for phase, chosen in indices.items()}
            if args.overfit_batches:
                sizes["train"] = sizes["val"] = min(sizes["train"], args.overfit_batches * args.batch_size * processes)
            self.split["debug_sizes"] = sizes
        if args.overfit_batches:
            indices["val"] = indices["train"]
            self.log.info(f"overfit_batches: training and validating on the same {sizes['train']} training samples")
        if args.fast_dev_run:
            self.log.info(f"fast_dev_run: {args.fast_dev_run} batches of each phase, one epoch")
        return {phase: list(chosen[:sizes[phase]]) for phase, chosen in indices.items()}

    def make_loader(self, dataset, train=False):
        """Batches of `dataset` for this process: shuffled and padded to equal rank shares for training;
        in order and unpadded for evaluation, so that every sample counts once over the ranks."""
        args = self.args
        sampler = EpochBatchSampler(len(dataset), args.batch_size if train else args.eval_batch_size or args.batch_size,
                                    shuffle=train, seed=args.seed, rank=self.rank, world_size=self.world_size, pad=train)
        return BatchLoader(dataset, sampler, num_workers=args.num_workers,
                           pin_memory=args.pin_memory and self.device.type == "cuda")

    def setup_model(self, weights=None, source=None, partial=False):
        """The model on the device, with `weights` (a state dict from `source`) if given (see
        `distributed.wrap_model` for `model`, `train_model` and `eval_model`)."""
        args = self.args
        torch.manual_seed(args.seed)  # initial weights depend on the seed alone, not on what data loading drew
        model = self.task.build_model()
        if weights is not None:
            load_weights(model, weights, source, partial=partial, log=self.log.warning)
        model.to(self.device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
        self.model, self.train_model, self.eval_model = distributed.wrap_model(model, args, self.device, self.world_size)

    def describe_model(self):
        """Log the model's summary and return it (parameter counts and size, for config.json) with the
        inputs of its forward pass on two training samples (for the graph)."""
        def forward():
            batch = self.task.prepare_batch(self.to_device(first_samples(self.datasets["train"], 2)), False, None)
            with self.autocast():
                self.task.forward_batch(self.model, batch)
        summary, inputs = describe(self.model, forward, self.log)
        self.log.info(f"model {self.args.model_type}:\n{format_summary(summary)}")
        return summary, inputs
