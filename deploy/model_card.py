"""model_card.json: what a runtime needs to use an exported model without this project (its input,
the preprocessing that makes the input from an image file, what its output means) and where it
came from (the checkpoint, the run's metrics, how closely the export reproduces PyTorch).
The task's part comes from the evaluator's `deployment_card()`."""
import hashlib
import platform

import torch



def model_card(evaluator, kind, target, samples, outputs, check):
    from deploy.exporting import OPSET
    checkpoint, run_metrics = evaluator.checkpoint, evaluator.run_folder.read_json("metrics.json") or {}
    config = checkpoint["config"]
    card = {
        "file": target.name,
        "format": {"onnx": f"ONNX, opset {OPSET}: run it with onnxruntime",
                   "pt2": "torch.export program: torch.export.load(path).module()"}[kind],
        "task": checkpoint["task"], "model_type": config.get("model_type"),
        "input": {"name": "images", "shape": ["batch", *samples.shape[1:]], "dtype": "float32", "layout": "NCHW"},
        "output": {"name": "logits", "shape": ["batch", *outputs.shape[1:]], "dtype": "float32"},
        **evaluator.deployment_card(),
        "checkpoint": {"path": str(evaluator.checkpoint_path.resolve()), "sha256": sha256(evaluator.checkpoint_path),
                       "weights": evaluator.weights, "epoch": checkpoint.get("epoch"),
                       "best_epoch": checkpoint.get("best_epoch")},
        "metrics": {"monitor": config.get("monitor"), "best_value": checkpoint.get("best_metric"),
                    "best_epoch": checkpoint.get("best_epoch"), "test": run_metrics.get("test")},
        "check": check,
        "exported_with": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if kind == "onnx":
        card["opset"] = OPSET
        import onnxruntime
        card["exported_with"]["onnxruntime"] = onnxruntime.__version__
    return card


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
