"""The checkpoint: safe loading, and the model weights in it.

A checkpoint is a dict of tensors and plain Python values, so `torch.load(path, weights_only=True)`
loads it and loading can never run code; it is written atomically (utils/atomic.py).
"""
import pickle
from pathlib import Path

import torch

from utils.errors import UserError

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
