"""training/callbacks.py: the events, in order; a callback's state through a resume; and the README's
wall-clock budget callback, run as the README prints it."""
import re
import signal

import pytest

from helpers import ROOT, load_plain, read_json, refused, run_dirs, train_vanilla
from trainer_vanilla import VanillaTrainer
from training.callbacks import Callback

FLAGS = ["--n_epoch", "2", "--train_val_sample_rate", "0.4", "--test_sample_rate", "0.25", "--dropout", "0.2"]


def readme_callback_example():
    """The names the README's callback example defines, executed from the README's own text."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- tests/test_callbacks.py runs this block -->\n```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def with_callbacks(*extra, base=VanillaTrainer):
    class Trainer(base):
        def build_callbacks(self):
            return [*super().build_callbacks(), *extra]
    return Trainer


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, trainer):
        self.events.append("fit_start")

    def on_step_end(self, trainer):
        self.events.append(f"step {trainer.progress.global_step}")

    def on_validation_end(self, trainer, record, improved):
        self.events.append(f"validation {record['epoch']} {improved}")

    def on_save(self, trainer):
        self.events.append(f"save {trainer.progress.position}")

    def on_fit_end(self, trainer, status):
        self.events.append(f"fit_end {status}")


class StepsSeen(Callback):
    """A callback with state: the optimizer steps it has seen, over every start of the run."""

    name = "steps_seen"

    def __init__(self, stop_at=None):
        self.count, self.stop_at = 0, stop_at

    def on_step_end(self, trainer):
        self.count += 1
        if self.count == self.stop_at:
            trainer.stop.request("steps_seen")

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_the_events_come_in_order(fashion_dir, tmp_path):
    recorder = Recorder()
    train_vanilla(fashion_dir, tmp_path, *FLAGS, "--n_epoch", "1", "--save_every_n_steps", "8",
                  trainer_class=with_callbacks(recorder))
    events = recorder.events
    assert events[0] == "fit_start" and events[-1] == "fit_end finished"
    steps = [event for event in events if event.startswith("step")]
    assert steps == [f"step {n}" for n in range(1, 18)]  # 540 samples in batches of 32
    # The periodic save comes in step 8's on_step_end, from PeriodicSave, which is before the recorder.
    assert events.index("save (0, 8, 8)") == events.index("step 8") - 1
    assert events.index("validation 1 True") < events.index("save (1, 0, 17)") < events.index("fit_end finished")


def test_a_callback_state_is_saved_and_restored_and_refused_without_its_callback(fashion_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_vanilla(fashion_dir, tmp_path, *FLAGS, trainer_class=with_callbacks(StepsSeen(stop_at=5)))
    assert exit_info.value.code == 128 + signal.SIGTERM
    run = run_dirs(tmp_path)[0]
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    assert state["callbacks"]["steps_seen"] == {"count": 5} and state["global_step"] == 5
    assert "stopped by steps_seen" in (run / "log.txt").read_text()

    error = refused(VanillaTrainer.main, ["--resume", run], capsys)
    assert "steps_seen" in error and "this run does not have" in error

    resumed = StepsSeen()
    assert with_callbacks(resumed).main(["--resume", str(run)]) == 0
    assert resumed.count == load_plain(run / "Vanilla_last_ckpt.pth")["global_step"] == 34


def test_the_readme_wall_clock_budget_stops_a_run_that_resumes_exactly(fashion_dir, tmp_path):
    example = readme_callback_example()
    budget, budgeted = example["WallClockBudget"], example["BudgetedTrainer"]
    full = train_vanilla(fashion_dir, tmp_path / "full", *FLAGS, "--deterministic")
    with pytest.raises(SystemExit) as exit_info:  # a budget already spent: it stops after the first step
        train_vanilla(fashion_dir, tmp_path / "cut", *FLAGS, "--deterministic",
                      trainer_class=with_callbacks(budget(seconds=0), base=budgeted))
    assert exit_info.value.code == 128 + signal.SIGTERM
    run = run_dirs(tmp_path / "cut")[0]
    assert load_plain(run / "Vanilla_last_ckpt.pth")["global_step"] == 1
    assert "wall-clock budget of 0 s" in (run / "log.txt").read_text()
    assert read_json(run / "metrics.json")["status"] == "interrupted"
    assert budgeted.main(["--resume", str(run)]) == 0
    first, second = (load_plain(folder / "Vanilla_last_ckpt.pth")["model"] for folder in (run, full))
    assert all(first[key].equal(second[key]) for key in first)
    assert read_json(run / "metrics.json")["test"] == read_json(full / "metrics.json")["test"]
