"""File locks (flock) that coordinate the sweep processes sharing a sweep folder: one at a time
reads and changes the study, and a running trial's lock says that a live process owns it."""
import os
from contextlib import contextmanager


@contextmanager
def file_lock(path):
    """An exclusive flock on `path` for the block (waits for it)."""
    import fcntl
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def try_lock(path):
    """An open descriptor holding an exclusive flock on `path`, or None when another process (or a
    trial it started) holds it. The lock lasts as long as a process keeps the descriptor."""
    import fcntl
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
