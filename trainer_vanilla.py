"""FashionMNIST classification with an MLP.

    python trainer_vanilla.py --data_dir Dataset                      # CPU or the first GPU
    torchrun --nproc_per_node 2 trainer_vanilla.py --data_dir Dataset # DDP
"""
import sys

import torch

from cli.options import TRAINING, TRAINING_RESUMABLE, add_flag, add_option, unit_interval
from task import TaskBase
from trainer import TrainerBase
from utils.metrics import classification_metrics, classification_stats, per_class_accuracy

MEAN, STD = 0.2860, 0.3530  # FashionMNIST pixel statistics


class VanillaTask(TaskBase):
    """FashionMNIST classification with an MLP (784-512-512-10)."""

    name = "Vanilla"
    model_types = ("Vanilla",)
    data_types = ("FashionMNIST",)
    metric_names = ("loss", "accuracy", "top5_accuracy")

    @classmethod
    def add_arguments(cls, parser):
        parser.set_defaults(proj_name="Vanilla", monitor="val/accuracy", monitor_mode="max", n_epoch=10,
                            batch_size=64, lr=1e-3, optim="adam")
        group = parser.add_argument_group("vanilla task")
        add_flag(group, "--download", TRAINING_RESUMABLE,
                 help="download FashionMNIST into <data_dir>/FashionMNIST/raw first")
        add_option(group, "--dropout", rules=TRAINING, type=unit_interval, default=0.2,
                   help="dropout after each hidden layer")

    def build_loss(self):
        return torch.nn.CrossEntropyLoss()

    def prepare_batch(self, batch, train, random):
        images, labels = batch
        return images.float().sub_(MEAN * 255).div_(STD * 255), labels

    def forward_batch(self, model, batch):
        images, labels = batch
        logits = model(images)
        return self.loss_fn(logits, labels), logits

    def batch_stats(self, batch, outputs):
        return classification_stats(outputs.float(), batch[1])

    def compute_metrics(self, totals):
        return classification_metrics(totals)

    def report(self, phase, totals, epoch, writer):
        if phase == "train" or "confusion" not in totals:
            return
        from data.fashion_mnist import CLASSES
        accuracies = per_class_accuracy(totals["confusion"])
        self.log.info(f"{phase} per-class accuracy: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(CLASSES, accuracies)))
        if writer is not None and epoch is not None:
            for name, value in zip(CLASSES, accuracies):
                writer.add_scalar(f"{phase}_per_class/{name.replace('/', '_').replace(' ', '_')}", value, epoch)


class VanillaTrainer(TrainerBase):
    """Train an MLP on FashionMNIST (784-512-512-10)."""

    task_class = VanillaTask


if __name__ == "__main__":
    sys.exit(VanillaTrainer.main())
