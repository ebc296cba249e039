"""Where envflow touches Salt: the master's event bus, its file server caches, and sdb secrets.

Salt is imported lazily, inside the functions, so the rest of the package
needs nothing but pygit2.
"""

import contextlib
import logging
import os
import shutil

from envflow.errors import ConfigError

log = logging.getLogger(__name__)


def sdb_reader(opts, utils=None):
    """A ``resolve(uri, key)`` for :func:`envflow.config.parse`: reads ``sdb://`` values through Salt's sdb.

    Salt already reads the ``sdb://`` values of its config files when it
    loads them; this also serves values from pillar, and says which key
    failed when a profile is missing.
    """

    def resolve(uri, key):
        import salt.utils.sdb  # pylint: disable=import-outside-toplevel
        from salt.exceptions import SaltException  # pylint: disable=import-outside-toplevel

        try:
            return salt.utils.sdb.sdb_get(uri, opts, utils, strict=True)
        except SaltException as exc:
            raise ConfigError(f"{key}: {uri} cannot be read: {' '.join(str(exc).split())}") from None

    return resolve


def fire_on_master(opts, tag, data):
    """Fire ``tag`` on the event bus of the master whose options are ``opts``; ``False`` if it is not running.

    An event that cannot be sent must not undo work that is done: failures are logged, not raised.
    """
    if opts.get("ipc_mode", "ipc") == "ipc" and not os.path.exists(
        os.path.join(opts["sock_dir"], "master_event_pull.ipc")
    ):
        # No master is listening: firing would only wait for a connect timeout.
        log.debug("envflow: no master event bus under %s; %s not fired", opts["sock_dir"], tag)
        return False
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    try:
        with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False) as bus:
            return bool(bus.fire_event(data, tag))
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("envflow: could not fire %s: %s", tag, exc)
        return False


def saltenvs_serving(file_roots, path):
    """The saltenvs whose ``file_roots`` list ``path``."""
    path = os.path.normpath(path)
    return sorted(
        saltenv
        for saltenv, roots in (file_roots or {}).items()
        if any(isinstance(root, str) and os.path.normpath(root) == path for root in roots or [])
    )


def forget_roots_cache(cachedir, saltenv):
    """Drop the ``roots`` hash cache and file list cache of ``saltenv`` under the master's ``cachedir``.

    Salt caches each file's hash keyed by the file's mtime, and file lists for
    a while. Two trees written within one clock tick can share mtimes: without
    this the master would keep serving the old hash, and minions the old file.
    """
    shutil.rmtree(os.path.join(cachedir, "roots", "hash", saltenv), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(cachedir, "file_lists", "roots", f"{saltenv}.p"))


def refresh_fileserver(master_opts, path):
    """Make the master serve what is now at ``path`` at once; return the saltenvs refreshed."""
    saltenvs = saltenvs_serving(master_opts.get("file_roots"), path)
    if not saltenvs:
        return []
    for saltenv in saltenvs:
        forget_roots_cache(master_opts["cachedir"], saltenv)
    if master_opts.get("fileserver_events"):
        # The roots update walks every file_roots directory (0.3 s at 20,000 files);
        # forgetting the caches is enough to serve the new tree, and the update's
        # only other effect is the salt/fileserver/roots/update event.
        import salt.fileserver  # pylint: disable=import-outside-toplevel

        salt.fileserver.Fileserver(master_opts).update(back=["roots"])
    return saltenvs
