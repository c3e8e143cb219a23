"""Speed, memory and start-up time of the toolkit against a hand-written loop and the naive template loop.

    python bench/bench.py                       # full run: 60,000 training samples, 3 repeats
    python bench/bench.py --quick               # smoke run: a few seconds per contender
    python bench/bench.py --device cpu --repeats 5 --out bench/results.json

Contenders (the same model, optimizer, batch size 64 and seed; torch's default thread count):

1. toolkit: `VanillaTrainer.fit()` with its normal logging, TensorBoard and a checkpoint per
   epoch. Training speed is train samples / `train_time_s` from the run's metrics.json;
   evaluation speed times `trainer.evaluate("test")` on the trained trainer.
2. hand-written: uint8 tensors preloaded on the device, a `randperm` per epoch and slices of it,
   normalisation on the fly, no per-step `.item()`.
3. naive: torchvision's FashionMNIST with ToTensor + Normalize through a DataLoader
   (num_workers=0) and the loop of the popular templates, `loss.item()` on every step.

Each contender runs in its own fresh process, so its peak memory (ru_maxrss) is its own and
every contender starts from the same conditions. The three processes take turns: only one works
at a time, for one epoch or one evaluation pass, then hands over (1, 2, 3, 1, 2, 3, ...), so
that load from other programs spreads over all of them. A speed is the median over the epochs
after each process's first, which is a warm-up; `--repeats` starts that many trios of processes.
Cells show the median and, after "±", half the interquartile range relative to it. A ratio is
the median of paired ratios: the toolkit's n-th epoch (pass, process) against the hand-written
loop's n-th, which ran right after it, so that a slow stretch caused by other programs mostly
hits both sides of a pair.

glibc's malloc decides from a process's history whether freed memory goes back to the system:
a loop that frees and reallocates its gradients every step may then page-fault on every step,
by chance of what the process freed before (the toolkit's data loading happens to prevent it, a
bare loop's does not; that alone moved the hand-written loop by 10-25%). So every contender runs
with the same fixed thresholds (MALLOC_ENV below); `--default_malloc` leaves glibc's defaults.
The "page faults / train step" row shows what each contender met.

The recipes section runs the toolkit with a per-step cosine schedule and an EMA of the weights
(RECIPES_ARGV) against the toolkit without them, two processes taking turns as above: the ratio is
what those recipes cost a training epoch, validation of the averaged weights not included.

The recipes_ab section measures the same cost in one process (so that the differences between
processes do not enter): trainers with and without the recipes, and a second plain one as a
control, take turns epoch by epoch in a shuffled order.

The prediction section times Kaggle's submission pipeline (eval_seg_on_carvana.py with
--input_dir and --submission, in a fresh process) on generated photos of Carvana's size against
the slowest of its stages measured alone in this process: decoding and resizing (in DataLoader
workers, with JPEG draft mode), the model, and upsampling, thresholding and RLE encoding; and
its peak memory on 4x the images against 1x, which shows whether memory grows with the folder.
Where every stage runs on the same CPU cores, overlapping them cannot beat running them one after
the other; the row against the stages in sequence shows how close the pipeline comes to that.

The UNet section (skip it with --skip_unet) trains SegOnCarvanaTrainer on generated photos of
Carvana's size (1918x1280 JPEG + GIF mask pairs) resized to 128x192, in this process, epoch by
epoch in turns: the toolkit with its memory cache ("toolkit"), the same toolkit decoding every
pair every epoch with --cache none (in the "naive" column), and a plain loop over preloaded
tensors with the same UNet, Adam, bce+dice loss and batch 8 ("hand-written"). The cache's first
fill, which the toolkit pays once per run, is reported on its own row.

Limits: the data is synthetic (data/synthetic_fashion_mnist.py), in the official files' format
and sizes; a dataset of this size trains at the same speed whatever the pixels hold. Memory is
compared on whole processes: the toolkit's also holds TensorBoard and its validation split.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH_SIZE = 64
LEARNING_RATE = 1e-3
DROPOUT = 0.2
MEAN, STD = 0.2860, 0.3530  # FashionMNIST pixel statistics, as the toolkit's task uses
CONTENDERS = ("toolkit", "handwritten", "naive")
LABELS = {"toolkit": "toolkit", "handwritten": "hand-written", "naive": "naive"}

# Targets for the toolkit against the hand-written loop: row key -> (comparison, bound).
TARGETS = {
    "train": (">=", 0.95),
    "pipeline": (">=", 0.85),
    "flat": ("<=", 1.10),
    "recipes": (">=", 0.97),
    "eval": (">=", 0.90),
    "memory": ("<=", 1.10),
    "startup": ("<=", 1.20),
}

# Memory below 32 MiB is reused rather than returned to the system, in every contender alike.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}

FULL = {"n_train": 60000, "n_test": 10000, "epochs": 6, "repeats": 3, "eval_passes": 5, "startup_runs": 5}
QUICK = {"n_train": 6000, "n_test": 2000, "epochs": 3, "repeats": 1, "eval_passes": 3, "startup_runs": 3}


# ---------------------------------------------------------------------------- contenders
# Each runs in a child process, reads its settings from a dict, and returns a dict of raw timings.

def peak_rss_mib():
    """This process's peak resident memory. Linux's ru_maxrss keeps the high-water mark of the
    parent it was forked from across exec, so VmHWM, which belongs to this address space, comes first."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def synchronize(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Baton:
    """Taking turns with the other contenders: `wait()` tells the parent this process is idle and
    blocks until the parent says go. Returns the seconds spent waiting."""

    def __init__(self, ready_fd):
        self.ready_fd = ready_fd

    def wait(self):
        start = time.perf_counter()
        os.write(self.ready_fd, b"ready\n")
        if not sys.stdin.readline():
            raise SystemExit("the benchmark's parent process has gone")
        return time.perf_counter() - start


def run_toolkit(config, baton):
    from trainer_vanilla import VanillaTrainer

    waits, faults = [], []

    class TakingTurns(VanillaTrainer):
        """Waits for its turn before each training epoch. The wait falls inside the epoch's
        `train_time_s`, so it is recorded and taken off again."""

        def train_epoch(self):
            waits.append(baton.wait())
            before = minor_faults()
            result = super().train_epoch()
            faults.append(minor_faults() - before)
            return result

    argv = ["--data_dir", config["data_dir"], "--n_epoch", str(config["epochs"]),
            "--output_dir", config["output_dir"], "--seed", str(config["seed"]),
            "--batch_size", str(BATCH_SIZE), "--lr", str(LEARNING_RATE), "--dropout", str(DROPOUT),
            "--gpu_devices", "cpu" if config["device"] == "cpu" else "0", *config.get("extra_argv", [])]
    args, resume_checkpoint = VanillaTrainer.parse(argv)
    trainer = TakingTurns(args, resume_checkpoint)
    trainer.fit()
    history = json.loads((trainer.run.path / "metrics.json").read_text())["history"]
    train_seconds = [record["train_time_s"] - wait for record, wait in zip(history, waits)]
    # fit() already ran one test pass (of the best checkpoint): that is the evaluation warm-up.
    eval_seconds = []
    for _ in range(config["eval_passes"]):
        baton.wait()
        start = time.perf_counter()
        trainer.evaluate("test")
        eval_seconds.append(time.perf_counter() - start)
    return {"train_samples": len(trainer.datasets["train"]), "train_epoch_s": train_seconds,
            "train_steps": len(trainer.loaders["train"]), "train_faults": faults,
            "eval_samples": len(trainer.datasets["test"]), "eval_pass_s": eval_seconds}


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


def timed_epochs(config, baton, device, train_epoch, evaluate, train_samples, eval_samples, steps):
    """Times `epochs` training epochs, then one untimed and `eval_passes` timed evaluations, each
    timed one in its own turn (the untimed evaluation ends the last epoch's turn, as in the toolkit)."""
    train_seconds, faults = [], []
    for _ in range(config["epochs"]):
        baton.wait()
        synchronize(device)
        before = minor_faults()
        start = time.perf_counter()
        train_epoch()
        synchronize(device)
        train_seconds.append(time.perf_counter() - start)
        faults.append(minor_faults() - before)
    evaluate()
    eval_seconds = []
    for _ in range(config["eval_passes"]):
        baton.wait()
        start = time.perf_counter()
        evaluate()
        synchronize(device)
        eval_seconds.append(time.perf_counter() - start)
    return {"train_samples": train_samples, "train_epoch_s": train_seconds, "train_steps": steps,
            "train_faults": faults, "eval_samples": eval_samples, "eval_pass_s": eval_seconds}


# The recipes section's contender: the toolkit with a per-step schedule and an EMA of the weights.
RECIPES_ARGV = ["--lr_scheduler", "cosine", "--lr_interval", "step", "--warmup_steps", "100", "--ema_decay", "0.999"]


def run_toolkit_recipes(config, baton):
    return run_toolkit({**config, "extra_argv": RECIPES_ARGV}, baton)


WORKERS = {"toolkit": run_toolkit, "handwritten": run_handwritten, "naive": run_naive,
           "toolkit_recipes": run_toolkit_recipes}


def worker_main(name, config_path):
    config = json.loads(Path(config_path).read_text())
    result = WORKERS[name](config, Baton(config["ready_fd"]))
    import torch
    result["threads"] = torch.get_num_threads()
    result["peak_rss_mib"] = peak_rss_mib()
    Path(config["result_path"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------- statistics

def median_and_spread(values):
    """The median and half the interquartile range relative to it (0 for fewer than 2 values)."""
    middle = statistics.median(values)
    if len(values) < 2 or middle == 0:
        return middle, 0.0
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return middle, (high - low) / 2 / middle


def rates(samples, seconds):
    return [samples / s for s in seconds]


def check(key, ratio):
    comparison, bound = TARGETS[key]
    passed = ratio >= bound if comparison == ">=" else ratio <= bound
    return f"{comparison} {bound:.2f}", "PASS" if passed else "FAIL"


def paired_ratio(numerators, denominators):
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def make_row(section, key, measure, values, better, compare=True):
    """A table row from per-contender sample lists, paired by position; `better` is "higher" or "lower".
    Without `compare`, the row shows the values alone, with no ratios."""
    summary = {name: median_and_spread(samples) for name, samples in values.items() if samples}
    best = {name: (max if better == "higher" else min)(samples) for name, samples in values.items() if samples}
    row = {"section": section, "key": key, "measure": measure, "better": better, "compare": compare,
           "median": {name: middle for name, (middle, _) in summary.items()},
           "spread": {name: spread for name, (_, spread) in summary.items()},
           "best": best, "samples": values}
    if not compare:
        return row
    if "handwritten" in summary:
        row["toolkit/handwritten"] = paired_ratio(values["toolkit"], values["handwritten"])
        row["toolkit/handwritten_best"] = best["toolkit"] / best["handwritten"]
    if "naive" in summary:
        row["toolkit/naive"] = paired_ratio(values["toolkit"], values["naive"])
    target = key.split()[0]  # "pipeline 32": the pipeline row of one model
    if target in TARGETS and "toolkit/handwritten" in row:
        row["target"], row["result"] = check(target, row["toolkit/handwritten"])
    return row


# ---------------------------------------------------------------------------- orchestration

def code_version():
    """The repository's commit, marked when files differ from it, or "unknown"."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + (" with uncommitted changes" if changed.stdout.strip() else "")


def log(message):
    print(message, file=sys.stderr, flush=True)


class Contender:
    """A contender's process, started at once and then run one turn at a time."""

    def __init__(self, name, config, scratch, index, environment):
        self.name = name
        self.config_path = scratch / f"{name}_{index}_config.json"
        self.result_path = scratch / f"{name}_{index}.json"
        self.log_path = scratch / f"{name}_{index}.log"
        ready_read, ready_write = os.pipe()
        config = dict(config, output_dir=str(scratch / f"runs_{index}"), result_path=str(self.result_path),
                      ready_fd=ready_write)
        self.config_path.write_text(json.dumps(config))
        with open(self.log_path, "w") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker_config", str(self.config_path)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT, pass_fds=(ready_write,),
                env=environment, text=True)
        os.close(ready_write)
        self.ready = os.fdopen(ready_read)
        self.busy_s = 0.0

    def until_idle(self):
        """Wait until the process waits for its next turn (True) or has finished (False)."""
        start = time.perf_counter()
        idle = bool(self.ready.readline())
        self.busy_s += time.perf_counter() - start
        return idle

    def take_turn(self):
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return self.until_idle()

    def result(self):
        returncode = self.process.wait()
        self.ready.close()
        self.process.stdin.close()
        if returncode != 0:
            tail = "".join(self.log_path.read_text().splitlines(keepends=True)[-30:])
            raise RuntimeError(f"the {self.name} contender failed (exit {returncode}):\n{tail}")
        return json.loads(self.result_path.read_text())

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_trio(config, scratch, index, environment, names=CONTENDERS):
    """One process per contender, taking turns until all have finished; their results by name."""
    contenders = [Contender(name, config, scratch, index, environment) for name in names]
    try:
        waiting = [contender for contender in contenders if contender.until_idle()]  # set-up, all at once
        while waiting:
            waiting = [contender for contender in waiting if contender.take_turn()]
        results = {contender.name: contender.result() for contender in contenders}
    finally:
        for contender in contenders:
            contender.stop()
    for contender in contenders:
        epochs = ", ".join(f"{seconds:.2f}" for seconds in results[contender.name]["train_epoch_s"])
        log(f"  {LABELS.get(contender.name, contender.name):<12} busy {contender.busy_s:6.1f} s  (train epochs {epochs} s)")
    return results


def time_command(command, environment):
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


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
    environment = dict(os.environ) if options.default_malloc else {**os.environ, **MALLOC_ENV}
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
    hand-written column), two processes taking turns epoch by epoch, paired as above."""
    data_dir = scratch / "data"
    write_data(data_dir, options.n_train, options.n_test, options.seed)
    config = {"data_dir": str(data_dir), "epochs": options.epochs, "eval_passes": 1, "device": options.device,
              "seed": options.seed}
    environment = dict(os.environ) if options.default_malloc else {**os.environ, **MALLOC_ENV}
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


# The in-process A/B of the recipes: epoch-long turns of several trainers in one process.
RECIPES_AB = {"plain (again)": [], "per-step cosine": RECIPES_ARGV[:6], "EMA": RECIPES_ARGV[6:], "both": RECIPES_ARGV}


def recipes_ab_section(options, scratch):
    """What the recipes cost a training epoch, measured in one process: the plain toolkit and one
    trainer per entry of RECIPES_AB (a second plain one first: the method's own noise) take turns,
    one training epoch each, in a shuffled order every round; a row's ratio is the median over
    rounds of the plain trainer's epoch time over the entry's. The same process, allocator and
    data for all, so differences between processes do not enter; validation is not timed."""
    import random

    from trainer_vanilla import VanillaTrainer
    data_dir = scratch / "data"
    write_data(data_dir, options.n_train, options.n_test, options.seed)
    rounds = 4 if options.quick else 30
    base = ["--data_dir", str(data_dir), "--output_dir", str(scratch / "recipes_ab"), "--n_epoch", str(rounds + 1),
            "--seed", str(options.seed), "--batch_size", str(BATCH_SIZE), "--lr", str(LEARNING_RATE),
            "--dropout", str(DROPOUT), "--log_graph", "false", "--train_val_sample_rate", "0.25",
            "--gpu_devices", "cpu" if options.device == "cpu" else "0"]
    trainers = {}
    for name, extra in {"plain": [], **RECIPES_AB}.items():
        args, _ = VanillaTrainer.parse(base + extra)
        trainers[name] = VanillaTrainer(args)
        trainers[name].setup()
    seconds = {name: [] for name in trainers}
    order, shuffler = list(trainers), random.Random(options.seed)
    for turn in range(rounds + 1):  # the first round is a warm-up
        log(f"recipes in one process: round {turn + 1}/{rounds + 1}")
        shuffler.shuffle(order)
        for name in order:
            trainer = trainers[name]
            start = time.perf_counter()
            trainer.train_epoch()
            seconds[name].append(time.perf_counter() - start)
            trainer.progress.end_epoch({"epoch": turn + 1, trainer.args.monitor: 0.0}, trainer.args.monitor)
    for trainer in trainers.values():
        trainer.close()
    samples = len(trainers["plain"].datasets["train"])
    speeds = {name: rates(samples, times[1:]) for name, times in seconds.items()}
    rows = [make_row("recipes_ab", "recipes" if name == "both" else f"ab {name}",
                     f"train samples/s in one process: {name} vs plain", {"toolkit": speeds[name],
                                                                          "handwritten": speeds["plain"]}, "higher")
            for name in RECIPES_AB]
    details = {"train_samples": {"plain": samples}, "eval_samples": {}, "setup": (
        f"{rounds} shuffled rounds of one training epoch per trainer in one process; per-step cosine = "
        + " ".join(RECIPES_AB["per-step cosine"]) + "; EMA = " + " ".join(RECIPES_AB["EMA"])
        + "; toolkit column = the trainer named, hand-written column = the plain trainer")}
    return rows, details


# ---------------------------------------------------------------------------- UNet section
# In-process and sequential: a UNet step is long enough (tenths of a second) for start-up and
# allocator effects not to matter. Contenders take turns epoch by epoch.
UNET = {"full": {"cars": 6, "views": 8, "photo": (1280, 1918), "img_size": (128, 192), "base_width": 16,
                 "epochs": 3, "repeats": 2},
        "quick": {"cars": 7, "views": 2, "photo": (320, 480), "img_size": (64, 96), "base_width": 8,
                  "epochs": 2, "repeats": 1}}
UNET_BATCH = 8


def unet_toolkit(data_dir, output_dir, settings, cache, device):
    """A SegOnCarvanaTrainer run set up for timing: returns (trainer, its cache fill seconds)."""
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    height, width = settings["img_size"]
    argv = ["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--img_size", str(height), str(width),
            "--base_width", str(settings["base_width"]), "--batch_size", str(UNET_BATCH), "--cache", cache,
            "--augment", "false", "--val_ratio", "0.15", "--test_ratio", "0.15", "--n_epoch", "1000",
            "--gpu_devices", "0" if device == "cuda" else "cpu"]
    args, _ = SegOnCarvanaTrainer.parse(argv)

    class Timed(SegOnCarvanaTrainer):
        def setup_data(self, split=None):
            start = time.perf_counter()
            super().setup_data(split)
            self.fill_seconds = time.perf_counter() - start

    trainer = Timed(args)
    trainer.setup()
    return trainer, trainer.fill_seconds


def unet_section(options, scratch):
    """Carvana UNet: the toolkit with its cache, and without, against a loop over preloaded tensors."""
    import torch
    from data.synthetic_carvana import write_carvana
    from loss.dice_loss import BCEDiceLoss
    from model.unet import UNet
    from state.metric_sums import MetricSums

    settings = UNET["quick" if options.quick else "full"]
    device = torch.device(options.device)
    data_dir = scratch / "carvana"
    log(f"writing {settings['cars'] * settings['views']} synthetic Carvana pairs of {settings['photo']} to {data_dir}")
    write_carvana(data_dir, n_cars=settings["cars"], views=settings["views"], size=settings["photo"], seed=options.seed)
    cached, fill_seconds = unet_toolkit(data_dir, scratch / "unet_runs", settings, "memory", options.device)
    decoding, _ = unet_toolkit(data_dir, scratch / "unet_runs", settings, "none", options.device)
    train_set = cached.datasets["train"]
    images, masks = (tensor.to(device) for tensor in train_set.get_batch(torch.arange(len(train_set))))

    torch.manual_seed(options.seed)
    model = UNet(3, 1, depth=4, base_width=settings["base_width"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = BCEDiceLoss()

    def plain_epoch(epoch):
        model.train()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(options.seed + epoch))
        for start in range(0, len(order), UNET_BATCH):
            batch = order[start:start + UNET_BATCH].to(device)
            loss = loss_fn(model(images[batch].float().div_(255)), masks[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def toolkit_epoch(trainer, epoch):
        trainer.progress.epoch, trainer.progress.batches_done = epoch, 0
        trainer.progress.epoch_sums = MetricSums()
        trainer.train_epoch()

    contenders = {"toolkit": lambda epoch: toolkit_epoch(cached, epoch), "handwritten": plain_epoch,
                  "naive": lambda epoch: toolkit_epoch(decoding, epoch)}
    seconds = {name: [] for name in contenders}
    for repeat in range(settings["repeats"]):
        log(f"unet repeat {repeat + 1}/{settings['repeats']}")
        for epoch in range(settings["epochs"]):
            for name, run_epoch in contenders.items():
                synchronize(device)
                start = time.perf_counter()
                run_epoch(repeat * settings["epochs"] + epoch)
                synchronize(device)
                if epoch > 0:  # the first epoch of each repeat is a warm-up
                    seconds[name].append(time.perf_counter() - start)
    for trainer in (cached, decoding):
        trainer.close()
    samples = len(train_set)
    rows = [make_row("unet", "train", "train samples/s", {name: rates(samples, values) for name, values in seconds.items()},
                     "higher"),
            make_row("unet", "fill", "cache first fill s", {"toolkit": [fill_seconds]}, "lower", compare=False)]
    details = {"train_samples": {name: samples for name in contenders}, "eval_samples": {},
               "setup": f"UNet base {settings['base_width']}, {settings['img_size'][0]}x{settings['img_size'][1]}, "
                        f"batch {UNET_BATCH}, photos {settings['photo'][1]}x{settings['photo'][0]}; "
                        "toolkit = --cache memory, naive = the toolkit with --cache none (decoding every epoch), "
                        "hand-written = a loop over preloaded tensors"}
    return rows, details


# ---------------------------------------------------------------------------- prediction section
# Two models: the task's default (UNet base 32 at 320x480, what a Kaggle run trains) and a small one,
# whose model stage is so cheap on the CPU that decoding and encoding, on the same cores, weigh as much.
PREDICT = {"full": {"images": 64, "photo": (1280, 1918), "models": [((320, 480), 32), ((128, 192), 16)]},
           "quick": {"images": 16, "photo": (320, 480), "models": [((64, 96), 8)]}}
PREDICT_CHILD = """
import resource, sys, time
sys.path.insert(0, {root!r})
import eval_seg_on_carvana as module
original = module.SegOnCarvanaTrainer.evaluate
def timed(self, phase, *args, **kwargs):  # the streaming pass: decode, model, encode, write
    start = time.perf_counter()
    result = original(self, phase, *args, **kwargs)
    print("PREDICT_SECONDS", time.perf_counter() - start)
    return result
module.SegOnCarvanaTrainer.evaluate = timed
code = module.SegOnCarvanaEvaluator.main({argv!r})
print("PEAK_RSS_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
sys.exit(code)
"""


def predict_child(argv, environment):
    """The submission pipeline in a fresh process: (seconds of its pass over the images, peak RSS MiB)."""
    result = subprocess.run([sys.executable, "-c", PREDICT_CHILD.format(root=str(ROOT), argv=[str(a) for a in argv])],
                            cwd=ROOT, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the prediction pipeline failed:\n{result.stderr[-3000:]}")
    values = dict(line.split() for line in result.stdout.splitlines() if line.startswith(("PREDICT_", "PEAK_")))
    return float(values["PREDICT_SECONDS"]), float(values["PEAK_RSS_MIB"])


def predict_section(options, scratch):
    """Kaggle's submission pipeline (eval_seg_on_carvana.py --input_dir --submission) against the
    slowest of its stages measured alone, for each model of PREDICT; and its peak memory at 1x and
    4x the images (with the first model)."""
    from data.synthetic_carvana import write_carvana
    settings = PREDICT["quick" if options.quick else "full"]
    count, (height, width) = settings["images"], settings["photo"]
    root = scratch / "predict"
    log(f"writing {4 * count} synthetic photos of {width}x{height} to {root}")
    write_carvana(root / "photos", n_cars=count, views=4, size=(height, width), seed=options.seed)
    photos = sorted((root / "photos" / "train").glob("*.jpg"))
    for name, chosen in (("1x", photos[:count]), ("4x", photos)):
        (root / name).mkdir()
        for path in chosen:
            (root / name / path.name).symlink_to(path)
    small = write_carvana(root / "small", n_cars=4, views=2, size=(64, 96), seed=options.seed)
    rows, setups = [], []
    for index, (img_size, base_width) in enumerate(settings["models"]):
        model_rows, setup = predict_model(options, root, small, count, (height, width), img_size, base_width,
                                          memory=index == 0)
        rows += model_rows
        setups.append(setup)
    details = {"train_samples": {}, "eval_samples": {}, "setup": "; ".join(setups) + (
        "; toolkit column = the submission pipeline, hand-written column = the slowest stage alone "
        "(pipeline row), the stages one after the other (serial row) or the pipeline on 1x the images (memory row)")}
    return rows, details


def predict_model(options, root, small, count, photo, img_size, base_width, memory):
    """The rows of one model: each stage alone, the pipeline against the slowest and against the
    stages in sequence, and (with `memory`) peak memory at 4x against 1x the images."""
    import torch

    from data.carvana import CarvanaImages
    from trainer_seg_on_carvana import SegOnCarvanaTrainer, car_probability
    from utils.rle import rle_encode
    (height, width), workers = photo, min(4, os.cpu_count() or 1)
    label = f"UNet base {base_width} at {img_size[0]}x{img_size[1]}"
    log(f"prediction with {label}")
    runs_dir = root / f"runs_{base_width}_{img_size[0]}"
    trainer_argv = ["--data_dir", str(small), "--output_dir", str(runs_dir), "--img_size", *map(str, img_size),
                    "--base_width", str(base_width), "--n_epoch", "1", "--val_ratio", "0.25",
                    "--test_ratio", "0.25", "--gpu_devices", "0" if options.device == "cuda" else "cpu"]
    assert SegOnCarvanaTrainer.main(trainer_argv) == 0
    checkpoint = next(runs_dir.glob("*/UNet_best_ckpt.pth"))
    environment = {**os.environ, **MALLOC_ENV}

    # The stages alone, in this process, on the 1x images.
    images = CarvanaImages(root / "1x", img_size)
    loader = torch.utils.data.DataLoader(images, batch_size=UNET_BATCH, num_workers=workers)
    start = time.perf_counter()
    batches = [batch["image"] for batch in loader]
    decode_seconds = time.perf_counter() - start
    args, _ = SegOnCarvanaTrainer.parse(trainer_argv)
    task = SegOnCarvanaTrainer(args)
    task.setup_runtime()
    task.setup_model()
    model, device = task.eval_model.eval(), task.device
    with torch.inference_mode():
        model(batches[0].to(device).float().div_(255))  # warm-up
        synchronize(device)
        start = time.perf_counter()
        logits = [model(batch.to(device).float().div_(255)) for batch in batches]
        synchronize(device)
        model_seconds = time.perf_counter() - start
        start = time.perf_counter()
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(rle_encode, mask) for batch in logits
                       for mask in (car_probability(batch, (height, width)) > 0.5).cpu().numpy()]
            [future.result() for future in futures]
        encode_seconds = time.perf_counter() - start
    stages = {"decode+resize": count / decode_seconds, "model": count / model_seconds,
              "upsample+threshold+RLE": count / encode_seconds}
    slowest = min(stages, key=stages.get)

    runs = {}
    for name in ("1x", "4x") if memory else ("1x",):
        argv = ["--model_path", checkpoint, "--input_dir", root / name, "--submission", root / f"{name}_{base_width}.csv.gz",
                "--num_workers", workers, "--eval_batch_size", UNET_BATCH]
        runs[name] = predict_child(argv, environment)
    pipeline = count / runs["1x"][0]
    rows = [make_row("predict", f"stage {base_width}", f"{label}: stage alone, images/s: {name}", {"toolkit": [rate]},
                     "higher", compare=False) for name, rate in stages.items()]
    rows.append(make_row("predict", f"pipeline {base_width}", f"{label}: submission images/s vs slowest stage ({slowest})",
                         {"toolkit": [pipeline], "handwritten": [stages[slowest]]}, "higher"))
    serial = 1 / sum(1 / rate for rate in stages.values())  # one stage after the other, nothing overlapped
    rows.append(make_row("predict", f"serial {base_width}", f"{label}: submission images/s vs the stages one after the other",
                         {"toolkit": [pipeline], "handwritten": [serial]}, "higher"))
    if memory:
        rows.append(make_row("predict", "flat", f"{label}: peak RSS MiB, {4 * count} vs {count} images",
                             {"toolkit": [runs["4x"][1]], "handwritten": [runs["1x"][1]]}, "lower"))
    setup = (f"{label}: photos {width}x{height}, {count}" + (f" and {4 * count}" if memory else "")
             + f" images, {workers} decoding workers, batch {UNET_BATCH}")
    return rows, setup


SECTIONS = {"vanilla": vanilla_section, "recipes": recipes_section, "recipes_ab": recipes_ab_section,
            "unet": unet_section, "predict": predict_section}


# ---------------------------------------------------------------------------- report

def format_cell(row, name):
    if name not in row["median"]:
        return "-"
    value = row["median"][name]
    if not row["compare"]:
        return f"{value:.1f}"
    number = f"{value:.0f}" if value >= 100 else f"{value:.3f}"
    return f"{number} ±{row['spread'][name] * 100:.0f}%"


def format_table(rows):
    header = ["section", "measure", *(LABELS[name] for name in CONTENDERS), "tk/hand", "tk/naive", "target", "result"]
    lines = [[row["section"], row["measure"], *(format_cell(row, name) for name in CONTENDERS),
              f"{row['toolkit/handwritten']:.3f}" if "toolkit/handwritten" in row else "-",
              f"{row['toolkit/naive']:.2f}" if "toolkit/naive" in row else "-",
              row.get("target", ""), row.get("result", "")] for row in rows]
    widths = [max(len(str(line[column])) for line in [header, *lines]) for column in range(len(header))]
    text = [" | ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
            for line in [header, *lines]]
    text.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(text)


# ---------------------------------------------------------------------------- command line

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="fewer samples, epochs and repeats: a smoke run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device of every contender (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="trios of processes, one per contender (default 3, 1 with --quick)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per process, the first being a warm-up (default 6, 3 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the order (default 0)")
    parser.add_argument("--default_malloc", action="store_true",
                        help="leave glibc's malloc thresholds to their defaults instead of fixing them alike for all")
    parser.add_argument("--skip_unet", action="store_true", help="leave out the UNet section, in a benchmark that has one")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="which sections to run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table and raw timings as JSON here")
    parser.add_argument("--worker", choices=WORKERS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker_config", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker is not None:
        return options
    sizes = QUICK if options.quick else FULL
    for name, value in sizes.items():
        if getattr(options, name, None) is None:
            setattr(options, name, value)
    if options.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is a warm-up")
    if options.repeats < 1:
        parser.error("--repeats must be at least 1")
    if options.device != "cpu":
        import torch
        if options.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
        options.device = "cuda" if torch.cuda.is_available() else "cpu"
    return options


def main(argv=None):
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.worker is not None:
        worker_main(options.worker, options.worker_config)
        return 0
    sections = [name for name in options.sections if not (name == "unet" and options.skip_unet)]
    rows, details = [], {}
    load_before = os.getloadavg()[0]
    version = code_version()
    with tempfile.TemporaryDirectory(prefix="bench_") as scratch:
        for name in sections:
            section_rows, details[name] = SECTIONS[name](options, Path(scratch))
            rows.extend(section_rows)
    print(f"code {version}")
    threads = next((detail["threads"] for detail in details.values() if "threads" in detail), "?")
    print(f"device {options.device}, {threads} torch threads, "
          f"batch {BATCH_SIZE}, {options.repeats} trio(s) of processes x {options.epochs} epochs "
          f"(first one warm-up), {options.n_train} train / {options.n_test} test samples written, "
          f"malloc thresholds {'left to glibc' if options.default_malloc else 'fixed alike'}")
    load_after = os.getloadavg()[0]
    print(f"1-minute load average {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} CPUs "
          "(above the CPU count, other programs shared the CPUs)")
    for name, detail in details.items():
        print(f"{name}: samples per training epoch " + ", ".join(f"{LABELS.get(k, k)} {v}" for k, v in detail["train_samples"].items())
              + ("; per evaluation " + ", ".join(f"{LABELS[k]} {v}" for k, v in detail["eval_samples"].items())
                 if detail["eval_samples"] else ""))
        if "setup" in detail:
            print(f"{name}: {detail['setup']}")
    print(format_table(rows))
    print("toolkit/hand-written from each one's best epoch, pass or run (less sensitive to other programs): "
          + ", ".join(f"{row['measure']} {row['toolkit/handwritten_best']:.3f}" for row in rows
                      if "toolkit/handwritten_best" in row))
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"options": {key: value for key, value in vars(options).items() if not key.startswith("worker")},
                  "code": version, "load_average": [load_before, load_after], "details": details, "rows": rows, "table": format_table(rows)}
        options.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
