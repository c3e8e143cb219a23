"""DDP's gradient buckets: the layout DDP builds from the first step's gradients against the one the toolkit
settles at the start (utils/distributed.py, settle_buckets: gradients bucketed from the output back to the
input, so that every start of a run, resumed or not, adds the processes' gradients in the same order).
Both train the same model from the same weights on the same batches, taking turns block by block in each
process. Run it under torchrun:

    torchrun --nproc_per_node 4 bench/buckets.py --model mlp
    torchrun --nproc_per_node 4 bench/buckets.py --model unet

It prints, from rank 0, the median time of a training step for each and their ratio (steps per second
settled over DDP's own; 1.0 = no cost). What could differ is how well the all-reduce of a bucket overlaps
the rest of the backward, which matters on GPUs (NCCL); on the CPU it uses gloo.
"""
import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # this folder's modules, then the toolkit's packages

from measure import synchronize  # noqa: E402
from utils.distributed import settle_buckets  # noqa: E402

MODELS = {"mlp": {"batch": 64}, "unet": {"batch": 4, "size": (128, 192), "base_width": 32}}


def build(name):
    """(model, the shape of a batch, the loss of an output): the same model on every rank."""
    torch.manual_seed(0)
    if name == "mlp":
        from model.vanilla_model import VanillaMLP
        model = VanillaMLP(dropout=0.0)
        shape, loss = (MODELS[name]["batch"], 1, 28, 28), lambda out: out.logsumexp(1).mean()
    else:
        from model.unet import UNet
        model = UNet(3, 1, depth=4, base_width=MODELS[name]["base_width"])
        shape, loss = (MODELS[name]["batch"], 3, *MODELS[name]["size"]), lambda out: out.sigmoid().mean()
    return model, shape, loss


def contender(model, device, settled):
    wrapped = torch.nn.parallel.DistributedDataParallel(
        copy.deepcopy(model).to(device), device_ids=[device.index] if device.type == "cuda" else None)
    if settled:
        settle_buckets(wrapped)
    return wrapped, torch.optim.Adam(wrapped.parameters(), lr=1e-4)


def time_steps(wrapped, optimizer, inputs, loss, device):
    """Seconds per step over the given batches."""
    synchronize(device)
    started = time.perf_counter()
    for batch in inputs:
        optimizer.zero_grad(set_to_none=True)
        loss(wrapped(batch)).backward()
        optimizer.step()
    synchronize(device)
    return (time.perf_counter() - started) / len(inputs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="mlp")
    parser.add_argument("--steps", type=int, default=20, help="steps per block (default 20)")
    parser.add_argument("--blocks", type=int, default=7, help="blocks per contender, the first a warm-up (default 7)")
    options = parser.parse_args()
    if "LOCAL_RANK" not in os.environ:
        parser.error("run it under torchrun: torchrun --nproc_per_node 4 bench/buckets.py")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    model, shape, loss = build(options.model)
    generator = torch.Generator().manual_seed(rank)
    inputs = [torch.randn(shape, generator=generator).to(device) for _ in range(options.steps)]
    contenders = {"DDP's own": contender(model, device, False), "settled": contender(model, device, True)}
    seconds = {name: [] for name in contenders}
    for block in range(options.blocks):
        for name, (wrapped, optimizer) in contenders.items():
            spent = time_steps(wrapped, optimizer, inputs, loss, device)
            if block > 0:
                seconds[name].append(spent)
    if rank == 0:
        tensors = sum(1 for p in model.parameters() if p.requires_grad)
        own, settled = (statistics.median(seconds[name]) for name in contenders)
        print(f"{options.model}: {size} processes on {device.type} ({dist.get_backend()}), "
              f"{tensors} gradients, batch {shape[0]} per process, "
              f"{options.blocks - 1} blocks of {options.steps} steps after a warm-up block")
        print(f"step: DDP's own layout {own * 1000:.2f} ms, settled {settled * 1000:.2f} ms; "
              f"steps/s settled / DDP's own: {own / settled:.3f}")
        print("per block (ms): " + "; ".join(f"{name} " + ", ".join(f"{s * 1000:.1f}" for s in values)
                                            for name, values in seconds.items()))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
