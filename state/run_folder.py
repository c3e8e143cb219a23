"""The run folder, `<output_dir>/<timestamp>/`: every file a run writes, in one place.

    config.json    options, environment, resumes        split.json     the train / val / test split
    log.txt        the console, with timestamps         summary/       TensorBoard
    metrics.json   history, best epoch, status, test    <model_type>_{last,best}_ckpt.pth

Training, resume and the evaluator all use it. Only the main process writes (`writes=False`
elsewhere): the other ranks of a DDP run read the same folder. Every file is written atomically
with the permissions of the user's umask.

`last` and `best` never disagree: `last` is the training state; when an epoch improves the
monitored metric, `best` is written after it with the same bytes. A kill or a full disk between
the two leaves a `last` that names its own epoch as the best one and an older `best`, which
`repair_best` (state/checkpoint.py) rewrites from `last` before anything reads it.
"""
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from tracking.trackers import Writer, open_trackers
from utils import distributed
from utils.atomic import save_atomic, write_json_atomic
from utils.errors import UserError
from utils.timestamp import make_run_dir


HELD_LOCKS = {}  # run folder -> the open `.lock` by which this process holds it


class RunFolder:
    def __init__(self, path, model_type, writes=True):
        self.path = Path(path)
        self.model_type = model_type
        self.writes = writes
        self.writer = None
        self.lock_handle = None  # the open `.lock` while this process trains the run
        self.removed_at_close = False  # a run that failed before it saved anything: nothing to keep
        self.branched_from = None  # the run folder this one continues from an older state (state/branch.py)

    @classmethod
    def create(cls, output_dir, model_type, writes=True, suffix="", name=None):
        """A new timestamped folder in `output_dir` (its name ending in `suffix`), or the folder `name`
        there (--run_name: a requeued job finds it again), made by the main process and named to every
        rank, and locked before anything is written to it."""
        path = None
        if writes:
            try:
                path = make_run_dir(output_dir, suffix) if name is None else make_named_dir(output_dir, name)
            except OSError as error:
                raise UserError(f"cannot create a run folder in --output_dir {output_dir}: "
                                f"{error.strerror or error}") from None
        run = cls(distributed.broadcast_object(str(path) if path else None), model_type, writes)
        run.lock()
        return run

    @classmethod
    def create_for(cls, args, writes=True, suffix=""):
        """The new folder of a training run with the options `args`: in --output_dir (else
        Results/<proj_name>), named --run_name, else by the time, a debug run's suffix and `suffix`."""
        from cli.arguments import debug_run_suffix
        output = args.output_dir or Path("Results") / args.proj_name
        return cls.create(output, args.model_type, writes, debug_run_suffix(args) + suffix, args.run_name)

    @classmethod
    def resumed(cls, checkpoint_path, model_type, writes=True):
        """The folder of the run that `checkpoint_path` resumes, locked."""
        run = cls(Path(checkpoint_path).parent, model_type, writes)
        run.lock()
        return run

    def lock(self):
        """Hold `<run>/.lock` while this process trains the run (the main process; the lock goes with
        the process, also when it is killed): a second process that would resume it is refused. A
        lock this process holds already (a start refused after locking, in a test or a notebook) is
        taken over, not refused."""
        if not self.writes:
            return
        import fcntl
        key = self.path.resolve()
        if key in HELD_LOCKS and not HELD_LOCKS[key].closed:
            self.lock_handle = HELD_LOCKS[key]
            return
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"run {self.path} is being trained by {holder}; resume it once that process has "
                            "ended, or start a new run") from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self.lock_handle = HELD_LOCKS[key] = handle  # kept open: closing it releases the lock

    def checkpoint_path(self, kind):
        return self.path / f"{self.model_type}_{kind}_ckpt.pth"

    # ------------------------------------------------------------------ small files
    def read_json(self, name):
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_json(self, name, content):
        if self.writes:
            write_json_atomic(content, self.path / name)

    def read_split(self):
        split = self.read_json("split.json")
        if split is None:
            raise UserError(f"{self.path / 'split.json'} is missing; the run's split cannot be restored")
        return split

    def remove_stale_temporaries(self, log):
        """Half-written files of a process that was killed during a write."""
        if self.writes:
            for stale in self.path.glob(".*.tmp"):
                stale.unlink()
                log.info(f"removed {stale.name}, left by an interrupted write")

    def write_config(self, options, device, world_size, resumed_from=None, position=None, model=None):
        """config.json: the options, the environment of the first start, one entry per resume, and
        `model` (parameter counts and size)."""
        previous = self.read_json("config.json") or {}
        environment = previous.get("environment") or {
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "platform": platform.platform(), "hostname": socket.gethostname(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "world_size": world_size, **git_state(), "command": " ".join(sys.argv),
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        resumes = previous.get("resumes", [])
        if resumed_from is not None:
            epoch, _, global_step = position
            resumes.append({"from": str(resumed_from), "epoch": epoch, "global_step": global_step,
                            "at": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
                            "device": str(device), "launch": distributed.launch(), **git_state()})
        self.write_json("config.json", {"options": options, "environment": environment, "resumes": resumes,
                                        "model": model or previous.get("model")})

    def write_graph(self, model, inputs, log):
        """The model's graph in TensorBoard's Graphs tab, traced from `inputs`. A model the tracer
        cannot follow gets a warning, not a failed run."""
        if self.writer is None:
            return
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's advice about TorchScript
                self.writer.add_graph(model, inputs, use_strict_trace=False)
            self.writer.flush()
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            log.warning(f"model graph not written to TensorBoard ({type(error).__name__}: {first}); "
                        "--log_graph false leaves it out")

    def open_writer(self, purge_step=None, loggers=("tensorboard",), options=None, saved=None):
        """The writer (main process only) to TensorBoard and the trackers in `loggers` (tracking/trackers.py),
        for a run with `options` (JSON values). On resume, TensorBoard drops the events past the
        checkpoint's step, written by the interrupted process after it saved (`purge_step` is the first
        step to drop), and the trackers continue from what they had committed (`saved`, the writer's
        `state` in that checkpoint)."""
        if self.writes:
            trackers, committed = open_trackers([name for name in loggers if name != "tensorboard"], self.path,
                                                options or {}, saved)
            tensorboard = None
            if "tensorboard" in loggers:
                from torch.utils.tensorboard import SummaryWriter  # heavy import, only when a run starts
                wait_for_a_later_second(self.path / "summary")
                tensorboard = SummaryWriter(self.path / "summary", purge_step=purge_step)
            self.writer = Writer(tensorboard, trackers, committed)
        return self.writer

    def write_epoch_scalars(self, record):
        """An epoch's `<phase>/<metric>` values and its lr, at the epoch's number."""
        if self.writer is not None:
            for name, number in record.items():
                if "/" in name:
                    self.writer.add_scalar(name, number, record["epoch"])
            self.writer.add_scalar("lr", record["lr"], record["epoch"])
            self.writer.flush()

    def write_hparams(self, options, test_metrics, step, best=None):
        """The test metrics at `step`, and the HPARAMS tab's row of this run (with `best`, the monitor's best);
        the run's end, so the trackers receive them now."""
        if self.writer is None:
            return
        for name, value in test_metrics.items():
            self.writer.add_scalar(name, value, step)
        hparams = {name: (value if isinstance(value, (int, float, str, bool)) else str(value))
                   for name, value in options.items()}
        final = {f"hparam/{name}": value for name, value in test_metrics.items()}
        if best is not None:
            final[f"hparam/best_{options['monitor']}"] = best
        self.writer.add_hparams(hparams, final, run_name="hparams")
        self.writer.flush()
        self.writer.commit()

    def close(self, status="finished"):
        """Close the writer, `status` (finished, stopped or failed) ending the trackers' runs; release the lock."""
        if self.writer is not None:
            self.writer.close(status)
            self.writer = None
        if self.lock_handle is not None:
            self.lock_handle.close()
            self.lock_handle = None
        if self.removed_at_close and self.writes:
            shutil.rmtree(self.path, ignore_errors=True)

    def remove_at_close(self):
        """Remove the folder when the run closes: it failed before saving a state to resume or test."""
        self.removed_at_close = True

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state, best=False):
        """Write `last`, then (for a new best) `best`, with the same bytes."""
        if not self.writes:
            return
        buffer = io.BytesIO()
        torch.save(state, buffer)  # serialised once, written to each file
        save_atomic(buffer.getvalue(), self.checkpoint_path("last"))
        if best:
            save_atomic(buffer.getvalue(), self.checkpoint_path("best"))

    def copy_checkpoint(self, kind, name):
        """A copy of the `kind` checkpoint as the file `name`, written atomically."""
        if self.writes:
            save_atomic(self.checkpoint_path(kind).read_bytes(), self.path / name)

    def top_k_name(self, epoch, monitor, value):
        """`<model_type>_epoch<N>_<metric><value>.pth` of a top-k checkpoint."""
        return f"{self.model_type}_epoch{epoch:03d}_{monitor.replace('/', '_')}{value:.4f}.pth"

    def delete(self, names):
        for name in names if self.writes else ():
            (self.path / name).unlink(missing_ok=True)

    def reconcile_top_k(self, kept, epoch, batches_done, log):
        """Make the top-k files those `kept` lists (the resumed state's), after a cut between a save
        and a deletion: files it does not list go; a listed file missing because the cut came
        before its write is rewritten from `last` when that holds its epoch. Returns `kept`, less
        what could not be restored."""
        if not self.writes:
            return kept
        listed = {entry["file"] for entry in kept}
        named = re.compile(re.escape(self.model_type) + r"_epoch\d{3,}_.+\.pth")
        stale = sorted(path.name for path in self.path.glob(f"{self.model_type}_epoch*.pth")
                       if named.fullmatch(path.name) and path.name not in listed)
        if stale:
            self.delete(stale)
            log.warning(f"removed {', '.join(stale)}: past the top-k of the resumed state (a save cut short)")
        restored = []
        for entry in kept:
            if not (self.path / entry["file"]).is_file():
                if entry["epoch"] != epoch or batches_done:
                    log.warning(f"{entry['file']} is missing and cannot be rebuilt; it leaves the top-k")
                    continue
                save_atomic(self.checkpoint_path("last").read_bytes(), self.path / entry["file"])
                log.warning(f"{entry['file']} was not written (a save cut short); rewrote it from the last checkpoint")
            restored.append(entry)
        return restored


def make_named_dir(output_dir, name):
    """`<output_dir>/<name>`, made if missing (resume_policy.py has refused one that holds another run). A
    folder left by a start that died before its first save loses its TensorBoard events and CSV rows:
    they describe steps this run takes again, which TensorBoard would show twice."""
    path = Path(output_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(path / "summary", ignore_errors=True)
    (path / "metrics.csv").unlink(missing_ok=True)
    return path


def wait_for_a_later_second(folder):
    """TensorBoard reads a run's event files in the order of their names, which start with the
    second they were opened in and end with a counter of the process: a resume in the second of an
    earlier file (the same process, a test or a notebook) waits for the next second, so that its
    file sorts after it and drops the points it replaces."""
    stamps = [int(path.name.split(".")[3]) for path in folder.glob("events.out.tfevents.*")
              if path.name.split(".")[3].isdigit()] if folder.is_dir() else []
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


def git_state():
    """The commit of the code that runs, and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None, "git_dirty": None}
    if commit.returncode != 0:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
