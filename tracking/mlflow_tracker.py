"""--logger mlflow: the run's options, scalars and images in an MLflow run.

A run in the experiment `<proj_name>` (or $MLFLOW_EXPERIMENT_NAME) of `--mlflow_uri` (default:
$MLFLOW_TRACKING_URI, else the file store `./mlruns`), named as the run folder: the options as params,
the scalars as metrics (step: the epoch, or the optimizer step for `train/step_*`), images as
artifacts; ends FINISHED, KILLED (stopped, resumable) or FAILED. A resumed run continues it, and asks
it what it holds so that no point is sent twice. Needs `pip install mlflow-skinny` (or mlflow).
"""
import os
from pathlib import Path

from utils.errors import UserError, import_optional


class MlflowTracker:
    name = "mlflow"
    requires = ("mlflow", "mlflow-skinny")  # (module, pip package)
    takes_images = True
    STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}

    def __init__(self, options, run_path, run_id=None, redo=(), resumed=False):
        import_optional(*self.requires, f"--logger {self.name}")
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

    @property
    def where(self):
        """Where the run's values go, for the log."""
        return f"run {self.run_id} in {self.uri}"

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
