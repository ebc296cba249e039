"""Whole trees (a first deploy, a standby made again) are written by two threads once they are large.

Each deploy below is checked as in ``test_engine_model.py``: ``path`` serves
exactly what git says the commit holds, less the symlinks ``tests.engine``
rules out, with no other file, link or directory; and both slots stay sound
for the deploys after it.
"""

import os
import tempfile

import hypothesis
import pygit2
import pytest
from pygit2.enums import FileMode

from envflow import checkout, slots
from envflow.remote import Mirror
from envflow.served import ServedDir
from tests.engine import File, History, Link, deploy, differences, expected, on_disk, served_commit, whole_trees_in_two

# Just over the size from which the engine writes a whole tree by two threads, spread over directories.
LARGE = checkout._TWO_THREADS_FROM + 300  # pylint: disable=protected-access


def large_tree(version):
    tree = {f"states/role{number % 40:02d}/state{number:04d}.sls": File(b"# %d\n" % number) for number in range(LARGE)}
    tree.update(
        {
            "top.sls": File(b"base:\n  '*':\n    - states\n"),
            "run.sh": File(b"#!/bin/sh\n", executable=True),
            "states/role00/same.sls": Link("state0000.sls"),
            "leak": Link("/etc/passwd"),
            "changes.sls": File(b"# version %d\n" % version),
        }
    )
    return tree


@pytest.fixture
def env(tmp_path):
    history = History(str(tmp_path / "automation.git"))
    with Mirror(history.path, str(tmp_path / "cache")) as mirror:
        yield history, mirror, str(tmp_path / "srv" / "stage")


def _serves_exactly(history, path):
    assert differences(expected(history.path, served_commit(path)), on_disk(path)) == []


def test_a_large_tree_is_served_exactly_first_then_changed_then_with_its_standby_made_again(env):
    history, mirror, path = env
    first = history.commit(large_tree(1))
    mirror.fetch()
    result = deploy(path, mirror, first)
    assert result["files"]["added"] == LARGE + 5
    assert [link["path"] for link in result["refused_links"]] == ["leak"]
    _serves_exactly(history, path)

    second = history.commit({**large_tree(2), "new/file.sls": File(b"# new\n")})
    mirror.fetch()
    result = deploy(path, mirror, second)
    assert result["files"] == {"added": 1, "modified": 1, "deleted": 0}
    _serves_exactly(history, path)

    # The standby lost (its record gone) and the served tree edited by hand: the standby is linked again from
    # the served tree, the edited file written from the repository, and force discards the edit.
    served = ServedDir(path)
    served.layout.drop_record(served.layout.other(served.layout.served_slot()))
    with open(os.path.join(path, "states/role07/state0007.sls"), "ab") as handle:
        handle.write(b"# by hand\n")
    third = history.commit(large_tree(3))
    mirror.fetch()
    result = deploy(path, mirror, third, force=True)
    assert result["discarded"]["modified"] == ["states/role07/state0007.sls"]
    _serves_exactly(history, path)
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}

    # Both slots are sound: back to the first commit and forward again, each exact.
    for commit in (first, third):
        deploy(path, mirror, commit)
        _serves_exactly(history, path)


def test_a_failure_in_the_second_thread_is_raised_once_both_halves_are_written(env, tmp_path):
    history, mirror, _path = env
    commit = history.commit({f"d{number % 7}/f{number}": File(b"%d\n" % number) for number in range(40)})
    mirror.fetch()
    repo = pygit2.Repository(mirror.repo.path)
    tree = repo[commit].peel(pygit2.Tree)
    entries = {path: (oid, mode) for path, oid, mode in checkout.walk(tree)}
    share = tmp_path / "share"
    share.mkdir()
    checkout.TreeWriter(repo, str(share)).fill(tree)
    last = list(entries)[-1]
    os.unlink(share / last)  # the second half's last link has nothing to link to
    root = tmp_path / "slot"
    root.mkdir()
    with whole_trees_in_two(), pytest.raises(FileNotFoundError):
        checkout.TreeWriter(repo, str(root), share_root=str(share)).link_all(entries)
    linked = {path for path in entries if os.path.lexists(root / path)}
    assert linked == set(entries) - {last}, "a half was left unwritten"


_NAMES = hypothesis.strategies.sampled_from(["a", "b", "a-b", "a.b", "a0", "é", "sp ace", "Z", "x" * 40])
_PATHS = hypothesis.strategies.lists(_NAMES, min_size=1, max_size=3).map("/".join)
# What stands at each path of the index: a file, an executable, a symlink, nothing (a refused link), a directory.
_ON_DISK = hypothesis.strategies.sampled_from(["file", "executable", "link", "nothing", "directory"])
_MODES = {"file": FileMode.BLOB, "executable": FileMode.BLOB_EXECUTABLE, "link": FileMode.LINK}


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    return pygit2.init_repository(str(tmp_path_factory.mktemp("objects") / "repo.git"), bare=True)


@hypothesis.settings(deadline=None, max_examples=100)
@hypothesis.given(files=hypothesis.strategies.dictionaries(_PATHS, _ON_DISK, min_size=1, max_size=12))
def test_a_whole_trees_index_file_is_the_one_libgit2_writes_for_the_same_entries(objects, files):
    """``checkout.index_file`` (a whole tree's index, written directly) against ``index_entries`` into libgit2's empty
    index, then written: the same bytes, and the same stamps."""
    files = {path: kind for path, kind in files.items() if not any(other.startswith(path + "/") for other in files)}
    with tempfile.TemporaryDirectory() as scratch:
        root = os.path.join(scratch, "tree")
        entries = {}
        for number, (path, kind) in enumerate(sorted(files.items())):
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            content = b"# %d\n" % number
            if kind == "link":
                os.symlink(content, full)
            elif kind == "directory":
                os.mkdir(full)
            elif kind != "nothing":
                with open(full, "wb") as handle:
                    handle.write(content)
                os.chmod(full, 0o755 if kind == "executable" else 0o644)
            entries[path] = (objects.create_blob(content), _MODES.get(kind, FileMode.BLOB))
        ours = checkout.index_file(os.path.join(scratch, "ours"), root, entries)
        index = slots.open_index(os.path.join(scratch, "libgit2s"))
        theirs = checkout.index_entries(index, root, entries)
        index.write()
        with open(os.path.join(scratch, "ours"), "rb") as mine, open(os.path.join(scratch, "libgit2s"), "rb") as other:
            assert mine.read() == other.read()
        assert ours == theirs
        assert set(ours) == {path for path, kind in files.items() if kind in _MODES}
        assert [entry.path for entry in slots.open_index(os.path.join(scratch, "ours"))] == sorted(
            ours, key=os.fsencode
        )
