"""Resuming from a checkpoint older than its run's newest state: a top-k file, or `best` behind `last`.

Continuing such a state in its own folder would overwrite the epochs after it: their `last`, their
top-k files, and their TensorBoard points, which TensorBoard would then show twice (its purge step
counts optimizer steps, the epoch scalars are at epoch numbers). So the resume continues in a new run
folder beside the original, a branch, and the original keeps everything it holds. The branch gets the
original's split, the top-k files the resumed state still lists, and the `best` of its monitor's best
epoch when one of the original's files holds that state; its TensorBoard and trackers start anew with
the epochs of the resumed history (the step scalars before the branch point stay in the original).
"""
from pathlib import Path

import torch

from state.run_folder import RunFolder
from utils.atomic import save_atomic


def continued_in(run, path, checkpoint, suffix, log):
    """The run folder a resume of `checkpoint` (read from `path` in `run`) continues: `run` itself, or a
    branch when `run` holds a newer state. `suffix` ends a new folder's name, as for a new run."""
    return branch(run, path, checkpoint, suffix, log) if is_behind(run, path, checkpoint) else run


def is_behind(run, path, checkpoint):
    """Whether `run` holds a newer state (its `last`) than `checkpoint`, read from `path`."""
    last = run.checkpoint_path("last")
    if not last.is_file() or last.resolve() == Path(path).resolve():
        return False
    newest = _position(torch.load(last, map_location="cpu", weights_only=True, mmap=True))
    return newest > _position(checkpoint)


def branch(original, path, checkpoint, suffix, log):
    """A new run folder beside `original` that continues the state in `path` (`checkpoint`)."""
    run = RunFolder.create(original.path.parent, original.model_type, original.writes,
                           f"{suffix}_from_epoch{checkpoint['epoch']:03d}")
    run.branched_from = original.path
    log.warning(f"{Path(path).name} holds epoch {checkpoint['epoch']}, step {checkpoint['global_step']}, and "
                f"{original.path} has gone further: continuing in a new run folder, {run.path}, which leaves "
                f"the original as it is")
    if run.writes:
        run.write_json("split.json", original.read_split())
        kept = checkpoint["callbacks"].get("top_k", {}).get("kept", [])
        for name in [entry["file"] for entry in kept if (original.path / entry["file"]).is_file()]:
            save_atomic((original.path / name).read_bytes(), run.path / name)
        best = _best_state(original, path, checkpoint, [entry["file"] for entry in kept])
        if best is not None:
            save_atomic(best.read_bytes(), run.checkpoint_path("best"))
    original.close()  # the original's lock: nothing writes there
    return run


def _best_state(original, path, checkpoint, top_k_files):
    """The file among the original's that holds the state at the end of the monitor's best epoch, or None."""
    best_epoch = checkpoint["monitor"]["best_epoch"]
    candidates = [Path(path), *(original.path / name for name in top_k_files), original.checkpoint_path("best")]
    for candidate in candidates:
        if best_epoch and candidate.is_file():
            state = torch.load(candidate, map_location="cpu", weights_only=True, mmap=True)
            if (state["epoch"], state["batches_done"]) == (best_epoch, 0):
                return candidate
    return None


def _position(checkpoint):
    return checkpoint["global_step"], checkpoint["epoch"], checkpoint["batches_done"]
