"""sweep.py on Optuna: trials as ordinary run folders, pruning through the trainer's per-epoch
report, a sweep killed and started again that ends with every trial complete or pruned exactly
once and each trial bit-equal to the uninterrupted sweep's, the table, and bad input in one line."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, assert_same_weights, metric_history, read_json, refused, uninterrupted_run

optuna = pytest.importorskip("optuna")
import sweep  # noqa: E402  (after the skip: it needs optuna)
from sweeps import locks  # noqa: E402
from sweeps.claims import worker_name  # noqa: E402
from sweeps.link import decide  # noqa: E402
from sweeps.runner import Sweep  # noqa: E402
from sweeps.study import open_study, sampler_maker  # noqa: E402
from utils.errors import UserError  # noqa: E402

SPACE = ["--space", "lr=loguniform:1e-4:1e-1", "dropout=uniform:0:0.5", "batch_size=choice:32,64"]


def sweep_cli(argv):
    sys.exit(sweep.run_cli(sweep.main, argv))


def study_of(folder):
    return optuna.load_study(study_name="vanilla", storage=f"sqlite:///{folder / 'study.db'}")


def in_process_sweep(folder, n_trials=2, devices=()):
    """A study and a Sweep on it in `folder`, with no task behind it: for the sweep's own bookkeeping."""
    from argparse import Namespace

    from sweeps.space import parse_space
    params = parse_space(["lr=uniform:0.1:0.2"])
    args = Namespace(seed=0, sampler="tpe", pruner="none", startup_trials=2, warmup_epochs=1)
    study = open_study(None, folder, "vanilla", "maximize", params, args)
    return study, Sweep(folder, study, sampler_maker(params, args), params, Path("trainer_vanilla.py"),
                        [], n_trials=n_trials, devices=list(devices))


def task_options(data_dir, output_dir, *extra):
    return ["--", "--data_dir", data_dir, "--output_dir", output_dir, "--n_epoch", "3", "--train_val_sample_rate",
            "0.5", "--test_sample_rate", "0.25", "--deterministic", "--save_every_n_steps", "5", *extra]


def sweep_command(data_dir, output_dir, *options):
    return [sys.executable, ROOT / "sweep.py", ROOT / "trainer_vanilla.py", "--n_trials", "6", *SPACE,
            "--startup_trials", "2", *options, *task_options(data_dir, output_dir)]


def trials_of(folder):
    """{number: (state, params, value, run folder)} from the study, read back with Optuna's API."""
    study = study_of(folder)
    return {t.number: (t.state.name, t.params, t.value, Path(t.user_attrs["run_folder"])) for t in study.trials}


def run_sweep(data_dir, output_dir, *options):
    """The sweep of `sweep_command`, run to its end: (its folder, what it printed)."""
    result = subprocess.run(list(map(str, sweep_command(data_dir, output_dir, *options))), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return output_dir / "sweep_vanilla", result.stdout


@pytest.fixture(scope="module")
def uninterrupted(fashion_dir, tmp_path_factory):
    return uninterrupted_run(fashion_dir, tmp_path_factory, train=run_sweep)


def test_a_sweep_runs_every_trial_as_a_run_folder_and_prunes_through_the_trainer(uninterrupted):
    folder, output = uninterrupted
    trials = trials_of(folder)
    assert sorted(trials) == list(range(6))
    states = [state for state, *_ in trials.values()]
    assert set(states) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states and "COMPLETE" in states
    for number, (state, params, value, run) in trials.items():
        assert run.parent == folder and run.name.endswith(f"_trial{number:04d}")
        options = read_json(run / "config.json")["options"]
        assert {name: options[name] for name in params} == params  # the trial ran with the values drawn
        metrics = read_json(run / "metrics.json")
        assert (run / "summary" / "hparams").is_dir()  # a row in TensorBoard's HPARAMS tab, pruned or not
        if state == "PRUNED":
            assert metrics["status"] == "pruned" and "test" not in metrics and metrics["epochs_done"] < 3
        else:
            assert metrics["status"] == "completed" and "test/accuracy" in metrics["test"]
            assert value == metrics["best_value"] == max(r["val/accuracy"] for r in metrics["history"])
    assert len(list(folder.glob("*_trial*"))) == 6
    table = list(csv.reader(open(folder / "trials.csv")))
    assert table[0][:6] == ["best", "trial", "state", "lr", "dropout", "batch_size"]
    best = max((t for t in trials.items() if t[1][0] == "COMPLETE"), key=lambda t: t[1][2])[0]
    assert [row[1] for row in table[1:] if row[0] == "*"] == [str(best)]
    assert "test/accuracy" in table[0] and f"trial {best} complete" in output


def test_a_killed_sweep_started_again_finishes_every_trial_once_bit_equal(fashion_dir, tmp_path, uninterrupted):
    expected = trials_of(uninterrupted[0])
    command = list(map(str, sweep_command(fashion_dir, tmp_path)))
    folder = tmp_path / "sweep_vanilla"
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(folder.glob("*_trial0002/Vanilla_last_ckpt.pth")):  # trial 2 has saved a state: kill now
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)  # the trial is told by the system (Linux) and saves its state
    process.wait()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr

    trials = trials_of(folder)
    assert sorted(trials) == list(range(6))
    for number, (state, params, value, run) in trials.items():
        assert (state, params, value) == expected[number][:3], number
        assert metric_history(run) == metric_history(expected[number][3]), number
        assert_same_weights(run, expected[number][3])
    assert len(list(folder.glob("*_trial*"))) == 6 + len(list(folder.glob("*.restarted")))
    log = (trials[2][3] / "log.txt").read_text()
    assert "resumed from" in log  # trial 2 continued its run folder instead of starting over
    assert "trial 2 resumed from" in result.stdout


def test_the_table_on_demand_reads_the_study(uninterrupted, capsys):
    folder, _ = uninterrupted
    assert sweep.main(["--table", folder]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["best", "trial", "state", "lr", "dropout", "batch_size"] and len(lines) >= 7


def test_a_grid_sweep_from_a_space_file_visits_each_point_once(fashion_dir, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: grid:0.001,0.01\nbatch_size: [32, 64]\n")
    with pytest.raises(UserError, match="mixes grid: with other kinds"):  # a list is a choice, not a grid
        sweep.main(["trainer_vanilla.py", "--space", space, *task_options(fashion_dir, tmp_path)])
    space.write_text('{"lr": "grid:0.001,0.01", "batch_size": {"kind": "grid", "values": [32, 64]}}\n')
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, "sweep.py", "trainer_vanilla.py", "--space", str(space), "--pruner",
                             "none", *map(str, task_options(fashion_dir, output, "--n_epoch", "1"))], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    study = study_of(output / "sweep_vanilla")
    points = sorted((t.params["lr"], t.params["batch_size"]) for t in study.trials)
    assert points == [(0.001, 32), (0.001, 64), (0.01, 32), (0.01, 64)]
    assert all(t.state.name == "COMPLETE" for t in study.trials)


@pytest.mark.parametrize("space, expected", [
    (["lr=loguniform:0:1"], "expected LOW < HIGH, both > 0"),
    (["lr=normal:0:1"], "unknown kind 'normal'"),
    (["lrr=uniform:0.1:0.2"], "--space lrr: not an option of the task script; did you mean lr?"),
    (["batch_size=choice:32,-1"], "the task refuses -1"),
    (["dropout=uniform:0:0.5", "lr=grid:0.1,0.2"], "mixes grid: with other kinds"),
    (["resume=choice:a,b"], "--space resume: this option cannot be swept"),
])
def test_a_bad_space_is_one_line_naming_it(space, expected, fashion_dir, tmp_path, capsys):
    error = refused(sweep_cli,
                    ["trainer_vanilla.py", "--space", *space, *task_options(fashion_dir, tmp_path)], capsys)
    assert expected in error and not (tmp_path / "sweep_vanilla").exists()


def test_an_option_both_swept_and_fixed_is_refused(fashion_dir, tmp_path, capsys):
    error = refused(sweep_cli,
                    ["trainer_vanilla.py", *SPACE, *task_options(fashion_dir, tmp_path, "--lr", "0.1")], capsys)
    assert "--space lr and --lr after --" in error


def test_another_sweep_under_the_same_name_is_refused(uninterrupted, fashion_dir, capsys):
    folder, _ = uninterrupted
    error = refused(sweep_cli,
                    ["trainer_vanilla.py", "--space", "lr=uniform:0.1:0.2", *task_options(fashion_dir, folder.parent)],
                    capsys)
    assert "holds a sweep with another space" in error and "--name" in error


def test_a_trial_that_fails_is_recorded_with_its_error_and_the_sweep_goes_on(fashion_dir, tmp_path):
    result = subprocess.run([sys.executable, "sweep.py", "trainer_vanilla.py", "--space", "lr=grid:1e30,0.001",
                             *map(str, task_options(fashion_dir, tmp_path, "--n_epoch", "1", "--optim", "sgd"))],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "trial 0 failed (exit code 2: error: loss is nan" in result.stdout
    study = study_of(tmp_path / "sweep_vanilla")
    assert [(t.params["lr"], t.state.name) for t in study.trials] == [(1e30, "FAIL"), (0.001, "COMPLETE")]


def test_ctrl_c_stops_the_trials_which_save_and_the_same_command_continues(fashion_dir, tmp_path, uninterrupted):
    expected = trials_of(uninterrupted[0])
    command = [str(arg) for arg in sweep_command(fashion_dir, tmp_path)]
    command[command.index("6")] = "2"  # --n_trials 2: the first two trials of the uninterrupted sweep
    folder = tmp_path / "sweep_vanilla"
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list(folder.glob("*_trial0000/Vanilla_last_ckpt.pth")):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 130, output
    assert "trial 0 stopped (it continues when the sweep is started again)" in output  # it waited for the trial
    assert trials_of(folder)[0][0] == "RUNNING"
    assert "stopped by SIGINT" in (trials_of(folder)[0][3] / "log.txt").read_text()  # the trial saved its state

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = trials_of(folder)
    for number in (0, 1):
        assert trials[number][:3] == expected[number][:3]
        assert_same_weights(trials[number][3], expected[number][3])


def test_a_trial_told_by_another_process_between_the_read_and_the_lock_is_not_taken(tmp_path, monkeypatch):
    """Two sweep processes on one study and folder: the other one finishes trial 0 right after this
    one read the trials and before it locks trial 0's file."""
    study, worker = in_process_sweep(tmp_path)
    running = study.ask()
    worker.params[0].suggest(running)
    running.set_user_attr("worker", worker_name(tmp_path))  # this folder's trial, its process gone
    real_lock = locks.try_lock

    def told_meanwhile(path):
        if path.name == "trial_0000.lock":
            study.tell(running, 0.5)  # the other process
        return real_lock(path)
    monkeypatch.setattr(locks, "try_lock", told_meanwhile)
    claim = worker.claim()
    os.close(claim.lock_fd)
    trial, values, new = claim.trial, claim.values, claim.how == "started"
    assert trial.number == 1 and new and set(values) == {"lr"}


def test_each_trial_gets_its_gpu_and_a_share_of_the_cores(tmp_path):
    _, worker = in_process_sweep(tmp_path, devices=["0", "1"])
    worker.n_jobs = 2
    claim = worker.claim()
    trial, fd = claim.trial, claim.lock_fd
    seen = tmp_path / "seen.json"
    code = worker.launch(trial, [sys.executable, "-c", "import json, os, sys; json.dump({k: os.environ.get(k) for k in "
                                 f"('CUDA_VISIBLE_DEVICES', 'OMP_NUM_THREADS')}}, open({str(seen)!r}, 'w'))"], fd, "1")
    os.close(fd)
    assert code == 0
    assert json.loads(seen.read_text()) == {"CUDA_VISIBLE_DEVICES": "1",
                                            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")
                                            or str(max(1, (os.cpu_count() or 1) // 2))}


def test_a_trial_is_never_pruned_after_its_last_epoch(tmp_path):
    study, worker = in_process_sweep(tmp_path)
    study.pruner = optuna.pruners.ThresholdPruner(lower=1.0)  # prunes any value below 1
    first, second = worker.claim(), worker.claim()
    os.close(first.lock_fd)
    os.close(second.lock_fd)
    assert decide(first.trial, 2, 0.5, last=False) is True
    assert decide(second.trial, 2, 0.5, last=True) is False
    assert decide(first.trial, 2, 0.5) is True  # an epoch reported again gets the decision it got


def test_a_later_start_with_another_storage_is_refused(fashion_dir, tmp_path, capsys):
    folder = tmp_path / "sweep_vanilla"
    folder.mkdir()
    options = task_options(fashion_dir, tmp_path)
    (folder / "sweep.json").write_text(json.dumps({
        "script": str(ROOT / "trainer_vanilla.py"), "study": "vanilla", "task_options": [str(o) for o in options[1:]],
        "space": {"lr": "uniform:0.1:0.2"}, "storage": None}))
    error = refused(sweep_cli,
                    [ROOT / "trainer_vanilla.py", "--space", "lr=uniform:0.1:0.2", "--storage",
                     f"sqlite:///{tmp_path / 'other.db'}", *options], capsys)
    assert "keeps its study in study.db there" in error and not (tmp_path / "other.db").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--storage", "nosuchdriver://x"], "--storage nosuchdriver://x: "),
    (["--", "--resume=somewhere"], "--resume after --: a sweep resumes its own trials"),
])
def test_bad_storage_and_a_resume_are_one_line(argv, expected, fashion_dir, tmp_path, capsys):
    if argv[0] == "--":
        argv = ["--space", "lr=uniform:0.1:0.2", *task_options(fashion_dir, tmp_path), *argv[1:]]
    else:
        argv = ["--space", "lr=uniform:0.1:0.2", *argv, *task_options(fashion_dir, tmp_path)]
    error = refused(sweep_cli, ["trainer_vanilla.py", *argv], capsys)
    assert expected in error
