"""The regression task, the README's example of a task: it learns, its evaluator agrees with the
trainer, an interrupted run resumes to the same end, and the README shows its file as it is."""
import signal

import pytest
import torch

from helpers import ROOT, load_plain, metric_history, read_json, run_dirs, stopping_at
from trainer_regression import RegressionTrainer

FLAGS = ["--n_epoch", "8", "--deterministic", "--log_every_n_steps", "10"]  # 22 steps an epoch


def train(output_dir, trainer_class=RegressionTrainer):
    assert trainer_class.main(["--output_dir", str(output_dir), *FLAGS]) == 0
    return run_dirs(output_dir)[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("results"))


def test_short_training_learns(trained_run):
    metrics = read_json(trained_run / "metrics.json")
    assert metrics["status"] == "completed" and len(metrics["history"]) == 8
    assert metrics["test"]["test/r2"] > 0.8  # a constant prediction scores 0 at best
    assert metrics["test"]["test/mae"] < 0.3
    assert metrics["history"][-1]["train/loss"] < metrics["history"][0]["train/loss"] / 3
    split = read_json(trained_run / "split.json")
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (1400, 200, 400)


def test_evaluator_reproduces_trainer_metrics(trained_run):
    from eval_regression import RegressionEvaluator
    assert RegressionEvaluator.main(["--model_path", str(trained_run / "MLP_best_ckpt.pth"), "--viz"]) == 0
    evaluated = read_json(trained_run / "eval" / "test" / "metrics.json")
    assert evaluated["metrics"] == read_json(trained_run / "metrics.json")["test"]
    assert evaluated["samples"] == 400
    from PIL import Image
    with Image.open(trained_run / "eval" / "test" / "viz" / "prediction_vs_target.png") as picture:
        assert picture.size == (400, 400)


def test_resume_mid_epoch_equals_uninterrupted(trained_run, tmp_path):
    step = 22 + 8  # in the middle of the second epoch
    with pytest.raises(SystemExit) as exit_info:
        train(tmp_path, stopping_at(step, base=RegressionTrainer))
    assert exit_info.value.code == 128 + signal.SIGINT
    run = run_dirs(tmp_path)[0]
    saved = load_plain(run / "MLP_last_ckpt.pth")
    assert (saved["global_step"], saved["batches_done"]) == (step, 8)
    assert RegressionTrainer.main(["--resume", str(run / "MLP_last_ckpt.pth")]) == 0
    resumed, uninterrupted = (load_plain(folder / "MLP_last_ckpt.pth") for folder in (run, trained_run))
    assert resumed["global_step"] == uninterrupted["global_step"] == 8 * 22
    for key in uninterrupted["model"]:
        assert torch.equal(resumed["model"][key], uninterrupted["model"][key]), key
    assert metric_history(run) == metric_history(trained_run)
    assert read_json(run / "metrics.json")["test"] == read_json(trained_run / "metrics.json")["test"]


def test_readme_shows_the_task_file_as_it_is():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Adding your own"):]
    block = section[section.index("```python\n") + len("```python\n"):]
    assert block[:block.index("```\n")] == (ROOT / "trainer_regression.py").read_text()
