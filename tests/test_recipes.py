"""Training recipes that survive a resume: per-step schedules, EMA weights, top-k checkpoints, the
LR finder."""
import math
import signal

import pytest
import torch

from helpers import (assert_same_results, assert_same_weights, forwarding, load_plain, read_json, run_dirs, stopping_at,
                     train_vanilla, uninterrupted_run)
from trainer_vanilla import VanillaTrainer

# 540 training samples, batch 32: 17 batches an epoch; with --accum_steps 2, 9 optimizer steps.
FLAGS = ["--n_epoch", "3", "--dropout", "0.2", "--train_val_sample_rate", "0.4", "--test_sample_rate", "0.25"]
RECIPE = [*FLAGS, "--lr_scheduler", "cosine", "--warmup_steps", "5", "--min_lr", "1e-5", "--accum_steps", "2",
          "--ema_decay", "0.9", "--save_top_k", "2", "--lr", "0.003", "--log_every_n_steps", "1"]


def step_lrs(run):
    """Every optimizer step's lr as TensorBoard's own reader finds it: [(step, lr)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "summary"), size_guidance={"scalars": 0})
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars("train/step_lr")]


@pytest.fixture(scope="module")
def uninterrupted(fashion_dir, tmp_path_factory):
    return uninterrupted_run(fashion_dir, tmp_path_factory, *RECIPE)


def test_the_lr_advances_every_step_with_a_smooth_warm_up(uninterrupted):
    lrs = step_lrs(uninterrupted)
    assert [step for step, _ in lrs] == list(range(1, 28))  # 3 epochs of 9 optimizer steps
    values = [lr for _, lr in lrs]
    assert values[:5] == pytest.approx([0.003 * k / 6 for k in range(1, 6)], rel=1e-6)  # warm-up within epoch 1
    span = 27 - 5
    expected = [1e-5 + (0.003 - 1e-5) * 0.5 * (1 + math.cos(math.pi * k / span)) for k in range(span)]
    assert values[5:] == pytest.approx(expected, rel=1e-5)
    assert len(set(values[:9])) == 9  # it changes inside the first epoch


def test_the_step_lr_is_logged_every_n_steps_like_every_step_scalar(fashion_dir, tmp_path, uninterrupted):
    """The schedule still advances every step; TensorBoard gets its value at --log_every_n_steps."""
    run = train_vanilla(fashion_dir, tmp_path, *RECIPE[:-2], "--log_every_n_steps", "4", "--save_top_k", "0")
    every_fourth = step_lrs(run)
    assert [step for step, _ in every_fourth] == [4, 8, 12, 16, 20, 24]
    assert every_fourth == [(step, lr) for step, lr in step_lrs(uninterrupted) if step % 4 == 0]


@pytest.mark.parametrize("step", [4, 9, 9 + 6])  # mid-accumulation epoch 1, at an epoch's end, mid epoch 2
def test_per_step_schedule_ema_and_top_k_resume_exactly(fashion_dir, tmp_path, uninterrupted, step):
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path, *RECIPE, trainer_class=stopping_at(step))
    run = run_dirs(tmp_path)[0]
    assert load_plain(run / "Vanilla_last_ckpt.pth")["global_step"] == step
    assert VanillaTrainer.main(["--resume", str(run)]) == 0
    assert_same_weights(run, uninterrupted, ema=True)
    assert_same_results(run, uninterrupted)  # the EMA weights' validation metrics among them
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    assert state["ema"]["updates"] == state["global_step"]
    assert step_lrs(run) == step_lrs(uninterrupted)
    assert sorted(path.name for path in run.glob("Vanilla_epoch*.pth")) == \
        sorted(path.name for path in uninterrupted.glob("Vanilla_epoch*.pth"))


def test_an_ema_every_n_steps_resumes_exactly_from_between_two_updates(fashion_dir, tmp_path):
    """--ema_every_n_steps 4, stopped at step 6 (two steps after an update, two before the next):
    the resumed run's average equals the uninterrupted run's, made of a quarter of the updates."""
    flags = [*FLAGS, "--n_epoch", "2", "--ema_decay", "0.9", "--ema_every_n_steps", "4"]
    full = train_vanilla(fashion_dir, tmp_path / "full", *flags)
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path / "cut", *flags, trainer_class=stopping_at(6))
    run = run_dirs(tmp_path / "cut")[0]
    assert load_plain(run / "Vanilla_last_ckpt.pth")["ema"]["calls"] == 6
    assert VanillaTrainer.main(["--resume", str(run)]) == 0
    assert_same_weights(run, full, ema=True)
    assert_same_results(run, full)
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    assert state["ema"]["calls"] == state["global_step"] == 34 and state["ema"]["updates"] == 34 // 4


def test_ema_follows_the_formula(restore_global_rng):
    from training.ema import EMA
    model = torch.nn.Linear(3, 2)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    ema = EMA(model, decay=0.9, warmup=True)
    expected = torch.zeros(2, 3, dtype=torch.float64)
    for t, value in enumerate([1.0, 2.0, -1.0, 4.0, 0.5] * 4):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        decay = min(0.9, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * value
    assert torch.allclose(ema.module.weight.double(), expected, atol=1e-6)
    assert ema.module.weight.dtype == torch.float32 and not ema.module.weight.requires_grad
    plain = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    plain.update(model)
    assert torch.allclose(plain.module.weight, torch.full((2, 3), 0.5 * 0.5 + 0.5 * 2.0))


def test_ema_buffers_are_copied_not_averaged():
    from training.ema import EMA
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.99)
    model.train()
    model(torch.randn(8, 2) * 3 + 5)
    ema.update(model)
    assert torch.equal(ema.module.running_mean, model.running_mean)
    assert torch.equal(ema.module.num_batches_tracked, model.num_batches_tracked)


def set_weights(model, step):
    """A slowly varying weight sequence: each value drifts along its own sine wave."""
    with torch.no_grad():
        for number, parameter in enumerate(model.parameters()):
            phases = torch.arange(parameter.numel(), dtype=torch.float32).view_as(parameter) + 10 * number
            parameter.copy_(torch.sin(step / 80 + phases) + 0.5)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_every_step_is_bit_identical_to_the_plain_update(restore_global_rng, warmup):
    from training.ema import EMA
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.99, warmup=warmup, every=1)
    expected = [p.detach().clone().float() for p in model.parameters()]
    for t in range(30):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        ema.update(model)
        decay = min(0.99, (1 + t) / (10 + t)) if warmup else 0.99
        torch._foreach_lerp_(expected, [p.detach() for p in model.parameters()], 1.0 - decay)
        assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), expected))
    assert ema.state_dict()["updates"] == ema.state_dict()["calls"] == 30


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_every_4_steps_spans_as_many_steps_as_every_step(warmup):
    from training.ema import EMA
    model = torch.nn.Linear(3, 2)
    set_weights(model, 0)
    each, fourth = EMA(model, decay=0.99, warmup=warmup), EMA(model, decay=0.99, warmup=warmup, every=4)
    for step in range(1, 401):
        set_weights(model, step)
        before = [p.clone() for p in fourth.module.parameters()]
        each.update(model)
        fourth.update(model)
        changed = any(not torch.equal(a, b) for a, b in zip(before, fourth.module.parameters()))
        assert changed == (step % 4 == 0)
        if step % 4 == 0:  # every=4 sees each window's last weights: (4-1)/2 steps newer, at 1/80 a step at most
            for a, b in zip(each.module.parameters(), fourth.module.parameters()):
                assert torch.allclose(a, b, atol=1.5 / 80 + 1e-3), step
    assert fourth.updates == 100 and fourth.calls == 400
    # The average spans about 100 steps: far from the newest weights, unlike a decay of 0.99 per update.
    distance = float((each.module.weight - model.weight).detach().abs().max())
    assert distance > 0.1
    assert float((fourth.module.weight - model.weight).detach().abs().max()) == pytest.approx(distance, abs=1.5 / 80)


def test_ema_state_saved_between_two_updates_continues_bit_identically():
    import io

    from training.ema import EMA
    model = torch.nn.Linear(3, 2)
    set_weights(model, 0)
    through = EMA(model, decay=0.95, every=4)
    for step in range(1, 7):  # 6 calls: one update, and two calls towards the next
        set_weights(model, step)
        through.update(model)
    buffer = io.BytesIO()
    torch.save(through.state_dict(), buffer)
    buffer.seek(0)
    resumed = EMA(torch.nn.Linear(3, 2), decay=0.95, every=4)
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.calls == 6 and resumed.updates == 1
    for step in range(7, 40):
        set_weights(model, step)
        through.update(model)
        resumed.update(model)
        assert all(torch.equal(a, b) for a, b in zip(through.module.parameters(), resumed.module.parameters()))
    assert resumed.state_dict()["calls"] == through.state_dict()["calls"] == 39

    older = {"weights": through.module.state_dict(), "updates": 12}  # saved before `every` existed
    every_step = EMA(model, decay=0.95)
    every_step.load_state_dict(older)
    assert every_step.calls == every_step.updates == 12


def test_the_monitor_on_ema_picks_and_tests_the_averaged_weights(fashion_dir, tmp_path, capsys):
    from eval_vanilla import VanillaEvaluator
    run = train_vanilla(fashion_dir, tmp_path, *FLAGS, "--ema_decay", "0.95", "--monitor", "val_ema/accuracy")
    history = read_json(run / "metrics.json")["history"]
    assert all("val_ema/accuracy" in record and "val/accuracy" in record for record in history)
    assert "EMA weights" in (run / "log.txt").read_text()
    checkpoint = str(run / "Vanilla_best_ckpt.pth")
    assert VanillaEvaluator.main(["--model_path", checkpoint]) == 0  # the average, by default
    assert read_json(run / "eval" / "test" / "metrics.json")["metrics"] == read_json(run / "metrics.json")["test"]
    assert read_json(run / "eval" / "test" / "metrics.json")["weights"] == "ema"
    assert VanillaEvaluator.main(["--model_path", checkpoint, "--weights", "raw", "--tag", "raw"]) == 0
    assert read_json(run / "eval" / "test_raw" / "metrics.json")["weights"] == "raw"

    plain = train_vanilla(fashion_dir, tmp_path / "plain", *FLAGS, "--n_epoch", "1")
    with pytest.raises(SystemExit):
        VanillaEvaluator.main(["--model_path", str(plain / "Vanilla_best_ckpt.pth"), "--weights", "ema"])
    assert "holds no averaged weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_vanilla(fashion_dir, tmp_path / "none", *FLAGS, "--monitor", "val_ema/accuracy")
    assert "val_ema" not in capsys.readouterr().err.split("expected one of")[1]


def test_top_k_keeps_exactly_k_through_resumes_and_a_cut_between_save_and_delete(fashion_dir, tmp_path):
    flags = [*FLAGS, "--n_epoch", "2", "--save_top_k", "2", "--monitor", "val/loss", "--monitor_mode", "min"]
    run = train_vanilla(fashion_dir, tmp_path, *flags)
    kept = sorted(path.name for path in run.glob("Vanilla_epoch*.pth"))
    assert len(kept) == 2
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    assert sorted(entry["file"] for entry in state["callbacks"]["top_k"]["kept"]) == kept
    for entry in state["callbacks"]["top_k"]["kept"]:  # each kept file is a whole checkpoint of its epoch
        assert load_plain(run / entry["file"])["epoch"] == entry["epoch"]
        assert f"_epoch{entry['epoch']:03d}_val_loss{entry['value']:.4f}.pth" in entry["file"]

    for n_epoch in (4, 6):  # two resumes
        assert VanillaTrainer.main(["--resume", str(run), "--n_epoch", str(n_epoch)]) == 0
        state = load_plain(run / "Vanilla_last_ckpt.pth")
        assert sorted(path.name for path in run.glob("Vanilla_epoch*.pth")) == \
            sorted(entry["file"] for entry in state["callbacks"]["top_k"]["kept"])
        assert len(state["callbacks"]["top_k"]["kept"]) == 2
        losses = [record["val/loss"] for record in read_json(run / "metrics.json")["history"]]
        assert sorted(entry["value"] for entry in state["callbacks"]["top_k"]["kept"]) == sorted(losses)[:2]

    # A file of the user's own that only looks like one is left alone.
    (run / "Vanilla_epoch_backup.pth").write_bytes(b"mine")
    # A cut after a new top-k file was written but before the one it pushed out was deleted: the
    # state in `last` does not list the stray file, and the resume removes it.
    stray = run / "Vanilla_epoch099_val_loss0.0001.pth"
    stray.write_bytes((run / "Vanilla_last_ckpt.pth").read_bytes())
    # And a cut after `last` listed a file but before that file was written: the resume rewrites it.
    listed = [entry for entry in state["callbacks"]["top_k"]["kept"] if entry["epoch"] == state["epoch"]]
    if listed:
        (run / listed[0]["file"]).unlink()
    assert VanillaTrainer.main(["--resume", str(run), "--n_epoch", "7"]) == 0
    state = load_plain(run / "Vanilla_last_ckpt.pth")
    assert not stray.exists() and (run / "Vanilla_epoch_backup.pth").read_bytes() == b"mine"
    assert sorted(path.name for path in run.glob("Vanilla_epoch0*.pth")) == sorted(e["file"] for e in state["callbacks"]["top_k"]["kept"])
    assert len(state["callbacks"]["top_k"]["kept"]) == 2


def epoch_steps(summary, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(summary))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_a_resume_from_an_older_top_k_file_branches_and_leaves_the_run_as_it_was(fashion_dir, tmp_path, capsys):
    """In place it would write epochs 4-5 twice into TensorBoard and delete the newer top-k file."""
    flags = [*FLAGS, "--n_epoch", "5", "--save_top_k", "2", "--monitor", "val/loss", "--monitor_mode", "min",
             "--log_every_n_steps", "2"]
    run = train_vanilla(fashion_dir, tmp_path, *flags)
    before = {path.name: path.read_bytes() for path in run.glob("*.pth")}
    kept = load_plain(run / "Vanilla_last_ckpt.pth")["callbacks"]["top_k"]["kept"]
    older = min(kept, key=lambda entry: entry["epoch"])["file"]
    assert load_plain(run / older)["epoch"] < 5
    capsys.readouterr()
    assert VanillaTrainer.main(["--resume", str(run / older)]) == 0
    assert {path.name: path.read_bytes() for path in run.glob("*.pth")} == before  # nothing replaced or deleted
    assert epoch_steps(run / "summary", "val/loss") == [1, 2, 3, 4, 5]
    branch = next(path for path in run_dirs(tmp_path) if path != run)
    assert branch.name.endswith(f"_from_epoch{load_plain(run / older)['epoch']:03d}")
    assert epoch_steps(branch / "summary", "val/loss") == [1, 2, 3, 4, 5]  # each epoch once
    assert_same_weights(run, branch)  # the branch retrained the same epochs exactly
    assert read_json(branch / "metrics.json")["test"] == read_json(run / "metrics.json")["test"]
    error = capsys.readouterr().err
    assert "continuing in a new run folder" in error and "cut short" not in error


def test_the_lr_finder_leaves_the_run_as_without_it_and_its_suggestion_trains(fashion_dir, tmp_path):
    found = train_vanilla(fashion_dir, tmp_path / "found", *FLAGS, "--lr_find", "--lr_find_apply",
                          "--lr_find_steps", "120")
    record = read_json(found / "config.json")["lr_find"]
    suggestion = record["suggestion"]
    assert record["applied"] and record["lr_before"] == 0.001 and 1e-4 < suggestion < 0.1
    assert read_json(found / "config.json")["options"]["lr"] == suggestion
    rows = (found / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "step,lr,loss,smoothed_loss" and 20 < len(rows) <= 121
    from PIL import Image
    with Image.open(found / "lr_find.png") as picture:
        assert picture.size == (720, 440)

    # The same run without the finder, told the suggested lr: bit-identical.
    plain = train_vanilla(fashion_dir, tmp_path / "plain", *FLAGS, "--lr", repr(suggestion))
    assert_same_weights(found, plain)
    assert_same_results(found, plain)
    assert read_json(found / "metrics.json")["test"]["test/accuracy"] > 0.6  # it converges

    alone = train_vanilla(fashion_dir, tmp_path / "alone", *FLAGS, "--lr_find", "--lr_find_steps", "60")
    assert read_json(alone / "metrics.json")["status"] == "lr_find"
    assert not list(alone.glob("*.pth")) and (alone / "lr_find.png").is_file()


def test_a_signal_during_the_lr_range_test_stops_before_training(fashion_dir, tmp_path):
    def interrupted(trainer, forward, model, batch):
        Interrupted.calls += 1
        if Interrupted.calls == 5:
            trainer.stop.signum = signal.SIGTERM
        return forward(model, batch)

    class Interrupted(forwarding(interrupted)):
        calls = 0
    with pytest.raises(SystemExit) as exit_info:
        train_vanilla(fashion_dir, tmp_path, *FLAGS, "--lr_find", "--lr_find_apply", trainer_class=Interrupted)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert Interrupted.calls < 10  # within a step, not after the whole test
    run = run_dirs(tmp_path)[0]
    assert not list(run.glob("*.pth"))  # nothing trained, nothing to resume
    assert "during the lr range test" in (run / "log.txt").read_text()


def test_an_applied_suggestion_must_pass_the_schedule_checks(fashion_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_vanilla(fashion_dir, tmp_path, *FLAGS, "--lr", "1.0", "--min_lr", "0.5", "--lr_scheduler", "cosine",
                      "--lr_find", "--lr_find_apply", "--lr_find_steps", "60")
    assert exit_info.value.code == 2
    assert "--min_lr 0.5 is not below --lr" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--lr_scheduler", "plateau", "--lr_interval", "step"], "plateau decays on a per-epoch metric"),
    (["--lr_scheduler", "step", "--warmup_steps", "3"], "--warmup_steps 3 with a per-epoch schedule"),
    (["--lr_scheduler", "cosine", "--warmup_steps", "3", "--warmup_epoch", "1"], "give one of them"),
    (["--lr_scheduler", "cosine", "--min_lr", "0.01"], "--min_lr 0.01 is not below --lr 0.001"),
    (["--lr_find_apply"], "give both"),
    (["--lr_find", "--lr_find_min", "1", "--lr_find_max", "0.1"], "is not below --lr_find_max"),
])
def test_contradicting_recipe_options_are_refused(fashion_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        train_vanilla(fashion_dir, tmp_path, *flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not tmp_path.exists() or not list(tmp_path.iterdir())
