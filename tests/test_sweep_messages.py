"""What sweep.py says to a user who mistyped its command line or ran it again: one line that names the
fix, a changed option by name (a --config file's content too), and a sweep that ran no new trial."""
import subprocess
import sys

import pytest

from helpers import ROOT, refused

optuna = pytest.importorskip("optuna")
import sweep  # noqa: E402  (after the skip: it needs optuna)
from sweeps.study import record  # noqa: E402
from sweeps.task_script import load_trainer, task_options  # noqa: E402
from utils.errors import UserError  # noqa: E402


def sweep_cli(argv):
    sys.exit(sweep.run_cli(sweep.main, argv))


def test_the_task_options_without_the_double_dash_are_one_line_that_names_it(capsys):
    error = refused(sweep_cli, ["trainer_vanilla.py", "--space", "lr=loguniform:1e-4:1e-1", "--n_epoch", "5"], capsys)
    assert "--n_epoch" in error and "the task script's options go after --" in error


def sweep_json(folder, config, params):
    from sweeps.space import parse_space
    argv = ["--config", str(config)]
    _, options = task_options(load_trainer(ROOT / "trainer_vanilla.py"), argv)
    params = parse_space(params)
    return record(folder, {"script": "trainer_vanilla.py", "space": {p.name: p.describe() for p in params},
                           "task_options": argv, "monitor": options.monitor, "direction": "maximize", "storage": None,
                           "resolved_options": sweep.resolved_options(options, params)})


def test_a_changed_config_file_is_refused_naming_the_option_that_differs(tmp_path):
    config = tmp_path / "task.yaml"
    config.write_text("n_epoch: 3\n")
    sweep_json(tmp_path, config, ["lr=loguniform:1e-4:1e-1"])
    sweep_json(tmp_path, config, ["lr=loguniform:1e-4:1e-1"])  # the same file again: the same sweep
    config.write_text("n_epoch: 5\n")  # the same command line, another experiment
    with pytest.raises(UserError, match=r"--n_epoch \(3 there, 5 here\)"):
        sweep_json(tmp_path, config, ["lr=loguniform:1e-4:1e-1"])


def test_a_finished_sweep_started_again_says_that_no_new_trial_ran(fashion_dir, tmp_path):
    command = [sys.executable, ROOT / "sweep.py", ROOT / "trainer_vanilla.py", "--n_trials", "1",
               "--space", "lr=choice:0.001", "--", "--data_dir", fashion_dir, "--output_dir", tmp_path,
               "--n_epoch", "1", "--train_val_sample_rate", "0.2", "--test_sample_rate", "0.1"]
    first, again = (subprocess.run(list(map(str, command)), cwd=ROOT, capture_output=True, text=True, timeout=300)
                    for _ in range(2))
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert "no new trial ran" not in first.stdout
    assert "the study holds its 1 trials already: no new trial ran" in again.stdout
