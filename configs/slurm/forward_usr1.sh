#!/bin/bash
# Runs a command (torchrun, or python) and forwards SIGUSR1, SLURM's warning before the time limit, to
# the training processes it starts: each saves its state within one batch, rank 0 asks SLURM to
# requeue the job, and they exit with 138 (0 under torchrun, which would restart the group for any other
# status). Exits with the command's status.
"$@" &
launcher=$!
trap 'pkill -USR1 -P "$launcher" || kill -USR1 "$launcher"' USR1
while true; do
    wait "$launcher"
    status=$?
    kill -0 "$launcher" 2>/dev/null || exit "$status"
done
