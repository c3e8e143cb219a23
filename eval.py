"""EvaluatorBase: evaluate a trained checkpoint on a split of its run.

    python eval_vanilla.py --model_path Results/Vanilla/<ts>/Vanilla_best_ckpt.pth [--split val] [--tag T]

Everything else comes from the checkpoint's saved options and the run folder's split.json. The
options that apply to evaluation (data paths, batch size, devices, AMP, the evaluator's own) may
override the saved ones; a training option or one that defines the split is refused, naming it.
Each evaluation writes its own folder, `<run>/eval/<split>[_<tag>]`: evaluating `test` and then
`val` keeps both, and evaluating the same split again replaces its results only once the new
evaluation has finished, keeping the earlier `--viz` pictures unless it draws its own (an explicit
--save_path is written into as it is). It runs `evaluate()` (runner.py), the loop the trainer tests
with, so its numbers equal the test metrics the trainer wrote for the same checkpoint and weights. A
checkpoint with EMA weights (--ema_decay) is evaluated with them unless --weights raw is given; the
trainer tested them only if its monitor was on them (val_ema/...). Hooks a task evaluator may
override:

    add_eval_arguments(parser)    classmethod: the evaluator's own options
    on_batch(batch, outputs, indices)
                                  each evaluated batch; `indices` are the rows' positions in the
                                  evaluated split (visualisation, per-sample results)
    results()                     -> dict merged into metrics.json (per-sample lists, ...)
    finish()                      after the last batch, before metrics.json (pictures of the whole split)
    export_samples()              -> (a batch of real inputs as the model takes them, where they come
                                     from): what --export checks the exported model on (default: the
                                     first test batch of the run's split)
    deployment_card()             -> dict for the exported model's card (preprocessing, classes, ...)
    run()                         the whole evaluation, for modes other than a split
    output_name()                 the output folder's name (default: the split, and the tag)
"""
import argparse
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from cli.arguments import json_value, merge_options, task_parser
from cli.config_file import config_file_in, read_config_file
from cli.options import EVALUATION, add_flag, add_option, explicit_options, options_where, positive_int
from deploy.exporting import add_export_options
from runner import Runner
from state.checkpoint import find_checkpoint, read_checkpoint, weights_of
from state.run_folder import RunFolder
from utils.atomic import write_json_atomic
from utils.errors import UserError, run_cli, show_tracebacks
from utils.signals import sigterm_as_exit


class EvaluatorBase(Runner):
    """Evaluates a checkpoint of the task named by `task_class` (task.py)."""

    @classmethod
    def build_parser(cls):
        parser = task_parser(cls.task_class,
                             f"Evaluate a checkpoint of the {cls.task_class.name} task on a split of its run.")
        refused = cls.refused_options(parser)
        for action in parser._actions:
            if action.dest in refused:
                action.help = argparse.SUPPRESS  # accepted by the parser only to be refused by name
        group = parser.add_argument_group("evaluation")
        add_option(group, "--save_path", rules=EVALUATION, type=Path, default=None,
                   help="output folder (default <run folder>/eval/<split>[_<tag>])")
        add_option(group, "--split", rules=EVALUATION, choices=("test", "val"), default="test",
                   help="which part of the run's split")
        add_option(group, "--tag", rules=EVALUATION, type=_tag, default=None,
                   help="a name for this evaluation, added to its folder's: <split>_<tag>")
        add_option(group, "--weights", rules=EVALUATION, choices=("raw", "ema"), default=None,
                   help="the trained weights or their average (--ema_decay); default: the average when the "
                        "checkpoint has one")
        add_flag(group, "--viz", EVALUATION, help="write pictures of the predictions to <save_path>/viz")
        add_option(group, "--n_snap", rules=EVALUATION, type=positive_int, default=10,
                   help="with --viz: every N-th sample")
        cls.add_eval_arguments(parser)
        add_export_options(parser)
        return parser

    @staticmethod
    def refused_options(parser):
        """{option: why the evaluator refuses it}: the training's options, and the split's."""
        training = "is a training option; the evaluator uses the checkpoint's value"
        split = "defines the split, which the evaluator reads from the run's split.json"
        return {**{name: training for name in options_where(parser, lambda rules: rules.training)},
                **{name: split for name in options_where(parser, lambda rules: rules.split)}}

    @classmethod
    def add_eval_arguments(cls, parser):
        """Add the evaluator's own options."""

    @classmethod
    def main(cls, argv=None):
        def run(argv):
            evaluator = cls(argv)
            with sigterm_as_exit(), evaluator.output_folder():
                if evaluator.args.export:
                    evaluator.export()
                else:
                    evaluator.run()
            return 0
        return run_cli(run, argv)

    @classmethod
    def parse(cls, argv):
        """The checkpoint's options, overridden by those of a --config file and then of the command line
        that apply to evaluation. A file may also repeat the run's training options (its own config file
        or config.json), which must then equal the checkpoint's. Returns (options, checkpoint path, checkpoint)."""
        parser, config = cls.build_parser(), config_file_in(argv)
        refused = cls.refused_options(parser)
        from_file = read_config_file(config, parser) if config is not None else {}
        parser.set_defaults(**{name: value for name, value in from_file.items() if name not in refused})
        args = parser.parse_args(argv)
        show_tracebacks(args.debug)
        for name in sorted(explicit_options(parser, argv) & set(refused)):
            raise UserError(f"--{name} {refused[name]}")
        if args.model_path is None:
            raise UserError("--model_path is required: the checkpoint to evaluate, "
                            "e.g. Results/<proj_name>/<timestamp>/<model_type>_best_ckpt.pth")
        path = find_checkpoint(args.model_path, kind="best")
        checkpoint = read_checkpoint(path, cls.task_class.name)
        saved = checkpoint["config"]
        for name in sorted(set(from_file) & set(refused)):
            if json_value(from_file[name]) != saved.get(name):
                raise UserError(f"--config {config} sets {name} {json_value(from_file[name])}, the checkpoint "
                                f"{saved.get(name)}: {name} {refused[name]}; leave it out of the file")
        given_in_file = set(from_file) - set(refused)
        return merge_options(parser, argv, args, saved, also_given=given_in_file), path, checkpoint

    def __init__(self, argv):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("the evaluator runs in one process: start it with python, not torchrun "
                            "(its output files have one writer)")
        args, path, self.checkpoint = self.parse(sys.argv[1:] if argv is None else [str(arg) for arg in argv])
        args.model_path, args.pretrained, args.resume = None, False, None  # the weights are the checkpoint's
        has_ema = self.checkpoint.get("ema") is not None
        if args.weights == "ema" and not has_ema:
            raise UserError(f"--weights ema: {path} holds no averaged weights (the run had no --ema_decay)")
        self.weights = args.weights or ("ema" if has_ema else "raw")
        self.checkpoint_path = path
        self.run_folder = RunFolder(path.parent, args.model_type, writes=False)
        super().__init__(args)
        self.save_path = Path(args.save_path) if args.save_path else self.run_folder.path / "eval" / self.output_name()

    def output_name(self):
        return self.args.split + (f"_{self.args.tag}" if self.args.tag else "")

    @contextmanager
    def output_folder(self):
        """Around the evaluation: a default output folder is written under a temporary name and
        replaces the previous one of the same name only when the evaluation has finished; a failed
        or interrupted one leaves the previous results as they were."""
        if self.args.export:  # the export writes its own files, each atomically
            yield
            return
        if self.args.save_path is not None:
            yield
            self.log.info(f"results in {self.save_path}")
            return
        final = self.save_path
        self.save_path = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        try:
            shutil.rmtree(self.save_path, ignore_errors=True)
            yield
            if self.save_path.is_dir():
                previous = final.with_name(f".{final.name}.old-{os.getpid()}")
                if (final / "viz").is_dir() and not (self.save_path / "viz").exists():  # not asked to replace
                    (final / "viz").rename(self.save_path / "viz")
                    self.log.info(f"kept the pictures of the earlier evaluation in {final / 'viz'}")
                if final.exists():
                    final.rename(previous)
                self.save_path.rename(final)
                shutil.rmtree(previous, ignore_errors=True)
                self.log.info(f"results in {final}")
        finally:
            shutil.rmtree(self.save_path, ignore_errors=True)
            self.save_path = final

    def on_batch(self, batch, outputs, indices):
        """Called for each evaluated batch."""

    def results(self):
        return {}

    def finish(self):
        """After the last evaluated batch."""

    def setup(self, data=True):
        """Device, data with the run's split (unless `data` is False), the model with the checkpoint's
        weights, and the output folder."""
        split = self.run_folder.read_json("split.json") if data else None
        if data and split is None:
            self.log.warning(f"{self.run_folder.path / 'split.json'} not found: the split is recomputed "
                             "from the saved seed and options")
        weights = weights_of(self.checkpoint, ema=self.weights == "ema")
        self.setup_for_evaluation(weights, self.checkpoint_path, split, data)
        try:
            self.save_path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create --save_path {self.save_path}: {error.strerror or error}") from None

    def export(self):
        """The checkpoint's model for a runtime without this project (deploy/exporting.py)."""
        from deploy.exporting import export_checkpoint
        return export_checkpoint(self)

    def export_samples(self):
        split = self.run_folder.read_json("split.json")
        if split is None:
            raise UserError(f"{self.run_folder.path / 'split.json'} not found: no test samples to check the export on")
        self.setup_data(split)
        _, batch = next(iter(self.loaders["test"]))
        inputs = self.task.prepare_batch(self.to_device(batch), False, None)
        return (inputs[0] if isinstance(inputs, (tuple, list)) else inputs), "the first test batch of the run"

    def deployment_card(self):
        return {}

    def run(self):
        self.setup()
        phase = self.args.split
        metrics, totals = self.evaluate(phase, on_batch=self.on_batch)
        self.task.report(phase, totals, None, None)
        self.finish()
        for name, value in metrics.items():
            print(f"{name}: {value:.6f}")
        summary = {"checkpoint": str(self.checkpoint_path), "epoch": self.checkpoint.get("epoch"),
                   "best_epoch": self.checkpoint.get("best_epoch"),
                   "split": phase, "tag": self.args.tag, "weights": self.weights,
                   "samples": len(self.datasets[phase]),
                   "metrics": metrics, **self.results()}
        write_json_atomic(summary, self.save_path / "metrics.json")
        return metrics


def _tag(text):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(f"expected letters, digits, '.', '_' or '-' (a folder name), got {text!r}")
    return text


if __name__ == "__main__":
    sys.exit("eval.py holds EvaluatorBase; run a task script such as eval_vanilla.py")
