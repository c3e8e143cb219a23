"""End to end: the FashionMNIST task trains, writes its run folder, and the evaluator agrees."""
import subprocess

import pytest

from helpers import (ROOT, assert_same_results, assert_same_weights, load_plain, python_command, read_json, run_dirs,
                     train_vanilla)


@pytest.fixture(scope="module")
def trained_run(fashion_dir, tmp_path_factory):
    return train_vanilla(fashion_dir, tmp_path_factory.mktemp("results"), "--n_epoch", "3", "--log_every_n_steps", "10")


def test_short_training_learns(trained_run):
    metrics = read_json(trained_run / "metrics.json")
    assert metrics["test"]["test/accuracy"] > 0.6  # chance is 0.1
    assert metrics["status"] == "completed"
    assert len(metrics["history"]) == 3
    best = max(metrics["history"], key=lambda record: record["val/accuracy"])
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["best_value"] == best["val/accuracy"]
    assert metrics["history"][-1]["train/loss"] < metrics["history"][0]["train/loss"]


def test_run_folder_holds_every_file(trained_run):
    for name in ("config.json", "log.txt", "metrics.json", "split.json", "Vanilla_best_ckpt.pth", "Vanilla_last_ckpt.pth"):
        assert (trained_run / name).is_file(), name
    config = read_json(trained_run / "config.json")
    assert config["options"]["lr"] == 1e-3 and config["options"]["seed"] == 0
    for key in ("torch_version", "device", "git_commit", "git_dirty", "command"):
        assert key in config["environment"]
    log = (trained_run / "log.txt").read_text()
    assert "epoch 3/3" in log and "test (Vanilla_best_ckpt.pth" in log
    assert log.splitlines()[0][:4].isdigit()  # lines start with a timestamp


def test_checkpoints_load_with_weights_only(trained_run):
    for kind in ("best", "last"):
        checkpoint = load_plain(trained_run / f"Vanilla_{kind}_ckpt.pth")
        assert not any(key.startswith("module.") for key in checkpoint["model"])
        for key in ("optimizer", "scheduler", "monitor", "epoch", "global_step", "rng", "config", "best_metric"):
            assert key in checkpoint, key
    last = load_plain(trained_run / "Vanilla_last_ckpt.pth")
    assert last["epoch"] == 3 and last["global_step"] == 3 * 43


def test_tensorboard_events_are_readable(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(trained_run / "summary"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "val/loss", "train/accuracy", "val/accuracy", "train/step_loss", "lr", "test/accuracy"):
        assert tag in tags, tag
    assert [event.step for event in events.Scalars("val/accuracy")] == [1, 2, 3]
    assert len(events.Scalars("train/step_loss")) == 3 * 43 // 10
    hparams = EventAccumulator(str(trained_run / "summary" / "hparams"))
    hparams.Reload()
    assert any(tag.startswith("hparam/") for tag in hparams.Tags()["scalars"])


def test_split_is_disjoint_and_test_is_official(trained_run):
    split = read_json(trained_run / "split.json")
    assert not set(split["train"]) & set(split["val"])
    assert len(split["train"]) + len(split["val"]) == 1500
    assert split["test_from"] == "test_set" and len(split["test"]) == 400


def test_evaluator_reproduces_trainer_metrics(trained_run, tmp_path):
    from eval_vanilla import VanillaEvaluator
    assert VanillaEvaluator.main(["--model_path", str(trained_run / "Vanilla_best_ckpt.pth"),
                                  "--save_path", str(tmp_path), "--viz", "--n_snap", "100"]) == 0
    evaluated = read_json(tmp_path / "metrics.json")
    assert evaluated["metrics"] == read_json(trained_run / "metrics.json")["test"]
    # Every 100th of the 400 test samples is pictured: four tiles (112x112 pixels, two label lines and
    # a margin) on one contact sheet.
    from PIL import Image
    sheets = list((tmp_path / "viz").glob("*.png"))
    assert [sheet.name for sheet in sheets] == ["contact_sheet_001.png"]
    with Image.open(sheets[0]) as sheet:
        assert sheet.size == (4 * (112 + 4), 112 + 26 + 4)


def test_same_seed_gives_identical_runs(fashion_dir, tmp_path):
    first = train_vanilla(fashion_dir, tmp_path / "a")
    second = train_vanilla(fashion_dir, tmp_path / "b")
    assert_same_results(first, second)
    assert_same_weights(first, second)


def test_two_runs_in_the_same_second_get_their_own_folders(fashion_dir, tmp_path):
    for _ in range(2):
        train_vanilla(fashion_dir, tmp_path, "--n_epoch", "1", "--train_val_sample_rate", "0.1", "--test_sample_rate", "0.1")
    assert len(run_dirs(tmp_path)) == 2


def test_sample_rates_subsample_with_a_seed(fashion_dir, tmp_path):
    run = train_vanilla(fashion_dir, tmp_path, "--n_epoch", "1", "--train_val_sample_rate", "0.2",
                        "--test_sample_rate", "0.5")
    split = read_json(run / "split.json")
    assert len(split["train"]) + len(split["val"]) == 300
    assert len(split["test"]) == 200


def test_mistyped_flag_is_an_error(tmp_path):
    result = subprocess.run(python_command("trainer_vanilla.py", "--n_epochs", "2"), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--n_epochs" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    from trainer_vanilla import VanillaTrainer
    with pytest.raises(SystemExit) as exit_info:
        VanillaTrainer.main(["--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "nowhere" in message and "--download" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, expected", [("", True), ("True", True), ("false", False), ("0", False)])
def test_boolean_flags_mean_what_they_say(text, expected):
    from trainer_vanilla import VanillaTrainer
    argv = ["--deterministic"] + ([text] if text else [])
    args, _ = VanillaTrainer.parse(argv)
    assert args.deterministic is expected


def test_result_files_get_the_permissions_of_the_umask(fashion_dir, tmp_path):
    import os
    from eval_vanilla import VanillaEvaluator
    previous = os.umask(0o002)  # a team's shared server: group members read and write
    try:
        run = train_vanilla(fashion_dir, tmp_path, "--n_epoch", "1", "--train_val_sample_rate", "0.1",
                            "--test_sample_rate", "0.1")
        assert VanillaEvaluator.main(["--model_path", str(run / "Vanilla_best_ckpt.pth")]) == 0
    finally:
        os.umask(previous)
    for name in ("config.json", "metrics.json", "split.json", "Vanilla_best_ckpt.pth", "Vanilla_last_ckpt.pth",
                 "eval/test/metrics.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o664, name
    for name in ("eval", "eval/test"):
        assert (run / name).stat().st_mode & 0o777 == 0o775, name
