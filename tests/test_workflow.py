"""The everyday workflow: config files, debug runs, the model summary and graph, evaluation folders,
and the command line's help and suggestions."""
import argparse
import json
import subprocess
import time

import pytest
import torch
import yaml

from helpers import ROOT, metric_history, python_command, read_json, refused, run_dirs, train_vanilla
from trainer_vanilla import VanillaTask, VanillaTrainer

QUICK = ["--train_val_sample_rate", "0.4", "--test_sample_rate", "0.5"]


def run_script(*args):
    return subprocess.run(python_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ config files
def test_a_runs_config_json_repeats_the_run_and_flags_override_it(fashion_dir, tmp_path):
    first = train_vanilla(fashion_dir, tmp_path / "first", *QUICK, "--lr", "0.002", "--lr_decay_epochs", "3", "5")
    assert VanillaTrainer.main(["--config", str(first / "config.json"), "--output_dir", str(tmp_path / "again")]) == 0
    again = run_dirs(tmp_path / "again")[0]
    assert metric_history(again) == metric_history(first)
    assert read_json(again / "metrics.json")["test"] == read_json(first / "metrics.json")["test"]
    options = read_json(again / "config.json")["options"]
    assert options["lr"] == 0.002 and options["lr_decay_epochs"] == [3, 5]

    assert VanillaTrainer.main(["--config", str(first / "config.json"), "--output_dir", str(tmp_path / "but"),
                                "--lr", "0.003"]) == 0
    but = read_json(run_dirs(tmp_path / "but")[0] / "config.json")["options"]
    differing = {name for name in options if options[name] != but[name]}
    assert differing == {"lr", "output_dir"}
    assert but["lr"] == 0.003


def test_a_yaml_file_sets_options_and_print_config_writes_a_file_that_reads_back(fashion_dir, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(f"data_dir: {fashion_dir}\nn_epoch: 3\nlr: 1.0e-2\ngpu_devices: [cpu]\ndeterministic: true\n")
    result = run_script("trainer_vanilla.py", "--config", config, "--batch_size", "16", "--print_config")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["n_epoch"] == 3 and printed["lr"] == 0.01 and printed["gpu_devices"] == ["cpu"]
    assert printed["batch_size"] == 16 and printed["deterministic"] is True and printed["data_dir"] == str(fashion_dir)
    assert "config" not in printed and "print_config" not in printed and "resume" not in printed

    # The printed options are a config file: read back, they resolve to the same options.
    (tmp_path / "printed.yaml").write_text(result.stdout)
    args, _ = VanillaTrainer.parse(["--config", str(tmp_path / "printed.yaml")])
    again = {name: value for name, value in json.loads(json.dumps(vars(args), default=str)).items()
             if name not in ("config", "print_config", "resume")}
    assert again == printed
    json_result = run_script("trainer_vanilla.py", "--config", config, "--print_config", "json")
    assert json.loads(json_result.stdout)["n_epoch"] == 3


@pytest.mark.parametrize("content, expected", [
    ("n_epochs: 3\n", ["unknown option 'n_epochs'", "did you mean n_epoch"]),
    ("lr: -1\n", ["lr", "expected a positive number", "-1"]),
    ("optim: adamw2\n", ["optim", "expected one of", "adamw2"]),
    ("n_epoch: 2.5\n", ["n_epoch", "expected a positive integer"]),
    ("lr_decay_epochs: [3, x]\n", ["lr_decay_epochs", "'x'"]),
    ("batch_size: null\n", ["batch_size", "expected a value"]),
    ("- lr\n- 3\n", ["expected a mapping"]),
    ("lr: [1\n", ["not valid YAML", "line"]),
])
def test_a_bad_config_file_is_one_line_naming_the_file_and_the_option(tmp_path, capsys, content, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    stderr = refused(VanillaTrainer.main, ["--config", config], capsys)
    assert str(config) in stderr
    for text in expected:
        assert text in stderr, stderr


def test_config_without_a_file_is_one_line(capsys):
    assert "--config" in refused(VanillaTrainer.main, ["--config"], capsys)


def test_a_config_file_gives_two_values_where_two_are_due_and_no_resume(tmp_path, capsys):
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    (tmp_path / "one.yaml").write_text("img_size: 32\n")
    assert "img_size: expected 2 values, got 32" in refused(SegOnCarvanaTrainer.main,
                                                            ["--config", tmp_path / "one.yaml"], capsys)
    (tmp_path / "resume.yaml").write_text("resume: Results/x\n")
    assert "give --resume on the command line" in refused(VanillaTrainer.main, ["--config", tmp_path / "resume.yaml"],
                                                          capsys)


def test_print_config_of_a_resume_is_a_config_file_for_a_new_run(fashion_dir, tmp_path):
    run = train_vanilla(fashion_dir, tmp_path / "run", *QUICK, "--n_epoch", "1")
    result = run_script("trainer_vanilla.py", "--resume", run, "--n_epoch", "3", "--print_config")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert "resume" not in printed and printed["n_epoch"] == 3
    (tmp_path / "again.yaml").write_text(result.stdout)
    args, checkpoint = VanillaTrainer.parse(["--config", str(tmp_path / "again.yaml")])
    assert checkpoint is None and args.n_epoch == 3


def test_config_files_of_other_kinds_missing_or_with_resume_are_refused(fashion_dir, tmp_path, capsys):
    (tmp_path / "exp.toml").write_text("lr = 1\n")
    assert "expected a .json, .yaml or .yml file" in refused(VanillaTrainer.main, ["--config", tmp_path / "exp.toml"],
                                                             capsys)
    assert "cannot read it" in refused(VanillaTrainer.main, ["--config", tmp_path / "missing.json"], capsys)
    run = train_vanilla(fashion_dir, tmp_path / "run", *QUICK, "--n_epoch", "1")
    stderr = refused(VanillaTrainer.main, ["--resume", run, "--config", run / "config.json"], capsys)
    assert "with --resume: a resumed run keeps its checkpoint's options" in stderr


def test_the_example_config_files_are_valid(tmp_path):
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    for path, trainer in ((ROOT / "configs" / "vanilla.yaml", VanillaTrainer),
                          (ROOT / "configs" / "seg_on_carvana.yaml", SegOnCarvanaTrainer)):
        args, _ = trainer.parse(["--config", str(path)])
        assert yaml.safe_load(path.read_text()).items() <= json.loads(json.dumps(vars(args), default=str)).items()


# ------------------------------------------------------------------ debug runs
def test_fast_dev_run_goes_through_every_step_in_seconds(fashion_dir, tmp_path):
    started = time.monotonic()
    result = run_script("trainer_vanilla.py", "--data_dir", fashion_dir, "--output_dir", tmp_path, "--fast_dev_run",
                        "--n_epoch", "50")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    run = run_dirs(tmp_path)[0]
    assert run.name.endswith("_fast_dev_run")
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "completed" and len(metrics["history"]) == 1 and "test/accuracy" in metrics["test"]
    assert (run / "Vanilla_best_ckpt.pth").is_file() and list((run / "summary").glob("events.*"))
    log = (run / "log.txt").read_text()
    assert "fast_dev_run: 2 batches of each phase" in log and "data: FashionMNIST" in log
    assert "train 128, val 128, test 128" in log  # 2 batches of the default 64


def test_fast_dev_run_fails_on_a_hook_a_full_run_reaches_only_after_training(fashion_dir, tmp_path):
    class BrokenTestReportTask(VanillaTask):
        def report(self, phase, totals, epoch, writer):
            if phase == "test":
                raise RuntimeError("broken report hook")

    class BrokenTestReport(VanillaTrainer):
        task_class = BrokenTestReportTask

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="broken report hook"):
        BrokenTestReport.main(["--data_dir", str(fashion_dir), "--output_dir", str(tmp_path), "--fast_dev_run", "3"])
    assert time.monotonic() - started < 30
    run = run_dirs(tmp_path)[0]
    assert read_json(run / "config.json")["options"]["fast_dev_run"] == 3


def test_the_evaluator_scores_the_samples_a_debug_run_tested_whatever_its_batch_size(fashion_dir, tmp_path):
    from eval_vanilla import VanillaEvaluator
    assert VanillaTrainer.main(["--data_dir", str(fashion_dir), "--output_dir", str(tmp_path), "--fast_dev_run",
                                "--batch_size", "16", "--deterministic"]) == 0
    run = run_dirs(tmp_path)[0]
    assert read_json(run / "split.json")["debug_sizes"] == {"train": 32, "val": 32, "test": 32}
    assert VanillaEvaluator.main(["--model_path", str(run / "Vanilla_best_ckpt.pth"), "--eval_batch_size", "7"]) == 0
    evaluated = read_json(run / "eval" / "test" / "metrics.json")
    trained = read_json(run / "metrics.json")["test"]
    assert evaluated["samples"] == 32 and evaluated["metrics"]["test/accuracy"] == trained["test/accuracy"]
    assert evaluated["metrics"]["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-6)  # other batches: rounding
    assert evaluated["epoch"] == evaluated["best_epoch"] == 1


def test_overfit_batches_drives_the_loss_towards_zero(fashion_dir, tmp_path):
    run = train_vanilla(fashion_dir, tmp_path, "--overfit_batches", "2", "--batch_size", "8", "--n_epoch", "60",
                        "--dropout", "0", "--lr", "0.003")
    history = read_json(run / "metrics.json")["history"]
    assert history[0]["train/loss"] > 1.0
    assert history[-1]["train/loss"] < 0.02 and history[-1]["val/loss"] < 0.02
    assert history[-1]["val/accuracy"] == 1.0
    log = (run / "log.txt").read_text()
    assert "training and validating on the same 16 training samples" in log and "train 16, val 16" in log


# ------------------------------------------------------------------ knowing what you train
def test_the_summary_counts_the_parameters_and_goes_into_config_json(fashion_dir, tmp_path):
    from model.model_entry import build_model
    from utils.summary import count_parameters, summarize
    run = train_vanilla(fashion_dir, tmp_path, *QUICK, "--n_epoch", "1")
    args, _ = VanillaTrainer.parse(["--config", str(run / "config.json")])
    model = build_model(args)
    expected = sum(p.numel() for p in model.parameters())
    model_info = read_json(run / "config.json")["model"]
    assert model_info["parameters"] == model_info["trainable_parameters"] == expected
    assert model_info["size_mb"] == pytest.approx(expected * 4 / 2**20, abs=1e-3)
    log = (run / "log.txt").read_text()
    assert f"{expected:,} parameters ({expected:,} trainable)" in log
    assert "output shape" in log and "2x10" in log  # the classifier's output for two samples

    frozen = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
    frozen[0].requires_grad_(False)
    frozen.append(frozen[2])  # a shared module counts once
    assert count_parameters(frozen) == (16 + 20, 20)
    summary = summarize(frozen, lambda: frozen(torch.zeros(5, 3)))
    assert [(row["name"], row["parameters"], row["output_shape"]) for row in summary["modules"]] == [
        ("0", 16, [5, 4]), ("1", 0, [5, 4]), ("2", 20, [5, 4])]


def test_configcmp_shows_the_parameter_count(fashion_dir, tmp_path):
    runs = [train_vanilla(fashion_dir, tmp_path / name, *QUICK, "--n_epoch", "1", "--lr", lr)
            for name, lr in (("a", "0.001"), ("b", "0.002"))]
    result = run_script("cli/configcmp.py", *runs)
    assert result.returncode == 1, result.stderr
    parameters = read_json(runs[0] / "config.json")["model"]["parameters"]
    assert "parameters" in result.stdout and str(parameters) in result.stdout


def graph_tags(summary_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(summary_dir))
    events.Reload()
    return events.Tags()["graph"], events


def test_tensorboard_reads_the_model_graph(fashion_dir, tmp_path):
    run = train_vanilla(fashion_dir, tmp_path / "with", *QUICK, "--n_epoch", "1")
    has_graph, events = graph_tags(run / "summary")
    assert has_graph
    assert any("Linear" in node.op or "linear" in node.op for node in events.Graph().node)
    run = train_vanilla(fashion_dir, tmp_path / "without", *QUICK, "--n_epoch", "1", "--log_graph", "false")
    assert not graph_tags(run / "summary")[0]


def test_the_graph_of_a_model_returning_a_list_is_written(tmp_path):
    from model.unetpp import UNetPlusPlus
    from utils.logger import setup_logger
    from state.run_folder import RunFolder
    model = UNetPlusPlus(n_channels=3, n_classes=1, depth=2, base_width=4, deep_supervision=True)
    model.train()
    assert isinstance(model(torch.zeros(1, 3, 32, 32)), (list, tuple))
    run = RunFolder(tmp_path, "UNet++")
    run.open_writer()
    run.write_graph(model, (torch.zeros(1, 3, 32, 32),), setup_logger())
    run.close()
    assert graph_tags(tmp_path / "summary")[0]


# ------------------------------------------------------------------ evaluations
def test_evaluations_of_different_splits_keep_their_own_folders(fashion_dir, tmp_path):
    from eval_vanilla import VanillaEvaluator
    run = train_vanilla(fashion_dir, tmp_path, *QUICK, "--n_epoch", "1")
    checkpoint = str(run / "Vanilla_best_ckpt.pth")
    assert VanillaEvaluator.main(["--model_path", checkpoint, "--viz", "--n_snap", "3"]) == 0
    assert VanillaEvaluator.main(["--model_path", checkpoint, "--split", "val"]) == 0
    assert VanillaEvaluator.main(["--model_path", checkpoint, "--split", "val", "--tag", "again"]) == 0
    test, val = read_json(run / "eval" / "test" / "metrics.json"), read_json(run / "eval" / "val" / "metrics.json")
    assert test["split"] == "test" and val["split"] == "val"
    assert test["metrics"]["test/accuracy"] == read_json(run / "metrics.json")["test"]["test/accuracy"]
    assert read_json(run / "eval" / "val_again" / "metrics.json")["metrics"] == val["metrics"]
    assert sorted(path.name for path in (run / "eval").iterdir()) == ["test", "val", "val_again"]
    assert list((run / "eval" / "test" / "viz").glob("contact_sheet_*.png"))

    # The same split again replaces its results; the pictures it did not draw are the earlier ones, kept.
    sheets = sorted((run / "eval" / "test" / "viz").glob("contact_sheet_*.png"))
    assert VanillaEvaluator.main(["--model_path", checkpoint]) == 0
    assert sorted((run / "eval" / "test" / "viz").glob("contact_sheet_*.png")) == sheets
    assert read_json(run / "eval" / "test" / "metrics.json")["metrics"] == test["metrics"]
    assert sorted(path.name for path in (run / "eval").iterdir()) == ["test", "val", "val_again"]


def test_a_failed_evaluation_leaves_the_previous_results(fashion_dir, tmp_path):
    from eval_vanilla import VanillaEvaluator
    run = train_vanilla(fashion_dir, tmp_path, *QUICK, "--n_epoch", "1")
    checkpoint = str(run / "Vanilla_best_ckpt.pth")
    assert VanillaEvaluator.main(["--model_path", checkpoint]) == 0
    before = (run / "eval" / "test" / "metrics.json").read_bytes()

    class Failing(VanillaEvaluator):
        def on_batch(self, batch, outputs, indices):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        Failing.main(["--model_path", checkpoint])
    assert (run / "eval" / "test" / "metrics.json").read_bytes() == before
    assert sorted(path.name for path in (run / "eval").iterdir()) == ["test"]


def test_the_contact_sheet_labels_large_tiles(fashion_dir, tmp_path):
    from PIL import Image

    from eval_vanilla import VanillaEvaluator
    run = train_vanilla(fashion_dir, tmp_path, *QUICK, "--n_epoch", "1")
    assert VanillaEvaluator.main(["--model_path", str(run / "Vanilla_best_ckpt.pth"), "--viz", "--n_snap", "1"]) == 0
    sheets = sorted((run / "eval" / "test" / "viz").glob("contact_sheet_*.png"))
    samples = read_json(run / "eval" / "test" / "metrics.json")["samples"]
    assert len(sheets) == -(-samples // 100)
    with Image.open(sheets[0]) as sheet:
        assert sheet.size == (10 * (112 + 4), 10 * (112 + 26 + 4))  # 28x28 at 4x, two label lines, a margin


@pytest.mark.parametrize("flag, value, why", [
    ("--lr", "0.1", "is a training option"),
    ("--early_stop_patience", "3", "is a training option"),
    ("--resume", "x", "is a training option"),
    ("--dropout", "0.5", "is a training option"),
    ("--seed", "3", "defines the split"),
    ("--val_ratio", "0.3", "defines the split"),
    ("--test_sample_rate", "0.5", "defines the split"),
])
def test_the_evaluator_refuses_training_and_split_options_by_name(tmp_path, capsys, flag, value, why):
    from eval_vanilla import VanillaEvaluator
    stderr = refused(VanillaEvaluator.main, ["--model_path", tmp_path / "x.pth", flag, value], capsys)
    assert stderr.startswith(f"error: {flag} {why}"), stderr


def test_the_evaluators_help_lists_only_what_applies_to_evaluation():
    result = run_script("eval_vanilla.py", "--help")
    assert result.returncode == 0
    for option in ("--model_path", "--data_dir", "--batch_size", "--amp", "--gpu_devices", "--split", "--tag",
                   "--viz", "--config"):
        assert option in result.stdout
    for option in ("--lr ", "--early_stop_patience", "--resume", "--seed", "--val_ratio", "--n_epoch"):
        assert option not in result.stdout


def test_the_evaluator_reads_a_config_file_with_evaluation_options(fashion_dir, tmp_path, capsys):
    """Its own options from the file; the run's training options may be repeated (its config.json), not changed."""
    from eval_vanilla import VanillaEvaluator
    run = train_vanilla(fashion_dir, tmp_path, *QUICK, "--n_epoch", "1")
    checkpoint = str(run / "Vanilla_best_ckpt.pth")
    batch_sizes = []

    class Recording(VanillaEvaluator):
        def run(self):
            batch_sizes.append(self.args.batch_size)
            return super().run()

    (tmp_path / "eval.yaml").write_text("split: val\ntag: from_file\nbatch_size: 7\n")
    assert Recording.main(["--model_path", checkpoint, "--config", tmp_path / "eval.yaml"]) == 0
    assert read_json(run / "eval" / "val_from_file" / "metrics.json")["split"] == "val" and batch_sizes == [7]
    assert VanillaEvaluator.main(["--model_path", checkpoint, "--config", run / "config.json", "--tag", "same"]) == 0
    assert read_json(run / "eval" / "test_same" / "metrics.json")["metrics"] == read_json(run / "metrics.json")["test"]

    (tmp_path / "changed.yaml").write_text("lr: 0.5\n")
    stderr = refused(VanillaEvaluator.main, ["--model_path", checkpoint, "--config", tmp_path / "changed.yaml"], capsys)
    assert "sets lr 0.5" in stderr and "is a training option" in stderr and "leave it out of the file" in stderr


def test_debug_true_in_a_config_file_shows_the_traceback_as_the_flag_does(tmp_path):
    from utils.errors import UserError
    (tmp_path / "debug.yaml").write_text(f"debug: true\ndata_dir: {tmp_path / 'no_data'}\n")
    with pytest.raises(UserError):
        VanillaTrainer.main(["--config", tmp_path / "debug.yaml", "--output_dir", tmp_path / "runs"])
    with pytest.raises(SystemExit):
        VanillaTrainer.main(["--config", tmp_path / "debug.yaml", "--debug", "false", "--output_dir", tmp_path / "runs"])


# ------------------------------------------------------------------ the command line
def test_a_mistyped_flag_suggests_the_nearest_ones(capsys):
    stderr = refused(VanillaTrainer.main, ["--n_epochs", "3"], capsys)
    assert "unrecognized arguments: --n_epochs 3" in stderr and "did you mean --n_epoch?" in stderr
    stderr = refused(VanillaTrainer.main, ["--learning_rate=0.1"], capsys)
    assert "unrecognized arguments: --learning_rate=0.1" in stderr
    stderr = refused(VanillaTrainer.main, ["--batchsize", "8"], capsys)
    assert "did you mean --batch_size" in stderr


def test_help_shows_each_default_once():
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    from cli.options import HelpFormatter
    for parser in (VanillaTrainer.build_parser(), SegOnCarvanaTrainer.build_parser(),
                   SegOnCarvanaEvaluator.build_parser()):
        formatter = HelpFormatter(parser.prog)
        for action in parser._actions:
            if action.help in (None, argparse.SUPPRESS):
                continue
            text = formatter._expand_help(action)
            assert text.count("default") <= 1 and "(default: None)" not in text, text
    text = " ".join(run_script("trainer_vanilla.py", "--help").stdout.split())
    assert "(default: None)" not in text and "(default: 0.001)" in text
    assert "(default Results/<proj_name>)" in text
