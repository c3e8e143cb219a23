"""EvaluatorBase: evaluate a trained checkpoint on the held-out test split of its run.

    python eval_vanilla.py --model_path Results/Vanilla/<ts>/Vanilla_best_ckpt.pth

Everything else comes from the checkpoint's saved options and the run folder's split.json;
any option given on the command line overrides the saved one (`--data_dir`, `--batch_size`, ...).
It runs the task's own `evaluate()` (task.py), the loop the trainer tests with, so its numbers
equal the test metrics the trainer wrote for the same checkpoint. Hooks a task evaluator may
override:

    add_eval_arguments(parser)    classmethod: the evaluator's own options
    on_batch(batch, outputs, indices)
                                  each evaluated batch; `indices` are the rows' positions in the
                                  evaluated split (visualisation, per-sample results)
    results()                     -> dict merged into metrics.json (per-sample lists, ...)
    run()                         the whole evaluation, for modes other than the test split
"""
import sys
from pathlib import Path

from utils.arguments import merge_options
from utils.checkpoint import load_checkpoint, write_json_atomic
from utils.errors import UserError, run_cli
from utils.options import add_flag, positive_int
from utils.run_folder import RunFolder, check_checkpoint, find_checkpoint


class EvaluatorBase:
    trainer_class = None  # the task's TrainerBase subclass

    @classmethod
    def build_parser(cls):
        parser = cls.trainer_class.build_parser()
        parser.description = f"Evaluate a checkpoint of {cls.trainer_class.__name__} on its run's test split."
        group = parser.add_argument_group("evaluation")
        group.add_argument("--save_path", type=Path, default=None, help="output folder (default <run folder>/eval)")
        group.add_argument("--split", choices=("test", "val"), default="test", help="which part of the run's split")
        add_flag(group, "--viz", help="write pictures of the predictions to <save_path>/viz")
        group.add_argument("--n_snap", type=positive_int, default=10, help="with --viz: every N-th sample")
        cls.add_eval_arguments(parser)
        return parser

    @classmethod
    def add_eval_arguments(cls, parser):
        """Add the evaluator's own options."""

    @classmethod
    def main(cls, argv=None):
        def run(argv):
            cls(argv).run()
            return 0
        return run_cli(run, argv)

    def __init__(self, argv):
        parser = self.build_parser()
        args = parser.parse_args(argv)
        if args.model_path is None:
            raise UserError("--model_path is required: the checkpoint to evaluate, "
                            "e.g. Results/<proj_name>/<timestamp>/<model_type>_best_ckpt.pth")
        path = find_checkpoint(args.model_path, kind="best")
        self.checkpoint = check_checkpoint(load_checkpoint(path), path, self.trainer_class.__name__)
        args = merge_options(parser, argv, args, self.checkpoint["config"])
        args.model_path, args.pretrained, args.resume = None, False, None  # the weights are the checkpoint's
        self.checkpoint_path = path
        self.run_folder = RunFolder(path.parent, args.model_type, writes=False)
        self.save_path = Path(args.save_path) if args.save_path else self.run_folder.path / "eval"
        self.args = args
        self.trainer = self.trainer_class(args)
        self.log = self.trainer.log

    def on_batch(self, batch, outputs, indices):
        """Called for each evaluated batch."""

    def results(self):
        return {}

    def setup(self, data=True):
        """Device, data with the run's split (unless `data` is False), the model with the checkpoint's
        weights, and the output folder."""
        split = self.run_folder.read_json("split.json") if data else None
        if data and split is None:
            self.log.warning(f"{self.run_folder.path / 'split.json'} not found: the split is recomputed "
                             "from the saved seed and options")
        self.trainer.setup_for_evaluation(self.checkpoint["model"], self.checkpoint_path, split, data)
        try:
            self.save_path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create --save_path {self.save_path}: {error.strerror or error}") from None

    def run(self):
        self.setup()
        phase = self.args.split
        metrics, totals = self.trainer.evaluate(phase, on_batch=self.on_batch)
        self.trainer.report(phase, totals, None)
        for name, value in metrics.items():
            print(f"{name}: {value:.6f}")
        summary = {"checkpoint": str(self.checkpoint_path), "epoch": self.checkpoint.get("best_epoch"),
                   "split": phase, "samples": len(self.trainer.datasets[phase]), "metrics": metrics, **self.results()}
        write_json_atomic(summary, self.save_path / "metrics.json")
        self.log.info(f"wrote {self.save_path / 'metrics.json'}")
        return metrics


if __name__ == "__main__":
    sys.exit("eval.py holds EvaluatorBase; run a task script such as eval_vanilla.py")
