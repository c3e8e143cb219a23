"""TrainerBase: the train / validate / test workflow, written once for every task.

The whole workflow is `fit()`; the only loop with `backward()` is `train_epoch()`; `evaluate()`
(task.py) serves validation, the test, the evaluator and prediction. A task subclasses TrainerBase
and overrides the small hooks that task.py lists (datasets, model, loss, a batch's loss and
outputs, metrics, pictures); it never copies a loop. It also declares its options:

    add_task_arguments(parser)    classmethod: the task's options and `parser.set_defaults(...)`
    task_resume_safe_options      the task's options a resumed run may change (paths, caches, ...)

Guarantees and limits:
- Checkpoints hold the whole training state (model without wrapper prefixes, its EMA, optimizer,
  scheduler, grad scaler, the progress: epoch, step, history, early stopper, top-k list; and each
  process's random state and partial epoch sums) as tensors and plain values; they load with
  `torch.load(path, weights_only=True)` and are written atomically. `best` (and a top-k file) is
  written after `last` with the same bytes, and repaired from it if that write was cut short.
- `--resume` continues a run exactly: the data order is a function of seed and epoch, and a
  mid-epoch checkpoint (`--save_every_n_steps`) skips exactly the batches already consumed. It
  needs the same number of processes, and never reads `--model_path` again.
- Ctrl+C / SIGTERM are honoured within one batch in every phase: the state is saved, the resume
  command logged, and the process exits non-zero; a second Ctrl+C stops at once. Any other
  exception in a single process saves the state of the last completed step (the random state is
  the one at the crash) and re-raises; under DDP the newest periodic or epoch checkpoint stands.
- A NaN or infinite loss stops the run without overwriting the last good checkpoint, unless
  `--skip_nonfinite` is given, which skips such batches and counts them.
- Distributed runs are launched by torchrun; rank 0 alone writes files; each rank draws its own
  random stream. The lr is a function of the epoch and the optimizer step. Mid-epoch resume is
  exact at optimizer step boundaries (`--save_every_n_steps`), not at micro-batches of an
  accumulation group.
"""
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from data.loader import first_samples
from task import TaskBase, TrainingStopped
from utils import distributed
from cli.arguments import add_base_arguments, check_schedule, json_value, merge_options, resume_safe_options
from utils.batch import batch_size_of
from state.checkpoint import load_checkpoint, load_weights, weights_of
from cli.config_file import config_file_in, format_options, read_config_file
from training.ema import EMA
from utils.errors import UserError, run_cli
from utils.logger import close_logger, setup_logger
from training.lr_finder import find_lr
from training.optimization import Optimization
from cli.options import Parser
from state.progress import TrainingProgress
from state.run_folder import CHECKPOINT_FORMAT, RunFolder, check_checkpoint, check_resumable, find_checkpoint
from utils.seed import derived_seed, get_rng_state, seed_process_streams, set_rng_state
from utils.summary import format_summary, summarize
from sweeps.link import SweepLink
from tracking.trackers import check_installed, mlflow_uri


NO_TRACKERS = {"logged_scalars": None, "tracker_commit": [], "tracker_runs": {}}  # a checkpoint's, without a writer


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


class TrainerBase(TaskBase):
    """Base of every task's trainer; the hooks are TaskBase's (task.py)."""

    task_resume_safe_options = ()  # the task's options that do not change what a resumed run computes
    task_training_options = ()  # the task's options that only training uses (the evaluator refuses them)
    task_split_options = ()  # the task's options that define the split (the evaluator reads split.json)

    # ------------------------------------------------------------------ options
    @classmethod
    def build_parser(cls):
        from data.data_entry import DATASETS
        from model.model_entry import MODELS
        parser = Parser(description=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)
        add_base_arguments(parser, [n for n in MODELS if n in cls.model_types] or sorted(MODELS),
                           [n for n in DATASETS if n in cls.data_types] or sorted(DATASETS))
        cls.add_task_arguments(parser)
        return parser

    @classmethod
    def add_task_arguments(cls, parser):
        """Add the task's options and change the base's defaults with `parser.set_defaults`."""

    @classmethod
    def parse(cls, argv):
        """Parse `argv` into options; with --resume, options not given are the checkpoint's."""
        parser = cls.build_parser()
        argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
        config = config_file_in(argv)
        if config is not None:  # the file's values become defaults: flags given here override them
            parser.set_defaults(**read_config_file(config, parser))
        args = parser.parse_args(argv)
        if args.fast_dev_run:  # one short epoch, every step logged
            args.n_epoch, args.log_every_n_steps = 1, 1
        check_installed(args.logger)
        if "mlflow" in args.logger and args.mlflow_uri is None:  # the store this run and its resumes use
            args.mlflow_uri = mlflow_uri(os.environ.get("MLFLOW_TRACKING_URI") or "mlruns")
        if args.resume is None:
            return args, None
        if config is not None:
            raise UserError(f"--config {config} with --resume: a resumed run keeps its checkpoint's options; "
                            "give only the flags a resume may change")
        path = find_checkpoint(args.resume)
        checkpoint = check_checkpoint(load_checkpoint(path), path, cls.__name__)
        saved = checkpoint["config"]
        args = merge_options(parser, argv, args, saved, resume_safe_options(saved, cls.task_resume_safe_options))
        if "lr_interval" not in saved:  # written before per-step schedules: its schedule stepped per epoch
            args.lr_interval = "epoch"
        args.resume = path
        return args, checkpoint

    @classmethod
    def main(cls, argv=None):
        """Command-line entry point of a task script."""
        def run(argv):
            args, checkpoint = cls.parse(argv)
            if args.print_config:
                print(format_options(json_value(vars(args)), args.print_config), end="")
                return 0
            cls(args, checkpoint).fit()
            return 0
        return run_cli(run, argv)

    def __init__(self, args, checkpoint=None):
        super().__init__(args)
        self.checkpoint = checkpoint  # the state to resume, or None
        self.progress = TrainingProgress(args.monitor_mode, args.early_stop_patience, args.early_stop_delta)
        self.run = None  # the RunFolder, once training starts
        self.saved_position = None  # the progress position of the newest saved state
        self.in_update = False  # True while the optimizer changes the weights: no crash save then
        self.model_summary = None  # parameter counts and size, once the model is built
        self.ema = None  # the average of the weights, with --ema_decay
        self.status = "failed"  # how the run ends, for the trackers: finished, stopped or failed
        self.sweep = SweepLink.from_environment() if self.main_process else None  # a trial of sweep.py

    # ------------------------------------------------------------------ the workflow
    def fit(self):
        """Train, validate, test the best checkpoint, write the summary. Returns the test metrics."""
        try:
            self.setup()
            with self.stop.installed():  # from here on, a signal stops the run at the next batch
                if self.args.lr_find and self.checkpoint is None and not find_lr(self):
                    self.status = "finished"
                    return None  # the range test alone
                while not self.progress.is_finished(self.args.n_epoch):
                    started = time.perf_counter()
                    train = self.train_epoch()
                    trained = time.perf_counter()
                    self.end_epoch(train, self.validate(), started, trained)
                metrics = self.end_pruned() if self.progress.pruned else self.test_best()
                self.status = "finished"
                return metrics
        except TrainingStopped as stopped:
            self.status = "stopped"
            self.exit_stopped(stopped)
        except KeyboardInterrupt:
            self.status = "stopped"
            raise
        except UserError:
            raise
        except Exception:
            self.save_after_crash()
            raise
        finally:
            self.close()

    def train_epoch(self):
        """One pass over the training data: forward, backward, and an optimizer step per group of
        --accum_steps micro-batches. Returns (metrics named `train/<name>`, summed statistics)."""
        args, progress = self.args, self.progress
        loader, epoch, index = self.loaders["train"], progress.epoch, progress.batches_done
        sampler = loader.sampler
        sampler.set_epoch(epoch, skip_batches=index)
        n_batches, started = len(sampler), time.perf_counter()
        schedule = self.optimization.scheduler
        schedule.set_position(epoch, progress.global_step)
        self.train_model.train()
        group, interval = [], []  # statistics of the step in progress; losses since the last log line
        finite = False  # whether any micro-batch of the step in progress had a finite loss
        bar = self.progress_bar(loader, "train", initial=index)
        for _, batch in bar:
            batch = self.prepare_batch(self.to_device(batch), True, self.batch_generator(epoch, index))
            group_start = index - index % args.accum_steps
            group_end = min(group_start + args.accum_steps, n_batches)
            with distributed.no_sync(self.train_model, index + 1 < group_end):  # sync on a group's last backward
                with self.autocast():
                    loss, outputs = self.forward_batch(self.train_model, batch)
                if self.is_finite(loss, index):
                    # Weighted by its share of the group's samples: K micro-batches give the gradient of
                    # one batch of all their samples (mean-reduced loss), also when the last is short.
                    share = sampler.batch_size_at(index) / sum(map(sampler.batch_size_at, range(group_start, group_end)))
                    self.optimization.backward(loss * share if share != 1 else loss)
                    group.append(self.stats_with_loss(batch, outputs, loss))
                    interval.append(loss.detach())
                    finite = True
                else:  # a zero gradient, so that DDP's gradient sync still happens on every rank
                    self.optimization.backward(sum(p.sum() for p in self.model.parameters()) * 0.0)
            index += 1
            if index == group_end:
                lr = self.optimization.lr
                self.optimizer_step(apply=finite)
                progress.step_done(index, group)
                group, finite = [], False
                if schedule.per_step:
                    schedule.set_position(epoch, progress.global_step)
                    if self.writer is not None:
                        self.writer.add_scalar("train/step_lr", lr, progress.global_step)
                if progress.global_step % args.log_every_n_steps == 0:
                    self.log_step(interval, index, n_batches, bar, started)
                    interval = []
                self.after_step()
        totals = progress.epoch_sums.reduced(self.device)
        return self.metrics_of("train", totals), totals

    def validate(self):
        """Validation metrics and statistics; with --ema_decay, the EMA weights' metrics (`val_ema/...`) too."""
        distributed.broadcast_buffers(self.model)  # every rank validates what rank 0 saves
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema.module)
        metrics, totals = self.evaluate("val", on_batch=self.visualize_first_batch)
        if self.ema is not None:
            metrics = {**metrics, **self.evaluate("val", model=self.ema.module, name="val_ema")[0]}
        return metrics, totals

    def end_epoch(self, train, val, started, trained):
        """Record the epoch, step the schedule, save, log; stop early or on a signal."""
        (train_metrics, train_totals), (val_metrics, val_totals) = train, val
        args, progress, ended = self.args, self.progress, time.perf_counter()
        record = {"epoch": progress.epoch + 1, "global_step": progress.global_step,
                  "lr": self.optimization.lr, **train_metrics, **val_metrics,
                  "train_time_s": round(trained - started, 4), "val_time_s": round(ended - trained, 4),
                  "time_s": round(ended - started, 4)}
        improved = progress.end_epoch(record, args.monitor)
        if self.sweep is not None or self.world_size > 1:  # decided before the save, which keeps the decision
            progress.pruned = distributed.any_rank(self.sweep is not None and self.sweep.should_prune(
                progress.epoch, record[args.monitor], last=progress.is_finished(args.n_epoch)), self.device)
        self.optimization.scheduler.end_epoch(record[args.monitor])
        also, dropped = None, []
        if args.save_top_k:
            name = self.run.top_k_name(progress.epoch, args.monitor, record[args.monitor])
            kept, dropped = progress.rank_top_k(record[args.monitor], args.save_top_k, name, args.monitor_mode)
            also = name if kept else None
        self.report("train", train_totals, progress.epoch)
        self.report("val", val_totals, progress.epoch)
        self.log_epoch(record, improved)  # before the save, which commits its scalars to the trackers
        self.save_checkpoint(best=improved, also=also)
        self.run.delete(dropped)  # after the save: a cut in between leaves files the resume removes
        self.write_metrics("running")
        self.raise_if_stopped()
        if progress.stopper.should_stop:
            self.log.info(f"early stopping: {args.monitor} has not improved for {args.early_stop_patience} epochs "
                          f"(best {progress.stopper.best:.4f} at epoch {progress.stopper.best_epoch})")

    def end_pruned(self):
        """The end of a trial its sweep pruned: no test; the HPARAMS row with the monitor's best."""
        progress = self.progress
        self.log.info(f"pruned by the sweep after epoch {progress.epoch} ({self.args.monitor} "
                      f"{progress.history[-1][self.args.monitor]:.4f}, best epoch {progress.stopper.best_epoch})")
        self.run.write_hparams(vars(self.args), {}, progress.epoch, progress.stopper.best)
        self.write_metrics("pruned")
        distributed.barrier()
        return None

    def test_best(self):
        """Evaluate the best checkpoint (the last one if no epoch ever improved) on the test set,
        then write the summary. The training state is saved already: nothing saves these weights."""
        distributed.barrier()
        path = self.run.checkpoint_path("best")
        if not path.is_file():
            path = self.run.checkpoint_path("last")
            self.log.warning(f"no best checkpoint ({self.args.monitor} never improved); testing {path.name}")
        checkpoint, on_ema = load_checkpoint(path), self.args.monitor.startswith("val_ema/")
        load_weights(self.model, weights_of(checkpoint, ema=on_ema), path)
        metrics, totals = self.evaluate("test")
        best_epoch = self.progress.stopper.best_epoch
        self.report("test", totals, best_epoch)
        shown = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())
        self.log.info(f"test ({path.name}{', EMA weights' if on_ema else ''}, epoch {best_epoch}): {shown}")
        self.run.write_hparams(vars(self.args), metrics, best_epoch or self.progress.epoch, self.progress.stopper.best)
        # The test results in metrics.json mark the run finished: they are written last.
        self.write_metrics("early_stopped" if self.progress.stopper.should_stop else "completed", metrics, path)
        self.log.info(f"done: {self.run.path}")
        distributed.barrier()  # every rank leaves the process group together
        return metrics

    # ------------------------------------------------------------------ setup
    def setup(self):
        """Process group and device, data and split, model, optimizer; the run folder; the state to resume."""
        args, checkpoint = self.args, self.checkpoint
        self.setup_runtime()
        self.check_monitor()
        check_schedule(args)
        run = RunFolder(Path(args.resume).parent, args.model_type, self.main_process) if checkpoint else None
        if checkpoint is not None:
            check_resumable(run, checkpoint, args, self.world_size)
        self.setup_data(run.read_split() if run else None)
        weights, source = (None, None) if checkpoint else self.initial_weights()
        self.setup_model(weights, source, partial=args.partial_load)
        model_inputs = self.describe_model()
        self.ema = EMA(self.model, args.ema_decay, args.ema_warmup) if args.ema_decay else None
        self.setup_optimization()
        if checkpoint is not None:
            self.load_state_dict(checkpoint)
        self.run = run or RunFolder.create(args.output_dir or Path("Results") / args.proj_name, args.model_type,
                                           self.main_process, ("_fast_dev_run" if args.fast_dev_run else "")
                                           + (self.sweep.suffix if self.sweep else ""))
        self.open_run_folder()
        if self.sweep is not None:
            self.sweep.started(self.run.path)
        if checkpoint is None and args.log_graph and model_inputs is not None:
            self.run.write_graph(self.model, model_inputs, self.log)

    def describe_model(self):
        """Log the model summary (parameters, size, a row per top-level module with its output shape
        for two training samples, in evaluation mode) and keep its numbers for config.json. Returns the model's inputs
        in that forward pass (for TensorBoard's graph), or None if it failed."""
        inputs = []
        capture = self.model.register_forward_pre_hook(lambda module, args: inputs.append(args) if not inputs else None)
        self.model.eval()  # no BatchNorm statistics or dropout draws: the run is as without the summary

        def forward():
            batch = self.prepare_batch(self.to_device(first_samples(self.datasets["train"], 2)), False, None)
            with self.autocast():
                self.forward_batch(self.model, batch)
        try:
            self.model_summary = summarize(self.model, forward)
        except Exception as error:  # a task's forward that fails shows in training, with its traceback
            self.log.warning(f"model summary without output shapes: the forward pass of two samples failed "
                             f"({type(error).__name__}: {error})")
            self.model_summary, inputs = summarize(self.model), []
        finally:
            capture.remove()
        self.log.info(f"model {self.args.model_type}:\n{format_summary(self.model_summary)}")
        return inputs[0] if inputs else None

    def check_monitor(self):
        phase, _, name = self.args.monitor.partition("/")
        phases = ("val", "train", "val_ema") if self.args.ema_decay else ("val", "train")
        if phase not in phases or name not in self.metric_names:
            choices = ", ".join(f"{p}/{n}" for p in phases for n in self.metric_names)
            raise UserError(f"--monitor {self.args.monitor} is not a metric of this task; expected one of {choices}")

    def initial_weights(self):
        """The weights of --model_path for a new run with --pretrained, as (state dict, path)."""
        args = self.args
        if not (args.pretrained or args.model_path is not None):
            return None, None
        if not (args.pretrained and args.model_path is not None):
            raise UserError("initial weights need both --model_path PATH and --pretrained (to continue a run, use --resume)")
        self.log.info(f"initial weights from {args.model_path}")
        return weights_of(load_checkpoint(args.model_path)), args.model_path

    def setup_optimization(self):
        steps_per_epoch = -(-len(self.loaders["train"].sampler) // self.args.accum_steps)
        self.optimization = Optimization(self.model.parameters(), self.args, self.device.type, steps_per_epoch)

    def open_run_folder(self):
        """Log file, config, split, TensorBoard; then the random streams training starts from."""
        run, checkpoint = self.run, self.checkpoint
        if self.main_process:
            self.log = setup_logger(log_file=run.path / "log.txt")
        run.remove_stale_temporaries(self.log)
        if checkpoint is not None:
            run.repair_best(self.log)
            progress = self.progress
            if self.args.save_top_k:
                progress.top_k = run.reconcile_top_k(progress.top_k, progress.epoch, progress.batches_done, self.log)
        else:
            run.write_json("split.json", self.split)
        model = {name: value for name, value in self.model_summary.items() if name != "modules"}
        run.write_config(json_value(vars(self.args)), self.device, self.world_size,
                         self.args.resume if checkpoint else None, self.progress.position, model)
        # Events after the checkpoint's step were written by the interrupted process after it saved.
        run.open_writer(purge_step=self.progress.global_step + 1 if checkpoint else None, loggers=self.args.logger,
                        options=json_value(vars(self.args)), checkpoint=checkpoint)
        if checkpoint is None:
            seed_process_streams(self.args.seed, self.rank)
        else:
            set_rng_state(checkpoint["rng"][self.rank])
            progress = self.progress
            where = ("after its last epoch, to run the test" if progress.is_finished(self.args.n_epoch) else
                     f"at epoch {progress.epoch + 1}, batch {progress.batches_done}")
            self.log.info(f"resumed from {self.args.resume} {where}, global step {progress.global_step}")
        self.log.info(f"run folder {run.path} on {self.device}"
                      + (f" x{self.world_size} processes" if self.world_size > 1 else ""))

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """The whole training state. A collective under DDP: each rank's random state and partial
        epoch sums are gathered, indexed by rank."""
        ranks = distributed.all_gather_object({"rng": get_rng_state(), "sums": self.progress.epoch_sums.state_dict()})
        return {"format": CHECKPOINT_FORMAT, "task": type(self).__name__, "model_type": self.args.model_type,
                "config": json_value(vars(self.args)), "world_size": self.world_size,
                "model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
                **(self.writer.state if self.writer is not None else NO_TRACKERS),
                **self.optimization.state_dict(), **self.progress.state_dict(),
                "rng": [rank["rng"] for rank in ranks], "epoch_sums": [rank["sums"] for rank in ranks]}

    def load_state_dict(self, checkpoint):
        """Restore what `state_dict` saved. A checkpoint with entries this trainer would not restore is
        refused: it was written by other code, and half-loading it would resume something else."""
        known = {"format", "task", "model_type", "config", "world_size", "model", "ema", "rng", "epoch_sums",
                 *NO_TRACKERS, *self.optimization.state_dict(), *self.progress.state_dict()}
        if set(checkpoint) - known:
            raise UserError(f"{self.args.resume} holds entries this trainer does not restore: "
                            f"{', '.join(sorted(set(checkpoint) - known))}")
        load_weights(self.model, checkpoint["model"], self.args.resume)
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.optimization.load_state_dict(checkpoint)
        self.progress.load_state_dict(checkpoint, checkpoint["epoch_sums"][self.rank], self.device)
        self.saved_position = self.progress.position

    def save_checkpoint(self, best=False, also=None):
        """Save the state to `last` (and `best`, and a top-k file); every rank calls it."""
        self.run.save_checkpoint(self.state_dict(), best, also)
        if self.writer is not None:
            self.writer.commit()  # the scalars of the state just saved
        self.saved_position = self.progress.position

    def write_metrics(self, status, test=None, tested=None):
        self.run.write_json("metrics.json", self.progress.summary(self.args.monitor, self.args.monitor_mode,
                                                                  status, test, tested))

    # ------------------------------------------------------------------ inside the loops
    def batch_generator(self, epoch, index):
        """The generator a training batch's augmentation draws from: a function of seed, rank, epoch
        and batch, so a resumed run repeats it and no two ranks share it."""
        return torch.Generator().manual_seed(derived_seed(self.args.seed, self.rank, epoch, index))

    def is_finite(self, loss, index):
        """False for a NaN / infinite loss on any rank with --skip_nonfinite (counted); an error without it."""
        nonfinite = not bool(torch.isfinite(loss.detach()))
        if self.world_size > 1:
            nonfinite = distributed.any_rank(nonfinite, self.device)
        if not nonfinite:
            return True
        where = f"epoch {self.progress.epoch + 1}, batch {index + 1} (global step {self.progress.global_step})"
        if not self.args.skip_nonfinite:
            raise NonFiniteLoss(f"loss is {loss.item()} at {where}; the last good checkpoint is kept. "
                                "Lower --lr, add --clip, or pass --skip_nonfinite to skip such batches")
        self.progress.nonfinite_batches += 1
        self.log.warning(f"skipped a batch with loss {loss.item()} at {where} "
                         f"({self.progress.nonfinite_batches} so far)")
        return False

    def optimizer_step(self, apply=True):
        """The step of the accumulated gradients; not `apply`: every batch of the group was skipped
        (--skip_nonfinite), and the gradients go without a step (momentum would still move the weights)."""
        self.in_update = True
        if not apply:
            self.optimization.optimizer.zero_grad(set_to_none=True)
            self.progress.skipped_steps += 1
        elif not self.optimization.step():
            self.progress.skipped_steps += 1
        elif self.ema is not None:
            self.ema.update(self.model)
        self.in_update = False

    def after_step(self):
        """At a step boundary: the periodic checkpoint, and a requested stop."""
        every = self.args.save_every_n_steps
        if every and self.progress.global_step % every == 0:
            self.save_checkpoint()
        self.raise_if_stopped()

    def raise_if_stopped(self):
        """Raise TrainingStopped on every rank when any rank received a signal (a collective under DDP)."""
        if distributed.any_rank(self.stop.requested, self.device):
            raise TrainingStopped(self.stop.signum or signal.SIGTERM)

    def stats_with_loss(self, batch, outputs, loss):
        size = batch_size_of(batch)
        return {**self.batch_stats(batch, outputs), "loss_sum": loss.detach() * size, "loss_samples": size}

    # ------------------------------------------------------------------ logging
    def progress_bar(self, loader, phase, initial=0):
        epoch = f" {self.progress.epoch + 1}/{self.args.n_epoch}" if phase in ("train", "val") else ""
        return super().progress_bar(loader, phase + epoch, initial)

    @property
    def writer(self):
        return self.run.writer if self.run is not None else None

    def visualize_first_batch(self, batch, outputs, indices):
        if indices[0] == 0 and self.writer is not None:  # the first batch, on the rank that writes
            self.visualize(self.writer, self.progress.epoch + 1, batch, outputs)

    def log_step(self, losses, batch_number, n_batches, bar, started):
        loss = torch.stack(losses).mean().item() if losses else float("nan")
        lr, step, writer = self.optimization.lr, self.progress.global_step, self.run.writer
        if writer is not None:
            writer.add_scalar("train/step_loss", loss, step)
            if not self.optimization.scheduler.per_step:  # a per-step schedule writes every step's lr
                writer.add_scalar("train/step_lr", lr, step)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")
        else:
            self.log.info(f"epoch {self.progress.epoch + 1} step {batch_number}/{n_batches} loss {loss:.4f} "
                          f"lr {lr:.3g} ({time.perf_counter() - started:.1f}s)")

    def log_epoch(self, record, improved):
        self.run.write_epoch_scalars(record)
        shown = "  ".join(f"{name} {number:.4f}" for name, number in record.items() if "/" in name)
        self.log.info(f"epoch {record['epoch']}/{self.args.n_epoch}  {shown}  lr {record['lr']:.3g}  "
                      f"{record['time_s']:.1f}s" + ("  *best*" if improved else ""))

    # ------------------------------------------------------------------ stops, crashes, the end
    def exit_stopped(self, stopped):
        """Save what is not saved yet (every rank is here), mark the run interrupted, say how to resume."""
        if self.run is None:
            raise SystemExit(128 + stopped.signum)
        if self.progress.position != self.saved_position:
            self.save_checkpoint()
        distributed.barrier()  # no rank exits (and gets the others killed) before rank 0 has saved
        self.write_metrics("interrupted")
        launcher = f"torchrun --nproc_per_node {self.world_size} " if self.world_size > 1 else "python "
        last = self.run.checkpoint_path("last")
        self.log.warning(f"stopped by {stopped} at epoch {self.progress.epoch + 1}, step {self.progress.global_step}; "
                         f"state saved to {last}. Resume with: {launcher}{sys.argv[0]} --resume {last}")
        raise SystemExit(128 + stopped.signum)

    def save_after_crash(self):
        """Save the last completed step after an exception, unless it is saved already, the weights are
        half-updated, or other ranks would have to join the save (DDP)."""
        if self.run is None or self.in_update:
            return
        frame = traceback.extract_tb(sys.exc_info()[2])[-1]
        phase = "in the test" if self.progress.is_finished(self.args.n_epoch) else f"at epoch {self.progress.epoch + 1}"
        where = f"crashed {phase}, step {self.progress.global_step} in {frame.filename}:{frame.lineno}"
        last = self.run.checkpoint_path("last")
        if self.progress.position == self.saved_position or self.world_size > 1:
            self.log.error(f"{where}; the newest saved state is in {last}")
            return
        self.log.error(f"{where}; saving the state of the last completed step to {last}")
        try:
            self.save_checkpoint()
        except Exception as error:
            self.log.error(f"could not save the state: {error}")

    def close(self):
        if self.run is not None:
            self.run.close(self.status)
        if self.sweep is not None:
            self.sweep.close()
        close_logger(self.log)
        distributed.cleanup()


if __name__ == "__main__":
    sys.exit("trainer.py holds TrainerBase; run a task script such as trainer_vanilla.py")
