"""Which trial a worker runs next, decided through the storage, so that workers on several machines
share nothing but the study:

1. a running trial of this worker's own sweep folder whose process is gone (its lock file there is
   free: a sweep stopped on this machine and started again) continues in place, same number;
2. a running trial whose worker stopped beating (sweeps/heartbeat.py) is failed and queued again;
3. a queued trial (a retry, a grid point) is taken by setting it running, which one worker wins;
4. else a new trial, while the study holds fewer than `n_trials` parameter sets.

A parameter set's place (its slot) is its trial number less the retries numbered before it: the
sampler of a new trial is seeded with --seed and its slot, so that a random sampler draws the same
sets whatever the number of workers, retries or restarts. Two workers that add the last slot at
once: the second puts its trial back in the queue (it waits there for a larger --n_trials)."""
import os
import socket
from dataclasses import dataclass

from sweeps import locks
from sweeps.heartbeat import fail_stale

WORKER = "worker"  # the user attribute naming the worker that runs the trial: host:sweep folder


@dataclass
class Claim:
    trial: object  # an optuna.trial.Trial, running
    lock_fd: int  # holds the trial's lock file in this sweep folder while its process runs
    values: dict  # the swept options' values
    how: str  # "started", "continued" (here, in place) or "retried" (another worker's)


def is_retry(frozen):
    return "failed_trial" in frozen.system_attrs


def slot_of(frozen, trials):
    """The trial's place among the study's parameter sets (retries do not take one)."""
    return frozen.number - sum(1 for other in trials if other.number < frozen.number and is_retry(other))


def worker_name(folder):
    return f"{socket.gethostname()}:{folder}"


class Claims:
    """The claims of one worker (a sweep process in `folder`) on `study`."""

    def __init__(self, study, folder, params, make_sampler, n_trials, heartbeat):
        self.study, self.folder, self.params, self.make_sampler = study, folder, params, make_sampler
        self.n_trials, self.heartbeat = n_trials, heartbeat  # heartbeat: a sweeps.heartbeat.Heartbeat
        self.name = worker_name(folder)

    def lock_path(self, number):
        return self.folder / "logs" / f"trial_{number:04d}.lock"

    def next(self):
        """A Claim, "wait" (trials run elsewhere may still need a retry here), or None (the study is done)."""
        from optuna.trial import TrialState
        for number in fail_stale(self.study, self.heartbeat.kind, self.heartbeat.interval):
            print(f"trial {number} failed: its worker stopped beating; its parameters are queued again", flush=True)
        trials = self.study.get_trials(deepcopy=False)
        claim = self.continue_own(trials)
        if claim is None:
            claim = self.pop_waiting(trials)
        if claim is None and sum(not is_retry(t) and t.state != TrialState.WAITING for t in trials) < self.n_trials:
            claim = self.new_trial()
        if claim is not None:
            return claim
        return "wait" if any(t.state == TrialState.RUNNING for t in self.study.get_trials(deepcopy=False)) else None

    def continue_own(self, trials):
        """A running trial of this sweep folder whose process is gone, continued in place."""
        from optuna.trial import TrialState
        for frozen in trials:
            if frozen.state != TrialState.RUNNING or frozen.user_attrs.get(WORKER) != self.name:
                continue
            fd = locks.try_lock(self.lock_path(frozen.number))
            if fd is None:
                continue
            frozen = self.study._storage.get_trial(frozen._trial_id)  # as it is now that its lock is ours
            if frozen.state != TrialState.RUNNING:  # told by its process between the read and the lock
                os.close(fd)
                continue
            if set(frozen.params) != {param.name for param in self.params}:  # stopped while drawing
                self.study.tell(frozen.number, state=TrialState.FAIL)
                print(f"trial {frozen.number} failed (stopped before its values were drawn)", flush=True)
                os.close(fd)
                continue
            return self.claimed(frozen, fd, "continued")
        return None

    def pop_waiting(self, trials):
        """A queued trial within the study's size (a retry always is), set running by this worker."""
        import optuna
        from optuna.trial import TrialState
        for frozen in trials:
            if frozen.state != TrialState.WAITING or not is_retry(frozen) and slot_of(frozen, trials) >= self.n_trials:
                continue
            try:
                if not self.study._storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING):
                    continue  # another worker took it
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            return self.claimed(frozen, None, "retried" if is_retry(frozen) else "started")
        return None

    def new_trial(self):
        from optuna.trial import TrialState
        storage = self.study._storage
        trial_id = storage.create_new_trial(self.study._study_id)
        frozen = storage.get_trial(trial_id)
        if slot_of(frozen, self.study.get_trials(deepcopy=False)) >= self.n_trials:  # another worker took the last
            storage.set_trial_state_values(trial_id, TrialState.WAITING)
            return None
        return self.claimed(frozen, None, "started")

    def claimed(self, frozen, fd, how):
        """The claim of `frozen` (running, ours): its heartbeat, its worker, its values drawn."""
        import optuna
        self.heartbeat.add(frozen._trial_id)
        if fd is None:
            fd = locks.try_lock(self.lock_path(frozen.number))
            assert fd is not None, f"trial {frozen.number} was just claimed, its lock must be free"
        self.study.sampler = self.make_sampler(slot_of(frozen, self.study.get_trials(deepcopy=False)))
        trial = optuna.trial.Trial(self.study, frozen._trial_id)
        trial.set_user_attr(WORKER, self.name)
        values = {param.name: param.suggest(trial) for param in self.params}
        return Claim(trial, fd, values, how)
