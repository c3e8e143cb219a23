"""Runs that survive a cluster, on the CPU (gloo): --resume auto and --run_name, the run's lock, SIGUSR1
and the requeue, torchrun's restarts, and resumes on another number of processes."""
import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cluster_trainer import RecordingTrainer
from helpers import (ROOT, assert_same_weights, last_checkpoint, load_plain, read_json, refused, run_dirs,
                     workers_of)
from test_scale import free_port

SCRIPT = Path(__file__).resolve().parent / "cluster_trainer.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
GLOBAL_BATCH = 32
# Plain SGD and no dropout: the processes' sums are then the only difference between process counts.
FLAGS = ["--train_val_sample_rate", "0.25", "--test_sample_rate", "0.25", "--dropout", "0", "--n_epoch", "2",
         "--optim", "sgd", "--lr", "0.05", "--momentum", "0", "--deterministic", "--global_batch_size", GLOBAL_BATCH,
         "--save_every_n_steps", "5", "--log_every_n_steps", "100"]
STEPS_PER_EPOCH = 11  # 337 training samples in steps of 32
# Weights of runs on different numbers of processes differ by the order of floating-point sums:
# measured up to 3.7e-7 (the largest difference of a tensor over its largest value) after 2 epochs.
TOLERANCE = 1e-5


def argv(data_dir, output, *extra):
    return [str(arg) for arg in ("--data_dir", data_dir, "--output_dir", output, *FLAGS, *extra)]


def environment(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def torchrun(nproc, *args, restarts=0, env=None, timeout=240):
    command = [*TORCHRUN, "--nproc_per_node", str(nproc), "--max-restarts", str(restarts),
               "--master_port", str(free_port()), str(SCRIPT), *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env=environment(**(env or {})))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_keeping(argv_, step):
    """An in-process run that keeps a copy of its folder when it saves `step` (cluster_trainer.py)."""
    os.environ["KEEP_AT_STEP"] = str(step)
    try:
        assert RecordingTrainer.main(argv_) == 0
    finally:
        del os.environ["KEEP_AT_STEP"]


def the_run(output):
    return next(run for run in run_dirs(output) if "_at" not in run.name)


def step_samples(run):
    """{(epoch, global step of the epoch): hash of the sorted sample indices the step took over every process}."""
    samples = {}
    for path in Path(run).glob("samples.rank*.txt"):
        for line in path.read_text().splitlines():
            epoch, micro_batch, batch_size, processes, indices = (line.split(" ") + [""])[:5]
            step = int(micro_batch) * int(batch_size) * int(processes) // GLOBAL_BATCH
            samples.setdefault((int(epoch), step), set()).update(int(i) for i in indices.split(",") if i)
    return {key: hashlib.sha1(",".join(map(str, sorted(value))).encode()).hexdigest()
            for key, value in samples.items()}


def assert_same_run_within_tolerance(run, reference):
    """The same samples at every step, and weights and test numbers within TOLERANCE."""
    samples = step_samples(run)
    assert len(samples) == 2 * STEPS_PER_EPOCH and samples == step_samples(reference)
    first, second = last_checkpoint(run), last_checkpoint(reference)
    assert first["global_step"] == second["global_step"] == 2 * STEPS_PER_EPOCH
    for key, value in second["model"].items():
        difference = (first["model"][key] - value).abs().max() / value.abs().max()
        assert difference < TOLERANCE, (key, float(difference))
    tested, expected = read_json(run / "metrics.json")["test"], read_json(reference / "metrics.json")["test"]
    assert tested == pytest.approx(expected, rel=TOLERANCE)


@pytest.fixture(scope="module")
def single(fashion_dir, tmp_path_factory):
    """The uninterrupted run in one process (batches of 32), with a copy of its folder at step 5."""
    output = tmp_path_factory.mktemp("single")
    train_keeping(argv(fashion_dir, output, "--batch_size", GLOBAL_BATCH), 5)
    return the_run(output)


@pytest.fixture(scope="module")
def two(fashion_dir, tmp_path_factory):
    """The uninterrupted run in two processes (batches of 16), with a copy of its folder at step 15."""
    output = tmp_path_factory.mktemp("two")
    torchrun(2, *argv(fashion_dir, output, "--batch_size", 16), env={"KEEP_AT_STEP": "15"})
    return the_run(output)


@pytest.fixture(scope="module")
def four(fashion_dir, tmp_path_factory):
    """The uninterrupted run in four processes (batches of 8)."""
    output = tmp_path_factory.mktemp("four")
    torchrun(4, *argv(fashion_dir, output, "--batch_size", 8))
    return the_run(output)


# ---------------------------------------------------------------------- any number of processes
def test_one_and_two_processes_take_the_same_samples_every_step(single, two):
    assert_same_run_within_tolerance(two, single)


def test_a_run_saved_on_two_processes_resumes_on_one_mid_epoch(single, two, tmp_path):
    kept = shutil.copytree(two.with_name(f"{two.name}_at15"), tmp_path / "run")
    assert last_checkpoint(kept)["batches_done"] == 4  # 4 of epoch 2's 11 steps, in batches of 16 x 2
    assert RecordingTrainer.main(["--resume", str(kept)]) == 0
    assert_same_run_within_tolerance(kept, single)
    resumed = last_checkpoint(kept)
    assert resumed["world_size"] == 1 and resumed["config"]["accum_steps"] == 2  # 16 x 1 x 2 keeps 32
    assert "resuming on 1 process(es) a state saved by 2" in (kept / "log.txt").read_text()


def test_a_run_saved_on_one_process_resumes_on_four_mid_epoch(single, tmp_path):
    kept = shutil.copytree(single.with_name(f"{single.name}_at5"), tmp_path / "run")
    # batches of 2: 4 micro-batches per step, and the epoch's last micro-batch (1 sample) leaves 3 ranks a placeholder
    torchrun(4, "--resume", kept, "--batch_size", 2)
    assert_same_run_within_tolerance(kept, single)
    resumed = last_checkpoint(kept)
    assert resumed["world_size"] == 4 and resumed["config"]["accum_steps"] == 4


def test_the_global_batch_fixes_the_samples_of_every_step_and_their_weights():
    """Every split of a global batch of 8 (processes x batch x accumulation) takes the same samples at
    every step; a placeholder (a rank the short last micro-batch leaves empty) weighs 0, and every real
    sample weighs 1 / the step's samples."""
    from data.loader import GlobalBatchSampler
    size, total = 21, 8
    expected = None
    for processes, batch_size in ((1, 8), (1, 2), (2, 4), (2, 1), (4, 2), (4, 1)):
        accum = total // (processes * batch_size)
        steps = {}
        for rank in range(processes):
            sampler = GlobalBatchSampler(size, batch_size, seed=3, rank=rank, world_size=processes)
            sampler.set_epoch(2)
            for index, batch in enumerate(sampler):
                real = sampler.batch_size_at(index)
                step = index // accum
                step_size = min(total, size - step * total)
                share = sampler.share_at(index, accum)
                assert share == 0 if real == 0 else share / (processes * real) == pytest.approx(1 / step_size)
                steps.setdefault(step, []).extend(batch[:real].tolist())
        assert all(len(indices) == len(set(indices)) for indices in steps.values())
        steps = {step: sorted(indices) for step, indices in steps.items()}
        assert expected is None or steps == expected, (processes, batch_size)
        expected = steps
    assert sorted(sum(expected.values(), [])) == list(range(size))


@pytest.mark.parametrize("batches_done, steps_done", [(20, 5), (43, 11)])  # mid-epoch; after the epoch's last step
def test_a_position_saved_by_one_split_resumes_at_the_same_sample_in_another(batches_done, steps_done):
    """337 samples, saved on 1 process in batches of 8 x 4 micro-batches, resumed on 2 in batches of 16:
    the 2 processes take the rest of the epoch's order, from the first sample of step `steps_done` on."""
    from data.loader import GlobalBatchSampler
    from state.checkpoint import global_position
    from state.rescale import rescale
    config = {"batch_size": 8, "accum_steps": 4}
    checkpoint = {"world_size": 1, "config": config, "batches_done": batches_done, "global_step": 7,
                  "epoch_sums": [{"sums": {"correct": torch.tensor(3.0)}, "counts": {"loss_samples": 160}}],
                  "rng": [None], **global_position(config, 1, {"batches_done": batches_done})}
    args = argparse.Namespace(batch_size=16, accum_steps=1, seed=0, resume="last")
    rescale(checkpoint, args, world_size=2)
    assert checkpoint["batches_done"] == steps_done and len(checkpoint["rng"]) == len(checkpoint["epoch_sums"]) == 2
    order = GlobalBatchSampler(337, 337, seed=5)
    order.set_epoch(1)
    rest = []
    for rank in range(2):
        sampler = GlobalBatchSampler(337, 16, seed=5, rank=rank, world_size=2)
        sampler.set_epoch(1, skip_batches=checkpoint["batches_done"])
        rest += [index for offset, batch in enumerate(sampler, start=sampler.skip)
                 for index in batch[:sampler.batch_size_at(offset)].tolist()]
    assert sorted(rest) == sorted(next(iter(order))[steps_done * 32:].tolist())


def test_global_batch_arithmetic_and_its_refusals():
    from cli.global_batch import resolve_global_batch
    from utils.errors import UserError
    args = argparse.Namespace(global_batch_size=32, batch_size=8, accum_steps=None)
    resolve_global_batch(args, 2)
    assert args.accum_steps == 2
    args = argparse.Namespace(global_batch_size=32, batch_size=None, accum_steps=2)
    resolve_global_batch(args, 4)
    assert args.batch_size == 4
    with pytest.raises(UserError, match=r"--global_batch_size 32 on 4 process\(es\) with --batch_size 32: .*"
                                        r"give --batch_size one of 1, 2, 4, 8"):
        resolve_global_batch(argparse.Namespace(global_batch_size=32, batch_size=32, accum_steps=None), 4)
    with pytest.raises(UserError, match=r"the global batch is 32 .* --batch_size 8 x 2 process\(es\) x --accum_steps 4 = 64"):
        resolve_global_batch(argparse.Namespace(global_batch_size=32, batch_size=8, accum_steps=4), 2)


def test_refusals_name_the_fix(single, fashion_dir, tmp_path, capsys):
    kept = single.with_name(f"{single.name}_at5")
    message = refused(RecordingTrainer.main, ["--resume", kept, "--global_batch_size", 64], capsys)
    assert "the checkpoint's global batch is 32" in message and "leave --global_batch_size out" in message
    message = refused(RecordingTrainer.main, argv(fashion_dir, tmp_path, "--batch_size", 7), capsys)
    assert "--global_batch_size 32 on 1 process(es) with --batch_size 7" in message


def test_an_old_checkpoint_gets_its_global_position():
    """A torch-template/3 checkpoint (no global batch, no position in the global order) is upgraded."""
    from state.checkpoint import FORMAT, upgrade
    checkpoint = {"format": "torch-template/3", "config": {"batch_size": 16, "accum_steps": 2}, "world_size": 2,
                  "batches_done": 6}
    upgraded = upgrade(checkpoint)
    assert upgraded["format"] == FORMAT and upgraded["global_batch"] == 64 and upgraded["epoch_samples"] == 192
    assert upgraded["sampling"] == 1  # it began with round-robin dealing and per-batch augmentation


def test_with_the_batch_kept_every_micro_batch_holds_the_same_samples_on_any_number_of_processes():
    """The consecutive deal (sampling rules 2): micro-batches of 2 samples are the same groups on 1, 2
    and 4 processes, which BatchNorm normalises together; the round-robin deal of rules 1 gives other
    groups on 2 processes, and its own order, the old one, still."""
    from data.loader import EpochBatchSampler, GlobalBatchSampler
    size, batch_size = 21, 2

    def groups(processes, deal):
        found = []
        for rank in range(processes):
            sampler = GlobalBatchSampler(size, batch_size, seed=3, rank=rank, world_size=processes, deal=deal)
            sampler.set_epoch(1)
            found += [tuple(batch[:sampler.batch_size_at(index)].tolist()) for index, batch in enumerate(sampler)]
        return sorted(group for group in found if group)

    assert groups(1, "consecutive") == groups(2, "consecutive") == groups(4, "consecutive")
    assert groups(2, "round_robin") != groups(1, "consecutive")
    old = EpochBatchSampler(size, batch_size, shuffle=True, seed=3, rank=1, world_size=2, pad=True)
    old.set_epoch(1)
    new = GlobalBatchSampler(size, batch_size, seed=3, rank=1, world_size=2, deal="round_robin")
    new.set_epoch(1)
    assert [batch.tolist() for batch in new][:5] == [batch.tolist() for batch in old][:5]
    # A rank the last micro-batch leaves empty trains on a placeholder of weight 0 that BatchNorm can
    # normalise (one sample raises "Expected more than 1 value per channel" on that rank alone, and
    # the other ranks would wait for it in the gradient sync).
    last = GlobalBatchSampler(100, 16, seed=3, rank=3, world_size=4)
    placeholder = list(last)[-1]
    assert last.batch_size_at(len(last) - 1) == 0 and len(placeholder) == 16


# ---------------------------------------------------------------------- BatchNorm and augmentation
CARVANA = ["--img_size", "32", "48", "--depth", "2", "--base_width", "4", "--n_epoch", "2", "--val_ratio", "0.2",
           "--test_ratio", "0.2", "--optim", "sgd", "--lr", "0.05", "--momentum", "0", "--deterministic",
           "--global_batch_size", "4", "--batch_size", "2", "--save_every_n_steps", "3", "--log_every_n_steps", "100"]


def carvana_torchrun(nproc, *args, env=None):
    return torchrun(nproc, *args, env={"TASK": "carvana", **(env or {})})


def assert_same_unet_within_tolerance(run, reference):
    """Weights, BatchNorm running statistics and their counts, and every epoch's numbers."""
    first, second = last_checkpoint(run), last_checkpoint(reference)
    assert first["global_step"] == second["global_step"] == 20 and first["config"]["augment"]
    assert first["sampling"] == second["sampling"] == 2
    statistics = [key for key in second["model"] if "running" in key]
    assert statistics
    for key, value in second["model"].items():
        if value.dtype == torch.long:  # num_batches_tracked: one per micro-batch of the global order
            assert torch.equal(first["model"][key], value), key
            continue
        difference = (first["model"][key] - value).abs().max() / value.abs().max()
        assert difference < TOLERANCE, (key, float(difference))
    numbers = [{key: value for key, value in record.items() if "/" in key} for record in first["history"]]
    expected = [{key: value for key, value in record.items() if "/" in key} for record in second["history"]]
    assert numbers == [pytest.approx(record, rel=TOLERANCE, abs=1e-6) for record in expected]
    tested, expected = read_json(run / "metrics.json")["test"], read_json(reference / "metrics.json")["test"]
    assert tested == pytest.approx(expected, rel=TOLERANCE, abs=1e-6)


@pytest.fixture(scope="module")
def unet_single(carvana_dir, tmp_path_factory):
    """A UNet (BatchNorm, augmented) in one process, micro-batches of 2 x 2 accumulated: 10 steps an epoch."""
    from cluster_trainer import KeepingCarvanaTrainer
    output = tmp_path_factory.mktemp("unet_single")
    assert KeepingCarvanaTrainer.main(["--data_dir", str(carvana_dir), "--output_dir", str(output), *CARVANA]) == 0
    return run_dirs(output)[0]


def test_batchnorm_and_augmentation_are_alike_on_one_and_two_processes(unet_single, carvana_dir, tmp_path):
    """With the per-process batch kept, each micro-batch holds the same samples, each sample draws the
    same augmentation, and the running statistics fold every process's micro-batches in the global
    order: two processes end where one does (measured within 2.3e-7 of the largest value of each tensor)."""
    carvana_torchrun(2, "--data_dir", carvana_dir, "--output_dir", tmp_path, *CARVANA, env={"KEEP_AT_STEP": "12"})
    two = next(run for run in run_dirs(tmp_path) if "_at" not in run.name)
    assert_same_unet_within_tolerance(two, unet_single)

    kept = shutil.copytree(two.with_name(f"{two.name}_at12"), tmp_path / "resumed")
    assert last_checkpoint(kept)["batches_done"] == 2  # mid-epoch: 2 of epoch 2's 10 steps
    from cluster_trainer import KeepingCarvanaTrainer
    assert KeepingCarvanaTrainer.main(["--resume", str(kept)]) == 0  # on one process
    assert_same_unet_within_tolerance(kept, unet_single)


# ---------------------------------------------------------------------- restarts that continue by themselves
def start(fashion_dir, output, *extra, env=None):
    command = [sys.executable, str(SCRIPT), *argv(fashion_dir, output, "--batch_size", GLOBAL_BATCH, *extra)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment(**(env or {})))


def wait_for_a_checkpoint(process, run, timeout=120):
    deadline = time.monotonic() + timeout
    while not (run / "Vanilla_last_ckpt.pth").is_file():
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.05)


def test_resume_auto_after_sigkill_continues_its_run_bit_equal(single, fashion_dir, tmp_path):
    process = start(fashion_dir, tmp_path, "--run_name", "job")
    try:
        wait_for_a_checkpoint(process, tmp_path / "job")
        process.kill()  # its lock goes with it
        process.wait(timeout=60)
    finally:
        process.kill()
    assert RecordingTrainer.main(argv(fashion_dir, tmp_path, "--batch_size", GLOBAL_BATCH, "--run_name", "job",
                                      "--resume", "auto")) == 0
    assert run_dirs(tmp_path) == [tmp_path / "job"]
    assert_same_weights(tmp_path / "job", single, optimizer=True)
    assert step_samples(tmp_path / "job") == step_samples(single)
    assert "resumed from" in (tmp_path / "job" / "log.txt").read_text()


def test_workers_die_with_a_killed_torchrun_and_resume_auto_continues_bit_equal(four, fashion_dir, tmp_path):
    """`kill -9` of torchrun alone: its workers die with it (they would train on, orphans holding the run's
    lock), and the same command with --resume auto continues the run from its last save on 4 processes."""
    args = argv(fashion_dir, tmp_path, "--batch_size", 8, "--run_name", "job")
    command = [*TORCHRUN, "--nproc_per_node", "4", "--master_port", str(free_port()), str(SCRIPT), *args]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=environment())
    try:
        wait_for_a_checkpoint(process, tmp_path / "job")
        workers = workers_of(process)
        process.kill()
        process.wait(timeout=60)
    finally:
        process.kill()
    assert len(workers) == 4
    deadline = time.monotonic() + 30
    while any(worker_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "the workers outlived torchrun"
        time.sleep(0.05)
    assert last_checkpoint(tmp_path / "job")["global_step"] < 2 * STEPS_PER_EPOCH
    torchrun(4, *args, "--resume", "auto")
    assert run_dirs(tmp_path) == [tmp_path / "job"]
    assert_same_weights(tmp_path / "job", four, optimizer=True)
    assert step_samples(tmp_path / "job") == step_samples(four)


def worker_alive(pid):
    """Whether process `pid` runs (a zombie, dead and not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def fake_slurm(folder, calls):
    """A folder for PATH with `scontrol` and `srun` that record their arguments in `calls`; `srun` runs its
    command, and `scontrol show hostnames` names this machine."""
    folder.mkdir()
    (folder / "scontrol").write_text(f'#!/bin/sh\necho "scontrol $@" >> {calls}\n'
                                     '[ "$1" = show ] && echo localhost\nexit 0\n')
    (folder / "srun").write_text(f'#!/bin/sh\necho "srun $@" >> {calls}\n')
    for name in ("scontrol", "srun"):
        (folder / name).chmod(0o755)
    path = os.pathsep.join((str(folder), str(Path(sys.executable).parent), os.environ["PATH"]))  # torchrun too
    return {"PATH": path, "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train"}


def sigusr1_after_a_save(process, run):
    """SIGUSR1 to `process` once it has saved in `run`; its stderr once it has ended."""
    try:
        wait_for_a_checkpoint(process, run)
        process.send_signal(signal.SIGUSR1)
        return process.communicate(timeout=120)[1]
    finally:
        process.kill()


def test_sigusr1_saves_asks_slurm_to_requeue_and_the_requeued_job_continues(single, fashion_dir, tmp_path):
    """The one-node sbatch script, run as SLURM would (a fake scontrol) with its default --max-restarts 3:
    SIGUSR1 to the script reaches the worker, which saves, asks for the requeue and ends the job (status 0
    under torchrun, which would otherwise restart the group and train on); the requeued job ends the run
    bit-equal."""
    calls, output = tmp_path / "calls", tmp_path / "runs"
    env = environment(**fake_slurm(tmp_path / "bin", calls))
    command = ["bash", ROOT / "configs" / "slurm" / "train_one_node.sbatch", SCRIPT,
               *argv(fashion_dir, output, "--batch_size", GLOBAL_BATCH)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stderr = sigusr1_after_a_save(process, output / "train-4242")
    assert process.returncode == 0 and "attempt 1" not in stderr and "Restarting" not in stderr, stderr[-3000:]
    assert calls.read_text() == "scontrol requeue 4242\n"  # once: the group was not restarted
    run = output / "train-4242"
    assert read_json(run / "metrics.json")["status"] == "interrupted"
    assert "requeued the job: scontrol requeue 4242" in (run / "log.txt").read_text()
    assert 5 <= last_checkpoint(run)["global_step"] < 2 * STEPS_PER_EPOCH
    # the requeued job runs the same command (here in this process: the script's was tried above)
    assert RecordingTrainer.main(argv(fashion_dir, output, "--batch_size", GLOBAL_BATCH, "--run_name", "train-4242",
                                      "--resume", "auto")) == 0
    assert_same_weights(run, single, optimizer=True)
    assert step_samples(run) == step_samples(single)


def test_sigusr1_outside_torchrun_exits_138_after_the_requeue_and_the_next_job_continues(single, fashion_dir,
                                                                                          tmp_path):
    """One process in a SLURM job (a fake scontrol): SIGUSR1 saves, requeues and exits with 128 + SIGUSR1."""
    calls = tmp_path / "calls"
    process = start(fashion_dir, tmp_path, "--run_name", "job", env=fake_slurm(tmp_path / "bin", calls))
    stderr = sigusr1_after_a_save(process, tmp_path / "job")
    assert process.returncode == 128 + signal.SIGUSR1 == 138, stderr[-3000:]
    assert calls.read_text() == "scontrol requeue 4242\n"
    assert 5 <= last_checkpoint(tmp_path / "job")["global_step"] < 2 * STEPS_PER_EPOCH
    assert RecordingTrainer.main(argv(fashion_dir, tmp_path, "--batch_size", GLOBAL_BATCH, "--run_name", "job",
                                      "--resume", "auto")) == 0
    assert_same_weights(tmp_path / "job", single, optimizer=True)
    assert step_samples(tmp_path / "job") == step_samples(single)


def test_the_requeue_command_comes_from_the_hook_then_slurm(monkeypatch, tmp_path):
    from training.requeue import requeue_command
    monkeypatch.delenv("REQUEUE_COMMAND", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert requeue_command() is None
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", tmp_path / "calls")["PATH"])
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert requeue_command() == ["scontrol", "requeue", "4242"]
    monkeypatch.setenv("REQUEUE_COMMAND", "my-scheduler resubmit 7")
    assert requeue_command() == "my-scheduler resubmit 7"


def test_the_many_nodes_script_starts_torchrun_on_every_node_with_the_c10d_rendezvous(tmp_path):
    calls = tmp_path / "calls"
    env = environment(SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="4", SLURM_JOB_NODELIST="node[1-2]",
                      **fake_slurm(tmp_path / "bin", calls))
    result = subprocess.run(["bash", ROOT / "configs" / "slurm" / "train_many_nodes.sbatch", "trainer_vanilla.py",
                             "--n_epoch", "3"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        "scontrol show hostnames node[1-2]",
        "srun --kill-on-bad-exit=1 bash configs/slurm/forward_usr1.sh torchrun --nnodes 2 --nproc_per_node 4 "
        "--rdzv_backend c10d --rdzv_endpoint localhost:29500 --rdzv_id 4242 --max-restarts 3 trainer_vanilla.py "
        "--n_epoch 3 --run_name train-4242 --resume auto"]


def kill_a_worker_when(command, saved, timeout=120):
    """Run the torchrun `command`, SIGKILL its last worker once `saved()` holds, and return torchrun's stderr
    once it has restarted the group and ended well."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment())
    try:
        deadline = time.monotonic() + timeout
        while not saved():
            assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()[-3000:]
            time.sleep(0.05)
        workers = workers_of(process)
        os.kill(int(workers[-1]), signal.SIGKILL)
        _, stderr = process.communicate(timeout=240)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    return stderr


@pytest.mark.parametrize("processes", [2, 4])
def test_torchrun_restarts_a_killed_worker_and_the_group_continues_bit_equal(processes, request, fashion_dir,
                                                                             tmp_path):
    """On 4 processes the all-reduce's sums depend on DDP's bucket layout, which DDP builds anew from the first
    step of each start: the layout is settled before the first step (utils/distributed.py, settle_buckets)."""
    uninterrupted = request.getfixturevalue({2: "two", 4: "four"}[processes])
    command = [*TORCHRUN, "--nproc_per_node", str(processes), "--max-restarts", "1", "--master_port",
               str(free_port()), str(SCRIPT),
               *argv(fashion_dir, tmp_path, "--batch_size", GLOBAL_BATCH // processes, "--run_name", "job")]
    stderr = kill_a_worker_when(command, lambda: (tmp_path / "job" / "Vanilla_last_ckpt.pth").is_file())
    run = tmp_path / "job"
    assert_same_weights(run, uninterrupted, optimizer=True)
    assert step_samples(run) == step_samples(uninterrupted)
    assert "--resume auto: continuing" in stderr and len(read_json(run / "config.json")["resumes"]) == 1


def test_a_restarted_group_continues_the_branch_its_first_attempt_made_from_an_older_state(single, tmp_path):
    """`--resume PATH` of a state older than its run's `last` continues in a branch folder (state/branch.py);
    after a killed worker, torchrun's restarted group continues that branch rather than making another."""
    run = shutil.copytree(single, tmp_path / "run")
    older = shutil.copy(single.with_name(f"{single.name}_at5") / "Vanilla_last_ckpt.pth", run / "Vanilla_step5.pth")
    # another launch's branch from the same state, newer: the restart must not take it for its own
    other = shutil.copytree(single.with_name(f"{single.name}_at5"), tmp_path / "2000-01-01_00-00-00_from_epoch000")
    (other / "config.json").write_text(json.dumps({"resumes": [{"from": str(older), "launch": "another"}]}))
    os.utime(other / "Vanilla_last_ckpt.pth", (time.time() + 3600, time.time() + 3600))
    command = [*TORCHRUN, "--nproc_per_node", "1", "--max-restarts", "1", "--master_port", str(free_port()),
               str(SCRIPT), "--resume", str(older)]
    stderr = kill_a_worker_when(command, lambda: [path for path in tmp_path.glob("*_from_epoch000/Vanilla_last_ckpt.pth")
                                                  if path.parent != other])
    branches = [path for path in tmp_path.glob("*_from_epoch*") if path != other]
    assert len(branches) == 1, branches
    assert "torchrun restart: continuing" in stderr
    resumes = read_json(branches[0] / "config.json")["resumes"]
    assert [Path(entry["from"]).name for entry in resumes] == ["Vanilla_step5.pth", "Vanilla_last_ckpt.pth"]
    assert_same_weights(branches[0], single, optimizer=True)
    assert last_checkpoint(other)["global_step"] == 5 and len(read_json(other / "config.json")["resumes"]) == 1


# ---------------------------------------------------------------------- which run --resume auto continues
def copy_run(source, destination, age):
    shutil.copytree(source, destination)
    for path in destination.iterdir():
        os.utime(path, (time.time() - age, time.time() - age))
    return destination


def test_resume_auto_picks_the_newest_resumable_run_of_the_same_experiment(single, fashion_dir, tmp_path):
    kept = single.with_name(f"{single.name}_at5")
    resumable = copy_run(kept, tmp_path / "a_resumable", age=400)
    copy_run(single, tmp_path / "b_finished", age=300)
    broken = copy_run(kept, tmp_path / "c_broken", age=200)
    (broken / "Vanilla_last_ckpt.pth").write_bytes(b"PK\x03\x04 cut short")
    other = copy_run(kept, tmp_path / "d_other_lr", age=100)
    checkpoint = load_plain(other / "Vanilla_last_ckpt.pth")
    checkpoint["config"]["lr"] = 0.07
    torch.save(checkpoint, other / "Vanilla_last_ckpt.pth")
    command = argv(fashion_dir, tmp_path, "--batch_size", GLOBAL_BATCH, "--resume", "auto")
    args, resumed = RecordingTrainer.parse(command)
    assert args.resume == resumable / "Vanilla_last_ckpt.pth" and resumed["global_step"] == 5
    at = FLAGS.index("--global_batch_size")  # another --batch_size, no global batch: another experiment
    other_batch = [str(arg) for arg in ("--data_dir", fashion_dir, "--output_dir", tmp_path, *FLAGS[:at], *FLAGS[at + 2:],
                                        "--batch_size", GLOBAL_BATCH * 2, "--resume", "auto")]
    args, resumed = RecordingTrainer.parse(other_batch)
    assert args.resume is None and resumed is None  # a new run, not a resume that refuses the batch size
    shutil.rmtree(resumable)
    args, resumed = RecordingTrainer.parse(command)
    assert args.resume is None and resumed is None  # nothing left to continue: a new run


def test_resume_auto_refuses_a_named_run_it_cannot_continue(single, fashion_dir, tmp_path, capsys):
    shutil.copytree(single, tmp_path / "done")
    message = refused(RecordingTrainer.main, argv(fashion_dir, tmp_path, "--batch_size", GLOBAL_BATCH,
                                                  "--run_name", "done", "--resume", "auto"), capsys)
    assert "is finished" in message and "choose another --run_name" in message
    message = refused(RecordingTrainer.main, argv(fashion_dir, tmp_path, "--batch_size", GLOBAL_BATCH,
                                                  "--run_name", "done"), capsys)
    assert "holds a run already; continue it with --resume auto" in message


def test_a_named_run_that_died_before_its_first_save_starts_again_with_each_step_once(fashion_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    command = argv(fashion_dir, tmp_path, "--batch_size", GLOBAL_BATCH, "--run_name", "job", "--resume", "auto",
                   "--n_epoch", "1", "--log_every_n_steps", "2")
    assert RecordingTrainer.main(command) == 0
    run = tmp_path / "job"
    for path in [*run.glob("*.pth"), run / "metrics.json"]:  # as a start killed before it saved anything leaves it
        path.unlink()
    assert RecordingTrainer.main(command) == 0  # nothing to continue: a new run in the same folder
    events = EventAccumulator(str(run / "summary"))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/step_loss")]
    assert steps == sorted(set(steps)) and [event.step for event in events.Scalars("val/loss")] == [1]


def test_the_processes_must_resume_the_same_checkpoint(monkeypatch):
    from state.resume_policy import check_same_resume
    from utils import distributed
    from utils.errors import UserError
    monkeypatch.setattr(distributed, "all_gather_object", lambda path: [path, path])
    check_same_resume("runs/a/Vanilla_last_ckpt.pth")
    monkeypatch.setattr(distributed, "all_gather_object", lambda path: ["runs/a/Vanilla_last_ckpt.pth", "runs/b/x.pth"])
    with pytest.raises(UserError, match="chose different checkpoints to resume: runs/a/Vanilla_last_ckpt.pth, runs/b"):
        check_same_resume("runs/a/Vanilla_last_ckpt.pth")


def test_a_second_job_with_the_same_run_name_is_refused(fashion_dir, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    holder = subprocess.Popen(  # the first job, still training: it holds the run's lock as a trainer does
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "handle = open(sys.argv[1], 'a+'); fcntl.flock(handle, fcntl.LOCK_EX)\n"
         "handle.write(f'process {os.getpid()} on a node\\n'); handle.flush(); print('locked', flush=True)\n"
         "time.sleep(120)", tmp_path / "busy" / ".lock"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(SystemExit) as exit_info:
            RecordingTrainer.main(argv(fashion_dir, tmp_path, "--batch_size", GLOBAL_BATCH, "--run_name", "busy",
                                       "--resume", "auto"))
    finally:
        holder.kill()
        holder.wait()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in stderr
    assert f"run {tmp_path / 'busy'} is being trained by process {holder.pid} on a node" in stderr.strip().splitlines()[-1]
    assert not (tmp_path / "busy" / "config.json").exists()
    # its lock went with it: the same command now starts the run
    assert RecordingTrainer.main(argv(fashion_dir, tmp_path, "--batch_size", GLOBAL_BATCH, "--run_name", "busy",
                                      "--resume", "auto", "--n_epoch", 1)) == 0
