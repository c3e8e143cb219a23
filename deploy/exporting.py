"""Export a checkpoint's model for a runtime without this project: ONNX (for onnxruntime) or a
torch.export program (.pt2), each checked against the PyTorch model on real samples before it is kept.

    python export.py --model_path RUN/UNet_best_ckpt.pth --format onnx [--weights raw|ema] [--tolerance 1e-4]

What is exported is the model as the evaluator predicts with it (`InferenceModel`): the task's
`predict_batch` in evaluation mode, so UNet++ with deep supervision gives its inference head and
--tta hflip is inside the graph. It takes normalised float32 images NCHW with a dynamic batch axis
(fixed height and width: the run's image size) and returns logits. Both formats are captured by
torch.export, so a model that cannot be exported fails the same way in both, in one line naming
the operator or the module. ONNX uses torch.onnx's torch.export-based exporter (the default since
torch 2.9; the TorchScript-based one is deprecated, and its tracer would silently keep one branch
of the model's Python control flow) at opset OPSET. The file is written under a temporary name,
loaded back and run on the samples at their batch size and at batch 1; it replaces the
destination only when every output is within --tolerance of PyTorch's.
"""
import logging
import os
import re
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import torch
from torch import nn

from cli.options import EVALUATION, add_option, positive_float
from state.checkpoint import unwrap, weights_of
from utils.atomic import write_json_atomic
from utils.errors import UserError, import_optional

OPSET = 18  # supported by onnxruntime 1.14 and later
FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2"}


def add_export_options(parser):
    group = parser.add_argument_group("export (export.py)")
    add_option(group, "--export", rules=EVALUATION, choices=sorted(FORMATS), default=None,
               help="write the model for a runtime without this project, checked against PyTorch, with "
                    "model_card.json, to --save_path (default <run>/export/<format>_<weights>)")
    add_option(group, "--tolerance", rules=EVALUATION, type=positive_float, default=1e-4,
               help="with --export: the largest absolute difference of the exported model's outputs from "
                    "PyTorch's that is accepted")


class InferenceModel(nn.Module):
    """The model as the evaluator predicts with it: logits of the task's `predict_batch` (the last
    head of a model that returns several), for a tensor of prepared images."""

    def __init__(self, task, model):
        super().__init__()
        self.task, self.model = task, model

    def forward(self, images):
        outputs = self.task.predict_batch(self.model, images)
        return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs


def export_checkpoint(evaluator):
    """Export the evaluator's checkpoint as --export says; returns the model card."""
    from deploy.model_card import model_card
    args, kind = evaluator.args, evaluator.args.export
    folder = Path(args.save_path) if args.save_path else \
        evaluator.run_folder.path / "export" / f"{kind}_{evaluator.weights}"
    runtime = check_runtime(kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the export folder {folder}: {error.strerror or error}") from None
    evaluator.setup_for_evaluation(weights_of(evaluator.checkpoint, ema=evaluator.weights == "ema"),
                                   evaluator.checkpoint_path, data=False)
    model = InferenceModel(evaluator.task, unwrap(evaluator.model).cpu().float()).eval()
    samples, source = evaluator.export_samples()
    samples = samples.detach().cpu().float().contiguous()
    if len(samples) < 2:  # torch.export keeps a batch axis of size 1 fixed
        samples = torch.cat([samples, samples])
    with torch.inference_mode():
        expected = model(samples).float()
    target = folder / FORMATS[kind]
    difference = write_checked(kind, model, samples, expected, target, args.tolerance, runtime)
    check = {"samples": len(samples), "source": source, "max_abs_difference": difference,
             "tolerance": args.tolerance, "batch_sizes": [len(samples), 1]}
    card = model_card(evaluator, kind, target, samples, expected, check)
    write_json_atomic(card, folder / "model_card.json")
    evaluator.log.info(f"exported {args.model_type} ({evaluator.weights} weights) to {target}: its outputs on "
                       f"{len(samples)} samples ({source}) differ from PyTorch's by at most {difference:.2e} "
                       f"(tolerance {args.tolerance:.0e})")
    evaluator.log.info(f"model card: {folder / 'model_card.json'}")
    return card


def check_runtime(kind):
    """The packages a format needs, imported only when it is chosen: onnx, onnxscript (which
    torch.onnx's exporter uses) and onnxruntime for ONNX."""
    if kind != "onnx":
        return None
    import_optional("onnx", "onnx", "--format onnx")
    import_optional("onnxscript", "onnxscript", "--format onnx (torch.onnx's exporter)")
    return import_optional("onnxruntime", "onnxruntime", "--format onnx (checking the exported file)")


def write_checked(kind, model, samples, expected, target, tolerance, runtime):
    """Export `model` to a temporary file beside `target`, run it back on `samples` (and on the first
    alone), and move it to `target` when within `tolerance`; returns the largest difference."""
    temporary = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")  # torch.export.load wants .pt2
    try:
        with quiet_torch():
            try:
                (export_onnx if kind == "onnx" else export_pt2)(model, samples, temporary)
            except UserError:
                raise
            except Exception as error:
                raise export_failure(error, model, kind) from None
        run = onnx_runner(runtime, temporary) if kind == "onnx" else pt2_runner(temporary)
        difference = max(float((run(samples) - expected).abs().max()),
                         float((run(samples[:1]) - expected[:1]).abs().max()))
        if not difference <= tolerance:
            raise UserError(f"the exported {kind} model's outputs differ from PyTorch's by {difference:.2e}, more "
                            f"than --tolerance {tolerance:.0e}; nothing was kept (raise --tolerance to accept it)")
        os.replace(temporary, target)
    except OSError as error:
        raise UserError(f"cannot write {target}: {error.strerror or error}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return difference


def export_onnx(model, samples, path):
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(model, (samples,), dynamo=True, opset_version=OPSET, input_names=["images"],
                                output_names=["logits"], dynamic_shapes={"images": {0: batch}}, verbose=False)
    program.save(str(path))


def export_pt2(model, samples, path):
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (samples,), dynamic_shapes={"images": {0: batch}})
    torch.export.save(program, str(path))


def onnx_runner(onnxruntime, path):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0]).float()


def pt2_runner(path):
    module = torch.export.load(str(path)).module()

    def run(images):
        with torch.inference_mode():
            return module(images).float()
    return run


@contextmanager
def quiet_torch():
    """torch.export and torch.onnx log the graphs they fail on and print their steps: the failure is
    reported in one line instead."""
    logging.disable(logging.CRITICAL)  # torch's loggers have levels and handlers of their own
    try:
        with open(os.devnull, "w") as sink, redirect_stdout(sink), redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def export_failure(error, model, kind):
    """A one-line UserError for a model torch.export cannot capture: the reason, the operator when
    the message names one, and the innermost module of `model` on the failing call's stack."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    texts = [re.sub(r"\x1b\[[0-9;]*m", "", str(item)) for item in chain]
    reason = next((line.strip() for text in reversed(texts) for line in text.splitlines() if line.strip()),
                  type(chain[-1]).__name__)
    operator = next((match.group(0) for text in texts
                     for match in [re.search(r"(?:torch\.ops\.)?aten(?:::|\.)\w+(?:\.\w+)?", text)] if match), None)
    module = failing_module(chain, model)
    return UserError(f"cannot export the model to {kind}: {reason[:300]}" + (f"; operator {operator}" if operator else "")
                     + (f"; in {module}" if module else ""))


def failing_module(chain, model):
    """'module <name> (<class>) at <file>:<line>' of the innermost module of `model` whose forward is
    on the stack of an error of `chain`."""
    names = {id(module): name for name, module in model.model.named_modules()}
    found = None
    for error in chain:
        traceback = error.__traceback__
        while traceback is not None:
            frame = traceback.tb_frame
            owner = frame.f_locals.get("self")
            if id(owner) in names and isinstance(owner, nn.Module):
                name = names[id(owner)] or "the model"
                found = f"module {name} ({type(owner).__name__}) at {Path(frame.f_code.co_filename).name}:{traceback.tb_lineno}"
            traceback = traceback.tb_next
    return found
