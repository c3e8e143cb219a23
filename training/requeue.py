"""Requeue: a job warned by its scheduler (SIGUSR1) saves its state and asks to be run again.

SLURM sends SIGUSR1 some seconds before the time limit when the job asks for it
(`#SBATCH --signal=USR1@90`). The stop request (utils/signals.py) stops training within one batch
and the trainer saves the state as for any signal; then, while the other ranks wait, rank 0 asks
the scheduler to requeue the job, and the processes exit with 138 (128 + SIGUSR1), a status
distinct from a crash and from SIGTERM. Under torchrun they exit with 0 instead: torchrun takes
any other status for a failure and, with --max-restarts, would restart the group, which would
resume and train on instead of ending the job. The requeued job, given `--resume auto --run_name
NAME`, continues the run (state/resume_policy.py).

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


def exit_status(signum):
    """The status a process stopped by `signum` exits with: 128 + signum, but 0 for SIGUSR1 under torchrun."""
    return 0 if signum == REQUEUE_SIGNAL and "TORCHELASTIC_RUN_ID" in os.environ else 128 + signum


class Requeue(Callback):
    """After a run stopped by SIGUSR1 has saved its state, rank 0 asks the scheduler to requeue the job
    (before any rank leaves: torchrun would stop rank 0 once another rank has exited)."""

    def on_stopped(self, trainer, stopped):
        if stopped.signum == REQUEUE_SIGNAL and trainer.main_process:
            requeue(trainer.log)
