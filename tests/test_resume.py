"""Exact resume, crash safety and signals: an interrupted run ends where an uninterrupted one does."""
import os
import pickle
import random
import signal
import subprocess
import time

import pytest
import torch

from helpers import (ROOT, assert_same_results, assert_same_tensors, assert_same_weights, forwarding, load_plain,
                     python_command, read_json, run_dirs, stopping_at, train_vanilla, uninterrupted_run)
from trainer_vanilla import VanillaTrainer

# Dropout on, so that the random state has to be restored too.
FLAGS = ["--n_epoch", "3", "--dropout", "0.2", "--train_val_sample_rate", "0.4", "--test_sample_rate", "0.25"]


def assert_same_run(run, reference):
    """The same weights and optimizer state at the end, and the same metrics all along."""
    assert_same_weights(run, reference, optimizer=True)
    assert_same_results(run, reference)


@pytest.fixture(scope="module")
def uninterrupted(fashion_dir, tmp_path_factory):
    return uninterrupted_run(fashion_dir, tmp_path_factory, *FLAGS)


def resume(run_dir, *extra):
    assert VanillaTrainer.main(["--resume", str(run_dir), *map(str, extra)]) == 0


def test_resume_after_an_epoch_equals_uninterrupted(fashion_dir, tmp_path, uninterrupted):
    run = train_vanilla(fashion_dir, tmp_path, *FLAGS, "--n_epoch", "1")
    resume(run, "--n_epoch", "3")
    assert_same_run(run, uninterrupted)
    config = read_json(run / "config.json")
    assert config["options"]["n_epoch"] == 3 and len(config["resumes"]) == 1
    assert "resumed from" in (run / "log.txt").read_text()
    assert len(run_dirs(tmp_path)) == 1  # it went on in the same folder


@pytest.mark.parametrize("step", [7, 17 + 5])  # in the first epoch, and in the middle of the second
def test_resume_mid_epoch_equals_uninterrupted(fashion_dir, tmp_path, uninterrupted, step):
    with pytest.raises(SystemExit) as exit_info:
        train_vanilla(fashion_dir, tmp_path, *FLAGS, trainer_class=stopping_at(step))
    assert exit_info.value.code == 128 + signal.SIGINT
    run = run_dirs(tmp_path)[0]
    saved = load_plain(run / "Vanilla_last_ckpt.pth")
    assert saved["global_step"] == step and saved["batches_done"] == step % 17  # 540 samples: 17 batches of 32
    assert read_json(run / "metrics.json")["status"] == "interrupted"
    assert "Resume with:" in (run / "log.txt").read_text()
    resume(run / "Vanilla_last_ckpt.pth")
    assert_same_run(run, uninterrupted)


def test_resume_refuses_options_that_change_the_experiment(fashion_dir, tmp_path, capsys):
    run = train_vanilla(fashion_dir, tmp_path, *FLAGS, "--n_epoch", "1")
    before = (run / "Vanilla_last_ckpt.pth").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        VanillaTrainer.main(["--resume", str(run), "--lr", "0.01", "--batch_size", "16"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "--lr 0.01 (checkpoint: 0.001)" in message and "--batch_size 16 (checkpoint: 32)" in message
    assert (run / "Vanilla_last_ckpt.pth").read_bytes() == before


def test_resume_with_accumulation_and_clipping_mid_epoch(fashion_dir, tmp_path):
    flags = [*FLAGS, "--accum_steps", "3", "--clip", "0.5", "--lr_scheduler", "cosine", "--warmup_epoch", "1"]
    full = train_vanilla(fashion_dir, tmp_path / "full", *flags)
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path / "cut", *flags, trainer_class=stopping_at(8))
    run = run_dirs(tmp_path / "cut")[0]
    resume(run)
    assert_same_run(run, full)


def test_sigkill_at_random_moments_then_resume_reaches_the_same_weights(fashion_dir, tmp_path):
    flags = ["--data_dir", fashion_dir, "--output_dir", tmp_path / "killed", "--deterministic", "--batch_size", "8",
             "--n_epoch", "2", "--train_val_sample_rate", "0.5", "--test_sample_rate", "0.25",
             "--save_every_n_steps", "3", "--log_every_n_steps", "1000"]
    full = train_vanilla(fashion_dir, tmp_path / "full", *flags[4:])
    rng = random.Random(0)
    command = python_command("trainer_vanilla.py", *flags)
    kills = 0
    for _ in range(6):  # three kills, then a resume that finishes; bounded so a refusal cannot loop
        stderr_path = tmp_path / f"stderr_{kills}.txt"
        with open(stderr_path, "w") as stderr_file:  # a file, not a pipe: a full pipe would stall the run
            process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr_file)
        if kills < 3:
            # Wait for a checkpoint to exist, then kill at a random moment of the training.
            deadline = time.monotonic() + 120
            while not list((tmp_path / "killed").glob("*/Vanilla_last_ckpt.pth")) and time.monotonic() < deadline:
                if process.poll() is not None:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=300)
        stderr = stderr_path.read_text()
        if process.returncode == 0:
            break
        run = run_dirs(tmp_path / "killed")[0]
        if kills and process.returncode == 2:
            # A kill after the summary was written leaves a finished run, and its resume says so.
            assert "is finished" in stderr, stderr
            break
        assert process.returncode == -signal.SIGKILL, stderr
        kills += 1
        checkpoint = run / "Vanilla_last_ckpt.pth"
        load_plain(checkpoint)  # never truncated
        command = python_command("trainer_vanilla.py", "--resume", run)
    else:
        pytest.fail("the killed run never finished")
    run = run_dirs(tmp_path / "killed")[0]
    assert kills >= 1
    assert_same_run(run, full)
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_state_and_prints_the_resume_command(fashion_dir, tmp_path, signum):
    command = python_command("trainer_vanilla.py", "--data_dir", fashion_dir, "--output_dir", tmp_path,
                             "--batch_size", "4", "--n_epoch", "50", "--log_every_n_steps", "20")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("*/log.txt")) or "epoch 1 batch" not in list(tmp_path.glob("*/log.txt"))[0].read_text():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    assert "Resume with:" in stderr and "Traceback" not in stderr
    run = run_dirs(tmp_path)[0]
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    assert state["epoch"] == 0 and state["batches_done"] > 0
    assert read_json(run / "metrics.json")["status"] == "interrupted"


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("script, flag", [("trainer_vanilla.py", "--resume"), ("eval_vanilla.py", "--model_path")])
def test_malicious_checkpoint_is_refused_not_executed(tmp_path, script, flag):
    marker = tmp_path / "executed"
    path = tmp_path / "evil_ckpt.pth"
    torch.save({"model": _Exploit(marker)}, path)
    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump(_Exploit(marker), handle)
    for candidate in (path, tmp_path / "evil.pkl"):
        result = subprocess.run(python_command(script, flag, candidate), cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2, result.stderr
        assert "refusing to load" in result.stderr or "not a readable checkpoint" in result.stderr
        assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(fashion_dir, tmp_path, capsys):
    def diverging(trainer, forward, model, batch):
        loss, outputs = forward(model, batch)
        return (loss * float("nan") if trainer.progress.epoch == 1 and trainer.progress.batches_done >= 4 else loss), outputs
    Diverging = forwarding(diverging)
    with pytest.raises(SystemExit) as exit_info:
        train_vanilla(fashion_dir, tmp_path, *FLAGS, trainer_class=Diverging)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "epoch 2, batch 5" in message and "nan" in message
    state = load_plain(run_dirs(tmp_path)[0] / "Vanilla_last_ckpt.pth")
    assert state["epoch"] == 1 and state["batches_done"] == 0
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values())


def test_skip_nonfinite_counts_the_skipped_batches(fashion_dir, tmp_path):
    def spiky(trainer, forward, model, batch):
        loss, outputs = forward(model, batch)
        return (loss * float("inf") if trainer.progress.global_step in (3, 10) else loss), outputs
    Spiky = forwarding(spiky)
    run = train_vanilla(fashion_dir, tmp_path, *FLAGS, "--skip_nonfinite", trainer_class=Spiky)
    metrics = read_json(run / "metrics.json")
    assert metrics["nonfinite_batches"] == 2 and metrics["status"] == "completed"
    assert metrics["test"]["test/accuracy"] > 0.3  # chance is 0.1


def test_a_skipped_batch_leaves_the_weights_and_the_optimizer_alone(fashion_dir, tmp_path):
    """Adam's momentum would move the weights on a zero gradient: a step whose every batch was
    skipped must not be taken at all."""
    def spiky_at_3(trainer, forward, model, batch):
        loss, outputs = forward(model, batch)
        return (loss * float("nan") if trainer.progress.global_step == 3 else loss), outputs

    class SpikyAt(forwarding(spiky_at_3)):
        def after_step(self):
            if self.progress.global_step in (3, 4):
                saved[self.progress.global_step] = {key: value.clone() for key, value in self.model.state_dict().items()}
            super().after_step()
    saved = {}
    run = train_vanilla(fashion_dir, tmp_path, *FLAGS, "--n_epoch", "1", "--skip_nonfinite", "--dropout", "0",
                        trainer_class=SpikyAt)
    assert_same_tensors(saved[3], saved[4], "the weights after steps 3 and 4")  # step 4 was the NaN batch
    metrics = read_json(run / "metrics.json")
    assert metrics["nonfinite_batches"] == 1 and metrics["skipped_steps"] == 1


def test_an_exception_saves_the_last_completed_step_and_propagates(fashion_dir, tmp_path):
    def crashing(trainer, forward, model, batch):
        if trainer.progress.global_step == 22:
            raise RuntimeError("boom")
        return forward(model, batch)
    Crashing = forwarding(crashing)
    with pytest.raises(RuntimeError, match="boom"):
        train_vanilla(fashion_dir, tmp_path, *FLAGS, trainer_class=Crashing)
    run = run_dirs(tmp_path)[0]
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    assert state["global_step"] == 22 and state["epoch"] == 1 and state["batches_done"] == 5
    assert "crashed at epoch 2" in (run / "log.txt").read_text()


def stopping_in(phase):
    """A trainer that receives SIGTERM at the first batch of a validation ("val", the second epoch's)
    or of the test, and counts the batches it still evaluates after that."""
    def stopping(trainer, forward, model, batch):
        in_test = trainer.progress.is_finished(trainer.args.n_epoch)
        if not model.training and (in_test if phase == "test" else not in_test and trainer.progress.epoch == 1):
            if trainer.stop.requested:
                type(trainer).evaluated_after_signal += 1
            else:
                trainer.stop.signum = signal.SIGTERM
        return forward(model, batch)

    class Stopping(forwarding(stopping)):
        evaluated_after_signal = 0
    return Stopping


@pytest.mark.parametrize("phase", ["val", "test"])
def test_a_signal_during_evaluation_stops_within_one_batch_and_resumes_exactly(fashion_dir, tmp_path, uninterrupted,
                                                                              phase):
    trainer_class = stopping_in(phase)
    with pytest.raises(SystemExit) as exit_info:
        train_vanilla(fashion_dir, tmp_path, *FLAGS, trainer_class=trainer_class)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert trainer_class.evaluated_after_signal == 0
    run = run_dirs(tmp_path)[0]
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "interrupted" and "test" not in metrics
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    # In validation: the epoch's training is saved whole; in the test: the final state, untouched.
    assert (state["epoch"], state["batches_done"]) == ((1, 17) if phase == "val" else (3, 0))
    resume(run)
    assert_same_run(run, uninterrupted)


def test_a_crash_in_the_test_leaves_the_training_state_alone(fashion_dir, tmp_path):
    def crashing_in_the_test(trainer, forward, model, batch):
        if not model.training and trainer.progress.is_finished(trainer.args.n_epoch):
            type(trainer).last_before_test = trainer.run.checkpoint_path("last").read_bytes()
            raise RuntimeError("boom in the test")
        return forward(model, batch)

    class CrashingInTheTest(forwarding(crashing_in_the_test)):
        last_before_test = None
    # The highest validation loss is the first epoch's: the best weights are not the last ones.
    flags = [*FLAGS, "--monitor", "val/loss", "--monitor_mode", "max"]
    with pytest.raises(RuntimeError, match="boom in the test"):
        train_vanilla(fashion_dir, tmp_path, *flags, trainer_class=CrashingInTheTest)
    run = run_dirs(tmp_path)[0]
    assert (run / "Vanilla_last_ckpt.pth").read_bytes() == CrashingInTheTest.last_before_test
    assert load_plain(run / "Vanilla_best_ckpt.pth")["epoch"] != 3
    resume(run)  # the run resumes to run its test
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "completed" and "test/accuracy" in metrics["test"]


def test_a_cut_between_the_last_and_the_best_write_is_repaired(fashion_dir, tmp_path, uninterrupted, monkeypatch):
    import state.run_folder
    best_epoch = read_json(uninterrupted / "metrics.json")["best_epoch"]
    real_save = state.run_folder.save_atomic
    cut = []

    def disk_full_at_the_best_epoch(content, path):
        if path.name == "Vanilla_best_ckpt.pth" and not cut and load_plain(path.parent / "Vanilla_last_ckpt.pth")["epoch"] == best_epoch:
            cut.append(path)
            raise state.run_folder.UserError(f"could not write {path}: No space left on device")
        real_save(content, path)

    monkeypatch.setattr(state.run_folder, "save_atomic", disk_full_at_the_best_epoch)
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path, *FLAGS)
    assert cut
    monkeypatch.setattr(state.run_folder, "save_atomic", real_save)
    run = run_dirs(tmp_path)[0]
    resume(run)
    assert load_plain(run / "Vanilla_best_ckpt.pth")["epoch"] == read_json(run / "metrics.json")["best_epoch"] == best_epoch
    assert_same_run(run, uninterrupted)
    assert "rewrote it from" in (run / "log.txt").read_text()


def test_resume_never_reads_the_initial_weights_again(fashion_dir, tmp_path):
    flags = ["--n_epoch", "2", "--train_val_sample_rate", "0.2", "--test_sample_rate", "0.25", "--dropout", "0.2"]
    source = train_vanilla(fashion_dir, tmp_path / "source", *flags[2:], "--n_epoch", "1")
    init = tmp_path / "init.pth"
    init.write_bytes((source / "Vanilla_best_ckpt.pth").read_bytes())
    pretrained = [*flags, "--pretrained", "--model_path", init]
    full = train_vanilla(fashion_dir, tmp_path / "full", *pretrained)
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path / "cut", *pretrained, trainer_class=stopping_at(12))
    init.unlink()
    run = run_dirs(tmp_path / "cut")[0]
    resume(run)
    assert_same_run(run, full)


def test_resume_refuses_a_new_length_for_a_cosine_schedule(fashion_dir, tmp_path, capsys):
    run = train_vanilla(fashion_dir, tmp_path, *FLAGS, "--n_epoch", "1", "--lr_scheduler", "cosine")
    before = (run / "Vanilla_last_ckpt.pth").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        VanillaTrainer.main(["--resume", str(run), "--n_epoch", "3"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "--n_epoch 3 (checkpoint: 1" in message and "cosine" in message
    assert (run / "Vanilla_last_ckpt.pth").read_bytes() == before


def test_resuming_a_finished_run_says_so(uninterrupted, capsys):
    before = {path.name: path.read_bytes() for path in uninterrupted.iterdir() if path.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        VanillaTrainer.main(["--resume", str(uninterrupted)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "is finished" in message and "--n_epoch larger than 3" in message
    assert {path.name: path.read_bytes() for path in uninterrupted.iterdir() if path.is_file()} == before


def test_tensorboard_keeps_every_point_across_a_resume(fashion_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    # One optimizer step per epoch: the epoch axis and the step axis count alike.
    flags = ["--train_val_sample_rate", "0.1", "--batch_size", "256", "--log_every_n_steps", "1"]
    run = train_vanilla(fashion_dir, tmp_path, *flags, "--n_epoch", "1")
    resume(run, "--n_epoch", "3")
    events = EventAccumulator(str(run / "summary"))
    events.Reload()
    assert [event.step for event in events.Scalars("val/accuracy")] == [1, 2, 3]
    assert [event.step for event in events.Scalars("train/step_loss")] == [1, 2, 3]
