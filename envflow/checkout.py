"""Bringing a slot's tree to exactly one commit, writing only what differs.

The two slots of an environment share the inodes of the files their commits
have in common (hard links): a file is never written in place, only replaced
by a new one, so sharing is safe, and the scan of the served tree for hand
edits vouches for every shared file of the standby too. What the standby
holds on its own (the files where its commit and the served one differ) is
rewritten whenever the standby is reused, and its directories are sealed (inode,
mtime and ctime as envflow left them), so a file added, removed or replaced
in the standby by hand shows as a changed directory and is repaired. Nothing
is ever written through a symlink.
"""

import os
import shutil
import stat
import sys
import threading
import time

import pygit2
from pygit2.enums import FileMode

from envflow import links as link_policy
from envflow import slots, trees

_WRITTEN = (FileMode.BLOB, FileMode.BLOB_EXECUTABLE, FileMode.LINK)
_PERMISSIONS = {FileMode.BLOB: 0o644, FileMode.BLOB_EXECUTABLE: 0o755}
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


# From this many files on, a whole tree is written by two threads: the file-system calls let go of the GIL,
# so the second core writes too (20,000 files: about half the time).
_TWO_THREADS_FROM = 2000


def _parent(path):
    return path.rpartition("/")[0]


def _in_two(repo, items, work):
    """Run ``work(repo, part)`` over ``items``; a long list is split, its second half on a thread of its own.

    The thread reads objects through a repository of its own (libgit2's
    objects are not shared across threads). Its error is raised here, once
    both halves are done.
    """
    if len(items) < _TWO_THREADS_FROM:
        work(repo, items)
        return
    half = len(items) // 2
    failures = []

    def second():
        own = pygit2.Repository(repo.path)
        try:
            work(own, items[half:])
        except BaseException as exc:  # pylint: disable=broad-except
            failures.append(exc)
        finally:
            own.free()

    helper = threading.Thread(target=second)
    helper.start()
    try:
        work(repo, items[:half])
    finally:
        helper.join()
    if failures:
        raise failures[0]


def entry(tree, path):
    """The ``(id, filemode)`` that ``tree`` holds at ``path`` as a file or symlink, else ``None``."""
    try:
        found = tree[path]
    except KeyError:
        return None
    return (found.id, found.filemode) if found.filemode in _WRITTEN else None


def walk(tree, prefix=""):
    """Every file and symlink of ``tree``: ``(path, id, filemode)``, directories before what they hold."""
    stack = [(prefix, tree)]
    while stack:
        base, current = stack.pop()
        for item in current:
            mode = item.filemode
            if mode == FileMode.TREE:
                stack.append((f"{base}{item.name}/", item))
            elif mode in _WRITTEN:
                yield base + item.name, item.id, mode


# The changes between the pairs of trees compared last, every kind of entry: one deploy asks for the change from the
# served tree to the new one four times (the switch, the master's caches, the submodules moved and the history), and
# a pair of tree ids names its change for good. Only short lists are kept.
_PAIRS_KEPT = 8
_PAIR_CHANGES_KEPT = 1000
_pairs = trees.Recent(_PAIRS_KEPT)
_EVERY_KIND = (*_WRITTEN, FileMode.COMMIT)


def changes(old_tree, new_tree, prefix="", kinds=_WRITTEN):
    """The files and symlinks that differ between two trees: ``[(path, old, new)]``, ``(id, mode)`` or ``None``.

    Only the entries that differ are looked at (:func:`envflow.trees.differing`
    compares the rest in C), and subtrees with the same id are not read, so
    the cost follows the change (libgit2's tree-to-tree diff walks both trees
    whole). Either tree may be ``None`` (empty). ``kinds`` are the modes
    reported (files and symlinks; ``(FileMode.COMMIT,)`` for gitlinks).
    """
    if tuple(kinds) == _GITLINKS and (old_tree is None) != (new_tree is None):
        # A whole tree against nothing (a first deploy): only its folders and gitlinks are parsed, not each file.
        return _gitlinks_of(new_tree if new_tree is not None else old_tree, prefix, added=new_tree is not None)
    if prefix:
        return _changes(old_tree, new_tree, prefix, kinds)
    key = (old_tree.id.raw if old_tree is not None else None, new_tree.id.raw if new_tree is not None else None)
    found = _pairs.get(key)
    if found is None:
        found = _changes(old_tree, new_tree, "", _EVERY_KIND)
        if len(found) <= _PAIR_CHANGES_KEPT:
            _pairs.put(key, found)
    kept = []
    for path, old, new in found:
        old_kept = old if old is not None and old[1] in kinds else None
        new_kept = new if new is not None and new[1] in kinds else None
        if old_kept != new_kept:
            kept.append((path, old_kept, new_kept))
    return kept


_GITLINKS = (FileMode.COMMIT,)
_FOLDER_OR_GITLINK = (b"40000 ", b"160000 ")


def _gitlinks_of(tree, prefix, added):
    """:func:`_changes` of ``tree`` against nothing, for gitlinks: ``added`` (else removed), in the same order."""
    id_size = len(tree.id.raw)
    held = sorted(trees.parse(entry, id_size) for entry in trees.entries(tree) if entry.startswith(_FOLDER_OR_GITLINK))
    found = []
    for name, oid, mode in held:
        path = prefix + name
        if mode == FileMode.TREE:
            found.extend(_gitlinks_of(tree[name], f"{path}/", added))
        else:
            found.append((path, None, (oid, mode)) if added else (path, (oid, mode), None))
    return found


def _changes(old_tree, new_tree, prefix, kinds):
    found = []
    for name, (old, new) in sorted(trees.differing(old_tree, new_tree).items()):
        path = prefix + name
        old_sub = old_tree[name] if old is not None and old[1] == FileMode.TREE else None
        new_sub = new_tree[name] if new is not None and new[1] == FileMode.TREE else None
        if old_sub is not None or new_sub is not None:
            found.extend(_changes(old_sub, new_sub, f"{path}/", kinds))
        old_file = old if old is not None and old[1] in kinds else None
        new_file = new if new is not None and new[1] in kinds else None
        if old_file != new_file:
            found.append((path, old_file, new_file))
    return found


def links_after(links, changed):
    """The symlink paths of a commit, from those of another and the :func:`changes` between them."""
    links = set(links)
    for path, _old, new in changed:
        links.discard(path)
        if new is not None and new[1] == FileMode.LINK:
            links.add(path)
    return links


_CLOCK_REALTIME_COARSE = 5  # Linux's id of the clock; Python's time module does not name it


def _tick_ns():
    """How close to a moment a file time must be to prove nothing about what changed after it (ns).

    Linux stamps files from its coarse clock, which moves in ticks of 1 to 10
    ms (``CONFIG_HZ``; ``clock_getres`` of ``CLOCK_REALTIME_COARSE`` tells),
    so a stamp lags the moment it was taken by less than one tick: a stamp
    within a tick of a moment may hide a change made in that tick. Twice the
    tick and at least 10 ms, for a margin (a virtual machine's timer
    interrupts come late when its host is busy); 20 ms where the coarse clock
    cannot be asked.
    """
    if not sys.platform.startswith("linux"):
        return 20_000_000
    try:
        resolution = time.clock_getres(getattr(time, "CLOCK_REALTIME_COARSE", _CLOCK_REALTIME_COARSE))
    except (AttributeError, OSError):
        return 20_000_000
    return max(2 * round(resolution * 1e9), 10_000_000)


# A directory or file stamped this close to a seal or an index entry may hide a change made within the same tick.
_TICK_NS = _tick_ns()


def seal(root, dirs):
    """``{dir: [inode, mtime_ns, ctime_ns]}`` for each of ``dirs`` that is a real directory under ``root``.

    Never through a symlink: a directory under one (a directory replaced by a
    link) is not the tree's, and is left out. One ``lstat`` per directory:
    a parent sealed already (listed before its children, as a record lists
    them) is known real; any other is checked on the way up, once.
    """
    real, sealed = {"": True}, {}
    lstat, is_dir = os.lstat, stat.S_ISDIR

    def stamp(path):
        try:
            found = lstat(f"{root}/{path}" if path else root)
        except OSError:  # gone, under a file, or under a loop of links
            return None
        return found if is_dir(found.st_mode) else None

    def is_real(path):
        if path not in real:
            real[path] = is_real(path.rpartition("/")[0]) and stamp(path) is not None
        return real[path]

    for path in dirs:
        parent = path.rpartition("/")[0]
        if parent in sealed or (not path or is_real(parent)):
            try:
                found = lstat(f"{root}/{path}" if path else root)
            except OSError:
                continue
            if is_dir(found.st_mode):
                real[path] = True
                sealed[path] = [found.st_ino, found.st_mtime_ns, found.st_ctime_ns]
    return sealed


def racy_seals(record):
    """The directories of ``record`` stamped within a clock tick of its seal: their stamps prove nothing."""
    limit = (record.sealed_at or 0) - _TICK_NS
    return {path for path, (_ino, mtime, ctime) in (record.dirs or {}).items() if max(mtime, ctime) >= limit}


def settled(stamps, taken):
    """The ``stamps`` (from :func:`seal`, at time ``taken``) old enough to be trusted as seals."""
    return {path: stamp for path, stamp in stamps.items() if max(stamp[1], stamp[2]) < taken - _TICK_NS}


def seal_after_tick(root, dirs, changed_at):
    """Seal ``dirs`` once a clock tick has passed since ``changed_at`` (their last change); return the seal and when.

    Stamps taken within the tick of a change would not show a second change in that tick.
    """
    wait = changed_at + _TICK_NS - time.time_ns()
    if wait > 0:
        time.sleep(wait / 1e9)
    taken = time.time_ns()
    return seal(root, dirs), taken


# Racy entries a record lists at most; a deploy that stamped more waits for the clock tick to pass instead.
_RACY_MAX = 64


def racy_entries(stamps):
    """The entries of ``stamps`` (``{path: ns}``, :func:`index_entries`) changed within a clock tick of now.

    Their stamps prove nothing: an edit within that tick that keeps size and
    mtime (``cp -p``, ``touch -r``) leaves ctime in the same tick, so the next
    scan reads those files (see :func:`envflow.slots.hand_edits`). When there
    are more than a few, waiting for the tick to pass costs less than reading
    them all on the next deploy: then none is returned.
    """
    now = time.time_ns()
    racy = {path: at for path, at in stamps.items() if at >= now - _TICK_NS}
    if len(racy) > _RACY_MAX:
        wait = max(racy.values()) + _TICK_NS - now
        if wait > 0:
            time.sleep(wait / 1e9)
        return {}
    return racy


def broken_seals(root, record):
    """The sealed directories of ``record`` that changed since (an entry added, removed or replaced), or are gone.

    A directory stamped within a clock tick of the seal counts as changed.
    """
    sealed = record.dirs or {}
    now = seal(root, sealed)
    return {path for path, stamp in sealed.items() if now.get(path) != stamp} | racy_seals(record)


class TreeWriter:
    """Writes one commit's files into one slot's tree; never through a symlink, never into a file in place.

    ``repo`` reads the objects. Files whose content the served tree holds
    unedited (``share(path, id, mode)`` is true) are hard-linked from
    ``share_root`` instead of written.
    """

    def __init__(self, repo, root, share_root=None, share=None):
        self.repo = repo
        self.root = root
        self.share_root = share_root
        self.share = share or (lambda path, oid, mode: False)
        self.touched = set()  # directories whose entries changed
        self.removed_dirs = set()  # directories removed with what they held
        self.written = []  # files written with new content, for the caller to flush
        self.emptied = set()  # directories something was removed from: empty ones are pruned
        self._real = {""}

    def _full(self, path):
        return os.path.join(self.root, path) if path else self.root

    def _lstat(self, path):
        try:
            return os.lstat(self._full(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _parents_real(self, directory):
        """Whether ``directory`` and all above it are real directories (not symlinks) in the tree."""
        if directory in self._real:
            return True
        if not self._parents_real(_parent(directory)):
            return False
        found = self._lstat(directory)
        if found is None or not stat.S_ISDIR(found.st_mode):
            return False
        self._real.add(directory)
        return True

    def _forget(self, path):
        self._real = {known for known in self._real if known != path and not known.startswith(path + "/")}
        self.removed_dirs.add(path)

    def _clear(self, path):
        """Remove whatever stands at ``path`` (its parents are real directories)."""
        found = self._lstat(path)
        if found is None:
            return
        if stat.S_ISDIR(found.st_mode):
            shutil.rmtree(self._full(path))
            self._forget(path)
        else:
            os.unlink(self._full(path))
        self.touched.add(_parent(path))
        self.emptied.add(_parent(path))

    def make_dir(self, directory):
        """Make ``directory`` a real directory, replacing a file or symlink that stands in its way."""
        if directory in self._real:
            return
        self.make_dir(_parent(directory))
        found = self._lstat(directory)
        if found is not None and not stat.S_ISDIR(found.st_mode):
            os.unlink(self._full(directory))
            found = None
        if found is None:
            os.mkdir(self._full(directory))
            self.touched.update((directory, _parent(directory)))
        self._real.add(directory)

    def remove(self, path):
        """Remove what stands at ``path``, unless a parent is not a real directory (then nothing of ours is there)."""
        if self._parents_real(_parent(path)):
            self._clear(path)

    def write(self, path, oid, mode):
        """Make ``path`` a new file (or symlink) holding blob ``oid`` with ``mode``."""
        self.make_dir(_parent(path))
        self._clear(path)
        full = self._full(path)
        self.touched.add(_parent(path))
        if mode == FileMode.LINK:
            os.symlink(self.repo.odb.read(oid)[1], os.fsencode(full))
            return
        if self.share_root is not None and self.share(path, oid, mode):
            try:
                os.link(os.path.join(self.share_root, path), full)
                return
            except OSError:
                pass  # another filesystem, or too many links: write it
        self._new_file(full, oid, mode)

    def _new_file(self, full, oid, mode, repo=None):
        data = (repo or self.repo).odb.read(oid)[1]
        descriptor = os.open(full, _NEW_FILE, _PERMISSIONS[mode])
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
        finally:
            os.close(descriptor)
        self.written.append(full)

    def prune(self, directories):
        """Remove each of ``directories`` that is empty, and then its parents while they are empty.

        A directory already gone (removed with what held it) passes the
        check on to its parent, which may be empty now.
        """
        for start in sorted(directories, key=len, reverse=True):
            directory = start
            while directory:
                try:
                    os.rmdir(self._full(directory))
                except (FileNotFoundError, NotADirectoryError):
                    directory = _parent(directory)
                    continue
                except OSError:
                    break
                self._forget(directory)
                self.touched.add(_parent(directory))
                directory = _parent(directory)

    def make_paths_match(self, tree, paths):
        """Make each of ``paths`` hold what ``tree`` has there: a file, a symlink, or nothing.

        A path ``tree`` holds as a directory is left alone: the files under it
        that need writing are among ``paths``. Returns the paths of ``tree``'s
        files and symlinks written.
        """
        writes, removals = {}, []
        for path in paths:
            held = entry(tree, path)
            if held is None:
                if not isinstance(_find(tree, path), pygit2.Tree):
                    removals.append(path)
            else:
                writes[path] = held
        for path in sorted(removals, reverse=True):
            self.remove(path)
        self.prune({_parent(path) for path in removals})
        for path in sorted(writes):
            self.write(path, *writes[path])
        # What a broken seal's repair removed may have emptied directories the paths above never reach.
        self.prune(self.emptied)
        return writes

    def fill(self, tree):
        """Write all of ``tree`` into the (empty) slot; return ``{path: (id, mode)}`` of what it holds."""
        written = {path: (oid, mode) for path, oid, mode in walk(tree)}
        self._fill_with(written, lambda repo, full, path, oid, mode: self._new_file(full, oid, mode, repo))
        return written

    def link_all(self, entries, rewrite=()):
        """Fill the (empty) slot with ``entries`` (``{path: (id, mode)}``): files hard-linked from ``share_root``.

        Paths in ``rewrite`` are written from the repository instead.
        """

        def place(repo, full, path, oid, mode):
            if path in rewrite:
                self._new_file(full, oid, mode, repo)
            else:
                os.link(f"{self.share_root}/{path}", full)

        self._fill_with(entries, place)

    def _fill_with(self, entries, place):
        """Make the directories of ``entries``, then each symlink, and each file by ``place(repo, full, path, ...)``."""
        self.touched.add("")  # every directory is new, the root too: all of them are sealed
        for path in entries:
            self.make_dir(_parent(path))

        def work(repo, part):
            for path, (oid, mode) in part:
                full = f"{self.root}/{path}"
                if mode == FileMode.LINK:
                    os.symlink(repo.odb.read(oid)[1], os.fsencode(full))
                else:
                    place(repo, full, path, oid, mode)

        _in_two(self.repo, list(entries.items()), work)

    def reconcile(self, tree, directory, sealed):
        """Make ``directory`` hold only what ``tree`` has there; return the paths that must be written again.

        For a directory whose seal broke: entries ``tree`` lacks are removed,
        and everything it has there is written again (a whole subdirectory
        when it was replaced, is missing, or was never ``sealed``).
        """
        found = _find(tree, directory) if directory else tree
        if not isinstance(found, pygit2.Tree):
            self.remove(directory)
            return set()
        if not self._parents_real(directory):
            self.make_dir(directory)
        expected = {item.name: item for item in found}
        rewrite = set()
        prefix = f"{directory}/" if directory else ""
        for name in os.listdir(self._full(directory)):
            item = expected.get(name)
            path = prefix + name
            if item is None or item.filemode not in (*_WRITTEN, FileMode.TREE):
                self._clear(path)
            elif item.filemode == FileMode.TREE:
                # Its own seal vouches for a subdirectory, unless it was replaced or never sealed.
                found_here = self._lstat(path)
                if found_here is None or not stat.S_ISDIR(found_here.st_mode) or path not in sealed:
                    self._clear(path)
        for name, item in expected.items():
            path = prefix + name
            if item.filemode == FileMode.TREE:
                if not self._parents_real(path):
                    rewrite.update(child for child, _oid, _mode in walk(item, f"{path}/"))
            elif item.filemode in _WRITTEN:
                rewrite.add(path)
        return rewrite

    def restore_links(self, tree, link_paths):
        """Make each of the commit's symlinks stand in the tree as the commit has it (refused ones come back)."""
        for path in link_paths:
            oid, _mode = entry(tree, path)
            target = self.repo.odb.read(oid)[1]
            full = self._full(path)
            if self._parents_real(_parent(path)) and os.path.islink(full) and os.readlink(os.fsencode(full)) == target:
                continue
            self.write(path, oid, FileMode.LINK)

    def refuse_unsafe_links(self, link_paths):
        """Remove the symlinks that lead out of the tree or into endless walks; return them."""
        refused = link_policy.unsafe_links(self.root, link_paths)
        for link in refused:
            os.unlink(self._full(link["path"]))
            self.touched.add(_parent(link["path"]))
        self.prune({_parent(link["path"]) for link in refused})
        return refused


def _find(tree, path):
    try:
        return tree[path]
    except KeyError:
        return None


def index_file(index_path, root, entries):
    """Write a new index file at ``index_path`` of each path of ``entries`` as it stands under ``root``.

    What :func:`index_entries` into an empty index makes, then written, in
    half the time (a whole tree: 20,000 entries). ``entries`` maps each path
    to its ``(id, mode)``; a path not on disk (a refused symlink), or a
    directory there, is left out. Returns when each path put in the index
    last changed (``{path: ns}``), as :func:`index_entries` does.
    """
    stamps = {}
    base = os.fsencode(root) + b"/"

    def listed():
        for path in sorted(entries, key=os.fsencode):  # git's order: by path bytes
            name = os.fsencode(path)
            try:
                found = os.lstat(base + name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not stat.S_ISDIR(found.st_mode):
                stamps[path] = max(found.st_ctime_ns, found.st_mtime_ns)
                yield (name, *entries[path], slots.stamp(found))

    slots.write_index_file(index_path, listed())
    return stamps


def index_entries(index, root, entries, changed=None):
    """Make ``index`` describe each path of ``entries`` as it stands under ``root``; return when each last changed.

    ``entries`` maps each path to the ``(id, mode)`` the commit has there, or
    ``None``; a path the commit lacks, or not on disk (a refused symlink), leaves the index.
    ``changed``, when given, gets each path's entry (``[id, mode, *stamp]``) or ``None``,
    as :func:`envflow.slots.read_index` reads it. Returns ``{path: ns}``, the
    newest of ctime and mtime of each path put in the index, for :func:`racy_entries`.
    """
    stamps = {}
    for path in sorted(entries):
        held = entries[path]
        found = None
        if held is not None:
            try:
                found = os.lstat(os.path.join(root, path))
            except (FileNotFoundError, NotADirectoryError):
                found = None
        if found is None or stat.S_ISDIR(found.st_mode):
            slots.remove_entry(index, path)
            if changed is not None:
                changed[path] = None
        else:
            stamped = slots.stamp(found)
            slots.set_entry(index, path, held[0], held[1], stamped)
            stamps[path] = max(found.st_ctime_ns, found.st_mtime_ns)
            if changed is not None:
                changed[path] = [str(held[0]), held[1], *stamped]
    return stamps
