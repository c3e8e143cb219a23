"""The recipes_ab section: what the recipes (a per-step cosine schedule, an EMA of the weights)
cost a training epoch of the FashionMNIST MLP, measured in one process so that the differences
between processes do not enter. A plain trainer and one trainer per variant (a second plain one
first: the method's own noise) take turns, one training epoch each, in a shuffled order every
round; validation is not timed.
"""
import random

from measure import log, make_row, rates
from toolkit import close, train_set, train_turn, trainer_for_turns
from vanilla import BATCH_SIZE, DROPOUT, LEARNING_RATE, RECIPES_ARGV, write_data

# Each variant's options, added to the plain trainer's.
RECIPES_AB = {"plain (again)": [], "per-step cosine": RECIPES_ARGV[:6], "EMA": RECIPES_ARGV[6:], "both": RECIPES_ARGV}

MLP_ROUNDS = {"full": 30, "quick": 4}


def recipes_ab_section(options, scratch):
    """The samples/s of each variant's trainer (toolkit column) against the plain trainer's
    (hand-written column); a row's ratio is the median over rounds of the plain trainer's epoch
    time over the variant's. The "both" row carries the recipes' target."""
    mlp_speeds, mlp_samples, mlp_setup = mlp_turns(options, scratch)
    rows = [make_row("recipes_ab", "recipes" if name == "both" else f"ab {name}",
                     f"train samples/s in one process: {name} vs plain",
                     {"toolkit": speeds, "handwritten": mlp_speeds["plain"]}, "higher")
            for name, speeds in mlp_speeds.items() if name != "plain"]
    details = {"train_samples": {"plain": mlp_samples}, "eval_samples": {}, "setup": (
        f"{mlp_setup}; per-step cosine = " + " ".join(RECIPES_AB["per-step cosine"])
        + "; EMA = " + " ".join(RECIPES_AB["EMA"])
        + "; toolkit column = the trainer named, hand-written column = the plain trainer")}
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
    speeds, samples = take_turns("vanilla", base, RECIPES_AB, rounds, options.seed)
    return speeds, samples, f"{rounds} shuffled rounds of one training epoch per trainer in one process"


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
