"""training/running_stats.py: BatchNorm's running statistics folded in the global order on W > 1
processes equal those of one process that takes the same micro-batches in turn."""
import copy
import gc
import weakref
from types import SimpleNamespace

import pytest
import torch

from training.running_stats import RunningStatsInGlobalOrder


class Net(torch.nn.Module):
    """A momentum layer, a cumulative-average layer (momentum None), a layer called twice a forward, and a
    cumulative layer never called."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.BatchNorm1d(3)
        self.cumulative = torch.nn.BatchNorm1d(3, momentum=None)
        self.shared = torch.nn.BatchNorm2d(3, momentum=0.3)
        self.unused = torch.nn.BatchNorm1d(3, momentum=None)

    def forward(self, x):
        x = self.cumulative(self.first(x) * 2 + 1)
        image = x[:, :, None, None].expand(-1, -1, 2, 2)
        return self.shared(self.shared(image) * 3)


class Sampler:
    def __init__(self, placeholders):
        self.placeholders = placeholders

    def __len__(self):
        return 100

    def batch_size_at(self, index):
        return 0 if index in self.placeholders else 4


def rank(model, placeholders=(), accum_steps=2):
    """A process of a 2-process run (as the callback sees its trainer), with its copy of `model`."""
    trainer = SimpleNamespace(world_size=2, sampling=2, args=SimpleNamespace(sync_bn=False, accum_steps=accum_steps),
                              model=copy.deepcopy(model), progress=SimpleNamespace(batches_done=0), batch_index=None,
                              loaders={"train": SimpleNamespace(sampler=Sampler(placeholders))})
    callback = RunningStatsInGlobalOrder()
    callback.on_fit_start(trainer)
    return trainer, callback


def statistics(model):
    return {key: value for key, value in model.state_dict().items() if "running" in key or "tracked" in key}


@pytest.mark.parametrize("forwards", [1, 2])  # the model run once or twice a micro-batch
@pytest.mark.parametrize("placeholders", [(), (1,)])
def test_two_processes_fold_the_statistics_of_one_taking_their_micro_batches_in_turn(placeholders, forwards):
    torch.manual_seed(0)
    model = Net().train()
    batches = [torch.randn(4, 3) * (index + 1) + index for index in range(8)]  # 2 steps of 2 x 2 micro-batches
    one = copy.deepcopy(model)
    ranks = [rank(model), rank(model, placeholders)]  # rank 1's micro-batch 1 may be a placeholder
    for trainer, callback in ranks:  # a forward of the lr finder (no micro-batch), undone as the finder does
        trainer.batch_index = None
        saved = copy.deepcopy(trainer.model.state_dict())
        trainer.model(batches[0])
        trainer.model.load_state_dict(saved)
        assert not callback.forwards
    for step in range(2):
        for offset in range(2):
            for number, (trainer, _) in enumerate(ranks):
                batch = batches[step * 4 + offset * 2 + number]  # micro-batch `offset` of rank `number`
                trainer.batch_index = step * 2 + offset
                for part in batch.chunk(forwards):
                    trainer.model(part)
                    if not (number == 1 and step * 2 + offset in placeholders):
                        one(part)  # one process: the same micro-batches in the global order, placeholders left out
        gathered = torch.stack([callback.rows(trainer) for trainer, callback in ranks]).double()
        for trainer, callback in ranks:
            callback.fold(gathered)
            trainer.progress.batches_done += 2
    expected = statistics(one)
    for trainer, _ in ranks:
        for key, value in statistics(trainer.model).items():
            assert torch.allclose(value.double(), expected[key].double(), rtol=1e-6, atol=1e-7), key
    assert int(expected["shared.num_batches_tracked"]) == 2 * forwards * (8 - len(placeholders))  # twice a forward
    assert torch.equal(expected["unused.running_var"], torch.ones(3))


def test_nothing_is_hooked_on_one_process_with_sync_bn_or_for_a_run_of_sampling_rules_1():
    for world_size, sampling, sync_bn in ((1, 2, False), (2, 2, True), (2, 1, False)):
        trainer = SimpleNamespace(world_size=world_size, sampling=sampling, args=SimpleNamespace(sync_bn=sync_bn),
                                  model=Net())
        callback = RunningStatsInGlobalOrder()
        callback.on_fit_start(trainer)
        assert not callback.layers and not trainer.model._forward_hooks
    # SyncBatchNorm built into a model (without --sync_bn) folds every process's micro-batch itself
    trainer = SimpleNamespace(world_size=2, sampling=2, args=SimpleNamespace(sync_bn=False),
                              model=torch.nn.SyncBatchNorm.convert_sync_batchnorm(Net()))
    callback = RunningStatsInGlobalOrder()
    callback.on_fit_start(trainer)
    assert not callback.layers and not trainer.model._forward_hooks


def test_the_end_of_fit_unhooks_and_lets_go_of_the_trainer():
    """Model -> hooks -> callback -> trainer -> model is a cycle: left in place, it keeps DDP's process group
    alive into interpreter shutdown. After on_fit_end, dropping the trainer frees the model at once."""
    trainer, callback = rank(Net())
    trainer.callbacks = [callback]
    trainer.batch_index = 0
    trainer.model(torch.randn(4, 3))
    assert trainer.model._forward_hooks and callback.trainer is trainer
    callback.on_fit_end(trainer, "finished")
    assert not trainer.model._forward_hooks and not trainer.model._forward_pre_hooks and callback.trainer is None
    model = weakref.ref(trainer.model)
    gc.disable()  # only reference counting frees it: no cycle left
    try:
        del trainer
        assert model() is None
    finally:
        gc.enable()
