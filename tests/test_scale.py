"""Scale-out on the CPU: DDP under torchrun (gloo), mixed precision, accumulation, compile."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import (ROOT, assert_same_results, assert_same_weights, load_plain, python_command, read_json, run_dirs,
                     train_vanilla, workers_of)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# Plain, gentle SGD: Adam, momentum or a large step amplify float rounding (the order in which a
# sum is taken) into visible differences; here rounding stays ~1e-8, and a wrong batch moves
# weights by ~1e-4.
FLAGS = ["--train_val_sample_rate", "0.4", "--test_sample_rate", "0.5", "--dropout", "0", "--n_epoch", "1",
         "--optim", "sgd", "--lr", "0.01", "--momentum", "0"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc, *args, timeout=240):
    """Run a script under torchrun on the CPU; a hang fails the test instead of the whole suite."""
    command = [*TORCHRUN, "--nproc_per_node", str(nproc), "--master_port", str(free_port()), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def assert_close_weights(run_a, run_b, atol):
    first, second = (load_plain(run / "Vanilla_last_ckpt.pth")["model"] for run in (run_a, run_b))
    for key in first:
        assert torch.allclose(first[key], second[key], atol=atol), (key, (first[key] - second[key]).abs().max())


@pytest.fixture(scope="module")
def ddp_run(fashion_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("ddp")
    result = torchrun(2, "trainer_vanilla.py", "--data_dir", fashion_dir, "--output_dir", output, "--batch_size", "16",
                      "--deterministic", *FLAGS, "--n_epoch", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_ddp_writes_one_run_folder(ddp_run):
    runs = run_dirs(ddp_run)
    assert len(runs) == 1
    config = read_json(runs[0] / "config.json")
    assert config["environment"]["world_size"] == 2
    metrics = read_json(runs[0] / "metrics.json")
    assert metrics["status"] == "completed" and len(metrics["history"]) == 2
    assert graph_written(runs[0]), "the model graph, traced from the plain model on rank 0"


def test_ddp_test_metrics_count_every_sample_once(ddp_run, tmp_path):
    """The single-process evaluator on the same checkpoint gives the same accuracy: the test set
    was neither padded nor split unevenly into the metric."""
    from eval_vanilla import VanillaEvaluator
    run = run_dirs(ddp_run)[0]
    assert VanillaEvaluator.main(["--model_path", str(run / "Vanilla_best_ckpt.pth"), "--save_path", str(tmp_path)]) == 0
    evaluated = read_json(tmp_path / "metrics.json")["metrics"]
    trained = read_json(run / "metrics.json")["test"]
    assert evaluated["test/accuracy"] == trained["test/accuracy"]
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-6)


def test_two_ranks_of_batch_b_match_one_process_of_batch_2b(fashion_dir, ddp_run, tmp_path):
    single = train_vanilla(fashion_dir, tmp_path, "--batch_size", "32", *FLAGS, "--n_epoch", "2")
    assert_close_weights(run_dirs(ddp_run)[0], single, atol=1e-6)


SETTLED = """
import torch, torch.distributed as dist
from utils.distributed import settle_buckets
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Embedding(10, 4, sparse=True), torch.nn.Flatten(), torch.nn.Linear(8, 2),
                            torch.nn.BatchNorm1d(2))
model[3].weight.requires_grad_(False)
ddp = torch.nn.parallel.DistributedDataParallel(model)
settle_buckets(ddp)
assert all(parameter.grad is None for parameter in model.parameters()), "settling left gradients"
assert int(model[3].num_batches_tracked) == 0, "settling ran the model"
ddp(torch.tensor([[1, 2], [3, 4]])).sum().backward()
assert ddp._has_rebuilt_buckets, "the buckets were laid out at the first step, not before"
assert model[0].weight.grad.is_sparse and model[3].weight.grad is None
print("settled")
"""


def test_ddp_buckets_are_laid_out_before_the_first_step_without_touching_the_model():
    """utils/distributed.settle_buckets: one backward of zeros, sparse embeddings and frozen weights included."""
    result = subprocess.run([sys.executable, "-c", SETTLED.format(port=free_port())], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and "settled" in result.stdout, result.stderr[-3000:]


def test_accumulation_equals_one_big_batch(fashion_dir, tmp_path):
    big = train_vanilla(fashion_dir, tmp_path / "big", "--batch_size", "32", *FLAGS)
    accumulated = train_vanilla(fashion_dir, tmp_path / "accum", "--batch_size", "8", "--accum_steps", "4", *FLAGS)
    assert load_plain(big / "Vanilla_last_ckpt.pth")["global_step"] == \
        load_plain(accumulated / "Vanilla_last_ckpt.pth")["global_step"]
    assert_close_weights(big, accumulated, atol=1e-6)


def test_accumulated_gradient_equals_the_big_batch_gradient(fashion_dir):
    """One optimizer step of K micro-batches of B has the gradient of one batch of K*B."""
    from trainer_vanilla import VanillaTrainer

    class Captured(Exception):
        pass

    gradients = []
    for batch_size, accum in ((24, 1), (8, 3)):
        args, _ = VanillaTrainer.parse(["--data_dir", str(fashion_dir), "--batch_size", str(batch_size),
                                        "--accum_steps", str(accum), "--dropout", "0", "--lr", "1e-12"])
        trainer = VanillaTrainer(args)
        trainer.setup_runtime()
        trainer.setup_data()
        trainer.setup_model()
        trainer.setup_optimization()
        captured = []

        def capture():
            captured.append([p.grad.clone() for p in trainer.model.parameters()])
            raise Captured

        trainer.optimization.optimizer.step = capture
        with pytest.raises(Captured):
            trainer.train_epoch()
        gradients.append(captured[0])
    for big, accumulated in zip(*gradients):
        assert torch.allclose(big, accumulated, atol=1e-6)


def test_sigterm_on_one_rank_stops_all_with_one_saved_state(fashion_dir, tmp_path):
    command = [*TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()), "trainer_vanilla.py",
               "--data_dir", str(fashion_dir), "--output_dir", str(tmp_path), "--batch_size", "2", "--n_epoch", "20",
               "--log_every_n_steps", "20"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (list(tmp_path.glob("*/log.txt")) and "epoch 1 batch" in list(tmp_path.glob("*/log.txt"))[0].read_text()):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        workers = workers_of(process)
        assert len(workers) == 2
        os.kill(int(workers[-1]), signal.SIGTERM)  # not rank 0: the rank that writes must still save
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode != 0
    run = run_dirs(tmp_path)[0]
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    assert state["epoch"] == 0 and state["batches_done"] > 0 and state["world_size"] == 2
    assert "Resume with: torchrun --nproc_per_node 2" in (run / "log.txt").read_text()
    # and the run resumes under torchrun, in the same folder
    result = torchrun(2, "trainer_vanilla.py", "--resume", run, "--n_epoch", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_dirs(tmp_path) == [run]
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "completed" and metrics["global_step"] == 338  # 1350 samples: 675 per rank, batches of 2


def test_bf16_autocast_on_cpu_learns(fashion_dir, tmp_path):
    run = train_vanilla(fashion_dir, tmp_path, "--amp", "--amp_dtype", "bf16", "--n_epoch", "2")
    assert read_json(run / "metrics.json")["test"]["test/accuracy"] > 0.5


def test_fp16_grad_scaler_state_is_checkpointed(fashion_dir, tmp_path):
    run = train_vanilla(fashion_dir, tmp_path, "--amp", "--amp_dtype", "fp16", *FLAGS)
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    assert read_json(run / "metrics.json")["skipped_steps"] >= 0


def graph_written(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "summary"))
    events.Reload()
    return events.Tags()["graph"]


def test_compiled_model_checkpoint_loads_into_a_plain_model_and_back(fashion_dir, tmp_path):
    from model.vanilla_model import VanillaMLP
    from state.checkpoint import load_weights
    run = train_vanilla(fashion_dir, tmp_path / "compiled", "--compile", "--compile_backend", "eager", *FLAGS)
    assert graph_written(run)
    weights = load_plain(run / "Vanilla_best_ckpt.pth")["model"]
    assert not any("_orig_mod" in key for key in weights)
    plain = VanillaMLP()
    load_weights(plain, weights, "best")
    compiled = torch.compile(VanillaMLP(), backend="eager")
    load_weights(compiled, plain.state_dict(), "plain")
    assert all(torch.equal(a, b) for a, b in zip(compiled.state_dict().values(), weights.values()))
    # and a compiled run starts from a plain checkpoint
    again = train_vanilla(fashion_dir, tmp_path / "again", "--compile", "--compile_backend", "eager",
                          "--model_path", run / "Vanilla_best_ckpt.pth", "--pretrained", *FLAGS)
    assert read_json(again / "metrics.json")["status"] == "completed"


def test_channels_last_unet_trains(carvana_dir, tmp_path):
    from helpers import train_seg
    run = train_seg(carvana_dir, tmp_path, "--channels_last", "--n_epoch", "1")
    assert (run / "UNet_best_ckpt.pth").is_file()


# A vanilla trainer whose rank 1 alone receives SIGTERM just before optimizer step STEP completes.
STOPPING_SCRIPT = """
import signal
import sys
sys.path.insert(0, {root!r})
from trainer_vanilla import VanillaTrainer


class Stopping(VanillaTrainer):
    def after_step(self):
        if self.rank == 1 and self.progress.global_step == {step} and not self.stop.requested:
            self.stop.signum = signal.SIGTERM
        super().after_step()


sys.exit(Stopping.main())
"""


def test_ddp_resume_mid_epoch_restores_every_rank(fashion_dir, tmp_path):
    """Each rank's partial epoch sums and random stream (dropout on) come back: the resumed run's
    metrics and weights equal the uninterrupted run's, with a per-step schedule and EMA weights
    too. Another number of processes that would change the global batch is refused (one that keeps it
    resumes: tests/test_cluster.py)."""
    flags = ["--data_dir", fashion_dir, "--batch_size", "16", "--deterministic", *FLAGS, "--n_epoch", "2",
             "--dropout", "0.2", "--lr_scheduler", "cosine", "--warmup_steps", "4", "--ema_decay", "0.9"]
    full = torchrun(2, "trainer_vanilla.py", "--output_dir", tmp_path / "full", *flags)
    assert full.returncode == 0, full.stderr[-3000:]
    script = tmp_path / "stopping.py"
    script.write_text(STOPPING_SCRIPT.format(root=str(ROOT), step=17 + 5))  # 540 samples: 17 steps of 2x16 per epoch
    cut = torchrun(2, script, "--output_dir", tmp_path / "cut", *flags)
    assert cut.returncode != 0
    run = run_dirs(tmp_path / "cut")[0]
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    assert (state["epoch"], state["batches_done"], state["world_size"]) == (1, 5, 2)
    assert len(state["epoch_sums"]) == len(state["rng"]) == 2
    assert not torch.equal(*(sums["sums"]["loss_sum"] for sums in state["epoch_sums"]))  # each rank's own
    refused = subprocess.run(python_command("trainer_vanilla.py", "--resume", run, "--batch_size", "16", "--accum_steps",
                                            "1"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "the global batch is 32 samples per step" in refused.stderr
    assert "--batch_size 16 x 1 process(es) x --accum_steps 1 = 16" in refused.stderr
    assert "Traceback" not in refused.stderr
    resumed = torchrun(2, "trainer_vanilla.py", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = run_dirs(tmp_path / "full")[0]
    assert_same_results(run, uninterrupted)
    assert_same_weights(run, uninterrupted, ema=True)
    assert "val_ema/accuracy" in read_json(run / "metrics.json")["history"][-1]


def test_ddp_with_a_single_validation_and_test_sample(fashion_dir, tmp_path):
    """Rank 1's validation and test shards are empty; it still joins every reduction."""
    result = torchrun(2, "trainer_vanilla.py", "--data_dir", fashion_dir, "--output_dir", tmp_path, "--batch_size", "16",
                      *FLAGS, "--val_ratio", "0.002", "--test_sample_rate", "0.0025")
    assert result.returncode == 0, result.stderr[-3000:]
    run = run_dirs(tmp_path)[0]
    split = read_json(run / "split.json")
    assert len(split["val"]) == len(split["test"]) == 1
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "completed"
    assert metrics["history"][0]["val/accuracy"] in (0.0, 1.0) and metrics["test"]["test/accuracy"] in (0.0, 1.0)


def test_a_sample_draws_its_augmentation_alike_on_every_rank_and_in_every_batch(fashion_dir):
    from trainer_vanilla import VanillaTrainer
    args, _ = VanillaTrainer.parse(["--data_dir", str(fashion_dir)])
    trainer = VanillaTrainer(args)
    draws = {}
    for rank in (0, 1):
        trainer.rank = rank
        random = trainer.augmentation_random(epoch=0, index=rank, indices=torch.tensor([7, 3, 11]))
        draws[rank] = torch.cat([random.rand(2), random.randint(0, 1000, 1).float()], dim=1)
    assert torch.equal(draws[0], draws[1])
    assert len({tuple(row.tolist()) for row in draws[0]}) == 3  # every sample its own stream
    # sample 3 alone, in another batch at another place: the same draws, in the same order
    alone = trainer.augmentation_random(epoch=0, index=5, indices=torch.tensor([3]))
    assert torch.equal(torch.cat([alone.rand(2), alone.randint(0, 1000, 1).float()], dim=1), draws[0][1:2])
    next_epoch = trainer.augmentation_random(epoch=1, index=0, indices=torch.tensor([3]))
    assert not torch.equal(next_epoch.rand(2), draws[0][1:2, :2])


def test_ranks_draw_different_augmentations_in_a_run_of_sampling_rules_1(fashion_dir):
    from trainer_vanilla import VanillaTrainer
    args, _ = VanillaTrainer.parse(["--data_dir", str(fashion_dir)])
    trainer = VanillaTrainer(args)
    trainer.sampling = 1
    draws = {}
    for rank in (0, 1):
        trainer.rank = rank
        draws[rank] = torch.rand(4, generator=trainer.augmentation_random(epoch=0, index=0, indices=torch.arange(4)))
    assert not torch.equal(draws[0], draws[1])
    trainer.rank = 0
    assert torch.equal(draws[0], torch.rand(4, generator=trainer.augmentation_random(epoch=0, index=0,
                                                                                    indices=torch.arange(4))))


BUFFERS_SCRIPT = """
import sys
import torch
sys.path.insert(0, {root!r})
from trainer_seg_on_carvana import SegOnCarvanaTrainer


class Recording(SegOnCarvanaTrainer):
    def evaluate(self, phase, *args, **kwargs):
        if phase == "val":
            models = {{"model": self.model, "ema": self.ema.module}}
            torch.save({{name: {{key: value.clone() for key, value in model.state_dict().items() if "running" in key}}
                        for name, model in models.items()}}, {folder!r} + f"/rank{{self.rank}}.pt")
        return super().evaluate(phase, *args, **kwargs)


sys.exit(Recording.main())
"""


def test_ddp_validates_the_batchnorm_statistics_rank_0_saves(carvana_dir, tmp_path):
    """After training, each rank's BatchNorm statistics are its own; validation (of the model and of
    its EMA) must use rank 0's, the ones the checkpoint keeps, on every rank."""
    script = tmp_path / "recording.py"
    script.write_text(BUFFERS_SCRIPT.format(root=str(ROOT), folder=str(tmp_path)))
    result = torchrun(2, script, "--data_dir", carvana_dir, "--output_dir", tmp_path / "runs", "--img_size", "32", "48",
                      "--depth", "2", "--base_width", "4", "--batch_size", "4", "--n_epoch", "1", "--ema_decay", "0.9",
                      "--val_ratio", "0.2", "--test_ratio", "0.2")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for name in ("model", "ema"):
        assert ranks[0][name] and all(torch.equal(ranks[0][name][key], ranks[1][name][key]) for key in ranks[0][name])
    saved = load_plain(run_dirs(tmp_path / "runs")[0] / "UNet_last_ckpt.pth")
    assert all(torch.equal(saved["model"][key], ranks[0]["model"][key]) for key in ranks[0]["model"])
