"""The directory an environment serves: exactly one commit's tree, switched atomically.

A deploy has two phases, under the directory's lock. :meth:`Deployment.prepare`
checks the served tree for hand edits (refusing them unless forced) and
brings the standby slot to the new commit, writing only what differs from
what it held; :meth:`Deployment.switch` then replaces the symlink at ``path``
in one rename. A promotion moves its branch between the two, so a refused
push leaves the directory as it was. See :mod:`envflow.layout` for where
everything lives and :mod:`envflow.checkout` for how a slot is brought up to
date.
"""

import contextlib
import os
import shutil
import stat

import pygit2
from pygit2.enums import DeltaStatus

from envflow import checkout, slots, switch
from envflow.errors import Drift, EnvflowError
from envflow.layout import Layout, Record
from envflow.locking import held
from envflow.records import now_iso
from envflow.remote import commit_info
from envflow.text import short


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


def _counts(repo, old_tree, new_tree):
    counts = {"added": 0, "modified": 0, "deleted": 0}
    diff = repo.diff(old_tree, new_tree) if old_tree is not None else new_tree.diff_to_tree(swap=True)
    for delta in diff.deltas:
        counts[{DeltaStatus.ADDED: "added", DeltaStatus.DELETED: "deleted"}.get(delta.status, "modified")] += 1
    return counts


class Prepared:
    """A deploy ready to switch: ``result`` to return, and the slot to serve (``None``: nothing to switch)."""

    def __init__(self, result, slot=None, record=None):
        self.result = result
        self.slot = slot
        self.record = record


class ServedDir:
    """The directory ``path`` that one environment serves to Salt."""

    def __init__(self, path):
        self.path = path
        self.layout = Layout(path)

    def served_slot(self):
        """The slot the symlink at ``path`` points to, or ``None`` if envflow serves nothing there."""
        return self.layout.served_slot()

    def deployed(self):
        """Describe the commit served at ``path``, or ``None`` if none is.

        The description has the commit's ``id``, ``summary``, ``author`` and
        ``time``, and ``deployed_at``: since when ``path`` serves it.

        Raises :class:`EnvflowError` if ``path`` is envflow's symlink but its record is gone.
        """
        slot = self.layout.served_slot()
        if slot is None:
            return None
        record = self.layout.record(slot)
        if record is None:
            raise self._unrecorded()
        return {**record.commit, "deployed_at": record.since}

    def _unrecorded(self):
        return EnvflowError(
            f"envflow: {self.path} serves a tree envflow has no record of; deploy with force=True to replace it"
        )

    def drift(self, objects):
        """Return the hand edits of the served tree as ``{"added": [...], "modified": [...], "deleted": [...]}``."""
        if self.layout.served_slot() is None:
            return slots.no_edits()
        try:
            # Under the lock: a deploy running meanwhile switches slots, and the check must see the one served.
            with held(self.layout.lock, f"the directory {self.path}"):
                slot = self.layout.served_slot()
                if slot is None:
                    return slots.no_edits()
                self.deployed()  # a served tree without a record cannot be checked
                repo = slots.open_repo(self.layout.gitdir(slot), self.layout.tree(slot), objects)
                try:
                    return slots.hand_edits(repo, slots.open_index(os.path.join(repo.path, "index")))
                finally:
                    repo.free()
        except (OSError, pygit2.GitError) as exc:
            raise EnvflowError(f"envflow: cannot check {self.path} for hand edits: {exc}") from None

    @contextlib.contextmanager
    def deploying(self, objects, commit):
        """Hold the directory's lock for one deploy of ``commit``; yield its :class:`Deployment`.

        What an interrupted run left is tidied first. Errors of the file
        system or of git become one-line :class:`EnvflowError` messages.
        """
        try:
            os.makedirs(self.layout.home, exist_ok=True)
            with held(self.layout.lock, f"the directory {self.path}"):
                switch.tidy(self.layout)
                yield Deployment(self, objects, commit)
        except (OSError, pygit2.GitError) as exc:
            raise EnvflowError(f"envflow: cannot deploy {short(commit.id)} to {self.path}: {exc}") from None

    def deploy(self, objects, commit, force=False):
        """Make ``path`` serve exactly the tree of ``commit`` (a :class:`pygit2.Commit`).

        ``objects`` is the object directory of the mirror that holds ``commit``.
        Refuses with :class:`Drift` when the served tree was edited by hand,
        unless ``force``. Returns a dict: ``old`` and ``new`` commit
        descriptions, ``changed``, the ``files`` changed, ``moved_aside``,
        ``refused_links`` and, with ``force``, the ``discarded`` hand edits.
        """
        with self.deploying(objects, commit) as deployment:
            return deployment.switch(deployment.prepare(force=force))


class Deployment:
    """One deploy of ``commit`` into a :class:`ServedDir`, its lock held: :meth:`prepare`, then :meth:`switch`."""

    def __init__(self, served, objects, commit):
        self.served = served
        self.layout = served.layout
        self.objects = objects
        self.commit = commit

    def prepare(self, force=False, remedy="deploy with force=True"):
        """Check the served tree for hand edits and bring the standby slot to the commit; change nothing served.

        Raises :class:`Drift` (its message ending with ``remedy``) when the
        served tree was edited by hand, unless ``force``. Returns a
        :class:`Prepared` for :meth:`switch`.
        """
        layout = self.layout
        served = layout.served_slot()
        served_record = layout.record(served) if served else None
        if served and served_record is None and not force:
            raise self.served._unrecorded()  # pylint: disable=protected-access
        result = {
            "path": self.served.path,
            "old": served_record.commit if served_record else None,
            "new": commit_info(self.commit),
            "changed": False,
            "files": {"added": 0, "modified": 0, "deleted": 0},
            "moved_aside": None,
            "refused_links": [],
            "discarded": None,
        }
        standby = layout.other(served)
        repo = slots.open_repo(layout.gitdir(standby), layout.tree(standby), self.objects)
        try:
            if served_record is None:
                record = self._build_whole(repo, standby, first=served is None)
                result["files"] = _counts(repo, None, repo[self.commit.id].peel(pygit2.Tree))
            else:
                record = self._update(repo, served, served_record, standby, force, remedy, result)
                if record is None:
                    result["refused_links"] = served_record.refused_links
                    return Prepared(result)
        finally:
            repo.free()
        result["refused_links"] = record.refused_links
        return Prepared(result, slot=standby, record=record)

    def switch(self, prepared):
        """Serve what :meth:`prepare` made ready, in one rename; return the deploy's result."""
        result = prepared.result
        if prepared.slot is None:
            return result
        record = prepared.record
        record.since = record.since or now_iso()
        self.layout.write_record(prepared.slot, record)
        result["moved_aside"] = switch.switch(self.layout, prepared.slot)
        result["changed"] = True
        return result

    # -- the standby slot ------------------------------------------------------------

    def _update(self, repo, served, served_record, standby, force, remedy, result):
        """Bring ``standby`` from what it holds to the commit, after checking the served tree.

        Returns the standby's new record, or ``None`` when the commit is served already, unedited.
        """
        layout = self.layout
        served_repo = slots.open_repo(layout.gitdir(served), layout.tree(served), self.objects)
        try:
            served_index = slots.open_index(os.path.join(served_repo.path, "index"))
            edits = slots.hand_edits(served_repo, served_index)
        finally:
            served_repo.free()
        edited = {path for paths in edits.values() for path in paths}
        if edited and not force:
            raise Drift(drift_message(self.served.path, edits, remedy), edits)
        new_id = str(self.commit.id)
        if served_record.commit_id == new_id and not edited:
            return None
        result["discarded"] = edits if edited else None
        new_tree = repo[self.commit.id].peel(pygit2.Tree)
        served_tree = repo[served_record.commit_id].peel(pygit2.Tree) if served_record.commit_id in repo else None
        result["files"] = _counts(repo, served_tree, new_tree)
        if edited:
            # They stay in that tree, which becomes the standby: rewrite them when it is reused.
            served_record.dirty = sorted(set(served_record.dirty) | edited)
            layout.write_record(served, served_record)
        standby_record = layout.record(standby)
        if served_tree is None:
            # The served commit is no longer in the repository: nothing can be shared with it.
            record = self._build_whole(repo, standby, first=False)
        else:
            writer = checkout.TreeWriter(
                repo,
                layout.tree(standby),
                share_root=layout.tree(served),
                share=lambda path, oid, mode: path not in edited and checkout.entry(served_tree, path) == (oid, mode),
            )
            if _reusable(repo, standby_record):
                record = self._bring_up_to_date(repo, writer, standby, standby_record, served_tree, edited, new_tree)
            else:
                record = self._link_copy(repo, writer, served, served_record, served_tree, edited, new_tree, standby)
        repo.set_head(self.commit.id)  # for people reading the slot with git
        if served_record.commit_id == new_id:
            record.since = served_record.since  # the same commit, served all along
        return record

    def _bring_up_to_date(self, repo, writer, standby, standby_record, served_tree, edited, new_tree):
        """The standby holds another commit: rewrite only the paths where it differs, or may differ."""
        layout = self.layout
        root = layout.tree(standby)
        held_tree = repo[standby_record.commit_id].peel(pygit2.Tree)
        paths = (
            checkout.delta_paths(repo, held_tree, new_tree)
            | checkout.delta_paths(repo, held_tree, served_tree)  # what it does not share with the served tree
            | set(standby_record.dirty)
            | edited
        )
        broken = checkout.broken_seals(root, standby_record.dirs)
        # Marked first: a run killed while writing leaves a record that says what to redo.
        standby_record.dirty = sorted(paths | set(standby_record.dirty))
        layout.write_record(standby, standby_record)
        for directory in sorted(broken):
            paths |= writer.reconcile(new_tree, directory)
        writer.make_paths_match(new_tree, paths)
        new_links = checkout.links_after(standby_record.links, repo, held_tree, new_tree)
        refused = self._links(writer, new_tree, new_links)
        # The served index, with what differs: the files both trees share have the same stat data.
        index = self._index_from(self.layout.served_slot(), standby)
        checkout.index_entries(index, root, new_tree, paths | new_links)
        self._write_index(index, standby)
        dirs = {
            path: stamp
            for path, stamp in standby_record.dirs.items()
            if not any(path == gone or path.startswith(gone + "/") for gone in writer.removed_dirs)
        }
        for path in writer.touched:
            dirs.pop(path, None)
        dirs.update(checkout.seal(root, writer.touched))
        dirs.update(checkout.seal(root, broken))
        return Record(commit=commit_info(self.commit), links=sorted(new_links), refused_links=refused, dirs=dirs)

    def _link_copy(self, repo, writer, served, served_record, served_tree, edited, new_tree, standby):
        """The standby cannot be reused: make it the served tree (hard links), then bring it up to date."""
        layout = self.layout
        root = layout.tree(standby)
        layout.drop_record(standby)
        _empty(root)
        refused = {link["path"] for link in served_record.refused_links}
        for path, oid, mode in checkout.walk(served_tree):
            if path not in refused:
                writer.write(path, oid, mode)
        copied = Record(
            commit=served_record.commit,
            links=served_record.links,
            refused_links=served_record.refused_links,
            dirs=checkout.seal(root, writer.touched),
            dirty=sorted(edited),
        )
        layout.write_record(standby, copied)
        # The links changed the ctime of every file they share: refresh both indexes, or each scan reads them all.
        self._refresh_index(served, served, served_tree, exclude=edited)
        writer.touched.clear()
        record = self._bring_up_to_date(repo, writer, standby, copied, served_tree, edited, new_tree)
        self._refresh_index(standby, standby, new_tree)
        return record

    def _build_whole(self, repo, slot, first):
        """Write the whole commit into ``slot``; on a first deploy make the other slot too (hard links).

        The other slot is made now so that the next deploy already reuses a
        standby, at the cost of a link per file once.
        """
        layout = self.layout
        layout.drop_record(slot)
        root = layout.tree(slot)
        _empty(root)
        tree = repo[self.commit.id].peel(pygit2.Tree)
        writer = checkout.TreeWriter(repo, root)
        written = writer.fill(tree)
        link_paths = {path for path, (_oid, mode) in written.items() if mode == pygit2.enums.FileMode.LINK}
        refused = writer.refuse_unsafe_links(link_paths)
        sealed = checkout.seal(root, writer.touched)
        if first:
            other = layout.other(slot)
            slots.prepare_gitdir(layout.gitdir(other), self.objects)
            layout.drop_record(other)
            _empty(layout.tree(other))
            copier = checkout.TreeWriter(repo, layout.tree(other), share_root=root, share=lambda *_: True)
            refused_paths = {link["path"] for link in refused}
            for path, (oid, mode) in written.items():
                if path not in refused_paths:
                    copier.write(path, oid, mode)
            layout.write_record(
                other,
                Record(
                    commit=commit_info(self.commit),
                    links=sorted(link_paths),
                    refused_links=refused,
                    dirs=checkout.seal(layout.tree(other), copier.touched),
                ),
            )
        # After the links: they changed every file's ctime.
        index = self._index_from(None, slot)
        checkout.index_entries(index, root, tree, written)
        self._write_index(index, slot)
        return Record(commit=commit_info(self.commit), links=sorted(link_paths), refused_links=refused, dirs=sealed)

    def _links(self, writer, tree, link_paths):
        writer.restore_links(tree, link_paths)
        return writer.refuse_unsafe_links(link_paths)

    def _index_from(self, source, slot):
        """A new index for ``slot``: a copy of ``source``'s index, or empty when ``source`` is ``None``.

        Write it with :meth:`_write_index`; until then the slot's index is untouched.
        """
        target = os.path.join(self.layout.gitdir(slot), "index.next")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        if source is not None:
            shutil.copyfile(os.path.join(self.layout.gitdir(source), "index"), target)
        return slots.open_index(target)

    def _refresh_index(self, source, slot, tree, exclude=()):
        """Stamp every entry of ``slot``'s index (but ``exclude``) with its file's stat data now."""
        index = self._index_from(source, slot)
        paths = [path for path, _oid, _mode in checkout.walk(tree) if path not in exclude]
        checkout.index_entries(index, self.layout.tree(slot), tree, paths)
        self._write_index(index, slot)

    def _write_index(self, index, slot):
        """Make ``index`` (from :meth:`_index_from`) the slot's index, in one rename."""
        index.write()
        gitdir = self.layout.gitdir(slot)
        os.replace(os.path.join(gitdir, "index.next"), os.path.join(gitdir, "index"))


def _reusable(repo, record):
    """Whether a standby with ``record`` can be brought up to date path by path."""
    return record is not None and record.dirs is not None and record.commit_id in repo


def _empty(root):
    if os.path.lexists(root) and not stat.S_ISDIR(os.lstat(root).st_mode):
        os.unlink(root)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
