"""Every call the benchmark makes into the toolkit's trainers, so that a change of their API is
adapted here and nowhere else: a trainer built from its command line and set up for epochs run
outside fit(), one such epoch, fit() with turns taken around its epochs and what the finished run
reports, a whole Carvana run, a Carvana model alone, a task set up as its evaluator predicts, and
Kaggle's submission pipeline in a child process (PREDICT_CHILD).
"""
import contextlib
import importlib
import io
import json
import subprocess
import sys
import time

from measure import ROOT, synchronize

TRAINERS = {"vanilla": ("trainer_vanilla", "VanillaTrainer"),
            "carvana": ("trainer_seg_on_carvana", "SegOnCarvanaTrainer")}
EVALUATORS = {"vanilla": ("eval_vanilla", "VanillaEvaluator"),
              "carvana": ("eval_seg_on_carvana", "SegOnCarvanaEvaluator")}


def trainer_class(task):
    """The trainer class of `task` ("vanilla" or "carvana"), imported when first needed."""
    module, name = TRAINERS[task]
    return getattr(importlib.import_module(module), name)


def parse_error(task, argv):
    """What the task's parser says against `argv`, or None when it accepts it."""
    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint):
            trainer_class(task).build_parser().parse_args([str(arg) for arg in argv])
    except SystemExit:
        return complaint.getvalue().strip() or "refused"
    return None


# ---------------------------------------------------------------------------- epochs outside fit()

def trainer_for_turns(task, argv):
    """A trainer of `task` on `argv`, set up for train_turn(): (trainer, seconds of its data set-up,
    which with --cache memory is the cache's first fill)."""
    base = trainer_class(task)

    class Timed(base):
        def setup_data(self, split=None):
            start = time.perf_counter()
            super().setup_data(split)
            self.data_seconds = time.perf_counter() - start

    args, _ = base.parse(argv)
    trainer = Timed(args)
    trainer.setup()
    return trainer, trainer.data_seconds


def train_turn(trainer):
    """One training epoch, then the epoch's bookkeeping without validation; returns the epoch's seconds."""
    synchronize(trainer.device)
    start = time.perf_counter()
    trainer.train_epoch()
    synchronize(trainer.device)
    seconds = time.perf_counter() - start
    monitor = trainer.args.monitor
    trainer.progress.end_epoch({"epoch": trainer.progress.epoch + 1, monitor: 0.0}, monitor)
    return seconds


def train_set(trainer):
    return trainer.datasets["train"]


def close(trainer):
    trainer.close()


# ---------------------------------------------------------------------------- whole runs

def fit_vanilla(argv, around_train_epoch):
    """VanillaTrainer.fit() on `argv`, each training epoch run as `around_train_epoch(train_epoch)`;
    returns the finished trainer."""
    base = trainer_class("vanilla")

    class TakingTurns(base):
        def train_epoch(self):
            return around_train_epoch(super().train_epoch)

    args, resume_checkpoint = base.parse(argv)
    trainer = TakingTurns(args, resume_checkpoint)
    trainer.fit()
    return trainer


def finished_run(trainer):
    """What a fitted trainer reports: each epoch's train_time_s from metrics.json, and its data sizes."""
    history = json.loads((trainer.run.path / "metrics.json").read_text())["history"]
    return {"train_time_s": [record["train_time_s"] for record in history],
            "train_samples": len(trainer.datasets["train"]), "train_steps": len(trainer.loaders["train"]),
            "eval_samples": len(trainer.datasets["test"])}


def evaluate_test(trainer):
    trainer.evaluate("test")


def train_carvana(argv):
    """A whole run of SegOnCarvanaTrainer's command line."""
    if trainer_class("carvana").main(argv) != 0:
        raise RuntimeError(f"training the Carvana model failed: {argv}")


def carvana_model(argv):
    """The model SegOnCarvanaTrainer builds from `argv`, in eval mode, and its device (no data loaded)."""
    base = trainer_class("carvana")
    args, _ = base.parse(argv)
    task = base(args)
    task.setup_runtime()
    task.setup_model()
    return task.eval_model.eval(), task.device


def inference_runner(task, argv):
    """A Runner (runner.py) of the task `task`'s evaluator predicts with, on the evaluator's options
    parsed from `argv` (the others at the run's defaults), with its device and model (seeded weights,
    no data): its `eval_model`, `autocast()`, `to_device()` and task's `predict_batch` are what
    `evaluate()` runs."""
    from runner import Runner
    module, name = EVALUATORS[task]
    evaluator = getattr(importlib.import_module(module), name)
    args = evaluator.build_parser().parse_args([str(arg) for arg in argv])
    runner = type("InferenceRunner", (Runner,), {"task_class": evaluator.task_class})(args)
    runner.setup_runtime()
    runner.setup_model()
    return runner


# ---------------------------------------------------------------------------- the submission pipeline

PREDICT_CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
from eval_seg_on_carvana import SegOnCarvanaEvaluator
evaluator = SegOnCarvanaEvaluator({argv!r})
with evaluator.output_folder():
    result = evaluator.run()
print("PREDICT_SECONDS", result["seconds"])  # the streaming pass: decode, model, encode, write
print("PEAK_RSS_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def predict_child(argv, environment):
    """The submission pipeline in a fresh process: (seconds of its pass over the images, peak RSS MiB)."""
    result = subprocess.run([sys.executable, "-c", PREDICT_CHILD.format(root=str(ROOT), argv=[str(a) for a in argv])],
                            cwd=ROOT, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the prediction pipeline failed:\n{result.stderr[-3000:]}")
    values = dict(line.split() for line in result.stdout.splitlines() if line.startswith(("PREDICT_", "PEAK_")))
    return float(values["PREDICT_SECONDS"]), float(values["PEAK_RSS_MIB"])
