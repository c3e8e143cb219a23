"""What a hostile or unlucky input used to get past: each test failed before its fix (a traceback, a
wrong picture, a file left behind, a crash on resume)."""
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import ROOT, Messages, forwarding, read_json, refused, run_dirs, stopping_at, train_vanilla
from trainer_vanilla import VanillaTrainer

FLAGS = ["--n_epoch", "2", "--train_val_sample_rate", "0.4", "--test_sample_rate", "0.25"]
KEPT_RUN = ROOT / "tests" / "data" / "format2" / "run"  # a small Carvana UNet run (test_checkpoint_format.py)


def strict_json(path):
    """The file's JSON, refusing NaN and infinities, which JSON does not have."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("argv, expected", [
    (["--seed", str(2 ** 32)], "an integer in [0, 2^32)"),
    (["--batch_size", "99999999999999999999"], "a positive integer below 2^63"),
])
def test_numbers_out_of_range_are_one_line_before_any_folder(fashion_dir, tmp_path, capsys, argv, expected):
    error = refused(VanillaTrainer.main, ["--data_dir", fashion_dir, "--output_dir", tmp_path / "runs", *argv], capsys)
    assert expected in error and argv[1] in error
    assert not (tmp_path / "runs").exists()


def test_a_config_file_that_is_not_utf8_is_one_line(fashion_dir, tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("description: caf\xe9\n".encode("latin-1"))
    error = refused(VanillaTrainer.main, ["--data_dir", fashion_dir, "--config", config], capsys)
    assert "latin1.yaml: not a UTF-8 text file" in error


def test_an_epoch_whose_every_batch_is_skipped_has_nan_metrics_written_as_null(fashion_dir, tmp_path):
    """With a train/... monitor: no KeyError, the epoch's train metrics are NaN in TensorBoard and null
    in metrics.json, which stays strict JSON; stopped and resumed, the run finishes the same way."""
    def all_nan_in_epoch_2(trainer, forward, model, batch):
        loss, outputs = forward(model, batch)
        return (loss * float("nan") if model.training and trainer.progress.epoch == 1 else loss), outputs

    flags = [*FLAGS, "--n_epoch", "3", "--skip_nonfinite", "--monitor", "train/loss", "--save_every_n_steps", "20"]
    run = train_vanilla(fashion_dir, tmp_path, *flags, trainer_class=forwarding(all_nan_in_epoch_2))
    metrics = strict_json(run / "metrics.json")
    assert metrics["status"] == "completed" and metrics["nonfinite_batches"] == 17
    assert metrics["history"][1]["train/loss"] is None and metrics["history"][1]["val/loss"] is not None
    assert metrics["best_epoch"] in (1, 3)
    assert VanillaTrainer.main(["--resume", str(run), "--n_epoch", "4"]) == 0  # resumes past it
    assert strict_json(run / "metrics.json")["epochs_done"] == 4


def test_a_failed_lr_find_apply_leaves_a_run_folder_that_says_what_it_holds(fashion_dir, tmp_path, capsys):
    def nan_in_the_range_test(trainer, forward, model, batch):
        loss, outputs = forward(model, batch)
        return (loss * float("nan") if trainer.progress.global_step == 0 else loss), outputs

    with pytest.raises(SystemExit) as exit_info:
        forwarding(nan_in_the_range_test).main(["--data_dir", str(fashion_dir), "--output_dir", str(tmp_path),
                                                *FLAGS, "--lr_find", "--lr_find_apply", "--lr_find_steps", "20"])
    assert exit_info.value.code == 2
    assert "error: --lr_find_apply: the range test found no lr" in capsys.readouterr().err
    run = run_dirs(tmp_path)[0]
    assert read_json(run / "metrics.json")["status"] == "lr_find"
    assert read_json(run / "config.json")["lr_find"]["suggestion"] is None


def test_a_stop_during_the_test_says_it_was_in_the_test(fashion_dir, tmp_path):
    def stop_in_the_test(trainer, forward, model, batch):
        if not model.training and trainer.progress.is_finished(trainer.args.n_epoch):
            trainer.stop.request("a test of the message")
        return forward(model, batch)

    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path, *FLAGS, trainer_class=forwarding(stop_in_the_test))
    log = (run_dirs(tmp_path)[0] / "log.txt").read_text()
    assert "stopped by a test of the message in the test, after step" in log and "at epoch 3" not in log


def test_the_stop_message_names_the_step_as_the_progress_lines_do(fashion_dir, tmp_path):
    """With --accum_steps 2 a batch is not a step: the stop line repeats the last progress line's position."""
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path, *FLAGS, "--accum_steps", "2", "--log_every_n_steps", "1",
                      trainer_class=stopping_at(5))
    lines = (run_dirs(tmp_path)[0] / "log.txt").read_text().splitlines()
    progress = [line.split(" INFO ")[1].split(" loss ")[0] for line in lines if " loss " in line and " lr " in line]
    stop = next(line for line in lines if "stopped by SIGINT" in line)
    assert progress[-1].endswith("step 5") and f"stopped by SIGINT at {progress[-1]};" in stop, (progress[-1], stop)
    assert progress[-1].startswith("epoch 1 batch 10/")


def test_a_16_bit_png_is_scaled_not_read_as_white(tmp_path):
    from PIL import Image

    from data.carvana import _load_image
    ramp = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")
    pixels, size = _load_image(tmp_path / "deep.png", (48, 64))
    assert size == (64, 48)
    assert pixels.shape == (3, 48, 64) and pixels.min() == 0 and pixels.max() == 255
    assert abs(pixels.float().mean().item() - 127.5) < 1.0  # not the all-white 255 of a clipped conversion


def test_a_cache_write_killed_midway_leaves_no_file_behind_after_the_next_run(tmp_path):
    from data.carvana import CarvanaDataset
    from data.synthetic_carvana import write_carvana
    root = write_carvana(tmp_path / "data", n_cars=2, views=2, size=(24, 32), seed=1)
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    stale = cache / f".carvana_16x24.pt.{dead.pid}.tmp"
    stale.write_bytes(b"\0" * 1024)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    running = cache / f".carvana_16x24.pt.{alive.pid}.tmp"  # another run's write in progress stays
    running.write_bytes(b"\0")
    messages = Messages()
    try:
        CarvanaDataset(root, img_size=(16, 24), cache="disk", cache_dir=cache, log=messages)
    finally:
        alive.kill()
        alive.wait()
    assert not stale.exists() and running.exists() and (cache / "carvana_16x24.pt").is_file()
    assert any("left by a cache write that was killed" in message for message in messages)


def test_sigterm_to_the_evaluator_leaves_no_temporary_folder(tmp_path):
    from data.synthetic_carvana import write_carvana
    data = write_carvana(tmp_path / "data", n_cars=8, views=2, size=(24, 32), seed=5)
    run = tmp_path / "run"
    shutil.copytree(KEPT_RUN, run)
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from eval_seg_on_carvana import SegOnCarvanaEvaluator

class Terminated(SegOnCarvanaEvaluator):
    def on_batch(self, batch, outputs, indices):
        os.kill(os.getpid(), signal.SIGTERM)
        super().on_batch(batch, outputs, indices)

sys.exit(Terminated.main(["--model_path", {str(run / "UNet_best_ckpt.pth")!r}, "--data_dir", {str(data)!r}]))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert not list((run / "eval").glob(".*")) and not (run / "eval" / "test").exists()


def test_an_image_name_with_a_comma_is_quoted_and_a_submission_with_it_continues(tmp_path):
    import csv

    from eval_seg_on_carvana import continued_rows, csv_field
    names = ["a,b.jpg", 'say "hi".jpg', "plain.jpg"]
    made_by = {"checkpoint": "x"}
    partial = tmp_path / "submission.csv.partial"
    assert continued_rows(partial, names, made_by) == 0
    partial.write_text("img,rle_mask\n" + "".join(f"{csv_field(name)},1 2\n" for name in names[:2]) + "plai")
    assert continued_rows(partial, names, made_by) == 2  # the cut row goes, the quoted ones count
    with open(partial, newline="") as handle:
        assert [row[0] for row in csv.reader(handle)][1:] == names[:2]


def test_a_corrupt_record_of_a_partial_submission_is_one_line(tmp_path):
    from eval_seg_on_carvana import continued_rows
    from utils.errors import UserError
    partial = tmp_path / "submission.csv.partial"
    partial.write_text("img,rle_mask\n")
    (tmp_path / "submission.csv.partial.json").write_text('{"checkpoint": ')
    with pytest.raises(UserError, match="not readable JSON.*delete it"):
        continued_rows(partial, ["a.jpg"], {"checkpoint": "x"})


def test_metrics_json_is_strict_json(tmp_path):
    from utils.atomic import write_json_atomic
    write_json_atomic({"best_value": float("nan"), "history": [{"loss": float("inf")}, {"loss": 1.5}]},
                      tmp_path / "metrics.json")
    assert strict_json(tmp_path / "metrics.json") == {"best_value": None, "history": [{"loss": None}, {"loss": 1.5}]}


def test_an_unwritable_output_dir_is_refused_before_the_data_is_built(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    error = refused(VanillaTrainer.main, ["--data_dir", tmp_path / "no_data_here", "--output_dir", blocker / "runs"],
                    capsys)
    assert f"--output_dir {blocker / 'runs'}" in error  # not the missing data, which would come later


def test_a_nan_before_any_save_does_not_claim_a_kept_checkpoint(fashion_dir, tmp_path, capsys):
    def diverging_at_once(trainer, forward, model, batch):
        loss, outputs = forward(model, batch)
        return loss * float("nan"), outputs

    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path, *FLAGS, trainer_class=forwarding(diverging_at_once))
    error = capsys.readouterr().err
    assert "nothing was saved yet" in error and "last good checkpoint is kept" not in error
    assert run_dirs(tmp_path) == [] and "run folder" in error and "is removed" in error  # no folder left empty


def test_a_nan_after_a_save_keeps_the_run_and_its_checkpoint(fashion_dir, tmp_path, capsys):
    def diverging_in_epoch_two(trainer, forward, model, batch):
        loss, outputs = forward(model, batch)
        return (loss * float("nan") if model.training and trainer.progress.epoch == 1 else loss), outputs

    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path, *FLAGS, trainer_class=forwarding(diverging_in_epoch_two))
    error = capsys.readouterr().err
    assert "the last good checkpoint is kept" in error
    run = run_dirs(tmp_path)[0]
    assert torch.load(run / "Vanilla_last_ckpt.pth", weights_only=True)["epoch"] == 1


def test_an_overfit_run_is_named_like_a_fast_dev_run(fashion_dir, tmp_path):
    run = train_vanilla(fashion_dir, tmp_path, *FLAGS, "--n_epoch", "1", "--overfit_batches", "2")
    assert run.name.endswith("_overfit_batches")


def test_the_evaluator_never_recommends_an_option_it_refuses(fashion_dir, tmp_path, capsys):
    from eval_vanilla import VanillaEvaluator
    run = train_vanilla(fashion_dir, tmp_path, *FLAGS, "--n_epoch", "1")
    error = refused(VanillaEvaluator.main, ["--model_path", run / "Vanilla_best_ckpt.pth", "--data_dir", tmp_path / "gone"],
                    capsys)
    assert "is missing" in error or "does not exist" in error
    assert "pass --download" not in error and "trainer_vanilla.py --download" in error


def kept_carvana_run(tmp_path):
    """The kept small UNet run and a folder of photos to predict: (checkpoint, photos folder)."""
    from data.synthetic_carvana import write_carvana
    photos = write_carvana(tmp_path / "photos", n_cars=4, views=2, size=(24, 32), seed=7) / "train"
    run = tmp_path / "run"
    shutil.copytree(KEPT_RUN, run)
    return run / "UNet_best_ckpt.pth", photos


def test_prediction_without_a_terminal_shows_progress_and_names_its_results(tmp_path, capsys, monkeypatch):
    import eval_seg_on_carvana
    checkpoint, photos = kept_carvana_run(tmp_path)
    monkeypatch.setattr(eval_seg_on_carvana.ImageProgress, "LINE_EVERY_S", 0.0)
    monkeypatch.setattr(eval_seg_on_carvana.RowWriter, "AHEAD", 0)  # each row written as soon as it is encoded
    submission = tmp_path / "out" / "submission.csv"
    assert eval_seg_on_carvana.SegOnCarvanaEvaluator.main(
        ["--model_path", checkpoint, "--input_dir", photos, "--submission", submission, "--batch_size", "3"]) == 0
    err = capsys.readouterr().err
    assert "predicted 3 of 8 images" in err and "predicted 8 of 8 images" in err
    assert f"wrote 8 masks to {submission}" in err
    assert "results in" not in err  # the default output folder holds nothing: the submission is elsewhere


def test_an_interrupted_prediction_says_what_is_kept_and_how_to_continue(tmp_path, capsys):
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    from trainer_seg_on_carvana import SegOnCarvanaTask
    checkpoint, photos = kept_carvana_run(tmp_path)

    class InterruptedTask(SegOnCarvanaTask):
        calls = 0

        def predict_batch(self, model, batch):
            InterruptedTask.calls += 1
            if InterruptedTask.calls == 3:
                raise KeyboardInterrupt
            return super().predict_batch(model, batch)

    class Interrupted(SegOnCarvanaEvaluator):
        task_class = InterruptedTask

    submission = tmp_path / "submission.csv"
    argv = ["--model_path", checkpoint, "--input_dir", photos, "--submission", submission, "--batch_size", "2"]
    with pytest.raises(SystemExit) as exit_info:
        Interrupted.main(argv)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert f"interrupted: {submission}.partial keeps the" in err and "the same command continues it" in err
    assert SegOnCarvanaEvaluator.main(argv) == 0
    assert len(submission.read_text().splitlines()) == 1 + 8


def test_a_second_process_resuming_a_run_in_training_is_refused(fashion_dir, tmp_path, capsys):
    import fcntl
    run = train_vanilla(fashion_dir, tmp_path, *FLAGS, "--n_epoch", "1")
    with open(run / ".lock", "a+") as held:  # as the process that trains it holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("process 4242 on the other host\n")
        held.flush()
        error = refused(VanillaTrainer.main, ["--resume", run, "--n_epoch", "2"], capsys)
    assert f"run {run} is being trained by process 4242 on the other host" in error
    assert VanillaTrainer.main(["--resume", str(run), "--n_epoch", "2"]) == 0  # released: it resumes


def test_a_fast_dev_run_is_not_extended_into_full_epochs(fashion_dir, tmp_path, capsys):
    run = train_vanilla(fashion_dir, tmp_path, "--fast_dev_run")
    error = refused(VanillaTrainer.main, ["--resume", run, "--n_epoch", "3"], capsys)
    assert "--fast_dev_run" in error and "start a real run" in error
    error = refused(VanillaTrainer.main, ["--resume", run], capsys)
    assert "is finished" in error and "start a real run without --fast_dev_run" in error


def test_a_yaml_file_of_nested_aliases_is_refused_at_once(fashion_dir, tmp_path, capsys):
    import time
    lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"] + [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]"
                                                      for n in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 600
    started = time.monotonic()
    error = refused(VanillaTrainer.main, ["--data_dir", fashion_dir, "--config", bomb], capsys)
    assert time.monotonic() - started < 5 and len(error) < 300
    assert "bomb.yaml: expands to more than 10,000 values" in error


def test_another_evaluation_without_viz_keeps_the_pictures_of_the_earlier_one(fashion_dir, tmp_path):
    from eval_vanilla import VanillaEvaluator
    run = train_vanilla(fashion_dir, tmp_path, *FLAGS, "--n_epoch", "1")
    checkpoint = run / "Vanilla_best_ckpt.pth"
    assert VanillaEvaluator.main(["--model_path", str(checkpoint), "--viz"]) == 0
    sheets = sorted((run / "eval" / "test" / "viz").iterdir())
    assert sheets
    assert VanillaEvaluator.main(["--model_path", str(checkpoint)]) == 0
    assert sorted((run / "eval" / "test" / "viz").iterdir()) == sheets


def test_too_few_samples_for_the_split_ask_for_more_data_not_an_impossible_ratio():
    from data.split import split_by_group
    from utils.errors import UserError
    with pytest.raises(UserError, match="only 2 samples to split into val, test, train; use more data") as error:
        split_by_group(range(2), {"val": 0.1, "test": 0.1}, seed=0)
    assert "ratio of at least" not in str(error.value)
    parts = split_by_group(range(3), {"val": 0.2, "test": 0.2}, seed=0)  # one each: possible
    assert sorted(len(part) for part in parts.values()) == [1, 1, 1]


def test_the_demo_hint_to_compare_runs_works_after_a_single_run(tmp_path):
    from demo import compare_hint
    (tmp_path / "2026-12-03_10-00-00").mkdir()
    assert compare_hint(tmp_path, tmp_path / "2026-12-03_10-00-00") == \
        f"{tmp_path / '2026-12-03_10-00-00'} <another run folder>"  # a glob of one run: configcmp's usage error
    (tmp_path / "2026-12-03_11-00-00").mkdir()
    assert compare_hint(tmp_path, tmp_path / "2026-12-03_11-00-00") == f"{tmp_path}/*"


def test_the_carvana_demo_validates_above_zero_dice_after_its_first_epoch(tmp_path):
    """BatchNorm's running statistics lag behind the first few steps' weights; with too few steps an
    epoch, the demo's first validation showed dice 0.0000 beside a training dice of 0.7."""
    import argparse

    from demo import carvana
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    options = argparse.Namespace(data_dir=tmp_path / "Dataset", n_epoch=1, output_dir=tmp_path / "runs")
    train, _, output_dir, real = carvana(options)
    assert not real
    assert SegOnCarvanaTrainer.main([*map(str, train[1:]), "--output_dir", str(output_dir)]) == 0
    history = read_json(run_dirs(output_dir)[0] / "metrics.json")["history"]
    assert history[0]["val/dice"] > 0.2, history[0]
