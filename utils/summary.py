"""What a model is: its parameter counts, its size, and a table of its top-level modules.

    from utils.summary import count_parameters
    total, trainable = count_parameters(model)
"""
import torch


def count_parameters(module):
    """(total, trainable) numbers of parameters of `module`; a parameter shared by several
    submodules counts once."""
    parameters = list(module.parameters())  # parameters() yields each tensor once
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


def size_mb(module):
    """Bytes of the parameters and buffers of `module`, in MiB."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def summarize(model, run_forward=None):
    """The summary of `model`: {"parameters", "trainable_parameters", "size_mb", "modules": rows}
    with a row (name, type, parameters, output shape) per direct submodule (the submodules of a
    Sequential, ModuleList or ModuleDict take its place). `run_forward()`, if
    given, runs one forward pass of the model: each row then gets the shape of its output (None
    where nothing was seen). It runs under no_grad and restores the random state."""
    total, trainable = count_parameters(model)
    children = list(_rows_of(model))
    shapes = {}
    if run_forward is not None:
        hooks = [child.register_forward_hook(_recorder(shapes, name)) for name, child in children]
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(model)):
                run_forward()
        finally:
            for hook in hooks:
                hook.remove()
    rows = [{"name": name, "type": type(child).__name__, "parameters": count_parameters(child)[0],
             "output_shape": shapes.get(name)} for name, child in children]
    return {"parameters": total, "trainable_parameters": trainable, "size_mb": round(size_mb(model), 3),
            "modules": rows}


def describe(model, forward, log):
    """The summary of `model` (parameters, size, a row per top-level module with its output shape in
    `forward()`, run in evaluation mode so that no BatchNorm statistics or dropout draws change the
    run), and the model's inputs in that pass (for TensorBoard's graph; None if it failed)."""
    inputs = []
    capture = model.register_forward_pre_hook(lambda module, args: inputs.append(args) if not inputs else None)
    model.eval()
    try:
        summary = summarize(model, forward)
    except Exception as error:  # a task's forward that fails shows in training, with its traceback
        log.warning(f"model summary without output shapes: the forward pass of two samples failed "
                    f"({type(error).__name__}: {error})")
        summary, inputs = summarize(model), []
    finally:
        capture.remove()
    return summary, inputs[0] if inputs else None


def format_summary(summary):
    """The summary as a text table, for the log."""
    rows = [(row["name"], row["type"], f"{row['parameters']:,}", _shape_text(row["output_shape"]))
            for row in summary["modules"]]
    header = ("module", "type", "parameters", "output shape")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    frozen = summary["parameters"] - summary["trainable_parameters"]
    lines.append(f"{summary['parameters']:,} parameters ({summary['trainable_parameters']:,} trainable"
                 f"{f', {frozen:,} frozen' if frozen else ''}), {summary['size_mb']:.2f} MB")
    return "\n".join(lines)


def _rows_of(module, prefix=""):
    for name, child in module.named_children():
        if isinstance(child, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)):
            yield from _rows_of(child, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", child


def _recorder(shapes, name):
    def record(module, inputs, output):
        shapes.setdefault(name, _shape(output))  # the first call: a module reused later keeps its first output
    return record


def _shape(output):
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, (list, tuple)):
        return [_shape(item) for item in output]
    if isinstance(output, dict):
        return {key: _shape(item) for key, item in output.items()}
    return None


def _shape_text(shape):
    if shape is None:
        return "-"
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{key}: {_shape_text(item)}" for key, item in shape.items()) + "}"
    if shape and all(isinstance(item, int) for item in shape):
        return "x".join(map(str, shape))
    if not shape:
        return "scalar"
    return "[" + ", ".join(map(_shape_text, shape)) + "]"


def _cuda_devices(model):
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
