"""FashionMNIST prediction of a folder: the evaluator's predictions for the same images, continued
after an interruption to the same bytes, colour images of any size, and bad input in one line."""
import csv

import numpy as np
import pytest
import torch

from helpers import refused, train_vanilla


@pytest.fixture(scope="module")
def run(fashion_dir, tmp_path_factory):
    return train_vanilla(fashion_dir, tmp_path_factory.mktemp("runs"), "--n_epoch", "1")


@pytest.fixture(scope="module")
def pictures(fashion_dir, run, tmp_path_factory):
    """The run's test images as PNG files, in the order of the test split."""
    from PIL import Image

    from data.fashion_mnist import FashionMNIST
    folder = tmp_path_factory.mktemp("pictures")
    for index, (pixels, _) in enumerate(zip(*FashionMNIST(fashion_dir, train=False).get_batch(slice(0, 400)))):
        Image.fromarray(pixels[0].numpy()).save(folder / f"{index:03d}.png")
    return folder


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_the_predicted_csv_of_pngs_equals_the_evaluators_predictions(run, pictures, tmp_path):
    from data.fashion_mnist import CLASSES
    from eval_vanilla import VanillaEvaluator
    checkpoint = run / "Vanilla_best_ckpt.pth"
    probabilities = []

    class Capturing(VanillaEvaluator):
        def on_batch(self, batch, outputs, indices):
            probabilities.append(torch.softmax(outputs.float(), dim=1))

    assert Capturing.main(["--model_path", checkpoint, "--save_path", tmp_path / "test"]) == 0
    expected = torch.cat(probabilities)
    assert VanillaEvaluator.main(["--model_path", checkpoint, "--input_dir", pictures, "--save_path", tmp_path]) == 0
    rows = read_rows(tmp_path / "predictions.csv")
    assert rows[0] == ["file", "predicted", *CLASSES] and len(rows) == 1 + len(expected) == 401
    for (name, predicted, *values), row in zip(rows[1:], expected):
        assert predicted == CLASSES[int(row.argmax())]
        assert torch.allclose(torch.tensor([float(value) for value in values]), row, atol=6e-7, rtol=0), name


def test_an_interrupted_prediction_continues_to_the_same_bytes(run, pictures, tmp_path, monkeypatch):
    import deploy.streamed_csv
    from eval_vanilla import VanillaEvaluator
    base = ["--model_path", run / "Vanilla_best_ckpt.pth", "--input_dir", pictures, "--eval_batch_size", "16"]
    assert VanillaEvaluator.main([*base, "--save_path", tmp_path / "whole"]) == 0
    monkeypatch.setattr(deploy.streamed_csv.RowWriter, "AHEAD", 0)
    original = deploy.streamed_csv.RowWriter.write

    def write_then_stop(self, count):
        original(self, count)
        if self.progress.done >= 50:
            raise KeyboardInterrupt
    monkeypatch.setattr(deploy.streamed_csv.RowWriter, "write", write_then_stop)
    with pytest.raises(SystemExit):
        VanillaEvaluator.main([*base, "--save_path", tmp_path / "cut"])
    partial = tmp_path / "cut" / "predictions.csv.partial"
    assert 50 <= len(read_rows(partial)) - 1 < 400
    monkeypatch.undo()
    assert VanillaEvaluator.main([*base, "--save_path", tmp_path / "cut"]) == 0
    assert (tmp_path / "cut" / "predictions.csv").read_bytes() == (tmp_path / "whole" / "predictions.csv").read_bytes()
    assert not partial.exists()


def test_colour_images_of_any_size_and_idx_files_are_prepared_as_documented(run, pictures, fashion_dir, tmp_path):
    from PIL import Image

    from data.fashion_mnist import load_image, raw_dir
    from eval_vanilla import VanillaEvaluator
    folder = tmp_path / "mixed"
    folder.mkdir()
    grey = Image.open(pictures / "000.png")
    grey.resize((56, 70)).convert("RGB").save(folder / "a_colour_large.png")
    (folder / "b_copy.png").write_bytes((pictures / "001.png").read_bytes())
    (folder / "c-idx3-ubyte.gz").write_bytes(next(raw_dir(fashion_dir).glob("t10k-images*")).read_bytes())
    prepared = load_image(folder / "a_colour_large.png")
    expected = grey.resize((56, 70)).convert("RGB").convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    assert prepared.shape == (1, 28, 28) and torch.equal(prepared[0], torch.from_numpy(np.array(expected)))
    assert VanillaEvaluator.main(["--model_path", run / "Vanilla_best_ckpt.pth", "--input_dir", folder,
                                  "--save_path", tmp_path]) == 0
    rows = read_rows(tmp_path / "predictions.csv")[1:]
    assert [row[0] for row in rows[:4]] == ["a_colour_large.png", "b_copy.png", "c-idx3-ubyte.gz#0", "c-idx3-ubyte.gz#1"]
    assert len(rows) == 402 and rows[1][1:] == rows[3][1:]  # 001.png is test image 1


def test_bad_prediction_input_is_one_line(run, tmp_path, capsys):
    from eval_vanilla import VanillaEvaluator
    base = ["--model_path", run / "Vanilla_best_ckpt.pth", "--save_path", tmp_path / "out"]
    assert "does not exist" in refused(VanillaEvaluator.main, [*base, "--input_dir", tmp_path / "missing"], capsys)
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    assert "notes.txt is neither an image" in refused(VanillaEvaluator.main, [*base, "--input_dir", folder], capsys)
    (folder / "notes.txt").unlink()
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    error = refused(VanillaEvaluator.main, [*base, "--input_dir", folder], capsys)
    assert "cannot decode image" in error and "broken.png" in error
    (tmp_path / "a_file").write_text("")
    assert "cannot create --save_path" in refused(
        VanillaEvaluator.main, [*base[:2], "--input_dir", folder, "--save_path", tmp_path / "a_file" / "out"], capsys)
