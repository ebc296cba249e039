"""The atomic switch of an environment's symlink, and the cleanup of what a killed switch left."""

import ctypes
import errno
import os

from envflow.layout import SLOTS
from envflow.locking import clear_stale_git_locks

_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first, second):
    """Swap two paths in one ``renameat2(RENAME_EXCHANGE)``; ``False`` where the system cannot."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(error, os.strerror(error), second)


def sync_filesystem(path):
    """Flush the filesystem holding ``path`` (``syncfs``), else everything (``sync``)."""
    syncfs = getattr(_LIBC, "syncfs", None)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if syncfs is None or syncfs(descriptor) != 0:
            os.sync()
    finally:
        os.close(descriptor)


def put_aside(layout, source):
    """Move what stood at ``path`` (now at ``source``) out of the way; return where it went.

    ``salt-master`` creates each ``file_roots`` directory at start, so an
    empty one is expected and removed. Anything else (a checkout from the
    manual workflow) is moved aside, never deleted.
    """
    if os.path.isdir(source) and not os.path.islink(source) and not os.listdir(source):
        os.rmdir(source)
        return None
    aside, number = layout.aside, 1
    while os.path.lexists(aside):
        aside, number = f"{layout.aside}.{number}", number + 1
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    os.rename(source, aside)
    return aside


def tidy(layout):
    """Clear what an interrupted run left: a half-made symlink (or what an exchange put there), git lock files."""
    staging = layout.staging
    if os.path.islink(staging) and os.readlink(staging) in {layout.link_text(slot) for slot in SLOTS}:
        os.unlink(staging)  # envflow's own half-made symlink
    elif os.path.lexists(staging):
        put_aside(layout, staging)  # what stood at path, left by a killed exchange: never delete it
    for slot in SLOTS:
        clear_stale_git_locks(layout.gitdir(slot))


def switch(layout, slot):
    """Point ``path`` at ``slot`` in one rename: readers see the old tree or the new one, whole.

    The caller has flushed the new tree to disk. On the first deploy something usually stands at ``path``; it is
    exchanged with the symlink in one ``renameat2(RENAME_EXCHANGE)``, so
    ``path`` is never missing, then put aside. Returns where it went.
    """
    os.symlink(layout.link_text(slot), layout.staging)
    moved = None
    if layout.served_slot() is None and os.path.lexists(layout.path):
        if _exchange(layout.staging, layout.path):
            moved = put_aside(layout, layout.staging)
        else:  # no RENAME_EXCHANGE here: a moment without anything at path
            moved = put_aside(layout, layout.path)
            os.rename(layout.staging, layout.path)
    else:
        os.rename(layout.staging, layout.path)
    parent = os.open(os.path.dirname(layout.path), os.O_RDONLY)
    try:
        os.fsync(parent)
    finally:
        os.close(parent)
    return moved
