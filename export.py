"""Export a trained checkpoint for a runtime without this project: ONNX or torch.export (.pt2).

    python export.py --model_path Results/SegOnCarvana/<ts>/UNet_best_ckpt.pth --format onnx
    python export.py --model_path Results/Vanilla/<ts>/Vanilla_best_ckpt.pth --format pt2 --weights ema

Writes `<run>/export/<format>_<weights>/model.<format>` and `model_card.json` (or into --save_path),
checked on real samples against the PyTorch model (deploy/exporting.py). It is the task's evaluator
with `--export FORMAT`: the evaluator's options (--weights, --save_path, --input_dir for the samples
to check on, --tolerance) apply; the task is the one the checkpoint records.
"""
import importlib
import sys

from deploy.exporting import FORMATS
from state.checkpoint import find_checkpoint, load_checkpoint
from utils.errors import UserError, run_cli

EVALUATORS = {"Vanilla": ("eval_vanilla", "VanillaEvaluator"),
              "SegOnCarvana": ("eval_seg_on_carvana", "SegOnCarvanaEvaluator"),
              "Regression": ("eval_regression", "RegressionEvaluator")}
USAGE = "usage: python export.py --model_path RUN/<model_type>_best_ckpt.pth --format onnx|pt2 [evaluator options]"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    if argv in ([], ["-h"], ["--help"]):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    return run_cli(export, argv)


def export(argv):
    kind, rest = value_of("--format", argv)
    if kind not in FORMATS:
        raise UserError(f"--format {kind or '(missing)'}: expected one of {', '.join(sorted(FORMATS))}")
    if "--export" in rest:
        raise UserError("--export is what --format sets; give --format only")
    model_path, _ = value_of("--model_path", rest)
    if model_path is None:
        raise UserError("--model_path is required: the checkpoint to export, "
                        "e.g. Results/<proj_name>/<timestamp>/<model_type>_best_ckpt.pth")
    task = load_checkpoint(find_checkpoint(model_path, kind="best")).get("task")
    if task not in EVALUATORS:
        raise UserError(f"{model_path} is not a checkpoint of a task this script knows (found task {task!r}; "
                        f"expected one of {', '.join(EVALUATORS)})")
    module, name = EVALUATORS[task]
    evaluator = getattr(importlib.import_module(module), name)
    return evaluator.main([*rest, "--export", kind])


def value_of(option, argv):
    """(the value of `option` in `argv`, as `--option V` or `--option=V`, or None; argv without it)."""
    for position, word in enumerate(argv):
        if word == option:
            return (argv[position + 1] if position + 1 < len(argv) else None), argv[:position] + argv[position + 2:]
        if word.startswith(option + "="):
            return word.split("=", 1)[1], argv[:position] + argv[position + 1:]
    return None, argv


if __name__ == "__main__":
    sys.exit(main())
