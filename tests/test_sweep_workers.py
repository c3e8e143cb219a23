"""Sweeps across machines: three workers started at once from three working folders that share nothing
but the study (a real PostgreSQL server, then a journal file), one of them SIGKILLed in the middle of
a trial; every parameter set ends once, the killed trial is retried by another worker (resumed
bit-equal from a shared --trial_dir), and the best value is the uninterrupted single worker's. And a
sweep whose trials run as two DDP processes."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import ROOT, assert_same_weights, read_json

optuna = pytest.importorskip("optuna")

SPACE = ["--space", "lr=loguniform:1e-3:1e-1", "batch_size=choice:16,32"]
PASSWORD = "not-a-real-secret"


def worker_command(data_dir, output_dir, *options):
    """A worker: a random sampler seeded by each parameter set's place, so every worker draws the same sets."""
    return list(map(str, [sys.executable, ROOT / "sweep.py", ROOT / "trainer_vanilla.py", "--n_trials", "3", *SPACE,
                          "--sampler", "random", "--pruner", "none", "--seed", "3", *options, "--", "--data_dir",
                          data_dir, "--output_dir", output_dir, "--n_epoch", "1", "--train_val_sample_rate", "0.2",
                          "--test_sample_rate", "0.1", "--deterministic", "--save_every_n_steps", "2"]))


@pytest.fixture(scope="module")
def single_worker(fashion_dir, tmp_path_factory):
    """The uninterrupted sweep of one worker on SQLite: {params as a tuple: run folder}, best value."""
    output = tmp_path_factory.mktemp("single")
    result = subprocess.run(worker_command(fashion_dir, output), cwd=output, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="vanilla", storage=f"sqlite:///{output / 'sweep_vanilla' / 'study.db'}")
    return {key(t.params): Path(t.user_attrs["run_folder"]) for t in study.trials}, study.best_value


def key(params):
    return tuple(sorted(params.items()))


def run_three_workers(data_dir, tmp_path, storage, *options, trial_dir=None):
    """Three workers at once, each in its own working folder; the first SIGKILLed once its trial has
    saved a state. Returns (the study, the killed worker's folder, the survivors' outputs)."""
    folders = [tmp_path / f"machine{i}" for i in range(3)]
    workers = []
    for folder in folders:
        folder.mkdir()
        workers.append(subprocess.Popen(worker_command(data_dir, "out", "--storage", storage, "--heartbeat", "1",
                                                       *options), cwd=folder, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    runs = trial_dir or folders[0] / "out" / "sweep_vanilla"
    deadline = time.time() + 300
    while not killed_trial_saved(runs, folders[0]):
        assert workers[0].poll() is None and time.time() < deadline, workers[0].communicate()[0]
        time.sleep(0.005)
    os.kill(workers[0].pid, signal.SIGKILL)  # its trial is told by the system (Linux), saves its state and stops
    workers[0].wait()
    outputs = [worker.communicate(timeout=600)[0] for worker in workers[1:]]
    for worker, output in zip(workers[1:], outputs):
        assert worker.returncode == 0, output
    study = optuna.load_study(study_name="vanilla", storage=storage_url_of(storage))
    return study, folders[0], outputs


def killed_trial_saved(runs, folder):
    """Whether the first worker's trial has saved a state (its trial's log names its run folder)."""
    logs = list((folder / "out" / "sweep_vanilla" / "logs").glob("trial_*.txt"))
    if not logs:
        return False
    number = logs[0].stem.removeprefix("trial_")
    return bool(list(Path(runs).glob(f"*_trial{number}/Vanilla_last_ckpt.pth")))


def storage_url_of(storage):
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(storage.removeprefix("journal:")))
    return storage


def check_every_set_ended_once(study, single_worker, killed_folder):
    """Each parameter set ended once (a retried trial's failure aside), the killed one retried by another
    worker with its parameters, and the best value the single worker's. Returns (killed, retry) trials."""
    expected, best = single_worker
    retried = {number for t in study.trials for number in t.system_attrs.get("retry_history", [])}
    ended = [key(t.params) for t in study.trials if t.number not in retried]
    assert sorted(ended) == sorted(expected) and len(ended) == 3
    assert all(t.state.name == "COMPLETE" for t in study.trials if t.number not in retried)
    assert len(retried) == 1
    killed = study.trials[retried.pop()]
    assert killed.state.name == "FAIL" and killed.user_attrs["worker"].endswith(str(killed_folder / "out" /
                                                                                    "sweep_vanilla"))
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.params == killed.params and retry.user_attrs["worker"] != killed.user_attrs["worker"]
    assert study.best_value == best
    return killed, retry


def postgres_binaries():
    """The folder of PostgreSQL's initdb and pg_ctl: on PATH, or where Debian's package puts them."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(debian[-1]).parent if debian else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own on a Unix socket in a temporary folder (as `nobody` when the tests
    run as root, which the server refuses); its URL, with a password that must never be written."""
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
                    "apt-get install postgresql, as .ci/run does")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'psycopg[binary]'")
    folder = Path(tempfile.mkdtemp(prefix="sweep-postgres-"))
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(folder, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    data, log = folder / "data", folder / "server.log"
    subprocess.run([*as_user, binaries / "initdb", "-D", data, "-A", "trust", "-U", "sweep"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, binaries / "pg_ctl", "-D", data, "-l", log, "-w", "-o",
                    f"-k {folder} -c listen_addresses='' -c fsync=off", "start"], check=True, capture_output=True)
    try:
        import psycopg
        with psycopg.connect(host=str(folder), user="sweep", dbname="postgres", autocommit=True) as connection:
            connection.execute("CREATE DATABASE sweeps")
        yield f"postgresql://sweep:{PASSWORD}@/sweeps?host={folder}"
    finally:
        subprocess.run([*as_user, binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_three_workers_on_postgresql_one_killed_every_set_once_best_as_one_worker(postgres, fashion_dir, tmp_path,
                                                                                 single_worker, capsys):
    study, killed_folder, outputs = run_three_workers(fashion_dir, tmp_path, postgres)
    killed, retry = check_every_set_ended_once(study, single_worker, killed_folder)
    assert any(f"trial {retry.number} started again (retry of trial {killed.number})" in output for output in outputs)
    import sweep
    survivor = tmp_path / "machine1" / "out" / "sweep_vanilla"
    assert sweep.main(["--table", survivor]) == 0
    table = capsys.readouterr().out
    assert "retried" in table and "retry of" in table
    assert all((survivor / name).stat().st_size > 0 for name in ("history.png", "importances.png",
                                                                 "parallel_coordinates.png"))
    assert "importance of the parameters" in table
    written = [path for path in tmp_path.rglob("*") if path.is_file() and path.suffix in (".json", ".txt", ".csv")]
    assert written and not [path for path in written if PASSWORD in path.read_text(errors="replace")]
    assert not [output for output in outputs if PASSWORD in output]
    assert read_json(survivor / "sweep.json")["storage"] == postgres.replace(f":{PASSWORD}", "")


def test_three_workers_on_a_journal_file_the_killed_trial_resumes_bit_equal(fashion_dir, tmp_path, single_worker):
    shared = tmp_path / "shared"  # a shared filesystem: the journal and the trials' run folders
    study, killed_folder, outputs = run_three_workers(fashion_dir, tmp_path, f"journal:{shared / 'study.log'}",
                                                      "--trial_dir", shared / "trials", trial_dir=shared / "trials")
    killed, retry = check_every_set_ended_once(study, single_worker, killed_folder)
    run = Path(retry.user_attrs["run_folder"])
    assert run == Path(killed.user_attrs["run_folder"]) and run.parent == shared / "trials"
    assert "resumed from" in (run / "log.txt").read_text()  # the retry continued the killed trial's checkpoint
    assert any(f"trial {retry.number} resumed from {run.name} (retry of trial {killed.number})" in output
               for output in outputs)
    assert_same_weights(run, single_worker[0][key(retry.params)])


def test_a_sweep_of_ddp_trials_rank_0_talks_to_the_study(fashion_dir, tmp_path):
    command = worker_command(fashion_dir, tmp_path, "--nproc_per_trial", "2")
    command[command.index("3")] = "1"  # one trial
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="vanilla", storage=f"sqlite:///{tmp_path / 'sweep_vanilla' / 'study.db'}")
    [trial] = study.trials
    run = Path(trial.user_attrs["run_folder"])
    assert trial.state.name == "COMPLETE" and list(trial.intermediate_values) == [1]  # reported once, by rank 0
    assert "x2 processes" in (run / "log.txt").read_text()
    options = read_json(run / "config.json")["options"]
    assert {name: options[name] for name in trial.params} == trial.params
