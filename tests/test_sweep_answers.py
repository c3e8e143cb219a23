"""A trial's pruning answer that never came is asked again, so that a trial pruned across a restart is
pruned exactly where the uninterrupted one is; and a search space whose corners break the training
options' constraints is refused before any trial starts."""
import json
import os

import pytest

from helpers import ROOT, assert_same_weights, metric_history, read_json, refused

optuna = pytest.importorskip("optuna")
import sweep  # noqa: E402  (after the skip: it needs optuna)
from sweeps.link import ENVIRONMENT, decide  # noqa: E402
from trainer_vanilla import VanillaTrainer  # noqa: E402

PRUNER = {"pruner": "median", "startup_trials": 1, "warmup_epochs": 2}  # prunes at epoch 2, not before


def study_with_a_better_trial(folder):
    """A study whose one finished trial was better at every epoch: the median pruner prunes the next."""
    study = optuna.create_study(storage=f"sqlite:///{folder / 'study.db'}", study_name="vanilla",
                                direction="maximize", pruner=optuna.pruners.MedianPruner(1, 2))
    distribution = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    study.add_trial(optuna.create_trial(params={"lr": 1e-3}, distributions={"lr": distribution}, value=1.0,
                                        intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    return study, trial


def run_trial(fashion_dir, folder, trial, monkeypatch, *argv):
    """The trial's run in-process, as the sweep starts it; returns its exit code."""
    spec = {"trial": trial.number, "trial_id": trial._trial_id, "study": "vanilla",
            "storage": f"sqlite:///{folder / 'study.db'}", "pruner": PRUNER, "parent": None}
    monkeypatch.setenv(ENVIRONMENT, json.dumps(spec))
    argv = argv or ("--data_dir", fashion_dir, "--output_dir", folder, "--n_epoch", "3", "--train_val_sample_rate",
                    "0.3", "--deterministic", "--lr", "0.01")
    try:
        return VanillaTrainer.main([str(arg) for arg in argv])
    except SystemExit as stopped:
        return stopped.code


def run_folder(folder):
    [run] = [path for path in folder.iterdir() if path.is_dir()]
    return run


def test_a_lost_pruning_answer_is_asked_again_and_prunes_where_the_uninterrupted_trial_does(fashion_dir, tmp_path,
                                                                                           monkeypatch):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    for folder in (uninterrupted, interrupted):
        folder.mkdir()
    _, trial = study_with_a_better_trial(uninterrupted)
    assert run_trial(fashion_dir, uninterrupted, trial, monkeypatch) == 0
    expected = run_folder(uninterrupted)
    assert read_json(expected / "metrics.json")["status"] == "pruned"
    assert read_json(expected / "metrics.json")["epochs_done"] == 2

    study, trial = study_with_a_better_trial(interrupted)
    real = optuna.trial.Trial.should_prune

    def storage_gone_at_epoch_2(self):
        if max(self.study._storage.get_trial(self._trial_id).intermediate_values) == 2:
            raise optuna.exceptions.StorageInternalError("the database went away")
        return real(self)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", storage_gone_at_epoch_2)
    code = run_trial(fashion_dir, interrupted, trial, monkeypatch)
    run = run_folder(interrupted)
    assert code != 0 and read_json(run / "metrics.json")["status"] == "interrupted"  # stopped, not "not pruned"
    assert "no pruning answer from the sweep's study after epoch 2" in (run / "log.txt").read_text()

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", real)  # the database is back: the trial resumes
    assert run_trial(fashion_dir, interrupted, trial, monkeypatch, "--resume", run) == 0
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "pruned" and metrics["epochs_done"] == 2
    assert metric_history(run) == metric_history(expected)
    assert_same_weights(run, expected)
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.user_attrs["pruned_at"] == 2 and frozen.user_attrs["decided_through"] == 2


def test_an_epoch_reported_but_not_decided_is_decided_when_reported_again(tmp_path):
    """A trial killed between its report and the decision: the run that repeats the epoch gets a real decision."""
    study, trial = study_with_a_better_trial(tmp_path)
    trial.report(0.1, 2)  # then the process was killed
    assert decide(trial, 2, 0.1) is True
    assert decide(trial, 2, 0.1) is True  # and the same one after


@pytest.mark.parametrize("space, fixed, expected", [
    (["lr=loguniform:1e-5:1e-1"], ["--lr_scheduler", "cosine", "--min_lr", "1e-4"],
     "--space lr=loguniform:1e-05:0.1: a trial would be refused when it draws --lr 1e-05 (--min_lr 0.0001 is not "
     "below --lr 1e-05"),
    (["warmup_steps=int:0:10"], ["--lr_scheduler", "step"],
     "--space warmup_steps=int:0:10: a trial would be refused when it draws --warmup_steps 10 (--warmup_steps 10 "
     "with a per-epoch schedule: use --warmup_epoch, or --lr_interval step)"),
])
def test_a_space_that_breaks_a_training_constraint_is_refused_before_any_trial(space, fixed, expected, fashion_dir,
                                                                               tmp_path, capsys):
    def sweep_cli(argv):
        raise SystemExit(sweep.run_cli(sweep.main, argv))
    error = refused(sweep_cli, [ROOT / "trainer_vanilla.py", "--space", *space, "--", "--data_dir", fashion_dir,
                                "--output_dir", tmp_path, *fixed], capsys)
    assert expected in error and "narrow the range or change the fixed option" in error
    assert not (tmp_path / "sweep_vanilla").exists() and os.listdir(tmp_path) == []
