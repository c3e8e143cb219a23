"""The Sweep: worker threads that claim trials through the storage (sweeps/claims.py), run each as a
process of the task script (with torchrun for --nproc_per_trial), beat for it while it runs, and tell
the study how it ended. The trial's process reports its epochs to the study itself (sweeps/link.py).
Sweep processes on any number of machines may share one study: they share nothing but its storage."""
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from state.status import Status
from sweeps.claims import Claims
from sweeps.heartbeat import Heartbeat
from sweeps.link import ENVIRONMENT
from sweeps.space import as_argument
from sweeps.storage import storage_spec
from sweeps.table import read_metrics

# Run in the trial's place: Linux sends it SIGTERM when the sweep dies (torchrun passes it on to the
# ranks, which save their state), then it becomes torchrun.
TORCHRUN = ("import ctypes, os, signal, sys\n"
            "ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
            "os.getppid() == int(sys.argv[1]) or os.kill(os.getpid(), signal.SIGTERM)\n"
            "os.execv(sys.executable, [sys.executable, '-m', 'torch.distributed.run', *sys.argv[2:]])")


class Sweep:
    """This process's share of the study's trials: worker threads, each running one trial process at a
    time (on its GPU when there are `devices`), until the study holds `n_trials` parameter sets, each
    ended once. `storage` is the study's StorageSpec (default: study.db in `folder`), `heartbeat` the
    period of the workers' beats (None: none), `trial_dir` where the trials' run folders go (default:
    `folder`), `nproc_per_trial` the processes of each trial (torchrun), `pruner` its settings."""

    def __init__(self, folder, study, make_sampler, params, script, task_argv, n_trials, devices, storage=None,
                 heartbeat=None, trial_dir=None, nproc_per_trial=1, pruner=None):
        self.folder, self.study, self.make_sampler, self.params = folder, study, make_sampler, params
        self.script, self.task_argv, self.n_trials = script, task_argv, n_trials
        self.devices, self.nproc_per_trial = devices, nproc_per_trial
        self.storage = storage or storage_spec(None, folder)
        self.trial_dir = Path(trial_dir or folder)
        self.pruner = pruner or {"pruner": "none"}
        self.beats = Heartbeat(study._storage, self.storage.kind, heartbeat)
        self.claims = Claims(study, folder, params, make_sampler, n_trials, self.beats)
        self.lock = threading.Lock()  # one thread at a time talks to the study
        self.stopping = threading.Event()
        self.children = {}  # trial number -> its process
        self.stopped_alone = {}  # trial number -> how often its process stopped while the sweep did not
        self.failed = False  # a worker died of an exception (its traceback is printed)
        self.ran = 0  # trials this process ran or resumed
        (folder / "logs").mkdir(exist_ok=True)

    def run(self, n_jobs):
        """Run trials until the study holds n_trials finished ones; returns the exit code."""
        self.n_jobs = n_jobs
        threads = [threading.Thread(target=self.worker, args=(self.devices[i % len(self.devices)]
                                                               if self.devices else None,), daemon=True)
                   for i in range(n_jobs)]
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.stop(signal.SIGTERM))
        try:
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):  # not join: a Ctrl+C in it can lose the thread
                try:
                    time.sleep(0.2)
                except KeyboardInterrupt:  # each press goes to the trials: the second stops them at once
                    self.stop(signal.SIGINT)
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.beats.stopped.set()
        for thread in threads:
            thread.join()
        if self.failed:
            print("sweep stopped by the error above; the same command continues it", flush=True)
            return 1
        if self.stopping.is_set():
            print("sweep stopped; the running trials saved their state. The same command continues it.", flush=True)
            return 130
        if not self.ran:
            print(f"the study holds its {self.n_trials} trials already: no new trial ran (a larger --n_trials "
                  "runs more)", flush=True)
        return 0

    def stop(self, signum):
        """Stop the running trials (they save their state) and start no new ones."""
        if not self.stopping.is_set():
            print("stopping: the running trials save their state and stop", flush=True)
        self.stopping.set()
        for process in list(self.children.values()):
            if process.poll() is None:
                process.send_signal(signum)

    def worker(self, device):
        try:
            while not self.stopping.is_set():
                claim = self.claim()
                if claim is None:
                    return
                if claim == "wait":  # trials that other workers still run: they may need a retry here
                    self.stopping.wait(min(2, self.beats.interval or 2))
                    continue
                self.ran += 1
                try:
                    self.run_trial(claim, device)
                finally:
                    self.beats.remove(claim.trial._trial_id)
                    os.close(claim.lock_fd)
        except BaseException:  # a bug, or the storage gone: the other trials stop and save too
            self.failed = True
            self.stop(signal.SIGTERM)
            raise

    def claim(self):
        """The next Claim of this worker (see Claims.next)."""
        with self.lock:
            return self.claims.next()

    def frozen(self, trial):
        """The trial as the storage has it now (Optuna has no public read of one trial)."""
        with self.lock:
            return self.study._storage.get_trial(trial._trial_id)

    def run_trial(self, claim, device):
        if self.stopping.is_set():  # it stays running in the study: the next start takes it
            return
        trial, values = claim.trial, claim.values
        number, frozen = trial.number, self.frozen(trial)
        folder = Path(frozen.user_attrs["run_folder"]) if "run_folder" in frozen.user_attrs else None
        status = read_metrics(folder).get("status")
        shown = " ".join(f"{name}={as_argument(value)}" for name, value in values.items())
        if status in Status.FINAL:  # it ended while the sweep was not there to record it
            return self.tell(trial, folder, 0)
        retry = f" (retry of trial {frozen.system_attrs['failed_trial']})" if claim.how == "retried" else ""
        if folder is not None and folder.parent == self.trial_dir and any(folder.glob("*_last_ckpt.pth")):
            # In this worker's --trial_dir (a shared one: any worker's trial): its checkpoint is continued.
            command, how = [self.script, "--resume", folder], f"resumed from {folder.name}{retry}"
        else:
            for old in [*self.trial_dir.glob(f"*_trial{number:04d}"), *self.trial_dir.glob(f"*_trial{number:04d}_*")]:
                if old.is_dir() and old.suffix != ".restarted":  # it saved nothing: it starts again, this set aside
                    old.rename(old.with_name(old.name + ".restarted"))
            command = [self.script, *self.task_argv, *(item for name, value in values.items()
                                                       for item in (f"--{name}", as_argument(value))),
                       "--output_dir", self.trial_dir]
            how = {"started": "started", "continued": "started again"}.get(claim.how, f"started again{retry}")
        print(f"trial {number} {how}: {shown}", flush=True)
        code = self.launch(trial, list(map(str, command)), claim.lock_fd, device)
        folder = self.frozen(trial).user_attrs.get("run_folder")
        folder = Path(folder) if folder else None
        status = read_metrics(folder).get("status")
        if self.stopping.is_set() and status not in Status.FINAL:
            print(f"trial {number} stopped (it continues when the sweep is started again)", flush=True)
            return
        if status == Status.INTERRUPTED and self.stopped_alone.setdefault(number, 0) < 3:
            # It stopped with its state saved while the sweep did not stop (a pruning answer it could
            # not get): it is running still, for the study, and continues at this worker's next claim.
            self.stopped_alone[number] += 1
            print(f"trial {number} stopped ({last_line(self.log_path(number))}); it continues", flush=True)
            return
        self.tell(trial, folder, code)

    def log_path(self, number):
        return self.folder / "logs" / f"trial_{number:04d}.txt"

    def launch(self, trial, command, lock_fd, device):
        """Run the trial's process (`command`: the script and its options; with --nproc_per_trial, under
        torchrun) and wait for it; returns its exit code. Rank 0 talks to the study (sweeps/link.py)."""
        spec = {"trial": trial.number, "trial_id": trial._trial_id, "study": self.study.study_name,
                "storage": self.storage.url, "pruner": self.pruner, "parent": os.getpid()}
        env = {**os.environ, ENVIRONMENT: json.dumps(spec)}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        processes = self.n_jobs * self.nproc_per_trial
        if processes > 1 and "OMP_NUM_THREADS" not in os.environ:  # the trials share this machine's cores
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
        if self.nproc_per_trial > 1:
            command = [sys.executable, "-c", TORCHRUN, str(os.getpid()), "--standalone",
                       f"--nproc_per_node={self.nproc_per_trial}", *command]
        elif command[0] != sys.executable:
            command = [sys.executable, *command]
        with open(self.log_path(trial.number), "a") as log:
            # Its own session: a Ctrl+C reaches the sweep alone, which passes it on once per press.
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       pass_fds=(lock_fd,), start_new_session=True)
        self.children[trial.number] = process
        if self.stopping.is_set():
            process.send_signal(signal.SIGTERM)
        code = process.wait()
        del self.children[trial.number]
        return code

    def tell(self, trial, folder, code):
        import optuna
        from optuna.trial import TrialState
        metrics = read_metrics(folder)
        status, best = metrics.get("status"), metrics.get("best_value")
        if status == Status.PRUNED:  # the status is written last: the run got that far, whatever its exit code
            told, outcome = {"state": TrialState.PRUNED}, f"pruned after epoch {metrics.get('epochs_done')}"
        elif status in Status.FINAL and isinstance(best, (int, float)) and math.isfinite(best):
            told, outcome = {"values": best}, f"complete: best {metrics.get('monitor')} {best:.6g}"
        else:
            log = self.log_path(trial.number)
            told, outcome = {"state": TrialState.FAIL}, f"failed (exit code {code}: {last_line(log)}; see {log})"
        try:
            with self.lock:
                self.study.tell(trial.number, **told)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # failed meanwhile by a worker that
            outcome = "was failed by another worker meanwhile (no heartbeat reached it); its retry counts"
        print(f"trial {trial.number} {outcome}", flush=True)


def last_line(path):
    """The last line a trial wrote to its log, for the line that says it failed."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"
