"""Atomic writes: a file is written to a temporary name in its folder, flushed, fsynced and renamed
over the target, so a process killed at any instant leaves the old file or the new one, never a
truncated one. The file gets the permissions the user's umask gives a new file (the temporary file
alone would be private to the user), so colleagues on a shared server can read results.
"""
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from utils.errors import UserError


def new_file_mode():
    """The permissions open() gives a new file under the process's umask."""
    try:  # Linux shows the umask without changing it; setting it twice would race with other threads
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_open(path, mode="wb"):
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), new_file_mode())
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):
        # Make the rename itself durable.
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def save_atomic(obj, path):
    """`torch.save` through a temporary file; a full disk raises a `UserError` and keeps the old file.

    `obj` may also be the bytes of an object already serialised with `torch.save`.
    """
    try:
        with atomic_open(path) as handle:
            if isinstance(obj, bytes):
                handle.write(obj)
            else:
                torch.save(obj, handle)
    except OSError as error:
        raise UserError(f"could not write {path}: {error.strerror or error}; the previous file is unchanged") from error


def json_safe(value):
    """`value` with NaN and infinite floats as None: JSON has no such numbers, and strict readers
    (JavaScript, jq, most databases) refuse Python's bare NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json_atomic(obj, path):
    """`obj` as strict JSON (NaN and infinities as null), written atomically."""
    try:
        with atomic_open(path, "w") as handle:
            json.dump(json_safe(obj), handle, indent=2, default=str, allow_nan=False)
            handle.write("\n")
    except OSError as error:
        raise UserError(f"could not write {path}: {error.strerror or error}; the previous file is unchanged") from error
