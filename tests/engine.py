"""The deploy engine under test, behind one adapter, and git's own view of a commit to hold it against.

Everything the engine tests call of ``envflow.served`` goes through the
adapter at the top: whoever changes the engine's API adjusts it here only.
The rest is independent of envflow: :class:`History` writes commits with
``git fast-import`` (submodules too: gitlinks and their ``.gitmodules``),
:func:`expected` reads back what a commit holds with ``git ls-tree`` and
``git cat-file``, each submodule's files in place, and decides by its own
rule which of its symlinks may be served, and :func:`on_disk` reads what a
directory really holds, without following any link.
"""

import contextlib
import functools
import hashlib
import json
import os
import posixpath
import signal
import stat
import subprocess
import sys
import traceback
from dataclasses import dataclass

from envflow import checkout
from envflow import served as served_module
from envflow.errors import Drift
from envflow.remote import Mirror
from envflow.served import ServedDir
from envflow.submodules import Composer
from tests.gitrepo import git

# -- the engine, behind one adapter -------------------------------------------

#: What the engine raises when the served tree was edited by hand; carries ``.changes``.
Refused = Drift


def deploy(path, mirror, rev, force=False, two_threads=False):
    """Make ``path`` serve commit ``rev`` of ``mirror`` (fetched already), its submodules too; return the result.

    Each submodule is fetched from its own remote when its mirror lacks the pin.
    With ``two_threads``, whole trees are written by two threads whatever their size, as large ones always are.
    """
    with whole_trees_in_two(two_threads):
        return ServedDir(path).deploy(mirror.objects, mirror.commit(rev), force=force, compose=Composer(mirror))


@contextlib.contextmanager
def whole_trees_in_two(on=True):
    """While this holds (``on``), the engine takes its two-thread paths whatever the size, not only for large trees.

    It writes every whole tree by two threads, and reads the served index on a
    thread of its own while it checks the standby.
    """
    defaults = checkout._TWO_THREADS_FROM, served_module._LARGE_INDEX  # pylint: disable=protected-access
    if on:
        checkout._TWO_THREADS_FROM, served_module._LARGE_INDEX = 1, 0  # pylint: disable=protected-access
    try:
        yield
    finally:
        checkout._TWO_THREADS_FROM, served_module._LARGE_INDEX = defaults  # pylint: disable=protected-access


def deploy_until_killed(path, repo, cache, rev, two_threads, ready, failure):
    """In a child process: deploy ``rev`` of the repository at ``repo`` into ``path``, for the parent to kill.

    Writes a byte to the file descriptor ``ready`` when the deploy starts.
    Returns the exit code: 0, or 1 after writing the traceback to the file ``failure``.
    """
    try:
        with Mirror(repo, cache) as mirror:
            mirror.repo  # noqa: B018 - opened before the signal: what the parent times is the deploy
            os.write(ready, b"g")
            deploy(path, mirror, rev, two_threads=two_threads)
        return 0
    except BaseException:
        with open(failure, "w", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
        return 1


def deployed(path):
    """What the engine says ``path`` serves (``{"id": <commit id>, ...}``), or ``None``."""
    return ServedDir(path).deployed()


def served_commit(path):
    """The id of the commit ``path`` serves, or ``None``."""
    description = deployed(path)
    return description["id"] if description else None


def refused_links(result):
    """The paths of the symlinks a deploy's result says it did not serve."""
    return sorted(link["path"] for link in result["refused_links"])


def slots(path):
    """The served tree's directory and the standby's (``None`` before there is one).

    The engine keeps its trees in ``.<name>.envflow/``; a tree is a directory
    there without a dot in its name (``a.git``, ``a.git.new`` are bookkeeping).
    """
    served = os.path.realpath(path)
    home = os.path.dirname(served)
    others = [
        os.path.join(home, name)
        for name in sorted(os.listdir(home))
        if "." not in name and os.path.join(home, name) != served and os.path.isdir(os.path.join(home, name))
    ]
    return served, (others[0] if others else None)


_FORK_SERVER = r"""
import json, os, sys
sys.path[:] = json.loads(sys.argv[1])
from tests.engine import deploy_until_killed
for line in sys.stdin:
    ready, go = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready)
        os._exit(deploy_until_killed(*json.loads(line), go, os.environ["FAILURE"]))
    os.close(go)
    started = os.read(ready, 1) == b"g"
    os.close(ready)
    print(json.dumps([child, started]), flush=True)
    sys.stdin.readline()  # not reaped before the parent says so: until then its pid is no other process's
    print(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)
"""


class Killable:
    """Deploys to kill, each in a child forked from one server that imported the engine once.

    A fresh interpreter per deploy would cost more than the deploy; forking
    the test process itself would copy its other threads' locks. The server
    imports the same envflow as this process, and deploys through the same adapter.
    """

    def __init__(self, failure):
        import envflow

        paths = [os.path.dirname(os.path.dirname(os.path.abspath(envflow.__file__))), *sys.path]
        self.server = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER, json.dumps(paths)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "FAILURE": failure},
        )
        self.failure = failure

    def start(self, path, repo, cache, rev, two_threads=False):
        """Start deploying ``rev`` into ``path``; return once the deploy has begun."""
        self.server.stdin.write(json.dumps([path, repo, cache, rev, two_threads]) + "\n")
        self.server.stdin.flush()
        self.child, started = json.loads(self.server.stdout.readline())
        assert started, "the deploy to kill never started"

    def kill(self):
        """SIGKILL the deploy; return its exit code (negative: the signal), and its error if it failed."""
        os.kill(self.child, signal.SIGKILL)
        self.server.stdin.write("reap\n")
        self.server.stdin.flush()
        code = int(self.server.stdout.readline())
        if code > 0:
            with open(self.failure, encoding="utf-8") as handle:
                return code, handle.read()
        return code, None

    def close(self):
        self.server.stdin.close()
        self.server.wait()


# -- commits ------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    data: bytes
    executable: bool = False


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class Gitlink:
    """A submodule: ``commit`` of the repository at ``url`` (as ``.gitmodules`` has it), named ``name`` there."""

    commit: str
    url: str
    name: str


def gitmodules(tree):
    """The ``.gitmodules`` that lists ``tree``'s gitlinks, as ``git submodule add`` writes it; ``None`` for none."""
    listed = sorted((path, entry) for path, entry in tree.items() if isinstance(entry, Gitlink))
    if not listed:
        return None
    sections = (f'[submodule "{entry.name}"]\n\tpath = {path}\n\turl = {entry.url}\n' for path, entry in listed)
    return "".join(sections).encode()


class History:
    """A bare repository whose branch ``stage`` is given whole trees, one commit each."""

    def __init__(self, path):
        self.path = path
        self.commits = []
        git("init", "-q", "--bare", "-b", "stage", path)

    def commit(self, tree, message="change"):
        """Commit ``tree`` (path -> :class:`File`, :class:`Link`, :class:`Gitlink`) on ``stage`` exactly; return its id.

        fast-import takes every path as given, so ignored ones are committed
        as ``git add -f`` would. Gitlinks come with a ``.gitmodules`` listing
        them (:func:`gitmodules`), which ``tree`` must then not hold itself.
        """
        modules = gitmodules(tree)
        if modules is not None:
            assert ".gitmodules" not in tree, "a tree with gitlinks gets its .gitmodules from them"
            tree = {**tree, ".gitmodules": File(modules)}
        when = 1_700_000_000 + len(self.commits)
        text = message.encode()
        stream = [b"commit refs/heads/stage\n", b"mark :1\n", b"committer Test <test@example.com> %d +0000\n" % when]
        stream.append(b"data %d\n%s\n" % (len(text), text))
        if self.commits:
            stream.append(b"from %s\n" % self.commits[-1].encode())
        stream.append(b"deleteall\n")
        for path, entry in sorted(tree.items()):
            if isinstance(entry, Gitlink):
                stream.append(b"M 160000 %s %s\n" % (entry.commit.encode(), os.fsencode(path)))
                continue
            if isinstance(entry, Link):
                mode, data = b"120000", os.fsencode(entry.target)
            else:
                mode, data = (b"100755" if entry.executable else b"100644"), entry.data
            stream.append(b"M %s inline %s\ndata %d\n%s\n" % (mode, os.fsencode(path), len(data), data))
        stream.append(b"\nget-mark :1\n")  # the new commit's id, on fast-import's output: no git rev-parse after it
        out = git("fast-import", "--quiet", "--force", cwd=self.path, text=False, input=b"".join(stream))
        self.commits.append(out.decode().strip())
        return self.commits[-1]


# -- what a commit holds, and what may be served of it ------------------------


def blob_id(data):
    """The id git gives ``data`` as a blob."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Expected:
    """What serving a commit means: its files ``path -> (blob id, executable)``, its safe links, and its dirs."""

    files: dict
    links: dict
    unsafe: dict
    dirs: set


def expected(repo, commit, url=None):
    """What ``path`` must hold when it serves ``commit`` of the repository at ``repo``, read from git itself.

    Each gitlink is replaced by the files of the commit it pins, read from
    the repository at the URL the commit's ``.gitmodules`` gives for its path
    (a relative one resolved against ``url``, the repository's own URL, as
    git does), nested ones too. The symlink rule applies to the whole.
    """
    files, links = {}, {}
    _read_tree(repo, url or repo, commit, "", files, links)
    unsafe = unsafe_links(set(files), links)
    served = {path: target for path, target in links.items() if path not in unsafe}
    return Expected(files, served, {path: links[path] for path in unsafe}, parents([*files, *served]))


def _read_tree(repo, url, commit, prefix, files, links):
    """Add the files and links of ``commit`` (its submodules' too) under ``prefix`` to ``files`` and ``links``."""
    own_files, own_links, pins, urls = _entries(repo, commit)
    files.update({prefix + path: held for path, held in own_files.items()})
    links.update({prefix + path: target for path, target in own_links.items()})
    for path, pin in sorted(pins.items()):
        inner = resolve_url(urls[path], url)
        _read_tree(inner.removeprefix("file://"), inner, pin, f"{prefix}{path}/", files, links)


@functools.lru_cache(maxsize=4096)
def _entries(repo, commit):
    """``commit``'s files, link targets, gitlinks and their URLs, as git reads them; once per commit.

    Many commits pin the same commit of a submodule, whose reading does not change.
    """
    listing = git("ls-tree", "-r", "-z", "--full-tree", commit, cwd=repo, text=False)
    files, link_blobs, pins = {}, {}, {}
    for record in filter(None, listing.split(b"\0")):
        meta, raw_path = record.split(b"\t", 1)
        mode, _kind, oid = meta.split(b" ")
        path = os.fsdecode(raw_path)
        if mode in (b"100644", b"100755"):
            files[path] = (oid.decode(), mode == b"100755")
        elif mode == b"120000":
            link_blobs[path] = oid.decode()
        elif mode == b"160000":
            pins[path] = oid.decode()
        else:
            raise AssertionError(f"{commit} holds {path} with mode {mode.decode()}, which these tests never write")
    targets = _blobs(repo, set(link_blobs.values()))
    links = {path: os.fsdecode(targets[oid]) for path, oid in link_blobs.items()}
    return files, links, pins, _submodule_urls(repo, commit) if pins else {}


def _submodule_urls(repo, commit):
    """``{path: url}`` of the submodules ``commit``'s ``.gitmodules`` lists, read by ``git config``."""
    out = git(
        "config", "--blob", f"{commit}:.gitmodules", "-z", "--get-regexp", r"^submodule\..*\.(path|url)$", cwd=repo
    )
    by_name = {}
    for item in filter(None, out.split("\0")):
        key, value = item.split("\n", 1)
        name, field = key[len("submodule.") :].rsplit(".", 1)
        by_name.setdefault(name, {})[field] = value
    return {entry["path"]: entry["url"] for entry in by_name.values()}


def resolve_url(url, base):
    """A submodule's ``url`` as git resolves it: ``./`` and ``../`` against ``base``, taken as a directory.

    Only what these tests write: local paths and ``file://`` URLs.
    """
    if not url.startswith(("./", "../")):
        return url
    scheme, separator, path = base.rpartition("://")
    return f"{scheme}{separator}{posixpath.normpath(posixpath.join(path, url))}"


def _blobs(repo, oids):
    """The contents of blobs ``oids``, with one ``git cat-file --batch``."""
    if not oids:
        return {}
    ordered = sorted(oids)
    out = git("cat-file", "--batch", cwd=repo, text=False, input="".join(f"{oid}\n" for oid in ordered).encode())
    found, offset = {}, 0
    for oid in ordered:
        header_end = out.index(b"\n", offset)
        _oid, _kind, size = out[offset:header_end].split(b" ")
        start = header_end + 1
        found[oid] = out[start : start + int(size)]
        offset = start + int(size) + 1
    return found


def parents(paths):
    """Every directory (``a``, ``a/b``) that holding ``paths`` takes."""
    dirs = set()
    for path in paths:
        parts = path.split("/")
        dirs.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    return dirs


class _Outside(Exception):
    """Resolving a link left the tree's root."""


def unsafe_links(files, links):
    """The symlinks of a tree that must not be served: they leave the tree, or a walk through them never ends.

    ``files`` are the tree's file paths, ``links`` maps its link paths to
    their targets. Each link is resolved as ``os.path.realpath`` would in a
    checkout of the whole tree: component by component, following the other
    links, ``..`` taken from where a link led. It is unsafe when its target is
    absolute, when resolving it steps above the root (even if it would come
    back in: through the engine's own directories, ``../a/x``), when it leads
    to the root itself, or when it leads to a directory from which a walk
    following the other links, those not ruled out already, meets it again.
    A link that resolves nowhere inside the tree (a dangling one, one into a
    loop of links) may be served. A loop of links anywhere on the way makes
    the whole resolution fail, as it does in the kernel (``ELOOP``), which is
    what Salt's walk meets: ``x -> l/..`` with ``l -> l`` leads nowhere.
    """
    entries = [*files, *links]
    dirs = {(), *(tuple(path.split("/")) for path in parents(entries))}
    link_of = {tuple(path.split("/")): target for path, target in links.items()}

    def resolve(at, rest, seen):
        # Returns (where, resolved): where is the tuple of components reached, or, when a loop of
        # links cut the resolution short, the components so far and the rest unresolved, as realpath does.
        if rest.startswith("/"):
            raise _Outside
        names = rest.split("/")
        for number, name in enumerate(names):
            if name in ("", "."):
                continue
            if name == "..":
                if not at:
                    raise _Outside
                at = at[:-1]
                continue
            step = (*at, name)
            if step not in link_of:
                at = step  # a directory, a file, or nothing: taken as written, as realpath does
                continue
            if step in seen:
                if seen[step] is None:
                    return (*step, *names[number + 1 :]), False
                at = seen[step]
                continue
            seen[step] = None
            at, resolved = resolve(at, link_of[step], seen)
            if not resolved:
                return (*at, *names[number + 1 :]), False
            seen[step] = at
        return at, True

    unsafe, into_dirs = set(), {}
    for path, target in links.items():
        if os.path.isabs(target):
            unsafe.add(path)
            continue
        try:
            where, resolved = resolve((), path, {})
        except _Outside:
            unsafe.add(path)
            continue
        if not resolved:
            continue  # into a loop of links: nowhere to go, nothing to walk
        if where == ():
            unsafe.add(path)  # the root holds the link itself: a walk through it never ends
        elif where in dirs:
            into_dirs[tuple(path.split("/"))] = where
    # Walk from each directory a link leads to, through the directory links met below it. The links
    # refused above are never served, so a walk through the served tree never takes them.
    for start, target in into_dirs.items():
        queue, visited = [target], set()
        while queue:
            current = queue.pop()
            if current in visited:
                continue
            visited.add(current)
            below = [link for link in into_dirs if link[: len(current)] == current and len(link) > len(current)]
            if start in below:
                unsafe.add("/".join(start))
                break
            queue.extend(into_dirs[link] for link in below)
    return unsafe


# -- what a directory holds ---------------------------------------------------


@dataclass
class OnDisk:
    files: dict
    links: dict
    dirs: set
    other: list


def on_disk(path):
    """What the tree served at ``path`` holds, read without following any link inside it."""
    found = OnDisk({}, {}, set(), [])
    for top, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(top, name)
            rel = os.path.relpath(full, path)
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                found.links[rel] = os.readlink(full)
            elif stat.S_ISDIR(mode):
                found.dirs.add(rel)
            elif stat.S_ISREG(mode):
                with open(full, "rb") as handle:
                    found.files[rel] = (blob_id(handle.read()), bool(mode & 0o111))
            else:
                found.other.append(rel)
    return found


def differences(want, have):
    """What differs between an :class:`Expected` and an :class:`OnDisk`, one line each; empty if they agree."""
    lines = []
    for kind, wanted, had in (("file", want.files, have.files), ("symlink", want.links, have.links)):
        lines += [f"missing {kind} {path}" for path in sorted(set(wanted) - set(had))]
        lines += [f"unexpected {kind} {path} ({had[path]})" for path in sorted(set(had) - set(wanted))]
        for path in sorted(set(wanted) & set(had)):
            if wanted[path] != had[path]:
                lines.append(f"wrong {kind} {path}: {had[path]}, should be {wanted[path]}")
    served_unsafe = sorted(set(want.unsafe) & set(have.links))
    lines += [f"unsafe symlink served: {path} -> {want.unsafe[path]}" for path in served_unsafe]
    lines += [f"missing directory {path}" for path in sorted(want.dirs - have.dirs)]
    lines += [f"unexpected directory {path}" for path in sorted(have.dirs - want.dirs)]
    lines += [f"not a file, link or directory: {path}" for path in have.other]
    return lines


def snapshot(path):
    """Everything under ``path`` (through its top link) with type, mode, size, times and inode, and the link itself."""
    found = {}
    for top, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(top, name)
            info = os.lstat(full)
            content = os.readlink(full) if stat.S_ISLNK(info.st_mode) else None
            if stat.S_ISREG(info.st_mode):
                with open(full, "rb") as handle:
                    content = blob_id(handle.read())
            found[os.path.relpath(full, path)] = (
                info.st_mode,
                info.st_size,
                info.st_mtime_ns,
                info.st_ctime_ns,
                info.st_ino,
                content,
            )
    return os.readlink(path), found
