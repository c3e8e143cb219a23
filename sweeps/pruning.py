"""The trial's side of a sweep as a callback: a run started by sweep.py reports its monitor after each
epoch and stops there when the sweep prunes it (sweeps/link.py carries the messages)."""
from state.status import Status
from training.callbacks import Callback
from utils import distributed


class SweepPruning(Callback):
    """Reports each epoch's monitor to the sweep over `link`; a pruned trial ends with status "pruned"
    and no test. The decision is taken before the epoch's save, which keeps it."""

    def __init__(self, link):
        self.link = link
        self.run_name_suffix = link.suffix

    def on_fit_start(self, trainer):
        self.link.started(trainer.run.path)

    def on_validation_end(self, trainer, record, improved):
        progress, args = trainer.progress, trainer.args
        pruned = self.link.should_prune(progress.epoch, record[args.monitor], last=progress.is_finished(args.n_epoch))
        if distributed.any_rank(pruned, trainer.device):
            progress.stop(Status.PRUNED)
            trainer.log.info(f"pruned by the sweep after epoch {progress.epoch} ({args.monitor} "
                             f"{record[args.monitor]:.4f}, best epoch {progress.monitor.best_epoch})")

    def on_fit_end(self, trainer, status):
        self.link.close()
