"""The trackers of --logger: metrics.csv, MLflow (a local file store, read back with MLflow's
client) and W&B (offline, read back from its own files); each equal to TensorBoard, and a resumed
run continuing the same tracker run with no step repeated or missing."""
import csv
import os

import pytest

from helpers import refused, run_dirs, stopping_at, train_vanilla, wandb_history
from trainer_vanilla import VanillaTrainer

QUICK = ["--train_val_sample_rate", "0.4", "--test_sample_rate", "0.5"]


def csv_rows(run):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.reader(handle))


def mlflow_runs(store):
    """{run name: (status, params, {tag: [(step, value), ...]})} of every run in the file store."""
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    runs = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            histories = {tag: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
                         for tag in run.data.metrics}
            runs[run.info.run_name] = (run.info.status, run.data.params, histories, experiment.name)
    return runs


def csv_histories(run):
    histories = {}
    for tag, step, value in csv_rows(run)[1:]:
        histories.setdefault(tag, []).append((int(step), float(value)))
    return {tag: sorted(points) for tag, points in histories.items()}


def wandb_histories(run):
    """{tag: [(x, value), ...]} over every offline W&B run in the folder, x the tag's own axis."""
    histories = {}
    for _, rows, _ in wandb_history(run):
        for row in rows:
            axis = "global_step" if "global_step" in row else "epoch"
            for tag, value in row.items():
                if not tag.startswith("_") and tag not in ("epoch", "global_step") and not isinstance(value, dict):
                    histories.setdefault(tag, []).append((row[axis], value))
    return {tag: sorted(points) for tag, points in histories.items()}


def test_the_csv_logger_holds_what_tensorboard_holds(fashion_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = train_vanilla(fashion_dir, tmp_path, *QUICK, "--logger", "tensorboard,csv", "--log_every_n_steps", "3")
    rows = csv_rows(run)
    assert rows[0] == ["tag", "step", "value"]
    events = EventAccumulator(str(run / "summary"), size_guidance={"scalars": 0})
    events.Reload()
    from_tensorboard = sorted((tag, event.step, event.value) for tag in events.Tags()["scalars"]
                              for event in events.Scalars(tag))
    from_csv = sorted((tag, int(step), float(value)) for tag, step, value in rows[1:])
    assert [(tag, step) for tag, step, _ in from_csv] == [(tag, step) for tag, step, _ in from_tensorboard]
    assert all(abs(a[2] - b[2]) <= 1e-6 * max(1, abs(b[2])) for a, b in zip(from_csv, from_tensorboard))  # TB: float32
    assert {"train/step_loss", "val/accuracy", "test/accuracy", "lr"} <= {tag for tag, _, _ in from_csv}


def test_a_resumed_run_continues_the_csv_without_repeating_or_missing_a_row(fashion_dir, tmp_path):
    flags = [*QUICK, "--logger", "csv", "--log_every_n_steps", "2", "--save_every_n_steps", "4"]
    full = train_vanilla(fashion_dir, tmp_path / "full", *flags)
    assert not (full / "summary").exists()  # TensorBoard was not chosen
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path / "cut", *flags, trainer_class=stopping_at(12))  # at a log step: see README
    run = run_dirs(tmp_path / "cut")[0]
    with open(run / "metrics.csv", "a") as handle:  # what an older checkpoint, resumed, did not commit
        handle.write("train/step_loss,99,1.0\n")
    assert VanillaTrainer.main(["--resume", str(run / "Vanilla_last_ckpt.pth")]) == 0
    assert csv_rows(run) == csv_rows(full)


def test_a_bad_logger_is_refused(capsys):
    assert "expected a comma-separated list of tensorboard, csv, mlflow, wandb, got 'tensorboard,mlflw'" in refused(
        VanillaTrainer.main, ["--logger", "tensorboard,mlflw"], capsys)


def test_mlflow_and_wandb_hold_what_the_csv_holds(fashion_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")  # not logged in: offline
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    store = tmp_path / "mlruns"
    run = train_vanilla(fashion_dir, tmp_path / "out", *QUICK, "--logger", "csv,mlflow,wandb", "--log_every_n_steps",
                        "3", "--mlflow_uri", store, "--lr_scheduler", "cosine", "--lr_interval", "step")
    expected = csv_histories(run)
    assert {"train/step_loss", "train/step_lr", "val/accuracy", "test/accuracy"} <= set(expected)

    status, params, histories, experiment = mlflow_runs(store)[run.name]
    assert status == "FINISHED" and experiment == "Vanilla"
    assert params["lr"] == "0.001" and params["lr_scheduler"] == "cosine"
    assert histories == expected

    (run_id, rows, summary), = wandb_history(run)
    assert wandb_histories(run) == expected
    assert summary["test/accuracy"] == expected["test/accuracy"][0][1]
    assert summary["best_val/accuracy"] == max(value for _, value in expected["val/accuracy"])
    import torch
    assert torch.load(run / "Vanilla_last_ckpt.pth", weights_only=True)["callbacks"]["trackers"]["tracker_runs"]["wandb"] == run_id
    log = (run / "log.txt").read_text()  # where each tracker's run went
    mlflow_id = torch.load(run / "Vanilla_last_ckpt.pth", weights_only=True)["callbacks"]["trackers"]["tracker_runs"]["mlflow"]
    assert f"--logger csv: {run / 'metrics.csv'}" in log
    assert f"--logger mlflow: run {mlflow_id} in " in log and str(store) in log
    assert f"--logger wandb: run {run_id} (offline) in {run / 'wandb'}" in log


def test_a_resumed_run_continues_its_mlflow_and_wandb_runs(fashion_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    flags = [*QUICK, "--logger", "csv,mlflow,wandb", "--log_every_n_steps", "2", "--save_every_n_steps", "4"]
    full = train_vanilla(fashion_dir, tmp_path / "full", *flags, "--mlflow_uri", tmp_path / "full_store")
    store = tmp_path / "cut_store"
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path / "cut", *flags, "--mlflow_uri", store, trainer_class=stopping_at(12))
    run = run_dirs(tmp_path / "cut")[0]
    assert mlflow_runs(store)[run.name][0] == "KILLED"
    assert VanillaTrainer.main(["--resume", str(run / "Vanilla_last_ckpt.pth")]) == 0

    (name, (status, _, histories, _)), = mlflow_runs(store).items()  # the same MLflow run, continued
    assert name == run.name and status == "FINISHED"
    assert histories == csv_histories(full) == mlflow_runs(tmp_path / "full_store")[full.name][2]
    first, second = wandb_history(run)
    assert first[0] == second[0]  # the same W&B run id
    assert wandb_histories(run) == csv_histories(full)


def test_a_kill_between_the_save_and_the_trackers_loses_no_scalar(fashion_dir, tmp_path, monkeypatch):
    """The checkpoint of step 8 is on disk but its scalars never reached the CSV or MLflow."""
    monkeypatch.setenv("WANDB_MODE", "offline")

    class KilledAfterSaving(VanillaTrainer):
        def save_checkpoint(self, best=False):
            if self.progress.global_step == 8:
                self.run.save_checkpoint(self.state_dict(), best)
                raise SystemExit(137)
            super().save_checkpoint(best)

    flags = [*QUICK, "--logger", "csv,mlflow", "--log_every_n_steps", "2", "--save_every_n_steps", "4"]
    full = train_vanilla(fashion_dir, tmp_path / "full", *flags, "--mlflow_uri", tmp_path / "full_store")
    store = tmp_path / "cut_store"
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path / "cut", *flags, "--mlflow_uri", store, trainer_class=KilledAfterSaving)
    run = run_dirs(tmp_path / "cut")[0]
    assert max(step for step, _ in csv_histories(run)["train/step_loss"]) == 4  # step 8's scalars are missing
    assert VanillaTrainer.main(["--resume", str(run / "Vanilla_last_ckpt.pth")]) == 0
    assert csv_rows(run) == csv_rows(full)
    assert mlflow_runs(store)[run.name][2] == csv_histories(full)


@pytest.mark.parametrize("logger, package", [("mlflow", "mlflow-skinny"), ("wandb", "wandb")])
def test_a_missing_tracker_package_is_one_line_with_the_pip_command(logger, package, fashion_dir, tmp_path,
                                                                    monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, logger, None)  # as if not installed
    error = refused(VanillaTrainer.main, ["--data_dir", fashion_dir, "--output_dir", tmp_path, "--logger", logger,
                                          *QUICK, "--n_epoch", "1"], capsys)
    assert f"--logger {logger} needs the {package} package" in error and f"pip install {package}" in error


def test_images_reach_mlflow_and_wandb(carvana_dir, tmp_path, monkeypatch):
    from helpers import train_seg
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = train_seg(carvana_dir, tmp_path / "out", "--n_epoch", "2", "--logger", "mlflow,wandb",
                    "--mlflow_uri", tmp_path / "mlruns")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "SegOnCarvana"]
    (logged,) = client.search_runs([experiment.experiment_id])
    pictures = [item.path for item in client.list_artifacts(logged.info.run_id, "images")]
    assert sum(path.endswith(".png") and "image_truth_prediction" in path for path in pictures) == 2  # one per epoch
    (_, rows, _), = wandb_history(run)
    kind = "val/image_truth_prediction/_type"  # the record flattens an image into its fields
    assert [(row["epoch"], row[kind]) for row in rows if kind in row] == [(1, "image-file"), (2, "image-file")]
    assert all(any((run / "wandb").glob(f"offline-run-*/files/{row['val/image_truth_prediction/path']}"))
               for row in rows if kind in row)


def test_a_kill_after_the_test_logs_each_test_result_once(fashion_dir, tmp_path):
    """Killed after its test results reached the trackers but before metrics.json said so, the run
    is resumed, tests again, and MLflow still holds each test result once."""
    from utils.errors import UserError

    class KilledAfterTheTest(VanillaTrainer):
        def write_metrics(self, status, test=None, tested=None):
            if status == "completed":
                raise UserError("killed")  # as a kill would leave it: metrics.json still says running
            super().write_metrics(status, test, tested)

    flags = [*QUICK, "--logger", "csv,mlflow", "--log_every_n_steps", "2"]
    full = train_vanilla(fashion_dir, tmp_path / "full", *flags, "--mlflow_uri", tmp_path / "full_store")
    store = tmp_path / "cut_store"
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path / "cut", *flags, "--mlflow_uri", store, trainer_class=KilledAfterTheTest)
    run = run_dirs(tmp_path / "cut")[0]
    assert "test/accuracy" in mlflow_runs(store)[run.name][2]  # the interrupted process had sent them
    assert VanillaTrainer.main(["--resume", str(run / "Vanilla_last_ckpt.pth")]) == 0
    assert mlflow_runs(store)[run.name][2] == csv_histories(full) == csv_histories(run)
