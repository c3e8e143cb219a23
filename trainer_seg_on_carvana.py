"""Binary car segmentation on Kaggle's Carvana data with UNet or UNet++.

    python trainer_seg_on_carvana.py --model_type UNet --data_dir Dataset/Carvana
    torchrun --nproc_per_node 4 trainer_seg_on_carvana.py --model_type UNet++ --sync_bn --amp

Train, validation and test hold disjoint cars (the 16 views of a car are near-duplicates); the
split is written to the run folder and the evaluator reuses it. Metrics are computed at
--img_size: dice (mean over images, as Kaggle scores it), IoU and pixel accuracy; the test also
scores as Kaggle does, at each photo's own size against its original mask file (`dice_full`,
`iou_full`). `--tta hflip` averages the probabilities of each image and its mirror image.
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from cli.options import PLACE, SHARED, SPLIT, TRAINING, add_flag, add_option, positive_int, ratio, unit_interval
from task import TaskBase
from trainer import TrainerBase
from utils.metrics import (binary_masks, dice_iou_per_image, foreground_probability, segmentation_metrics,
                           segmentation_stats)


class SegOnCarvanaTask(TaskBase):
    """Binary car segmentation of Carvana images with UNet / UNet++."""

    name = "SegOnCarvana"
    model_types = ("UNet", "UNet++")
    data_types = ("Carvana",)
    metric_names = ("loss", "dice", "iou", "pixel_accuracy")
    eval_stats_every = 1  # full-size masks and logits: no point holding several batches

    @classmethod
    def add_arguments(cls, parser):
        from loss.loss_entry import LOSSES
        parser.set_defaults(proj_name="SegOnCarvana", data_dir=Path("Dataset/Carvana"), monitor="val/dice",
                            monitor_mode="max", n_epoch=20, batch_size=8, lr=1e-3, optim="adam")
        data = parser.add_argument_group("carvana data")
        add_option(data, "--img_size", rules=SHARED, type=positive_int, nargs=2, default=[320, 480], metavar=("H", "W"),
                   help="height and width images and masks are resized to (masks by nearest neighbour)")
        add_option(data, "--test_ratio", rules=SPLIT, type=ratio, default=0.1,
                   help="fraction of the cars held out for testing")
        add_option(data, "--cache", rules=PLACE, choices=("none", "memory", "disk"), default="memory",
                   help="keep decoded, resized tensors in memory, or also in a file for later runs")
        add_option(data, "--cache_dir", rules=PLACE, type=Path, default=None,
                   help="folder of the disk cache (default <data_dir>/.cache)")
        add_flag(data, "--skip_bad", SHARED,
                 help="skip images without a mask or unreadable files (counted) instead of failing")
        add_flag(data, "--augment", TRAINING, default=True,
                 help="random horizontal flips and small shifts for training")
        add_option(data, "--max_shift", rules=TRAINING, type=unit_interval, default=0.05,
                   help="largest random shift, as a fraction of the image size")

        model = parser.add_argument_group("segmentation model")
        add_option(model, "--n_channels", rules=TRAINING, type=positive_int, default=3, help="input channels")
        add_option(model, "--n_classes", rules=TRAINING, type=positive_int, default=1,
                   help="1 for a sigmoid output, 2+ for softmax")
        add_option(model, "--depth", rules=TRAINING, type=positive_int, default=4,
                   help="number of down-sampling levels")
        add_option(model, "--base_width", rules=TRAINING, type=positive_int, default=32,
                   help="channels of the first level")
        add_flag(model, "--deep_supervision", TRAINING, help="UNet++: train every nested head (loss averaged)")
        add_option(model, "--loss", rules=TRAINING, choices=sorted(LOSSES), default="bce_dice", help="loss function")
        add_option(model, "--threshold", rules=SHARED, type=unit_interval, default=0.5,
                   help="probability above which a pixel is car")
        add_option(model, "--n_viz", rules=TRAINING, type=positive_int, default=4,
                   help="validation images shown in TensorBoard")
        add_option(model, "--tta", rules=SHARED, choices=("none", "hflip"), default="none",
                   help="test-time augmentation when evaluating: hflip averages the probabilities of "
                        "each image and of its mirror image")

    def split_ratios(self):
        return {**super().split_ratios(), "test": self.args.test_ratio}

    def build_loss(self):
        from loss.loss_entry import build_loss
        if self.args.n_classes == 1 and self.args.loss in ("ce", "ce_dice"):
            from utils.errors import UserError
            raise UserError(f"--loss {self.args.loss} needs --n_classes 2 or more; with one output use bce, dice or bce_dice")
        return build_loss(self.args.loss)

    def prepare_batch(self, batch, train, random):
        if isinstance(batch, dict):  # images without masks, to predict (data/carvana.py: CarvanaImages)
            return {"images": batch["image"].float().div_(255), "readable": batch["readable"], "size": batch["size"]}
        images, masks = batch
        images = images.float().div_(255)
        if train and self.args.augment:
            images, masks = self.augment(images, masks, random)
        return images, masks

    def augment(self, images, masks, random):
        """The same random flip and shift for an image and its mask, drawn from each sample's stream
        (data/sample_random.py)."""
        count, _, height, width = images.shape
        limit = (round(self.args.max_shift * height), round(self.args.max_shift * width))
        if isinstance(random, torch.Generator):  # a run begun with sampling rules 1: its batch's draws, as then
            flips = (torch.rand(count, generator=random) < 0.5).tolist()
            shifts = [(int(torch.randint(-limit[0], limit[0] + 1, (), generator=random)),
                       int(torch.randint(-limit[1], limit[1] + 1, (), generator=random))) for _ in range(count)]
        else:
            flips = (random.rand() < 0.5).tolist()
            shifts = zip(random.randint(-limit[0], limit[0] + 1).tolist(), random.randint(-limit[1], limit[1] + 1).tolist())
        images, masks = images.clone(), masks.clone()
        for i, (flip, (dy, dx)) in enumerate(zip(flips, shifts)):
            for tensor in (images, masks):
                sample = tensor[i].flip(-1) if flip else tensor[i]
                tensor[i] = shift_with_zeros(sample, dy, dx)
        return images, masks

    def forward_batch(self, model, batch):
        images, masks = batch
        if not model.training and self.args.tta != "none":
            logits = self.predict_batch(model, images)
            return self.loss_fn(logits, masks), logits
        logits = model(images)
        if isinstance(logits, (list, tuple)):  # UNet++ deep supervision: every head learns
            return sum(self.loss_fn(head, masks) for head in logits) / len(logits), logits[-1]
        return self.loss_fn(logits, masks), logits

    def predict_batch(self, model, images):
        """Logits of the last head; with --tta hflip, those of the mean probability of each image and
        its mirror image (mirrored back)."""
        images = images["images"] if isinstance(images, dict) else images
        logits = last_head(model(images))
        if self.args.tta == "hflip":
            mirrored = last_head(model(images.flip(-1))).flip(-1)
            if logits.shape[1] == 1:
                mean = (torch.sigmoid(logits.float()) + torch.sigmoid(mirrored.float())) / 2
                return torch.logit(mean, eps=1e-7)
            mean = (torch.softmax(logits.float(), dim=1) + torch.softmax(mirrored.float(), dim=1)) / 2
            return mean.clamp_min(1e-12).log()
        return logits

    def sample_stats(self, phase, dataset, outputs, indices):
        """The test as Kaggle scores it: each image's logits upsampled to its photo's size,
        thresholded, against its original mask file; sums of per-image dice and IoU."""
        if phase != "test":
            return {}
        from data.carvana import load_mask
        dice_sum = iou_sum = 0.0
        for row, position in enumerate(indices.tolist()):
            truth = load_mask(dataset.dataset.mask_paths[int(dataset.indices[position])]).to(outputs.device) > 0
            predicted = car_probability(outputs[row:row + 1], truth.shape) > self.args.threshold
            dice, iou = dice_iou_per_image(predicted, truth.unsqueeze(0))
            dice_sum, iou_sum = dice_sum + dice.sum(), iou_sum + iou.sum()
        return {"full_images": len(indices), "full_dice_sum": dice_sum, "full_iou_sum": iou_sum}

    def batch_stats(self, batch, outputs):
        return segmentation_stats(outputs.float(), batch[1], self.args.threshold)

    def compute_metrics(self, totals):
        metrics = segmentation_metrics(totals)
        if totals.get("full_images"):
            metrics.update(dice_full=totals["full_dice_sum"] / totals["full_images"],
                           iou_full=totals["full_iou_sum"] / totals["full_images"])
        return metrics

    def visualize(self, writer, epoch, batch, outputs):
        """Image | true mask | predicted mask, side by side, for the first validation images."""
        images, masks = batch
        count = min(self.args.n_viz, len(images))
        predicted = binary_masks(outputs[:count].float(), self.args.threshold).unsqueeze(1).float()
        truth = (masks[:count] > 0).float()
        rows = torch.cat([images[:count].float(), truth.expand(-1, 3, -1, -1), predicted.expand(-1, 3, -1, -1)], dim=3)
        writer.add_images("val/image_truth_prediction", rows.clamp(0, 1).cpu(), epoch)


class SegOnCarvanaTrainer(TrainerBase):
    """Train UNet / UNet++ to segment cars in Carvana images."""

    task_class = SegOnCarvanaTask


def last_head(logits):
    """The final output of a model that may return every head (UNet++ deep supervision)."""
    return logits[-1] if isinstance(logits, (list, tuple)) else logits


def car_probability(logits, size):
    """Car probability [B, height, width] at `size`, from logits [B, C, h, w] at the model's resolution."""
    return foreground_probability(F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False))


def shift_with_zeros(tensor, dy, dx):
    """Translate a [C, H, W] tensor by (dy, dx) pixels, filling the uncovered border with zeros."""
    height, width = tensor.shape[1:]
    shifted = torch.zeros_like(tensor)
    shifted[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        tensor[:, max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return shifted


if __name__ == "__main__":
    sys.exit(SegOnCarvanaTrainer.main())
