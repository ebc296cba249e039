"""Real git repositories for tests, benchmarks and the quickstart, built with the git CLI."""

import os
import pathlib
import subprocess

BRANCHES = ("develop", "stage", "master")

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args, cwd=None, text=True, input=None, check=True):
    """Run git and return its stripped standard output; raise on failure (unless not ``check``)."""
    env = dict(os.environ, **_GIT_ENV)
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=check, capture_output=True, text=text, input=input
    ).stdout
    return out.strip() if text else out


class Remote:
    """A bare repository standing for the team's automation repository, and a clone to commit from."""

    def __init__(self, root, files=None, name="automation"):
        """``<root>/<name>.git``, with ``files`` in one commit on each of :data:`BRANCHES`; other names than the
        automation repository's (a formula's) may share ``root`` with it, each with a clone of its own."""
        self.path = os.path.join(str(root), f"{name}.git")
        self.work = os.path.join(str(root), "work" if name == "automation" else f"{name}.work")
        git("init", "-q", "--bare", "-b", "develop", self.path)
        git("init", "-q", "-b", "develop", self.work)
        git("remote", "add", "origin", self.path, cwd=self.work)
        self.write(files or {"top.sls": "base:\n  '*':\n    - web\n", "web/init.sls": "# web v1\n"})
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", "initial states", cwd=self.work)
        git("push", "-q", "origin", *(f"HEAD:refs/heads/{branch}" for branch in BRANCHES), cwd=self.work)

    def write(self, files):
        for rel, content in files.items():
            full = os.path.join(self.work, rel)
            if content is None:
                if os.path.lexists(full):
                    os.unlink(full)
                continue
            os.makedirs(os.path.dirname(full), exist_ok=True)
            if os.path.lexists(full):
                os.unlink(full)
            if isinstance(content, Symlink):
                os.symlink(content.target, full)
            else:
                with open(full, "w", encoding="utf-8") as handle:
                    handle.write(content)

    def commit(self, branch, files, message="change"):
        """Commit ``files`` (path -> content, ``None`` deletes, :class:`Symlink`) on ``branch``; return the id."""
        git("fetch", "-q", "origin", cwd=self.work)
        git("checkout", "-q", "-B", branch, f"origin/{branch}", cwd=self.work)
        self.write(files)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return self.tip(branch)

    def tip(self, branch):
        return git("rev-parse", f"refs/heads/{branch}", cwd=self.path)

    def submodule(self, branch, path, url=None, commit=None, files=None, message="pin a submodule"):
        """Pin ``commit`` of ``url`` at ``path`` on ``branch`` (as ``git submodule add`` records it); ``url=None``
        removes the submodule. ``files`` are committed with it. Returns the new commit id."""
        git("fetch", "-q", "origin", cwd=self.work)
        git("checkout", "-q", "-B", branch, f"origin/{branch}", cwd=self.work)
        git("rm", "-q", "--cached", "--ignore-unmatch", "-r", path, cwd=self.work)
        self.write(files or {})
        git("add", "-A", cwd=self.work)
        modules = os.path.join(self.work, ".gitmodules")
        if os.path.exists(modules) and git(
            "config", "-f", modules, "--get", f"submodule.{path}.path", cwd=self.work, check=False
        ):
            git("config", "-f", modules, "--remove-section", f"submodule.{path}", cwd=self.work)
        if url is not None:
            git("config", "-f", modules, f"submodule.{path}.path", path, cwd=self.work)
            git("config", "-f", modules, f"submodule.{path}.url", url, cwd=self.work)
        if os.path.exists(modules) and not pathlib.Path(modules).read_text(encoding="utf-8").strip():
            os.unlink(modules)
        git("add", "-A", "--", ".gitmodules", cwd=self.work, check=False)
        if url is not None:
            # After the adds. Its folder stays empty, as an uninitialized submodule's: git add -A keeps the gitlink.
            git("update-index", "--add", "--cacheinfo", f"160000,{commit},{path}", cwd=self.work)
            os.makedirs(os.path.join(self.work, path), exist_ok=True)
        elif os.path.isdir(os.path.join(self.work, path)) and not os.listdir(os.path.join(self.work, path)):
            os.rmdir(os.path.join(self.work, path))
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return self.tip(branch)

    def set_branch(self, branch, commit):
        """Move ``branch`` on the remote, as another operator or master would."""
        git("update-ref", f"refs/heads/{branch}", commit, cwd=self.path)

    def refs(self):
        """Every ref of the remote and its commit, to check that nothing changed."""
        out = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=self.path)
        return dict(line.split(" ", 1) for line in out.splitlines()) if out else {}


class Symlink:
    """A symlink to commit: ``Symlink("/etc/passwd")``."""

    def __init__(self, target):
        self.target = target

    def __eq__(self, other):
        return isinstance(other, Symlink) and other.target == self.target

    def __hash__(self):
        return hash(self.target)

    def __repr__(self):
        return f"Symlink({self.target!r})"


def config(remote_path, root):
    """The ``envflow`` block for three environments under ``root``."""
    return {
        "repo": remote_path,
        "environments": [
            {"name": "test", "branch": "develop", "path": os.path.join(str(root), "test")},
            {"name": "stage", "branch": "stage", "path": os.path.join(str(root), "stage")},
            {"name": "prod", "branch": "master", "path": os.path.join(str(root), "prod")},
        ],
    }


def tree_files(path):
    """Map each file under ``path`` (following the top symlink) to its content; symlinks to their target."""
    found = {}
    for root, dirs, files in os.walk(path):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                found[rel] = Symlink(os.readlink(full))
            else:
                with open(full, encoding="utf-8", errors="replace") as handle:
                    found[rel] = handle.read()
    return found


def files_at(git_dir, rev, submodules=None):
    """What a recursive checkout of ``rev`` in ``git_dir`` holds, as :func:`tree_files` reads a served tree.

    Each gitlink is replaced by the files of the repository ``submodules``
    maps its path to (a bare repository's folder), at the commit it pins;
    the paths of nested ones are ``outer/inner``.
    """
    submodules = submodules or {}
    found = {}
    for record in git("ls-tree", "-r", "-z", "--full-tree", rev, cwd=git_dir).split("\0"):
        if not record:
            continue
        meta, path = record.split("\t", 1)
        mode, kind, oid = meta.split()
        if kind == "commit":
            nested = {sub[len(path) + 1 :]: where for sub, where in submodules.items() if sub.startswith(f"{path}/")}
            inner = files_at(submodules[path], oid, nested)
            found.update({f"{path}/{rel}": content for rel, content in inner.items()})
            continue
        content = git("cat-file", "blob", oid, cwd=git_dir, text=False).decode("utf-8", errors="replace")
        found[path] = Symlink(content) if mode == "120000" else content
    return found


_FORMULA = {
    "FORMULA": "name: NAME\nos: Debian, RedHat, Suse, Arch\nos_family: Debian, RedHat, Suse, Arch\n"
    "version: VERSION\nrelease: 1\nminimum_version: 3006\nsummary: NAME formula\n",
    "README.rst": "NAME-formula\n\nA formula for tests: its states install nothing.\n",
    "pillar.example": "NAME:\n  lookup:\n    config_dir: /tmp/NAME\n",
    "NAME/defaults.yaml": "NAME:\n  version: 'VERSION'\n  config_dir: 'OUT'\n",
    "NAME/map.jinja": (
        '{%- import_yaml "NAME/defaults.yaml" as defaults %}\n'
        '{%- set NAME = salt["pillar.get"]("NAME:lookup", default=defaults.NAME, merge=True) %}\n'
    ),
    "NAME/init.sls": (
        '{%- from "NAME/map.jinja" import NAME with context %}\n'
        "include:\n  - NAME.config\n\n"
        "NAME-version:\n  test.configurable_test_state:\n"
        '    - name: "NAME {{ NAME.version }}"\n    - changes: False\n    - result: True\n'
        '    - comment: "NAME {{ NAME.version }} in {{ saltenv }}"\n'
    ),
    "NAME/config.sls": (
        '{%- from "NAME/map.jinja" import NAME with context %}\n'
        "NAME-config:\n  file.managed:\n    - name: {{ NAME.config_dir }}/{{ saltenv }}/NAME.conf\n"
        "    - makedirs: True\nCONTENT"
    ),
}


def formula_files(name, version, out, template=None):
    """The files of a formula repository laid out as saltstack-formulas' are, whose states install nothing.

    ``<name>/init.sls`` includes ``<name>.config`` and reports
    ``<name> <version> in <saltenv>`` in a ``test.configurable_test_state``,
    ``version`` read from ``<name>/defaults.yaml`` through ``<name>/map.jinja``;
    ``<name>/config.sls`` writes ``<out>/<saltenv>/<name>.conf``: the line
    ``<name> <version>``, or the jinja template ``salt://<template>`` rendered with ``version``.
    """
    if template is None:
        content = '    - contents: "NAME {{ NAME.version }}"\n'
    else:
        content = (
            f"    - source: salt://{template}\n    - template: jinja\n"
            '    - context:\n        version: "{{ NAME.version }}"\n'
        )
    return {
        path.replace("NAME", name): text.replace("CONTENT", content)
        .replace("NAME", name)
        .replace("VERSION", version)
        .replace("OUT", str(out))
        for path, text in _FORMULA.items()
    }
