"""state/checkpoint.py as the owner of the format: every key written in one place, and a run saved in
the previous format (torch-template/2, kept in tests/data/format2) that still resumes and evaluates.

The kept run is a Carvana UNet trained for one epoch with EMA, top-k, early stopping patience and the
CSV tracker, on data/synthetic_carvana.py's cars (8 cars, 2 views, 24x32, seed 5); `two_epochs.pth`
holds the weights and history of the same run trained for two epochs by the code that wrote it.
"""
import shutil

import pytest
import torch

from helpers import ROOT, load_plain, read_json
from state.checkpoint import FORMAT, KEYS, read_checkpoint, upgrade
from utils.errors import UserError

KEPT = ROOT / "tests" / "data" / "format2"


@pytest.fixture
def old_run(tmp_path):
    from data.synthetic_carvana import write_carvana
    data = write_carvana(tmp_path / "data", n_cars=8, views=2, size=(24, 32), seed=5)
    run = tmp_path / "run"
    shutil.copytree(KEPT / "run", run)
    return run, data


def test_a_checkpoint_of_the_previous_format_is_upgraded_whole(old_run):
    run, _ = old_run
    old = load_plain(run / "UNet_last_ckpt.pth")
    assert old["format"] == "torch-template/2" and old["task"] == "SegOnCarvanaTrainer"
    checkpoint = read_checkpoint(run / "UNet_last_ckpt.pth", "SegOnCarvana")
    assert checkpoint["format"] == FORMAT and set(checkpoint) == KEYS
    assert checkpoint["callbacks"]["top_k"]["kept"] == old["top_k"]
    assert checkpoint["callbacks"]["trackers"]["logged_scalars"] == old["logged_scalars"]
    assert checkpoint["monitor"]["best_epoch"] == old["early_stopper"]["best_epoch"] == 1
    assert checkpoint["stopped_by"] is None
    assert all(torch.equal(checkpoint["model"][key], old["model"][key]) for key in old["model"])
    with pytest.raises(UserError, match="written by the SegOnCarvana task"):
        read_checkpoint(run / "UNet_last_ckpt.pth", "Vanilla")


def test_an_early_stopped_or_pruned_run_of_the_previous_format_stays_so():
    base = {"format": "torch-template/2", "task": "VanillaTrainer", "config": {"save_top_k": 0}, "top_k": []}
    stopper = {"mode": "min", "patience": 2, "delta": 0.0, "best": 0.5, "best_epoch": 1, "bad_epochs": 2}
    assert upgrade({**base, "early_stopper": stopper})["stopped_by"] == "early_stopped"
    assert upgrade({**base, "early_stopper": {**stopper, "bad_epochs": 1}})["stopped_by"] is None
    assert upgrade({**base, "early_stopper": stopper, "pruned": True})["stopped_by"] == "pruned"
    assert "top_k" not in upgrade({**base, "early_stopper": stopper})["callbacks"]


def test_a_run_of_the_previous_format_resumes_exactly_and_evaluates(old_run):
    """Extended to two epochs by this version, it ends with the weights and history the code that
    wrote it reached in two epochs; the evaluator reads the old `best` and its split."""
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    run, data = old_run
    assert SegOnCarvanaTrainer.main(["--resume", run, "--n_epoch", "2", "--data_dir", data]) == 0
    reference = load_plain(KEPT / "two_epochs.pth")
    resumed = load_plain(run / "UNet_last_ckpt.pth")
    assert resumed["format"] == FORMAT and resumed["epoch"] == 2
    assert resumed["sampling"] == 1  # it keeps the dealing and augmentation draws it began with
    assert all(torch.equal(resumed["model"][key], reference["model"][key]) for key in reference["model"])
    assert [{key: value for key, value in record.items() if not key.endswith("time_s")} for record in resumed["history"]] \
        == [{key: value for key, value in record.items() if not key.endswith("time_s")} for record in reference["history"]]
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "completed" and metrics["epochs_done"] == 2

    kept_best = KEPT / "run" / "UNet_best_ckpt.pth"
    shutil.copy(kept_best, run / "UNet_best_ckpt.pth")  # the evaluator on the old file itself
    assert SegOnCarvanaEvaluator.main(["--model_path", run / "UNet_best_ckpt.pth", "--data_dir", data]) == 0
    evaluated = read_json(run / "eval" / "test" / "metrics.json")
    assert evaluated["epoch"] == 1 and evaluated["weights"] == "ema" and evaluated["samples"] == 4


def test_a_checkpoint_of_unknown_sampling_rules_is_refused(old_run, tmp_path):
    run, _ = old_run
    checkpoint = read_checkpoint(run / "UNet_last_ckpt.pth", "SegOnCarvana")
    torch.save({**checkpoint, "sampling": 3}, tmp_path / "future.pth")
    with pytest.raises(UserError, match="sampling rules 3; this version knows rules 1 and 2"):
        read_checkpoint(tmp_path / "future.pth", "SegOnCarvana")
