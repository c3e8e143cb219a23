"""Run folders named by their start time, unique even when two runs start in the same second."""
import time
from pathlib import Path


def timestamp():
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def make_run_dir(output_dir, suffix=""):
    """Create and return a new folder `<output_dir>/<timestamp><suffix>[_N]`.

    `mkdir(exist_ok=False)` is atomic, so two processes racing for the same name cannot both get it:
    the loser takes the next suffix.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = timestamp() + suffix
    for attempt in range(10_000):
        run_dir = output_dir / (stamp if attempt == 0 else f"{stamp}_{attempt}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder in {output_dir}")
