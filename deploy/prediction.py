"""What the evaluators' prediction modes share: their options, their output folder, and the record of
what decides the rows of a prediction file (a partial file continues only if it is unchanged)."""
from contextlib import contextmanager
from pathlib import Path

from cli.options import EVALUATION, add_option, positive_int


def add_prediction_options(group, inputs):
    """--input_dir (a folder of `inputs`) and --progress_every."""
    add_option(group, "--input_dir", rules=EVALUATION, type=Path, default=None,
               help=f"predict {inputs} instead of evaluating a split")
    add_option(group, "--progress_every", rules=EVALUATION, type=positive_int, default=1000,
               help="with --input_dir and no terminal: a progress line every N images (and every 30 s)")


def made_by(evaluator, **settings):
    """What decides a prediction's rows: the checkpoint (path, size, time), the weights, the input,
    the numerics, and the task's `settings`."""
    args = evaluator.args
    stat = evaluator.checkpoint_path.stat()
    return {"checkpoint": str(evaluator.checkpoint_path.resolve()), "checkpoint_size": stat.st_size,
            "checkpoint_mtime_ns": stat.st_mtime_ns, "weights": evaluator.weights, **settings,
            "input_dir": str(args.input_dir.resolve()), "amp": args.amp and args.amp_dtype,
            "channels_last": args.channels_last}


class FolderPrediction:
    """An evaluator (mixed in before EvaluatorBase) that predicts a folder with --input_dir: its CSV is
    written as it goes, to continue after an interruption, into the output folder itself, not into a
    temporary one that an interruption would remove."""

    @contextmanager
    def output_folder(self):
        if self.args.input_dir is None:
            with super().output_folder():
                yield
            return
        yield
        if self.save_path.is_dir() and any(self.save_path.iterdir()):  # else the prediction's last line names it
            self.log.info(f"results in {self.save_path}")
