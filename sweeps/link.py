"""The trial's side of a sweep (sweep.py): a run started by a sweep reports its monitor after each
epoch and learns whether to stop there (pruned).

sweep.py starts each trial as an ordinary run of the task script, with `TORCH_TEMPLATE_SWEEP` in
its environment: `{"trial": N, "fds": [read, write], "parent": pid}`, two pipe ends to the sweep process. The run
folder gets the suffix `_trial<N>`; the run sends its folder once, then `{"epoch", "value"}`
after each epoch and waits for `{"prune": bool}`. A run started by hand has no link and trains
as always. On Linux the run also receives SIGTERM when the sweep process dies (and so saves its
state and stops, to be resumed when the sweep is started again); elsewhere it finds out at its
next report.
"""
import json
import os
import signal
import sys

ENVIRONMENT = "TORCH_TEMPLATE_SWEEP"


class SweepLink:
    def __init__(self, trial, read_fd, write_fd):
        self.trial = trial
        self.reader = os.fdopen(read_fd, "r")
        self.writer = os.fdopen(write_fd, "w")

    @classmethod
    def from_environment(cls):
        """The link of a run started by a sweep, or None."""
        spec = os.environ.pop(ENVIRONMENT, None)  # not inherited by the run's own workers
        if not spec:
            return None
        spec = json.loads(spec)
        stop_with_parent(spec.get("parent"))
        return cls(spec["trial"], *spec["fds"])

    @property
    def suffix(self):
        return f"_trial{self.trial:04d}"

    def send(self, message):
        """Send `message`, return the sweep's answer; None when the sweep is gone."""
        try:
            self.writer.write(json.dumps(message) + "\n")
            self.writer.flush()
            answer = self.reader.readline()
        except OSError:  # a broken pipe: the sweep process died
            return None
        return json.loads(answer) if answer else None

    def started(self, run_folder):
        self.send({"run_folder": str(run_folder)})

    def should_prune(self, epoch, value, last=False):
        """Report the monitor's `value` after `epoch`; True when the sweep prunes the trial here
        (never after the `last` epoch)."""
        answer = self.send({"epoch": epoch, "value": value, "last": last})
        return bool(answer and answer.get("prune"))

    def close(self):
        for handle in (self.reader, self.writer):
            try:
                handle.close()
            except OSError:
                pass


def stop_with_parent(parent):
    """Ask Linux to send this process SIGTERM when its parent (the sweep) dies."""
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
