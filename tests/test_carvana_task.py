"""End to end: UNet and UNet++ learn Carvana-format data, split by car; the evaluator agrees."""
import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import read_json, train_seg
from utils.rle import rle_decode


@pytest.fixture(scope="module")
def unet_run(carvana_dir, tmp_path_factory):
    return train_seg(carvana_dir, tmp_path_factory.mktemp("seg"))


def test_split_holds_disjoint_cars(unet_run):
    split = read_json(unet_run / "split.json")
    cars = {part: {name.rsplit("_", 1)[0] for name in split[f"{part}_names"]} for part in ("train", "val", "test")}
    assert not cars["train"] & cars["val"] and not cars["train"] & cars["test"] and not cars["val"] & cars["test"]
    assert sum(len(split[part]) for part in ("train", "val", "test")) == 64
    assert all(len(names) >= 2 for names in cars.values())


def test_unet_learns(unet_run):
    metrics = read_json(unet_run / "metrics.json")
    # An empty mask scores dice 0 on these images and a full mask about 0.35.
    assert metrics["test"]["test/dice"] > 0.85
    assert metrics["monitor"] == "val/dice"


def test_unetpp_with_deep_supervision_learns(carvana_dir, tmp_path):
    run = train_seg(carvana_dir, tmp_path, "--model_type", "UNet++", "--deep_supervision")
    assert (run / "UNet++_best_ckpt.pth").is_file()
    assert read_json(run / "metrics.json")["test"]["test/dice"] > 0.85


def test_odd_input_size_trains(carvana_dir, tmp_path):
    run = train_seg(carvana_dir, tmp_path, "--img_size", "37", "53", "--n_epoch", "1", "--depth", "3")
    assert read_json(run / "metrics.json")["status"] == "completed"


def test_evaluator_reproduces_test_dice_and_draws_the_car_white(unet_run, carvana_dir, tmp_path):
    from data.carvana import load_mask
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    assert SegOnCarvanaEvaluator.main(["--model_path", str(unet_run / "UNet_best_ckpt.pth"), "--save_path",
                                       str(tmp_path), "--viz", "--n_snap", "4"]) == 0
    evaluated = read_json(tmp_path / "metrics.json")
    assert evaluated["metrics"] == read_json(unet_run / "metrics.json")["test"]
    assert len(evaluated["per_image"]) == evaluated["samples"]
    assert np.isclose(np.mean([image["dice"] for image in evaluated["per_image"]]), evaluated["metrics"]["test/dice"])
    names = sorted(path.name[:-len("_pred.png")] for path in (tmp_path / "viz").glob("*_pred.png"))
    assert len(names) == -(-evaluated["samples"] // 4)
    for name in names:
        for kind in ("origin", "mask", "overlay"):
            assert (tmp_path / "viz" / f"{name}_{kind}.png").is_file()
        truth = load_mask(carvana_dir / "train_masks" / f"{name}_mask.gif").numpy().astype(bool)
        saved_mask = np.array(Image.open(tmp_path / "viz" / f"{name}_mask.png"))
        predicted = np.array(Image.open(tmp_path / "viz" / f"{name}_pred.png")) == 255
        assert saved_mask.shape == truth.shape == predicted.shape  # the original resolution
        assert np.array_equal(saved_mask == 255, truth) and set(np.unique(saved_mask)) <= {0, 255}
        assert (predicted & truth).sum() / max(1, (predicted | truth).sum()) > 0.7


def test_submission_for_unlabelled_images(unet_run, carvana_dir, tmp_path):
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    input_dir = tmp_path / "test_images"
    input_dir.mkdir()
    sources = sorted((carvana_dir / "train").glob("*_01.jpg"))[:3]
    for path in sources:
        (input_dir / path.name).write_bytes(path.read_bytes())
    submission = tmp_path / "submission.csv"
    assert SegOnCarvanaEvaluator.main(["--model_path", str(unet_run / "UNet_best_ckpt.pth"), "--input_dir",
                                       str(input_dir), "--submission", str(submission)]) == 0
    with open(submission, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["img", "rle_mask"]
    assert [row[0] for row in rows[1:]] == [path.name for path in sources]
    from data.carvana import load_mask
    for name, rle in rows[1:]:
        truth = load_mask(carvana_dir / "train_masks" / name.replace(".jpg", "_mask.gif")).numpy().astype(bool)
        predicted = rle_decode(rle, truth.shape)
        assert (predicted & truth).sum() / max(1, (predicted | truth).sum()) > 0.7


def test_missing_mask_names_the_file(carvana_dir, tmp_path, capsys):
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    broken = tmp_path / "broken"
    (broken / "train").mkdir(parents=True)
    (broken / "train_masks").mkdir()
    for path in sorted((carvana_dir / "train").iterdir())[:4]:
        (broken / "train" / path.name).write_bytes(path.read_bytes())
    for path in sorted((carvana_dir / "train_masks").iterdir())[:3]:
        (broken / "train_masks" / path.name).write_bytes(path.read_bytes())
    missing = sorted((carvana_dir / "train").iterdir())[3].stem + "_mask.gif"
    with pytest.raises(SystemExit) as exit_info:
        SegOnCarvanaTrainer.main(["--data_dir", str(broken), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert missing in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_skipped_file_is_a_warning_line_of_the_log(carvana_dir, tmp_path):
    """One level per kind of message: a skipped file is logged at WARNING, not as "INFO warning:"."""
    folder = tmp_path / "broken"
    shutil.copytree(carvana_dir, folder)
    missing = sorted((folder / "train_masks").iterdir())[0]
    missing.unlink()
    run = train_seg(folder, tmp_path / "out", "--skip_bad", "--fast_dev_run", "--n_epoch", "1")
    lines = (run / "log.txt").read_text().splitlines()
    skipped = [line for line in lines if missing.name.replace("_mask.gif", "") in line]
    assert skipped and all(" WARNING skipping " in line for line in skipped), skipped
    assert not [line for line in lines if " INFO warning" in line or " WARNING warning" in line]


def test_the_cache_does_not_change_the_results(carvana_dir, tmp_path):
    from helpers import metric_history
    memory, none = (train_seg(carvana_dir, tmp_path / cache, "--cache", cache, "--n_epoch", "2")
                    for cache in ("memory", "none"))
    assert metric_history(memory) == metric_history(none)
    assert read_json(memory / "metrics.json")["test"] == read_json(none / "metrics.json")["test"]
