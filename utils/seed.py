"""Seeding and the random state that a checkpoint carries for an exact resume."""
import os
import random

import numpy as np
import torch


def seed_everything(seed, deterministic=False):
    """Seed Python, NumPy and torch (CPU and every CUDA device).

    `deterministic` also asks torch for deterministic kernels and turns off cuDNN's autotuner,
    which picks algorithms by timing and so may pick differently between runs.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


MASK64 = (1 << 64) - 1


def derived_seed(*keys):
    """A 63-bit seed mixed from several integers (seed, rank, epoch, ...): distinct keys give
    unrelated streams, unlike `seed + rank`, where seed 1 of rank 0 is seed 0 of rank 1. Each key
    goes through SplitMix64's mixer in turn: a few integer operations, cheap enough for every batch."""
    state = 0
    for key in keys:
        state = (state ^ (int(key) & MASK64)) + 0x9E3779B97F4A7C15 & MASK64
        state = (state ^ (state >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & MASK64
        state ^= state >> 31
    return state >> 1


def seed_process_streams(seed, rank):
    """Seed the global random streams (Python, NumPy, torch) of one process of a run: each rank
    draws its own dropout masks and random choices, and the same (seed, rank) repeats them."""
    stream_seed = derived_seed(seed, rank)
    random.seed(stream_seed)
    np.random.seed(stream_seed % 2**32)
    torch.manual_seed(stream_seed)


def get_rng_state():
    """Every global random state, as tensors and plain values (loadable with weights_only)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what `get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            torch.cuda.set_rng_state(cuda_states[0])
