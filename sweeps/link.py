"""The trial's side of a sweep (sweep.py): a run started by a sweep reports its monitor to the study
after each epoch and learns there whether to stop (pruned).

sweep.py starts each trial as an ordinary run of the task script (under torchrun with
--nproc_per_trial), with `TORCH_TEMPLATE_SWEEP` in its environment: `{"trial", "trial_id", "study",
"storage", "pruner", "parent"}`. The run folder gets the suffix `_trial<N>`. Rank 0 alone opens the
study: it records the run folder, then after each epoch reports the monitor and takes the pruner's
decision, which it records in the trial (`decided_through`, `pruned_at`) before the epoch is saved.
An epoch reported again (a resumed or retried trial) gets the decision recorded for it; an answer the
storage could not give is None, never "do not prune": the run then stops with its state saved and
asks again when it resumes. A run started by hand has no link and trains as always. On Linux the run
also receives SIGTERM when the sweep process dies (and so saves its state and stops).
"""
import json
import os
import signal
import sys

ENVIRONMENT = "TORCH_TEMPLATE_SWEEP"


class SweepLink:
    def __init__(self, spec, talks=True):
        self.spec, self.trial = spec, spec["trial"]
        self.talks = talks  # rank 0 talks to the study; the other ranks follow its decisions
        self.study = None
        self.error = None  # why the study did not answer, when it did not

    @classmethod
    def from_environment(cls):
        """The link of a run started by a sweep, or None."""
        spec = os.environ.pop(ENVIRONMENT, None)  # not inherited by the run's own workers
        if not spec:
            return None
        spec = json.loads(spec)
        under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
        stop_with_parent(None if under_torchrun else spec.get("parent"))
        return cls(spec, talks=os.environ.get("RANK", "0") == "0")

    @property
    def suffix(self):
        return f"_trial{self.trial:04d}"

    def open(self):
        """The study, opened on first use; its pruner is the sweep's."""
        if self.study is None:
            import optuna
            from sweeps.storage import open_storage, storage_spec
            from sweeps.study import make_pruner
            storage = open_storage(storage_spec(self.spec["storage"], None))
            self.study = optuna.load_study(study_name=self.spec["study"], storage=storage,
                                           pruner=make_pruner(self.spec["pruner"]))
        return self.study

    def trial_object(self):
        import optuna
        return optuna.trial.Trial(self.open(), self.spec["trial_id"])

    def started(self, run_folder):
        if self.talks:
            self.trial_object().set_user_attr("run_folder", str(run_folder.resolve()))

    def should_prune(self, epoch, value, last=False):
        """Report the monitor's `value` after `epoch`; whether the sweep prunes the trial here (never
        after the `last` epoch); None when the study could not answer. False on the other ranks."""
        if not self.talks:
            return False
        try:
            return decide(self.trial_object(), epoch, value, last)
        except Exception as error:  # the storage away, or the trial failed by another worker meanwhile
            self.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            return None

    def close(self):
        self.study = None


def decide(trial, epoch, value, last=False):
    """Report `value` at `epoch` for the running optuna `trial` and take the pruner's decision, recorded
    in the trial before it is returned. An epoch decided before gets the same decision; one reported
    but not decided (the process stopped in between) is decided now."""
    frozen = trial.study._storage.get_trial(trial._trial_id)
    if epoch <= frozen.user_attrs.get("decided_through", 0):
        return frozen.user_attrs.get("pruned_at") == epoch
    if epoch not in frozen.intermediate_values:
        trial.report(float(value), epoch)
    prune = not last and bool(trial.should_prune())
    if prune:
        trial.set_user_attr("pruned_at", epoch)
    trial.set_user_attr("decided_through", epoch)
    return prune


def stop_with_parent(parent):
    """Ask Linux to send this process SIGTERM when its parent (the sweep, or torchrun) dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:  # the sweep died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
