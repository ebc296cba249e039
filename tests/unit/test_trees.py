"""Trees read from their stored form (``envflow.trees``) and the change between two (``checkout.changes``).

libgit2 is the reference: on random pairs of trees, ``checkout.changes`` names
exactly the files and symlinks its tree-to-tree diff names, with the same ids
and modes, and ``trees.names`` the names a ``pygit2.Tree`` iterates.
"""

import itertools

import hypothesis
import pygit2
import pytest
from pygit2.enums import FileMode, ObjectType

from envflow import checkout, trees

_NAMES = hypothesis.strategies.sampled_from(["a", "b", "a-b", "a.b", "a0", "é", "sp ace", "x"])
_PATHS = hypothesis.strategies.lists(_NAMES, min_size=1, max_size=3).map("/".join)
_CONTENT = hypothesis.strategies.sampled_from(["one", "two", "three"])
_MODES = hypothesis.strategies.sampled_from([FileMode.BLOB, FileMode.BLOB_EXECUTABLE, FileMode.LINK])
_TREES = hypothesis.strategies.dictionaries(_PATHS, hypothesis.strategies.tuples(_CONTENT, _MODES), max_size=12)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return pygit2.init_repository(str(tmp_path_factory.mktemp("trees") / "repo.git"), bare=True)


def _tree(repo, files):
    """A tree of ``files`` (``{path: (content, mode)}``); a path that is also a folder of another is left out."""
    index = pygit2.Index()
    for path, (content, mode) in sorted(files.items()):
        if any(other.startswith(path + "/") for other in files):
            continue
        index.add(pygit2.IndexEntry(path, repo.create_blob(content.encode()), mode))
    return repo[index.write_tree(repo)]


def _libgit2_changes(repo, old, new):
    """libgit2's diff as ``{(path, old, new)}``: a change of kind comes as a deletion and an addition of one path."""
    found = {}
    for delta in repo.diff(old, new).deltas:
        sides = found.setdefault(delta.new_file.path or delta.old_file.path, [None, None])
        if delta.status_char() != "A":
            sides[0] = (delta.old_file.id, delta.old_file.mode)
        if delta.status_char() != "D":
            sides[1] = (delta.new_file.id, delta.new_file.mode)
    return {(path, old_file, new_file) for path, (old_file, new_file) in found.items()}


@hypothesis.settings(deadline=None, max_examples=150)
@hypothesis.given(old=_TREES, new=_TREES)
def test_changes_name_what_libgit2s_tree_diff_names(repo, old, new):
    old_tree, new_tree = _tree(repo, old), _tree(repo, new)
    ours = {(path, before, after) for path, before, after in checkout.changes(old_tree, new_tree)}
    assert ours == _libgit2_changes(repo, old_tree, new_tree)
    assert checkout.changes(new_tree, new_tree) == []
    assert {path for path, _before, after in checkout.changes(None, new_tree)} == {
        path for path, _oid, _mode in checkout.walk(new_tree)
    }


@hypothesis.settings(deadline=None, max_examples=50)
@hypothesis.given(files=_TREES)
def test_names_are_the_names_a_tree_iterates_in_its_order(repo, files):
    tree = _tree(repo, files)
    assert trees.names(tree) == [item.name for item in tree]
    assert len(trees.entries(tree)) == len(tree)


def test_old_modes_are_read_as_libgit2_reports_them(repo):
    """Trees written by old gits hold ``100664`` and the like: read as libgit2 reads them, not as other kinds."""
    blob = repo.create_blob(b"old\n")
    raw = b"".join(mode + b" " + name + b"\0" + blob.raw for mode, name in [(b"100664", b"group"), (b"100775", b"run")])
    old_tree = repo[repo.odb.write(ObjectType.TREE, raw)]
    assert [item.filemode for item in old_tree] == [FileMode.BLOB, FileMode.BLOB_EXECUTABLE]
    now = _tree(repo, {"group": ("old\n", FileMode.BLOB), "run": ("old\n", FileMode.BLOB_EXECUTABLE)})
    assert checkout.changes(old_tree, now) == []
    assert checkout.changes(None, old_tree) == [
        ("group", None, (blob, FileMode.BLOB)),
        ("run", None, (blob, FileMode.BLOB_EXECUTABLE)),
    ]


def test_prefixed_joins_in_c_what_a_comprehension_would():
    assert trees.prefixed("d/", ["a", "b c", "é"]) == ["d/a", "d/b c", "d/é"]
    assert trees.prefixed("", ["a"]) == ["a"]
    assert trees.prefixed("d/", []) == []


_SEGMENTS = hypothesis.strategies.sampled_from(["a", "b", "a-b", "a.b", "a0", "ab", "é"])


@hypothesis.given(
    paths=hypothesis.strategies.lists(
        hypothesis.strategies.lists(_SEGMENTS, min_size=1, max_size=4).map("/".join), max_size=60
    ),
    directory=hypothesis.strategies.lists(_SEGMENTS, min_size=1, max_size=3).map("/".join),
)
def test_under_finds_by_bisection_what_a_prefix_test_of_every_path_finds(paths, directory):
    """Names sorting around ``/`` (``a-b``, ``a.b``, ``a0``) included."""
    ordered = sorted(set(paths))
    assert trees.under(ordered, directory) == [path for path in ordered if path.startswith(directory + "/")]


_KINDS = hypothesis.strategies.sampled_from([FileMode.BLOB, FileMode.BLOB_EXECUTABLE, FileMode.LINK, FileMode.COMMIT])
_MIXED = hypothesis.strategies.dictionaries(_PATHS, hypothesis.strategies.tuples(_CONTENT, _KINDS), max_size=12)


def _mixed_tree(repo, files):
    """:func:`_tree` whose entries may be gitlinks too (pinning a made-up commit id per content)."""
    index = pygit2.Index()
    for path, (content, mode) in sorted(files.items()):
        if any(other.startswith(path + "/") for other in files):
            continue
        oid = pygit2.hash(content.encode() + b" pin") if mode == FileMode.COMMIT else repo.create_blob(content.encode())
        index.add(pygit2.IndexEntry(path, oid, mode))
    return repo[index.write_tree(repo)]


@hypothesis.settings(deadline=None, max_examples=100)
@hypothesis.given(old=_MIXED, new=_MIXED, first=hypothesis.strategies.sampled_from(["files", "gitlinks"]))
def test_a_pair_compared_again_gives_each_kind_what_a_fresh_walk_gives(repo, old, new, first):
    """One deploy asks for the same pair's files, then its gitlinks (or the other way): the answer kept for the pair,
    every kind of entry, gives each what walking the trees for that kind alone finds, a file that became a gitlink
    included."""
    old_tree, new_tree = _mixed_tree(repo, old), _mixed_tree(repo, new)
    files, gitlinks = checkout._WRITTEN, (FileMode.COMMIT,)  # pylint: disable=protected-access
    order = [files, gitlinks] if first == "files" else [gitlinks, files]
    for kinds in order + order:
        fresh = checkout._changes(old_tree, new_tree, "", kinds)  # pylint: disable=protected-access
        assert checkout.changes(old_tree, new_tree, kinds=kinds) == fresh


def test_what_is_kept_of_the_trees_and_pairs_compared_stays_bounded(repo):
    """Comparing many trees keeps only the last few entry sets and changes: the cache never grows with the history."""
    made = [_tree(repo, {f"f{n}": ("one", FileMode.BLOB), "g": (str(n), FileMode.BLOB)}) for n in range(80)]
    for number, (old_tree, new_tree) in enumerate(itertools.pairwise(made)):
        changed = [path for path, _old, _new in checkout.changes(old_tree, new_tree)]
        assert changed == sorted([f"f{number}", f"f{number + 1}", "g"])
    assert len(trees._sets) <= trees._SETS_KEPT  # pylint: disable=protected-access
    assert len(checkout._pairs) <= checkout._PAIRS_KEPT  # pylint: disable=protected-access


@hypothesis.settings(deadline=None, max_examples=100)
@hypothesis.given(files=_MIXED, prefix=hypothesis.strategies.sampled_from(["", "formulas/"]))
def test_the_gitlinks_of_a_whole_tree_against_nothing_are_what_a_walk_of_every_entry_finds(repo, files, prefix):
    """A first deploy asks for the gitlinks a whole tree adds: the short way (folders and gitlinks parsed, files only
    skipped) gives what walking every entry gives, in the same order, both ways round."""
    tree = _mixed_tree(repo, files)
    gitlinks = (FileMode.COMMIT,)
    for old, new in ((None, tree), (tree, None)):
        fresh = checkout._changes(old, new, prefix, gitlinks)  # pylint: disable=protected-access
        assert checkout.changes(old, new, prefix, kinds=gitlinks) == fresh
    assert {path for path, _old, _new in checkout.changes(None, tree, kinds=gitlinks)} == {
        path for path, (_content, mode) in files.items() if mode == FileMode.COMMIT and not _shadowed(path, files)
    }


def _shadowed(path, files):
    return any(other.startswith(path + "/") for other in files)
