"""The Sweep: worker threads that claim trials (a new one, or one whose process is gone), run each
as a process of the task script, answer its reports with the pruner's decision, and tell the study
how it ended. Several sweep processes may share one study: the locks keep them apart."""
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
from sweeps import locks
from sweeps.link import ENVIRONMENT
from sweeps.space import as_argument
from sweeps.table import read_metrics


class Sweep:
    """This process's share of the study's trials: worker threads, each running one trial process at a
    time (on its GPU when there are `devices`), until the study holds `n_trials`."""

    def __init__(self, folder, study, make_sampler, params, script, task_argv, n_trials, devices):
        self.folder, self.study, self.make_sampler, self.params = folder, study, make_sampler, params
        self.script, self.task_argv, self.n_trials = script, task_argv, n_trials
        self.devices = devices
        self.lock = threading.Lock()  # one thread at a time talks to the study
        self.stopping = threading.Event()
        self.children = {}  # trial number -> its process
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
                job = self.claim()
                if job is None:
                    return
                if job == "wait":  # trials that other processes still run: they may need resuming here
                    self.stopping.wait(2)
                    continue
                self.ran += 1
                try:
                    self.run_trial(*job, device)
                finally:
                    os.close(job[1])
        except BaseException:  # a bug, or the storage gone: the other trials stop and save too
            self.failed = True
            self.stop(signal.SIGTERM)
            raise

    def trial_lock(self, number):
        return self.folder / "logs" / f"trial_{number:04d}.lock"

    def claim(self):
        """The next trial to run here: a running trial whose process is gone, else a new one.
        Returns (trial, lock descriptor, values, whether new), "wait", or None when the study is done."""
        import optuna
        from optuna.trial import TrialState
        with self.lock, locks.file_lock(self.folder / "sweep.lock"):
            trials = self.study.get_trials(deepcopy=False)
            for frozen in trials:
                if frozen.state == TrialState.RUNNING:
                    fd = locks.try_lock(self.trial_lock(frozen.number))
                    if fd is None:
                        continue
                    frozen = self.study._storage.get_trial(frozen._trial_id)  # as it is now that it is ours
                    if frozen.state != TrialState.RUNNING:  # told by its process between the read and the lock
                        os.close(fd)
                        continue
                    if set(frozen.params) != {param.name for param in self.params}:  # killed while drawing
                        self.study.tell(frozen.number, state=TrialState.FAIL)
                        print(f"trial {frozen.number} failed (stopped before its values were drawn)", flush=True)
                        os.close(fd)
                        continue
                    return optuna.trial.Trial(self.study, frozen._trial_id), fd, frozen.params, False
            started = sum(frozen.state != TrialState.WAITING for frozen in trials)
            if started < self.n_trials:
                # Seeded by the trial's place: a sweep started again draws what it would have drawn.
                self.study.sampler = self.make_sampler(started)
                trial = self.study.ask()
                values = {param.name: param.suggest(trial) for param in self.params}
                fd = locks.try_lock(self.trial_lock(trial.number))
                assert fd is not None, f"trial {trial.number} is new, its lock must be free"
                return trial, fd, values, True
            return "wait" if any(frozen.state == TrialState.RUNNING for frozen in trials) else None

    def frozen(self, trial):
        """The trial as the storage has it now (Optuna has no public read of one trial)."""
        with self.lock:
            return self.study._storage.get_trial(trial._trial_id)

    def run_trial(self, trial, lock_fd, values, new, device):
        if self.stopping.is_set():  # it stays running in the study: the next start takes it
            return
        number, frozen = trial.number, self.frozen(trial)
        folder = Path(frozen.user_attrs["run_folder"]) if "run_folder" in frozen.user_attrs else None
        status = read_metrics(folder).get("status")
        shown = " ".join(f"{name}={as_argument(value)}" for name, value in values.items())
        if status in Status.FINAL:  # it ended while the sweep was not there to record it
            return self.tell(trial, folder, 0)
        if folder is not None and any(folder.glob("*_last_ckpt.pth")):
            command, how = [self.script, "--resume", folder], f"resumed from {folder.name}"
        else:
            for old in [*self.folder.glob(f"*_trial{number:04d}"), *self.folder.glob(f"*_trial{number:04d}_*")]:
                if old.is_dir() and old.suffix != ".restarted":  # it saved nothing: it starts again, this set aside
                    old.rename(old.with_name(old.name + ".restarted"))
            command = [self.script, *self.task_argv, *(item for name, value in values.items()
                                                       for item in (f"--{name}", as_argument(value))),
                       "--output_dir", self.folder]
            how = "started" if new else "started again"
        print(f"trial {number} {how}: {shown}", flush=True)
        code = self.launch(trial, [sys.executable, *map(str, command)], lock_fd, device)
        folder = self.frozen(trial).user_attrs.get("run_folder")
        folder = Path(folder) if folder else None
        if self.stopping.is_set() and read_metrics(folder).get("status") not in Status.FINAL:
            print(f"trial {number} stopped (it continues when the sweep is started again)", flush=True)
            return
        self.tell(trial, folder, code)

    def launch(self, trial, command, lock_fd, device):
        """Run the trial's process, answering its reports; returns its exit code."""
        to_child, from_child = os.pipe(), os.pipe()
        spec = {"trial": trial.number, "fds": [to_child[0], from_child[1]], "parent": os.getpid()}
        env = {**os.environ, ENVIRONMENT: json.dumps(spec)}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        if self.n_jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # the trials share this machine's cores
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.n_jobs))
        with open(self.folder / "logs" / f"trial_{trial.number:04d}.txt", "a") as log:
            # Its own session: a Ctrl+C reaches the sweep alone, which passes it on once per press.
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       pass_fds=(to_child[0], from_child[1], lock_fd), start_new_session=True)
        self.children[trial.number] = process
        if self.stopping.is_set():
            process.send_signal(signal.SIGTERM)
        os.close(to_child[0])
        os.close(from_child[1])
        with os.fdopen(from_child[0]) as reader, os.fdopen(to_child[1], "w") as writer:
            for line in reader:
                message = json.loads(line)
                if "run_folder" in message:
                    with self.lock:
                        trial.set_user_attr("run_folder", str(Path(message["run_folder"]).resolve()))
                    answer = {}
                else:
                    answer = {"prune": self.decide(trial, message["epoch"], message["value"], message.get("last"))}
                try:
                    writer.write(json.dumps(answer) + "\n")
                    writer.flush()
                except BrokenPipeError:
                    break
        code = process.wait()
        del self.children[trial.number]
        return code

    def decide(self, trial, epoch, value, last=False):
        """Report the trial's monitor after `epoch`; whether the pruner stops it there (never after
        its `last` epoch: it is trained, it gets its test). An epoch reported before (a resumed trial
        that repeats it) gets the decision it got then."""
        frozen = self.frozen(trial)
        with self.lock:
            if epoch in frozen.intermediate_values:
                return frozen.user_attrs.get("pruned_at") == epoch
            trial.report(float(value), epoch)
            prune = not last and bool(trial.should_prune())
            if prune:
                trial.set_user_attr("pruned_at", epoch)
        return prune

    def tell(self, trial, folder, code):
        from optuna.trial import TrialState
        metrics = read_metrics(folder)
        status, best = metrics.get("status"), metrics.get("best_value")
        with self.lock, locks.file_lock(self.folder / "sweep.lock"):  # never between another process's read and lock
            if status == Status.PRUNED:  # the status is written last: the run got that far, whatever its exit code
                self.study.tell(trial.number, state=TrialState.PRUNED)
                outcome = f"pruned after epoch {metrics.get('epochs_done')}"
            elif status in Status.FINAL and isinstance(best, (int, float)) and math.isfinite(best):
                self.study.tell(trial.number, best)
                outcome = f"complete: best {metrics.get('monitor')} {best:.6g}"
            else:
                self.study.tell(trial.number, state=TrialState.FAIL)
                log = self.folder / "logs" / f"trial_{trial.number:04d}.txt"
                outcome = f"failed (exit code {code}: {last_line(log)}; see {log})"
        print(f"trial {trial.number} {outcome}", flush=True)


def last_line(path):
    """The last line a trial wrote to its log, for the line that says it failed."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"
