"""Inter-process locks, and the cleanup of what a killed process left behind."""

import contextlib
import fcntl
import os
import time

from envflow.errors import Busy

# Names of the lock files libgit2 and git leave when killed mid-way.
_GIT_LOCKS = ("index.lock", "HEAD.lock", "config.lock", "packed-refs.lock", "shallow.lock", "FETCH_HEAD.lock")


@contextlib.contextmanager
def held(path, what, timeout=120.0):
    """Hold an exclusive ``flock`` on ``path`` for the duration of the block.

    The kernel releases it when the holder dies, so a killed run never leaves
    it stuck. Raises :class:`Busy` naming ``what`` after ``timeout`` seconds.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy(f"envflow: {what} is busy with another envflow run; try again when it ends") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def attempted(path):
    """Try once to hold an exclusive ``flock`` on ``path``: the block gets ``True`` holding it, ``False`` if busy."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def clear_stale_git_locks(gitdir):
    """Remove the lock files a killed git process left in ``gitdir``.

    Only call this while holding envflow's own lock on ``gitdir``: then no live
    envflow process can own them.
    """
    for name in _GIT_LOCKS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(gitdir, name))
    refs = os.path.join(gitdir, "refs")
    for root, _dirs, files in os.walk(refs):
        for name in files:
            if name.endswith(".lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))
