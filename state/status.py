"""The statuses of a run's metrics.json, named in one place."""


class Status:
    """The statuses of metrics.json: how far a run got. The run's trackers end with their own three
    (finished, stopped, failed; tracking/trackers.py)."""

    RUNNING = "running"  # training, or killed while training
    INTERRUPTED = "interrupted"  # stopped by a signal or a callback, its state saved: --resume continues it
    LR_FIND = "lr_find"  # the lr range test alone (--lr_find without --lr_find_apply)
    COMPLETED = "completed"  # trained every epoch and tested
    EARLY_STOPPED = "early_stopped"  # stopped by early stopping, and tested
    PRUNED = "pruned"  # stopped by its sweep, not tested
    FINAL = (COMPLETED, EARLY_STOPPED, PRUNED)
