"""Tests for training/clipping.py: gradient clipping by norm and by value."""
import pytest
import torch
from torch import nn

from training.clipping import Clipper


def _parameters_with_grads():
    first = nn.Parameter(torch.zeros(2))
    second = nn.Parameter(torch.zeros(3))
    first.grad = torch.tensor([3.0, 4.0])
    second.grad = torch.tensor([0.0, 0.0, 12.0])  # global norm sqrt(9 + 16 + 144) = 13
    return [first, second]


def _global_norm(parameters):
    return torch.cat([p.grad.reshape(-1) for p in parameters]).norm().item()


def test_clip_by_norm_scales_down_to_max_and_returns_pre_clip_norm():
    parameters = _parameters_with_grads()
    total = Clipper("norm", 6.5)(parameters)
    assert float(total) == pytest.approx(13.0)
    assert _global_norm(parameters) == pytest.approx(6.5, rel=1e-5)
    # The direction is kept: every gradient is scaled by the same factor.
    assert torch.allclose(parameters[0].grad, torch.tensor([1.5, 2.0]), rtol=1e-5)
    assert torch.allclose(parameters[1].grad, torch.tensor([0.0, 0.0, 6.0]), rtol=1e-5)


def test_clip_by_norm_leaves_small_gradients_alone():
    parameters = _parameters_with_grads()
    total = Clipper("norm", 20.0)(parameters)
    assert float(total) == pytest.approx(13.0)
    assert torch.equal(parameters[0].grad, torch.tensor([3.0, 4.0]))
    assert torch.equal(parameters[1].grad, torch.tensor([0.0, 0.0, 12.0]))


def test_clip_by_value_bounds_every_element():
    parameters = _parameters_with_grads()
    parameters[1].grad = torch.tensor([-7.0, 0.25, 12.0])
    assert Clipper("value", 2.5)(parameters) is None
    assert torch.equal(parameters[0].grad, torch.tensor([2.5, 2.5]))
    assert torch.equal(parameters[1].grad, torch.tensor([-2.5, 0.25, 2.5]))


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_clipper_zero_is_disabled(mode):
    parameters = _parameters_with_grads()
    clipper = Clipper(mode, 0.0)
    assert not clipper.enabled
    assert clipper(parameters) is None
    assert torch.equal(parameters[0].grad, torch.tensor([3.0, 4.0]))
    assert torch.equal(parameters[1].grad, torch.tensor([0.0, 0.0, 12.0]))


def test_clipper_rejects_unknown_mode():
    with pytest.raises(ValueError, match="clip mode"):
        Clipper("l2", 1.0)
