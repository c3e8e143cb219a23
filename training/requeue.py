"""Requeue: a job warned by its scheduler (SIGUSR1) saves its state and asks to be run again.

SLURM sends SIGUSR1 some seconds before the time limit when the job asks for it
(`#SBATCH --signal=USR1@90`). The stop request (utils/signals.py) stops training within one batch
and the trainer saves the state as for any signal; at the end of the run, rank 0 then asks the
scheduler to requeue the job, and the process exits with 138 (128 + SIGUSR1), a status distinct
from a crash and from SIGTERM. The requeued job, given `--resume auto --run_name NAME`, continues
the run (state/resume_policy.py).

Who requeues: the command in $REQUEUE_COMMAND when it is set (a shell command: the hook for
another scheduler), else `scontrol requeue $SLURM_JOB_ID` inside a SLURM job; elsewhere nothing,
and the log says how to continue by hand.
"""
import os
import shutil
import signal
import subprocess

from training.callbacks import Callback

REQUEUE_SIGNAL = signal.SIGUSR1


def requeue_command():
    """The command that requeues this job (a shell string or an argument list), or None."""
    if os.environ.get("REQUEUE_COMMAND"):
        return os.environ["REQUEUE_COMMAND"]
    if os.environ.get("SLURM_JOB_ID") and shutil.which("scontrol"):
        return ["scontrol", "requeue", os.environ["SLURM_JOB_ID"]]
    return None


def requeue(log):
    """Ask the scheduler to run this job again; True when it accepted."""
    command = requeue_command()
    if command is None:
        log.warning("SIGUSR1: no scheduler to requeue this job (no $REQUEUE_COMMAND, not a SLURM job with "
                    "scontrol); run the same command with --resume auto to continue")
        return False
    shown = command if isinstance(command, str) else " ".join(command)
    try:
        result = subprocess.run(command, shell=isinstance(command, str), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.error(f"requeue with {shown} failed: {error}")
        return False
    if result.returncode != 0:
        log.error(f"requeue with {shown} failed (exit {result.returncode}): {result.stderr.strip()[:300]}")
        return False
    log.warning(f"requeued the job: {shown}")
    return True


class Requeue(Callback):
    """After a run stopped by SIGUSR1 has saved its state, rank 0 asks the scheduler to requeue the job."""

    def on_fit_end(self, trainer, status):
        if status == "stopped" and trainer.stop.signum == REQUEUE_SIGNAL and trainer.main_process \
                and trainer.saved_position is not None:
            requeue(trainer.log)
