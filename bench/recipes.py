"""The recipes_ab section: what the recipes (a per-step cosine schedule, an EMA of the weights)
cost a training epoch of each task's default model, the FashionMNIST MLP and the Carvana UNet,
measured in one process so that the differences between processes do not enter. Per model, a
plain trainer and one trainer per variant (a second plain one first: the method's own noise) take
turns, one training epoch each, in a shuffled order every round; validation is not timed.
"""
import random

from measure import log, make_row, rates
from toolkit import close, parse_error, train_set, train_turn, trainer_for_turns
from vanilla import BATCH_SIZE, DROPOUT, LEARNING_RATE, RECIPES_ARGV, write_data

# Each variant's options, added to the plain trainer's.
RECIPES_AB = {"plain (again)": [], "per-step cosine": RECIPES_ARGV[:6], "EMA": RECIPES_ARGV[6:], "both": RECIPES_ARGV}
# The MLP's further variant, where the trainer has its option: the average updated every 4 steps.
EMA_EVERY_4 = ("both, EMA every 4 steps", [*RECIPES_ARGV, "--ema_every_n_steps", "4"])

MLP_ROUNDS = {"full": 30, "quick": 4}
# The UNet at the task's defaults (base 32 at 320x480, batch 8, memory cache, augmented) in the full
# run, a small one with --quick. 1 car of `cars` is validated and 1 tested, the rest trains. The
# photos are written at the model's input size: the cache decodes them once, before any epoch.
# On 2 CPU cores a full-size epoch (one step of 8 images) takes about 35 s: 5 trainers x 6 rounds (a
# warm-up and 5) take about 18 minutes.
UNET_AB = {"full": {"cars": 6, "views": 2, "img_size": (320, 480), "base_width": 32, "rounds": 5},
           "quick": {"cars": 6, "views": 4, "img_size": (64, 96), "base_width": 8, "rounds": 4}}


def recipes_ab_section(options, scratch):
    """Each model's rows: the samples/s of each variant's trainer (toolkit column) against the plain
    trainer's (hand-written column); a row's ratio is the median over rounds of the plain trainer's
    epoch time over the variant's. The targets: the MLP with both recipes and the EMA every 4 steps
    (under 3% of an epoch), the UNet with both (under 2%)."""
    mlp_speeds, mlp_samples, mlp_setup = mlp_turns(options, scratch)
    unet_speeds, unet_samples, unet_setup = unet_turns(options, scratch)
    rows = [make_row("recipes_ab", "recipes" if name == EMA_EVERY_4[0] else f"ab {name}",
                     f"train samples/s in one process: {name} vs plain",
                     {"toolkit": speeds, "handwritten": mlp_speeds["plain"]}, "higher")
            for name, speeds in mlp_speeds.items() if name != "plain"]
    rows += [make_row("recipes_ab", "recipes_unet" if name == "both" else f"ab unet {name}",
                      f"UNet train samples/s in one process: {name} vs plain",
                      {"toolkit": speeds, "handwritten": unet_speeds["plain"]}, "higher")
             for name, speeds in unet_speeds.items() if name != "plain"]
    details = {"train_samples": {"plain": mlp_samples, "UNet plain": unet_samples}, "eval_samples": {}, "setup": (
        f"{mlp_setup}; per-step cosine = " + " ".join(RECIPES_AB["per-step cosine"])
        + "; EMA = " + " ".join(RECIPES_AB["EMA"])
        + "; toolkit column = the trainer named, hand-written column = the plain trainer; " + unet_setup)}
    return rows, details


def mlp_turns(options, scratch):
    """The MLP's trainers taking turns: (samples/s by trainer, training samples per epoch, set-up text)."""
    data_dir = scratch / "data"
    write_data(data_dir, options.n_train, options.n_test, options.seed)
    rounds = MLP_ROUNDS["quick" if options.quick else "full"]
    base = ["--data_dir", str(data_dir), "--output_dir", str(scratch / "recipes_ab"), "--n_epoch", str(rounds + 1),
            "--seed", str(options.seed), "--batch_size", str(BATCH_SIZE), "--lr", str(LEARNING_RATE),
            "--dropout", str(DROPOUT), "--log_graph", "false", "--train_val_sample_rate", "0.25",
            "--gpu_devices", "cpu" if options.device == "cpu" else "0"]
    variants = dict(RECIPES_AB)
    name, extra = EMA_EVERY_4
    refused = parse_error("vanilla", base + extra)
    if refused is None:
        variants[name] = extra
    else:
        log(f"recipes in one process: no {name!r} row, the trainer does not take {' '.join(extra[-2:])} ({refused})")
    speeds, samples = take_turns("vanilla", base, variants, rounds, options.seed)
    setup = f"{rounds} shuffled rounds of one training epoch per trainer in one process"
    if name in variants:
        setup += f"; {name} = " + " ".join(extra)
    return speeds, samples, setup


def unet_turns(options, scratch):
    """The Carvana UNet's trainers taking turns, on generated photos: as mlp_turns."""
    from data.synthetic_carvana import write_carvana
    settings = UNET_AB["quick" if options.quick else "full"]
    (height, width), rounds = settings["img_size"], settings["rounds"]
    data_dir = scratch / "recipes_ab_carvana"
    log(f"writing {settings['cars'] * settings['views']} synthetic Carvana pairs of {width}x{height} to {data_dir}")
    write_carvana(data_dir, n_cars=settings["cars"], views=settings["views"], size=(height, width), seed=options.seed)
    base = ["--data_dir", str(data_dir), "--output_dir", str(scratch / "recipes_ab_unet"), "--n_epoch", str(rounds + 1),
            "--seed", str(options.seed), "--img_size", str(height), str(width),
            "--base_width", str(settings["base_width"]), "--log_graph", "false",
            "--gpu_devices", "cpu" if options.device == "cpu" else "0"]
    speeds, samples = take_turns("carvana", base, RECIPES_AB, rounds, options.seed)
    setup = (f"UNet: base {settings['base_width']} at {height}x{width}, the task's other defaults, "
             f"{samples} training images, {rounds} shuffled rounds")
    return speeds, samples, setup


def take_turns(task, base, variants, rounds, seed):
    """Trainers of `task`: "plain" on `base`, and one per variant on `base` and its options, each
    training one epoch per round in a shuffled order; the first round is a warm-up. Returns their
    samples/s by name and the training samples per epoch."""
    trainers = {name: trainer_for_turns(task, base + extra)[0] for name, extra in {"plain": [], **variants}.items()}
    seconds = {name: [] for name in trainers}
    order, shuffler = list(trainers), random.Random(seed)
    try:
        for turn in range(rounds + 1):
            log(f"recipes in one process, {task}: round {turn + 1}/{rounds + 1}")
            shuffler.shuffle(order)
            for name in order:
                seconds[name].append(train_turn(trainers[name]))
        samples = len(train_set(trainers["plain"]))
    finally:
        for trainer in trainers.values():
            close(trainer)
    return {name: rates(samples, times[1:]) for name, times in seconds.items()}, samples
