"""The checkpoint, and the one owner of its format: its version and keys, building it from the
training state, loading and checking it, upgrading an older version, choosing the raw or the
averaged weights in it, and repairing a `best` whose write was cut short.

A checkpoint is a dict of tensors and plain Python values, so `torch.load(path, weights_only=True)`
loads it and loading can never run code; it is written atomically (utils/atomic.py, RunFolder).

    format, task, model_type, config, world_size   what wrote it: this file's version, the task's name,
                                                   the options, the number of processes
    model, ema                                     the weights (without wrapper prefixes), their average
    optimizer, scheduler, scaler                   training/optimization.py
    epoch, batches_done, global_step, skipped_steps, nonfinite_batches, history, monitor, stopped_by,
    best_metric, best_epoch                        state/progress.py
    callbacks                                      {name: state} of the callbacks with state
    rng, epoch_sums                                each process's random state and partial epoch sums
    global_batch, epoch_samples                    samples per optimizer step over every process, and the
                                                   epoch's steps taken in samples: where a resume on any
                                                   number of processes continues (state/rescale.py)
    sampling                                       the rules the run's data order and augmentation
                                                   follow, kept for its whole life (SAMPLING below)
"""
import pickle
from pathlib import Path

import torch

from utils.atomic import save_atomic
from utils.errors import UserError

FORMAT = "torch-template/5"
# The rules of a run's data order and augmentation draws. 2: each process's micro-batch is B
# consecutive samples of the global order, and each sample draws its augmentation from its own stream
# (data/sample_random.py), so both are alike on any number of processes. 1 (runs begun before
# torch-template/5): round-robin dealing, and one augmentation stream per process and batch. A run
# keeps the rules it began with, so that its resume stays exact.
SAMPLING = 2
KEYS = frozenset({
    "format", "task", "model_type", "config", "world_size", "model", "ema", "optimizer", "scheduler", "scaler",
    "epoch", "batches_done", "global_step", "skipped_steps", "nonfinite_batches", "history", "monitor", "stopped_by",
    "best_metric", "best_epoch", "callbacks", "rng", "epoch_sums", "global_batch", "epoch_samples",
    "sampling",
})
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # added by DataParallel / DDP and by torch.compile
# The first bytes of what torch.save writes: a zip archive, or (its legacy format) a pickle of protocol 2+.
TORCH_SAVE_MAGICS = (b"PK\x03\x04", b"\x80")


def load_checkpoint(path):
    """Load a checkpoint with `weights_only=True`; a missing, foreign or unsafe file is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist (expected a .pth file written by the trainer)")
    if not _written_by_torch_save(path):
        raise UserError(f"{path} is not a readable checkpoint (not a file written by torch.save; "
                        "expected a *_ckpt.pth file of a run folder)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(f"refusing to load {path}: it holds objects other than tensors and plain values "
                        f"({_unsafe_content(error)})") from error
    except Exception as error:  # torch.load raises many kinds on files that are not checkpoints
        raise UserError(f"{path} is not a readable checkpoint ({type(error).__name__}: "
                        f"{str(error).strip().splitlines()[0] if str(error).strip() else 'empty'})") from error
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not a checkpoint of this toolkit (expected a dict, found {type(checkpoint).__name__})")
    return checkpoint


def _written_by_torch_save(path):
    """Judged by the first bytes, so a truncated checkpoint still counts as one (and fails to load)."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    return start.startswith(TORCH_SAVE_MAGICS)


def _unsafe_content(error):
    """What torch's weights-only unpickler refused, without its advice to load the file unsafely."""
    for line in str(error).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return "an object of a type that is not allowed"


def strip_wrapper_prefixes(state_dict):
    """Keys without the `module.` / `_orig_mod.` prefixes that wrappers add, however nested.

    A wrapper prefixes every key, so a prefix is stripped only when all keys carry it: a model
    with a submodule that happens to be called `module` keeps its names.
    """
    stripped = True
    while stripped and state_dict:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state_dict):
                state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
                stripped = True
    return dict(state_dict)


def unwrap(model):
    """The module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def weights_of(checkpoint, ema=False):
    """The model weights in a checkpoint of ours (with `ema`, the average of the weights it holds),
    or a plain state dict saved by other code."""
    if ema:
        return checkpoint["ema"]["weights"]
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        return checkpoint["model"]
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], dict):
        return checkpoint["state_dict"]
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return checkpoint
    raise UserError("the checkpoint holds no model weights (expected a 'model' entry or a state dict)")


def load_weights(model, state_dict, source, partial=False, log=None):
    """Load `state_dict` into `model`, refusing a mismatch unless `partial` is asked for.

    Missing keys, unexpected keys and shape mismatches are named; with `partial`, only the
    matching tensors are loaded and what was skipped is logged.
    """
    model = unwrap(model)
    own = model.state_dict()
    if set(state_dict) != set(own):
        state_dict = strip_wrapper_prefixes(state_dict)
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    mismatched = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
                  for key in own if key in state_dict and state_dict[key].shape != own[key].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems and not partial:
        raise UserError(f"weights in {source} do not fit the model ({'; '.join(problems)}); "
                        "check --model_type and the model options, or load what fits with --partial_load")
    if problems:
        skip = set(missing) | {entry.split(" ")[0] for entry in mismatched}
        state_dict = {key: value for key, value in state_dict.items() if key in own and key not in skip}
        if log:
            log(f"partial load from {source}, skipped {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=not problems)


# ---------------------------------------------------------------------- the training state
def make_checkpoint(task, config, world_size, model, ema, optimization, progress, callbacks, ranks, sampling):
    """The checkpoint of a training state: `optimization` and `progress` are those parts' state dicts,
    `callbacks` {name: state}, `ranks` each process's {"rng", "sums"}, `sampling` the run's rules."""
    checkpoint = {"format": FORMAT, "task": task, "model_type": config["model_type"], "config": config,
                  "world_size": world_size, "model": model, "ema": ema, **optimization, **progress,
                  "callbacks": callbacks, "rng": [rank["rng"] for rank in ranks],
                  "epoch_sums": [rank["sums"] for rank in ranks], **global_position(config, world_size, progress),
                  "sampling": sampling}
    assert set(checkpoint) == KEYS, f"the checkpoint's keys changed: {sorted(set(checkpoint) ^ KEYS)}"
    return checkpoint


def read_checkpoint(path, task):
    """The training checkpoint at `path` (a file, or a run folder's `last`), in this version's format,
    refused unless this toolkit's `task` wrote it."""
    return check_checkpoint(upgrade(load_checkpoint(path)), path, task)


def check_checkpoint(checkpoint, path, task):
    """`checkpoint` as loaded from `path`, refused unless this toolkit's `task` wrote it."""
    if "config" not in checkpoint or not str(checkpoint.get("format", "")).startswith("torch-template/"):
        raise UserError(f"{path} is not a training checkpoint of this toolkit (no '{FORMAT}' state)")
    if checkpoint["format"] != FORMAT:
        raise UserError(f"{path} has the checkpoint format {checkpoint['format']} of another version of this "
                        f"toolkit; this version reads {FORMAT} and torch-template/4, /3 and /2")
    if checkpoint.get("task") != task:
        raise UserError(f"{path} was written by the {checkpoint.get('task')} task (model "
                        f"{checkpoint['config'].get('model_type')}), not by the {task} task")
    if checkpoint.get("sampling") not in (1, SAMPLING):
        raise UserError(f"{path} has sampling rules {checkpoint.get('sampling')!r}; this version knows rules 1 and "
                        f"{SAMPLING} (a checkpoint of another version of this toolkit)")
    unknown = set(checkpoint) - KEYS
    if unknown:
        raise UserError(f"{path} holds entries this version does not restore: {', '.join(sorted(unknown))}")
    return checkpoint


def global_position(config, world_size, progress):
    """The global batch G and where the epoch stands in its global order, as steps taken x G (the
    epoch's short last step counted whole), for a run with the options `config` on `world_size`
    processes at `progress`."""
    accum_steps = config["accum_steps"]
    total = config["batch_size"] * world_size * accum_steps
    return {"global_batch": total, "epoch_samples": -(-progress["batches_done"] // accum_steps) * total}


def upgrade(checkpoint):
    """A checkpoint of an older format in this one: torch-template/2 to /3, /3 to /4, then /4 to /5."""
    if checkpoint.get("format") == "torch-template/2":
        checkpoint = upgrade_from_2(checkpoint)
    if checkpoint.get("format") == "torch-template/3" and {"config", "world_size", "batches_done"} <= set(checkpoint):
        checkpoint = {**checkpoint, "format": "torch-template/4",
                      **global_position(checkpoint["config"], checkpoint["world_size"], checkpoint)}
    if checkpoint.get("format") == "torch-template/4":
        checkpoint = {**checkpoint, "format": FORMAT, "sampling": 1}
    return checkpoint


def upgrade_from_2(checkpoint):
    """A checkpoint of format torch-template/2 in format /3: the task named without its trainer's
    "Trainer", the early stopper as the monitor and the reason training stopped, and the top-k list
    and the trackers' state as the states of their callbacks."""
    old = dict(checkpoint)
    stopper, pruned, top_k = old.pop("early_stopper"), old.pop("pruned", False), old.pop("top_k", [])
    callbacks = {"trackers": {"logged_scalars": old.pop("logged_scalars", None),
                              "tracker_commit": old.pop("tracker_commit", []), "tracker_runs": old.pop("tracker_runs", {})}}
    if old["config"].get("save_top_k"):
        callbacks["top_k"] = {"kept": top_k}
    early_stopped = stopper["patience"] > 0 and stopper["bad_epochs"] >= stopper["patience"]
    return {**old, "format": "torch-template/3", "task": str(old.get("task", "")).removesuffix("Trainer"),
            "monitor": {name: stopper[name] for name in ("mode", "delta", "best", "best_epoch", "bad_epochs")},
            "stopped_by": "pruned" if pruned else "early_stopped" if early_stopped else None, "callbacks": callbacks}


def initial_weights(args, log):
    """The weights of --model_path for a new run with --pretrained, as (state dict, path)."""
    if not (args.pretrained or args.model_path is not None):
        return None, None
    if not (args.pretrained and args.model_path is not None):
        raise UserError("initial weights need both --model_path PATH and --pretrained (to continue a run, use --resume)")
    log.info(f"initial weights from {args.model_path}")
    return weights_of(load_checkpoint(args.model_path)), args.model_path


def find_checkpoint(path, kind="last"):
    """A checkpoint file, or the `kind` checkpoint (else the newest one) of a run folder."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob(f"*_{kind}_ckpt.pth"), key=lambda p: p.stat().st_mtime) or \
            sorted(path.glob("*_ckpt.pth"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(f"run folder {path} holds no *_ckpt.pth checkpoint")
        return found[-1]
    if not path.exists():
        raise UserError(f"{path} does not exist (expected a checkpoint file or a run folder)")
    return path


def progress_of(checkpoint, device="cpu"):
    """The TrainingProgress a checkpoint holds (with rank 0's partial epoch sums)."""
    from state.progress import TrainingProgress
    progress = TrainingProgress(checkpoint["monitor"]["mode"], checkpoint["monitor"]["delta"])
    progress.load_state_dict(checkpoint, checkpoint["epoch_sums"][0], device)
    return progress


def check_resumable(run, checkpoint, args, world_size, log=None):
    """Refuse a resume that cannot continue the run exactly, or that has nothing left to do; a checkpoint
    of another number of processes is laid out for `world_size` (state/rescale.py)."""
    from state.rescale import rescale
    from state.status import Status
    from training.schedules import SCHEDULES_OVER_N_EPOCH
    rescale(checkpoint, args, world_size, log)
    done = progress_of(checkpoint)
    metrics = run.read_json("metrics.json") or {}
    if done.stopped_by == Status.PRUNED and metrics.get("status") == Status.PRUNED:
        raise UserError(f"run {run.path} was pruned by its sweep after epoch {done.epoch}; a sweep trial does not "
                        "train further")
    if not done.is_finished(args.n_epoch) or "test" not in metrics:
        return
    early = done.stopped_by == Status.EARLY_STOPPED
    if args.fast_dev_run:
        how = "start a real run without --fast_dev_run"
    elif early or args.lr_scheduler in SCHEDULES_OVER_N_EPOCH:
        how = f"start a new run from its weights: --pretrained --model_path {run.checkpoint_path('best')}"
    else:
        how = f"resume with --n_epoch larger than {done.epoch}"
    why = f"stopped early at epoch {done.epoch}" if early else f"trained {done.epoch} epochs"
    raise UserError(f"run {run.path} is finished ({why}, and tested); to train further, {how}")


def repair_best(run, log):
    """Rewrite the run's `best` from `last` where a write of `best` was cut short after `last`'s."""
    last_path, best_path = run.checkpoint_path("last"), run.checkpoint_path("best")
    if not run.writes or not last_path.is_file():
        return
    last = load_checkpoint(last_path)
    if last["best_epoch"] is None or last["best_epoch"] != last["epoch"] or last["batches_done"]:
        return  # `best` was written before training went on past `last`'s best epoch
    if best_path.is_file() and load_checkpoint(best_path)["epoch"] == last["best_epoch"]:
        return
    save_atomic(last_path.read_bytes(), best_path)
    log.warning(f"{best_path.name} was older than epoch {last['best_epoch']}, the best epoch "
                f"{last_path.name} records (an interrupted write); rewrote it from {last_path.name}")
