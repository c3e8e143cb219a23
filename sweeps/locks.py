"""File locks (flock) on a worker's own, local sweep folder: a running trial's lock says that a live
process owns it (a sweep started again on that machine continues a trial whose lock is free).
Claims between workers go through the storage (sweeps/claims.py), never through files."""
import os


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
