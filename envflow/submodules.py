"""Submodules as a commit pins them: where ``.gitmodules`` says each one comes from, and what may be fetched.

A gitlink in a commit (a tree entry of mode ``160000``) pins a commit of
another repository; the ``.gitmodules`` file of the same commit gives that
repository's URL for the gitlink's path. These functions read and check
those, with git's own rules where git has them (relative URLs, the
transports it refuses), so that a remote repository can never make the
master run a command or read its own disk.
"""

import os
import posixpath
import re
import tempfile

import pygit2

from envflow.errors import EnvflowError
from envflow.remote import redact
from envflow.text import echo


class SubmoduleError(EnvflowError):
    """A submodule that cannot be served as its commit pins it; the message names its path and (redacted) URL."""


GITMODULES = ".gitmodules"
# Transports git runs as a command or on a file descriptor: git refuses them for submodules by default.
_REFUSED_TRANSPORTS = re.compile(r"^(ext|fd)::", re.IGNORECASE)
_REMOTE_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_NETWORK_SCHEMES = ("https", "http", "ssh", "git", "ssh+git", "git+ssh")


def parse_gitmodules(data):
    """``{path: url}`` from the text of a ``.gitmodules`` file (bytes), read as git reads it.

    Raises :class:`SubmoduleError` when the file does not parse.
    """
    with tempfile.TemporaryDirectory(prefix="envflow-gitmodules-") as scratch:
        path = os.path.join(scratch, "gitmodules")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            config = pygit2.Config(path)
            found = {}
            for entry in config:
                name = entry.name
                if not name.startswith("submodule.") or not name.endswith((".path", ".url")):
                    continue
                section, key = name[len("submodule.") :].rsplit(".", 1)
                found.setdefault(section, {})[key] = entry.value
        except pygit2.GitError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "it does not parse"
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


def check_path(path):
    """Refuse a submodule path that leaves the tree or names ``.git``."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or posixpath.normpath(path) != path
        or any(part in ("", ".", "..") or part.lower() == ".git" for part in parts)
    ):
        raise SubmoduleError(
            f"envflow: submodule path {echo(path)} leaves the tree or names .git; move the submodule and push it"
        )
