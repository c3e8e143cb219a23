"""--logger wandb: the run's options, scalars, images and test results in a W&B run.

A W&B run in project `<proj_name>`, its files in `<run folder>/wandb/` (or $WANDB_DIR); offline unless
the user has logged in (WANDB_API_KEY, `wandb login`) or set WANDB_MODE. Scalars are plotted
against `epoch` or `global_step`, the test metrics go to the run summary. W&B cannot be asked what
it holds, and writes its files in the background: a hard kill loses what it had not written yet.
Needs `pip install wandb`.
"""
import netrc
import os
from pathlib import Path

from utils.errors import UserError, import_optional

STEP_AXIS = "global_step"  # the x axis of `train/step_*` scalars; every other scalar is per epoch


def axis_of(tag):
    return STEP_AXIS if tag.startswith("train/step_") else "epoch"


def wandb_logged_in():
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    name = "wandb"
    requires = ("wandb", "wandb")  # (module, pip package)
    takes_images = True

    def __init__(self, options, run_path, run_id=None, resumed=False):
        wandb = import_optional(*self.requires, f"--logger {self.name}")
        if resumed and run_id is None:
            raise UserError("the checkpoint has no W&B run to continue; resume without wandb in --logger")
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        settings = wandb.Settings(console="off", quiet=True, x_disable_stats=True, save_code=False)
        try:
            self.run = wandb.init(project=options.get("proj_name") or "Default", name=Path(run_path).name,
                                  dir=os.environ.get("WANDB_DIR") or str(run_path), config=options, id=run_id, mode=mode, settings=settings,
                                  resume="must" if resumed and mode == "online" else "allow" if resumed else None)
        except Exception as error:  # W&B's errors are its own classes; none is ours to handle
            raise UserError(f"--logger wandb: {type(error).__name__}: {str(error).splitlines()[0]}") from None
        self.run_id, self.wandb, self.defined, self.mode = self.run.id, wandb, set(), mode
        for axis in ("epoch", STEP_AXIS):
            self.run.define_metric(axis)

    @property
    def where(self):
        """Where the run's values go, for the log."""
        return f"run {self.run_id} ({self.mode}) in {self.run.dir}"

    def log(self, events):
        rows = {}  # (axis, step) -> values, in the order logged
        for kind, *content in events:
            if kind == "summary":  # the test metrics and the monitor's best, as TensorBoard's HPARAMS has them
                self.run.summary.update({name.removeprefix("hparam/"): value for name, value in content[0].items()})
                continue
            tag, step, value = content
            axis = axis_of(tag)
            if tag not in self.defined:
                self.run.define_metric(tag, step_metric=axis)
                self.defined.add(tag)
            rows.setdefault((axis, step), {})[tag] = value if kind == "scalar" else self.wandb.Image(value)
        for (axis, step), values in rows.items():
            self.run.log({axis: step, **values})

    def close(self, status):
        self.run.finish(exit_code=0 if status == "finished" else 1)
