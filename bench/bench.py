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
with the same fixed thresholds (MALLOC_ENV in measure.py); `--default_malloc` leaves glibc's
defaults.
The "page faults / train step" row shows what each contender met.

The recipes section runs the toolkit with a per-step cosine schedule and an EMA of the weights
(RECIPES_ARGV in vanilla.py) against the toolkit without them, two processes taking turns as
above: the ratio is what those recipes cost a training epoch, validation of the averaged weights
not included.

The recipes_ab section measures the same cost in one process (so that the differences between
processes do not enter), for the MLP and for the Carvana UNet at the task's defaults (a small UNet
with --quick): trainers with and without the recipes, and a second plain one as a control, take
turns epoch by epoch in a shuffled order. Where the trainer has --ema_every_n_steps, the MLP also
runs both recipes with the average updated every 4 steps.

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

The export section times both tasks' default models on the CPU at batch 1 and at the evaluator's
batch size: PyTorch eager, PyTorch as the evaluator runs it, and onnxruntime on the exported ONNX
file, in this process, taking turns block by block; ratios are to eager (exported.py's docstring).

The modules: measure.py (turn-taking processes, memory, statistics, table rows), toolkit.py (every
call into the toolkit's trainers), vanilla.py (the MLP's contenders, the vanilla and recipes
sections), recipes.py (recipes_ab), unet.py, predict.py and exported.py (their sections). buckets.py
is a script of its own, run under torchrun (its docstring).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# This folder's modules (also when this file is not run as a script), then the toolkit's packages.
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from exported import export_section  # noqa: E402
from measure import CONTENDERS, LABELS, ROOT, worker_main  # noqa: E402
from predict import predict_section  # noqa: E402
from recipes import recipes_ab_section  # noqa: E402
from unet import unet_section  # noqa: E402
from vanilla import BATCH_SIZE, WORKERS, recipes_section, vanilla_section  # noqa: E402

FULL = {"n_train": 60000, "n_test": 10000, "epochs": 6, "repeats": 3, "eval_passes": 5, "startup_runs": 5}
QUICK = {"n_train": 6000, "n_test": 2000, "epochs": 3, "repeats": 1, "eval_passes": 3, "startup_runs": 3}

SECTIONS = {"vanilla": vanilla_section, "recipes": recipes_section, "recipes_ab": recipes_ab_section,
            "unet": unet_section, "predict": predict_section, "export": export_section}


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
        worker_main(WORKERS[options.worker], options.worker_config)
        return 0
    sections = [name for name in options.sections if not (name == "unet" and options.skip_unet)]
    rows, details = [], {}
    load_before = os.getloadavg()[0]
    version = code_version()
    with tempfile.TemporaryDirectory(prefix="bench_") as scratch:
        for name in sections:
            section_rows, details[name] = SECTIONS[name](options, Path(scratch))
            rows.extend(section_rows)
    load_average = [load_before, os.getloadavg()[0]]
    print_report(options, version, load_average, details, rows)
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"options": {key: value for key, value in vars(options).items() if not key.startswith("worker")},
                  "code": version, "load_average": load_average, "details": details, "rows": rows, "table": format_table(rows)}
        options.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


def print_report(options, version, load_average, details, rows):
    """The run's conditions, each section's sizes and set-up, and the table."""
    print(f"code {version}")
    threads = next((detail["threads"] for detail in details.values() if "threads" in detail), "?")
    print(f"device {options.device}, {threads} torch threads, "
          f"batch {BATCH_SIZE}, {options.repeats} trio(s) of processes x {options.epochs} epochs "
          f"(first one warm-up), {options.n_train} train / {options.n_test} test samples written, "
          f"malloc thresholds {'left to glibc' if options.default_malloc else 'fixed alike'}")
    print(f"1-minute load average {load_average[0]:.2f} before, {load_average[1]:.2f} after, on {os.cpu_count()} CPUs "
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


if __name__ == "__main__":
    sys.exit(main())
