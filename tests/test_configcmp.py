"""Tests for cli/configcmp.py, on run folders written in the trainer's format."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.configcmp import MISSING, compare, load_run, main

REPO_ROOT = Path(__file__).resolve().parents[1]

OPTIONS = {"lr": 0.001, "batch_size": 32, "optimizer": "adam", "viz": False, "milestones": [10, 20]}
ENVIRONMENT = {"torch_version": "2.3.0", "python_version": "3.11.9", "device": "cuda",
               "git_commit": "abc123", "git_dirty": False, "command": "python train.py",
               "started_at": "2024-05-01T12:00:00"}
METRICS = {"monitor": "val/accuracy", "monitor_mode": "max", "best_epoch": 3, "best_value": 0.91,
           "history": [{"epoch": 1, "train/loss": 0.9, "val/accuracy": 0.8},
                       {"epoch": 3, "train/loss": 0.4, "val/accuracy": 0.91}],
           "test": {"test/loss": 0.3, "test/accuracy": 0.9}, "status": "completed"}


def make_run(root, name, environment=None, metrics=METRICS, **changes):
    """Write a run folder; `changes` override options, and an option set to MISSING is left out."""
    options = {key: value for key, value in {**OPTIONS, **changes}.items() if value is not MISSING}
    folder = root / name
    folder.mkdir(parents=True)
    config = {"options": options, "environment": {**ENVIRONMENT, **(environment or {})}}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return folder


def run_main(capsys, *paths):
    code = main([str(path) for path in paths])
    out, err = capsys.readouterr()
    return code, out, err


def test_identical_configs_match(tmp_path, capsys):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b", environment={"started_at": "later"})
    code, out, err = run_main(capsys, a, b)
    assert code == 0
    assert "Options match" in out
    assert "Environment" not in out  # start times always differ and are not worth a section
    assert err == ""


def test_a_run_and_its_resume_in_another_place_match(tmp_path, capsys):
    """--config, --output_dir, --proj_name and --resume say where a run lives, not what it computes."""
    a = make_run(tmp_path, "a", config="exp.yaml", output_dir="Results", resume=None)
    b = make_run(tmp_path, "b", config=None, output_dir="/scratch/runs", proj_name="Other",
                 resume="Results/Vanilla/a/Vanilla_last_ckpt.pth")
    code, out, _ = run_main(capsys, a, b)
    assert code == 0 and "Options match" in out
    assert "Where the runs live (not compared)" in out and "/scratch/runs" in out
    assert run_main(capsys, a, b, make_run(tmp_path, "c", output_dir="elsewhere"))[0] == 0
    assert run_main(capsys, a, make_run(tmp_path, "d", output_dir="elsewhere", lr=0.5))[0] == 1


def test_differing_option_exits_1_and_shows_both_values(tmp_path, capsys):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b", lr=0.01)
    code, out, _ = run_main(capsys, a, b)
    assert code == 1
    line = next(line for line in out.splitlines() if line.split()[:1] == ["lr"])
    assert line.split() == ["lr", "0.001", "0.01"]
    assert "batch_size" not in out


def test_option_only_on_one_side_is_reported(tmp_path, capsys):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", batch_size=MISSING, warmup_epochs=5)
    code, out, _ = run_main(capsys, a, b)
    assert code == 1
    assert "Only in A (1):\n  batch_size = 32" in out
    assert "Only in B (1):\n  warmup_epochs = 5" in out


def test_values_compare_as_json(tmp_path, capsys):
    a = make_run(tmp_path, "a", milestones=[10, 20], viz=False)
    b = make_run(tmp_path, "b", milestones=[10, 20], viz=False)
    text = (b / "config.json").read_text().replace('"lr": 0.001', '"lr": 0.0010')
    (b / "config.json").write_text(text.replace('"batch_size": 32', '"batch_size": 32.0'))
    assert run_main(capsys, a, b)[0] == 0

    c = make_run(tmp_path, "c", milestones=[10, 30], viz=0)
    varying = compare([load_run(a), load_run(c)])
    assert varying == {"viz": [False, 0], "milestones": [[10, 20], [10, 30]]}


def test_metrics_and_environment_are_shown(tmp_path, capsys):
    a = make_run(tmp_path, "a")
    b_metrics = {**METRICS, "best_value": 0.876543219, "best_epoch": 7, "test": {"test/loss": 0.25}}
    b = make_run(tmp_path, "b", metrics=b_metrics, environment={"git_commit": "def456"})
    code, out, _ = run_main(capsys, a, b)
    assert code == 0  # environment differences are informational
    assert "best val/accuracy" in out and "test/accuracy" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split()[:1] in (["A"], ["B"])}
    assert rows["A"] == ["A", "completed", "0.91", "3", "0.3", "0.9"]
    assert rows["B"] == ["B", "completed", "0.876543", "7", "0.25", "-"]
    assert "git_commit  abc123  def456" in out
    assert "started_at" not in out


def test_missing_metrics_file_is_shown_as_dashes(tmp_path, capsys):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b", metrics=None)
    code, out, _ = run_main(capsys, a, b)
    assert code == 0
    row_b = next(line for line in out.splitlines() if line.startswith("  B "))
    assert row_b.split() == ["B"] + ["-"] * 5  # status, best, epoch and both test metrics


def test_config_json_paths_work(tmp_path, capsys):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b", optimizer="sgd")
    code, out, _ = run_main(capsys, a / "config.json", b / "config.json")
    assert code == 1
    assert "adam" in out and "sgd" in out
    assert "0.91" in out  # metrics.json found beside the config
    assert load_run(b / "config.json")["name"] == "b"


def test_many_runs_print_a_table_of_varying_options(tmp_path, capsys):
    results = tmp_path / "Results" / "Vanilla"
    make_run(results, "2024-05-01_1200")
    make_run(results, "2024-05-02_0900", lr=0.01)
    make_run(results, "2024-05-03_0800", optimizer="sgd", dropout=0.5)
    (results / "notes.txt").write_text("stray file")
    (results / "empty_run").mkdir()
    code, out, err = run_main(capsys, *sorted(results.iterdir()))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["run", "lr", "optimizer", "dropout", "status", "best",
                                "val/accuracy", "epoch", "test/loss", "test/accuracy"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["2024-05-01_1200", "0.001", "adam", "-"],
        ["2024-05-02_0900", "0.01", "adam", "-"],
        ["2024-05-03_0800", "0.001", "sgd", "0.5"],
    ]
    assert "batch_size" not in out
    assert err.count("warning: skipping") == 2
    assert "notes.txt" in err and "empty_run" in err


def test_many_identical_runs_exit_0(tmp_path, capsys):
    runs = [make_run(tmp_path, name) for name in "abc"]
    code, out, _ = run_main(capsys, *runs)
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["run", "status"]
    assert "Options match across all 3 runs" in out


def test_many_arguments_with_fewer_than_two_runs_is_an_error(tmp_path, capsys):
    a = make_run(tmp_path, "a")
    (tmp_path / "notes.txt").write_text("stray file")
    code, _, err = run_main(capsys, a, tmp_path / "notes.txt", tmp_path / "nothing")
    assert code == 2
    assert err.splitlines()[-1].startswith("error: only 1 of the 3 arguments")


def test_missing_path_is_an_error(tmp_path, capsys):
    a, missing = make_run(tmp_path, "a"), tmp_path / "no_such_run"
    code, out, err = run_main(capsys, a, missing)
    assert code == 2
    assert out == ""
    assert err.startswith("error:") and str(missing) in err
    assert len(err.splitlines()) == 1


def test_folder_without_config_is_an_error(tmp_path, capsys):
    a, empty = make_run(tmp_path, "a"), tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_main(capsys, a, empty)
    assert code == 2
    assert err.startswith("error:") and str(empty) in err and "config.json" in err


@pytest.mark.parametrize("text", ['{"options": {"lr": 0.1', '[1, 2]', '{"lr": 0.1}'])
def test_malformed_config_is_an_error(tmp_path, capsys, text):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b")
    (b / "config.json").write_text(text)
    code, _, err = run_main(capsys, a, b)
    assert code == 2
    assert err.startswith("error:") and str(b / "config.json") in err
    assert len(err.splitlines()) == 1


def test_fewer_than_two_arguments_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(make_run(tmp_path, "a"))])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("script", ["cli/configcmp.py", "utils/configcmp.py"])  # its place, and its former one
def test_script_entry_point(tmp_path, script):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b", lr=0.01)
    result = subprocess.run([sys.executable, script, str(a), str(b)],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert "lr" in result.stdout and "0.01" in result.stdout
