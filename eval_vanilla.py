"""Evaluate a FashionMNIST MLP checkpoint on a split of its run.

    python eval_vanilla.py --model_path Results/Vanilla/<ts>/Vanilla_best_ckpt.pth [--viz]

With --viz, every --n_snap-th sample goes on a contact sheet, `viz/contact_sheet_<N>.png`: the
image enlarged, labelled with the true class and the prediction (green when right, red when wrong).
"""
import sys

from eval import EvaluatorBase
from trainer_vanilla import MEAN, STD, VanillaTask

SHEET_COLUMNS, SHEET_ROWS = 10, 10  # samples per sheet: a hundred, at 4x their 28x28 pixels
SCALE, LABEL_HEIGHT, GAP = 4, 26, 4  # a tile: the image at 4x, two lines of label, a white margin


class VanillaEvaluator(EvaluatorBase):
    task_class = VanillaTask

    def __init__(self, argv):
        super().__init__(argv)
        self.snapped = []  # (pixels, true class, predicted class) of every --n_snap-th sample

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
