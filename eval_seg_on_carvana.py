"""Evaluate a Carvana segmentation checkpoint on its run's held-out test cars, or predict masks.

    python eval_seg_on_carvana.py --model_path Results/SegOnCarvana/<ts>/UNet_best_ckpt.pth --viz
    python eval_seg_on_carvana.py --model_path .../UNet_best_ckpt.pth --input_dir Dataset/Carvana/test \\
        --submission submission.csv

Test mode writes metrics.json (mean dice, IoU, pixel accuracy, and dice and IoU per image, at
--img_size). With --viz, every --n_snap-th image gets <name>_origin.png, <name>_mask.png,
<name>_pred.png (car white on black, at the original resolution) and <name>_overlay.png.
Prediction mode (--input_dir) writes the Kaggle CSV (img,rle_mask) at each image's original size.
"""
import csv
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eval import EvaluatorBase
from trainer_seg_on_carvana import SegOnCarvanaTrainer
from utils.checkpoint import atomic_open
from utils.errors import UserError
from utils.metrics import dice_iou_per_image


class SegOnCarvanaEvaluator(EvaluatorBase):
    trainer_class = SegOnCarvanaTrainer

    @classmethod
    def add_eval_arguments(cls, parser):
        group = parser.add_argument_group("carvana evaluation")
        group.add_argument("--input_dir", type=Path, default=None,
                           help="predict masks for the unlabelled images in this folder (e.g. Kaggle's test)")
        group.add_argument("--submission", type=Path, default=None,
                           help="with --input_dir: the Kaggle CSV to write "
                                "(default <run>/eval/predict[_<tag>]/submission.csv)")

    def __init__(self, argv):
        super().__init__(argv)
        self.per_image = []

    def output_name(self):
        if self.args.input_dir is None:
            return super().output_name()
        return "predict" + (f"_{self.args.tag}" if self.args.tag else "")

    def probabilities(self, logits, size):
        """Car probability at `size` (height, width), from logits at the model's resolution."""
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        if logits.shape[1] == 1:
            return torch.sigmoid(logits[:, 0])
        return 1 - torch.softmax(logits, dim=1)[:, 0]

    def on_batch(self, batch, outputs, indices):
        from data.carvana import load_mask
        from utils.metrics import binary_masks
        images, masks = batch
        subset = self.trainer.datasets[self.args.split]
        dataset = subset.dataset
        dice, iou = dice_iou_per_image(binary_masks(outputs.float(), self.args.threshold),
                                       masks.reshape(len(masks), *outputs.shape[2:]) > 0)
        for row, number in enumerate(indices.tolist()):
            sample = int(subset.indices[number])
            name = dataset.names[sample]
            self.per_image.append({"name": name, "dice": float(dice[row]), "iou": float(iou[row])})
            if self.args.viz and number % self.args.n_snap == 0:
                original = load_original(dataset.image_paths[sample])
                truth = load_mask(dataset.mask_paths[sample]).numpy().astype(bool)
                predicted = self.probabilities(outputs[row:row + 1], truth.shape)[0] > self.args.threshold
                self.write_pictures(name, original, truth, predicted.cpu().numpy())

    def write_pictures(self, name, original, truth, predicted):
        from PIL import Image
        folder = self.save_path / "viz"
        folder.mkdir(exist_ok=True)
        Image.fromarray(original).save(folder / f"{name}_origin.png")
        if truth is not None:
            Image.fromarray(truth.astype(np.uint8) * 255).save(folder / f"{name}_mask.png")
        Image.fromarray(predicted.astype(np.uint8) * 255).save(folder / f"{name}_pred.png")
        overlay = original.astype(np.float32)
        overlay[predicted] = 0.5 * overlay[predicted] + 0.5 * np.array([255, 0, 0])
        Image.fromarray(overlay.astype(np.uint8)).save(folder / f"{name}_overlay.png")

    def results(self):
        return {"per_image": self.per_image}

    def run(self):
        if self.args.input_dir is None:
            if self.args.submission is not None:
                raise UserError("--submission needs --input_dir, the folder of images to predict")
            return super().run()
        return self.predict_folder()

    def predict_folder(self):
        """Predict every image in --input_dir through the task's evaluation loop; write the Kaggle CSV."""
        from data.carvana import CarvanaImages
        from utils.rle import rle_encode
        args = self.args
        submission = Path(args.submission) if args.submission else self.save_path / "submission.csv"
        self.setup(data=False)
        try:
            submission.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the output folder for {submission}: {error.strerror or error}") from None
        images = CarvanaImages(args.input_dir, args.img_size)
        rows = []

        def encode(batch, logits, indices):
            for row, sample in enumerate(indices.tolist()):
                predicted = (self.probabilities(logits[row:row + 1], images.original_size(sample))[0]
                             > args.threshold).cpu().numpy()
                rows.append((images.names[sample], rle_encode(predicted)))
                if args.viz and sample % args.n_snap == 0:
                    self.write_pictures(Path(images.names[sample]).stem, load_original(images.image_paths[sample]),
                                        None, predicted)

        self.trainer.evaluate("predict", on_batch=encode, loader=self.trainer.make_loader(images))
        with atomic_open(submission, "w") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["img", "rle_mask"])
            writer.writerows(rows)
        self.log.info(f"wrote {len(rows)} masks to {submission.name}")
        return {"images": len(rows)}


def load_original(path):
    from PIL import Image
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


if __name__ == "__main__":
    sys.exit(SegOnCarvanaEvaluator.main())
