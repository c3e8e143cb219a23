"""Evaluate a FashionMNIST MLP checkpoint on a split of its run, or predict a folder of images.

    python eval_vanilla.py --model_path Results/Vanilla/<ts>/Vanilla_best_ckpt.pth [--viz]
    python eval_vanilla.py --model_path .../Vanilla_best_ckpt.pth --input_dir photos/ [--save_path out/]

With --viz, every --n_snap-th sample goes on a contact sheet, `viz/contact_sheet_<N>.png`: the
image enlarged, labelled with the true class and the prediction (green when right, red when wrong).
Prediction mode (--input_dir: PNG/JPEG images, prepared as data/fashion_mnist.load_image says, and
IDX files) writes `predictions.csv` (file, predicted class, the probability of each class) into
--save_path (default <run>/eval/predict[_<tag>]), streamed and continued after an interruption.
"""
import sys

import torch

from deploy.prediction import FolderPrediction, add_prediction_options, made_by
from deploy.streamed_csv import StreamedCsv, csv_field
from eval import EvaluatorBase
from trainer_vanilla import MEAN, STD, VanillaTask
from utils.errors import UserError

SHEET_COLUMNS, SHEET_ROWS = 10, 10  # samples per sheet: a hundred, at 4x their 28x28 pixels
SCALE, LABEL_HEIGHT, GAP = 4, 26, 4  # a tile: the image at 4x, two lines of label, a white margin


class PredictingVanillaTask(VanillaTask):
    """The vanilla task that also takes batches of images without labels ({"image", "readable"},
    data/fashion_mnist.FashionMNISTImages), normalised as the task normalises its training images."""

    def prepare_batch(self, batch, train, random):
        if isinstance(batch, dict):
            images, _ = super().prepare_batch((batch["image"], None), train, random)
            return {"images": images, "readable": batch["readable"]}
        return super().prepare_batch(batch, train, random)

    def predict_batch(self, model, batch):
        return model(batch["images"] if isinstance(batch, dict) else batch)


class VanillaEvaluator(FolderPrediction, EvaluatorBase):
    task_class = PredictingVanillaTask

    @classmethod
    def add_eval_arguments(cls, parser):
        group = parser.add_argument_group("vanilla prediction")
        add_prediction_options(group, "the PNG/JPEG images and IDX files in this folder, or one IDX file,")

    def __init__(self, argv):
        super().__init__(argv)
        self.snapped = []  # (pixels, true class, predicted class) of every --n_snap-th sample

    def output_name(self):
        if self.args.input_dir is None:
            return super().output_name()
        return "predict" + (f"_{self.args.tag}" if self.args.tag else "")

    def run(self):
        if self.args.input_dir is None:
            return super().run()
        return self.predict_folder()

    def export_samples(self):
        if self.args.input_dir is None:
            return super().export_samples()
        from data.fashion_mnist import FashionMNISTImages
        inputs = FashionMNISTImages(self.args.input_dir)
        _, batch = next(iter(self.make_loader(inputs)))
        return self.task.prepare_batch(batch, False, None)["images"], f"the first images of {self.args.input_dir}"

    def deployment_card(self):
        from data.fashion_mnist import CLASSES
        return {"preprocessing": {
                    "image": "grey (Pillow's convert('L') of a colour image), resized to 28x28 bilinearly when of "
                             "another size (JPEG: decoded with draft('L', (28, 28)) first); light clothes on black",
                    "color_mode": "L", "image_size": [28, 28], "resize": "bilinear",
                    "mean": [MEAN * 255], "std": [STD * 255],
                    "formula": "input = (pixel - mean) / std, on pixel values 0..255 as float32, per channel"},
                "classes": list(CLASSES),
                "postprocessing": "softmax over the 10 logits gives each class's probability; the prediction is the "
                                  "class of the largest"}

    def predict_folder(self):
        """Every input of --input_dir through the task's evaluation loop, streamed into predictions.csv."""
        from data.fashion_mnist import CLASSES, FashionMNISTImages
        args = self.args
        path = self.save_path / "predictions.csv"
        header = ",".join(["file", "predicted", *map(csv_field, CLASSES)])
        output = StreamedCsv(path, header, made_by(self), self.log)
        self.setup(data=False)
        inputs = FashionMNISTImages(args.input_dir)

        def predict(start, rows):
            remaining = inputs.starting_at(start)

            def add_rows(batch, logits, indices):
                probabilities = torch.softmax(logits.float(), dim=1).cpu()
                for row, (sample, readable) in enumerate(zip(indices.tolist(), batch["readable"].tolist())):
                    if not readable:
                        raise UserError(f"cannot decode image {args.input_dir / remaining.names[sample]} "
                                        "(expected a PNG or JPEG file)")
                    rows.add(remaining.names[sample], prediction_fields(probabilities[row]))
            self.evaluate("predict", on_batch=add_rows, loader=self.make_loader(remaining))
        seconds = output.write(inputs.all_names, predict, args.progress_every)
        self.log.info(f"wrote {len(inputs.all_names)} predictions to {path} in {seconds:.1f} s")
        return {"images": len(inputs.all_names), "seconds": seconds}

    def on_batch(self, batch, outputs, indices):
        if not self.args.viz:
            return
        images, labels = batch
        predictions = outputs.argmax(dim=1)
        for row, number in enumerate(indices.tolist()):
            if number % self.args.n_snap == 0:
                pixels = (images[row, 0] * STD * 255 + MEAN * 255).clamp(0, 255).byte().cpu().numpy()
                self.snapped.append((pixels, int(labels[row]), int(predictions[row])))

    def finish(self):
        if not self.snapped:
            return
        folder = self.save_path / "viz"
        folder.mkdir(exist_ok=True)
        per_sheet = SHEET_COLUMNS * SHEET_ROWS
        for number, first in enumerate(range(0, len(self.snapped), per_sheet), start=1):
            contact_sheet(self.snapped[first:first + per_sheet]).save(folder / f"contact_sheet_{number:03d}.png")


def prediction_fields(probabilities):
    """The fields of a row after the file's name: the predicted class, then each class's probability."""
    from data.fashion_mnist import CLASSES
    return ",".join([csv_field(CLASSES[int(probabilities.argmax())]), *(f"{value:.6f}" for value in probabilities.tolist())])


def contact_sheet(samples):
    """One picture of `samples` (pixels, true, predicted), in rows of SHEET_COLUMNS labelled tiles."""
    from PIL import Image, ImageDraw

    from data.fashion_mnist import CLASSES
    height, width = samples[0][0].shape
    tile_w, tile_h = width * SCALE + GAP, height * SCALE + LABEL_HEIGHT + GAP
    columns = min(SHEET_COLUMNS, len(samples))
    rows = -(-len(samples) // columns)
    sheet = Image.new("RGB", (columns * tile_w, rows * tile_h), "white")
    draw = ImageDraw.Draw(sheet)
    for position, (pixels, true, predicted) in enumerate(samples):
        x, y = position % columns * tile_w + GAP // 2, position // columns * tile_h + GAP // 2
        image = Image.fromarray(pixels).resize((width * SCALE, height * SCALE), Image.NEAREST).convert("RGB")
        sheet.paste(image, (x, y))
        colour = (0, 128, 0) if true == predicted else (200, 0, 0)
        draw.text((x + 2, y + height * SCALE + 1), f"true: {CLASSES[true]}"[:18], fill=(0, 0, 0))
        draw.text((x + 2, y + height * SCALE + 13), f"pred: {CLASSES[predicted]}"[:18], fill=colour)
    return sheet


if __name__ == "__main__":
    sys.exit(VanillaEvaluator.main())
