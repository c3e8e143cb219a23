"""Callbacks: features attached to the training loop through a few events, without editing it.

The trainer calls each callback of `TrainerBase.build_callbacks()` at these events, in order:

    on_fit_start(trainer)                    the run is set up (resumed state restored, run folder open),
                                             before the first epoch
    on_before_optimizer_step(trainer)        after the step's last backward, before the optimizer step
    on_step_end(trainer)                     after each optimizer step
    on_validation_end(trainer, record, improved)
                                             after an epoch's validation, before its checkpoint: `record`
                                             holds the epoch's metrics, `improved` whether the monitor
                                             improved. `trainer.progress.stop(status)` ends training
                                             after this epoch, and what the callback changes now is
                                             saved with the epoch
    on_save(trainer)                         after each checkpoint write
    on_stopped(trainer, stopped)             a signal stopped the run and its state is saved; every rank
                                             waits for the callbacks here before leaving (`stopped.signum`)
    on_fit_end(trainer, status)              always, last: "finished", "stopped" or "failed"

A callback with state has a `name` and `state_dict()` / `load_state_dict(state)`: its state is saved
in the checkpoint under `callbacks[name]` and restored on resume; a checkpoint that holds the state
of a callback this run does not have is refused. `trainer.stop.request()` (utils/signals.py) stops
the run as Ctrl+C does: the state is saved within one batch and `--resume` continues it exactly.
"""
from state.status import Status
from utils.errors import UserError


class Callback:
    """Does nothing at every event; a callback overrides the events it needs."""

    name = None  # the key of its state in the checkpoint; None: no state
    run_name_suffix = ""  # added to the run folder's name

    def on_fit_start(self, trainer):
        pass

    def on_before_optimizer_step(self, trainer):
        pass

    def on_step_end(self, trainer):
        pass

    def on_validation_end(self, trainer, record, improved):
        pass

    def on_save(self, trainer):
        pass

    def on_stopped(self, trainer, stopped):
        pass

    def on_fit_end(self, trainer, status):
        pass

    def state_dict(self):
        return None

    def load_state_dict(self, state):
        pass


class Callbacks:
    """The callbacks of a run, in order: their events, their states and their part of the run folder's name."""

    def __init__(self, callbacks):
        self.callbacks = list(callbacks)
        self.named = {callback.name: callback for callback in self.callbacks if callback.name}
        self.run_name_suffix = "".join(callback.run_name_suffix for callback in self.callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def trigger(self, event, trainer, *args):
        """Call `event` of every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, event)(trainer, *args)

    def state_dict(self):
        return {name: callback.state_dict() for name, callback in self.named.items()}

    def load_state_dict(self, states, source):
        """Restore each callback's state from `states` (read from `source`). The state of a callback this
        run does not have is refused: half-loading it would resume something else."""
        unknown = sorted(set(states) - set(self.named))
        if unknown:
            raise UserError(f"{source} holds the state of callbacks this run does not have: {', '.join(unknown)}; "
                            "resume it with the trainer that wrote it")
        for name, state in states.items():
            self.named[name].load_state_dict(state)


class EpochLog(Callback):
    """Each epoch's metrics and lr: a line in the log, and scalars at the epoch's number in TensorBoard
    and the trackers."""

    def on_validation_end(self, trainer, record, improved):
        trainer.run.write_epoch_scalars(record)
        shown = "  ".join(f"{name} {number:.4f}" for name, number in record.items() if "/" in name)
        trainer.log.info(f"epoch {record['epoch']}/{trainer.args.n_epoch}  {shown}  lr {record['lr']:.3g}  "
                         f"{record['time_s']:.1f}s" + ("  *best*" if improved else ""))


class PeriodicSave(Callback):
    """Saves the whole state every `every` optimizer steps (--save_every_n_steps), for mid-epoch resume."""

    def __init__(self, every):
        self.every = every

    def on_step_end(self, trainer):
        if trainer.progress.global_step % self.every == 0:
            trainer.save_checkpoint()


class EarlyStopping(Callback):
    """Stops training after `patience` epochs without improvement of the monitor (0: never)."""

    def __init__(self, patience):
        self.patience = patience

    def should_stop(self, monitor):
        return self.patience > 0 and monitor.bad_epochs >= self.patience

    def on_validation_end(self, trainer, record, improved):
        monitor = trainer.progress.monitor
        if self.should_stop(monitor):
            trainer.progress.stop(Status.EARLY_STOPPED)
            trainer.log.info(f"early stopping: {trainer.args.monitor} has not improved for {self.patience} epochs "
                             f"(best {monitor.best:.4f} at epoch {monitor.best_epoch})")


class TopK(Callback):
    """Keeps the checkpoints of the `k` best epochs by the monitor, as
    `<model_type>_epoch<N>_<metric><value>.pth`, exactly through resumes and cut saves: the list is
    saved with the epoch that enters it, its file written right after, the files that drop out
    deleted last, and a resume makes the files match the list."""

    name = "top_k"

    def __init__(self, k, mode):
        self.k, self.mode = k, mode
        self.kept = []  # {"epoch", "value", "file"} of the kept checkpoints, best first
        self.pending = None  # (the file to write, the files to delete) after the epoch's save

    def on_fit_start(self, trainer):
        if trainer.checkpoint is not None:
            progress = trainer.progress
            self.kept = trainer.run.reconcile_top_k(self.kept, progress.epoch, progress.batches_done, trainer.log)

    def on_validation_end(self, trainer, record, improved):
        epoch, value = trainer.progress.epoch, record[trainer.args.monitor]
        entry = {"epoch": epoch, "value": value, "file": trainer.run.top_k_name(epoch, trainer.args.monitor, value)}
        ranked = sorted([*self.kept, entry], key=self.rank)
        self.kept = ranked[:self.k]
        self.pending = (entry["file"] if entry in self.kept else None, [item["file"] for item in ranked[self.k:]])

    def rank(self, entry):
        """Best first; ties keep the earlier epoch; NaN ranks last."""
        value = entry["value"]
        worst = value != value
        return worst, 0.0 if worst else -value if self.mode == "max" else value, entry["epoch"]

    def on_save(self, trainer):
        if self.pending is not None:
            written, dropped = self.pending
            self.pending = None
            if written:
                trainer.run.copy_checkpoint("last", written)
            trainer.run.delete(dropped)  # after the save: a cut in between leaves files the resume removes

    def state_dict(self):
        return {"kept": list(self.kept)}

    def load_state_dict(self, state):
        self.kept = list(state["kept"])


class Trackers(Callback):
    """Hands the trackers (tracking/trackers.py: TensorBoard, CSV, MLflow, W&B) the scalars of each
    state once it is saved, and keeps in the checkpoint what they hold, so that a resume continues
    their runs with nothing missing and nothing twice."""

    name = "trackers"
    EMPTY = {"logged_scalars": None, "tracker_commit": [], "tracker_runs": {}}

    def __init__(self):
        self.saved = None  # the state of the checkpoint resumed from
        self.writer = None  # the run's writer, on the process that writes

    def on_fit_start(self, trainer):
        args, branched = trainer.args, trainer.run.branched_from is not None
        resumed = trainer.checkpoint is not None and not branched
        # Events after the checkpoint's step were written by the interrupted process after it saved.
        trainer.run.open_writer(purge_step=trainer.progress.global_step + 1 if resumed else None,
                                loggers=args.logger, options=trainer.options(), saved=self.saved if resumed else None)
        self.writer = trainer.writer
        for tracker in self.writer.trackers if self.writer is not None else ():
            trainer.log.info(f"--logger {tracker.name}: {tracker.where}")
        if branched:  # a new folder (state/branch.py): its curves start with the resumed history
            for record in trainer.progress.history:
                trainer.run.write_epoch_scalars(record)

    def on_save(self, trainer):
        if trainer.writer is not None:
            trainer.writer.commit()  # the scalars of the state just saved

    def on_fit_end(self, trainer, status):
        if trainer.run is not None:
            trainer.run.close(status)

    def state_dict(self):
        return self.writer.state if self.writer is not None else dict(self.EMPTY)

    def load_state_dict(self, state):
        self.saved = state
