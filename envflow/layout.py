"""Where an environment's trees and envflow's bookkeeping live, and what each slot holds.

For an environment whose ``path`` is ``/srv/salt/stage``::

    /srv/salt/stage -> .stage.envflow/a      the served tree (a relative symlink)
    /srv/salt/.stage.envflow/a/               tree in slot a
    /srv/salt/.stage.envflow/b/               tree in slot b, the standby
    /srv/salt/.stage.envflow/a.git/           slot a's repository: index, HEAD, record
    /srv/salt/.stage.envflow/lock             held while deploying
    /srv/salt/.stage.envflow/push.lock        held while serving pushes (envflow.pushes)
    /srv/salt/.stage.envflow/push.pending     a push not served yet
    /srv/salt/.stage.envflow/tree.id          the directory's identity, shared by every master deploying into it

Every piece of bookkeeping lives beside the served tree, never inside it, so
Salt never serves it, and the master and a minion deploying the same path
agree on it.
"""

import contextlib
import json
import os
import uuid
from dataclasses import dataclass, field, fields

SLOTS = ("a", "b")
_RECORD = "envflow.json"


@dataclass
class Record:
    """What one slot's tree holds, written by envflow after it made the tree.

    ``commit`` describes the commit (``id``, ``summary``, ``author``,
    ``time``); ``since`` is when the environment began serving it; ``links``
    are the commit's symlink paths and ``refused_links`` those left out of
    the tree (``{"path", "target"}``). ``dirs`` seals the tree's directories:
    each one's ``[inode, mtime_ns, ctime_ns]`` when envflow last wrote it, so
    an entry added, removed or replaced there since shows; ``sealed_at`` is
    when (``time.time_ns()``): a directory changed within a clock tick of it
    may have changed again unseen. ``dirty`` lists paths that may not hold
    the commit's content (hand edits discarded while the tree was served).
    ``index_changes`` are the entries where the slot's index differs from its
    index file (shared with the other slot, never rewritten in place): each
    path's ``[id, mode, *stamp]``, or ``None`` where the path left the index.
    ``racy`` maps the paths whose entries were stamped within a clock tick of
    their last change to that change's time (ns): the next scan reads them.
    ``tree`` is the id of the tree served when it is not the commit's own
    (submodules made the pinned commits' trees), and ``submodules`` what
    :class:`envflow.submodules.Composer` made it of (``None``: none).
    """

    commit: dict
    since: str = None
    links: list = field(default_factory=list)
    refused_links: list = field(default_factory=list)
    dirs: dict = None
    dirty: list = field(default_factory=list)
    sealed_at: int = 0
    index_changes: dict = field(default_factory=dict)
    racy: dict = field(default_factory=dict)
    tree: str = None
    submodules: dict = None

    @classmethod
    def from_json(cls, data):
        """A record from its JSON form, or ``None`` when ``data`` is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("commit"), dict) or "id" not in data["commit"]:
            return None
        known = {key: data[key] for key in _FIELDS[1:] if key in data}
        return cls(commit=data["commit"], **known)

    @property
    def commit_id(self):
        return self.commit["id"]


_FIELDS = tuple(item.name for item in fields(Record))


class Layout:
    """The paths of one environment's directory, its two slots and envflow's bookkeeping."""

    def __init__(self, path, home=None, aside=None):
        self.path = path
        parent, base = os.path.split(path)
        # A branch environment's home is not beside its path (see envflow.branchenvs): it is given.
        self.home = home or os.path.join(parent, f".{base}.envflow")
        # Where what stood at ``path`` before envflow is moved (``.1``, ``.2``... after it when taken).
        self.aside = aside or f"{path}.pre-envflow"
        self.lock = os.path.join(self.home, "lock")
        self.push_lock = os.path.join(self.home, "push.lock")
        self.push_pending = os.path.join(self.home, "push.pending")
        # Where the new symlink is made before it is renamed over ``path``.
        self.staging = os.path.join(self.home, "link.tmp")
        self.identity = os.path.join(self.home, "tree.id")

    def tree_id(self, make=True):
        """The directory's identity: a random id made once, the same for every host and master that deploys here
        (without ``make``, ``None`` until it is made).

        Masters sharing the directory (one file system, or the same paths on
        one host) read one id, which is how the fleet status knows them as one
        tree. Made with a hard link, so two makers at once agree on the first.
        """
        with contextlib.suppress(FileNotFoundError), open(self.identity, encoding="utf-8") as handle:
            return handle.read().strip()
        if not make:
            return None
        made = f"{self.identity}.{uuid.uuid4().hex}"
        with open(made, "w", encoding="utf-8") as handle:
            handle.write(uuid.uuid4().hex + "\n")
        try:
            os.link(made, self.identity)  # fails if another maker's id is there already
        except FileExistsError:
            pass
        finally:
            os.unlink(made)
        with open(self.identity, encoding="utf-8") as handle:
            return handle.read().strip()

    def tree(self, slot):
        return os.path.join(self.home, slot)

    def gitdir(self, slot):
        return os.path.join(self.home, f"{slot}.git")

    def link_text(self, slot):
        """What the symlink at ``path`` holds when it serves ``slot`` (relative, so the tree can move)."""
        return os.path.relpath(os.path.join(self.home, slot), os.path.dirname(self.path))

    @staticmethod
    def other(slot):
        """The slot that is not ``slot`` (``a`` when ``slot`` is ``None``)."""
        return "b" if slot == "a" else "a"

    def served_slot(self):
        """The slot the symlink at ``path`` points to, or ``None`` if envflow serves nothing there."""
        try:
            text = os.readlink(self.path)
        except OSError:
            return None
        return next((slot for slot in SLOTS if text == self.link_text(slot)), None)

    def record(self, slot):
        """The :class:`Record` of ``slot``, or ``None`` when it has none (or one of the wrong shape)."""
        try:
            with open(os.path.join(self.gitdir(slot), _RECORD), encoding="utf-8") as handle:
                return Record.from_json(json.load(handle))
        except (OSError, ValueError):
            return None

    def write_record(self, slot, record, flush=True):
        """Replace ``slot``'s record in one rename: a kill leaves the old one or the new.

        ``flush``: make it durable first (else the caller flushes before relying on it).
        """
        path = os.path.join(self.gitdir(slot), _RECORD)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(json.dumps({key: getattr(record, key) for key in _FIELDS}, separators=(",", ":")))
            if flush:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(path + ".tmp", path)

    def drop_record(self, slot):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.gitdir(slot), _RECORD))
