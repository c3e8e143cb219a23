"""Workers' heartbeats: a worker beats for each trial it runs; a running trial whose worker stopped
beating for two periods (the grace period) is failed, and its parameters are queued again with
Optuna's retry bookkeeping (`failed_trial`, `retry_history`).

On a database (RDB storage) this is Optuna's own heartbeat and `fail_stale_trials`. Optuna's journal
storage has none: there, the beat is the trial's `heartbeat` system attribute (the worker's clock, in
seconds), and the check below fails the trials whose beat is older than the grace period, which
needs the machines' clocks to agree (NTP) to well within it."""
import threading
import time

from sweeps.storage import retry_callback

BEAT = "heartbeat"


class Heartbeat:
    """A thread that beats every `interval` seconds for the trials this worker runs."""

    def __init__(self, storage, kind, interval):
        self.storage, self.kind, self.interval = storage, kind, interval
        self.trials = set()  # the trial ids beaten for
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        if interval:
            threading.Thread(target=self.loop, daemon=True).start()

    def add(self, trial_id):
        """Beat for `trial_id` from now on (the first beat now, before anyone can find it stale)."""
        with self.lock:
            self.trials.add(trial_id)
        self.beat(trial_id)

    def remove(self, trial_id):
        with self.lock:
            self.trials.discard(trial_id)

    def beat(self, trial_id):
        if not self.interval:
            return
        if self.kind == "journal":
            self.storage.set_trial_system_attr(trial_id, BEAT, time.time())
        else:
            self.storage.record_heartbeat(trial_id)

    def loop(self):
        while not self.stopped.wait(self.interval):
            with self.lock:
                trials = list(self.trials)
            for trial_id in trials:
                try:
                    self.beat(trial_id)
                except Exception:  # a trial another worker finished meanwhile, or the storage briefly away
                    pass


def fail_stale(study, kind, interval):
    """Fail the running trials whose worker stopped beating and queue them again; returns their numbers."""
    import optuna
    from optuna.trial import TrialState
    if not interval:
        return []
    if kind != "journal":
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        optuna.storages.fail_stale_trials(study)
        return sorted({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before)
    storage, failed, now = study._storage, [], time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        last = max(trial.system_attrs.get(BEAT, started), started)  # a retry carries its first try's beat
        if now - last <= 2 * interval:
            continue
        try:
            failed_now = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            continue
        if failed_now:
            retry_callback()(study, storage.get_trial(trial._trial_id))
            failed.append(trial.number)
    return failed
