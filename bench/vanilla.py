"""The FashionMNIST MLP: the three contenders, each run in a worker process of its own (the
toolkit's VanillaTrainer.fit(), a hand-written loop over preloaded tensors, the naive DataLoader
loop of the popular templates), the toolkit with the recipes as a fourth, and the sections that
start them: vanilla (speed, memory, start-up) and recipes (the recipes' cost, two processes).
"""
import sys
import time
from pathlib import Path

from measure import (CONTENDERS, contender_environment, log, make_row, minor_faults, rates, run_trio, time_command,
                     timed_epochs)
from toolkit import evaluate_test, finished_run, fit_vanilla

BATCH_SIZE = 64
LEARNING_RATE = 1e-3
DROPOUT = 0.2
MEAN, STD = 0.2860, 0.3530  # FashionMNIST pixel statistics, as the toolkit's task uses

# The recipes: a per-step cosine schedule (its first 6 words) and an EMA of the weights (the rest).
RECIPES_ARGV = ["--lr_scheduler", "cosine", "--lr_interval", "step", "--warmup_steps", "100", "--ema_decay", "0.999"]


# ---------------------------------------------------------------------------- contenders
# Each runs in a worker process, reads its settings from a dict, and returns a dict of raw timings.

def run_toolkit(config, baton):
    waits, faults = [], []

    def taking_turns(train_epoch):
        """Waits for its turn before each training epoch. The wait falls inside the epoch's
        `train_time_s`, so it is recorded and taken off again."""
        waits.append(baton.wait())
        before = minor_faults()
        result = train_epoch()
        faults.append(minor_faults() - before)
        return result

    argv = ["--data_dir", config["data_dir"], "--n_epoch", str(config["epochs"]),
            "--output_dir", config["output_dir"], "--seed", str(config["seed"]),
            "--batch_size", str(BATCH_SIZE), "--lr", str(LEARNING_RATE), "--dropout", str(DROPOUT),
            "--gpu_devices", "cpu" if config["device"] == "cpu" else "0", *config.get("extra_argv", [])]
    trainer = fit_vanilla(argv, taking_turns)
    run = finished_run(trainer)
    train_seconds = [seconds - wait for seconds, wait in zip(run["train_time_s"], waits)]
    # fit() already ran one test pass (of the best checkpoint): that is the evaluation warm-up.
    eval_seconds = []
    for _ in range(config["eval_passes"]):
        baton.wait()
        start = time.perf_counter()
        evaluate_test(trainer)
        eval_seconds.append(time.perf_counter() - start)
    return {"train_samples": run["train_samples"], "train_epoch_s": train_seconds,
            "train_steps": run["train_steps"], "train_faults": faults,
            "eval_samples": run["eval_samples"], "eval_pass_s": eval_seconds}


def read_unpacked_idx(path):
    """An unpacked IDX file of uint8 values as a tensor."""
    import numpy as np
    import torch
    with open(path, "rb") as handle:
        magic = int.from_bytes(handle.read(4), "big")
        n_dims = magic & 0xFF
        shape = [int.from_bytes(handle.read(4), "big") for _ in range(n_dims)]
        return torch.from_numpy(np.fromfile(handle, dtype=np.uint8).reshape(shape))


def load_preloaded(data_dir, split, device):
    prefix = "train" if split == "train" else "t10k"
    folder = Path(data_dir) / "FashionMNIST" / "raw"
    images = read_unpacked_idx(folder / f"{prefix}-images-idx3-ubyte").unsqueeze(1).to(device)
    labels = read_unpacked_idx(folder / f"{prefix}-labels-idx1-ubyte").long().to(device)
    return images, labels


def run_handwritten(config, baton):
    import torch

    from model.vanilla_model import VanillaMLP

    device = torch.device(config["device"])
    train_images, train_labels = load_preloaded(config["data_dir"], "train", device)
    test_images, test_labels = load_preloaded(config["data_dir"], "test", device)
    torch.manual_seed(config["seed"])
    model = VanillaMLP(dropout=DROPOUT).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.CrossEntropyLoss()
    mean, std = MEAN * 255, STD * 255

    def train_epoch():
        model.train()
        n = len(train_labels)
        order = torch.randperm(n, device=device)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, n, BATCH_SIZE):
            indices = order[start:start + BATCH_SIZE]
            images = (train_images[indices].float() - mean) / std
            loss = loss_fn(model(images), train_labels[indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        return float(loss_sum)

    def evaluate():
        model.eval()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad():
            for start in range(0, len(test_labels), BATCH_SIZE):
                images = (test_images[start:start + BATCH_SIZE].float() - mean) / std
                labels = test_labels[start:start + BATCH_SIZE]
                logits = model(images)
                loss_sum += loss_fn(logits, labels) * len(labels)
                correct += (logits.argmax(dim=1) == labels).sum()
        return float(loss_sum) / len(test_labels), int(correct) / len(test_labels)

    return timed_epochs(config, baton, device, train_epoch, evaluate, len(train_labels), len(test_labels),
                        steps=-(-len(train_labels) // BATCH_SIZE))


def run_naive(config, baton):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from model.vanilla_model import VanillaMLP

    device = torch.device(config["device"])
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train_set = datasets.FashionMNIST(config["data_dir"], train=True, download=False, transform=transform)
    test_set = datasets.FashionMNIST(config["data_dir"], train=False, download=False, transform=transform)
    train_loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, num_workers=0)
    test_loader = DataLoader(test_set, batch_size=BATCH_SIZE, shuffle=False, num_workers=0)
    torch.manual_seed(config["seed"])
    model = VanillaMLP(dropout=DROPOUT).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_epoch():
        model.train()
        running_loss = 0.0
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        return running_loss / len(train_loader)

    def evaluate():
        model.eval()
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for images, labels in test_loader:
                images, labels = images.to(device), labels.to(device)
                logits = model(images)
                loss_sum += loss_fn(logits, labels).item() * len(labels)
                correct += (logits.argmax(dim=1) == labels).sum().item()
        return loss_sum / len(test_set), correct / len(test_set)

    return timed_epochs(config, baton, device, train_epoch, evaluate, len(train_set), len(test_set),
                        steps=len(train_loader))


def run_toolkit_recipes(config, baton):
    return run_toolkit({**config, "extra_argv": RECIPES_ARGV}, baton)


WORKERS = {"toolkit": run_toolkit, "handwritten": run_handwritten, "naive": run_naive,
           "toolkit_recipes": run_toolkit_recipes}


# ---------------------------------------------------------------------------- sections

def measure_startup(runs, environment):
    """Seconds of `trainer_vanilla.py --help` and of `import torch`, interleaved, after one untimed run each."""
    commands = {"toolkit": [sys.executable, "trainer_vanilla.py", "--help"],
                "handwritten": [sys.executable, "-c", "import torch"]}
    for command in commands.values():
        time_command(command, environment)
    seconds = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            seconds[name].append(time_command(command, environment))
    return seconds


def write_data(data_dir, n_train, n_test, seed):
    """Synthetic FashionMNIST, both as downloaded (.gz) and unpacked, which torchvision's reader needs."""
    from data.synthetic_fashion_mnist import write_fashion_mnist
    if (data_dir / "written").is_file():
        return
    log(f"writing {n_train} + {n_test} synthetic FashionMNIST samples to {data_dir}")
    for compress in (True, False):
        write_fashion_mnist(data_dir, n_train=n_train, n_test=n_test, seed=seed, compress=compress)
    (data_dir / "written").touch()


def vanilla_section(options, scratch):
    """FashionMNIST MLP: training and evaluation speed, peak memory, start-up time."""
    data_dir = scratch / "data"
    write_data(data_dir, options.n_train, options.n_test, options.seed)
    config = {"data_dir": str(data_dir), "epochs": options.epochs, "eval_passes": options.eval_passes,
              "device": options.device, "seed": options.seed}
    environment = contender_environment(options.default_malloc)
    results = {name: [] for name in CONTENDERS}
    for repeat in range(options.repeats):
        log(f"repeat {repeat + 1}/{options.repeats}")
        for name, result in run_trio(config, scratch, repeat, environment).items():
            results[name].append(result)

    def pooled(samples_field, seconds_field, skip):
        """Samples/s of every process, each without its first `skip` measurements, in one list."""
        return {name: [rate for result in runs for rate in rates(result[samples_field], result[seconds_field][skip:])]
                for name, runs in results.items()}

    log(f"start-up: {options.startup_runs} runs each of trainer_vanilla.py --help and import torch")
    startup = measure_startup(options.startup_runs, environment)
    rows = [
        make_row("vanilla", "train", "train samples/s", pooled("train_samples", "train_epoch_s", skip=1), "higher"),
        make_row("vanilla", "eval", "eval samples/s", pooled("eval_samples", "eval_pass_s", skip=0), "higher"),
        make_row("vanilla", "memory", "peak RSS MiB",
                 {name: [result["peak_rss_mib"] for result in runs] for name, runs in results.items()}, "lower"),
        make_row("vanilla", "startup", "start-up s (--help | import torch)", startup, "lower"),
        make_row("vanilla", "faults", "page faults / train step",
                 {name: [count / result["train_steps"] for result in runs for count in result["train_faults"][1:]]
                  for name, runs in results.items()}, "lower", compare=False),
    ]
    first = results["toolkit"][0]
    details = {"train_samples": {name: runs[0]["train_samples"] for name, runs in results.items()},
               "eval_samples": {name: runs[0]["eval_samples"] for name, runs in results.items()},
               "threads": first["threads"]}
    return rows, details


def recipes_section(options, scratch):
    """What a per-step cosine schedule and an EMA of the weights cost a vanilla training epoch: the
    toolkit with them (in the toolkit column) against the toolkit without them (in the
    hand-written column), two processes taking turns epoch by epoch, paired as in the vanilla section."""
    data_dir = scratch / "data"
    write_data(data_dir, options.n_train, options.n_test, options.seed)
    config = {"data_dir": str(data_dir), "epochs": options.epochs, "eval_passes": 1, "device": options.device,
              "seed": options.seed}
    environment = contender_environment(options.default_malloc)
    results = {"toolkit_recipes": [], "toolkit": []}
    for repeat in range(options.repeats):
        log(f"recipes repeat {repeat + 1}/{options.repeats}")
        for name, result in run_trio(config, scratch, f"recipes_{repeat}", environment, tuple(results)).items():
            results[name].append(result)
    speeds = {name: [rate for result in runs for rate in rates(result["train_samples"], result["train_epoch_s"][1:])]
              for name, runs in results.items()}
    row = make_row("recipes", "recipes", "train samples/s, per-step cosine + EMA vs without",
                   {"toolkit": speeds["toolkit_recipes"], "handwritten": speeds["toolkit"]}, "higher")
    details = {"train_samples": {name: runs[0]["train_samples"] for name, runs in results.items()},
               "eval_samples": {}, "threads": results["toolkit"][0]["threads"], "setup": "toolkit column = " + " ".join(RECIPES_ARGV)
                                            + "; hand-written column = the toolkit without them"}
    return [row], details


