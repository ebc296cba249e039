"""What Salt's ``roots`` file server caches about a directory, and forgetting it after a switch.

Salt caches each file's hash keyed by the file's mtime, and the file lists for
a while. Two trees written within one clock tick can share mtimes, so after a
switch the master would keep serving the old hash and minions the old file.
"""

import contextlib
import os
import shutil


def saltenvs_serving(file_roots, path):
    """The saltenvs whose ``file_roots`` list ``path``."""
    path = os.path.normpath(path)
    return sorted(
        saltenv
        for saltenv, roots in (file_roots or {}).items()
        if any(isinstance(root, str) and os.path.normpath(root) == path for root in roots or [])
    )


def forget(cachedir, saltenv):
    """Drop the ``roots`` hash cache and file list cache of ``saltenv`` under the master's ``cachedir``."""
    shutil.rmtree(os.path.join(cachedir, "roots", "hash", saltenv), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(cachedir, "file_lists", "roots", f"{saltenv}.p"))
