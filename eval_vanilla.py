"""Evaluate a FashionMNIST MLP checkpoint on its run's test set.

    python eval_vanilla.py --model_path Results/Vanilla/<ts>/Vanilla_best_ckpt.pth [--viz]
"""
import sys

from eval import EvaluatorBase
from trainer_vanilla import MEAN, STD, VanillaTrainer


class VanillaEvaluator(EvaluatorBase):
    trainer_class = VanillaTrainer

    def on_batch(self, batch, outputs, indices):
        if not self.args.viz:
            return
        from PIL import Image

        from data.fashion_mnist import CLASSES
        folder = self.save_path / "viz"
        folder.mkdir(exist_ok=True)
        images, labels = batch
        predictions = outputs.argmax(dim=1)
        for row, number in enumerate(indices.tolist()):
            if number % self.args.n_snap:
                continue
            pixels = (images[row, 0] * STD * 255 + MEAN * 255).clamp(0, 255).byte().cpu().numpy()
            true, predicted = (CLASSES[int(x)].replace("/", "-").replace(" ", "-") for x in (labels[row], predictions[row]))
            Image.fromarray(pixels).save(folder / f"{number:05d}_true-{true}_pred-{predicted}.png")


if __name__ == "__main__":
    sys.exit(VanillaEvaluator.main())
