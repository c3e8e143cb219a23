"""The learning-rate range test: train a few hundred steps with the lr growing geometrically, watch
the loss, suggest the lr where it falls fastest. It leaves the run as it found it.

    python trainer_vanilla.py --lr_find                  the curve, the suggestion, no training
    python trainer_vanilla.py --lr_find --lr_find_apply  then train with the suggested lr

Writes `lr_find.csv` (lr, loss, smoothed loss per step) and `lr_find.png` (the smoothed loss over a
log-scaled lr axis, the suggestion marked) into the run folder. The test runs through the trainer's
train step with an optimizer of its own, draws its batches in an order training never uses, and puts the model's weights and buffers
and the random state back as they were, so the run that follows is the run without the test.
"""
import argparse
import copy
import csv
import math
import signal

from cli.arguments import check_schedule
from state.status import Status
from training.optimization import Optimization
from utils import distributed
from utils.atomic import atomic_open
from utils.errors import UserError
from utils.seed import get_rng_state, set_rng_state

SMOOTHING = 0.98  # the loss curve is an exponential average of the batch losses, bias-corrected
DIVERGED = 4.0  # the test stops once the smoothed loss exceeds this multiple of its minimum
FINDER_EPOCH = 1_000_000  # the data order of the test: an epoch number training never reaches


def find_lr(trainer):
    """--lr_find on a set-up `trainer`: the test, its curve and suggestion in the run folder and
    config.json; with --lr_find_apply the suggestion becomes --lr (a fresh optimizer and schedule,
    as a run started with it has). Returns whether training follows."""
    args, run = trainer.args, trainer.run
    lrs, losses, smoothed, suggestion = range_test(trainer, args.lr_find_min, args.lr_find_max, args.lr_find_steps)
    if run.writes:
        write_csv(run.path / "lr_find.csv", lrs, losses, smoothed)
        write_plot(run.path / "lr_find.png", lrs, smoothed, suggestion)
    config = run.read_json("config.json") or {}
    config["lr_find"] = {"lr_min": args.lr_find_min, "lr_max": args.lr_find_max, "steps": len(lrs),
                         "suggestion": suggestion, "applied": bool(args.lr_find_apply), "lr_before": args.lr}
    shown = f"{suggestion:.3g}" if suggestion is not None else "none (the loss never fell)"
    trainer.log.info(f"lr range test over {len(lrs)} steps: suggested lr {shown} (see {run.path / 'lr_find.png'})")
    if args.lr_find_apply:
        if suggestion is None:
            run.write_json("config.json", config)
            trainer.write_metrics(Status.LR_FIND)  # the run folder says what it holds: the test alone
            raise UserError(f"--lr_find_apply: the range test found no lr at which the loss falls "
                            f"(see {run.path / 'lr_find.png'}); give --lr instead")
        args.lr = config["options"]["lr"] = suggestion
        check_schedule(args)  # --min_lr, say, must still be below the lr
        trainer.setup_optimization()
    run.write_json("config.json", config)
    if not args.lr_find_apply:
        trainer.write_metrics(Status.LR_FIND)
        trainer.log.info(f"to train with it: --lr {suggestion:.3g}, or --lr_find --lr_find_apply" if suggestion
                         else "no training: --lr_find alone only runs the test")
    return args.lr_find_apply


def range_test(trainer, lr_min, lr_max, steps):
    """Run the test through `trainer`'s train step, with an optimizer of its own (the same kind, no
    schedule). Returns (lrs, losses, smoothed, suggestion)."""
    args, model = trainer.args, trainer.model
    saved_weights, saved_rng = copy.deepcopy(model.state_dict()), get_rng_state()
    optimization = Optimization(model.parameters(), argparse.Namespace(
        **{**vars(args), "lr": lr_min, "lr_scheduler": "none", "warmup_epoch": 0, "warmup_steps": 0, "min_lr": 0.0}),
        trainer.device.type)
    growth = (lr_max / lr_min) ** (1 / max(1, steps - 1))
    lrs, losses, smoothed, average, best, stopped = [], [], [], 0.0, math.inf, None
    loader = trainer.loaders["train"]
    trainer.train_model.train()
    try:
        for round_number in range(steps):  # enough passes over the data for `steps` batches
            loader.sampler.set_epoch(FINDER_EPOCH + round_number)
            for index, (indices, batch) in enumerate(loader):
                step = len(lrs)
                lr = lr_min * growth ** step
                for group in optimization.optimizer.param_groups:
                    group["lr"] = lr
                batch = trainer.task.prepare_batch(trainer.to_device(batch), True,
                                                   trainer.augmentation_random(FINDER_EPOCH + round_number, index, indices))
                loss, _, _ = trainer.backward_batch(batch, optimization)
                trainer.optimizer_step(optimization)
                value = distributed.mean_over_ranks(loss.detach().float(), trainer.device)
                average = SMOOTHING * average + (1 - SMOOTHING) * value
                lrs.append(lr)
                losses.append(value)
                smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
                best = min(best, smoothed[-1])
                if distributed.any_rank(trainer.stop.requested, trainer.device):
                    stopped = trainer.stop.signum or signal.SIGTERM
                    break
                if len(lrs) == steps or not math.isfinite(smoothed[-1]) or smoothed[-1] > DIVERGED * best:
                    return lrs, losses, smoothed, suggest(lrs, smoothed)
            if stopped:
                break
    finally:
        model.load_state_dict(saved_weights)
        for parameter in model.parameters():
            parameter.grad = None
        set_rng_state(saved_rng)
    if stopped:
        # Nothing was trained yet: no state to save, and a resume would train without the suggestion.
        trainer.log.warning(f"{signal.Signals(stopped).name} during the lr range test: stopped before training; "
                            "start the run again")
        raise SystemExit(128 + stopped)
    return lrs, losses, smoothed, suggest(lrs, smoothed)


def suggest(lrs, smoothed):
    """The lr where the smoothed loss falls fastest (per log-lr), before its minimum, leaving out
    the first tenth of the steps, where the average has seen too few batches."""
    finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
    if len(finite) < 3:
        return None
    end = min(finite, key=lambda i: smoothed[i])
    start = max(1, len(lrs) // 10)
    if end - start < 2:
        start = 0
    if end - start < 2:
        return None
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
              for i in range(max(start, 1), end)]
    return lrs[max(start, 1) + min(range(len(slopes)), key=slopes.__getitem__)]


def write_csv(path, lrs, losses, smoothed):
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        writer.writerows((step, repr(lr), repr(loss), repr(average))
                         for step, (lr, loss, average) in enumerate(zip(lrs, losses, smoothed)))


def write_plot(path, lrs, smoothed, suggestion):
    """The smoothed loss over log10(lr), with a decade grid and the suggestion marked in red."""
    from PIL import Image, ImageDraw
    width, height, left, right, top, bottom = 720, 440, 70, 20, 30, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    points = [(math.log10(lr), value) for lr, value in zip(lrs, smoothed) if math.isfinite(value)]
    low_x, high_x = math.log10(lrs[0]), math.log10(lrs[-1]) if len(lrs) > 1 else math.log10(lrs[0]) + 1
    values = [value for _, value in points] or [0.0, 1.0]
    # The loss axis spans the curve up to twice its start, so a divergence does not flatten the rest.
    low_y, high_y = min(values), min(max(values), 2 * values[0] - min(values)) if len(values) > 1 else min(values) + 1
    high_y = high_y if high_y > low_y else low_y + 1

    def to_pixel(x, y):
        px = left + (x - low_x) / max(high_x - low_x, 1e-12) * (width - left - right)
        py = top + (high_y - min(max(y, low_y), high_y)) / (high_y - low_y) * (height - top - bottom)
        return px, py
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for decade in range(math.ceil(low_x), math.floor(high_x) + 1):
        x, _ = to_pixel(decade, low_y)
        draw.line([x, top, x, height - bottom], fill=(220, 220, 220))
        draw.text((x - 12, height - bottom + 6), f"1e{decade}", fill=(0, 0, 0))
    for fraction in (0.0, 0.5, 1.0):
        y_value = low_y + fraction * (high_y - low_y)
        _, y = to_pixel(low_x, y_value)
        draw.text((6, y - 6), f"{y_value:.3g}", fill=(0, 0, 0))
    if len(points) > 1:
        draw.line([to_pixel(x, y) for x, y in points], fill=(31, 119, 180), width=2)
    if suggestion is not None:
        x, _ = to_pixel(math.log10(suggestion), low_y)
        draw.line([x, top, x, height - bottom], fill=(214, 39, 40), width=2)
        draw.text((x + 4, top + 4), f"suggested lr {suggestion:.3g}", fill=(214, 39, 40))
    draw.text((width // 2 - 60, height - 22), "learning rate (log scale)", fill=(0, 0, 0))
    draw.text((left, 8), "smoothed training loss", fill=(0, 0, 0))
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")
