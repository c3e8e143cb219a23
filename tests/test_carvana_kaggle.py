"""Carvana as Kaggle scores it: the test at each photo's own size, test-time flips, and a
submission that streams, continues after an interruption, and decodes to the scored masks."""
import csv
import gzip

import numpy as np
import pytest
import torch

from helpers import read_json, train_seg
from utils.rle import rle_decode


@pytest.fixture(scope="module")
def unet_run(carvana_dir, tmp_path_factory):
    # Trained below the photos' 48x64, so the full-resolution scores are computed on upsampled masks.
    return train_seg(carvana_dir, tmp_path_factory.mktemp("seg"), "--n_epoch", "5", "--img_size", "32", "48")


def decode_independently(rle, height, width):
    """Kaggle's RLE read by hand: 1-based starts, row-major, start/length pairs."""
    flat = np.zeros(height * width, dtype=bool)
    numbers = [int(number) for number in rle.split()]
    for start, length in zip(numbers[0::2], numbers[1::2]):
        flat[start - 1:start - 1 + length] = True
    return flat.reshape(height, width)


def test_full_resolution_dice_against_a_hand_computation(tmp_path):
    """Logits at 64x137 of a band of rows, upsampled by exactly 20 and 14 to the photo's 1280x1918:
    the predicted car is rows 320..959 (the logits change sign halfway between low-resolution
    rows 15 and 16, and 47 and 48), whose dice with the original mask is counted with numpy."""
    from data.carvana import CarvanaDataset, load_mask
    from data.loader import Subset
    from data.synthetic_carvana import write_carvana
    from trainer_seg_on_carvana import SegOnCarvanaTask, SegOnCarvanaTrainer
    from utils.logger import setup_logger
    root = write_carvana(tmp_path / "carvana", n_cars=1, views=1, size=(1280, 1918), seed=3)
    args, _ = SegOnCarvanaTrainer.parse(["--data_dir", str(root), "--img_size", "64", "137"])
    task = SegOnCarvanaTask(args, setup_logger())
    pool = CarvanaDataset(root, img_size=(64, 137), cache="none")
    logits = torch.full((1, 1, 64, 137), -10.0)
    logits[:, :, 16:48, :] = 10.0
    stats = task.sample_stats("test", Subset(pool, [0]), logits, torch.tensor([0]))

    truth = load_mask(pool.mask_paths[0]).numpy().astype(bool)
    assert truth.shape == (1280, 1918)
    predicted = np.zeros_like(truth)
    predicted[320:960, :] = True
    intersection = (predicted & truth).sum()
    dice = 2 * intersection / (predicted.sum() + truth.sum())
    iou = intersection / (predicted | truth).sum()
    assert stats["full_images"] == 1
    assert float(stats["full_dice_sum"]) == pytest.approx(dice, abs=1e-12)
    assert float(stats["full_iou_sum"]) == pytest.approx(iou, abs=1e-12)
    metrics = task.compute_metrics({"images": 1, "dice_sum": 0, "iou_sum": 0, "pixels": 1, "correct_pixels": 1,
                                    **{name: float(value) for name, value in stats.items()}})
    assert metrics["dice_full"] == pytest.approx(dice) and metrics["iou_full"] == pytest.approx(iou)


def test_the_test_reports_full_resolution_and_the_evaluator_equals_it(unet_run, tmp_path):
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    test = read_json(unet_run / "metrics.json")["test"]
    assert {"test/dice", "test/dice_full", "test/iou_full"} <= set(test)
    assert 0.8 < test["test/dice_full"] <= 1 and test["test/dice_full"] != test["test/dice"]
    assert "val/dice_full" not in read_json(unet_run / "metrics.json")["history"][-1]  # validation stays fast
    assert SegOnCarvanaEvaluator.main(["--model_path", str(unet_run / "UNet_best_ckpt.pth"),
                                       "--save_path", str(tmp_path)]) == 0
    assert read_json(tmp_path / "metrics.json")["metrics"] == test


def test_hflip_tta_averages_the_mirror_image(unet_run, tmp_path):
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    checkpoint = str(unet_run / "UNet_best_ckpt.pth")
    assert SegOnCarvanaEvaluator.main(["--model_path", checkpoint, "--tta", "hflip", "--tag", "tta"]) == 0
    flipped = read_json(unet_run / "eval" / "test_tta" / "metrics.json")["metrics"]
    plain = read_json(unet_run / "metrics.json")["test"]
    assert flipped["test/dice_full"] != plain["test/dice_full"] and flipped["test/dice_full"] > 0.8

    # On a model that is its own mirror image the average changes nothing.
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    args, _ = SegOnCarvanaTrainer.parse(["--tta", "hflip"])
    trainer = SegOnCarvanaTrainer(args)
    symmetric = torch.nn.Conv2d(3, 1, 1).eval()
    images = torch.rand(2, 3, 8, 10)
    assert torch.allclose(trainer.task.predict_batch(symmetric, images), symmetric(images), atol=1e-4)


def copy_test_images(unet_run, carvana_dir, folder):
    folder.mkdir()
    names = read_json(unet_run / "split.json")["test_names"]
    for name in names:
        (folder / f"{name}.jpg").write_bytes((carvana_dir / "train" / f"{name}.jpg").read_bytes())
    return sorted(names)


def test_a_submission_decodes_to_the_masks_the_full_resolution_dice_scores(unet_run, carvana_dir, tmp_path):
    from data.carvana import load_mask
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    names = copy_test_images(unet_run, carvana_dir, tmp_path / "images")
    submission = tmp_path / "submission.csv.gz"
    assert SegOnCarvanaEvaluator.main(["--model_path", str(unet_run / "UNet_best_ckpt.pth"), "--input_dir",
                                       str(tmp_path / "images"), "--submission", str(submission)]) == 0
    with gzip.open(submission, "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["img", "rle_mask"] and [row[0] for row in rows[1:]] == [f"{name}.jpg" for name in names]
    dices = []
    for name, rle in rows[1:]:
        truth = load_mask(carvana_dir / "train_masks" / name.replace(".jpg", "_mask.gif")).numpy().astype(bool)
        ours = rle_decode(rle, truth.shape)
        assert np.array_equal(ours, decode_independently(rle, *truth.shape))
        dices.append(2 * (ours & truth).sum() / (ours.sum() + truth.sum()))
    assert float(np.mean(dices)) == pytest.approx(read_json(unet_run / "metrics.json")["test"]["test/dice_full"],
                                                  abs=1e-12)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_an_interrupted_submission_continues_to_the_same_bytes(unet_run, carvana_dir, tmp_path, suffix, monkeypatch):
    import eval_seg_on_carvana
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    copy_test_images(unet_run, carvana_dir, tmp_path / "images")
    base = ["--model_path", str(unet_run / "UNet_best_ckpt.pth"), "--input_dir", str(tmp_path / "images"),
            "--batch_size", "2", "--eval_batch_size", "2"]
    whole = tmp_path / f"whole{suffix}"
    assert SegOnCarvanaEvaluator.main([*base, "--submission", str(whole)]) == 0

    cut = tmp_path / f"cut{suffix}"
    monkeypatch.setattr(eval_seg_on_carvana.RowWriter, "AHEAD", 1)  # rows reach the file one by one
    original = eval_seg_on_carvana.RowWriter.write
    calls = []

    def write_then_stop(self, count):
        if len(calls) >= 2:
            return  # the process is gone: nothing more reaches the file
        original(self, count)
        calls.append(count)
        if len(calls) == 2:
            self.handle.write("half_a_row.jpg,1 2 3")  # killed in the middle of a row
            self.handle.flush()
            raise Interrupted
    eval_seg_on_carvana.RowWriter.write = write_then_stop
    try:
        with pytest.raises(Interrupted):
            SegOnCarvanaEvaluator.main([*base, "--submission", str(cut)])
    finally:
        eval_seg_on_carvana.RowWriter.write = original
    partial = cut.with_name(cut.name + ".partial")
    assert partial.is_file() and not cut.exists()
    assert SegOnCarvanaEvaluator.main([*base, "--submission", str(cut)]) == 0
    assert cut.read_bytes() == whole.read_bytes() and not partial.exists()


def test_a_submission_continues_only_with_the_same_checkpoint_and_options(unet_run, carvana_dir, tmp_path, capsys,
                                                                         monkeypatch):
    import eval_seg_on_carvana
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    copy_test_images(unet_run, carvana_dir, tmp_path / "images")
    submission = tmp_path / "sub.csv"
    base = ["--model_path", str(unet_run / "UNet_best_ckpt.pth"), "--input_dir", str(tmp_path / "images"),
            "--submission", str(submission)]
    monkeypatch.setattr(eval_seg_on_carvana.RowWriter, "AHEAD", 1)
    original = eval_seg_on_carvana.RowWriter.write

    def write_once_then_stop(self, count):
        original(self, count)
        raise Interrupted
    monkeypatch.setattr(eval_seg_on_carvana.RowWriter, "write", write_once_then_stop)
    with pytest.raises(Interrupted):
        SegOnCarvanaEvaluator.main(base)
    monkeypatch.setattr(eval_seg_on_carvana.RowWriter, "write", original)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        SegOnCarvanaEvaluator.main([*base, "--threshold", "0.9"])
    error = capsys.readouterr().err
    assert "was started with another threshold" in error and "delete it to start over" in error
    assert SegOnCarvanaEvaluator.main(base) == 0
    assert submission.is_file() and not (tmp_path / "sub.csv.partial.json").exists()


def test_a_submission_cut_after_its_last_row_finishes_and_folders_and_case_are_handled(
        unet_run, carvana_dir, tmp_path, capsys, monkeypatch):
    import deploy.streamed_csv
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    copy_test_images(unet_run, carvana_dir, tmp_path / "images")
    base = ["--model_path", str(unet_run / "UNet_best_ckpt.pth"), "--input_dir", str(tmp_path / "images")]
    assert SegOnCarvanaEvaluator.main([*base, "--submission", str(tmp_path / "whole.csv")]) == 0

    def cut(partial, submission):
        raise Interrupted
    monkeypatch.setattr(deploy.streamed_csv, "finish_csv", cut)
    with pytest.raises(Interrupted):
        SegOnCarvanaEvaluator.main([*base, "--submission", str(tmp_path / "cut.csv")])
    monkeypatch.undo()
    assert SegOnCarvanaEvaluator.main([*base, "--submission", str(tmp_path / "cut.csv")]) == 0
    assert (tmp_path / "cut.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()

    assert SegOnCarvanaEvaluator.main([*base, "--submission", str(tmp_path / "UPPER.CSV.GZ")]) == 0
    assert gzip.decompress((tmp_path / "UPPER.CSV.GZ").read_bytes()) == (tmp_path / "whole.csv").read_bytes()

    capsys.readouterr()
    with pytest.raises(SystemExit):
        SegOnCarvanaEvaluator.main([*base, "--submission", str(tmp_path / "images")])
    assert "is a folder" in capsys.readouterr().err


def test_the_evaluator_refuses_torchrun(unet_run, monkeypatch, capsys):
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        SegOnCarvanaEvaluator.main(["--model_path", str(unet_run / "UNet_best_ckpt.pth")])
    assert "runs in one process" in capsys.readouterr().err


def test_bad_prediction_input_is_one_line_or_an_empty_row_with_skip_bad(unet_run, carvana_dir, tmp_path, capsys):
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    names = copy_test_images(unet_run, carvana_dir, tmp_path / "images")
    base = ["--model_path", str(unet_run / "UNet_best_ckpt.pth"), "--input_dir", str(tmp_path / "images")]

    def refused(*extra):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            SegOnCarvanaEvaluator.main([*base, *extra])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1 and "Traceback" not in error, error
        return error

    (tmp_path / "images" / "notes.txt").write_text("not an image")
    assert "notes.txt is not an image" in refused("--submission", str(tmp_path / "a.csv"))
    (tmp_path / "images" / "notes.txt").unlink()
    (tmp_path / "images" / "zz_broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    error = refused("--submission", str(tmp_path / "b.csv"))
    assert "cannot decode image" in error and "zz_broken.jpg" in error and "--skip_bad" in error
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    assert SegOnCarvanaEvaluator.main([*base, "--skip_bad", "--submission", str(tmp_path / "c.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "c.csv", newline="")))
    assert [row[0] for row in rows[1:]] == [f"{name}.jpg" for name in names] + ["zz_broken.jpg"]
    assert rows[-1] == ["zz_broken.jpg", ""]
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        SegOnCarvanaEvaluator.main(["--model_path", str(unet_run / "UNet_best_ckpt.pth"), "--input_dir", str(empty)])
    assert "no .jpg/.jpeg/.png images" in capsys.readouterr().err


def test_continuing_reads_the_partial_submission_as_a_stream(tmp_path):
    """A partial submission of 16 MB (800 rows of long masks, then a row cut short) is continued with
    a peak of under 1 MB of Python memory: read row by row, never whole (which took 4x its size)."""
    import tracemalloc

    from deploy.streamed_csv import continued_rows
    names = [f"car_{number:04d}.jpg" for number in range(1000)]
    partial = tmp_path / "submission.csv.partial"
    made_by = {"checkpoint": "x"}
    assert continued_rows(partial, names, made_by) == 0
    mask = " ".join(f"{start} 3" for start in range(1, 20000, 7))  # about 20,000 characters
    with open(partial, "w", newline="") as handle:
        handle.write("img,rle_mask\n")
        for name in names[:800]:
            handle.write(f"{name},{mask}\n")
        handle.write(f"{names[800]},1 2 3")
    complete = partial.stat().st_size - len(f"{names[800]},1 2 3")
    assert complete > 16e6
    tracemalloc.start()
    try:
        assert continued_rows(partial, names, made_by) == 800
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1e6, f"continuing read {peak / 1e6:.1f} MB into memory for a {complete / 1e6:.1f} MB partial file"
    assert partial.stat().st_size == complete
