"""Bad input: one line naming the bad value and what was expected, exit code 2, nothing lost.

Each case here is a row of the README's table of handled bad inputs.
"""
import errno
import os
import shutil

import pytest

from helpers import load_plain, run_dirs, train_vanilla
from trainer_seg_on_carvana import SegOnCarvanaTrainer
from trainer_vanilla import VanillaTrainer


def fails_cleanly(capsys, entry, argv, *expected):
    with pytest.raises(SystemExit) as exit_info:
        entry(list(map(str, argv)))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def vanilla(data_dir, output_dir, *extra):
    return ["--data_dir", data_dir, "--output_dir", output_dir, "--n_epoch", "1", *extra]


@pytest.mark.parametrize("extra, expected", [
    (["--lr", "-1"], ["--lr", "'-1'", "positive number"]),
    (["--lr", "fast"], ["--lr", "'fast'", "positive number"]),
    (["--batch_size", "0"], ["--batch_size", "'0'", "positive integer"]),
    (["--batch_size", "3.5"], ["--batch_size", "'3.5'"]),
    (["--val_ratio", "1.5"], ["--val_ratio", "'1.5'", "[0, 1)"]),
    (["--train_val_sample_rate", "0"], ["--train_val_sample_rate", "(0, 1]"]),
    (["--model_type", "ResNet"], ["--model_type", "'ResNet'", "Vanilla"]),
    (["--data_type", "CIFAR10"], ["--data_type", "'CIFAR10'", "FashionMNIST"]),
    (["--n_epochs", "3"], ["--n_epochs"]),
    (["--deterministic", "maybe"], ["--deterministic", "'maybe'", "true or false"]),
    (["--monitor", "val/f1"], ["--monitor val/f1", "val/accuracy"]),
    (["--val_ratio", "0.0001"], ["--val_ratio 0.0001", "empty"]),
])
def test_bad_option_values(fashion_dir, tmp_path, capsys, extra, expected):
    fails_cleanly(capsys, VanillaTrainer.main, vanilla(fashion_dir, tmp_path / "out", *extra), *expected)
    assert not (tmp_path / "out").exists()


def test_missing_and_empty_data_folders(tmp_path, capsys):
    fails_cleanly(capsys, VanillaTrainer.main, vanilla(tmp_path / "missing", tmp_path / "out"), "missing", "--download")
    (tmp_path / "empty").mkdir()
    fails_cleanly(capsys, VanillaTrainer.main, vanilla(tmp_path / "empty", tmp_path / "out"), "empty", "--download")
    assert not (tmp_path / "out").exists()


def test_truncated_idx_file(fashion_dir, tmp_path, capsys):
    data_dir = tmp_path / "data"
    shutil.copytree(fashion_dir, data_dir)
    path = data_dir / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    import gzip
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(content[:len(content) // 2]))
    fails_cleanly(capsys, VanillaTrainer.main, vanilla(data_dir, tmp_path / "out"), str(path), "truncated")


def test_output_folder_that_cannot_be_written(fashion_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    fails_cleanly(capsys, VanillaTrainer.main, vanilla(fashion_dir, blocker / "out"), "--output_dir", str(blocker))


def test_resume_and_model_path_problems(fashion_dir, carvana_dir, tmp_path, capsys):
    run = train_vanilla(fashion_dir, tmp_path / "runs", "--n_epoch", "1", "--train_val_sample_rate", "0.2")
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    fails_cleanly(capsys, VanillaTrainer.main, ["--resume", tmp_path / "nope.pth"], "nope.pth", "does not exist")
    (tmp_path / "notes.pth").write_text("epoch: 3\n")
    fails_cleanly(capsys, VanillaTrainer.main, ["--resume", tmp_path / "notes.pth"], "notes.pth", "not a readable checkpoint")
    fails_cleanly(capsys, VanillaTrainer.main, ["--resume", tmp_path], "holds no")
    fails_cleanly(capsys, SegOnCarvanaTrainer.main, ["--resume", run], "the Vanilla task", "not by the SegOnCarvana task")
    fails_cleanly(capsys, VanillaTrainer.main, vanilla(fashion_dir, tmp_path / "out", "--pretrained"), "--model_path")
    fails_cleanly(capsys, VanillaTrainer.main,
                  vanilla(fashion_dir, tmp_path / "out", "--model_path", tmp_path / "nope.pth", "--pretrained"), "nope.pth")
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    from eval_vanilla import VanillaEvaluator
    fails_cleanly(capsys, VanillaEvaluator.main, [], "--model_path is required")
    fails_cleanly(capsys, VanillaEvaluator.main, ["--model_path", tmp_path / "notes.pth"], "notes.pth")
    fails_cleanly(capsys, SegOnCarvanaEvaluator.main, ["--model_path", run / "Vanilla_best_ckpt.pth"], "the Vanilla task")
    after = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert after == before


def test_weights_of_another_architecture(fashion_dir, carvana_dir, tmp_path, capsys):
    from helpers import train_seg
    seg_run = train_seg(carvana_dir, tmp_path / "seg", "--n_epoch", "1")
    fails_cleanly(capsys, SegOnCarvanaTrainer.main,
                  ["--data_dir", carvana_dir, "--output_dir", tmp_path / "out", "--img_size", "48", "64",
                   "--model_type", "UNet++", "--model_path", seg_run / "UNet_best_ckpt.pth", "--pretrained"],
                  "do not fit the model", "missing", "unexpected", "--partial_load")


def carvana_copy(carvana_dir, tmp_path):
    data_dir = tmp_path / "carvana"
    shutil.copytree(carvana_dir, data_dir)
    return data_dir


def seg(data_dir, output_dir, *extra):
    return ["--data_dir", data_dir, "--output_dir", output_dir, "--img_size", "48", "64", "--n_epoch", "1", *extra]


def test_carvana_wrong_layout(carvana_dir, tmp_path, capsys):
    data_dir = carvana_copy(carvana_dir, tmp_path)
    shutil.rmtree(data_dir / "train_masks")
    fails_cleanly(capsys, SegOnCarvanaTrainer.main, seg(data_dir, tmp_path / "out"), "train_masks", "train.zip")
    assert not (tmp_path / "out").exists()


def test_carvana_corrupt_jpeg_and_wrong_mask_size(carvana_dir, tmp_path, capsys):
    from PIL import Image
    data_dir = carvana_copy(carvana_dir, tmp_path)
    image = sorted((data_dir / "train").iterdir())[5]
    image.write_bytes(image.read_bytes()[:200])
    fails_cleanly(capsys, SegOnCarvanaTrainer.main, seg(data_dir, tmp_path / "out"), image.name)
    image.write_bytes((carvana_dir / "train" / image.name).read_bytes())
    mask = sorted((data_dir / "train_masks").iterdir())[2]
    Image.new("L", (10, 10)).save(mask)
    fails_cleanly(capsys, SegOnCarvanaTrainer.main, seg(data_dir, tmp_path / "out"), mask.name, "size")
    assert not (tmp_path / "out").exists()


def test_carvana_empty_split_from_ratios(carvana_dir, tmp_path, capsys):
    fails_cleanly(capsys, SegOnCarvanaTrainer.main, seg(carvana_dir, tmp_path / "out", "--test_ratio", "0.01"),
                  "--test_ratio 0.01", "empty", "16 groups")
    fails_cleanly(capsys, SegOnCarvanaTrainer.main,
                  seg(carvana_dir, tmp_path / "out", "--val_ratio", "0.5", "--test_ratio", "0.5"), "train split empty")


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(fashion_dir, tmp_path, capsys, monkeypatch):
    import utils.atomic
    saves = []
    real_fsync = os.fsync

    def fsync_until_full(descriptor):
        saves.append(descriptor)
        if len(saves) > 8:  # the first epoch's files are written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(descriptor)

    monkeypatch.setattr(utils.atomic.os, "fsync", fsync_until_full)
    fails_cleanly(capsys, VanillaTrainer.main,
                  vanilla(fashion_dir, tmp_path, "--n_epoch", "3", "--train_val_sample_rate", "0.2"),
                  "could not write", "No space left on device", "previous file is unchanged")
    run = run_dirs(tmp_path)[0]
    assert load_plain(run / "Vanilla_last_ckpt.pth")["epoch"] >= 1
    assert not list(run.glob(".*.tmp"))
