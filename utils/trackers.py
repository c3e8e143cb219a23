"""Where a run's scalars go: TensorBoard and the trackers chosen with --logger.

    --logger tensorboard,csv      (default: tensorboard)

`Writer` is what the run writes through (`RunFolder.writer`, on the main process only): it takes
TensorBoard's calls (`add_scalar`, `add_images`, `add_hparams`, `add_graph`, `flush`, `close`),
passes them to TensorBoard when it is chosen, and keeps each scalar for the trackers. The trackers
receive the kept scalars only when the training state they belong to has been saved (`commit`),
so that a resumed run, which logs again everything after its checkpoint, neither repeats nor
misses a step in them; TensorBoard gets the same effect from its `purge_step`.

- csv: `metrics.csv` in the run folder, a row `tag,step,value` per scalar, in the order logged.
"""
import csv

from utils.checkpoint import atomic_open
from utils.errors import UserError

LOGGERS = ("tensorboard", "csv")


def logger_names(text):
    """--logger's value: a comma-separated choice of LOGGERS."""
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    unknown = [name for name in names if name not in LOGGERS]
    if unknown or not names:
        import argparse
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(LOGGERS)}, got {text!r}")
    return list(dict.fromkeys(names))


logger_names.accepts_list = True  # a config file may give the list itself


class Writer:
    def __init__(self, tensorboard, trackers, committed=0):
        self.tensorboard = tensorboard
        self.trackers = trackers
        self.committed = committed  # scalars handed to the trackers so far
        self.pending = []  # scalars logged since the last commit: (tag, step, value)

    @property
    def logged(self):
        """The scalars the trackers hold once the state being saved now is committed."""
        return self.committed + len(self.pending)

    def add_scalar(self, tag, value, step):
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, step)
        if self.trackers:
            self.pending.append((tag, int(step), float(value)))

    def add_images(self, *args, **kwargs):
        if self.tensorboard is not None:
            self.tensorboard.add_images(*args, **kwargs)

    def add_hparams(self, *args, **kwargs):
        if self.tensorboard is not None:
            self.tensorboard.add_hparams(*args, **kwargs)

    def add_graph(self, *args, **kwargs):
        if self.tensorboard is not None:
            self.tensorboard.add_graph(*args, **kwargs)

    def flush(self):
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def commit(self):
        """The training state is saved up to here: hand the kept scalars to the trackers."""
        for tracker in self.trackers:
            tracker.log(self.pending)
        self.committed += len(self.pending)
        self.pending = []

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()
        for tracker in self.trackers:
            tracker.close()


class CsvTracker:
    """`metrics.csv`: appended to on each commit. A resumed run keeps the first `keep` rows, those
    its checkpoint had committed, and continues the same file."""

    def __init__(self, path, keep=None):
        self.path = path
        if keep is not None and path.is_file():
            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))[:1 + keep]
            with atomic_open(path, "w") as handle:
                csv.writer(handle, lineterminator="\n").writerows(rows)
        new = not path.is_file() or path.stat().st_size == 0
        try:
            self.handle = open(path, "a", newline="")
        except OSError as error:
            raise UserError(f"cannot write {path}: {error.strerror or error}") from None
        self.writer = csv.writer(self.handle, lineterminator="\n")
        if new:
            self.writer.writerow(["tag", "step", "value"])
            self.handle.flush()

    def log(self, scalars):
        if scalars:
            self.writer.writerows((tag, step, repr(value)) for tag, step, value in scalars)
            self.handle.flush()

    def close(self):
        self.handle.close()
