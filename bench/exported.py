"""The export section: CPU inference throughput of both tasks' default models, the FashionMNIST MLP
and the Carvana UNet, three ways: PyTorch eager (the module in evaluation mode under
torch.no_grad()), PyTorch as the evaluator predicts (runner.py's evaluate(): torch.inference_mode,
the task's predict_batch, and the run's --channels_last, --amp and --compile, whatever their
defaults are), and onnxruntime running the ONNX file export.py writes (deploy/exporting.py), at
batch 1 and at the evaluator's batch size. The contenders take turns in this process, one timed
block of calls each, in a rotating order; a ratio is the median of the paired blocks' ratios.
Without onnxruntime (or onnx, onnxscript) the section says so and times the two others.
"""
import tempfile
import time
from pathlib import Path

from measure import log, make_row, rates
from toolkit import inference_runner

# The UNet's default architecture (base 32, depth 4) at a quarter of its default 320x480 pixels in
# the full run: at 320x480 a CPU block of batch 8 takes seconds, and the whole section minutes.
EXPORT = {"full": {"carvana_img_size": (160, 240), "repeats": 7, "block_s": 0.5},
          "quick": {"carvana_img_size": (64, 96), "carvana_argv": ["--base_width", "8"], "repeats": 3,
                    "block_s": 0.05}}
ONNX_PACKAGES = "pip install onnx onnxscript onnxruntime"


def export_section(options, scratch):
    """Images/s of each model at batch 1 and at its evaluator's batch size, eager against the
    evaluator's settings and against onnxruntime. The device is the CPU whatever --device says."""
    import torch
    settings = EXPORT["quick" if options.quick else "full"]
    height, width = settings["carvana_img_size"]
    models = {"FashionMNIST MLP": ("vanilla", []),
              f"Carvana UNet at {height}x{width}": ("carvana", ["--img_size", height, width,
                                                                *settings.get("carvana_argv", [])])}
    runtime, missing = onnx_runtime()
    rows, setups, evaluators = [], [], []
    for label, (task, argv) in models.items():
        runner = inference_runner(task, [*argv, "--gpu_devices", "cpu", "--seed", options.seed])
        model_rows, setup = model_section(label, runner, runtime, settings, scratch)
        rows += model_rows
        setups.append(setup)
        evaluators.append(evaluator_settings(runner.args))
    setups += ["both " + evaluators[0]] if len(set(evaluators)) == 1 else \
        [f"{label}: {text}" for label, text in zip(models, evaluators)]
    setups.append(missing or f"onnxruntime {runtime.__version__} with its default threads, "
                  f"torch with {torch.get_num_threads()}")
    setups.append("toolkit column = the row's contender, hand-written column = PyTorch eager "
                  "(eval mode, torch.no_grad()); tk/hand = the contender's ratio to eager")
    return rows, {"train_samples": {}, "eval_samples": {}, "setup": "; ".join(setups),
                  "threads": torch.get_num_threads()}


def onnx_runtime():
    """(onnxruntime, None), or (None, one line saying what to install) when a package ONNX needs is missing."""
    from deploy.exporting import check_runtime
    from utils.errors import UserError
    try:
        return check_runtime("onnx"), None
    except UserError as error:
        line = f"onnxruntime not timed: {error} (all three: {ONNX_PACKAGES})"
        log(line)
        return None, line


def evaluator_settings(args):
    """What the evaluator's settings are, in words, from the options the section ran with."""
    amp = f"autocast {args.amp_dtype}" if args.amp else "fp32 (--amp off)"
    layout = "channels_last" if args.channels_last else "contiguous (--channels_last off)"
    compiled = f"torch.compile {args.compile_backend}" if args.compile else "not compiled (--compile off)"
    return f"evaluator's settings: eval mode, torch.inference_mode, predict_batch, {amp}, {layout}, {compiled}"


def model_section(label, runner, runtime, settings, scratch):
    """The rows of one model: at batch 1 and at the evaluator's batch size, the evaluator's settings
    and onnxruntime against eager."""
    import torch

    from deploy.exporting import InferenceModel
    args = runner.args
    eval_batch = args.eval_batch_size or args.batch_size
    shape = input_shape(runner)
    model = runner.model.eval()
    log(f"export: {label}, input {list(shape)}, batches 1 and {eval_batch}")
    generator = torch.Generator().manual_seed(args.seed)
    samples = torch.rand(max(2, eval_batch), *shape, generator=generator)  # torch.export keeps a batch of 1 fixed
    onnx_run = None
    if runtime is not None:
        onnx_run = exported_runner(InferenceModel(runner.task, model).eval(), samples, runtime, scratch)
    rows = []
    for batch_size in sorted({1, eval_batch}):
        images = samples[:batch_size].contiguous()
        contenders = {"eager": eager(model, images), "evaluator": as_evaluator(runner, images)}
        if onnx_run is not None:
            contenders["onnxruntime"] = lambda images=images: onnx_run(images)
        seconds = take_turns(contenders, settings)
        images_per_s = {name: rates(batch_size * seconds["calls"], values) for name, values in seconds["blocks"].items()}
        for name in contenders:
            if name != "eager":
                rows.append(make_row("export", f"{name} {label} {batch_size}",
                                     f"{label}, batch {batch_size}: {name} images/s vs eager",
                                     {"toolkit": images_per_s[name], "handwritten": images_per_s["eager"]}, "higher"))
    setup = f"{label}: {type(model).__name__}, input {list(shape)}, evaluator batch {eval_batch}"
    return rows, setup


def input_shape(runner):
    """One prepared image's shape, as the task's model takes it."""
    args = runner.args
    if hasattr(args, "img_size"):
        return (args.n_channels, *args.img_size)
    return (1, 28, 28)


def exported_runner(model, samples, runtime, scratch):
    """`model` exported to ONNX as export.py does, checked against PyTorch; returns the onnxruntime runner."""
    import torch

    from deploy.exporting import export_onnx, onnx_runner, quiet_torch
    path = Path(tempfile.mkdtemp(dir=scratch)) / "model.onnx"
    started = time.perf_counter()
    with quiet_torch():
        export_onnx(model, samples, path)
    run = onnx_runner(runtime, path)
    with torch.inference_mode():
        difference = float((run(samples) - model(samples)).abs().max())
    log(f"  exported to ONNX in {time.perf_counter() - started:.1f} s, largest difference from PyTorch {difference:.1e}")
    if not difference <= 1e-3:
        raise RuntimeError(f"the exported model's outputs differ from PyTorch's by {difference:.2e}")
    return run


def eager(model, images):
    import torch

    def call():
        with torch.no_grad():
            return model(images)
    return call


def as_evaluator(runner, images):
    """One batch as runner.evaluate("predict") runs it, from prepared images on the CPU."""
    import torch

    def call():
        with torch.inference_mode():
            batch = runner.to_device(images)
            with runner.autocast():
                return runner.task.predict_batch(runner.eval_model, batch)
    return call


def take_turns(contenders, settings):
    """Seconds of `repeats` timed blocks per contender, each block the same number of calls (enough
    for eager to take `block_s`), the contenders in a rotating order; two untimed calls each first."""
    for call in contenders.values():
        call()
        call()
    calls = max(1, round(settings["block_s"] / min(seconds_of(contenders["eager"]) for _ in range(3))))
    names, blocks = list(contenders), {name: [] for name in contenders}
    for repeat in range(settings["repeats"]):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            started = time.perf_counter()
            for _ in range(calls):
                contenders[name]()
            blocks[name].append(time.perf_counter() - started)
    return {"calls": calls, "blocks": blocks}


def seconds_of(call):
    started = time.perf_counter()
    call()
    return time.perf_counter() - started
