"""The directory an environment serves: one commit's tree, switched atomically.

Layout, for an environment whose ``path`` is ``/srv/salt/stage``::

    /srv/salt/stage -> .stage.envflow/a      the served tree (a relative symlink)
    /srv/salt/.stage.envflow/a/               tree in slot a
    /srv/salt/.stage.envflow/b/               tree in slot b, the standby
    /srv/salt/.stage.envflow/a.git/           slot a's bookkeeping: index, HEAD, record
    /srv/salt/.stage.envflow/lock             held while deploying

A deploy brings the standby slot to the new commit with an index-based
checkout (the index caches file stats, so unchanged files cost a stat, not a
write), then replaces the symlink in one ``rename``. The checkout runs while
the served tree is checked for hand edits, on another core. Every piece of
bookkeeping lives beside the served tree, never inside it, so Salt never
serves it, and the master and a minion deploying the same path agree on it.
"""

import contextlib
import ctypes
import errno
import json
import os
import shutil
import threading

import pygit2
from pygit2.enums import CheckoutStrategy, DeltaStatus, DiffOption, FileMode

from envflow.errors import Drift, EnvflowError
from envflow.locking import clear_stale_git_locks, held
from envflow.records import now_iso
from envflow.remote import commit_info

SLOTS = ("a", "b")
_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_RECORD = "envflow.json"
_DRIFT_FLAGS = (
    DiffOption.INCLUDE_UNTRACKED
    | DiffOption.RECURSE_UNTRACKED_DIRS
    | DiffOption.INCLUDE_IGNORED
    | DiffOption.RECURSE_IGNORED_DIRS
    | DiffOption.INCLUDE_TYPECHANGE
)
# A whole tree into an empty slot.
_CHECKOUT = CheckoutStrategy.FORCE | CheckoutStrategy.REMOVE_UNTRACKED | CheckoutStrategy.REMOVE_IGNORED
# Given paths only, as exact paths (no pattern matching over 20,000 entries).
_CHECKOUT_PATHS = CheckoutStrategy.FORCE | CheckoutStrategy.DISABLE_PATHSPEC_MATCH
# Repository settings that would otherwise come from the user's ~/.gitconfig.
_SLOT_CONFIG = {
    "core.autocrlf": "false",
    "core.filemode": "true",
    "core.symlinks": "true",
    "core.ignorecase": "false",
}
_DRIFT_KIND = {
    DeltaStatus.UNTRACKED: "added",
    DeltaStatus.IGNORED: "added",
    DeltaStatus.ADDED: "added",
    DeltaStatus.DELETED: "deleted",
}


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


def _sync_filesystem(path):
    """Flush the filesystem holding ``path`` (``syncfs``), else everything (``sync``)."""
    syncfs = getattr(_LIBC, "syncfs", None)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if syncfs is None or syncfs(descriptor) != 0:
            os.sync()
    finally:
        os.close(descriptor)


def _no_drift():
    return {"added": [], "modified": [], "deleted": []}


def _links_after(links, deltas):
    """The symlink paths of a commit, from those of a base commit and the deltas between them."""
    for delta in deltas:
        if delta.old_file.mode == FileMode.LINK:
            links.discard(delta.old_file.path)
        if delta.new_file.mode == FileMode.LINK and delta.status != DeltaStatus.DELETED:
            links.add(delta.new_file.path)
    return links


def _all_links(repo, tree):
    """The symlink paths of ``tree``, by walking it whole."""
    links, stack = set(), [("", tree)]
    while stack:
        prefix, current = stack.pop()
        for entry in current:
            if entry.filemode == FileMode.TREE:
                stack.append((f"{prefix}{entry.name}/", repo[entry.id]))
            elif entry.filemode == FileMode.LINK:
                links.add(f"{prefix}{entry.name}")
    return links


def _walk_cycles(root, into_dirs):
    """The directory symlinks that a walk following links (as Salt's) would go round and round through.

    ``into_dirs`` maps each link's path to the directory it resolves to.
    Following link A leads into its directory, where the walk meets every
    link below it; a link that can lead back to itself makes the walk endless.
    """
    below = {
        path: {other for other in into_dirs if os.path.join(root, other).startswith(target + os.sep)}
        for path, target in into_dirs.items()
    }
    cycling = set()
    for start in into_dirs:
        seen, stack = set(), list(below[start])
        while stack:
            current = stack.pop()
            if current == start:
                cycling.add(start)
                break
            if current not in seen:
                seen.add(current)
                stack.extend(below[current])
    return cycling


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _prune_empty_parents(root, path):
    parent = os.path.dirname(path)
    while parent:
        try:
            os.rmdir(os.path.join(root, parent))
        except OSError:
            return
        parent = os.path.dirname(parent)


def drift_message(path, changes, remedy="deploy with force=True"):
    """The one-line refusal for hand edits ``changes`` of the tree at ``path``."""
    return (
        f"envflow: {path} was edited by hand ({summarize(changes)}); commit those changes to the "
        f"repository, or {remedy} to discard them"
    )


def summarize(changes, limit=5):
    """Render a drift mapping as one short line: ``modified: a, b; added: c``."""
    parts = []
    for kind in ("modified", "added", "deleted"):
        paths = changes.get(kind) or []
        if paths:
            shown = ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
            parts.append(f"{kind}: {shown}")
    return "; ".join(parts)


class ServedDir:
    """The directory ``path`` that one environment serves to Salt."""

    def __init__(self, path):
        self.path = path
        parent, base = os.path.split(path)
        self.home = os.path.join(parent, f".{base}.envflow")

    # -- layout ---------------------------------------------------------

    def _tree(self, slot):
        return os.path.join(self.home, slot)

    def _gitdir(self, slot):
        return os.path.join(self.home, f"{slot}.git")

    def _link_text(self, slot):
        return os.path.join(os.path.basename(self.home), slot)

    def served_slot(self):
        """The slot the symlink at ``path`` points to, or ``None`` if envflow serves nothing there."""
        try:
            text = os.readlink(self.path)
        except OSError:
            return None
        return next((slot for slot in SLOTS if text == self._link_text(slot)), None)

    def record(self, slot):
        """The record of what ``slot`` holds (commit and refused links), or ``None``."""
        try:
            with open(os.path.join(self._gitdir(slot), _RECORD), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def _write_record(self, slot, record):
        path = os.path.join(self._gitdir(slot), _RECORD)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(path + ".tmp", path)

    def _drop_record(self, slot):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._gitdir(slot), _RECORD))

    def _open(self, slot, objects):
        """Open the slot's repository: its own index and HEAD, the mirror's objects."""
        gitdir, tree = self._gitdir(slot), self._tree(slot)
        if not os.path.isfile(os.path.join(gitdir, "HEAD")):
            # Made whole beside, then renamed into place: a kill midway never leaves a slot
            # repository that would take its settings from the user's ~/.gitconfig.
            shutil.rmtree(gitdir, ignore_errors=True)
            making = f"{gitdir}.new"
            shutil.rmtree(making, ignore_errors=True)
            made = pygit2.init_repository(making, bare=True)
            for key, value in _SLOT_CONFIG.items():
                made.config[key] = value
            made.free()
            os.rename(making, gitdir)
        alternates = os.path.join(gitdir, "objects", "info", "alternates")
        try:
            with open(alternates, encoding="utf-8") as handle:
                current = handle.read().strip()
        except OSError:
            current = None
        if current != objects:
            with open(alternates, "w", encoding="utf-8") as handle:
                handle.write(objects + "\n")
        os.makedirs(tree, exist_ok=True)
        repo = pygit2.Repository(gitdir)
        repo.workdir = tree
        return repo

    # -- reading --------------------------------------------------------

    def deployed(self):
        """Describe the commit served at ``path``, or ``None`` if none is.

        The description has the commit's ``id``, ``summary``, ``author`` and
        ``time``, and ``deployed_at``: since when ``path`` serves it.

        Raises :class:`EnvflowError` if ``path`` is envflow's symlink but its record is gone.
        """
        slot = self.served_slot()
        if slot is None:
            return None
        record = self.record(slot)
        if record is None:
            raise EnvflowError(
                f"envflow: {self.path} serves a tree envflow has no record of; deploy with force=True to replace it"
            )
        return {**record["commit"], "deployed_at": record.get("since")}

    def drift(self, objects):
        """Return the hand edits of the served tree as ``{"added": [...], "modified": [...], "deleted": [...]}``."""
        if self.served_slot() is None:
            return _no_drift()
        try:
            # Under the lock: a deploy running meanwhile switches slots, and the check must see the one served.
            with held(os.path.join(self.home, "lock"), f"the directory {self.path}"):
                slot = self.served_slot()
                if slot is None:
                    return _no_drift()
                self.deployed()  # a served tree without a record cannot be checked
                return self._drift_of(slot, objects)
        except (OSError, pygit2.GitError) as exc:
            raise EnvflowError(f"envflow: cannot check {self.path} for hand edits: {exc}") from None

    def _drift_of(self, slot, objects):
        repo = self._open(slot, objects)
        try:
            return self._drift(repo)
        finally:
            repo.free()

    @staticmethod
    def _drift(repo):
        changes = _no_drift()
        for delta in repo.index.diff_to_workdir(flags=_DRIFT_FLAGS).deltas:
            changes[_DRIFT_KIND.get(delta.status, "modified")].append(delta.new_file.path or delta.old_file.path)
        for paths in changes.values():
            paths.sort()
        return changes

    # -- deploying ------------------------------------------------------

    def deploy(self, objects, commit, force=False, before_switch=None, remedy="deploy with force=True"):
        """Make ``path`` serve exactly the tree of ``commit`` (a :class:`pygit2.Commit`).

        ``objects`` is the object directory of the mirror that holds ``commit``.
        Refuses with :class:`Drift` when the served tree was edited by hand,
        unless ``force``. ``before_switch``, if given, is called once the new
        tree is ready and nothing refused, before ``path`` changes (also when
        the commit is served already): a promotion moves its branch there, so a
        refusal or a failed push leaves everything as it was. ``remedy`` ends
        the hand-edit refusal (what to run to discard the edits). Returns a dict:
        ``old`` and ``new`` commit descriptions, ``changed``, the ``files``
        changed, ``moved_aside``, ``refused_links`` and, with ``force``, the
        ``discarded`` hand edits.
        """
        try:
            os.makedirs(self.home, exist_ok=True)
            with held(os.path.join(self.home, "lock"), f"the directory {self.path}"):
                return self._deploy(objects, commit, force, before_switch or (lambda: None), remedy)
        except (OSError, pygit2.GitError) as exc:
            raise EnvflowError(f"envflow: cannot deploy {str(commit.id)[:10]} to {self.path}: {exc}") from None

    def _deploy(self, objects, commit, force, before_switch, remedy):
        new_id = str(commit.id)
        self._tidy()
        served = self.served_slot()
        served_record = self.record(served) if served else None
        if served and served_record is None and not force:
            self.deployed()  # raises: unknown tree in place
        old = served_record["commit"] if served_record else None
        result = {
            "path": self.path,
            "old": old,
            "new": commit_info(commit),
            "changed": False,
            "files": {"added": 0, "modified": 0, "deleted": 0},
            "moved_aside": None,
            "refused_links": [],
            "discarded": None,
        }
        standby = next(slot for slot in SLOTS if slot != served)
        if old is not None and old["id"] == new_id:
            # Nothing to write unless the served tree drifted from its commit.
            drift = self._drift_of(served, objects)
            if not any(drift.values()):
                before_switch()
                result["refused_links"] = served_record["refused_links"]
                return result
            self._refuse_hand_edits(drift, force, remedy)
            checked_out = self._checkout(standby, objects, commit, old, since=served_record.get("since"))
        else:
            drift, checked_out = self._prepare(served if served_record else None, standby, objects, commit, old)
            self._refuse_hand_edits(drift, force, remedy)
        result["refused_links"], result["files"] = checked_out
        result["discarded"] = drift if any(drift.values()) else None
        before_switch()
        result["moved_aside"] = self._switch(standby)
        result["changed"] = True
        return result

    def _refuse_hand_edits(self, drift, force, remedy):
        if any(drift.values()) and not force:
            raise Drift(drift_message(self.path, drift, remedy), drift)

    def _tidy(self):
        """Clear what an interrupted run left: a half-made symlink (or what an exchange put there), git lock files."""
        staging = os.path.join(self.home, "link.tmp")
        if os.path.islink(staging) and os.readlink(staging) in {self._link_text(slot) for slot in SLOTS}:
            os.unlink(staging)  # envflow's own half-made symlink
        elif os.path.lexists(staging):
            self._put_aside(staging)  # what stood at path, left by a killed exchange: never delete it
        for slot in SLOTS:
            clear_stale_git_locks(self._gitdir(slot))

    def _prepare(self, served, standby, objects, commit, old):
        """Check the served slot for hand edits while the standby is checked out.

        Returns the hand edits, and what :meth:`_checkout` returns.
        """
        drift = _no_drift()
        failure = []

        def check_served():
            try:
                drift.update(self._drift_of(served, objects))
            except Exception as exc:  # pylint: disable=broad-except
                failure.append(exc)

        checker = threading.Thread(target=check_served) if served else None
        if checker:
            checker.start()
        try:
            checked_out = self._checkout(standby, objects, commit, old)
        finally:
            if checker:
                checker.join()
        if failure:
            raise failure[0]
        return drift, checked_out

    def _checkout(self, slot, objects, commit, old, since=None):
        """Bring ``slot`` to exactly ``commit``; return its refused links and the files changed since ``old``."""
        previous = self.record(slot)
        self._drop_record(slot)
        base = previous["commit"]["id"] if previous else None
        repo = self._open(slot, objects)
        try:
            if base is None or base not in repo:
                # No record of what the slot holds (first use, or a run killed mid-way): start empty.
                repo.free()
                self._empty(slot)
                repo = self._open(slot, objects)
            commit = repo[commit.id]  # the same commit, as an object of this repository
            if base is not None and base in repo:
                deltas = repo.diff(repo[base].peel(pygit2.Tree), commit.tree).deltas
                self._update(repo, commit, deltas)
                links = _links_after(set(previous["links"]), deltas)
            else:
                repo.checkout_tree(commit.tree, strategy=_CHECKOUT)
                links = _all_links(repo, commit.tree)
            repo.set_head(commit.id)
            refused = self._refuse_outward_links(repo, links)
            if base is not None and base in repo:
                # Links refused before and left alone by this update are still refused (and still absent).
                seen = {link["path"] for link in refused}
                refused += [
                    link
                    for link in previous["refused_links"]
                    if link["path"] in links
                    and link["path"] not in seen
                    and not os.path.lexists(os.path.join(repo.workdir, link["path"]))
                ]
                refused.sort(key=lambda link: link["path"])
            counts = self._count_changes(repo, old, commit)
        finally:
            repo.free()
        record = {
            "commit": commit_info(commit),
            "since": since or now_iso(),
            "links": sorted(links),
            "refused_links": refused,
        }
        self._write_record(slot, record)
        return refused, counts

    def _empty(self, slot):
        shutil.rmtree(self._tree(slot), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._gitdir(slot), "index"))

    def _update(self, repo, commit, deltas):
        """Bring the reused ``repo`` work tree from its commit to ``commit``, writing only what differs.

        Its hand edits are found first with the index diff, which compares
        ctime too: a checkout alone trusts size and mtime, so an edit that kept
        them (``cp -p``, ``touch -r``) would stay and be served. Edited and
        added files are removed, then the changed and edited paths checked out.
        """
        edits = self._drift(repo)
        root = repo.workdir
        for path in edits["added"] + edits["modified"]:
            _remove(os.path.join(root, path))
        for path in edits["added"]:
            _prune_empty_parents(root, path)
        paths = {delta.old_file.path for delta in deltas} | {delta.new_file.path for delta in deltas}
        paths.update(path for listed in edits.values() for path in listed)
        if paths:
            repo.checkout_tree(commit.tree, strategy=_CHECKOUT_PATHS, paths=sorted(paths))

    def _refuse_outward_links(self, repo, links):
        """Remove the symlinks that lead out of the tree, or into a directory holding them.

        Salt follows symlinks: ``leak -> /etc/passwd`` would hand the master's
        file to every minion, and ``loop -> .`` (or ``a/l -> ../b`` with
        ``b/l -> ../a``) makes its file walk endless.
        """
        root = os.path.realpath(repo.workdir)
        refused, into_dirs = [], {}
        for path in sorted(links):
            full = os.path.join(root, path)
            if not os.path.islink(full):
                continue
            target = os.readlink(full)
            resolved = os.path.realpath(full)
            if os.path.isabs(target) or not resolved.startswith(root + os.sep):
                refused.append({"path": path, "target": target})
            elif os.path.isdir(resolved):
                into_dirs[path] = resolved
        refused += [
            {"path": path, "target": os.readlink(os.path.join(root, path))}
            for path in sorted(_walk_cycles(root, into_dirs))
        ]
        refused.sort(key=lambda link: link["path"])
        if refused:
            index = repo.index
            for link in refused:
                os.unlink(os.path.join(root, link["path"]))
                index.remove(link["path"])
            index.write()
        return refused

    @staticmethod
    def _count_changes(repo, old, commit):
        counts = {"added": 0, "modified": 0, "deleted": 0}
        base = repo[old["id"]].peel(pygit2.Tree) if old and old["id"] in repo else None
        diff = repo.diff(base, commit.tree) if base is not None else commit.tree.diff_to_tree(swap=True)
        for delta in diff.deltas:
            counts[{DeltaStatus.ADDED: "added", DeltaStatus.DELETED: "deleted"}.get(delta.status, "modified")] += 1
        return counts

    def _put_aside(self, source):
        """Move what stood at ``path`` (now at ``source``) out of the way; return where it went.

        ``salt-master`` creates each ``file_roots`` directory at start, so an
        empty one is expected and removed. Anything else (a checkout from the
        manual workflow) is moved aside, never deleted.
        """
        if os.path.isdir(source) and not os.path.islink(source) and not os.listdir(source):
            os.rmdir(source)
            return None
        aside, number = f"{self.path}.pre-envflow", 1
        while os.path.lexists(aside):
            aside, number = f"{self.path}.pre-envflow.{number}", number + 1
        os.rename(source, aside)
        return aside

    def _switch(self, slot):
        """Point ``path`` at ``slot`` in one rename: readers see the old tree or the new one, whole.

        On the first deploy something usually stands at ``path``; it is
        exchanged with the symlink in one ``renameat2(RENAME_EXCHANGE)``, so
        ``path`` is never missing, then put aside. Returns where it went.
        """
        _sync_filesystem(self.home)  # the new tree on disk before anything points at it
        staging = os.path.join(self.home, "link.tmp")
        os.symlink(self._link_text(slot), staging)
        moved = None
        if self.served_slot() is None and os.path.lexists(self.path):
            if _exchange(staging, self.path):
                moved = self._put_aside(staging)
            else:  # no RENAME_EXCHANGE here: a moment without anything at path
                moved = self._put_aside(self.path)
                os.rename(staging, self.path)
        else:
            os.rename(staging, self.path)
        parent = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(parent)
        finally:
            os.close(parent)
        return moved
