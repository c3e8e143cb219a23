"""Evaluate a regression checkpoint on a split of its run.

    python eval_regression.py --model_path Results/Regression/<timestamp>/MLP_best_ckpt.pth [--viz]

With --viz, `viz/prediction_vs_target.png` puts a dot for every --n_snap-th sample at (target,
prediction), both axes on the same scale: a perfect fit lies on the grey diagonal.
"""
import sys

from eval import EvaluatorBase
from trainer_regression import RegressionTask

SIZE, MARGIN = 400, 20  # the picture's side and border, in pixels


class RegressionEvaluator(EvaluatorBase):
    task_class = RegressionTask

    def __init__(self, argv):
        super().__init__(argv)
        self.points = []  # (target, prediction) of every --n_snap-th sample

    def on_batch(self, batch, outputs, indices):
        if self.args.viz:
            rows = zip(indices.tolist(), batch[1][:, 0].tolist(), outputs[:, 0].float().tolist())
            self.points += [(target, prediction) for number, target, prediction in rows
                            if number % self.args.n_snap == 0]

    def finish(self):
        if self.points:
            (self.save_path / "viz").mkdir(exist_ok=True)
            scatter(self.points).save(self.save_path / "viz" / "prediction_vs_target.png")


def scatter(points):
    """A white square with the diagonal in grey and a blue dot per (target, prediction)."""
    from PIL import Image, ImageDraw
    low, high = min(map(min, points)), max(map(max, points))
    scale = (SIZE - 2 * MARGIN) / ((high - low) or 1)
    corner = MARGIN - low * scale, SIZE - MARGIN + low * scale  # where (0, 0) lands: y grows downwards
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(MARGIN, SIZE - MARGIN), (SIZE - MARGIN, MARGIN)], fill=(160, 160, 160))
    for target, prediction in points:
        x, y = corner[0] + target * scale, corner[1] - prediction * scale
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 90, 200))
    return image


if __name__ == "__main__":
    sys.exit(RegressionEvaluator.main())
