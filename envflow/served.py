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
import threading
import time

import pygit2
from pygit2.enums import FileMode

from envflow import checkout, slots, switch, trees
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


class Prepared:
    """A deploy ready to switch: ``result`` to return, the ``slot`` to serve (``None``: nothing to switch).

    ``record`` is the slot's record to write, ``served_record`` the served
    slot's (written again only when ``served_changed``), ``flush`` what to flush before the switch
    (``None``: the whole file system), ``stamped`` when each index entry the
    deploy stamped last changed (ns; ``None`` for a path it took out of the index).
    """

    def __init__(self, result, slot=None, record=None, flush=None, stamped=None):
        self.result = result
        self.slot = slot
        self.record = record
        self.flush = flush
        self.stamped = stamped or {}
        self.served_record = None
        self.served_changed = False


class ServedDir:
    """The directory ``path`` that one environment serves to Salt."""

    def __init__(self, path, home=None, aside=None):
        self.path = path
        self.layout = Layout(path, home, aside)

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
                root = self.layout.tree(slot)
                repo = slots.open_repo(self.layout.gitdir(slot), root, objects)
                try:
                    record = self.layout.record(slot)
                    index = slots.read_index(os.path.join(repo.path, "index"), record.index_changes)
                    tree = tree_of(repo, record)
                    halves = slots.scan_halves(index, tree, root) if tree else None
                    return slots.hand_edits(repo, index, halves, racy=record.racy)
                finally:
                    repo.free()
        except (OSError, pygit2.GitError) as exc:
            raise EnvflowError(f"envflow: cannot check {self.path} for hand edits: {exc}") from None

    @contextlib.contextmanager
    def locked(self):
        """Hold the directory's lock: no deploy, promotion, rollback, pin or freeze of it runs meanwhile here."""
        os.makedirs(self.layout.home, exist_ok=True)
        with held(self.layout.lock, f"the directory {self.path}"):
            yield

    @contextlib.contextmanager
    def deploying(self, objects, commit=None, compose=None):
        """Hold the directory's lock for one deploy of ``commit``; yield its :class:`Deployment`.

        ``compose`` makes the tree to serve when it is not the commit's own
        (:class:`envflow.submodules.Composer`).

        What an interrupted run left is tidied first. Errors of the file
        system or of git become one-line :class:`EnvflowError` messages.
        The deployment's ``commit`` may be set or changed, under the lock,
        before it is prepared.
        """
        deployment = Deployment(self, objects, commit, compose)
        try:
            with self.locked():
                switch.tidy(self.layout)
                deployment.read_ahead()
                try:
                    yield deployment
                finally:
                    deployment.read_ahead_done()
        except (OSError, pygit2.GitError) as exc:
            what = f" {short(deployment.commit.id)}" if deployment.commit is not None else ""
            raise EnvflowError(f"envflow: cannot deploy{what} to {self.path}: {exc}") from None

    def deploy(self, objects, commit, force=False, compose=None):
        """Make ``path`` serve exactly the tree of ``commit`` (a :class:`pygit2.Commit`).

        ``objects`` is the object directory of the mirror that holds ``commit``.
        Refuses with :class:`Drift` when the served tree was edited by hand,
        unless ``force``. Returns a dict: ``old`` and ``new`` commit
        descriptions, ``changed``, the ``files`` changed, ``moved_aside``,
        ``refused_links`` and, with ``force``, the ``discarded`` hand edits.
        """
        with self.deploying(objects, commit, compose) as deployment:
            return deployment.switch(deployment.prepare(force=force))


class Deployment:
    """One deploy of ``commit`` into a :class:`ServedDir`, its lock held: :meth:`prepare`, then :meth:`switch`."""

    def __init__(self, served, objects, commit, compose=None):
        self.served = served
        self.layout = served.layout
        self.objects = objects
        self.commit = commit
        # ``compose(commit, served record)``: the tree to serve when not the commit's own, and what it is made of.
        self.compose = compose
        self.tree = self.submodules = None
        # The records of the slot served before and of the one served after, once :meth:`switch` served a new tree.
        self.switched = None
        self._served_record = _UNREAD
        # What runs on threads while the lock is held: ``{"index", "standby" or "flush": (slot, wait for it)}``.
        self._ahead = {}

    def read_ahead(self):
        """For a large tree, start on threads what the deploy needs before it scans, as it has other work to do.

        The served index is read. When the commit to serve is not the one
        served, the standby's record is read and its directory seals checked
        too (:func:`envflow.checkout.broken_seals`): that holds for whatever
        commit the deploy serves in the end. Called with the lock held
        (nothing changes the slots meanwhile); what :meth:`prepare` does not
        take is waited for and dropped by :meth:`read_ahead_done`.
        """
        layout = self.layout
        served = layout.served_slot()
        path = os.path.join(layout.gitdir(served), "index") if served else None
        if path is None or not _large(path):
            return
        self._ahead["index"] = (served, _in_background(slots.read_index, (path, {}), on_thread=True))
        record = self.served_record()
        if record is not None and self.commit is not None and record.commit_id != str(self.commit.id):
            standby = layout.other(served)
            self._ahead["standby"] = (
                standby,
                _in_background(self._standby_seals, (standby,), on_thread=True, name="envflow-standby-check"),
            )

    def read_ahead_done(self):
        """Wait for what :meth:`prepare` did not take: no thread outlives the lock."""
        ahead, self._ahead = self._ahead, {}
        for _slot, wait in ahead.values():
            with contextlib.suppress(Exception):
                wait()

    def _taken(self, what, slot):
        """Take what waits for ``what`` started ahead for ``slot``; ``None`` when none was (one started for another
        slot is waited for and dropped)."""
        ahead = self._ahead.pop(what, None)
        if ahead is not None and ahead[0] != slot:
            with contextlib.suppress(Exception):
                ahead[1]()
            return None
        return ahead[1] if ahead is not None else None

    def _standby_seals(self, standby):
        """``(record, broken seals)`` of the ``standby`` slot; the seals ``None`` when it has no record of them."""
        record = self.layout.record(standby)
        if record is None or record.dirs is None:
            return record, None
        return record, checkout.broken_seals(self.layout.tree(standby), record)

    def served_record(self):
        """The served slot's :class:`Record` (``None``: nothing served, or no record), read once under the lock."""
        if self._served_record is _UNREAD:
            served = self.layout.served_slot()
            self._served_record = self.layout.record(served) if served else None
        return self._served_record

    def served_id(self):
        """The commit served when the lock was taken, or ``None`` (also when its record is lost)."""
        record = self.served_record()
        return record.commit_id if record else None

    def prepare(self, force=False, remedy="deploy with force=True"):
        """Check the served tree for hand edits and bring the standby slot to the commit; change nothing served.

        Raises :class:`Drift` (its message ending with ``remedy``) when the
        served tree was edited by hand, unless ``force``. Returns a
        :class:`Prepared` for :meth:`switch`.
        """
        layout = self.layout
        served = layout.served_slot()
        served_record = self.served_record()
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
        if self.compose is not None:
            self.tree, self.submodules = self.compose(self.commit, served_record)
        standby = layout.other(served)
        repo = slots.open_repo(layout.gitdir(standby), layout.tree(standby), self.objects)
        try:
            if served_record is None:
                prepared = self._build_whole(repo, standby, first=served is None)
                result["files"] = {"added": prepared.files, "modified": 0, "deleted": 0}
            else:
                prepared = self._update(repo, served, served_record, standby, force, remedy, result)
                if prepared is None:
                    result["refused_links"] = served_record.refused_links
                    return Prepared(result)
        finally:
            repo.free()
        prepared.result = result
        result["refused_links"] = prepared.record.refused_links
        return prepared

    def switch(self, prepared):
        """Serve what :meth:`prepare` made ready, in one rename; return the deploy's result."""
        result = prepared.result
        if prepared.slot is None:
            return result
        layout = self.layout
        prepared.record.since = prepared.record.since or now_iso()
        layout.write_record(prepared.slot, prepared.record, flush=False)
        rewritten = prepared.served_record is not None and prepared.served_changed
        if rewritten:
            layout.write_record(layout.served_slot(), prepared.served_record, flush=False)
        # The new tree on disk before anything points at it.
        if prepared.flush is None:
            early = self._ahead.pop("flush", None)
            if early is not None:
                early[1]()  # the flush started once the tree was written
            switch.sync_filesystem(layout.home)  # a whole tree was written: flush everything at once
        else:
            # Only what this deploy changed: the files it wrote, the directories it changed, the bookkeeping.
            gitdirs = [layout.gitdir(prepared.slot)]
            if rewritten:
                gitdirs.append(layout.gitdir(layout.served_slot()))
            for path in [*prepared.flush, *(os.path.join(gitdir, "envflow.json") for gitdir in gitdirs), *gitdirs]:
                _fsync(path)
        result["moved_aside"] = switch.switch(layout, prepared.slot)
        result["changed"] = True
        self.switched = (prepared.served_record, prepared.record)
        return result

    def _new_tree(self, repo):
        wanted = self.tree or self.commit.id
        try:
            return repo[wanted].peel(pygit2.Tree)
        except KeyError:  # the objects went with the remote they were borrowed from
            raise pygit2.GitError(f"the repository lacks object {wanted}") from None

    # -- the standby slot ------------------------------------------------------------

    def _update(self, repo, served, served_record, standby, force, remedy, result):
        """Check the served tree, then bring ``standby`` to the commit; ``None`` when it is served already, unedited."""
        layout = self.layout
        new_id = str(self.commit.id)
        same = served_record.commit_id == new_id and served_record.tree == self.tree
        # The served index, read once where it is: the scan uses it, and it becomes the standby's with what
        # differs (the files both trees share have the same stat data). A deploy of what is served writes nothing.
        # A large one is read on a thread of its own (libgit2 lets go of the GIL) while the standby is checked.
        reading = self._served_index(served, standby, served_record.index_changes, on_thread=not same)
        try:
            new_tree = self._new_tree(repo)
            served_tree = tree_of(repo, served_record)
            unsealed = checkout.racy_seals(served_record)
            restamped_at = time.time_ns()
            restamped = checkout.seal(layout.tree(served), unsealed)
            waiting = self._taken("standby", standby)
            standby_record, seals = waiting() if waiting is not None else (None, None)
            if not same and waiting is None:
                standby_record = layout.record(standby)
            ahead = None
            if not same and served_tree is not None and _reusable(repo, standby_record):
                ahead = self._standby_checked(repo, standby, standby_record, served_tree, new_tree, seals)
        except BaseException:
            with contextlib.suppress(BaseException):
                reading()  # the thread done before the error goes on
            raise
        index = reading()
        edits = self._scan(served, index, served_tree, served_record.racy)
        edited = {path for paths in edits.values() for path in paths}
        if (edited and not force) or (same and not edited):
            if edited:
                raise Drift(drift_message(self.served.path, edits, remedy), edits)
            if served_record.submodules is None and self.submodules is not None:
                # A record older than submodules: note what the commit holds (nothing, as the trees are the same),
                # or every later deploy of it would look for gitlinks in every folder again.
                served_record.submodules = self.submodules
                layout.write_record(served, served_record)
            return None
        if same:  # served again, its hand edits discarded
            standby_record = layout.record(standby)
        result["discarded"] = edits if edited else None
        served_to_new = checkout.changes(served_tree, new_tree)
        result["files"] = _counts(served_to_new)
        # Whether the served slot's record must be written again: unchanged, it costs no write (nor its flush).
        changed = bool(edited)
        if edited:
            # They stay in that tree, which becomes the standby: rewrite them when it is reused.
            served_record.dirty = sorted(set(served_record.dirty) | edited)
        elif restamped:
            # Its scan just found the tree as the index says: the directories stamped too close to their
            # last change to be trusted get the stamps they had before the scan, if those are old enough.
            # (None stamped so: later seals would find none such either way, so the record stays as it is.)
            settled = checkout.settled(restamped, restamped_at)
            if settled == restamped:
                served_record.dirs.update(settled)
                served_record.sealed_at = restamped_at
                changed = True
        if served_tree is None:
            # The served commit is no longer in the repository: nothing can be shared with it.
            prepared = self._build_whole(repo, standby, first=False)
        else:
            writer = checkout.TreeWriter(
                repo,
                layout.tree(standby),
                share_root=layout.tree(served),
                share=lambda path, oid, mode: path not in edited and checkout.entry(served_tree, path) == (oid, mode),
            )
            new_links = checkout.links_after(served_record.links, served_to_new)
            if ahead is None:
                if not _reusable(repo, standby_record):
                    standby_record = self._link_copy(writer, served, served_record, served_tree, edited, standby)
                    changed = True  # its index written whole
                    index = self._index_from(served, standby, served_record.index_changes)
                ahead = self._standby_checked(repo, standby, standby_record, served_tree, new_tree)
            prepared = self._bring_up_to_date(
                writer, index, standby, standby_record, edited, new_tree, new_links, ahead
            )
            # The served tree's entries still stamped too close to their change stay so in the standby's index.
            carried = {path: at for path, at in served_record.racy.items() if path not in prepared.stamped}
            fresh = {path: at for path, at in prepared.stamped.items() if at is not None}
            prepared.record.racy = checkout.racy_entries({**carried, **fresh})
        prepared.served_record, prepared.served_changed = served_record, changed
        if same:
            prepared.record.since = served_record.since  # the same commit, served all along
        return prepared

    def _served_index(self, served, standby, changes, on_thread):
        """What waits for the served index with ``changes``: the one read ahead, else one read now (on a thread
        ``on_thread`` when it is large)."""
        waiting = self._taken("index", served)
        if waiting is None:
            on_thread = on_thread and _large(os.path.join(self.layout.gitdir(served), "index"))
            return _in_background(self._index_from, (served, standby, changes, False), on_thread)
        return lambda: _with_changes(slots.apply_changes(waiting(), changes), changes)

    def _scan(self, served, index, served_tree, racy):
        """The hand edits of the served tree, the scan split over two cores for a large tree; ``racy`` files read."""
        root = self.layout.tree(served)
        served_repo = slots.open_repo(self.layout.gitdir(served), root, self.objects)
        try:
            halves = slots.scan_halves(index, served_tree, root) if served_tree is not None else None
            return slots.hand_edits(served_repo, index, halves, racy)
        finally:
            served_repo.free()

    def _standby_checked(self, repo, standby, standby_record, served_tree, new_tree, seals=None):
        """What the reusable ``standby`` must have rewritten, edits aside: ``(paths, broken seals)``.

        The paths where its tree differs from the new one or from the served
        one, and those it holds on its own; the directories a killed run or a
        hand edit changed (``seals``, when checked already). It reads only the
        standby, never the served tree's index, so it runs while that is read.
        """
        held_tree = tree_of(repo, standby_record)
        paths = (
            {path for path, _old, _new in checkout.changes(held_tree, new_tree)}
            # What it does not share with the served tree:
            | {path for path, _old, _new in checkout.changes(held_tree, served_tree)}
            | set(standby_record.dirty)
        )
        if seals is None:
            seals = checkout.broken_seals(self.layout.tree(standby), standby_record)
        return paths, seals

    def _bring_up_to_date(self, writer, index, standby, standby_record, edited, new_tree, new_links, checked):
        """The standby holds another commit: rewrite only the paths where it differs, or may differ.

        ``checked`` is what :meth:`_standby_checked` found; ``edited`` the served tree's hand edits.
        """
        root = self.layout.tree(standby)
        paths, broken = checked
        paths = paths | edited
        # A killed run, or a hand edit, shows in the directories it changed: make those hold the commit.
        for directory in sorted(broken, key=len):
            paths |= writer.reconcile(new_tree, directory, standby_record.dirs)
        writer.make_paths_match(new_tree, paths)
        refused = self._links(writer, new_tree, new_links)
        entries = {path: checkout.entry(new_tree, path) for path in paths | new_links}
        stamped = checkout.index_entries(index, root, entries, changed=index.changes)
        index_changes = self._write_index(index, standby)
        dirs = dict(standby_record.dirs)
        ordered = sorted(dirs) if writer.removed_dirs else []
        for gone in writer.removed_dirs:  # the seals of the directories removed, with all they held
            for path in [gone, *trees.under(ordered, gone)]:
                dirs.pop(path, None)
        changed = writer.touched | broken
        for path in changed:
            dirs.pop(path, None)
        sealed_at = time.time_ns()
        dirs.update(checkout.seal(root, changed))
        record = Record(
            commit=commit_info(self.commit),
            tree=self.tree,
            submodules=self.submodules,
            links=sorted(new_links),
            refused_links=refused,
            dirs=dirs,
            sealed_at=sealed_at,
            index_changes=index_changes,
        )
        gitdir = self.layout.gitdir(standby)
        flush = [
            *writer.written,
            *(f"{root}/{path}" if path else root for path in changed if path in dirs),
            os.path.join(gitdir, "index"),
        ]
        return Prepared(
            None, slot=standby, record=record, flush=flush, stamped={path: stamped.get(path) for path in entries}
        )

    def _link_copy(self, writer, served, served_record, served_tree, edited, standby):
        """The standby cannot be reused: make it the served tree (hard links); return its record.

        Rare (a standby lost, or made by an older envflow); it costs a link per file.
        """
        layout = self.layout
        root = layout.tree(standby)
        layout.drop_record(standby)
        _empty(root)
        refused = {link["path"] for link in served_record.refused_links}
        entries = {path: (oid, mode) for path, oid, mode in checkout.walk(served_tree) if path not in refused}
        writer.link_all(entries, rewrite=edited)
        dirs, sealed_at = checkout.seal_after_tick(root, writer.touched, time.time_ns())
        copied = Record(
            commit=served_record.commit,
            tree=served_record.tree,
            submodules=served_record.submodules,
            links=served_record.links,
            refused_links=served_record.refused_links,
            dirs=dirs,
            dirty=sorted(edited),
            sealed_at=sealed_at,
        )
        # The links changed the ctime of every file they share: stamp the served index again,
        # or each scan reads every file.
        index = self._index_from(served, served, served_record.index_changes)
        restamped = checkout.index_entries(
            index, layout.tree(served), {p: e for p, e in entries.items() if p not in edited}
        )
        served_record.index_changes = self._write_index(index, served, whole=True)
        served_record.racy = checkout.racy_entries(restamped)
        writer.touched.clear()
        writer.written.clear()
        return copied

    def _build_whole(self, repo, slot, first):
        """Write the whole commit into ``slot``; on a first deploy make the other slot too (hard links).

        The other slot is made now so that the next deploy already reuses a
        standby, at the cost of a link per file once.
        """
        layout = self.layout
        layout.drop_record(slot)
        root = layout.tree(slot)
        _empty(root)
        tree = self._new_tree(repo)
        writer = checkout.TreeWriter(repo, root)
        written = writer.fill(tree)
        link_paths = {path for path, (_oid, mode) in written.items() if mode == FileMode.LINK}
        refused = writer.refuse_unsafe_links(link_paths)
        # The tree's files are written: they are flushed on a thread while the rest is made (the other slot's links,
        # the index, the records), so the flush before the switch finds little left to write.
        self._ahead["flush"] = (slot, _in_background(switch.sync_filesystem, (layout.home,), True, "envflow-flush"))
        sealed_at = time.time_ns()
        sealed = checkout.seal(root, writer.touched)
        if first:
            other = layout.other(slot)
            slots.prepare_gitdir(layout.gitdir(other), self.objects)
            layout.drop_record(other)
            _empty(layout.tree(other))
            copier = checkout.TreeWriter(repo, layout.tree(other), share_root=root)
            refused_paths = {link["path"] for link in refused}
            copier.link_all({path: held for path, held in written.items() if path not in refused_paths})
            linked_at = time.time_ns()
        # After the links: they changed every file's ctime.
        stamped = self._write_whole_index(slot, root, written)
        if first:
            # Sealed a tick after the links (the index took that time), so that the next deploy can trust every
            # stamp: that slot is not served first.
            dirs, sealed_at = checkout.seal_after_tick(layout.tree(other), copier.touched, linked_at)
            layout.write_record(
                other,
                Record(
                    commit=commit_info(self.commit),
                    tree=self.tree,
                    submodules=self.submodules,
                    links=sorted(link_paths),
                    refused_links=refused,
                    dirs=dirs,
                    sealed_at=sealed_at,
                ),
            )
        record = Record(
            commit=commit_info(self.commit),
            tree=self.tree,
            submodules=self.submodules,
            links=sorted(link_paths),
            refused_links=refused,
            dirs=sealed,
            sealed_at=sealed_at,
            racy=checkout.racy_entries(stamped),  # none after the tick a first deploy waited for its other slot
        )
        prepared = Prepared(None, slot=slot, record=record, flush=None)
        prepared.files = len(written)  # every file of the commit, added
        return prepared

    def _links(self, writer, tree, link_paths):
        writer.restore_links(tree, link_paths)
        return writer.refuse_unsafe_links(link_paths)

    def _write_whole_index(self, slot, root, entries):
        """Make the slot's index list ``entries`` (``{path: (id, mode)}``) as they stand under ``root``, in one rename;
        return when each last changed (:func:`envflow.checkout.index_file`)."""
        gitdir = self.layout.gitdir(slot)
        target = _next_index(gitdir)
        stamped = checkout.index_file(target, root, entries)
        os.replace(target, os.path.join(gitdir, "index"))
        return stamped

    def _index_from(self, source, slot, changes=None, link=True):
        """A new index for ``slot``: ``source``'s index file (hard-linked, read once) with ``changes``.

        Write it with :meth:`_write_index`: a file is never changed in place
        (libgit2 writes a new one and renames it), so ``source``'s is kept as it is.
        Without ``link``, ``source``'s file is read where it is, and linked
        only when :meth:`_write_index` makes it ``slot``'s. (A whole tree's
        index is written by :meth:`_write_whole_index` instead.)
        """
        source_path = os.path.join(self.layout.gitdir(source), "index")
        if not link:
            return _with_changes(slots.read_index(source_path, changes or {}), changes)
        target = _next_index(self.layout.gitdir(slot))
        os.link(source_path, target)
        return _with_changes(slots.read_index(target, changes or {}), changes)

    def _write_index(self, index, slot, whole=False):
        """Make ``index`` (from :meth:`_index_from`) the slot's, in one rename; return its record's ``index_changes``.

        A few changes stay in the record, beside the linked file, so a deploy
        costs no write of every entry (20,000 entries: about 15 ms); the file
        is written ``whole`` when asked, or once the changes pass one entry in
        a hundred.
        """
        kept = index.changes
        whole = whole or len(kept) > max(_KEPT_CHANGES, len(index) // 100)
        gitdir = self.layout.gitdir(slot)
        target = os.path.join(gitdir, "index.next")
        if index.path != target:
            # Read in place from another slot (``link=False``): link its file now; libgit2 writes to the path it read.
            os.link(index.path, _next_index(gitdir))
            if whole:
                index = slots.read_index(target, kept)
        if whole:
            index.write()
            kept = {}
        os.replace(target, os.path.join(gitdir, "index"))
        _drop(target)  # the rename does nothing when both name the same file
        return kept


def _next_index(gitdir):
    """The path of a slot's next index file, cleared of what a killed run left there (a link to the other slot's
    index, perhaps: never written through) and of libgit2's lock file."""
    target = os.path.join(gitdir, "index.next")
    _drop(target)
    _drop(target + ".lock")
    return target


def _with_changes(index, changes):
    """``index``, read with ``changes`` made, which it keeps: where it differs from its file."""
    index.changes = dict(changes or {})
    return index


_UNREAD = object()

# The index changes a record keeps before the index file is written whole.
_KEPT_CHANGES = 100


def _counts(changed):
    counts = {"added": 0, "modified": 0, "deleted": 0}
    for _path, old, new in changed:
        counts["added" if old is None else "deleted" if new is None else "modified"] += 1
    return counts


def _drop(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync(path):
    with contextlib.suppress(FileNotFoundError):
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# An index file from this size on (about 5,000 entries) is read on a thread while the deploy does other work.
_LARGE_INDEX = 512 * 1024


def _large(path):
    try:
        return os.stat(path).st_size >= _LARGE_INDEX
    except OSError:
        return False


def _in_background(function, args, on_thread, name="envflow-index-read"):
    """Start ``function(*args)``, on a thread ``name`` of its own when ``on_thread``; return what waits for its result.

    The waiting call returns the result, or raises what the function raised.
    """
    if not on_thread:
        done = function(*args)
        return lambda: done
    box = {}

    def run():
        try:
            box["result"] = function(*args)
        except BaseException as exc:  # pylint: disable=broad-except
            box["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def wait():
        thread.join()
        # Taken out of the box, not left in it: the error's traceback holds the thread's frame, which holds the box,
        # and that cycle would keep what the call left half made (a pygit2 Index whose file did not read) until the
        # cyclic collector runs, at any moment later (CPython 3.11 then fails a compile() running at that moment).
        error = box.pop("error", None)
        if error is not None:
            raise error
        return box.pop("result")

    return wait


def _reusable(repo, record):
    """Whether a standby with ``record`` can be brought up to date path by path."""
    return record is not None and record.dirs is not None and tree_of(repo, record) is not None


def tree_of(repo, record):
    """The tree ``record``'s slot holds (:attr:`Record.tree`, else its commit's), or ``None`` if ``repo`` lacks it."""
    tree_id = record.tree or record.commit_id
    return repo[tree_id].peel(pygit2.Tree) if tree_id in repo else None


def _empty(root):
    if os.path.lexists(root) and not stat.S_ISDIR(os.lstat(root).st_mode):
        os.unlink(root)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
