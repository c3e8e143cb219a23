"""SIGINT, SIGTERM (a cluster's pre-emption) and SIGUSR1 (a scheduler's warning before the time limit,
training/requeue.py) as a request the training loops honour at the next batch."""
import signal
import threading
from contextlib import contextmanager


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Records the first SIGINT / SIGTERM / SIGUSR1 instead of dying mid-write; a second Ctrl+C stops at once."""

    def __init__(self, log):
        self.log = log
        self.signum = None
        self.reason = None  # what asked to stop, when not a signal

    def request(self, reason):
        """Stop at the next step as SIGTERM would (the state saved, `--resume` continues it): for a
        callback that ends a run early, such as on a time budget."""
        if self.signum is None:
            self.signum, self.reason = signal.SIGTERM, reason
            self.log.warning(f"{reason}: stopping after the current step, then saving")

    @property
    def requested(self):
        return self.signum is not None

    @contextmanager
    def installed(self):
        """Handle the signals inside the block, restore the previous handlers after. Only the main
        thread receives signals: elsewhere (a run started from a thread) nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self.handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is not None:
            return  # the first signal decides how the run ends
        self.signum = signum
        then = "saving, then asking the scheduler to requeue the job" if signum == signal.SIGUSR1 else "saving"
        self.log.warning(f"{signal.Signals(signum).name} received: stopping after the current batch, then {then} "
                         "(Ctrl+C again to stop at once)")


@contextmanager
def sigterm_as_exit():
    """SIGTERM raises SystemExit(143) inside the block, so that its `finally` clauses run (a killed
    evaluation removes its temporary folder); outside the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
