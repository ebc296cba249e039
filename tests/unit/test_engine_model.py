"""The deploy engine against a model: random histories deployed into one path, checked against git after each step.

Each example is a fresh bare repository and one environment path. Its steps
commit random changes (edits, adds, deletes, renames, file <-> directory <->
symlink, exec bits, committed ``.gitignore`` and ignored paths, symlinks in,
out and round, dozens of files at once, submodules) and deploy them, jump back
to older commits, edit the served tree by hand (the deploy must refuse and
change nothing, then ``force=True`` discards the edits), edit the standby tree
(never to be served), and kill deploys at random moments. After every step
the served tree must be exactly what ``git ls-tree`` says the commit holds,
each submodule's files in place, less the symlinks that
``tests.engine.unsafe_links`` rules out, with no other file, link or directory.

Submodules (issue 24) pin formula repositories the example makes when it
first needs them, each with a small random history of its own that grows
when a pin moves to a new commit: ``nginx`` and ``users`` in the main
repository (by an absolute path, a ``file://`` URL or a URL relative to the
main remote's), ``maps`` in ``nginx`` (by a URL relative to nginx's, mostly).
A commit may add a submodule, move its pin to an older or a newer commit,
remove it, move it, replace it by a plain folder of the same name (its files
copied, or not) and back; the generic changes take gitlinks too (a rename
moves one, keeping its name in ``.gitmodules``, as ``git mv`` does). Symlinks
inside the formulas lead anywhere, out of the submodule too; hand edits and
the standby's edits pick paths inside submodules as elsewhere.

Profiles (registered in ``tests/conftest.py``):

- ``engine-ci``, the default: 30 examples of up to 15 steps each (about 450
  steps and 130 commits; 15-20 s on a 2-core machine), derandomized: every run
  draws the same examples from the same fixed seed. A failure is reported
  unshrunk (shrinking these steps takes minutes).
- ``engine-long``, for a local soak, a fresh random seed each run and
  shrinking: 300 examples of up to 40 steps (about 11,000 steps)::

      python3 tests/run.py --salt 3008 --no-docs --no-lint tests/unit/test_engine_model.py \\
          --hypothesis-profile=engine-long

The trees live in ``/dev/shm`` where there is one: the engine syncs the
filesystem on every deploy, which on a disk costs 5-10 times the deploy.
"""

import atexit
import dataclasses
import os
import shutil
import signal
import stat
import tempfile
import time

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from envflow.remote import Mirror
from tests.engine import (
    File,
    Gitlink,
    History,
    Killable,
    Link,
    Refused,
    blob_id,
    deploy,
    deployed,
    differences,
    expected,
    gitmodules,
    on_disk,
    parents,
    refused_links,
    served_commit,
    slots,
    snapshot,
)

KILLABLE = None
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
DIR_NAMES = ("a", "b", "web", "deep", "build", "x")
LEAF_NAMES = ("a", "b", "x", "init.sls", "top.sls", "keep.bak", "run.sh", ".hidden", "inside.sls")
IGNORE_RULES = ("*.bak\n", "build/\n", "ignored*\n", "/x\n", "*.sls\n", "*\n!.gitignore\n")
START = {
    "top.sls": File(b"base:\n  '*':\n    - web\n"),
    "web/init.sls": File(b"# web\n"),
    "web/files/app.conf": File(b"port = 80\n"),
    "run.sh": File(b"#!/bin/sh\n", executable=True),
}
HAND_EDITS = (
    "append",
    "same_size_and_mtime",
    "add_file",
    "add_file_in_new_dir",
    "delete",
    "chmod_x",
    "file_to_dir",
    "add_symlink",
)
PICK = st.integers(0, 999)  # which of the tree's paths an edit takes, modulo their number
HAND_NAMES = ("hand{}.sls", "hand{}.bak", "ignored{}", ".hidden{}")  # some match the committed .gitignore rules
# An empty directory is nothing git sees, but Salt lists it: the standby's must not be served either.
STANDBY_EDITS = (*HAND_EDITS, "empty_dir")
# The formula repositories a tree may pin as submodules, by the repository the tree is of.
PINNABLE = {"main": ("nginx", "users"), "nginx": ("maps",), "users": (), "maps": ()}
SUBMODULE_CHANGES = ("submodule", "pin", "unpin", "move_submodule", "to_folder", "from_folder")
# What a formula's own commits change: no ignore rules, batches or retypes, which the main tree has.
FORMULA_CHANGES = ("add", "edit", "delete", "rename", "exec", "file_to_dir", "file_to_link", "link", "link_to_file")


def files_of(tree):
    return sorted(path for path, entry in tree.items() if isinstance(entry, File))


def links_of(tree):
    return sorted(path for path, entry in tree.items() if isinstance(entry, Link))


def gitlinks_of(tree):
    return sorted(path for path, entry in tree.items() if isinstance(entry, Gitlink))


def is_free(tree, path):
    """Whether ``tree`` can take an entry at ``path``: nothing there, nor under it, nor a file above it."""
    return path not in tree and path not in parents(tree) and not any(parent in tree for parent in parents([path]))


def relative(target, start):
    return os.path.relpath(target, start or os.curdir)


class EngineModel(RuleBasedStateMachine):
    """One environment path, the commits deployed into it, and what it must serve."""

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="envflow-model-", dir=FAST_TMP)
        self.history = History(os.path.join(self.tmp, "automation.git"))
        self.cache = os.path.join(self.tmp, "cache")
        self.mirror = Mirror(self.history.path, self.cache)
        self.path = os.path.join(self.tmp, "srv", "stage")
        self.tree = {}
        self.trees = {}  # commit id -> the tree it serves: the tree it was given, each submodule's files in place
        self.formulas = {}  # name -> the tests.engine.History of a formula repository, made when first pinned
        self.formula_trees = {}  # a formula's commit id -> the tree it was given
        self.formula_of = {}  # a formula's commit id -> the formula's name
        self.mounts = {}  # commit id -> the paths where it serves a submodule, nested ones as outer/inner
        self.former_submodules = set()  # paths that held a submodule once: a folder there may become one again
        self.wanted = {}  # commit id -> tests.engine.Expected
        self.served = None
        self.hand_edits = []  # what was edited by hand in the served tree since it was deployed
        self.touched = set()  # the paths those edits touched
        self.standby = None  # the commit the standby tree holds, when known for sure
        self.standby_touched = set()  # the paths edited by hand there
        self.count = self.hand_count = 0
        self.deploy_seconds = 0.05
        self.two_threads = False  # drawn by the first deploy

    @staticmethod
    def _killable():
        # One fork server for the whole run: it takes longer to start than a deploy.
        global KILLABLE  # noqa: PLW0603
        if KILLABLE is None:
            KILLABLE = Killable(os.path.join(tempfile.mkdtemp(prefix="envflow-kill-"), "failure"))
            atexit.register(KILLABLE.close)
        return KILLABLE

    def teardown(self):
        self.mirror.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _next(self):
        self.count += 1
        return self.count

    def _hand(self):
        # Its own count: a standby edit happens or not as earlier kills landed, and commits must not differ by it.
        self.hand_count += 1
        return self.hand_count

    # -- commits --------------------------------------------------------

    def _new_path(self, data, tree, leaf=None):
        parent = data.draw(st.sampled_from(sorted({"", *parents(tree)})), label="parent")
        depth = data.draw(st.sampled_from((0, 0, 1, 1, 2, 6)), label="new directories")
        parts = ([parent] if parent else []) + [data.draw(st.sampled_from(DIR_NAMES)) for _ in range(depth)]
        path = "/".join([*parts, leaf or data.draw(st.sampled_from(LEAF_NAMES), label="name")])
        if not is_free(tree, path):
            path = "/".join([*([parent] if parent else []), f"n{self._next()}.sls"])
        return path

    def _content(self, data, path, like=None):
        kind = data.draw(st.sampled_from(("text", "text", "same size", "empty", "crlf", "binary", "big")))
        number = self._next()
        if kind == "same size" and like:
            return like[:-1] + bytes([like[-1] ^ 0x01])
        if kind == "empty":
            return b""
        if kind == "crlf":
            return b"# %s\r\nline %d\r\n" % (path.encode(), number)
        if kind == "binary":
            return bytes([0, 255, number % 256, 10, 0])
        if kind == "big":
            return b"# %d\n" % number + b"x" * 70_000
        return b"# %s v%d\n" % (path.encode(), number)

    def _file(self, data, path, like=None):
        executable = data.draw(st.sampled_from((False, False, True)), label="executable")
        return File(self._content(data, path, like), executable)

    def _target(self, data, tree, path):
        """A symlink target for ``path``: into the tree, out of it, round in circles, or nowhere."""
        here = os.path.dirname(path)
        up = "../" * (path.count("/") + 1)  # from the link's directory to just above the root
        choices = [
            "/etc/passwd",
            "/",
            up + "x",
            up.rstrip("/"),
            "../../..",
            ".",
            "..",
            "nowhere",
            "missing/deeper/file",
            os.path.basename(path),
            up + "a/top.sls",  # out, and back into one of the engine's own trees
            up + "../stage/top.sls",  # out, and back in through the environment path
        ]
        choices += [relative(file, here) for file in files_of(tree)[:8]]
        choices += [relative(directory, here) for directory in sorted(parents(tree))[:8]]
        choices += [relative(submodule, here) for submodule in gitlinks_of(tree)[:4]]
        for link in links_of(tree)[:6]:
            choices += [relative(link, here) + suffix for suffix in ("", "/..", "/../..", "/init.sls")]
        return data.draw(st.sampled_from(choices), label="target")

    def _edited(self):
        # Less the root .gitmodules: History writes it from the gitlinks, a tree never holds it itself.
        return sorted(path for path in self.touched | self.standby_touched if path.split("/")[0] != ".gitmodules")

    def _pick(self, data, paths, label):
        return data.draw(st.sampled_from(sorted(paths)), label=label) if paths else None

    def _change(self, data, tree, kind, holder="main"):
        """Apply one change of ``kind`` to ``tree``, in place; ``holder`` names its repository (see PINNABLE)."""
        if kind in SUBMODULE_CHANGES and self._change_submodules(data, tree, kind, holder):
            return
        files, links, dirs = files_of(tree), links_of(tree), sorted(parents(tree))
        if kind == "edit" and files:
            path = self._pick(data, files, "edited")
            tree[path] = File(self._content(data, path, tree[path].data), tree[path].executable)
        elif kind == "delete" and tree:
            del tree[self._pick(data, tree, "deleted")]
        elif kind == "rename" and tree:
            old = self._pick(data, tree, "renamed")
            entry = tree.pop(old)
            tree[self._new_path(data, tree)] = entry
        elif kind == "exec" and files:
            path = self._pick(data, files, "exec bit flipped")
            tree[path] = File(tree[path].data, not tree[path].executable)
        elif kind == "file_to_dir" and files:
            path = self._pick(data, files, "file made a directory")
            del tree[path]
            for name in ("inside.sls", "init.sls")[: data.draw(st.integers(1, 2))]:
                tree[f"{path}/{name}"] = self._file(data, f"{path}/{name}")
        elif kind == "dir_to_file" and dirs:
            directory = self._pick(data, dirs, "directory made a file")
            for path in [path for path in tree if path.startswith(directory + "/")]:
                del tree[path]
            tree[directory] = self._file(data, directory)
        elif kind == "file_to_link" and files:
            path = self._pick(data, files, "file made a symlink")
            tree[path] = Link(self._target(data, tree, path))
        elif kind == "link_to_file" and links:
            path = self._pick(data, links, "symlink made a file")
            tree[path] = self._file(data, path)
        elif kind == "link":
            path = self._new_path(data, tree)
            tree[path] = Link(self._target(data, tree, path))
        elif kind == "cycle":
            # a/l -> ../b with b/l -> ../a: each leads into the other's directory
            first, second = (f"c{self._next()}", f"c{self._next()}")
            if data.draw(st.booleans(), label="cycle through existing directories") and len(dirs) >= 2:
                first, second = data.draw(st.permutations(dirs), label="cycle")[:2]
            for here, there in ((first, second), (second, first)):
                path = f"{here}/to_{os.path.basename(there)}"
                if is_free(tree, path):
                    tree[path] = Link(relative(there, here))
        elif kind == "gitignore":
            directory = self._pick(data, ["", *dirs], "ignoring directory")
            prefix = f"{directory}/" if directory else ""
            rules = data.draw(st.lists(st.sampled_from(IGNORE_RULES), min_size=1, max_size=3, unique=True))
            if is_free(tree, prefix + ".gitignore") or isinstance(tree.get(prefix + ".gitignore"), File):
                tree[prefix + ".gitignore"] = File("".join(rules).encode())
            for name in (f"k{self._next()}.bak", f"build/b{self._next()}.sls", f"ignored{self._next()}", "x"):
                if is_free(tree, prefix + name) and data.draw(st.booleans(), label=f"commit ignored {name}"):
                    tree[prefix + name] = self._file(data, prefix + name)
        elif kind == "retype" and self._edited():
            # What was edited by hand, in the served tree or the standby, changes type: the engine must not trip on it.
            path = self._edited()[data.draw(st.integers(0, 999), label="retyped") % len(self._edited())]
            for inside in [inside for inside in tree if inside == path or inside.startswith(path + "/")]:
                del tree[inside]
            for parent in parents([path]):
                if isinstance(tree.get(parent), Gitlink):
                    del tree[parent]  # the edit was inside a submodule: a folder of the same name replaces it
            if any(parent in tree for parent in parents([path])):
                return
            how = data.draw(st.sampled_from(("directory", "link", "file")), label="retyped to")
            if how == "directory":
                tree[f"{path}/inside.sls"] = self._file(data, f"{path}/inside.sls")
            elif how == "link":
                tree[path] = Link(self._target(data, tree, path))
            else:
                tree[path] = self._file(data, path)
        elif kind == "empty_dir" and dirs:
            directory = self._pick(data, dirs, "emptied directory")
            for path in [path for path in tree if path.startswith(directory + "/")]:
                del tree[path]
        elif kind == "batch":
            how = data.draw(st.sampled_from(("add", "add", "edit", "delete", "rename")), label="batch")
            size = data.draw(st.integers(12, 60), label="batch size")
            if how == "add":
                base = self._new_path(data, tree, leaf=f"batch{self._next()}")
                for number in range(size):
                    tree[f"{base}/d{number % 5}/f{number}.sls"] = File(b"# %d %d\n" % (self.count, number))
            else:
                chosen = files[:: max(1, len(files) // size)][:size]
                for path in chosen:
                    if how == "edit":
                        tree[path] = File(self._content(data, path, tree[path].data), tree[path].executable)
                    elif how == "delete":
                        del tree[path]
                    else:
                        entry = tree.pop(path)
                        new = f"moved{self.count}/{path}"
                        if is_free(tree, new):
                            tree[new] = entry
        else:  # "add", and whatever found nothing to change
            path = self._new_path(data, tree)
            tree[path] = self._file(data, path)

    # -- submodules -----------------------------------------------------

    def _formula(self, data, name):
        """The formula repository ``name``'s history, made with a few commits of its own when first pinned."""
        if name not in self.formulas:
            self.formulas[name] = History(os.path.join(self.tmp, f"{name}.git"))
            tree = {
                f"{name}/init.sls": File(b"# %s\n" % name.encode()),
                f"{name}/map.jinja": File(b"{%% set %s = {} %%}\n" % name.encode()),
            }
            for inner in PINNABLE[name]:  # nginx starts with maps nested in it
                tree[f"{name}/{inner}"] = self._gitlink(data, tree, f"{name}/{inner}", name, inner)
            self._formula_commit(data, name, tree)
            for _ in range(data.draw(st.integers(0, 1), label=f"more {name} commits")):
                self._formula_commit(data, name)
        return self.formulas[name]

    def _formula_commit(self, data, name, tree=None):
        """Commit random changes to formula ``name`` (or ``tree`` as it is); return the commit's id."""
        history = self.formulas[name]
        kinds = []
        if tree is None:
            tree = dict(self.formula_trees[history.commits[-1]])
            changes = FORMULA_CHANGES + (SUBMODULE_CHANGES if PINNABLE[name] else ())
            kinds = data.draw(st.lists(st.sampled_from(changes), min_size=1, max_size=2), label=f"{name} changes")
            for kind in kinds:
                self._change(data, tree, kind, holder=name)
            if not tree:  # a submodule's empty tree serves an empty folder, which no file of git's view shows
                path = self._new_path(data, tree)
                tree[path] = self._file(data, path)
        # Its name in each message: two formulas given the same tree still make different commits.
        commit = history.commit(tree, message=f"{name}: {', '.join(kinds) or 'first'}")
        self.formula_trees[commit] = dict(tree)
        self.formula_of[commit] = name
        return commit

    def _gitlink(self, data, tree, path, holder, name=None):
        """A gitlink for ``path`` of ``tree`` (of ``holder``) to a commit of a formula it may pin (``name``)."""
        name = name or data.draw(st.sampled_from(PINNABLE[holder]), label="formula")
        history = self._formula(data, name)
        pin = data.draw(st.sampled_from(history.commits), label=f"{name} pinned")
        if holder == "main":
            # The main remote is local: an absolute path, a file:// URL, or relative to the main remote's URL.
            urls = (history.path, f"file://{history.path}", f"../{name}.git")
        else:
            urls = (f"../{name}.git", f"../{name}.git", history.path)  # nested: mostly relative to its parent's
        taken = {entry.name for entry in tree.values() if isinstance(entry, Gitlink)}
        module = path if path not in taken else f"{path}-{self._next()}"  # a moved one keeps its name
        return Gitlink(pin, data.draw(st.sampled_from(urls), label=f"url of {name}"), module)

    def _composed(self, tree, mounts=None):
        """``tree`` as served: each gitlink replaced by the files of the tree it pins, with ``.gitmodules``.

        Adds the paths of the submodules, nested ones too, to ``mounts``.
        """
        served = {}
        modules = gitmodules(tree)
        if modules is not None:
            served[".gitmodules"] = File(modules)
        for path, entry in tree.items():
            if isinstance(entry, Gitlink):
                inner_mounts = set()
                inner = self._composed(self.formula_trees[entry.commit], inner_mounts)
                served.update({f"{path}/{name}": held for name, held in inner.items()})
                if mounts is not None:
                    mounts.update({path, *(f"{path}/{mount}" for mount in inner_mounts)})
            else:
                served[path] = entry
        return served

    def _change_submodules(self, data, tree, kind, holder):
        """Apply one submodule change of ``kind`` to ``tree``, in place; ``False`` when it finds none to make."""
        if not PINNABLE[holder]:
            return False
        submodules, dirs = gitlinks_of(tree), sorted(parents(tree))
        if kind == "submodule" or (kind in ("pin", "unpin", "move_submodule", "to_folder") and not submodules):
            leaf = data.draw(st.sampled_from((*PINNABLE[holder], "formula")), label="submodule at")
            path = self._new_path(data, tree, leaf=leaf)
            tree[path] = self._gitlink(data, tree, path, holder)
        elif kind == "pin":
            path = self._pick(data, submodules, "pin moved")
            name = self.formula_of[tree[path].commit]
            # Any commit the formula has, older or newer, or one it gets now: its remote's mirror lacks that one.
            pin = data.draw(st.sampled_from([*self.formulas[name].commits, "new"]), label=f"{name} pinned")
            if pin == "new":
                pin = self._formula_commit(data, name)
            tree[path] = dataclasses.replace(tree[path], commit=pin)
        elif kind == "unpin":
            del tree[self._pick(data, submodules, "submodule removed")]
        elif kind == "move_submodule":
            path = self._pick(data, submodules, "submodule moved")
            self.former_submodules.add(path)
            entry = tree.pop(path)
            tree[self._new_path(data, tree, leaf=os.path.basename(path))] = entry
        elif kind == "to_folder":
            path = self._pick(data, submodules, "submodule made a folder")
            self.former_submodules.add(path)
            entry = tree.pop(path)
            if data.draw(st.booleans(), label="the folder holds the submodule's files"):
                copied = self._composed(self.formula_trees[entry.commit])
                tree.update({f"{path}/{name}": held for name, held in copied.items()})
                inside = files_of(copied)
                if inside and data.draw(st.booleans(), label="one of them changed"):
                    name = self._pick(data, inside, "changed in the folder")
                    tree[f"{path}/{name}"] = self._file(data, f"{path}/{name}", copied[name].data)
            else:
                tree[f"{path}/init.sls"] = self._file(data, f"{path}/init.sls")
        elif kind == "from_folder" and dirs:
            # A folder that held a submodule once, when there is one: the way back.
            path = self._pick(data, [path for path in dirs if path in self.former_submodules] or dirs, "folder")
            for inside in [inside for inside in tree if inside.startswith(path + "/")]:
                del tree[inside]
            tree[path] = self._gitlink(data, tree, path, holder)
        else:
            return False
        return True

    def _commit(self, data, tree):
        kinds = data.draw(
            st.lists(
                st.sampled_from(
                    (
                        "add",
                        "edit",
                        "delete",
                        "rename",
                        "exec",
                        "file_to_dir",
                        "dir_to_file",
                        "file_to_link",
                        "link_to_file",
                        "link",
                        "link",
                        "cycle",
                        "gitignore",
                        "empty_dir",
                        "batch",
                        "retype",
                        *SUBMODULE_CHANGES,
                        "submodule",
                        "pin",
                    )
                ),
                min_size=1,
                max_size=4,
            ),
            label="changes",
        )
        if self._edited() and data.draw(st.booleans(), label="retype a path edited by hand"):
            kinds.insert(0, "retype")  # where the engine must repair a tree before it updates it
        for kind in kinds:
            self._change(data, tree, kind)
        commit = self.history.commit(tree, message=", ".join(kinds))
        self.tree = tree
        self.mounts[commit] = set()
        self.trees[commit] = self._composed(tree, self.mounts[commit])
        self.mirror.fetch()
        return commit

    def _expected(self, commit):
        if commit not in self.wanted:
            want = expected(self.history.path, commit)
            tree = self.trees[commit]
            # The fixture itself: git holds exactly the tree these tests gave it.
            assert {**want.files, **want.links, **want.unsafe} == {
                path: (blob_id(entry.data), entry.executable) if isinstance(entry, File) else entry.target
                for path, entry in tree.items()
            }
            self.wanted[commit] = want
        return self.wanted[commit]

    # -- checks ---------------------------------------------------------

    def _problems(self, commit):
        return differences(self._expected(commit), on_disk(self.path))

    def _check_serves(self, commit, result=None):
        assert os.path.islink(self.path), f"{self.path} is not a symlink"
        assert os.path.isdir(self.path), f"{self.path} leads to no directory"
        problems = self._problems(commit)
        if problems:
            want = self._expected(commit)
            links = [f"{path} -> {target}" for path, target in sorted(want.links.items())]
            links += [f"{path} -> {target} (unsafe)" for path, target in sorted(want.unsafe.items())]
            raise AssertionError(
                f"{self.path} does not serve {commit[:10]} exactly:\n  "
                + "\n  ".join(problems[:25])
                + "\nthe commit's symlinks:\n  "
                + "\n  ".join(links[:40])
            )
        assert served_commit(self.path) == commit
        if result is not None:
            assert refused_links(result) == sorted(self._expected(commit).unsafe), "refused_links"

    def _deploy(self, commit, force=False):
        if self.hand_edits:
            before = snapshot(self.path), deployed(self.path)
            with pytest.raises(Refused) as refused:
                deploy(self.path, self.mirror, commit, two_threads=self.two_threads)
            assert any(refused.value.changes.values()), "the refusal names no edit"
            assert (snapshot(self.path), deployed(self.path)) == before, "a refused deploy changed the served tree"
            force = True
        switches = commit != self.served or bool(self.hand_edits)
        started = time.monotonic()
        result = deploy(self.path, self.mirror, commit, force=force, two_threads=self.two_threads)
        self.deploy_seconds = (self.deploy_seconds + time.monotonic() - started) / 2
        if switches:  # the tree served until now, hand edits and all, is the standby now
            self.standby, self.standby_touched = self.served, self.touched
        self.served, self.hand_edits, self.touched = commit, [], set()
        self._check_serves(commit, result)
        unsafe = len(self._expected(commit).unsafe)
        event(f"deploy with {unsafe} unsafe links" if unsafe else "deploy")
        mounts = self.mounts[commit]
        event("deploy with submodules" if mounts else "deploy without submodules")
        if any(inner.startswith(mount + "/") for mount in mounts for inner in mounts):
            event("deploy with nested submodules")
        return result

    @invariant()
    def serves_its_commit(self):
        if self.served and not self.hand_edits:
            self._check_serves(self.served)

    # -- steps ----------------------------------------------------------

    @initialize(data=st.data(), in_the_way=st.booleans(), two_threads=st.booleans())
    def first_deploy(self, data, in_the_way, two_threads):
        # Whole trees (a first deploy, a standby made again) are written by two threads from 2,000 files on, and
        # a served index from about 5,000 entries is read on a thread while the standby is checked: half the
        # examples take those paths at their small sizes.
        self.two_threads = two_threads
        event("two-thread paths at every size" if two_threads else "two-thread paths for large trees only")
        os.makedirs(self.path if in_the_way else os.path.dirname(self.path))  # as salt-master makes file_roots
        self._deploy(self._commit(data, dict(START)))

    @rule(data=st.data(), deploy_it=st.sampled_from((True, True, True, False)), force=st.booleans())
    def commit(self, data, deploy_it, force):
        commit = self._commit(data, dict(self.tree))
        if deploy_it:
            self._deploy(commit, force=force)

    @rule(data=st.data(), force=st.booleans())
    def deploy_a_commit(self, data, force):
        """Any commit: an older one, the tip, or the one served (which must write nothing)."""
        commit = data.draw(st.sampled_from(self.history.commits), label="commit")
        before = snapshot(self.path) if commit == self.served and not self.hand_edits else None
        self._deploy(commit, force=force)
        if before is not None:
            assert snapshot(self.path) == before, "deploying the served commit wrote to it"

    @rule(kind=st.sampled_from(HAND_EDITS), pick=PICK, name=st.sampled_from(HAND_NAMES), data=st.data())
    def edit_the_served_tree(self, kind, pick, name, data):
        what = self._edit(self.path, self.served, kind, pick, name, self.touched, self.standby_touched)
        if what:
            self.hand_edits.append(what)
        self._maybe_deploy(data)

    @rule(kind=st.sampled_from(STANDBY_EDITS), pick=PICK, name=st.sampled_from(HAND_NAMES), data=st.data())
    def edit_the_standby_tree(self, kind, pick, name, data):
        standby = slots(self.path)[1]
        what = None
        if self.standby is not None and standby is not None:
            what = self._edit(standby, self.standby, kind, pick, name, self.standby_touched, self.touched)
        if what and not self.hand_edits and self._problems(self.served):
            self.hand_edits.append(f"{what} (in the standby, seen in the served tree)")
        self._maybe_deploy(data)

    def _maybe_deploy(self, data):
        """After an edit: go on editing, or deploy the served commit, the tip or any commit."""
        then = data.draw(st.sampled_from(("edit more", "served", "tip", "any")), label="then")
        if then != "edit more":
            commits = {"served": [self.served], "tip": self.history.commits[-1:], "any": self.history.commits}[then]
            self._deploy(data.draw(st.sampled_from(commits), label="commit"))

    @precondition(lambda self: not self.hand_edits)
    @rule(data=st.data(), fraction=st.integers(0, 120))
    def kill_a_deploy(self, data, fraction):
        """SIGKILL a deploy ``fraction`` percent into its usual time: one whole tree stays served."""
        old = self.served
        target = data.draw(st.sampled_from(self.history.commits), label="commit")
        killable = self._killable()
        killable.start(self.path, self.history.path, self.cache, target, self.two_threads)
        time.sleep(self.deploy_seconds * fraction / 100)
        code, failure = killable.kill()
        killed = code == -signal.SIGKILL
        event("kill: deploy interrupted" if killed else "kill: deploy had finished")
        assert killed or code == 0, f"the deploy the kill came too late for failed:\n{failure}"
        now = served_commit(self.path)
        assert now in {old, target}, f"after a kill {self.path} serves {now}, neither {old} nor {target}"
        if not killed:
            assert now == target
        self.served = now
        self._check_serves(now)
        self._deploy(data.draw(st.sampled_from([target, old, self.history.commits[-1]]), label="then"))
        # Which tree the standby holds now depends on where the kill landed: what is drawn next must not.
        self.standby, self.standby_touched = None, set()

    # -- edits by hand ----------------------------------------------------

    def _edit(self, root, commit, kind, pick, name, touched, touched_there):
        """Edit the tree at ``root``, which holds ``commit``, as a person would; return what was done, or ``None``.

        What to edit is chosen by ``pick`` among what ``commit`` holds, not
        among what is on disk, so that the draws never depend on the disk.
        Paths in ``touched`` (edited before) are left alone, and added to.
        So are those of ``touched_there``, edited in the other tree: the two
        trees share unchanged files by hard link, and a second edit of one
        (the same byte flipped back) would undo the first, unseen by the model.
        """

        def untouched(path):
            return not any(path == done or path.startswith(done + "/") for done in touched | touched_there)

        def choose(paths):
            return sorted(paths)[pick % len(paths)]

        tree, want = self.trees[commit], self._expected(commit)
        files = [path for path in files_of(tree) if untouched(path)]
        full_files = [path for path in files if tree[path].data]
        dirs = [path for path in ["", *want.dirs] if untouched(path)]
        name = name.format(f"{self._hand()}h")  # never the name of a committed file (those count apart)
        if kind in ("append", "same_size_and_mtime", "delete", "chmod_x", "file_to_dir") and not files:
            kind = "add_file"
        if kind == "same_size_and_mtime" and not full_files:
            kind = "append"
        if kind == "delete":
            path = choose(files + [path for path in want.links if untouched(path)])
        elif kind in ("append", "chmod_x", "file_to_dir"):
            path = choose(files)
        elif kind == "same_size_and_mtime":
            path = choose(full_files)
        else:
            path = choose(dirs)  # where to add
        full = os.path.join(root, path)
        if path in want.links:
            as_committed = os.path.islink(full)
        elif path in tree:
            as_committed = os.path.isfile(full) and not os.path.islink(full)
        else:
            as_committed = os.path.isdir(full) and not os.path.islink(full)
        if not as_committed:
            return None  # the engine keeps this tree otherwise than the commit has it: nothing to edit there
        if kind == "append":
            with open(full, "ab") as handle:
                handle.write(b"# by hand\n")
        elif kind == "same_size_and_mtime":
            info = os.stat(full)
            with open(full, "r+b") as handle:
                content = handle.read()
                handle.seek(0)
                handle.write(content[:-1] + bytes([content[-1] ^ 0x01]) if content else b"x")
            os.utime(full, ns=(info.st_atime_ns, info.st_mtime_ns))
        elif kind == "delete":
            os.unlink(full)
        elif kind == "chmod_x":
            mode = stat.S_IMODE(os.stat(full).st_mode)
            os.chmod(full, mode & ~0o111 if mode & 0o111 else mode | 0o111)
        elif kind == "file_to_dir":
            os.unlink(full)
            os.mkdir(full)
            with open(os.path.join(full, "inside.sls"), "wb") as handle:
                handle.write(b"# by hand\n")
        elif kind == "add_symlink":
            path = os.path.join(path, name)
            target = ("/etc/passwd", "nowhere", "../" * (path.count("/") + 1) + "x")[pick % 3]
            os.symlink(target, os.path.join(root, path))
        elif kind == "empty_dir":
            path = os.path.join(path, name + ".d")
            os.mkdir(os.path.join(root, path))
        else:
            if kind == "add_file_in_new_dir":
                path = os.path.join(path, f"new{self._hand()}")
                os.makedirs(os.path.join(root, path, "deeper"))
                touched.add(path)
                path = os.path.join(path, "deeper")
            path = os.path.join(path, name)
            with open(os.path.join(root, path), "wb") as handle:
                handle.write(b"# by hand\n")
        touched.add(path)
        if any(path.startswith(mount + "/") for mount in self.mounts[commit]):
            event("edit by hand inside a submodule")
        return f"{kind} {path}"


PROFILE = settings.get_current_profile_name()
PROFILE = PROFILE if PROFILE.startswith("engine-") else "engine-ci"
TestEngineModel = EngineModel.TestCase
TestEngineModel.settings = settings.get_profile(PROFILE)
