"""How the benchmark measures: a process's peak memory and page faults, turn-taking between
contender processes (Baton in a worker, Contender and run_trio in the parent), timed epochs of a
plain loop, and the statistics that turn raw timings into a table row (medians, spreads, paired
ratios, targets). bench/bench.py's docstring explains the method.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = Path(__file__).resolve().parent / "bench.py"  # the script a worker process runs

CONTENDERS = ("toolkit", "handwritten", "naive")
LABELS = {"toolkit": "toolkit", "handwritten": "hand-written", "naive": "naive"}

# Targets for the toolkit against the hand-written loop: row key -> (comparison, bound).
TARGETS = {
    "train": (">=", 0.95),
    "pipeline": (">=", 0.85),
    "flat": ("<=", 1.10),
    "recipes": (">=", 0.97),  # the recipes' cost under 3% of a training epoch (the MLP)
    "recipes_unet": (">=", 0.98),  # under 2% (the Carvana UNet)
    "eval": (">=", 0.90),
    "memory": ("<=", 1.10),
    "startup": ("<=", 1.20),
}

# Memory below 32 MiB is reused rather than returned to the system, in every contender alike.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def contender_environment(default_malloc):
    """The environment of a contender process: MALLOC_ENV's thresholds unless `default_malloc`."""
    return dict(os.environ) if default_malloc else {**os.environ, **MALLOC_ENV}


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- inside a process

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


def worker_main(run_contender, config_path):
    """A worker process: run the contender on the config at `config_path`, write its raw timings
    and this process's thread count and peak memory where the config says."""
    config = json.loads(Path(config_path).read_text())
    result = run_contender(config, Baton(config["ready_fd"]))
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


# ---------------------------------------------------------------------------- processes taking turns

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
                [sys.executable, str(ENTRY), "--worker", name, "--worker_config", str(self.config_path)],
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
