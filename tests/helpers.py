"""Shared test helpers: paths, in-process training runs and readers for what a run writes."""
import json
import signal
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def run_dirs(output_dir):
    return sorted(path for path in Path(output_dir).iterdir() if path.is_dir())


def train_vanilla(data_dir, output_dir, *extra, trainer_class=None):
    """Run the vanilla trainer in-process; return its run folder."""
    from trainer_vanilla import VanillaTrainer
    trainer_class = trainer_class or VanillaTrainer
    before = set(run_dirs(output_dir)) if Path(output_dir).exists() else set()
    argv = ["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--n_epoch", "2",
            "--batch_size", "32", "--deterministic", *map(str, extra)]
    assert trainer_class.main(argv) == 0
    new = [path for path in run_dirs(output_dir) if path not in before]
    return new[0] if new else None


def read_json(path):
    return json.loads(Path(path).read_text())


def metric_history(run_dir):
    """Per-epoch metrics without the wall-clock times."""
    history = read_json(Path(run_dir) / "metrics.json")["history"]
    return [{key: value for key, value in record.items() if not key.endswith("time_s")} for record in history]


def load_plain(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def python_command(*args):
    return [sys.executable, *map(str, args)]


SEG_QUICK = ["--img_size", "48", "64", "--n_epoch", "6", "--base_width", "8", "--depth", "2", "--batch_size", "4",
             "--lr", "3e-3", "--val_ratio", "0.2", "--test_ratio", "0.2", "--deterministic"]


def train_seg(data_dir, output_dir, *extra):
    """Run the Carvana trainer in-process on the small generated set; return its run folder."""
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    argv = ["--data_dir", str(data_dir), "--output_dir", str(output_dir), *SEG_QUICK, *map(str, extra)]
    assert SegOnCarvanaTrainer.main(argv) == 0
    return run_dirs(output_dir)[-1]


def stopping_at(step):
    """A vanilla trainer that receives SIGINT just before optimizer step `step` completes."""
    from trainer_vanilla import VanillaTrainer

    class Stopping(VanillaTrainer):
        def after_step(self):
            if self.progress.global_step == step and not self.stop.requested:
                self.stop.signum = signal.SIGINT
            super().after_step()
    Stopping.__name__ = "VanillaTrainer"  # the checkpoint names the task it belongs to
    return Stopping
