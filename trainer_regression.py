"""Regression on generated data: the smallest complete task, to copy when adding your own.

    python trainer_regression.py                # a few seconds on a CPU
    python eval_regression.py --model_path Results/Regression/<timestamp>/MLP_best_ckpt.pth --viz

The data is made in memory from --seed (inputs uniform in [-1, 1], targets a smooth function of them
plus noise), so the task needs no files and no entry in data/data_entry.py or model/model_entry.py.
"""
import sys

import torch
from torch import nn

from cli.options import SPLIT, TRAINING, add_option, non_negative_float, positive_int, ratio
from task import TaskBase
from trainer import TrainerBase

FEATURES = 4


class InMemory(torch.utils.data.TensorDataset):
    """Tensors held in memory: a batch is one indexing operation (data/loader.py, SampleDataset)."""

    batched = True

    def get_batch(self, indices):
        return self[indices]


class RegressionTask(TaskBase):
    """Fit y = sin(3 x0) + 0.5 x1 + x2 x3 + noise, from four inputs, with a small MLP."""

    name = "Regression"
    model_types = ("MLP",)
    data_types = ("Synthetic",)
    metric_names = ("loss", "mae", "r2")  # the loss is the mean squared error

    @classmethod
    def add_arguments(cls, parser):
        parser.set_defaults(proj_name="Regression", monitor="val/r2", monitor_mode="max", n_epoch=20,
                            batch_size=64, lr=3e-3)
        group = parser.add_argument_group("regression task")
        add_option(group, "--n_samples", rules=SPLIT, type=positive_int, default=2000, help="samples generated")
        add_option(group, "--noise", rules=SPLIT, type=non_negative_float, default=0.1, help="the targets' noise (std)")
        add_option(group, "--test_ratio", rules=SPLIT, type=ratio, default=0.2, help="fraction held out for testing")
        add_option(group, "--hidden", rules=TRAINING, type=positive_int, default=64, help="width of the hidden layers")

    def build_datasets(self):
        generator = torch.Generator().manual_seed(self.args.seed)  # the same data for every run of a seed
        inputs = torch.rand(self.args.n_samples, FEATURES, generator=generator) * 2 - 1
        x0, x1, x2, x3 = inputs.unbind(dim=1)
        noise = self.args.noise * torch.randn(len(inputs), generator=generator)
        targets = torch.sin(3 * x0) + 0.5 * x1 + x2 * x3 + noise
        return InMemory(inputs, targets.unsqueeze(1)), None  # no test set of its own: split_ratios carves one

    def split_ratios(self):
        return {**super().split_ratios(), "test": self.args.test_ratio}

    def build_model(self):
        width = self.args.hidden
        return nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                             nn.Linear(width, 1))

    def build_loss(self):
        return nn.MSELoss()

    def forward_batch(self, model, batch):
        inputs, targets = batch
        predictions = model(inputs)
        return self.loss_fn(predictions, targets), predictions

    def batch_stats(self, batch, outputs):
        targets = batch[1].double()
        errors = outputs.double() - targets
        return {"squared_error": errors.square().sum(), "absolute_error": errors.abs().sum(),
                "target_sum": targets.sum(), "target_squares": targets.square().sum(), "count": len(targets)}

    def compute_metrics(self, totals):
        count = totals["count"]
        baseline = totals["target_squares"] - totals["target_sum"] ** 2 / count  # predicting the mean everywhere
        r2 = 1 - totals["squared_error"] / baseline if baseline > 0 else float("nan")
        return {"mae": totals["absolute_error"] / count, "r2": r2}


class RegressionTrainer(TrainerBase):
    """Train a small MLP on generated regression data."""

    task_class = RegressionTask


if __name__ == "__main__":
    sys.exit(RegressionTrainer.main())
