"""Submodules as a commit pins them: where ``.gitmodules`` says each one comes from, and what may be fetched.

A gitlink in a commit (a tree entry of mode ``160000``) pins a commit of
another repository; the ``.gitmodules`` file of the same commit gives that
repository's URL for the gitlink's path. These functions read and check
those, with git's own rules where git has them (relative URLs, the
transports it refuses), so that a remote repository can never make the
master run a command or read its own disk.
"""

import contextlib
import os
import posixpath
import re
import tempfile

import pygit2
from pygit2.enums import FileMode

from envflow import checkout, trees
from envflow.errors import EnvflowError
from envflow.remote import redact
from envflow.text import echo, short


class SubmoduleError(EnvflowError):
    """A submodule that cannot be served as its commit pins it; the message names its path and (redacted) URL."""


GITMODULES = ".gitmodules"
# Transports git runs as a command or on a file descriptor: git refuses them for submodules by default.
_REFUSED_TRANSPORTS = re.compile(r"^(ext|fd)::", re.IGNORECASE)
_REMOTE_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_NETWORK_SCHEMES = ("https", "http", "ssh", "git", "ssh+git", "git+ssh")


@contextlib.contextmanager
def _readable(data):
    """A path to read ``data`` from: a memory file where Linux has them (nothing left behind by a kill)."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        descriptor = os.memfd_create("gitmodules")
        try:
            os.write(descriptor, data)
            yield f"/proc/self/fd/{descriptor}"
        finally:
            os.close(descriptor)
        return
    with tempfile.TemporaryDirectory(prefix="envflow-gitmodules-") as scratch:
        path = os.path.join(scratch, "gitmodules")
        with open(path, "wb") as handle:
            handle.write(data)
        yield path


def parse_gitmodules(data):
    """``{path: url}`` from the text of a ``.gitmodules`` file (bytes), read as git reads it.

    Raises :class:`SubmoduleError` when the file does not parse.
    """
    with _readable(data) as path:
        try:
            found = {}
            for entry in pygit2.Config(path):
                name = entry.name
                if not name.startswith("submodule.") or not name.endswith((".path", ".url")):
                    continue
                section, key = name[len("submodule.") :].rsplit(".", 1)
                found.setdefault(section, {})[key] = entry.value
        except pygit2.GitError as exc:
            first = str(exc).splitlines()[0].replace(path, GITMODULES) if str(exc) else "it does not parse"
            raise SubmoduleError(
                f"envflow: {GITMODULES} does not parse ({first}); fix the file in the commit and push it"
            ) from None
    return {entry["path"]: entry.get("url") for entry in found.values() if "path" in entry}


def resolve_url(url, base):
    """``url`` as git resolves a submodule's URL: ``./`` and ``../`` are relative to ``base`` (the remote's URL)."""
    if not url.startswith(("./", "../")):
        return url
    remote = base.rstrip("/")
    colon = False
    while True:
        if url.startswith("../"):
            url = url[3:]
            cut = remote.rfind("/")
            if cut >= 0:
                remote = remote[:cut]
            elif ":" in remote:
                remote, colon = remote[: remote.rfind(":")], True
            else:
                remote = "."
        elif url.startswith("./"):
            url = url[2:]
        else:
            break
    return f"{remote}{':' if colon else '/'}{url}".rstrip("/")


def is_local_url(url):
    """Whether ``url`` names a repository on the master's own disk (a path or a ``file://`` URL)."""
    if url.lower().startswith("file://"):
        return True
    if "://" in url:
        return False
    return not re.match(r"^[^/:]+:", url)  # ``host:path`` is ssh, as git reads it; a path has no colon before a slash


def check_url(path, url, main_url):
    """Refuse (raise :class:`SubmoduleError`) a submodule URL envflow must not fetch, as git does and more.

    Refused: no URL, a transport git runs as a command (``ext::``, ``fd::``
    and any other ``<helper>::``), a URL starting with ``-`` (read as an
    option), a scheme other than https, http, ssh and git, and a path or
    ``file://`` URL when the main remote is not itself on this machine.
    """
    shown = echo(redact(url or ""))
    where = f"submodule {echo(path)}"
    if not url:
        raise SubmoduleError(
            f"envflow: {where} has no url in {GITMODULES}; add submodule.<name>.url for it, or remove the gitlink"
        )
    if url.startswith("-"):
        reason = "starts with '-', which git would read as an option"
    elif _REFUSED_TRANSPORTS.match(url) or _REMOTE_HELPER.match(url):
        reason = "uses a transport git runs as a command"
    elif "://" in url and url.split("://", 1)[0].lower() not in (*_NETWORK_SCHEMES, "file"):
        reason = f"uses the scheme {echo(url.split('://', 1)[0])}; use https, ssh or git"
    elif is_local_url(url) and not is_local_url(main_url):
        reason = "is on this master's disk and the main remote is not (a remote may not make the master read its files)"
    else:
        return
    raise SubmoduleError(f"envflow: {where} url {shown} {reason}; fix {GITMODULES} in the commit and push it")


def check_path(path, url=None):
    """Refuse a submodule path that leaves the tree or names ``.git`` (``url``: its URL, for the message)."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or posixpath.normpath(path) != path
        or any(part in ("", ".", "..") or part.lower() == ".git" for part in parts)
    ):
        source = f" (url {echo(redact(url))})" if url else ""
        raise SubmoduleError(
            f"envflow: submodule path {echo(path)}{source} leaves the tree or names .git; "
            "move the submodule and push it"
        )


def _pins_after(pins, old, new):
    """``pins`` (the gitlinks of tree ``old``, ``{path: commit id}``) as tree ``new`` has them: the change applied."""
    for path, _old, moved in checkout.changes(old, new, kinds=(FileMode.COMMIT,)):
        if moved is None:
            pins.pop(path, None)
        else:
            pins[path] = str(moved[0])
    return pins


_MAX_DEPTH = 8  # submodules within submodules; deeper is refused as a likely loop


class Composer:
    """The tree to serve for a commit holding submodules: its own, with each gitlink made the pinned commit's tree.

    ``mirror`` is the main repository's (:class:`envflow.remote.Mirror`);
    each submodule remote gets a mirror of its own beside it, with the same
    credentials and timeout, fetched only when a pin it lacks is needed.
    The main mirror borrows those mirrors' objects (git's alternates), so the
    trees written here, and every repository that borrows from the main
    mirror, read the submodules' files. ``enabled`` false refuses a commit
    that holds a gitlink.
    """

    def __init__(self, mirror, enabled=True):
        self.mirror = mirror
        self.enabled = enabled

    def __call__(self, commit, previous=None):
        """``(tree id, submodules)`` to serve ``commit``; ``(None, {})`` when it holds no submodule.

        ``previous`` is the served slot's record: what it composed is reused,
        so a deploy where no pin changed does no submodule work.
        ``submodules`` maps each gitlink path (nested ones too, as
        ``outer/inner``) to ``{"commit", "tree", "url", "in"}``: the URL
        redacted, ``in`` the path of the submodule holding it (``""``: none).
        """
        repo = self.mirror.repo
        plain = commit.peel(pygit2.Tree)
        links = self._gitlinks(repo, plain, previous)
        if not links:
            return None, {}  # known to hold none: the next deploy looks only at what changed since
        if not self.enabled:
            listed = ", ".join(sorted(links)[:3]) + (f" and {len(links) - 3} more" if len(links) > 3 else "")
            raise SubmoduleError(
                f"envflow: {short(commit.id)} holds submodules ({listed}) and envflow:submodules is false; "
                "turn submodules on, or remove the gitlinks from the branch"
            )
        known = dict((previous.submodules or {}) if previous is not None else {})
        served = {}
        subtrees = self._compose(plain, links, self.mirror.url, "", known, served, depth=0)
        return trees.replaced(repo, plain, subtrees), served

    @staticmethod
    def _gitlinks(repo, plain, previous):
        """The gitlinks of ``plain``: from the served commit's and the change since when there is one, else all."""
        if previous is None or previous.submodules is None or previous.commit_id not in repo:
            return trees.gitlinks(plain)
        pins = {path: info["commit"] for path, info in previous.submodules.items() if info.get("in") == ""}
        return _pins_after(pins, repo[previous.commit_id].peel(pygit2.Tree), plain)

    def _compose(self, tree, links, base_url, prefix, known, served, depth):
        """``{path: tree id}`` for the gitlinks ``links`` of ``tree`` (under ``prefix``), fetched, nested ones made."""
        if depth > _MAX_DEPTH:
            raise SubmoduleError(
                f"envflow: submodules nest more than {_MAX_DEPTH} deep at {echo(prefix.rstrip('/'))}; "
                "a submodule pins one of its own ancestors, or the nesting is too deep to serve"
            )
        urls = self._urls(tree, links, prefix)
        subtrees = {}
        for path, pin in sorted(links.items()):
            full = prefix + path
            url = resolve_url(urls[path], base_url)
            check_url(full, url, self.mirror.url)
            held = known.get(full)
            if held is not None and held["commit"] == pin and held["tree"] in self.mirror.repo:
                # The same pin composes the same tree (what it nests is pinned by it): reuse it, with what it nests.
                for name, info in known.items():
                    if name == full or name.startswith(f"{full}/"):
                        served[name] = info
                        self.mirror.borrow(self.mirror.of_submodule(info["url"]).objects)
                subtrees[path] = held["tree"]
                continue
            inner = self._commit_of(full, url, pin).peel(pygit2.Tree)
            nested = self._nested(full, held, inner, known)
            composed = str(inner.id)
            if nested:
                below = self._compose(inner, nested, url, f"{full}/", known, served, depth + 1)
                composed = trees.replaced(self.mirror.repo, inner, below)
            served[full] = {"commit": pin, "tree": composed, "url": redact(url), "in": prefix[:-1]}
            subtrees[path] = composed
        return subtrees

    def _nested(self, full, held, inner, known):
        """The gitlinks of the submodule at ``full``, now at tree ``inner``: those it held before (``held``, its
        record) and the change since, so a pin bump costs what the bump changed; all of them when new."""
        repo = self.mirror.repo
        if held is None or held["commit"] not in repo:
            return trees.gitlinks(inner)
        pins = {name[len(full) + 1 :]: info["commit"] for name, info in known.items() if info.get("in") == full}
        return _pins_after(pins, repo[held["commit"]].peel(pygit2.Tree), inner)

    def _urls(self, tree, links, prefix):
        """Each gitlink's URL from ``tree``'s ``.gitmodules``; refuse a path it does not list, or that escapes."""
        try:
            blob = tree[GITMODULES]
            listed = parse_gitmodules(blob.data) if blob.type_str == "blob" else {}
        except KeyError:
            listed = {}
        urls = {}
        for path in sorted(links):
            check_path(path, listed.get(path))
            if path not in listed:
                raise SubmoduleError(
                    f"envflow: submodule {echo(prefix + path)} is not listed in {prefix}{GITMODULES}; "
                    "add it there (git submodule add does), or remove the gitlink"
                )
            urls[path] = listed[path]
        return urls

    def _commit_of(self, path, url, pin):
        """The pinned commit, from the submodule remote's mirror, fetched when it lacks the pin."""
        mirror = self.mirror.of_submodule(url)
        try:
            if pin not in mirror.repo:
                try:
                    mirror.fetch()
                except EnvflowError as exc:
                    raise SubmoduleError(
                        f"envflow: submodule {echo(path)} ({mirror.shown}): {str(exc).removeprefix('envflow: ')}"
                    ) from None
            if pin not in mirror.repo:
                raise SubmoduleError(
                    f"envflow: submodule {echo(path)} pins {short(pin)}, which {mirror.shown} does not have; "
                    "push that commit to the submodule's remote (or pin one it has)"
                )
            self.mirror.borrow(mirror.objects)
            return self.mirror.repo[pin].peel(pygit2.Commit)
        finally:
            mirror.close()


def bumps(mirror, old_id, new_id):
    """One line per submodule that differs between two commits of ``mirror``, for promotions, diffs and history.

    ``formulas/nginx-formula: 3f2c9a1e0b -> 8d1e0f2a3c (4 commits)``, ``...:
    added at 3f2c9a1e0b``, ``...: removed (was 3f2c9a1e0b)``; a pin moved back
    says ``(back 2 commits)``. The commits are counted in the submodule's
    mirror, fetched if it lacks a pin; when that fails the line says so.
    Nested submodules move with their formula's pin, whose history tells.
    """
    repo = mirror.repo
    if new_id not in repo or (old_id is not None and old_id not in repo):
        return []  # a commit this mirror has not fetched (another master's): nothing to tell from here
    old_tree = repo[old_id].peel(pygit2.Tree) if old_id is not None else None
    new_tree = repo[new_id].peel(pygit2.Tree)
    moved = checkout.changes(old_tree, new_tree, kinds=(FileMode.COMMIT,))
    if not moved:
        return []
    try:
        urls = parse_gitmodules(new_tree[GITMODULES].data)
    except (KeyError, SubmoduleError):
        urls = {}
    lines = []
    for path, old, new in moved:
        if new is None:
            lines.append(f"{path}: removed (was {short(old[0])})")
        elif old is None:
            lines.append(f"{path}: added at {short(new[0])}")
        else:
            counted = _counted(mirror, path, urls.get(path), str(old[0]), str(new[0]))
            lines.append(f"{path}: {short(old[0])} -> {short(new[0])} ({counted})")
    return lines


def _counted(mirror, path, url, old, new):
    """``4 commits``, ``back 2 commits`` or ``2 commits, 1 dropped``, from the submodule's mirror; or why not."""
    if url is None:
        return "commits not known: not in .gitmodules"
    url = resolve_url(url, mirror.url)
    try:
        check_url(path, url, mirror.url)
        with mirror.of_submodule(url) as held:
            if old not in held.repo or new not in held.repo:
                held.fetch()
            if old not in held.repo or new not in held.repo:
                return f"commits not known: {held.shown} lacks a pin"
            ahead = len(held.commits(new, old, limit=10_000))
            behind = len(held.commits(old, new, limit=10_000))
    except EnvflowError as exc:
        return f"commits not known: {str(exc).removeprefix('envflow: ')}"
    if behind and not ahead:
        return f"back {behind} commit{'s' if behind != 1 else ''}"
    counted = f"{ahead} commit{'s' if ahead != 1 else ''}"
    return f"{counted}, {behind} dropped" if behind else counted
