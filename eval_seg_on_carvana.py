"""Evaluate a Carvana segmentation checkpoint on its run's held-out test cars, or predict masks.

    python eval_seg_on_carvana.py --model_path Results/SegOnCarvana/<ts>/UNet_best_ckpt.pth --viz
    python eval_seg_on_carvana.py --model_path .../UNet_best_ckpt.pth --input_dir Dataset/Carvana/test \\
        --submission submission.csv

Test mode writes metrics.json (mean dice, IoU, pixel accuracy, and dice and IoU per image, at
--img_size). With --viz, every --n_snap-th image gets <name>_origin.png, <name>_mask.png,
<name>_pred.png (car white on black, at the original resolution) and <name>_overlay.png.
Prediction mode (--input_dir) writes the Kaggle CSV (img,rle_mask) at each image's original size.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from cli.options import EVALUATION, add_option
from deploy.prediction import FolderPrediction, add_prediction_options, made_by
from deploy.streamed_csv import ImageProgress, RowWriter, StreamedCsv, continued_rows, csv_field, finish_csv
from eval import EvaluatorBase
from trainer_seg_on_carvana import SegOnCarvanaTask, car_probability
from utils.errors import UserError
from utils.metrics import dice_iou_per_image
from utils.rle import rle_encode


# The streamed CSV's parts, importable from here as before they moved to deploy/streamed_csv.py.
__all__ = ["SegOnCarvanaEvaluator", "ImageProgress", "RowWriter", "continued_rows", "csv_field", "finish_csv"]


class SegOnCarvanaEvaluator(FolderPrediction, EvaluatorBase):
    task_class = SegOnCarvanaTask

    @classmethod
    def add_eval_arguments(cls, parser):
        group = parser.add_argument_group("carvana evaluation")
        add_prediction_options(group, "masks for the unlabelled images in this folder (e.g. Kaggle's test)")
        add_option(group, "--submission", rules=EVALUATION, type=Path, default=None,
                   help="with --input_dir: the Kaggle CSV to write "
                        "(default <run>/eval/predict[_<tag>]/submission.csv)")

    def __init__(self, argv):
        super().__init__(argv)
        self.per_image = []

    def output_name(self):
        if self.args.input_dir is None:
            return super().output_name()
        return "predict" + (f"_{self.args.tag}" if self.args.tag else "")

    def on_batch(self, batch, outputs, indices):
        from data.carvana import load_mask
        from utils.metrics import binary_masks
        images, masks = batch
        subset = self.datasets[self.args.split]
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
                predicted = car_probability(outputs[row:row + 1], truth.shape)[0] > self.args.threshold
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
        """Every image in --input_dir through the task's evaluation loop, streamed into Kaggle's CSV
        (deploy/streamed_csv.py: continued after an interruption, memory flat in the number of
        images; gzipped when the name ends in .gz)."""
        from data.carvana import CarvanaImages
        args = self.args
        submission = Path(args.submission) if args.submission else self.save_path / "submission.csv"
        output = StreamedCsv(submission, "img,rle_mask", self.made_by(), self.log, encode=rle_encode)
        self.setup(data=False)
        listing = CarvanaImages(args.input_dir, args.img_size, skip_bad=args.skip_bad, log=self.log)
        unreadable = []

        def predict(start, rows):
            images = listing.starting_at(start)
            self.evaluate("predict", on_batch=self.encoder(images, rows, unreadable), loader=self.make_loader(images))
        seconds = output.write([path.name for path in listing.all_paths], predict, args.progress_every)
        if unreadable:
            self.log.warning(f"{len(unreadable)} image(s) could not be decoded and got an empty mask, first {unreadable[0]}")
        self.log.info(f"wrote {len(listing.all_paths)} masks to {submission} in {seconds:.1f} s")
        return {"images": len(listing.all_paths), "unreadable": unreadable, "skipped_files": listing.skipped_files,
                "seconds": seconds}

    def encoder(self, images, rows, unreadable):
        """`on_batch` of prediction: each image's mask at its own size, queued as its row."""
        args = self.args

        def encode(batch, logits, indices):
            samples, readable = indices.tolist(), batch["readable"].tolist()
            sizes = [tuple(size) if ok else None for size, ok in zip(batch["size"].tolist(), readable)]
            masks = [None] * len(samples)
            for size, group in groups_by_size(sizes):  # upsampled and thresholded on the device, batched
                for row, mask in zip(group, (car_probability(logits[group], size) > args.threshold).cpu().numpy()):
                    masks[row] = mask
            for row, sample in enumerate(samples):
                name = images.names[sample]
                if masks[row] is None:
                    if not args.skip_bad:
                        raise UserError(f"cannot decode image {args.input_dir / name}; pass --skip_bad to give "
                                        "it an empty mask row instead")
                    unreadable.append(name)
                rows.add(name, masks[row])
            if args.viz:
                self.write_viz(masks, samples, images)
        return encode

    def export_samples(self):
        """The first --eval_batch_size images of --input_dir, else of the run's test cars, decoded one by one
        (not the whole data set through its cache)."""
        from data.carvana import CarvanaImages
        args = self.args
        count = args.eval_batch_size or args.batch_size
        if args.input_dir is not None:
            images, source = CarvanaImages(args.input_dir, args.img_size), f"the first images of {args.input_dir}"
        else:
            split = self.run_folder.read_json("split.json") or {}
            test_names = set(split.get("test_names", []))
            images = CarvanaImages(Path(args.data_dir) / "train", args.img_size)
            chosen = [index for index, path in enumerate(images.all_paths) if path.stem in test_names]
            if not chosen:
                raise UserError(f"none of the run's test cars is in {Path(args.data_dir) / 'train'}; pass --input_dir "
                                "with a few photos to check the export on")
            images.image_paths = [images.all_paths[index] for index in chosen]
            source = "the first test cars of the run"
        batch = next(iter(torch.utils.data.DataLoader(images, batch_size=count)))
        if not all(batch["readable"].tolist()):
            raise UserError(f"cannot decode the images to check the export on ({source})")
        return self.task.prepare_batch(batch, False, None)["images"], source

    def deployment_card(self):
        args = self.args
        how = "sigmoid(logit) > threshold is car" if args.n_classes == 1 else \
            "softmax over the classes; car where 1 - probability of class 0 > threshold"
        return {"preprocessing": {
                    "image": "RGB (Pillow's convert('RGB')), resized bilinearly to image_size (JPEG: decoded with "
                             "draft('RGB', (width, height)) first)",
                    "color_mode": "RGB", "image_size": list(args.img_size), "resize": "bilinear",
                    "mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0],
                    "formula": "input = (pixel - mean) / std, on pixel values 0..255 as float32, per channel"},
                "threshold": args.threshold, "tta": args.tta,
                "postprocessing": "logits at image_size; upsample them bilinearly (align_corners false) to the photo's "
                                  f"own size, then {how}; tta (if not none) is inside the exported model"}

    def made_by(self):
        """What decides a submission's masks: a partial one continues only if this is unchanged."""
        args = self.args
        return made_by(self, img_size=list(args.img_size), threshold=args.threshold, tta=args.tta)

    def write_viz(self, masks, samples, images):
        """Pictures of every --n_snap-th image, with the masks the CSV gets."""
        for mask, sample in zip(masks, samples):
            if (images.start + sample) % self.args.n_snap == 0 and mask is not None:
                self.write_pictures(Path(images.names[sample]).stem, load_original(images.image_paths[sample]),
                                    None, mask)


def groups_by_size(sizes):
    """The rows of a batch grouped by original size, so that each group is upsampled in one call."""
    groups = {}
    for row, size in enumerate(sizes):
        if size is not None:
            groups.setdefault(size, []).append(row)
    return groups.items()


def load_original(path):
    from PIL import Image
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


if __name__ == "__main__":
    sys.exit(SegOnCarvanaEvaluator.main())
