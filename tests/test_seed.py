"""Tests for utils/seed.py: saving and restoring every random number stream."""
import io
import random

import numpy as np
import torch

from state.checkpoint import load_checkpoint
from utils.atomic import save_atomic
from utils.seed import get_rng_state, set_rng_state


def _draws():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.normal(),
            torch.rand(4).tolist(), torch.randint(0, 1000, (3,)).tolist())


def test_rng_state_restores_every_stream(restore_global_rng):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)
    np.random.normal()  # leaves a cached Gaussian in both Python and NumPy state
    state = get_rng_state()
    expected = _draws()
    assert _draws() != expected
    set_rng_state(state)
    assert _draws() == expected


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path, restore_global_rng):
    random.seed(4)
    np.random.seed(5)
    torch.manual_seed(6)
    np.random.normal()
    buffer = io.BytesIO()
    torch.save(get_rng_state(), buffer)
    save_atomic({"rng": get_rng_state()}, tmp_path / "rng.pth")
    expected = _draws()
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert _draws() == expected
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    assert _draws() == expected


def _stream_draws():
    return torch.rand(3), random.random(), float(np.random.rand())


def test_each_rank_draws_its_own_stream_and_repeats_it(restore_global_rng):
    from utils.seed import seed_process_streams
    draws = {}
    for rank in (0, 1, 0, 1):
        seed_process_streams(7, rank)
        draws.setdefault(rank, []).append(_stream_draws())
    for rank in (0, 1):
        first, again = draws[rank]
        assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    assert not torch.equal(draws[0][0][0], draws[1][0][0])
    assert draws[0][0][1] != draws[1][0][1] and draws[0][0][2] != draws[1][0][2]


def test_derived_seeds_keep_their_keys_apart():
    from utils.seed import derived_seed
    assert derived_seed(1, 0) != derived_seed(0, 1)  # seed + rank would make these equal
    assert derived_seed(0, 0, 1, 2) != derived_seed(0, 0, 2, 1)
    assert derived_seed(3, 1) == derived_seed(3, 1) and 0 <= derived_seed(3, 1) < 2**63
