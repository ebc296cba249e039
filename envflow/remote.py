"""The remote automation repository and envflow's local mirror of it.

The remote is the source of truth. envflow keeps one bare mirror per remote
under the cache directory, fetched with pygit2, and moves branches on the
remote with a compare-and-swap push.
"""

import contextlib
import datetime
import hashlib
import logging
import os
import re
import shutil
import socket
import time
import urllib.parse

import pygit2
from pygit2.enums import FetchPrune, FileMode, SortMode

from envflow import access
from envflow.errors import BranchMoved, RemoteError, RevisionError
from envflow.locking import clear_stale_git_locks, held
from envflow.text import echo, short

NOTES = "refs/notes/envflow"
HISTORY = "refs/envflow/history"  # see envflow.history
SERVED_PREFIX = "refs/envflow/served/"  # one reference per master: see envflow.fleet
_FETCH_REFSPECS = [
    f"+{SERVED_PREFIX}*:{SERVED_PREFIX}*",
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    f"+{NOTES}:{NOTES}",
    f"+{HISTORY}:{HISTORY}",
]
_ZERO = pygit2.Oid(hex="0" * 40)

log = logging.getLogger(__name__)


def _fetched(refname):
    """Whether a fetch brings ``refname`` into the mirror (what :data:`_FETCH_REFSPECS` name)."""
    return refname.startswith(("refs/heads/", "refs/tags/", SERVED_PREFIX)) or refname in (NOTES, HISTORY)


def _shown_ref(refname):
    return refname[len("refs/heads/") :] if refname.startswith("refs/heads/") else refname


def _moved(refname):
    return BranchMoved(
        f"envflow: {_shown_ref(refname)} moved on the remote while envflow was working; "
        "nothing was changed, run the command again"
    )


_USERINFO = re.compile(r"[^\s/@]*@")


def redact(url):
    """Return ``url`` (or any text) with user information (names, passwords, tokens) replaced by ``***``.

    Works on malformed URLs too (``https//user:token@host``, ``user:pass@host:repo``):
    whatever stands before an ``@`` within a path segment is hidden.
    """
    return _USERINFO.sub("***@", url)


def _article(noun):
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def is_local(url):
    """Whether ``url`` names a repository on this machine (a path or a ``file://`` URL)."""
    return access.endpoint(url).scheme == "local"


_STALE_LOCK = 60  # seconds; git holds a reference lock for milliseconds


def _clear_stale_ref_lock(gitdir, refname):
    """Remove ``<ref>.lock`` in a local remote when a killed process (envflow's own, say) left it long ago."""
    lock = os.path.join(gitdir, f"{refname}.lock")
    try:
        if time.time() - os.stat(lock).st_mtime > _STALE_LOCK:
            os.unlink(lock)
    except FileNotFoundError:
        pass


def _create_local_ref(repo, refname, target):
    """Create ``refname`` at ``target`` in ``repo``, refusing (:class:`BranchMoved`) if another writer made it first.

    libgit2 checks that a reference is absent before it takes the reference's
    lock, so two processes creating it at once would both succeed, the second
    overwriting the first. This takes git's own lock (``<ref>.lock``, created
    exclusively) first, checks under it, and renames it into place, as git does.
    """
    path = os.path.join(repo.path, refname)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        descriptor = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise _moved(refname) from None  # another writer holds it right now
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            if repo.references.get(refname) is not None:
                raise _moved(refname)
            handle.write(f"{target}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(path + ".lock", path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + ".lock")
        raise


def _copy_objects(source, target, oid):
    """Copy the objects reachable from ``oid`` that ``target`` lacks from ``source`` (both local repositories)."""
    stack = [oid]
    while stack:
        current = stack.pop()
        if current in target:
            continue
        obj = source[current]
        target.odb.write(obj.type, obj.read_raw())
        if isinstance(obj, pygit2.Commit):
            stack.extend([obj.tree_id, *obj.parent_ids])
        elif isinstance(obj, pygit2.Tree):
            stack.extend(entry.id for entry in obj if entry.filemode != FileMode.COMMIT)


class _Callbacks(access.Callbacks):
    """Remote callbacks that authenticate, make a push a compare-and-swap and record per-ref results."""

    def __init__(self, url, credentials=None, expected=None):
        super().__init__(url, credentials)
        self.expected = expected or {}
        self.rejected = {}

    def push_negotiation(self, updates):
        # update.src is what the remote holds now (libgit2 names it so): refuse if it moved since we read it.
        for update in updates:
            want = self.expected.get(update.dst_refname)
            if want is not None and update.src != want:
                raise _moved(update.dst_refname)

    def push_update_reference(self, refname, message):
        if message:
            self.rejected[refname] = message


def summary(commit):
    """The first line of ``commit``'s message."""
    return commit.message.splitlines()[0] if commit.message else ""


def signature(by, email=None):
    """A git signature for the person ``by``: the name without what git refuses in one (``<``, ``>``, newlines).

    ``email`` defaults to ``<name>@<this host>``.
    """
    name = " ".join(re.sub(r"[<>]", "", str(by or "")).split())[:200] or "unknown"
    if email is None:
        email = f"{re.sub(r'[^A-Za-z0-9._+-]+', '_', name)}@{socket.gethostname()}"
    return pygit2.Signature(name, email)


def commit_info(commit):
    """Describe ``commit`` for returns and events: id, summary, author and time (UTC, ISO 8601)."""
    when = datetime.datetime.fromtimestamp(commit.commit_time, tz=datetime.timezone.utc)
    return {
        "id": str(commit.id),
        "summary": summary(commit),
        "author": f"{commit.author.name} <{commit.author.email}>",
        "time": when.isoformat(),
    }


class Mirror:
    """A bare mirror of the remote repository ``url``, kept under ``cachedir``.

    ``credentials`` (an :class:`envflow.access.Credentials`) and ``timeout``
    (seconds without an answer) serve every fetch and push to the remote.
    Use it as a context manager so the repository handle is released in
    long-lived processes such as the master.
    """

    def __init__(self, url, cachedir, credentials=None, timeout=None, submodule_credentials=()):
        self.url = url
        self.credentials = credentials
        self.submodule_credentials = submodule_credentials  # (url prefix, Credentials), longest first
        self.timeout = timeout
        self.shown = redact(url)
        digest = hashlib.sha256(self.shown.encode()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(self.shown.rstrip("/")))[:40]
        self.cachedir = cachedir
        self.path = os.path.join(cachedir, "envflow", "mirrors", f"{name}-{digest}.git")
        self._repo = None
        self._borrowed = set()  # object directories added to the open handle
        self.setting = "envflow:repo"  # where the URL comes from, for the messages that say what to fix

    @classmethod
    def of(cls, config, cachedir):
        """The mirror of the repository of ``config`` (a :class:`envflow.config.Config`), with its credentials."""
        return cls(config.repo, cachedir, config.credentials, config.timeout, config.submodule_credentials)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Release the repository handle."""
        if self._repo is not None:
            self._repo.free()
            self._repo = None
            self._borrowed.clear()

    @property
    def repo(self):
        """The mirror as a :class:`pygit2.Repository`, created on first use."""
        if self._repo is None:
            try:
                self._repo = pygit2.Repository(self.path)
            except pygit2.GitError:
                # Missing, or left half made by a killed run: it is only a cache, make it anew.
                with held(self.path + ".lock", f"the mirror of {self.shown}"):
                    try:
                        self._repo = pygit2.Repository(self.path)
                    except pygit2.GitError:
                        shutil.rmtree(self.path, ignore_errors=True)
                        self._repo = pygit2.init_repository(self.path, bare=True)
        return self._repo

    @property
    def objects(self):
        """The mirror's object directory, which the trees' repositories borrow from."""
        return os.path.join(self.path, "objects")

    def locked(self):
        """Hold the mirror's lock: no other envflow process fetches or writes references meanwhile."""
        return held(self.path + ".lock", f"the mirror of {self.shown}")

    def scrub(self, text):
        """Return ``text`` with the repository URL's secrets replaced (as written and percent-decoded)."""
        text = str(text).replace(self.url, self.shown)
        found = _USERINFO.search(self.url)
        userinfo = found.group(0)[:-1] if found else ""
        if access.endpoint(self.url).scheme == "ssh" and ":" not in userinfo:
            userinfo = ""  # an ssh user name (git, root) is no secret, and too common a word to replace everywhere
        secrets = {userinfo, urllib.parse.unquote(userinfo)}
        if self.credentials is not None:
            secrets.update(self.credentials.secrets())
        for secret in sorted(secrets - {""}, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _callbacks(self, expected=None):
        """Callbacks for one network operation, once the credentials it needs are checked (and read from sdb)."""
        if is_local(self.url):
            return _Callbacks(self.url, expected=expected)
        credentials = access.prepare(self.url, self.credentials, self.timeout)
        self.credentials = credentials  # resolved: scrub() then knows the secrets' values
        return _Callbacks(self.url, credentials, expected)

    def _failed(self, exc, doing):
        """The one-line :class:`RemoteError` for libgit2's error ``exc`` while ``doing`` (``fetch`` or ``push x``)."""
        message = self.scrub(exc)
        hint = access.describe_failure(message, self.url, self.credentials, self.timeout)
        if hint:
            return RemoteError(f"envflow: cannot {doing} {self.shown}: {hint}")
        return None

    def _report(self, callbacks):
        for warning in callbacks.warnings:
            log.warning("%s", warning)

    def _borrow_objects(self, remote):
        """Read a repository on this machine's objects in place (git's alternates), rather than copying them.

        A fetch then only copies references: libgit2's local transport would
        otherwise pack every object again, which takes seconds for a large
        repository. As with ``git clone --shared``, objects the remote prunes
        (unreachable after a force-push and a ``git gc``) are gone here too;
        envflow then rebuilds a tree that needed them from the commit it deploys.
        ``remote`` is that repository, opened. Returns whether the alternates
        changed (the mirror must then be opened again).
        """
        objects = os.path.join(remote.path, "objects")
        mirrors = os.path.dirname(self.path) + os.sep
        held = self._alternates()
        # The remote's first; other mirrors' (submodules, see borrow) stay, other remotes' go.
        wanted = [objects, *(line for line in held if line.startswith(mirrors) and line != objects)]
        if wanted == held:
            return False
        self._write_alternates(wanted)
        return True

    def _alternates(self):
        try:
            with open(os.path.join(self.path, "objects", "info", "alternates"), encoding="utf-8") as handle:
                return [line for line in handle.read().splitlines() if line]
        except OSError:
            return []

    def _write_alternates(self, lines):
        alternates = os.path.join(self.path, "objects", "info", "alternates")
        os.makedirs(os.path.dirname(alternates), exist_ok=True)
        making = f"{alternates}.{os.getpid()}.tmp"
        with open(making, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{line}\n" for line in lines))
        os.replace(making, alternates)

    def borrow(self, objects):
        """Read another mirror's ``objects`` from this one too (a submodule's): for this handle and every later one."""
        lines = self._alternates()
        if objects not in lines:
            # No lock (a deploy may run under the mirror's): a line two writers lose at once is added again by
            # the next deploy that serves that submodule, as this one adds it to its own handle below.
            self._write_alternates([*lines, objects])
        if objects not in self._borrowed:
            self.repo.odb.add_disk_alternate(objects)
            self._borrowed.add(objects)

    def of_submodule(self, url):
        """The mirror of a submodule's remote ``url``, beside this one, with the credentials configured for it.

        Those of the longest ``envflow:submodule_credentials`` prefix of
        ``url``, else the main remote's.
        """
        credentials = next(
            (found for prefix, found in self.submodule_credentials if url.startswith(prefix)), self.credentials
        )
        mirror = Mirror(url, self.cachedir, credentials, self.timeout)
        mirror.setting = "its url in .gitmodules"
        return mirror

    def _copy_local_refs(self, repo, remote):
        """Set the mirror's branches, tags and notes to a local remote's, pruning the others; ``False`` if it cannot.

        With the remote's objects read in place (:meth:`_borrow_objects`),
        copying its references is the whole fetch, and costs less than
        libgit2's local transport, which negotiates as over a network. It
        cannot when an object they name is not readable here: libgit2's fetch
        then copies what is missing. ``remote`` is the local remote, opened.
        """
        try:
            wanted = {name: remote.references[name].resolve().target for name in remote.references if _fetched(name)}
        except (KeyError, pygit2.GitError):
            return False  # a symbolic reference to nothing, or a reference being rewritten: let the fetch say
        if not all(target in repo for target in wanted.values()):
            return False
        for name in [name for name in repo.references if _fetched(name) and name not in wanted]:
            repo.references.delete(name)
        for name, target in wanted.items():
            held = repo.references.get(name)
            if held is None or held.target != target:
                repo.references.create(name, target, force=True)
        return True

    def _fetch_local(self, local):
        """Fetch from the repository at ``local`` by reading it in place; ``False``: libgit2's fetch must run.

        The repository is opened once for both steps. ``False`` also when it
        cannot be opened: libgit2's fetch then says what is wrong with it.
        """
        try:
            remote = pygit2.Repository(local)
        except pygit2.GitError:
            clear_stale_git_locks(self.path)
            return False
        try:
            if self._borrow_objects(remote):
                self.close()  # libgit2 reads alternates when it opens a repository
            clear_stale_git_locks(self.path)
            return self._copy_local_refs(self.repo, remote)
        finally:
            remote.free()

    def fetch(self):
        """Bring every branch and tag of the remote into the mirror, pruning deleted ones."""
        if is_local(self.url):
            local = self.url[len("file://") :] if self.url.startswith("file://") else self.url
            if not os.path.exists(local):
                if self.setting == "envflow:repo":
                    raise RemoteError(
                        f"envflow:repo: {local} does not exist; point envflow:repo at the automation repository"
                    )
                raise RemoteError(f"envflow: {local} does not exist; fix {self.setting}")
        self.repo  # noqa: B018 - made (if missing) before the lock, which making it takes too
        with self.locked():
            if is_local(self.url) and self._fetch_local(local):
                return
            callbacks = self._callbacks()
            remote = self.repo.remotes.create_anonymous(self.url)
            try:
                remote.fetch(_FETCH_REFSPECS, callbacks=callbacks, prune=FetchPrune.PRUNE)
            except RemoteError as exc:
                raise RemoteError(self.scrub(exc)) from None
            except (pygit2.GitError, KeyError, ValueError) as exc:
                raise self._failed(exc, "fetch") or RemoteError(
                    f"envflow: cannot fetch {self.shown}: {self.scrub(exc)}; check {self.setting} and access to it"
                ) from None
            finally:
                self._report(callbacks)

    def branches(self):
        """The names of the branches the last fetch found on the remote (a fetch prunes the deleted ones), sorted."""
        return sorted(name[len("refs/heads/") :] for name in self.repo.references if name.startswith("refs/heads/"))

    def tip(self, branch):
        """Return the commit id at the tip of ``branch`` in the mirror, or ``None`` if it has no such branch."""
        try:
            ref = self.repo.references.get(f"refs/heads/{branch}")
        except (ValueError, pygit2.InvalidSpecError):
            return None  # not a name a branch can have (libgit2 refuses overlong ones this way)
        return ref.target if ref is not None else None

    def commit(self, rev):
        """Resolve ``rev`` (commit id, tag or branch name) to a commit of the mirror."""
        if isinstance(rev, pygit2.Oid):
            rev = str(rev)
        if not isinstance(rev, str):
            # Salt's CLI reads rev=1234567 as a number (and rev=0123456 as another one).
            raise RevisionError(
                f"envflow: revision {echo(rev)} reached envflow as {_article(type(rev).__name__)}, not as text; give "
                f"the full commit id, or quote it for Salt: rev=\"'{str(rev)[:40]}'\""
            )
        try:
            obj = self.repo.revparse_single(rev if self.tip(rev) is None else f"refs/heads/{rev}")
            return obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            raise RevisionError(
                f"envflow: revision {echo(rev)} is not in {self.shown}; "
                "give a commit id, tag or branch of that repository"
            ) from None

    def contains(self, descendant, ancestor):
        """Whether commit ``ancestor`` is ``descendant`` or one of its ancestors."""
        return descendant == ancestor or self.repo.descendant_of(descendant, ancestor)

    def commits(self, new, old, limit=50):
        """List ``(id, summary)`` of the commits in ``new`` but not in ``old``, newest first."""
        walker = self.repo.walk(new, SortMode.TOPOLOGICAL)
        if old is not None:
            walker.hide(old)
        found = []
        for commit in walker:
            found.append((str(commit.id), summary(commit)))
            if len(found) >= limit:
                break
        return found

    def changed_files(self, old, new):
        """List ``(status, path)`` for the files that differ between commits ``old`` and ``new``."""
        old_tree = self.repo[old].peel(pygit2.Tree) if old is not None else None
        new_tree = self.repo[new].peel(pygit2.Tree)
        diff = self.repo.diff(old_tree, new_tree) if old_tree is not None else new_tree.diff_to_tree(swap=True)
        return [(delta.status_char(), delta.new_file.path or delta.old_file.path) for delta in diff.deltas]

    def update_branch(self, branch, old, new, rewind=False):
        """Move ``branch`` on the remote from ``old`` (``None``: absent) to ``new``, as a compare-and-swap.

        Raises :class:`BranchMoved` if the remote branch is no longer ``old``.
        ``rewind``: ``new`` may be behind ``old`` (a move undone).
        """
        self.update_ref(f"refs/heads/{branch}", old, new, rewind=rewind)

    def update_ref(self, refname, old, new, rewind=False):
        """Move ``refname`` on the remote from ``old`` (``None``: absent) to ``new``, as a compare-and-swap.

        Raises :class:`BranchMoved` if the remote reference is no longer ``old``. A push is
        fast-forward only unless ``rewind``; the compare-and-swap holds either way.
        """
        staging = f"refs/envflow/push/{refname[len('refs/') :]}"
        repo = self.repo
        with self.locked():
            if is_local(self.url):
                self._swap_local(refname, old, new)
            else:
                repo.references.create(staging, new, force=True)
                try:
                    refspec = f"{'+' if rewind else ''}{staging}:{refname}"
                    self._push(refspec, {refname: old if old is not None else _ZERO})
                finally:
                    repo.references.delete(staging)
            repo.references.create(refname, new, force=True)

    def _push(self, refspec, expected):
        """Push ``refspec``; ``expected`` maps remote refs to the value they must hold (the negotiation checks it)."""
        refname = refspec.rsplit(":", 1)[1]
        callbacks = self._callbacks(expected)
        try:
            self.repo.remotes.create_anonymous(self.url).push([refspec], callbacks=callbacks)
        except BranchMoved:
            raise
        except RemoteError as exc:
            raise RemoteError(self.scrub(exc)) from None
        except pygit2.GitError as exc:
            message = self.scrub(exc)
            if "non-fastforward" in message or "not present locally" in message:
                raise _moved(refname) from None
            raise self._failed(exc, f"push {_shown_ref(refname)} to") or RemoteError(
                f"envflow: cannot push {_shown_ref(refname)} to {self.shown}: {message}"
            ) from None
        finally:
            self._report(callbacks)
        if callbacks.rejected:
            reason = self.scrub(callbacks.rejected[refname])
            if any(
                word in reason for word in ("failed to update ref", "stale info", "fetch first", "non-fast-forward")
            ):
                raise _moved(refname)  # receive-pack's own compare-and-swap refused it
            raise RemoteError(f"envflow: {self.shown} refused the update of {_shown_ref(refname)}: {reason}")

    def _swap_local(self, refname, old, new):
        """Compare-and-swap ``refname`` in a repository on this machine.

        libgit2's local transport overwrites the reference after its advertised
        value was checked, with no ``receive-pack`` to compare again; so the
        objects are copied over, and the reference is moved in the remote
        repository itself, checked against ``old`` under libgit2's lock.
        """
        local = self.url[len("file://") :] if self.url.startswith("file://") else self.url
        remote = pygit2.Repository(local)
        try:
            _copy_objects(self.repo, remote, new)
            current = remote.references.get(refname)
            if (current.target if current is not None else None) != old:
                raise _moved(refname)
            _clear_stale_ref_lock(remote.path, refname)
            try:
                if current is None:
                    _create_local_ref(remote, refname, new)
                else:
                    current.set_target(new, f"envflow: {_shown_ref(refname)} {short(old)} -> {short(new)}")
            except pygit2.AlreadyExistsError:
                raise _moved(refname) from None
            except (pygit2.GitError, OSError) as exc:
                # The value changed under the lock, or another writer holds the lock right now.
                if "does not match" in str(exc) or "lock" in str(exc):
                    raise _moved(refname) from None
                raise RemoteError(f"envflow: cannot update {_shown_ref(refname)} in {self.shown}: {exc}") from None
        finally:
            remote.free()
