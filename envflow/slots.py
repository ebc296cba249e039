"""A slot's repository: its settings, its index (with each file's stat data) and the hand-edit scan.

Each slot has a bare repository beside its tree (``a.git`` for tree ``a``)
that borrows the mirror's objects. Its index lists what envflow wrote into
the tree, with the inode, size, mtime and ctime of each file, so a scan of
the tree for hand edits costs a ``stat`` per file and reads only what
changed. envflow writes the index entries itself, from the stat of the files
it wrote: no file is read back to hash it.
"""

import ctypes
import hashlib
import os
import shutil
import stat
import struct
import threading

import pygit2
from pygit2 import C, ffi
from pygit2.enums import DeltaStatus, DiffOption, FileMode
from pygit2.errors import check_error
from pygit2.utils import StrArray

from envflow import trees

# Repository settings that would otherwise come from the user's ~/.gitconfig.
_SLOT_CONFIG = {
    "core.autocrlf": "false",
    "core.filemode": "true",
    "core.symlinks": "true",
    "core.ignorecase": "false",
    # ctime betrays an edit that kept size and mtime (``cp -p``, ``touch -r``).
    "core.trustctime": "true",
    "core.checkstat": "default",
}
# Files are served as the repository holds them: no end-of-line, ident or filter conversion,
# whatever .gitattributes in the tree says (info/attributes takes precedence over it).
_ATTRIBUTES = "* -text -crlf -eol -ident -filter -working-tree-encoding\n"
_VERSION = "2"
_SCAN_FLAGS = (
    DiffOption.INCLUDE_UNTRACKED
    | DiffOption.RECURSE_UNTRACKED_DIRS
    | DiffOption.INCLUDE_IGNORED
    | DiffOption.RECURSE_IGNORED_DIRS
    | DiffOption.INCLUDE_TYPECHANGE
    | DiffOption.IGNORE_SUBMODULES
)
_EDIT_KIND = {
    DeltaStatus.UNTRACKED: "added",
    DeltaStatus.IGNORED: "added",
    DeltaStatus.ADDED: "added",
    DeltaStatus.DELETED: "deleted",
}
_MASK32 = 0xFFFFFFFF

# pygit2 does not wrap git_repository_set_index: call it in the libgit2 that pygit2 loaded (ctypes, as
# cffi's own parser would cost the process 1.5 MiB).
_SET_INDEX = ctypes.CDLL(pygit2._libgit2.__file__).git_repository_set_index  # pylint: disable=protected-access
_SET_INDEX.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
_SET_INDEX.restype = ctypes.c_int


def _address(cdata):
    return int(ffi.cast("uintptr_t", cdata))


def _lend_index(repo, index):
    """Make ``index`` (``None``: none) the one ``repo`` uses wherever libgit2 needs the repository's index.

    A diff reads attributes, and the attributes are read from the
    repository's index: without this, a fresh repository reads its index
    file again (20,000 entries: about 25 ms) although the scan has one.
    """
    lent = _address(index._index) if index is not None else None  # pylint: disable=protected-access
    check_error(_SET_INDEX(_address(repo._repo), lent))  # pylint: disable=protected-access


def no_edits():
    return {"added": [], "modified": [], "deleted": []}


def _make_gitdir(making):
    """Write at ``making`` a bare repository with the slot's settings: what ``git init --bare`` makes, less its samples.

    libgit2's own init costs 2-3 ms (it probes the file system for symlinks
    and case), and each setting written after it rewrites the config file:
    6 ms a slot, twice on a first deploy, against well under 1 ms here.
    """
    for directory in ("objects/info", "objects/pack", "refs/heads", "refs/tags", "info"):
        os.makedirs(os.path.join(making, directory))
    settings = {"core.repositoryformatversion": "0", "core.bare": "true", **_SLOT_CONFIG, "envflow.layout": _VERSION}
    sections = {}
    for key, value in settings.items():
        section, name = key.split(".")
        sections.setdefault(section, []).append(f"\t{name} = {value}\n")
    files = {
        "HEAD": "ref: refs/heads/master\n",
        "config": "".join(f"[{section}]\n{''.join(lines)}" for section, lines in sections.items()),
        "info/attributes": _ATTRIBUTES,
    }
    for name, text in files.items():
        with open(os.path.join(making, name), "w", encoding="utf-8") as handle:
            handle.write(text)


def prepare_gitdir(gitdir, objects):
    """Make ``gitdir`` a slot repository borrowing ``objects``, made whole beside and renamed into place."""
    if not os.path.isfile(os.path.join(gitdir, "HEAD")):
        # A kill midway never leaves a slot repository that takes its settings from ~/.gitconfig.
        shutil.rmtree(gitdir, ignore_errors=True)
        making = f"{gitdir}.new"
        shutil.rmtree(making, ignore_errors=True)
        _make_gitdir(making)
        os.rename(making, gitdir)
    else:
        _settle_settings(gitdir)
    alternates = os.path.join(gitdir, "objects", "info", "alternates")
    try:
        with open(alternates, encoding="utf-8") as handle:
            current = handle.read().strip()
    except OSError:
        current = None
    if current != objects:
        with open(alternates, "w", encoding="utf-8") as handle:
            handle.write(objects + "\n")


def _settle_settings(gitdir):
    """Give the slot repository at ``gitdir`` the slot's settings if it lacks them (made by an older envflow).

    Only the repository's own config file is read (no repository opened, no
    other level of configuration consulted): a few hundred bytes.
    """
    settings = pygit2.Config(os.path.join(gitdir, "config"))
    try:
        if settings["envflow.layout"] == _VERSION:
            return
    except KeyError:
        pass
    for key, value in _SLOT_CONFIG.items():
        settings[key] = value
    os.makedirs(os.path.join(gitdir, "info"), exist_ok=True)
    with open(os.path.join(gitdir, "info", "attributes"), "w", encoding="utf-8") as handle:
        handle.write(_ATTRIBUTES)
    settings["envflow.layout"] = _VERSION


def open_repo(gitdir, tree, objects):
    """Open a slot's repository with ``tree`` as its work tree, creating what is missing."""
    prepare_gitdir(gitdir, objects)
    os.makedirs(tree, exist_ok=True)
    repo = pygit2.Repository(gitdir)
    repo.workdir = tree
    return repo


def open_index(path):
    """The index file at ``path`` (empty when there is none), as a :class:`pygit2.Index` knowing its ``path``.

    Opened here rather than by ``pygit2.Index(path)``, which leaves a half-made
    object behind when the file does not read: its ``__del__`` fails whenever
    it is collected, even inside a ``compile()`` (a SystemError in CPython 3.11).
    """
    opened = ffi.new("git_index **")
    check_error(C.git_index_open(opened, os.fsencode(path)))
    index = pygit2.Index.from_c(None, opened)
    index.path = path
    return index


def read_index(path, changes):
    """The index file at ``path`` with ``changes`` (a slot record's ``index_changes``) made to it, in memory."""
    return apply_changes(open_index(path), changes)


def apply_changes(index, changes):
    """Make ``changes`` (a slot record's ``index_changes``) to ``index`` in memory; return it."""
    for changed, entry in changes.items():
        if entry is None:
            remove_entry(index, changed)
        else:
            oid, mode, *stamped = entry
            set_entry(index, changed, pygit2.Oid(hex=oid), mode, stamped)
    return index


def stamp(found):
    """What an index entry keeps of a file's ``os.lstat``, to tell on the next scan whether it changed."""
    return [
        found.st_ctime_ns,
        found.st_mtime_ns,
        found.st_dev & _MASK32,
        found.st_ino & _MASK32,
        found.st_uid & _MASK32,
        found.st_gid & _MASK32,
        found.st_size & _MASK32,
    ]


def set_entry(index, path, oid, mode, stamped):
    """Put ``path`` in ``index`` as blob ``oid`` with ``mode`` and the :func:`stamp` of the file as written.

    pygit2's own ``Index.add`` either hashes the file again or leaves the
    stat data empty, which would make every scan read the file.
    """
    ctime_ns, mtime_ns, dev, ino, uid, gid, size = stamped
    entry = ffi.new("git_index_entry *")
    entry.ctime.seconds, entry.ctime.nanoseconds = divmod(ctime_ns, 1_000_000_000)
    entry.mtime.seconds, entry.mtime.nanoseconds = divmod(mtime_ns, 1_000_000_000)
    entry.dev = dev
    entry.ino = ino
    entry.mode = mode
    entry.uid = uid
    entry.gid = gid
    entry.file_size = size
    ffi.buffer(ffi.addressof(entry, "id"))[:] = oid.raw
    encoded = ffi.new("char[]", os.fsencode(path))
    entry.path = encoded
    check_error(C.git_index_add(index._index, entry))  # pylint: disable=protected-access


# An index entry of format version 2 as git and libgit2 write it: ctime and mtime (seconds, nanoseconds), dev, ino,
# mode, uid, gid, size, the blob's id, and the flags (the path's length, at most 0xFFF; stage 0); then the path,
# padded with 1 to 8 NULs to a multiple of 8 bytes.
_ENTRY = struct.Struct(">10I20sH")
_NS = 1_000_000_000
_PADDING = [b"\0" * (8 - used) for used in range(8)]


def write_index_file(path, listed):
    """Write a new index file at ``path`` (none may be there) listing ``listed``, sorted by path bytes.

    ``listed`` yields ``(path bytes, id, mode, stamp)``, each path once, with
    the :func:`stamp` of the file. The file is the one libgit2 writes for the
    same entries (format version 2, no extension), byte for byte; writing it
    here costs no libgit2 entry per path (:func:`set_entry` for every path of a
    whole tree takes twice as long).
    """
    data = bytearray(b"DIRC\0\0\0\2\0\0\0\0")  # version 2; the count of entries is set below
    pack, count = _ENTRY.pack, 0
    for name, oid, mode, (ctime, mtime, dev, ino, uid, gid, size) in listed:
        length = len(name)
        data += pack(
            ctime // _NS & _MASK32,
            ctime % _NS,
            mtime // _NS & _MASK32,
            mtime % _NS,
            dev,
            ino,
            mode,
            uid,
            gid,
            size,
            oid.raw,
            min(length, 0xFFF),
        )
        data += name
        data += _PADDING[(62 + length) % 8]
        count += 1
    data[8:12] = count.to_bytes(4, "big")
    with open(path, "xb") as handle:  # a new file: never one written in place
        handle.write(data)
        handle.write(hashlib.sha1(data).digest())


def remove_entry(index, path):
    """Drop ``path`` from ``index`` if it is there."""
    C.git_index_remove(index._index, os.fsencode(path), 0)  # pylint: disable=protected-access


def _diff_to_workdir(repo, index, paths):
    """The deltas between ``index`` and ``repo``'s work tree, limited to ``paths`` (exact paths or directories)."""
    options = ffi.new("git_diff_options *")
    check_error(C.git_diff_options_init(options, 1))
    flags = _SCAN_FLAGS | (DiffOption.DISABLE_PATHSPEC_MATCH if paths else 0)
    options.flags = int(flags)
    listed = StrArray(list(paths) if paths else None)
    if paths:
        listed.assign_to(options.pathspec)
    out = ffi.new("git_diff **")
    # pygit2 calls libgit2 through cffi, which lets go of the GIL: two scans run on two cores.
    check_error(C.git_diff_index_to_workdir(out, repo._repo, index._index, options))  # pylint: disable=protected-access
    diff = pygit2.Diff.from_c(bytes(ffi.buffer(out)[:]), repo)
    return list(diff.deltas)


def _edits_of(deltas):
    edits = no_edits()
    for delta in deltas:
        edits[_EDIT_KIND.get(delta.status, "modified")].append(delta.new_file.path or delta.old_file.path)
    return edits


def scan_halves(index, tree, root, minimum=4000):
    """Split a scan of ``root`` (holding ``tree``, listed by ``index``) into two halves of similar size.

    Returns two lists of paths (directories and files) that cover the tree
    between them, or ``None`` for a small tree (a thread costs more than it
    saves). The split is at the index's middle entry: along its path, the
    names before it go to the first half, those after to the second, so the
    halves hold as many files each whatever the folders. Python touches only
    the folders on that one path; each one's listing is checked here, and any
    name the tree does not have there (added by hand) goes to the first half,
    which reports it.
    """
    total = len(index)
    if total < minimum:
        return None
    halves = ([], [])
    directory, current = "", tree
    parts = index[total // 2].path.split("/")
    for depth, part in enumerate(parts):
        names = trees.names(current)
        try:
            position = names.index(part)
        except ValueError:
            return None  # the index lists what the tree lacks: no split to trust
        prefix = f"{directory}/" if directory else ""
        halves[0].extend(trees.prefixed(prefix, names[:position]))
        halves[1].extend(trees.prefixed(prefix, names[position + 1 :]))
        where = os.path.join(root, directory) if directory else root
        # Gone or replaced by something else: the half holding its entries reports that.
        if not directory or (not os.path.islink(where) and os.path.isdir(where)):
            try:
                added = set(os.listdir(where)).difference(names)
            except OSError:
                added = ()
            halves[0].extend(trees.prefixed(prefix, sorted(added)))
        path = prefix + part
        child = current[part]
        if depth == len(parts) - 1 or not isinstance(child, pygit2.Tree):
            halves[1].append(path)
            break
        directory, current = path, child
    return halves if all(halves) else None


def _diff_halves(repo, index, halves):
    found, failures = {}, []

    def scan(number, scan_repo):
        try:
            found[number] = _diff_to_workdir(scan_repo, index, halves[number])
        except Exception as exc:  # pylint: disable=broad-except
            failures.append(exc)

    # A repository of its own for the second thread: libgit2 objects are not shared across threads.
    second = pygit2.Repository(repo.path)
    second.workdir = repo.workdir
    _lend_index(second, index)
    try:
        helper = threading.Thread(target=scan, args=(1, second))
        helper.start()
        scan(0, repo)
        helper.join()
    finally:
        _lend_index(second, None)
        second.free()
    if failures:
        raise failures[0]
    return found[0] + found[1]


def hand_edits(repo, index, halves=None, racy=()):
    """The files of ``repo``'s work tree that differ from ``index``: ``{"added", "modified", "deleted"}``.

    Added covers untracked and ignored files (Salt serves those too).
    ``halves`` (from :func:`scan_halves`) splits the scan over two threads, so
    it runs on two cores. Both read the same index, which nothing changes
    meanwhile: libgit2 takes a snapshot of its entries for each scan. The
    files of ``racy`` (paths whose entries were stamped within a clock tick
    of their last change) are read and hashed too: their stat data may not
    show an edit made in that tick.
    """
    _lend_index(repo, index)
    try:
        deltas = _diff_to_workdir(repo, index, None) if not halves else _diff_halves(repo, index, halves)
    finally:
        _lend_index(repo, None)  # an index owned by a repository is checked against its work tree when written
    edits = _edits_of(deltas)
    seen = {path for paths in edits.values() for path in paths}
    edits["modified"] += [path for path in racy if path not in seen and _content_differs(repo.workdir, index, path)]
    for paths in edits.values():
        paths.sort()
    return edits


def _content_differs(root, index, path):
    """Whether the file or symlink at ``path`` under ``root`` holds other than its entry in ``index``, read whole."""
    try:
        entry = index[path]
    except KeyError:
        return False
    full = os.path.join(root, path)
    try:
        found = os.lstat(full)
    except OSError:
        return False  # gone, or under what replaced a directory: the scan reported that
    if stat.S_ISLNK(found.st_mode):
        held = pygit2.hash(os.fsencode(os.readlink(full))), FileMode.LINK
    elif stat.S_ISREG(found.st_mode):
        held = pygit2.hashfile(full), FileMode.BLOB_EXECUTABLE if found.st_mode & stat.S_IXUSR else FileMode.BLOB
    else:
        return False  # a directory now: the scan reported that
    return held != (entry.id, entry.mode)
