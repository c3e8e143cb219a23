"""TrainerBase: the train / validate / test workflow, written once for every task.

The whole workflow is `fit()`; `train_epoch()` is the training loop, and its train step
(`backward_batch`, `optimizer_step`) the only backward and optimizer step, which the lr range test
runs too; `evaluate()` (runner.py) serves validation, the test, the evaluator and prediction. A task script names its
task (task.py: data, model, loss, metrics, pictures, options) in a TrainerBase subclass,
`task_class = MyTask`; it never copies a loop. Features attach through callbacks
(training/callbacks.py): a trainer subclass adds its own in `build_callbacks()`.
What it guarantees (exact resume, signals, crashes, DDP) is in the README, "Resume, crashes and signals".
"""
import signal
import sys
import time
import traceback

import torch

from cli.arguments import check_training_options, json_value, parse_training_options, task_parser
from cli.config_file import format_options
from data.loader import global_batch_loader
from data.sample_random import augmentation_random
from runner import Runner, TrainingStopped
from state.branch import continued_in
from state.checkpoint import (SAMPLING, check_resumable, initial_weights, load_checkpoint, load_weights,
                              make_checkpoint, repair_best, weights_of)
from state.progress import TrainingProgress
from state.resume_policy import check_same_resume
from state.run_folder import RunFolder
from state.status import Status
from sweeps.link import SweepLink
from sweeps.pruning import SweepPruning
from training.callbacks import Callbacks, EarlyStopping, EpochLog, PeriodicSave, TopK, Trackers
from training.ema import EMA
from training.lr_finder import find_lr
from training.optimization import Optimization
from training.requeue import Requeue, exit_status
from training.running_stats import RunningStatsInGlobalOrder
from utils import distributed
from utils.batch import batch_size_of
from utils.errors import NonFiniteLoss, UserError, run_cli
from utils.logger import close_logger, setup_logger
from utils.seed import get_rng_state, seed_process_streams, set_rng_state


class TrainerBase(Runner):
    """Trains the task named by `task_class` (task.py)."""

    # ------------------------------------------------------------------ options
    @classmethod
    def build_parser(cls):
        return task_parser(cls.task_class, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)

    @classmethod
    def parse(cls, argv):
        """Parse `argv` into options; with --resume, options not given are the checkpoint's."""
        return parse_training_options(cls.build_parser(), sys.argv[1:] if argv is None else argv, cls.task_class.name)

    @classmethod
    def main(cls, argv=None):
        """Command-line entry point of a task script."""
        def run(argv):
            args, checkpoint = cls.parse(argv)
            if args.print_config:
                print(format_options(json_value(vars(args)), cls.build_parser(), args.print_config), end="")
                return 0
            cls(args, checkpoint).fit()
            return 0
        return run_cli(run, argv)

    def __init__(self, args, checkpoint=None):
        super().__init__(args)
        self.checkpoint = checkpoint  # the state to resume, or None
        self.sampling = checkpoint["sampling"] if checkpoint else SAMPLING  # the run's rules (state/checkpoint.py)
        self.progress = TrainingProgress(args.monitor_mode, args.early_stop_delta)
        self.run = None  # the RunFolder, once training starts
        self.saved_position = None  # the progress position of the newest saved state
        self.in_update = False  # True while the optimizer changes the weights: no crash save then
        self.model_summary = None  # parameter counts and size, once the model is built
        self.ema = None  # the average of the weights, with --ema_decay
        self.status = "failed"  # how the run ends, for the trackers: finished, stopped or failed
        self.callbacks = Callbacks(self.build_callbacks())

    def build_callbacks(self):
        """The callbacks of this run (training/callbacks.py); a trainer subclass adds its own."""
        args, link = self.args, SweepLink.from_environment()
        callbacks = [RunningStatsInGlobalOrder(), Trackers(), EpochLog(), Requeue()]
        if args.save_every_n_steps:
            callbacks.append(PeriodicSave(args.save_every_n_steps))
        if args.early_stop_patience:
            callbacks.append(EarlyStopping(args.early_stop_patience))
        if args.save_top_k:
            callbacks.append(TopK(args.save_top_k, args.monitor_mode))
        if link is not None:  # a trial of sweep.py
            callbacks.append(SweepPruning(link))
        return callbacks

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
                metrics = self.end_pruned() if self.progress.stopped_by == Status.PRUNED else self.test_best()
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
        for indices, batch in bar:
            batch = self.task.prepare_batch(self.to_device(batch), True, self.augmentation_random(epoch, index, indices))
            group_end = min(index - index % args.accum_steps + args.accum_steps, n_batches)
            # Weighted so that a step's gradient is the mean over its global batch (data/loader.py).
            share = sampler.share_at(index, args.accum_steps)
            loss, outputs, counted = self.backward_batch(batch, self.optimization, share, index + 1 == group_end, index)
            if counted and share:
                size = batch_size_of(batch)
                group.append({**self.task.batch_stats(batch, outputs), "loss_sum": loss.detach() * size,
                              "loss_samples": size})
                interval.append(loss.detach())
            finite = finite or counted  # a placeholder's step is still taken, as on the other ranks
            index += 1
            if index == group_end:
                lr = self.optimization.lr
                self.callbacks.trigger("on_before_optimizer_step", self)
                if not self.optimizer_step(self.optimization, apply=finite, ema=self.ema):
                    progress.skipped_steps += 1
                progress.step_done(index, group)
                group, finite = [], False
                if schedule.per_step:
                    schedule.set_position(epoch, progress.global_step)
                if progress.global_step % args.log_every_n_steps == 0:
                    self.log_step(interval, lr, n_batches, bar, started)
                    interval = []
                self.after_step()
        totals = progress.epoch_sums.reduced(self.device)
        return self.metrics_of("train", totals), totals

    def validate(self):
        """Validation metrics and statistics; with --ema_decay, the EMA weights' metrics (`val_ema/...`) too."""
        for model in (self.model, *([self.ema.module] if self.ema is not None else [])):
            distributed.broadcast_buffers(model)  # every rank validates what rank 0 saves
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
        self.optimization.scheduler.end_epoch(record[args.monitor])
        self.task.report("train", train_totals, progress.epoch, self.writer)
        self.task.report("val", val_totals, progress.epoch, self.writer)
        # Before the save, which keeps what the callbacks decide and commits the epoch's scalars.
        self.callbacks.trigger("on_validation_end", self, record, improved)
        self.save_checkpoint(best=improved)
        self.write_metrics(Status.RUNNING)
        self.raise_if_stopped()

    def end_pruned(self):
        """The end of a trial its sweep pruned: no test; the HPARAMS row with the monitor's best."""
        self.run.write_hparams(vars(self.args), {}, self.progress.epoch, self.progress.monitor.best)
        self.write_metrics(Status.PRUNED)
        distributed.barrier()

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
        best_epoch = self.progress.monitor.best_epoch
        self.task.report("test", totals, best_epoch, self.writer)
        shown = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())
        self.log.info(f"test ({path.name}{', EMA weights' if on_ema else ''}, epoch {best_epoch}): {shown}")
        self.run.write_hparams(vars(self.args), metrics, best_epoch or self.progress.epoch, self.progress.monitor.best)
        # The test results in metrics.json mark the run finished: they are written last.
        self.write_metrics(self.progress.stopped_by or Status.COMPLETED, metrics, path)
        self.log.info(f"done: {self.run.path}")
        distributed.barrier()  # every rank leaves the process group together
        return metrics

    # ------------------------------------------------------------------ setup
    def setup(self):
        """Process group and device, data and split, model, optimizer; the run folder; the state to resume."""
        args, checkpoint = self.args, self.checkpoint
        self.setup_runtime()
        check_same_resume(args.resume)
        check_training_options(args, self.task.metric_names, self.world_size)
        run = RunFolder.resumed(args.resume, args.model_type, self.main_process) if checkpoint else None
        if checkpoint is not None:
            check_resumable(run, checkpoint, args, self.world_size, self.log)
            self.callbacks.load_state_dict(checkpoint["callbacks"], args.resume)  # refused before any work
        self.setup_data(run.read_split() if run else None)
        weights, source = (None, None) if checkpoint else initial_weights(args, self.log)
        self.setup_model(weights, source, partial=args.partial_load)
        self.model_summary, model_inputs = self.describe_model()  # the summary goes into config.json
        self.ema = EMA(self.model, args.ema_decay, args.ema_warmup, args.ema_every_n_steps) if args.ema_decay else None
        self.setup_optimization()
        if checkpoint is not None:  # then a new folder for an older state than the run's newest (state/branch.py)
            self.load_state_dict(checkpoint)
            run = continued_in(run, args.resume, checkpoint, self.callbacks.run_name_suffix, self.log)
        self.run = run or RunFolder.create_for(args, self.main_process, self.callbacks.run_name_suffix)
        self.open_run_folder()
        self.callbacks.trigger("on_fit_start", self)
        if checkpoint is None and args.log_graph and model_inputs is not None:
            self.run.write_graph(self.model, model_inputs, self.log)

    def make_loader(self, dataset, train=False):
        """Training draws its batches from the epoch's global order (data/loader.py, GlobalBatchSampler)."""
        if not train:
            return super().make_loader(dataset)
        return global_batch_loader(super().make_loader(dataset, train), "consecutive" if self.sampling > 1 else "round_robin")

    def setup_optimization(self):
        steps_per_epoch = -(-self.n_batches // self.args.accum_steps)
        self.optimization = Optimization(self.model.parameters(), self.args, self.device.type, steps_per_epoch)

    def open_run_folder(self):
        """Log file, config, split, TensorBoard; then the random streams training starts from."""
        run, checkpoint = self.run, self.checkpoint
        if self.main_process:
            self.log = setup_logger(log_file=run.path / "log.txt")
        run.remove_stale_temporaries(self.log)
        if checkpoint is not None:
            repair_best(run, self.log)
        else:
            run.write_json("split.json", self.split)
        model = {name: value for name, value in self.model_summary.items() if name != "modules"}
        run.write_config(self.options(), self.device, self.world_size, self.args.resume if checkpoint else None,
                         self.progress.position, model)
        if checkpoint is None:
            seed_process_streams(self.args.seed, self.rank)
        else:
            set_rng_state(checkpoint["rng"][self.rank])
            self.log.info(f"resumed from {self.args.resume} {self.progress.where(self.args.n_epoch, self.n_batches)}")
        self.log.info(f"run folder {run.path} on {self.device}"
                      + (f" x{self.world_size} processes" if self.world_size > 1 else ""))

    # ------------------------------------------------------------------ state
    def options(self):
        """The options as config.json and the checkpoint store them (JSON values)."""
        return json_value(vars(self.args))

    def state_dict(self):
        """The whole training state, as state/checkpoint.py lays it out. A collective under DDP: each
        rank's random state and partial epoch sums are gathered, indexed by rank."""
        ranks = distributed.all_gather_object({"rng": get_rng_state(), "sums": self.progress.epoch_sums.state_dict()})
        return make_checkpoint(self.task.name, self.options(), self.world_size, self.model.state_dict(),
                               self.ema.state_dict() if self.ema is not None else None, self.optimization.state_dict(),
                               self.progress.state_dict(), self.callbacks.state_dict(), ranks, self.sampling)

    def load_state_dict(self, checkpoint):
        """Restore what `state_dict` saved (the callbacks' states are restored first, in `setup`)."""
        load_weights(self.model, checkpoint["model"], self.args.resume)
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.optimization.load_state_dict(checkpoint)
        self.progress.load_state_dict(checkpoint, checkpoint["epoch_sums"][self.rank], self.device)
        self.saved_position = self.progress.position

    def save_checkpoint(self, best=False):
        """Save the state to `last` (and `best`); every rank calls it."""
        self.run.save_checkpoint(self.state_dict(), best)
        self.saved_position = self.progress.position
        self.callbacks.trigger("on_save", self)

    def write_metrics(self, status, test=None, tested=None):
        self.run.write_json("metrics.json", self.progress.summary(self.args.monitor, self.args.monitor_mode,
                                                                  status, test, tested))

    # ------------------------------------------------------------------ the train step: the only backward and
    # optimizer step of training and of the lr range test (training/lr_finder.py), which has its own Optimization
    def augmentation_random(self, epoch, index, indices):
        """What micro-batch `index` of `epoch`, the training samples `indices`, draws its augmentation from."""
        return augmentation_random(self.sampling, self.args.seed, self.rank, epoch, index, indices)

    def is_finite(self, loss, index):
        """False for a NaN / infinite loss on any rank with --skip_nonfinite (counted); an error without it."""
        nonfinite = not bool(torch.isfinite(loss.detach()))
        if self.world_size > 1:
            nonfinite = distributed.any_rank(nonfinite, self.device)
        if not nonfinite:
            return True
        where = f"epoch {self.progress.epoch + 1}, batch {index + 1} (global step {self.progress.global_step})"
        if not self.args.skip_nonfinite:
            if self.saved_position is None:  # the folder would hold no state to resume or test
                self.run.remove_at_close()
            kept = "the last good checkpoint is kept" if self.saved_position is not None else \
                f"nothing was saved yet, so the run folder {self.run.path} is removed"
            raise NonFiniteLoss(f"loss is {loss.item()} at {where}; {kept}. "
                                "Lower --lr, add --clip, or pass --skip_nonfinite to skip such batches")
        self.progress.nonfinite_batches += 1
        self.log.warning(f"skipped a batch with loss {loss.item()} at {where} "
                         f"({self.progress.nonfinite_batches} so far)")
        return False

    def backward_batch(self, batch, optimization, share=1.0, sync=True, index=None):
        """Forward and backward of one training micro-batch: the loss weighted by `share`, the gradients
        synchronised across processes only when `sync` (an accumulation group's last). At `index` of
        the epoch a NaN or infinite loss stops the run, or with --skip_nonfinite gives a zero gradient
        (counted); without an index (the range test) it goes through. Returns (loss, outputs, counted)."""
        self.batch_index = index  # the micro-batch in its forward, for callbacks (training/running_stats.py)
        with distributed.no_sync(self.train_model, not sync):
            with self.autocast():
                loss, outputs = self.task.forward_batch(self.train_model, batch)
            counted = index is None or self.is_finite(loss, index)
            if counted:
                optimization.backward(loss * share if share != 1 else loss)
            else:  # a zero gradient, so that DDP's gradient sync still happens on every rank
                optimization.backward(sum(p.sum() for p in self.model.parameters()) * 0.0)
        return loss, outputs, counted

    def optimizer_step(self, optimization, apply=True, ema=None):
        """The step of the accumulated gradients, then `ema`'s update; returns whether it was taken. Not
        `apply`: every batch of the group was skipped (--skip_nonfinite), and the gradients go without
        a step (momentum would still move the weights); nor taken when the fp16 scaler found inf/NaN."""
        self.in_update = True
        applied = apply and optimization.step()
        if not apply:
            optimization.optimizer.zero_grad(set_to_none=True)
        if applied and ema is not None:
            ema.update(self.model)
        self.in_update = False
        return applied

    def after_step(self):
        """At a step boundary: the callbacks (a periodic checkpoint, ...), then a requested stop."""
        self.callbacks.trigger("on_step_end", self)
        self.raise_if_stopped()

    def raise_if_stopped(self):
        """Raise TrainingStopped on every rank when any rank received a signal (a collective under DDP)."""
        if distributed.any_rank(self.stop.requested, self.device):  # every rank stops for the lowest rank's signal
            signum = next((signum for signum in distributed.all_gather_object(self.stop.signum) if signum), None)
            raise TrainingStopped(signum or signal.SIGTERM, self.stop.reason)

    # ------------------------------------------------------------------ logging
    def progress_bar(self, loader, phase, initial=0):
        epoch = f" {self.progress.epoch + 1}/{self.args.n_epoch}" if phase in ("train", "val") else ""
        return super().progress_bar(loader, phase + epoch, initial)

    n_batches = property(lambda self: len(self.loaders["train"].sampler), doc="an epoch's training batches, here")

    @property
    def writer(self):
        return self.run.writer if self.run is not None else None

    def visualize_first_batch(self, batch, outputs, indices):
        if indices[0] == 0 and self.writer is not None:  # the first batch, on the rank that writes
            self.task.visualize(self.writer, self.progress.epoch + 1, batch, outputs)

    def log_step(self, losses, lr, n_batches, bar, started):
        """The loss since the last log line and `lr`, the step's, to the console and TensorBoard."""
        loss = torch.stack(losses).mean().item() if losses else float("nan")
        step, writer = self.progress.global_step, self.writer
        if writer is not None:
            writer.add_scalar("train/step_loss", loss, step)
            writer.add_scalar("train/step_lr", lr, step)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")
        else:
            self.log.info(f"{self.progress.location(n_batches)} loss {loss:.4f} lr {lr:.3g} "
                          f"({time.perf_counter() - started:.1f}s)")

    # ------------------------------------------------------------------ stops, crashes, the end
    def exit_stopped(self, stopped):
        """Save what is not saved yet (every rank is here), mark the run interrupted, say how to resume."""
        if self.run is None:
            raise SystemExit(exit_status(stopped.signum))
        if self.progress.position != self.saved_position:
            self.save_checkpoint()
        self.callbacks.trigger("on_stopped", self, stopped)
        distributed.barrier()  # no rank exits (and gets the others killed) before rank 0 has saved and requeued
        self.write_metrics(Status.INTERRUPTED)
        launcher = f"torchrun --nproc_per_node {self.world_size} " if self.world_size > 1 else "python "
        last, at = self.run.checkpoint_path("last"), self.progress.where(self.args.n_epoch, self.n_batches)
        self.log.warning(f"stopped by {stopped} {at}; state saved to {last}. Resume with: "
                         f"{launcher}{sys.argv[0]} --resume {last}")
        raise SystemExit(exit_status(stopped.signum))

    def save_after_crash(self):
        """Save the last completed step after an exception, unless it is saved already, the weights are
        half-updated, or other ranks would have to join the save (DDP)."""
        if self.run is None or self.in_update:
            return
        frame = traceback.extract_tb(sys.exc_info()[2])[-1]
        where = f"crashed {self.progress.where(self.args.n_epoch, self.n_batches)} in {frame.filename}:{frame.lineno}"
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
        self.callbacks.trigger("on_fit_end", self, self.status)
        close_logger(self.log)
        distributed.cleanup(wait=self.status == "finished")


if __name__ == "__main__":
    sys.exit("trainer.py holds TrainerBase; run a task script such as trainer_vanilla.py")
