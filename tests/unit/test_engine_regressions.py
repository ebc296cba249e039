"""One minimal test per defect the engine had, each the smallest history that showed it.

What is checked is the same as in ``test_engine_model.py``: ``path`` serves
exactly what git says the commit holds, less the symlinks ``tests.engine``
rules out, with no other file, link or directory.
"""

import os
import shutil

import pytest

from envflow.remote import Mirror
from tests.engine import (
    File,
    History,
    Link,
    Refused,
    deploy,
    differences,
    expected,
    on_disk,
    refused_links,
    served_commit,
    slots,
)

TOP = {"top.sls": File(b"base:\n  '*':\n    - web\n"), "web/init.sls": File(b"# web\n")}


class Env:
    """A repository and one environment path deployed from it."""

    def __init__(self, root):
        self.history = History(os.path.join(root, "automation.git"))
        self.mirror = Mirror(self.history.path, os.path.join(root, "cache"))
        self.path = os.path.join(root, "srv", "stage")

    def commit(self, tree):
        commit = self.history.commit(tree)
        self.mirror.fetch()
        return commit

    def deploy(self, rev, force=False):
        return deploy(self.path, self.mirror, rev, force=force)

    def step(self, tree, force=False):
        """Commit ``tree``, deploy it; return the result."""
        return self.deploy(self.commit(tree), force=force)

    def differences(self):
        """How what ``path`` serves differs from the commit it says it serves."""
        return differences(expected(self.history.path, served_commit(self.path)), on_disk(self.path))

    def standby(self):
        return slots(self.path)[1]


@pytest.fixture
def env(tmp_path):
    made = Env(str(tmp_path))
    yield made
    made.mirror.close()


def variant(number, tree=None):
    """``tree`` (or the usual top file) with one more file: a commit unlike the one before."""
    return {**(tree or TOP), "changes.sls": File(b"# %d\n" % number)}


# -- symlinks -------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_an_outward_link_is_refused_on_a_reused_standby(env, force):
    """Once a slot is reused, the new links came from a second pass over an exhausted iterator of deltas: none."""
    for number in range(3):
        env.step(variant(number))
    result = env.step({**variant(3), "leak": Link("/etc/passwd")}, force=force)
    assert not os.path.lexists(os.path.join(env.path, "leak")), "leak -> /etc/passwd is served"
    assert "leak" in refused_links(result)
    again = env.deploy(env.history.commits[-1], force=True)
    assert not os.path.lexists(os.path.join(env.path, "leak")), "leak -> /etc/passwd is served after force=True"
    assert "leak" in refused_links(again)


def test_a_link_out_and_back_in_through_the_engine_directory_is_refused_in_either_slot(env):
    """``../a/top.sls`` leaves the tree; the engine serves it only in slot ``a``, where it resolves back inside."""
    tree = {**TOP, "back": Link("../a/top.sls"), "across": Link("../b/top.sls")}
    for number in range(2):
        result = env.step(variant(number, tree))
        slot = os.readlink(env.path)
        assert not os.path.lexists(os.path.join(env.path, "back")), f"back -> ../a/top.sls is served from {slot}"
        assert not os.path.lexists(os.path.join(env.path, "across")), f"across -> ../b/top.sls is served from {slot}"
        assert refused_links(result) == ["across", "back"]


def test_a_link_refused_for_a_cycle_is_served_once_the_cycle_is_broken(env):
    """A refused link stays refused on a reused slot while its own entry is unchanged, whatever else changed."""
    env.step({**TOP, "c1/to_c2": Link("../c2"), "c2/to_c1": Link("../c1")})
    env.step({**TOP, "c1/to_c2": Link("../c2"), "c2/to_c1": Link("../c1"), "more.sls": File(b"# more\n")})
    result = env.step({**TOP, "c1/to_c2": Link("../c2")})  # c2 is gone: c1/to_c2 dangles inside the tree
    assert os.path.islink(os.path.join(env.path, "c1", "to_c2")), "c1/to_c2 is still refused"
    assert refused_links(result) == []
    assert env.differences() == []


def test_a_refused_link_becomes_a_file(env):
    env.step({**TOP, "l": Link("/etc/passwd")})
    env.step(variant(1, {**TOP, "l": Link("/etc/passwd")}))
    env.step({**TOP, "l": File(b"# now a file\n")})
    assert env.differences() == []


@pytest.mark.parametrize(
    ("before", "after"),
    [(Link("top.sls"), File(b"# now a file\n")), (File(b"# a file\n"), Link("top.sls"))],
    ids=["link-to-file", "file-to-link"],
)
def test_a_type_change_is_written_where_the_standby_lost_the_entry(env, before, after):
    """A file <-> symlink change of a path deleted by hand in the standby is not written at all."""
    env.step({**TOP, "entry": before})
    env.step(variant(1, {**TOP, "entry": before}))
    os.unlink(os.path.join(env.standby(), "entry"))
    env.step({**TOP, "entry": after})
    assert env.differences() == []


def test_a_refused_link_leaves_no_empty_directory(env):
    """``d`` holds nothing that may be served: serving it empty is a directory the commit does not make."""
    env.step({**TOP, "d/leak": Link("/etc/passwd")})
    assert not os.path.lexists(os.path.join(env.path, "d")), "the empty directory d is served"


# -- file <-> directory ---------------------------------------------------------

EXEC_ON = {**TOP, "run.sh": File(b"#!/bin/sh\n", executable=True)}
EXEC_OFF = {**TOP, "run.sh": File(b"#!/bin/sh\n")}


def _delete(path):
    os.unlink(path)


def _modify(path):
    with open(path, "ab") as handle:
        handle.write(b"# by hand\n")


def _chmod(path):
    os.chmod(path, 0o755)


@pytest.mark.parametrize("edit", [_delete, _modify, _chmod], ids=["deleted", "modified", "chmod"])
def test_a_file_becomes_a_directory_where_the_standby_copy_was_edited(env, edit):
    """Fails with ``odb: cannot read object: null OID cannot exist``.

    Three deploys (the standby reused), then ``a`` becomes ``a/inside.sls``
    with an exec-bit change of another file. The recipe fails only when the
    reused standby's ``a`` was edited or removed: the engine removes the edited
    copy, then the checkout of the type change reads a null blob.

    Both slots share ``a`` (unchanged between their commits) as one file: an
    edit in place of the standby's copy is an edit of the served tree, refused
    as one and then discarded with ``force=True``; a deletion only touches the standby.
    """
    env.step({**EXEC_OFF, "a": File(b"# a file\n")})
    env.step(variant(1, {**EXEC_OFF, "a": File(b"# a file\n")}))
    edit(os.path.join(env.standby(), "a"))
    commit = env.commit({**EXEC_ON, "a/inside.sls": File(b"# inside\n")})
    if edit is _delete:
        env.deploy(commit)
    else:
        served = served_commit(env.path)
        with pytest.raises(Refused) as refused:
            env.deploy(commit)
        assert refused.value.changes["modified"] == ["a"]
        assert served_commit(env.path) == served
        env.deploy(commit, force=True)
    assert env.differences() == []


def test_a_file_made_a_directory_by_hand_then_by_a_commit_deploys(env):
    """Fails with ``null OID cannot exist``: a hot fix by hand, discarded with force=True, then committed properly.

    The discarded edit stays in the old tree, the standby now; the next
    deploy brings that tree up to date and trips on it.
    """
    env.step({**TOP, "a": File(b"# a file\n")})
    env.step(variant(1, {**TOP, "a": File(b"# a file\n")}))
    os.unlink(os.path.join(env.path, "a"))
    os.mkdir(os.path.join(env.path, "a"))
    with open(os.path.join(env.path, "a", "inside.sls"), "wb") as handle:
        handle.write(b"# by hand\n")
    env.deploy(env.history.commits[-1], force=True)
    env.step({**TOP, "a/inside.sls": File(b"# inside\n")})
    assert env.differences() == []


def test_refused_links_lists_only_links_of_the_commit(env):
    """A reused slot keeps the links of the commit it held before: refused_links names one this commit lacks."""
    env.step({**TOP, "leak": Link("/etc/passwd")})
    env.step(variant(1))
    result = env.step(variant(2))
    assert refused_links(result) == []


def test_a_refused_link_becomes_a_directory(env):
    """Fails with ``odb: cannot read object: null OID cannot exist``: the refused link is missing from the slot."""
    env.step({**EXEC_OFF, "a": Link("/etc/passwd")})
    env.step(variant(1, {**EXEC_OFF, "a": Link("/etc/passwd")}))
    env.step({**EXEC_ON, "a/inside.sls": File(b"# inside\n")})
    assert env.differences() == []


def test_a_directory_becomes_a_file_where_the_standby_directory_was_removed(env):
    env.step({**EXEC_OFF, "a/inside.sls": File(b"# inside\n")})
    env.step(variant(1, {**EXEC_OFF, "a/inside.sls": File(b"# inside\n")}))
    shutil.rmtree(os.path.join(env.standby(), "a"))
    env.step({**EXEC_ON, "a": File(b"# a file again\n")})
    assert env.differences() == []


# -- empty directories ----------------------------------------------------------


@pytest.mark.parametrize("deploys_before", [1, 2, 3])
@pytest.mark.parametrize("how", ["deleted", "moved"])
def test_no_empty_directory_stays_after_its_files_go(env, how, deploys_before):
    """After ``gone/deep/*`` are deleted or moved, no deploy serves ``gone`` again, in either slot."""
    tree = {**TOP, "gone/deep/one.sls": File(b"# one\n"), "gone/deep/two.sls": File(b"# two\n")}
    for number in range(deploys_before):
        env.step(variant(number, tree))
    after = {**TOP, **({"kept/one.sls": tree["gone/deep/one.sls"]} if how == "moved" else {})}
    for number in range(3):
        env.step(variant(10 + number, after))
        served = os.path.lexists(os.path.join(env.path, "gone"))
        assert not served, f"gone is served by deploy {deploys_before + number + 1}"
        assert env.differences() == []


def test_an_empty_directory_made_in_the_standby_is_not_served(env):
    env.step(variant(0))
    env.step(variant(1))
    os.mkdir(os.path.join(env.standby(), "made-by-hand"))
    env.step(variant(2))
    assert not os.path.lexists(os.path.join(env.path, "made-by-hand")), "the standby's empty directory is served"
