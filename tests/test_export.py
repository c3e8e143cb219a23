"""Export to ONNX and torch.export: both tasks' models (UNet++ with deep supervision too), checked
against PyTorch, a model card a runtime can use, one-line errors, and the README's runtime example
run in a process that cannot import the project."""
import csv
import io
import re
import subprocess
import sys
from contextlib import redirect_stderr

import numpy as np
import pytest
import torch

from helpers import ROOT, load_plain, read_json, refused, train_seg, train_vanilla


@pytest.fixture(scope="module")
def runs(fashion_dir, carvana_dir, tmp_path_factory):
    """The three models, trained no longer than the tests need: the export's checks hold for any
    weights; the UNet's masks must be mostly non-empty for the README example's test (2 epochs)."""
    return {"Vanilla": train_vanilla(fashion_dir, tmp_path_factory.mktemp("mlp"), "--n_epoch", "1",
                                     "--train_val_sample_rate", "0.2"),
            "UNet": train_seg(carvana_dir, tmp_path_factory.mktemp("unet"), "--n_epoch", "2"),
            "UNet++": train_seg(carvana_dir, tmp_path_factory.mktemp("unetpp"), "--n_epoch", "1", "--model_type",
                                "UNet++", "--deep_supervision")}


@pytest.fixture(scope="module")
def exported(runs):
    """Every model in both formats: {(model type, format): (the export folder, what the command printed)}."""
    import export as export_script
    folders = {}
    for model_type, run in runs.items():
        for kind in ("onnx", "pt2"):
            with redirect_stderr(io.StringIO()) as printed:
                assert export_script.main(["--model_path", run / f"{model_type}_best_ckpt.pth", "--format", kind]) == 0
            folders[model_type, kind] = run / "export" / f"{kind}_raw", printed.getvalue()
    return folders


def pytorch_model(checkpoint):
    """The checkpoint's model as the evaluator builds it, in evaluation mode."""
    from model.model_entry import build_model
    saved = load_plain(checkpoint)
    model = build_model(type("Options", (), saved["config"])())
    model.load_state_dict(saved["model"])
    return model.eval()


@pytest.mark.parametrize("model_type", ["Vanilla", "UNet", "UNet++"])
def test_both_formats_export_and_give_the_pytorch_outputs_at_any_batch_size(runs, exported, model_type):
    checkpoint = runs[model_type] / f"{model_type}_best_ckpt.pth"
    model = pytorch_model(checkpoint)
    for kind in ("onnx", "pt2"):
        folder, printed = exported[model_type, kind]
        card = read_json(folder / "model_card.json")
        assert f"differ from PyTorch's by at most {card['check']['max_abs_difference']:.2e}" in printed
        assert "tolerance 1e-04" in printed and card["check"]["max_abs_difference"] <= 1e-4
        print(f"{model_type} {kind}: largest difference {card['check']['max_abs_difference']:.2e}", file=sys.__stdout__)
        channels, height, width = card["input"]["shape"][1:]
        images = torch.randn(3, channels, height, width)
        with torch.inference_mode():
            expected = model(images)
        if kind == "onnx":
            import onnxruntime
            session = onnxruntime.InferenceSession(str(folder / card["file"]), providers=["CPUExecutionProvider"])
            outputs = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
            assert card["opset"] == 18
        else:
            with torch.inference_mode():
                outputs = torch.export.load(str(folder / card["file"])).module()(images)
        assert outputs.shape == expected.shape == (3, *card["output"]["shape"][1:])  # UNet++: the inference head
        assert torch.allclose(outputs, expected, atol=1e-4, rtol=0)
        assert card["task"] == ("Vanilla" if model_type == "Vanilla" else "SegOnCarvana")
        assert card["metrics"]["test"] == read_json(runs[model_type] / "metrics.json")["test"]
        assert card["checkpoint"]["path"] == str(checkpoint.resolve()) and card["checkpoint"]["weights"] == "raw"
        if model_type == "Vanilla":
            assert card["classes"][0] == "T-shirt/top" and card["input"]["shape"] == ["batch", 1, 28, 28]
        else:
            assert card["threshold"] == 0.5 and card["preprocessing"]["image_size"] == [height, width]
        assert not list(folder.glob(".*"))  # no temporary file left


def test_an_export_beyond_the_tolerance_is_refused_and_nothing_kept(runs, tmp_path, capsys):
    from eval_vanilla import VanillaEvaluator
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        VanillaEvaluator.main(["--model_path", str(runs["Vanilla"] / "Vanilla_best_ckpt.pth"), "--export", "pt2",
                               "--tolerance", "1e-30", "--save_path", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert "more than --tolerance 1e-30" in error and "nothing was kept" in error
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_export_input_is_one_line(runs, tmp_path, capsys):
    import export as export_script
    from eval_vanilla import PredictingVanillaTask, VanillaEvaluator
    from model.vanilla_model import VanillaMLP
    checkpoint = runs["Vanilla"] / "Vanilla_best_ckpt.pth"
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    assert "is not a readable checkpoint" in refused(export_script.main, ["--model_path", tmp_path / "notes.pth",
                                                                          "--format", "onnx"], capsys)
    assert "--format tflite: expected one of onnx, pt2" in refused(
        export_script.main, ["--model_path", checkpoint, "--format", "tflite"], capsys)
    (tmp_path / "a_file").write_text("")
    assert "cannot create the export folder" in refused(
        export_script.main, ["--model_path", checkpoint, "--format", "pt2", "--save_path", tmp_path / "a_file" / "x"],
        capsys)

    class DataDependent(VanillaMLP):
        def forward(self, images):
            if images.sum() > 0:  # Python control flow on a value: torch.export cannot capture it
                return super().forward(images)
            return -super().forward(images)

    class Task(PredictingVanillaTask):
        def build_model(self):
            return DataDependent(dropout=self.args.dropout)

    class Evaluator(VanillaEvaluator):
        task_class = Task

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        Evaluator.main(["--model_path", str(checkpoint), "--export", "pt2", "--save_path", str(tmp_path / "bad")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and all(" INFO " in line for line in lines[:-1]), lines  # the log, then one line
    error = lines[-1]
    assert "cannot export the model to pt2" in error and "data-dependent" in error
    assert "module the model (DataDependent) at test_export.py" in error


def readme_example():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Export and deployment"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def run_isolated(script, *args, cwd):
    """`script` in `python -I` from `cwd`: neither the project's folder nor PYTHONPATH is on its path."""
    environment = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-I", script, *map(str, args)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_the_readme_runtime_example_gives_the_evaluators_classes_and_masks(runs, exported, carvana_dir, fashion_dir,
                                                                           tmp_path):
    from PIL import Image

    from data.fashion_mnist import read_idx
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    from eval_vanilla import VanillaEvaluator
    from utils.rle import rle_decode
    script = tmp_path / "predict_onnx.py"
    script.write_text(readme_example())
    (tmp_path / "probe.py").write_text("import trainer\n")
    cannot = run_isolated(tmp_path / "probe.py", cwd=tmp_path)
    assert cannot.returncode != 0 and "No module named 'trainer'" in cannot.stderr

    pictures = tmp_path / "clothes"
    pictures.mkdir()
    for index, pixels in enumerate(read_idx(next((fashion_dir / "FashionMNIST" / "raw").glob("t10k-images*")))[:40]):
        Image.fromarray(pixels.numpy()).save(pictures / f"{index:03d}.png")
    checkpoint = runs["Vanilla"] / "Vanilla_best_ckpt.pth"
    assert VanillaEvaluator.main(["--model_path", checkpoint, "--input_dir", pictures, "--save_path", tmp_path]) == 0
    with open(tmp_path / "predictions.csv", newline="") as handle:
        evaluator_classes = [row[:2] for row in list(csv.reader(handle))[1:]]
    result = run_isolated(script, exported["Vanilla", "onnx"][0], pictures, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line.split(",") for line in result.stdout.splitlines()] == evaluator_classes

    photos = carvana_dir / "train"
    checkpoint = runs["UNet"] / "UNet_best_ckpt.pth"
    submission = tmp_path / "submission.csv"
    assert SegOnCarvanaEvaluator.main(["--model_path", checkpoint, "--input_dir", photos, "--submission", submission]) == 0
    with open(submission, newline="") as handle:
        evaluator_masks = list(csv.reader(handle))[1:]
    result = run_isolated(script, exported["UNet", "onnx"][0], photos, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    example_masks = [line.split(",") for line in result.stdout.splitlines()]
    assert [name for name, _ in example_masks] == [name for name, _ in evaluator_masks]
    differing = total = 0
    for (_, ours), (_, theirs) in zip(example_masks, evaluator_masks):
        shape = (48, 64)
        differing += int((rle_decode(ours, shape) != rle_decode(theirs, shape)).sum())
        total += shape[0] * shape[1]
    # Float rounding (onnxruntime's kernels, numpy's interpolation) may flip a pixel whose probability
    # is the threshold to the 6th decimal; none did here.
    assert differing <= total * 1e-4, f"{differing} of {total} pixels differ"
    print(f"runtime example: {differing} of {total} mask pixels differ from the evaluator's", file=sys.__stdout__)
    assert np.mean([bool(mask) for _, mask in example_masks]) > 0.5  # the masks are not empty
