"""Where a run's scalars, images and results go: TensorBoard and the trackers chosen with --logger.

    --logger tensorboard,csv,mlflow,wandb      (any of them; default: tensorboard)

`Writer` is what the run writes through (`RunFolder.writer`, on the main process only): it takes
TensorBoard's calls (`add_scalar`, `add_images`, `add_hparams`, `add_graph`, `flush`, `close`),
passes them to TensorBoard when it is chosen, and keeps each event for the trackers. The trackers
receive the kept events only when the training state they belong to has been saved (`commit`),
so that a resumed run, which logs again everything after its checkpoint, neither repeats nor
misses a step in them; TensorBoard gets the same effect from its `purge_step`. The checkpoint
records how many scalars were committed, the scalars of its own commit (sent just after it was
written: a kill in between is repaired on resume, in the CSV and in MLflow, which is asked what it
holds), and each tracker's run id, which a resumed run continues.

The trackers, one module each, say what they write: csv_tracker.py (`metrics.csv`),
mlflow_tracker.py and wandb_tracker.py. This module also parses --logger and --mlflow_uri.
"""
from pathlib import Path

from tracking.csv_tracker import CsvTracker
from tracking.mlflow_tracker import MlflowTracker
from tracking.wandb_tracker import WandbTracker
from utils.errors import import_optional

LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")


def logger_names(text):
    """--logger's value: a comma-separated choice of LOGGERS."""
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    unknown = [name for name in names if name not in LOGGERS]
    if unknown or not names:
        import argparse
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(LOGGERS)}, got {text!r}")
    return list(dict.fromkeys(names))


logger_names.accepts_list = True  # a config file may give the list itself


PACKAGES = {tracker.name: tracker.requires for tracker in (CsvTracker, MlflowTracker, WandbTracker)
            if tracker.requires}  # logger: (module, pip package)


def check_installed(names):
    """Import the packages of the trackers in `names` now, so that a missing one stops the run
    before it starts, in one line with the pip command."""
    for name in names:
        if name in PACKAGES:
            import_optional(*PACKAGES[name], f"--logger {name}")


class Writer:
    def __init__(self, tensorboard, trackers, committed=0):
        self.tensorboard = tensorboard
        self.trackers = trackers
        self.committed = committed  # scalars handed to the trackers so far
        self.pending = []  # events logged since the last commit: ("scalar", tag, step, value), ...

    @property
    def logged(self):
        """The scalars the trackers hold once the state being saved now is committed."""
        return self.committed + sum(event[0] == "scalar" for event in self.pending)

    @property
    def state(self):
        """What a checkpoint saved now records of the trackers (`Writer.resumed` restores it)."""
        return {"logged_scalars": self.logged,
                "tracker_commit": [list(event[1:]) for event in self.pending if event[0] == "scalar"],
                "tracker_runs": {type(t).name: t.run_id for t in self.trackers if getattr(t, "run_id", None)}}

    def add_scalar(self, tag, value, step):
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, step)
        if self.trackers:
            self.pending.append(("scalar", tag, int(step), float(value)))

    def add_images(self, tag, images, step, **kwargs):
        if self.tensorboard is not None:
            self.tensorboard.add_images(tag, images, step, **kwargs)
        if any(getattr(tracker, "takes_images", False) for tracker in self.trackers):
            self.pending.append(("images", tag, int(step), image_grid(images)))

    def add_hparams(self, hparams, metrics, **kwargs):
        if self.tensorboard is not None:
            self.tensorboard.add_hparams(hparams, metrics, **kwargs)
        if self.trackers:
            self.pending.append(("summary", dict(metrics)))

    def add_graph(self, *args, **kwargs):
        if self.tensorboard is not None:
            self.tensorboard.add_graph(*args, **kwargs)

    def flush(self):
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def commit(self):
        """The training state is saved up to here: hand the kept events to the trackers."""
        for tracker in self.trackers:
            tracker.log(self.pending)
        self.committed = self.logged
        self.pending = []

    def close(self, status="finished"):
        """`status`: finished, stopped (resumable) or failed."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        for tracker in self.trackers:
            tracker.close(status)


def image_grid(images, pad=2):
    """A batch of images (N, C, H, W in [0, 1]) as one uint8 picture (H', W', 3), one image per row."""
    import torch
    images = torch.as_tensor(images).detach().float().cpu().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, _, height, width = images.shape
    grid = torch.zeros(3, n * (height + pad) + pad, width + 2 * pad)
    for index, image in enumerate(images[:, :3]):
        top = pad + index * (height + pad)
        grid[:, top:top + height, pad:pad + width] = image
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def open_trackers(names, run_path, options, checkpoint=None):
    """The trackers named in `names` for the run in `run_path`; a resumed run's `checkpoint`
    continues what they hold. `options`: the run's options as JSON values."""
    state = checkpoint or {}
    committed, redo = state.get("logged_scalars") or 0, state.get("tracker_commit") or []
    runs = state.get("tracker_runs") or {}
    resumed = checkpoint is not None
    trackers = []
    try:
        if "csv" in names:
            trackers.append(CsvTracker(Path(run_path) / "metrics.csv", committed if resumed else None, redo))
        if "mlflow" in names:
            trackers.append(MlflowTracker(options, run_path, runs.get("mlflow"), redo, resumed))
        if "wandb" in names:
            trackers.append(WandbTracker(options, run_path, runs.get("wandb"), resumed))
    except BaseException:  # the run does not start: the trackers' runs stay resumable
        for tracker in trackers:
            tracker.close("stopped")
        raise
    return trackers, committed


def mlflow_uri(text):
    """--mlflow_uri: a tracking URI (http://, sqlite://, databricks, file:...) or a local folder."""
    text = str(text)
    return text if "://" in text or text.startswith(("file:", "databricks")) else Path(text).resolve().as_uri()
