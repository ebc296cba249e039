"""A git tree's entries read from the object as git stores it, without a Python object per entry.

A tree with 2,000 entries costs 2,000 pygit2 objects, each with an enum for
its mode, when iterated (several ms). Its raw form, ``mode name\\0id`` per
entry, is split by one regular expression and compared as a set of byte
strings: the work per entry is done in C, and Python handles only the
entries that matter (those that differ, or the one a path goes through).
"""

import bisect
import collections
import functools
import os
import re
import threading

import pygit2
from pygit2.enums import FileMode


@functools.cache
def _pattern(id_size, named):
    name = rb"([^\0]+)" if named else rb"[^\0]+"
    return re.compile(rb"[0-7]+ " + name + rb"\0.{%d}" % id_size, re.S)


def entries(tree):
    """``tree``'s entries as stored, one byte string each (``[]`` for ``None``), in the tree's order."""
    if tree is None:
        return []
    return _pattern(len(tree.id.raw), False).findall(tree.read_raw())


class Recent:
    """The values last put, ``size`` at most, by key; safe to share between threads.

    For what a content id names for good (a tree's entries, the change between two trees): a value never goes
    stale, it only goes when newer ones push it out.
    """

    def __init__(self, size):
        self.size = size
        self._kept = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._kept)

    def get(self, key):
        """The value kept for ``key`` (now the newest), or ``None``."""
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
            return found

    def put(self, key, value):
        with self._lock:
            self._kept[key] = value
            self._kept.move_to_end(key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)


# The entry sets of the trees compared last, by id: one deploy compares the same large trees several times (the served
# tree with the new one for the switch, the caches and the submodules; the standby's with both), and a tree's id
# names its content for good. A few dozen trees; a 2,000-entry tree's set takes about 200 KB.
_SETS_KEPT = 32
_sets = Recent(_SETS_KEPT)


def entry_set(tree):
    """:func:`entries` of ``tree`` as a frozenset, kept for the trees compared last (``None``: the empty set)."""
    if tree is None:
        return frozenset()
    found = _sets.get(tree.id.raw)
    if found is None:
        found = frozenset(entries(tree))
        _sets.put(tree.id.raw, found)
    return found


def names(tree):
    """The names of ``tree``'s entries, in the tree's order."""
    found = _pattern(len(tree.id.raw), True).findall(tree.read_raw())
    return os.fsdecode(b"\0".join(found)).split("\0") if found else []


def _normalized(mode):
    """The mode libgit2 reports for a stored one (``git_tree_entry_filemode``: old modes such as 100664 too)."""
    kind = mode & 0o170000
    if kind == FileMode.TREE:
        return FileMode.TREE
    if mode & 0o100:
        return FileMode.BLOB_EXECUTABLE
    if kind in (FileMode.COMMIT, FileMode.LINK):
        return FileMode(kind)
    return FileMode.BLOB


def parse(entry, id_size):
    """One stored entry as ``(name, id, mode)``, the mode as libgit2 reports it."""
    head, raw_id = entry[: -id_size - 1], entry[-id_size:]
    mode, name = head.split(b" ", 1)
    return os.fsdecode(name), pygit2.Oid(raw=raw_id), _normalized(int(mode, 8))


def differing(old_tree, new_tree):
    """The entries that differ between two trees (either may be ``None``): ``{name: (old, new)}``.

    ``old`` and ``new`` are ``(id, mode)``, or ``None`` where that tree has no such name.
    """
    old_entries, new_entries = entry_set(old_tree), entry_set(new_tree)
    id_size = len((old_tree if old_tree is not None else new_tree).id.raw)
    found = {}
    for side, kept in ((0, old_entries - new_entries), (1, new_entries - old_entries)):
        for entry in kept:
            name, oid, mode = parse(entry, id_size)
            found.setdefault(name, [None, None])[side] = (oid, mode)
    return {name: tuple(pair) for name, pair in found.items()}


def prefixed(prefix, listed):
    """``prefix + name`` for each of ``listed``, joined and split in C rather than formatted one by one."""
    if not listed:
        return []
    return (prefix + ("\0" + prefix).join(listed)).split("\0")


def under(paths, directory):
    """The paths of ``paths`` (sorted) that lie under ``directory/``: two bisections, not a test of each path.

    They sit between ``directory/`` and ``directory0`` (``0`` follows ``/``).
    """
    return paths[bisect.bisect_left(paths, directory + "/") : bisect.bisect_left(paths, directory + "0")]


def gitlinks(tree, prefix=""):
    """Every gitlink (submodule pin) of ``tree``, whole: ``{path: commit id}``."""
    found, id_size = {}, len(tree.id.raw)
    for entry in entries(tree):
        if entry.startswith((b"40000 ", b"160000 ")):
            name, oid, mode = parse(entry, id_size)
            if mode == FileMode.COMMIT:
                found[prefix + name] = str(oid)
            else:
                found.update(gitlinks(tree[name], f"{prefix}{name}/"))
    return found


def _key(entry):
    """Git's order of tree entries: by name, a tree's name read as ending in ``/``."""
    head = entry[: entry.index(b"\0")]
    mode, name = head.split(b" ", 1)
    return name + b"/" if mode == b"40000" else name


def replaced(repo, tree, subtrees, prefix=""):
    """The id of ``tree`` with the entries at ``subtrees`` (``{path: tree id}``) made those trees, written to ``repo``.

    Only the trees on the way to each path are written again; each keeps
    git's order (a gitlink that becomes a tree may sort elsewhere).
    """
    id_size = len(tree.id.raw)
    here = {path: oid for path, oid in subtrees.items() if "/" not in path[len(prefix) :]}
    below = {}
    for path in subtrees:
        if path not in here:
            below.setdefault(path[len(prefix) :].split("/", 1)[0], {})[path] = subtrees[path]
    written = []
    for stored in entries(tree):
        name = os.fsdecode(stored[stored.index(b" ") + 1 : stored.index(b"\0")])
        path = prefix + name
        if path in here:
            written.append(b"40000 " + os.fsencode(name) + b"\0" + pygit2.Oid(hex=here[path]).raw)
        elif name in below:
            inner = replaced(repo, tree[name], below[name], f"{path}/")
            written.append(stored[:-id_size] + pygit2.Oid(hex=inner).raw)
        else:
            written.append(stored)
    written.sort(key=_key)
    return str(repo.odb.write(pygit2.enums.ObjectType.TREE, b"".join(written)))
