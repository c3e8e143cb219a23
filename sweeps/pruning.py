"""The trial's side of a sweep as a callback: a run started by sweep.py reports its monitor after each
epoch and stops there when the sweep prunes it (sweeps/link.py talks to the study)."""
from state.status import Status
from training.callbacks import Callback
from utils import distributed


class SweepPruning(Callback):
    """Reports each epoch's monitor to the study over `link`; a pruned trial ends with status "pruned"
    and no test. The decision is taken before the epoch's save, which keeps it. An answer the study
    could not give stops the run (its state saved, the sweep resumes it), and the resumed run asks
    for it again before its next epoch: it is pruned exactly where it would have been."""

    def __init__(self, link):
        self.link = link
        self.run_name_suffix = link.suffix

    def on_fit_start(self, trainer):
        self.link.started(trainer.run.path)
        progress, args = trainer.progress, trainer.args
        if progress.history and not progress.is_finished(args.n_epoch):  # resumed: an answer it may have lost
            self.decide(trainer, progress.history[-1])

    def on_validation_end(self, trainer, record, improved):
        self.decide(trainer, record)

    def decide(self, trainer, record):
        progress, args = trainer.progress, trainer.args
        pruned = self.link.should_prune(progress.epoch, record[args.monitor], last=progress.is_finished(args.n_epoch))
        if pruned is None:
            trainer.stop.request(f"no pruning answer from the sweep's study after epoch {progress.epoch} "
                                 f"({self.link.error}); asked again when the trial resumes")
        if distributed.any_rank(bool(pruned), trainer.device):
            progress.stop(Status.PRUNED)
            trainer.log.info(f"pruned by the sweep after epoch {progress.epoch} ({args.monitor} "
                             f"{record[args.monitor]:.4f}, best epoch {progress.monitor.best_epoch})")

    def on_fit_end(self, trainer, status):
        self.link.close()
