"""Tests for the train step of trainer.py (`backward_batch`, `optimizer_step`) on a set-up VanillaTrainer,
and for the lr range test (training/lr_finder.py) that runs through it."""
import copy
import random

import numpy as np
import pytest
import torch

from data.loader import first_samples
from helpers import assert_same_tensors
from trainer_vanilla import VanillaTrainer
from training.ema import EMA
from training.lr_finder import range_test
from utils.errors import NonFiniteLoss
from utils.seed import get_rng_state, set_rng_state


@pytest.fixture
def make_trainer(fashion_dir, tmp_path, restore_global_rng):
    """Set-up vanilla trainers on a fifth of the generated data, given extra flags; closed after the test."""
    trainers = []

    def make(*flags):
        args, _ = VanillaTrainer.parse(["--data_dir", str(fashion_dir), "--output_dir", str(tmp_path),
                                        "--train_val_sample_rate", "0.2", "--log_graph", "false", *flags])
        trainer = VanillaTrainer(args)
        trainers.append(trainer)
        trainer.setup()
        trainer.train_model.train()
        return trainer
    yield make
    for trainer in trainers:
        trainer.close()


def training_batch(trainer, size):
    """The first `size` training samples, prepared as the train step receives them."""
    return trainer.task.prepare_batch(trainer.to_device(first_samples(trainer.datasets["train"], size)), True, None)


def rows(batch, start, stop):
    return tuple(part[start:stop] for part in batch)


def with_nan(batch):
    """`batch` with one image of NaN pixels: its loss is NaN."""
    images, labels = batch
    images = images.clone()
    images[0] = float("nan")
    return images, labels


def accumulated_gradient(trainer, batches, shares):
    """The gradient `backward_batch` accumulates over `batches`, each loss weighted by its share."""
    for number, (batch, share) in enumerate(zip(batches, shares)):
        trainer.backward_batch(batch, trainer.optimization, share, sync=number == len(batches) - 1)
    gradient = [parameter.grad.clone() for parameter in trainer.model.parameters()]
    trainer.optimization.optimizer.zero_grad(set_to_none=True)
    return gradient


def weights_of(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_same_optimizer_state(state, expected):
    assert state["param_groups"] == expected["param_groups"]
    assert state["state"].keys() == expected["state"].keys()
    for parameter in expected["state"]:
        assert_same_tensors(state["state"][parameter], expected["state"][parameter], f"optimizer state {parameter}")


def test_micro_batches_weighted_by_their_shares_have_the_gradient_of_one_big_batch(make_trainer):
    trainer = make_trainer("--dropout", "0")
    batch = training_batch(trainer, 24)
    whole = accumulated_gradient(trainer, [batch], [1.0])
    equal = accumulated_gradient(trainer, [rows(batch, start, start + 8) for start in (0, 8, 16)], [1 / 3] * 3)
    uneven = accumulated_gradient(trainer, [rows(batch, 0, 10), rows(batch, 10, 20), rows(batch, 20, 24)],
                                  [10 / 24, 10 / 24, 4 / 24])  # a short last micro-batch weighs less
    unweighted = accumulated_gradient(trainer, [rows(batch, start, start + 8) for start in (0, 8, 16)], [1.0] * 3)
    assert any(bool(gradient.abs().max() > 1e-3) for gradient in whole)
    for big, micro, short, plain in zip(whole, equal, uneven, unweighted):
        torch.testing.assert_close(micro, big, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(short, big, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(plain, 3 * big, rtol=1e-5, atol=1e-6)  # without shares: the sum of three means


def test_without_an_index_a_nan_loss_goes_through_and_at_an_index_it_stops_the_run(make_trainer):
    trainer = make_trainer()
    batch = with_nan(training_batch(trainer, 8))
    loss, _, counted = trainer.backward_batch(batch, trainer.optimization)  # the range test's call
    assert counted and torch.isnan(loss)
    assert any(bool(torch.isnan(parameter.grad).any()) for parameter in trainer.model.parameters())
    trainer.optimization.optimizer.zero_grad(set_to_none=True)
    with pytest.raises(NonFiniteLoss, match="loss is nan at epoch 1, batch 4"):
        trainer.backward_batch(batch, trainer.optimization, index=3)
    assert trainer.progress.nonfinite_batches == 0


def test_with_skip_nonfinite_a_nan_loss_at_an_index_is_counted_and_gives_zero_gradients(make_trainer):
    trainer = make_trainer("--skip_nonfinite")
    loss, _, counted = trainer.backward_batch(with_nan(training_batch(trainer, 8)), trainer.optimization, index=3)
    assert not counted and torch.isnan(loss)
    assert trainer.progress.nonfinite_batches == 1
    for parameter in trainer.model.parameters():
        assert parameter.grad is not None and torch.count_nonzero(parameter.grad) == 0
    _, _, counted = trainer.backward_batch(training_batch(trainer, 8), trainer.optimization, index=4)
    assert counted and trainer.progress.nonfinite_batches == 1


def test_a_step_not_applied_leaves_the_weights_and_the_optimizer_state_untouched(make_trainer):
    trainer = make_trainer("--skip_nonfinite", "--dropout", "0")
    optimization, batch = trainer.optimization, training_batch(trainer, 16)
    trainer.backward_batch(batch, optimization, index=0)
    assert trainer.optimizer_step(optimization) is True  # Adam's moments are not zero from here on
    ema = EMA(trainer.model, 0.9)
    weights, state = weights_of(trainer.model), copy.deepcopy(optimization.optimizer.state_dict())

    trainer.backward_batch(with_nan(batch), optimization, index=1)  # skipped: a zero gradient
    assert trainer.optimizer_step(optimization, apply=False, ema=ema) is False
    assert_same_tensors(trainer.model.state_dict(), weights, "the weights")
    assert_same_optimizer_state(optimization.optimizer.state_dict(), state)
    assert all(parameter.grad is None for parameter in trainer.model.parameters())
    assert ema.updates == 0

    # Taken, the same zero gradient moves the weights (the momentum): why such a step must not be taken.
    trainer.backward_batch(with_nan(batch), optimization, index=2)
    assert trainer.optimizer_step(optimization, ema=ema) is True
    assert any(not torch.equal(value, weights[key]) for key, value in trainer.model.state_dict().items())
    assert ema.updates == 1


def random_draws():
    return random.random(), float(np.random.random()), torch.rand(3)


def test_the_lr_range_test_leaves_the_weights_and_the_random_state_as_they_were(make_trainer):
    trainer = make_trainer("--dropout", "0.2")  # dropout draws from the global torch stream
    model = trainer.model
    weights, optimizer_state = weights_of(model), copy.deepcopy(trainer.optimization.optimizer.state_dict())
    seen = []  # the first layer's weights and the torch random state at each forward pass of the test
    hook = model.register_forward_pre_hook(
        lambda module, inputs: seen.append((module.layers[1].weight.detach().clone(), torch.get_rng_state())))
    saved_rng = get_rng_state()
    try:
        lrs, losses, _, _ = range_test(trainer, 1e-4, 1e-1, 8)
    finally:
        hook.remove()
    after = random_draws()
    set_rng_state(saved_rng)
    expected = random_draws()

    assert len(lrs) == len(losses) == len(seen) == 8 and lrs[0] == 1e-4
    assert not torch.equal(seen[0][0], seen[-1][0])  # the test trained the model
    assert not torch.equal(seen[0][1], seen[-1][1])  # and drew dropout masks
    assert_same_tensors(model.state_dict(), weights, "the weights")
    assert all(parameter.grad is None for parameter in model.parameters())
    assert_same_optimizer_state(trainer.optimization.optimizer.state_dict(), optimizer_state)
    assert after[:2] == expected[:2] and torch.equal(after[2], expected[2])
