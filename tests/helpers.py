"""Shared test helpers: paths, in-process training runs and readers for what a run writes."""
import json
import signal
import sys
from pathlib import Path

import pytest
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


def uninterrupted_run(data_dir, tmp_path_factory, *flags, train=train_vanilla):
    """The reference run a test module compares interrupted runs with (its module-scoped fixture calls
    this once): `train(data_dir, output_dir, *flags)` in a folder of its own; returns what `train` returns."""
    return train(data_dir, tmp_path_factory.mktemp("uninterrupted"), *flags)


def last_checkpoint(run_dir):
    """The `last` checkpoint of a run folder, loaded."""
    found = list(Path(run_dir).glob("*_last_ckpt.pth"))
    assert len(found) == 1, f"{run_dir}: expected one *_last_ckpt.pth, found {found}"
    return load_plain(found[0])


def assert_same_tensors(first, second, what):
    """Two dicts of tensors (a state dict, an optimizer's state of one parameter) with the same keys and
    bit-equal values; the assertion names the first key that differs. Plain values are compared with ==."""
    assert first.keys() == second.keys(), f"{what}: the keys differ: {sorted(set(first) ^ set(second))}"
    for key, value in first.items():
        same = torch.equal(value, second[key]) if isinstance(value, torch.Tensor) else value == second[key]
        assert same, f"{what}: {key} differs"


def assert_same_weights(run_a, run_b, ema=False, optimizer=False):
    """The last checkpoints of two runs are at the same global step with bit-equal model weights; with
    `ema`, bit-equal averaged weights after as many updates; with `optimizer`, the same optimizer state."""
    first, second = last_checkpoint(run_a), last_checkpoint(run_b)
    where = f"{Path(run_a).name} vs {Path(run_b).name}"
    assert first["global_step"] == second["global_step"], where
    assert_same_tensors(first["model"], second["model"], f"{where}, model")
    if ema:
        assert first["ema"]["updates"] == second["ema"]["updates"], where
        assert_same_tensors(first["ema"]["weights"], second["ema"]["weights"], f"{where}, EMA")
    if optimizer:
        states = first["optimizer"]["state"], second["optimizer"]["state"]
        assert states[0].keys() == states[1].keys(), where
        for parameter in states[0]:
            assert_same_tensors(states[0][parameter], states[1][parameter],
                                f"{where}, optimizer state of parameter {parameter}")


def assert_same_results(run_a, run_b):
    """The same metrics every epoch (wall-clock times aside) and the same test metrics."""
    assert metric_history(run_a) == metric_history(run_b)
    assert read_json(Path(run_a) / "metrics.json")["test"] == read_json(Path(run_b) / "metrics.json")["test"]


def workers_of(process):
    """The process ids of torchrun's workers (the children of the torchrun `process`), in start order."""
    return Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()


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


def forwarding(hook, base=None):
    """A vanilla trainer whose task's `forward_batch(model, batch)` is `hook(trainer, forward, model, batch)`,
    `forward` being the task's own: faults injected at a moment of training that only the trainer knows."""
    from trainer_vanilla import VanillaTrainer

    class Forwarding(base or VanillaTrainer):
        def __init__(self, args, checkpoint=None):
            super().__init__(args, checkpoint)
            forward = self.task.forward_batch
            self.task.forward_batch = lambda model, batch: hook(self, forward, model, batch)
    return Forwarding


def stopping_at(step, base=None):
    """A trainer (`base`, the vanilla one by default) that receives SIGINT just before optimizer step
    `step` completes."""
    from trainer_vanilla import VanillaTrainer

    class Stopping(base or VanillaTrainer):
        def after_step(self):
            if self.progress.global_step == step and not self.stop.requested:
                self.stop.signum = signal.SIGINT
            super().after_step()
    return Stopping


def refused(main, argv, capsys):
    """What a command line that must fail printed: exit code 2, one line on stderr, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    return stderr


def wandb_history(run_dir):
    """The history rows and the summary of each W&B offline run in `run_dir`/wandb, read from its
    `.wandb` files (W&B's record log: 32 KiB blocks of records, each cut into chunks behind a
    7-byte header), oldest run first: [(run id, [row dict, ...], summary dict), ...]."""
    import json
    import struct
    from wandb.proto import wandb_internal_pb2

    def records(path):
        data, block, chunks = Path(path).read_bytes(), 32768, []
        assert data[:4] == b":W&B", path
        position = 7
        while position + 7 <= len(data):
            if block - position % block < 7:  # a block's tail too short for a header is padding
                position += block - position % block
                continue
            length, kind = struct.unpack("<HB", data[position + 4:position + 7])
            chunks.append(data[position + 7:position + 7 + length])
            position += 7 + length
            if kind in (1, 4):  # a whole record, or the last chunk of one
                yield b"".join(chunks)
                chunks = []
            if kind == 0:
                break

    runs = []
    for path in sorted(Path(run_dir, "wandb").glob("offline-run-*/run-*.wandb")):
        run_id, rows, summary = None, [], {}
        for raw in records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
            elif kind == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
            elif kind == "summary":
                for item in record.summary.update:
                    summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        runs.append((run_id, rows, summary))
    return runs


class Messages(list):
    """Collects log lines as a logging.Logger would take them, so a test can check what was reported;
    warnings start with "WARNING", as in a run's log."""

    def info(self, message):
        self.append(message)

    def warning(self, message):
        self.append(f"WARNING {message}")

    def mention(self, text):
        return any(text in message for message in self)
