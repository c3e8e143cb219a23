"""Tests for state/run_folder.py: the run folder's name, its checkpoints and small files, the clean-up
after a cut, and the permissions of what it writes."""
import os
import re

import pytest
import torch

from helpers import load_plain, read_json
from state.run_folder import RunFolder
from utils.errors import UserError


class RecordingLog:
    """A logger that keeps what it was told."""

    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)

    warning = info


def saved_state(epoch):
    return {"model": {"weight": torch.full((2, 3), float(epoch))}, "epoch": epoch}


@pytest.fixture
def run(tmp_path):
    return RunFolder(tmp_path, "Vanilla")


def test_create_names_a_new_timestamped_folder_with_its_suffix(tmp_path):
    first = RunFolder.create(tmp_path / "runs", "Vanilla", suffix="_trial0003")
    second = RunFolder.create(tmp_path / "runs", "Vanilla", suffix="_trial0003")
    for created in (first, second):
        assert created.path.is_dir() and created.path.parent == tmp_path / "runs"
        assert created.model_type == "Vanilla" and created.writes
    stamp = r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_trial0003"
    assert re.fullmatch(stamp, first.path.name)
    assert second.path != first.path and re.fullmatch(stamp + r"(_\d+)?", second.path.name)  # the same second: _1
    assert first.checkpoint_path("last") == first.path / "Vanilla_last_ckpt.pth"


def test_create_in_a_place_that_is_not_a_folder_is_a_user_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create a run folder in --output_dir"):
        RunFolder.create(blocker, "Vanilla")


def test_save_checkpoint_writes_last_and_a_new_best_with_the_same_bytes(run):
    run.save_checkpoint(saved_state(1), best=True)
    last, best = run.checkpoint_path("last"), run.checkpoint_path("best")
    assert last.read_bytes() == best.read_bytes()
    assert torch.equal(load_plain(last)["model"]["weight"], torch.full((2, 3), 1.0))

    run.save_checkpoint(saved_state(2))  # not a new best: `best` stays the first epoch's
    assert load_plain(last)["epoch"] == 2 and load_plain(best)["epoch"] == 1
    assert not list(run.path.glob(".*.tmp"))


def test_a_folder_that_does_not_write_writes_nothing(tmp_path):
    reader = RunFolder(tmp_path, "Vanilla", writes=False)
    reader.save_checkpoint(saved_state(1), best=True)
    reader.write_json("metrics.json", {"status": "running"})
    assert not list(tmp_path.iterdir())


def test_copy_checkpoint_copies_the_bytes_of_its_kind(run):
    run.save_checkpoint(saved_state(1), best=True)
    run.save_checkpoint(saved_state(2))
    name = run.top_k_name(2, "val/loss", 0.123456)
    assert name == "Vanilla_epoch002_val_loss0.1235.pth"
    run.copy_checkpoint("last", name)
    assert (run.path / name).read_bytes() == run.checkpoint_path("last").read_bytes()
    run.copy_checkpoint("best", "best_copy.pth")
    assert load_plain(run.path / "best_copy.pth")["epoch"] == 1


def test_read_and_write_json(run):
    assert run.read_json("metrics.json") is None
    content = {"status": "running", "history": [{"epoch": 1, "val/loss": 0.5}], "best_epoch": None}
    run.write_json("metrics.json", content)
    assert run.read_json("metrics.json") == content == read_json(run.path / "metrics.json")
    run.write_json("metrics.json", {"status": "completed"})  # replaced whole, not merged
    assert run.read_json("metrics.json") == {"status": "completed"}
    with pytest.raises(UserError, match="split.json is missing"):
        run.read_split()
    run.write_json("split.json", {"train": [0, 2], "val": [1]})
    assert run.read_split() == {"train": [0, 2], "val": [1]}


def test_remove_stale_temporaries_removes_only_half_written_files(run):
    stale = [run.path / ".Vanilla_last_ckpt.pth.x1y2.tmp", run.path / ".metrics.json.abc.tmp"]
    kept = [run.path / "notes.tmp", run.path / ".hidden", run.path / "metrics.json"]
    for path in stale + kept:
        path.write_text("content")
    log = RecordingLog()
    run.remove_stale_temporaries(log)
    assert not any(path.exists() for path in stale)
    assert all(path.read_text() == "content" for path in kept)
    assert sorted(log.lines) == sorted(f"removed {path.name}, left by an interrupted write" for path in stale)


def test_reconcile_top_k_removes_a_stray_top_k_file_and_keeps_a_user_file(run):
    run.save_checkpoint(saved_state(3))
    listed = run.top_k_name(2, "val/loss", 0.4)
    (run.path / listed).write_bytes(b"epoch 2")
    stray = run.path / run.top_k_name(3, "val/loss", 0.3)  # written, but the saved state does not list it
    stray.write_bytes(b"epoch 3")
    users = [run.path / "Vanilla_epoch_backup.pth", run.path / "Vanilla_epoch12_mine.pth",
             run.path / "Vanilla_epoch003_notes.txt", run.path / "Other_epoch003_val_loss0.3000.pth"]
    for path in users:
        path.write_bytes(b"mine")
    kept = [{"epoch": 2, "value": 0.4, "file": listed}]
    log = RecordingLog()
    assert run.reconcile_top_k(kept, epoch=3, batches_done=0, log=log) == kept
    assert not stray.exists() and (run.path / listed).read_bytes() == b"epoch 2"
    assert all(path.read_bytes() == b"mine" for path in users)
    assert any(stray.name in line for line in log.lines)


def test_reconcile_top_k_rewrites_a_listed_file_of_the_saved_epoch_and_drops_an_older_one(run):
    run.save_checkpoint(saved_state(3))
    current, older = run.top_k_name(3, "val/loss", 0.3), run.top_k_name(1, "val/loss", 0.5)
    kept = [{"epoch": 3, "value": 0.3, "file": current}, {"epoch": 1, "value": 0.5, "file": older}]
    log = RecordingLog()
    assert run.reconcile_top_k(kept, epoch=3, batches_done=0, log=log) == kept[:1]
    assert (run.path / current).read_bytes() == run.checkpoint_path("last").read_bytes()
    assert not (run.path / older).exists()
    # Mid-epoch, `last` no longer holds the listed epoch's state: nothing is rewritten from it.
    (run.path / current).unlink()
    assert run.reconcile_top_k(kept[:1], epoch=3, batches_done=5, log=log) == []
    assert not (run.path / current).exists()


def test_write_config_keeps_the_first_environment_and_appends_resumes(run):
    cpu = torch.device("cpu")
    run.write_config({"lr": 0.001}, cpu, 1, model={"parameters": 10})
    first = run.read_json("config.json")
    assert first["options"] == {"lr": 0.001} and first["resumes"] == [] and first["model"] == {"parameters": 10}
    environment = first["environment"]
    assert environment["world_size"] == 1 and environment["device"] == "cpu"
    assert environment["torch_version"] == torch.__version__ and "started_at" in environment

    run.write_config({"lr": 0.001, "n_epoch": 5}, cpu, 2, resumed_from="a/Vanilla_last_ckpt.pth", position=(1, 0, 17))
    run.write_config({"lr": 0.001, "n_epoch": 6}, cpu, 2, resumed_from="b.pth", position=(5, 3, 80),
                     model={"parameters": 10})
    config = run.read_json("config.json")
    assert config["environment"] == environment  # the first start's, though the resumes ran with 2 processes
    assert config["options"] == {"lr": 0.001, "n_epoch": 6}
    assert [(entry["from"], entry["epoch"], entry["global_step"]) for entry in config["resumes"]] == \
        [("a/Vanilla_last_ckpt.pth", 1, 17), ("b.pth", 5, 80)]
    assert all(entry["device"] == "cpu" and "at" in entry for entry in config["resumes"])
    assert config["model"] == {"parameters": 10}


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_files_get_the_permissions_of_the_umask(run, umask):
    previous = os.umask(umask)
    try:
        run.save_checkpoint(saved_state(1), best=True)
        run.copy_checkpoint("last", run.top_k_name(1, "val/loss", 0.5))
        run.write_json("split.json", {"train": [0]})
        run.write_config({"lr": 0.001}, torch.device("cpu"), 1)
        kept = [{"epoch": 1, "value": value, "file": run.top_k_name(1, "val/loss", value)} for value in (0.5, 0.4)]
        run.reconcile_top_k(kept, 1, 0, RecordingLog())  # rewrites the second from `last`
    finally:
        os.umask(previous)
    written = sorted(path.name for path in run.path.iterdir())
    assert written == ["Vanilla_best_ckpt.pth", "Vanilla_epoch001_val_loss0.4000.pth",
                       "Vanilla_epoch001_val_loss0.5000.pth", "Vanilla_last_ckpt.pth", "config.json", "split.json"]
    for path in run.path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
