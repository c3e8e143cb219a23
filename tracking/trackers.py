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

- csv: `metrics.csv` in the run folder, a row `tag,step,value` per scalar, in the order logged.
- mlflow: a run in the experiment `<proj_name>` (or $MLFLOW_EXPERIMENT_NAME) of `--mlflow_uri`
  (default: $MLFLOW_TRACKING_URI, else the file store `./mlruns`), named as the run folder: the options as params, the scalars as metrics (step: the
  epoch, or the optimizer step for `train/step_*`), images as artifacts; ends FINISHED, KILLED
  (stopped, resumable) or FAILED. Needs `pip install mlflow-skinny` (or mlflow).
- wandb: a W&B run in project `<proj_name>`, its files in `<run folder>/wandb/` (or $WANDB_DIR); offline unless
  the user has logged in (WANDB_API_KEY, `wandb login`) or set WANDB_MODE. Scalars are plotted
  against `epoch` or `global_step`, the test metrics go to the run summary. W&B cannot be asked what
  it holds, and writes its files in the background: a hard kill loses what it had not written yet.
  Needs `pip install wandb`.
"""
import csv
import netrc
import os
from pathlib import Path

from utils.atomic import atomic_open
from utils.errors import UserError, import_optional

LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")
STEP_AXIS = "global_step"  # the x axis of `train/step_*` scalars; every other scalar is per epoch


def logger_names(text):
    """--logger's value: a comma-separated choice of LOGGERS."""
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    unknown = [name for name in names if name not in LOGGERS]
    if unknown or not names:
        import argparse
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(LOGGERS)}, got {text!r}")
    return list(dict.fromkeys(names))


logger_names.accepts_list = True  # a config file may give the list itself


PACKAGES = {"mlflow": ("mlflow", "mlflow-skinny"), "wandb": ("wandb", "wandb")}  # logger: (module, pip package)


def check_installed(names):
    """Import the packages of the trackers in `names` now, so that a missing one stops the run
    before it starts, in one line with the pip command."""
    for name in names:
        if name in PACKAGES:
            import_optional(*PACKAGES[name], f"--logger {name}")


def axis_of(tag):
    return STEP_AXIS if tag.startswith("train/step_") else "epoch"


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


class CsvTracker:
    """`metrics.csv`: appended to on each commit. A resumed run keeps the first `keep` rows, those
    its checkpoint had committed (completing them from `redo`, the checkpoint's own commit, when
    the process was killed before that commit reached the file), and continues the same file."""
    name = "csv"

    def __init__(self, path, keep=None, redo=()):
        self.path = path
        if keep is not None and path.is_file():
            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))[:1 + keep]
            missing = 1 + keep - len(rows)
            if 0 < missing <= len(redo):
                rows += [[tag, step, repr(value)] for tag, step, value in redo[len(redo) - missing:]]
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

    def log(self, events):
        rows = [(tag, step, repr(value)) for _, tag, step, value in (e for e in events if e[0] == "scalar")]
        if rows:
            self.writer.writerows(rows)
            self.handle.flush()

    def close(self, status):
        self.handle.close()


def mlflow_uri(text):
    """--mlflow_uri: a tracking URI (http://, sqlite://, databricks, file:...) or a local folder."""
    text = str(text)
    return text if "://" in text or text.startswith(("file:", "databricks")) else Path(text).resolve().as_uri()


class MlflowTracker:
    name = "mlflow"
    takes_images = True
    STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}

    def __init__(self, options, run_path, run_id=None, redo=(), resumed=False):
        check_installed(["mlflow"])
        uri = options["mlflow_uri"]  # resolved by the parse: --mlflow_uri, $MLFLOW_TRACKING_URI or ./mlruns
        if uri.startswith("file:"):  # the file store is what --mlflow_uri asked for; MLflow 3 wants it said
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        self.client, self.uri = MlflowClient(tracking_uri=uri), uri
        self.present = None  # a resumed run's {tag: steps} in MLflow already
        try:
            if resumed:
                if run_id is None:
                    raise UserError("the checkpoint has no MLflow run to continue; resume without mlflow in --logger")
                self.client.update_run(run_id, "RUNNING")
                self.run_id = run_id
                self.present = self.logged_points()
                self.log([("scalar", *scalar) for scalar in redo])
                return
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or options.get("proj_name") or "Default"
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=Path(run_path).name,
                                         tags={"run_folder": str(Path(run_path).resolve())})
            self.run_id = run.info.run_id
            params = [Param(key, str(value)[:6000]) for key, value in options.items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[start:start + 100])
        except UserError:
            raise
        except (MlflowException, ImportError, OSError) as error:  # a store it cannot reach, or its driver missing
            raise UserError(f"--logger mlflow: {uri}: {type(error).__name__}: {str(error).splitlines()[0]}") from None

    def logged_points(self):
        """{tag: steps} that the MLflow run holds already. A resumed run logs again what followed its
        checkpoint (the interrupted process may have sent some of it: its test results, or the
        checkpoint's own commit) and, resumed from an older checkpoint, what followed that; a
        resumed run computes the same values, so a point MLflow holds is not sent twice."""
        run = self.client.get_run(self.run_id)
        return {tag: {metric.step for metric in self.client.get_metric_history(self.run_id, tag)}
                for tag in run.data.metrics}

    def send(self, scalars):
        import time
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, step, value in scalars]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def log(self, events):
        present = self.present

        def new(tag, step):
            return present is None or step not in present.get(tag, ())
        self.send([event[1:] for event in events if event[0] == "scalar" and new(*event[1:3])])
        for kind, *content in events:
            if kind == "images" and new(content[0], content[1]):
                tag, step, picture = content
                self.client.log_image(self.run_id, picture, key=tag, step=step)

    def close(self, status):
        self.client.set_terminated(self.run_id, self.STATUS[status])


def wandb_logged_in():
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    name = "wandb"
    takes_images = True

    def __init__(self, options, run_path, run_id=None, resumed=False):
        check_installed(["wandb"])
        import wandb
        if resumed and run_id is None:
            raise UserError("the checkpoint has no W&B run to continue; resume without wandb in --logger")
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        settings = wandb.Settings(console="off", quiet=True, x_disable_stats=True, save_code=False)
        try:
            self.run = wandb.init(project=options.get("proj_name") or "Default", name=Path(run_path).name,
                                  dir=os.environ.get("WANDB_DIR") or str(run_path), config=options, id=run_id, mode=mode, settings=settings,
                                  resume="must" if resumed and mode == "online" else "allow" if resumed else None)
        except Exception as error:  # W&B's errors are its own classes; none is ours to handle
            raise UserError(f"--logger wandb: {type(error).__name__}: {str(error).splitlines()[0]}") from None
        self.run_id, self.wandb, self.defined = self.run.id, wandb, set()
        for axis in ("epoch", STEP_AXIS):
            self.run.define_metric(axis)

    def log(self, events):
        rows = {}  # (axis, step) -> values, in the order logged
        for kind, *content in events:
            if kind == "summary":  # the test metrics and the monitor's best, as TensorBoard's HPARAMS has them
                self.run.summary.update({name.removeprefix("hparam/"): value for name, value in content[0].items()})
                continue
            tag, step, value = content
            axis = axis_of(tag)
            if tag not in self.defined:
                self.run.define_metric(tag, step_metric=axis)
                self.defined.add(tag)
            rows.setdefault((axis, step), {})[tag] = value if kind == "scalar" else self.wandb.Image(value)
        for (axis, step), values in rows.items():
            self.run.log({axis: step, **values})

    def close(self, status):
        self.run.finish(exit_code=0 if status == "finished" else 1)
