import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import hypothesis
import pygit2
import pytest

from envflow import checkout, slots
from envflow.errors import Drift, EnvflowError
from envflow.served import ServedDir
from envflow.text import short
from tests.gitrepo import Symlink, tree_files

V1 = {"top.sls": "base:\n  '*':\n    - web\n", "web/init.sls": "# web v1\n"}


@pytest.fixture
def served(tmp_path):
    return ServedDir(str(tmp_path / "srv" / "stage"))


def deploy(served, mirror, rev, force=False):
    mirror.fetch()
    return served.deploy(mirror.objects, mirror.commit(rev), force=force)


def snapshot(path):
    """Every file under ``path`` with its inode and mtime: to prove nothing was written."""
    found = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            stat = os.lstat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), path)] = (stat.st_ino, stat.st_mtime_ns)
    return found


def test_first_deploy_makes_path_a_symlink_to_the_commit_tree(served, mirror, remote):
    result = deploy(served, mirror, "stage")
    assert os.path.islink(served.path)
    assert os.readlink(served.path) == ".stage.envflow/a"
    assert tree_files(served.path) == V1
    assert result["changed"] is True
    assert result["old"] is None
    assert result["new"]["id"] == remote.tip("stage")
    assert result["new"]["summary"] == "initial states"
    assert result["new"]["author"] == "Test Author <author@example.com>"
    assert result["files"] == {"added": 2, "modified": 0, "deleted": 0}
    deployed = served.deployed()
    assert {key: deployed[key] for key in result["new"]} == result["new"]
    assert (
        abs(
            datetime.datetime.fromisoformat(deployed["deployed_at"]) - datetime.datetime.now(datetime.timezone.utc)
        ).total_seconds()
        < 60
    )


def test_nothing_deployed_reads_as_none(served):
    assert served.deployed() is None
    assert served.drift("/nonexistent/objects") == {"added": [], "modified": [], "deleted": []}


def test_bookkeeping_stays_out_of_the_served_tree(served, mirror):
    deploy(served, mirror, "stage")
    for _root, dirs, files in os.walk(served.path):
        assert ".git" not in dirs and ".git" not in files
        assert not any(name.startswith(".envflow") or name.endswith(".json") for name in files)
    assert sorted(tree_files(served.path)) == sorted(V1)


def test_an_empty_directory_in_the_way_is_replaced(served, mirror):
    os.makedirs(served.path)  # as salt-master does for every file_roots directory
    result = deploy(served, mirror, "stage")
    assert result["moved_aside"] is None
    assert tree_files(served.path) == V1
    assert not [name for name in os.listdir(os.path.dirname(served.path)) if "pre-envflow" in name]


def test_a_checkout_in_the_way_is_moved_aside_never_deleted(served, mirror):
    os.makedirs(os.path.join(served.path, "web"))
    with open(os.path.join(served.path, "web", "init.sls"), "w", encoding="utf-8") as handle:
        handle.write("# hand made\n")
    result = deploy(served, mirror, "stage")
    assert result["moved_aside"] == served.path + ".pre-envflow"
    assert tree_files(served.path + ".pre-envflow") == {"web/init.sls": "# hand made\n"}
    assert tree_files(served.path) == V1


def test_a_second_move_aside_keeps_the_first(served, mirror, tmp_path):
    os.makedirs(served.path + ".pre-envflow")
    with open(served.path, "w", encoding="utf-8") as handle:
        handle.write("a file in the way\n")
    result = deploy(served, mirror, "stage")
    assert result["moved_aside"] == served.path + ".pre-envflow.1"
    with open(served.path + ".pre-envflow.1", encoding="utf-8") as handle:
        assert handle.read() == "a file in the way\n"


def test_deploy_switches_to_the_new_commit(served, mirror, remote):
    deploy(served, mirror, "stage")
    new = remote.commit("stage", {"web/init.sls": "# web v2\n", "db/init.sls": "# db\n", "top.sls": None})
    result = deploy(served, mirror, "stage")
    assert os.readlink(served.path) == ".stage.envflow/b"
    assert tree_files(served.path) == {"web/init.sls": "# web v2\n", "db/init.sls": "# db\n"}
    assert result["old"]["id"] != new and result["new"]["id"] == new
    assert result["files"] == {"added": 1, "modified": 1, "deleted": 1}
    third = remote.commit("stage", {"web/init.sls": "# web v3\n"})
    deploy(served, mirror, "stage")
    assert os.readlink(served.path) == ".stage.envflow/a"
    assert tree_files(served.path) == {"web/init.sls": "# web v3\n", "db/init.sls": "# db\n"}
    assert served.deployed()["id"] == third


def directories(path):
    """Every directory under ``path`` with its mtime and ctime: a file made and removed there shows."""
    return {root: (os.lstat(root).st_mtime_ns, os.lstat(root).st_ctime_ns) for root, _dirs, _files in os.walk(path)}


def test_deploying_the_served_commit_writes_nothing(served, mirror, remote):
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    home = os.path.dirname(served.path)
    before = snapshot(home), directories(home), os.lstat(served.path).st_ino
    result = deploy(served, mirror, "stage")
    assert result["changed"] is False
    assert result["files"] == {"added": 0, "modified": 0, "deleted": 0}
    # Not even a file made and removed again (the served index was once linked into the standby and dropped).
    assert (snapshot(home), directories(home), os.lstat(served.path).st_ino) == before


def test_an_older_commit_can_be_deployed_again(served, mirror, remote):
    first = deploy(served, mirror, "stage")["new"]["id"]
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    result = deploy(served, mirror, first)
    assert result["new"]["id"] == first
    assert tree_files(served.path) == V1


def test_hand_edits_are_reported_as_drift(served, mirror):
    deploy(served, mirror, "stage")
    with open(os.path.join(served.path, "web", "init.sls"), "a", encoding="utf-8") as handle:
        handle.write("# quick fix\n")
    os.unlink(os.path.join(served.path, "top.sls"))
    os.makedirs(os.path.join(served.path, "extra"))
    with open(os.path.join(served.path, "extra", "new.sls"), "w", encoding="utf-8") as handle:
        handle.write("# new\n")
    with open(os.path.join(served.path, ".gitignore"), "w", encoding="utf-8") as handle:
        handle.write("*.bak\n")
    with open(os.path.join(served.path, "hidden.bak"), "w", encoding="utf-8") as handle:
        handle.write("ignored by git, served by Salt\n")
    assert served.drift(mirror.objects) == {
        "added": [".gitignore", "extra/new.sls", "hidden.bak"],
        "modified": ["web/init.sls"],
        "deleted": ["top.sls"],
    }


def test_drift_blocks_a_deploy_and_changes_nothing(served, mirror, remote):
    deploy(served, mirror, "stage")
    with open(os.path.join(served.path, "web", "init.sls"), "a", encoding="utf-8") as handle:
        handle.write("# quick fix\n")
    remote.commit("stage", {"db/init.sls": "# db\n"})
    before = tree_files(served.path), os.readlink(served.path), served.deployed()
    with pytest.raises(Drift) as error:
        deploy(served, mirror, "stage")
    assert str(error.value) == (
        f"envflow: {served.path} was edited by hand (modified: web/init.sls); commit those changes "
        "to the repository, or deploy with force=True to discard them"
    )
    assert error.value.changes["modified"] == ["web/init.sls"]
    assert (tree_files(served.path), os.readlink(served.path), served.deployed()) == before


def test_force_discards_hand_edits_and_reports_them(served, mirror, remote):
    deploy(served, mirror, "stage")
    with open(os.path.join(served.path, "web", "init.sls"), "a", encoding="utf-8") as handle:
        handle.write("# quick fix\n")
    new = remote.commit("stage", {"db/init.sls": "# db\n"})
    result = deploy(served, mirror, "stage", force=True)
    assert result["discarded"] == {"added": [], "modified": ["web/init.sls"], "deleted": []}
    assert tree_files(served.path) == {**V1, "db/init.sls": "# db\n"}
    assert served.deployed()["id"] == new
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}


def test_redeploying_the_served_commit_over_hand_edits_is_refused(served, mirror):
    deploy(served, mirror, "stage")
    with open(os.path.join(served.path, "planted.sls"), "w", encoding="utf-8") as handle:
        handle.write("# planted\n")
    before = snapshot(os.path.dirname(served.path))
    with pytest.raises(Drift) as error:
        deploy(served, mirror, "stage")
    assert error.value.changes == {"added": ["planted.sls"], "modified": [], "deleted": []}
    assert snapshot(os.path.dirname(served.path)) == before


def test_force_repairs_drift_on_the_served_commit(served, mirror):
    deploy(served, mirror, "stage")
    since = served.deployed()["deployed_at"]
    time.sleep(1.1)
    os.unlink(os.path.join(served.path, "top.sls"))
    result = deploy(served, mirror, "stage", force=True)
    assert result["changed"] is True
    assert tree_files(served.path) == V1
    assert served.deployed()["deployed_at"] == since  # the same commit, served all along


def _standby(served):
    """The tree of the slot ``served`` does not serve."""
    home = os.path.join(os.path.dirname(served.path), ".stage.envflow")
    return os.path.join(home, "a" if os.readlink(served.path).endswith("/b") else "b")


def test_hand_edits_in_the_standby_tree_are_never_served(served, mirror, remote):
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    standby = _standby(served)
    # web/init.sls differs between the slots: the standby's own copy, replaced by an editor's rename.
    with open(os.path.join(standby, "web", "init.sls.tmp"), "w", encoding="utf-8") as handle:
        handle.write("# stale edit in the standby tree\n")
    os.rename(os.path.join(standby, "web", "init.sls.tmp"), os.path.join(standby, "web", "init.sls"))
    with open(os.path.join(standby, "planted.sls"), "w", encoding="utf-8") as handle:
        handle.write("# planted\n")
    os.makedirs(os.path.join(standby, "deep", "new"))
    with open(os.path.join(standby, "deep", "new", "x.sls"), "w", encoding="utf-8") as handle:
        handle.write("# planted deeper\n")
    os.unlink(os.path.join(standby, "top.sls"))
    remote.commit("stage", {"db/init.sls": "# db\n"})
    deploy(served, mirror, "stage")
    assert os.path.realpath(served.path) == os.path.realpath(standby)
    assert tree_files(served.path) == {"top.sls": V1["top.sls"], "web/init.sls": "# web v2\n", "db/init.sls": "# db\n"}
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}


def test_an_edit_in_place_of_a_file_both_slots_share_is_an_edit_of_the_served_tree(served, mirror, remote):
    """Unchanged files are hard links shared by both slots: writing into one writes into the served tree."""
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    shared = os.path.join(_standby(served), "top.sls")
    assert os.stat(shared).st_ino == os.stat(os.path.join(served.path, "top.sls")).st_ino
    with open(shared, "a", encoding="utf-8") as handle:
        handle.write("# edited through the standby\n")
    assert served.drift(mirror.objects) == {"added": [], "modified": ["top.sls"], "deleted": []}
    remote.commit("stage", {"db/init.sls": "# db\n"})
    before = tree_files(served.path), os.readlink(served.path), served.deployed()
    with pytest.raises(Drift):
        deploy(served, mirror, "stage")
    assert (tree_files(served.path), os.readlink(served.path), served.deployed()) == before
    result = deploy(served, mirror, "stage", force=True)
    assert result["discarded"] == {"added": [], "modified": ["top.sls"], "deleted": []}
    assert tree_files(served.path) == {"top.sls": V1["top.sls"], "web/init.sls": "# web v2\n", "db/init.sls": "# db\n"}
    # The standby (the tree served before) still holds the edit: the next deploy into it rewrites it.
    remote.commit("stage", {"db/init.sls": "# db v2\n"})
    deploy(served, mirror, "stage")
    expected = {"top.sls": V1["top.sls"], "web/init.sls": "# web v2\n", "db/init.sls": "# db v2\n"}
    assert tree_files(served.path) == expected
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}


def test_symlinks_leading_out_of_the_tree_are_never_served(served, mirror, remote):
    remote.commit(
        "stage",
        {
            "leak": Symlink("/etc/passwd"),
            "web/up": Symlink("../../outside"),
            "loop": Symlink("."),
            "web/parent": Symlink(".."),
            "web/abs": Symlink(served.path + "/top.sls"),
            "web/main.sls": Symlink("init.sls"),
            # Into web, where web/parent leads back up; but that one is refused first, so no walk takes it.
            "shared": Symlink("web"),
            "db/init.sls": "# db\n",
            "alias": Symlink("db"),
            "web/back": Symlink("../../stage/top.sls"),  # out of the tree and back into one named stage
        },
    )
    result = deploy(served, mirror, "stage")
    assert sorted(link["path"] for link in result["refused_links"]) == [
        "leak",
        "loop",
        "web/abs",
        "web/back",
        "web/parent",
        "web/up",
    ]
    assert {"path": "leak", "target": "/etc/passwd"} in result["refused_links"]
    files = tree_files(served.path)
    for refused in ("leak", "web/up", "loop", "web/parent", "web/abs", "web/back"):
        assert not os.path.lexists(os.path.join(served.path, refused))
    assert files["web/main.sls"] == Symlink("init.sls")
    assert files["shared"] == Symlink("web")
    assert files["alias"] == Symlink("db")
    # Refused links are not hand edits: the next deploys go through without force.
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    for _ in range(2):
        result = deploy(served, mirror, "stage")
        remote.commit("stage", {"web/init.sls": f"# web {time.time()}\n"})
        assert not os.path.lexists(os.path.join(served.path, "leak"))
        assert sorted(link["path"] for link in result["refused_links"]) == [
            "leak",
            "loop",
            "web/abs",
            "web/back",
            "web/parent",
            "web/up",
        ]


def test_symlink_loops_through_several_directories_are_refused(served, mirror, remote):
    remote.commit(
        "stage",
        {
            "a/x.sls": "# a\n",
            "b/y.sls": "# b\n",
            "a/to_b": Symlink("../b"),
            "b/to_a": Symlink("../a"),
            "c/to_a": Symlink("../a"),
            "d/z.sls": "# d\n",
            "e/to_d": Symlink("../d"),
        },
    )
    result = deploy(served, mirror, "stage")
    assert [link["path"] for link in result["refused_links"]] == ["a/to_b", "b/to_a"]
    files = tree_files(served.path)
    assert files["c/to_a"] == Symlink("../a") and files["e/to_d"] == Symlink("../d")
    # What Salt's roots backend does: walk following links. It ends, and sees each file a bounded number of times.
    walked = sum(len(names) for _root, _dirs, names in os.walk(served.path, followlinks=True))
    assert walked < 20


def test_a_symlink_turned_outward_later_is_refused(served, mirror, remote):
    remote.commit("stage", {"link": Symlink("web/init.sls")})
    deploy(served, mirror, "stage")
    assert tree_files(served.path)["link"] == Symlink("web/init.sls")
    remote.commit("stage", {"link": Symlink("/etc/shadow")})
    result = deploy(served, mirror, "stage")
    assert result["refused_links"] == [{"path": "link", "target": "/etc/shadow"}]
    assert not os.path.lexists(os.path.join(served.path, "link"))


def test_a_tree_without_a_record_is_refused_unless_forced(served, mirror, remote):
    deploy(served, mirror, "stage")
    os.unlink(os.path.join(os.path.dirname(served.path), ".stage.envflow", "a.git", "envflow.json"))
    message = f"envflow: {served.path} serves a tree envflow has no record of; deploy with force=True to replace it"
    with pytest.raises(EnvflowError) as error:
        served.deployed()
    assert str(error.value) == message
    with pytest.raises(EnvflowError) as error:
        deploy(served, mirror, "stage")
    assert str(error.value) == message
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    assert deploy(served, mirror, "stage", force=True)["new"]["id"] == remote.tip("stage")
    assert tree_files(served.path)["web/init.sls"] == "# web v2\n"


def test_leftovers_of_an_interrupted_run_are_tidied(served, mirror, remote):
    deploy(served, mirror, "stage")
    home = os.path.join(os.path.dirname(served.path), ".stage.envflow")
    os.symlink("b", os.path.join(home, "link.tmp"))
    for gitdir in ("a.git", "b.git"):
        os.makedirs(os.path.join(home, gitdir), exist_ok=True)
        with open(os.path.join(home, gitdir, "index.lock"), "w", encoding="utf-8"):
            pass
    new = remote.commit("stage", {"web/init.sls": "# web v2\n"})
    assert deploy(served, mirror, "stage")["new"]["id"] == new
    assert tree_files(served.path)["web/init.sls"] == "# web v2\n"
    assert not os.path.lexists(os.path.join(home, "link.tmp"))
    assert not os.path.exists(os.path.join(home, "a.git", "index.lock"))


_CHILD = """
import sys
sys.path.insert(0, {root!r})
from envflow.remote import Mirror
from envflow.served import ServedDir
from envflow.text import short
with Mirror({repo!r}, {cache!r}) as mirror:
    commit = mirror.commit({rev!r})
    print("go", flush=True)
    ServedDir({path!r}).deploy(mirror.objects, commit)
"""


def test_a_deploy_killed_at_any_point_leaves_one_whole_tree_served(served, mirror, remote, tmp_path):
    """SIGKILL deploys at varied moments: readers must see the old tree or the new, whole; the next run recovers."""
    many = {f"states/d{index % 20}/s{index:04d}.sls": f"# v1 {index}\n" for index in range(1500)}
    one = remote.commit("stage", many, message="one")
    two = remote.commit("stage", {path: content.replace("v1", "v2") for path, content in many.items()}, message="two")
    mirror.fetch()
    deploy(served, mirror, one)
    expected = {one: tree_files(served.path)}
    deploy(served, mirror, two)
    expected[two] = tree_files(served.path)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    killed = 0
    for attempt in range(16):
        rev = one if attempt % 2 == 0 else two
        script = _CHILD.format(root=root, repo=remote.path, cache=str(tmp_path / "cache"), path=served.path, rev=rev)
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"go\n"
        time.sleep(0.004 * attempt)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            killed += 1
        child.wait()
        child.stdout.close()
        served_id = served.deployed()["id"]
        assert served_id in expected
        assert tree_files(served.path) == expected[served_id]
    assert killed, "no deploy was interrupted: the test proved nothing"
    for rev in (one, two):
        deploy(served, mirror, rev)
        assert tree_files(served.path) == expected[rev]
        assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}


def test_a_directory_that_cannot_be_made_is_one_line_error(mirror, tmp_path):
    (tmp_path / "afile").write_text("not a directory\n")
    served = ServedDir(str(tmp_path / "afile" / "stage"))
    with pytest.raises(EnvflowError) as error:
        deploy(served, mirror, "stage")
    text = str(error.value)
    assert text.startswith(f"envflow: cannot deploy {mirror.tip('stage')}"[:33])
    assert f"to {served.path}: " in text and "Not a directory" in text
    assert "\n" not in text


def test_a_standby_edit_that_kept_size_and_mtime_is_never_served(served, mirror, remote):
    """The edit of ``cp -p`` or ``touch -r``: only ctime betrays it, and a checkout alone would keep it."""
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    standby = os.path.join(_standby(served), "web", "init.sls")  # the standby's own copy (v1)
    stat = os.stat(standby)
    with open(standby, "r+", encoding="utf-8") as handle:
        original = handle.read()
        handle.seek(0)
        handle.write(original.upper())
    os.utime(standby, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(standby).st_size == stat.st_size
    remote.commit("stage", {"db/init.sls": "# db\n"})
    deploy(served, mirror, "stage")
    assert os.path.realpath(served.path) == os.path.realpath(os.path.dirname(os.path.dirname(standby)))
    assert tree_files(served.path)["web/init.sls"] == "# web v2\n"
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}


def test_a_served_edit_that_kept_size_and_mtime_is_refused(served, mirror, remote):
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    path = os.path.join(served.path, "top.sls")
    stat = os.stat(path)
    with open(path, "r+", encoding="utf-8") as handle:
        original = handle.read()
        handle.seek(0)
        handle.write(original.upper())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert served.drift(mirror.objects)["modified"] == ["top.sls"]


def _edit_within_the_tick(served, path):
    """Edit ``path`` keeping its size, its mtime set an hour back (``touch -r``), and stamp its index entry anew.

    As when the edit fell within the clock tick of the deploy's own stamp on a
    kernel with coarse file times: ctime then stays in that tick, and no stat
    data can show the edit (libgit2 reads a file again only when its mtime is
    not older than the index file).
    """
    layout = served.layout
    slot = layout.served_slot()
    record = layout.record(slot)
    full = os.path.join(served.path, path)
    info = os.stat(full)
    with open(full, "r+b") as handle:
        content = handle.read()
        handle.seek(0)
        handle.write(content.upper())
    os.utime(full, ns=(info.st_atime_ns, info.st_mtime_ns - 3600 * 1_000_000_000))
    entry = slots.read_index(os.path.join(layout.gitdir(slot), "index"), record.index_changes)[path]
    record.index_changes[path] = [str(entry.id), entry.mode, *slots.stamp(os.lstat(full))]
    layout.write_record(slot, record)


@pytest.fixture
def long_tick(monkeypatch):
    """Call to make the clock tick ten minutes long: every file a later deploy stamps is within a tick of its end.

    After the first deploy, which waits a tick once before sealing its other slot.
    """
    return lambda: monkeypatch.setattr(checkout, "_TICK_NS", 600 * 1_000_000_000)


def test_an_edit_within_the_clock_tick_of_the_deploy_is_refused(served, mirror, remote, long_tick):
    deploy(served, mirror, "stage")
    long_tick()
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    record = served.layout.record(served.served_slot())
    assert "web/init.sls" in record.racy  # the file this deploy wrote
    _edit_within_the_tick(served, "web/init.sls")
    assert served.drift(mirror.objects)["modified"] == ["web/init.sls"]
    # The commit already served: the no-op's own check reads the racy file too.
    before = tree_files(served.path), os.readlink(served.path), served.deployed()
    with pytest.raises(Drift) as drift:
        deploy(served, mirror, "stage")
    assert "web/init.sls" in str(drift.value)
    assert (tree_files(served.path), os.readlink(served.path), served.deployed()) == before
    remote.commit("stage", {"db/init.sls": "# db\n"})
    before = tree_files(served.path), os.readlink(served.path), served.deployed()
    with pytest.raises(Drift) as drift:
        deploy(served, mirror, "stage")
    assert "web/init.sls" in str(drift.value) and "\n" not in str(drift.value)
    assert (tree_files(served.path), os.readlink(served.path), served.deployed()) == before
    # Without the record's list the stamp hides the edit: what the list is for.
    record = served.layout.record(served.served_slot())
    record.racy = {}
    served.layout.write_record(served.served_slot(), record)
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}


def test_entries_stay_racy_through_the_next_deploy_until_the_tick_passed(served, mirror, remote):
    """The next deploy's index copies the served tree's stamps: those still within the tick stay listed."""
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    remote.commit("stage", {"db/init.sls": "# db\n"})
    deploy(served, mirror, "stage")
    # As if this deploy had just stamped web/init.sls (a time ahead of the next deploy's end):
    slot = served.served_slot()
    record = served.layout.record(slot)
    record.racy = {"web/init.sls": time.time_ns() + 60 * 1_000_000_000}
    served.layout.write_record(slot, record)
    remote.commit("stage", {"top.sls": "base:\n  '*':\n    - web\n    - db\n"})
    deploy(served, mirror, "stage")  # writes top.sls; web/init.sls keeps its file and its stamp
    assert "web/init.sls" in served.layout.record(served.served_slot()).racy
    _edit_within_the_tick(served, "web/init.sls")
    remote.commit("stage", {"db/init.sls": "# db v2\n"})
    before = tree_files(served.path), os.readlink(served.path), served.deployed()
    with pytest.raises(Drift) as drift:
        deploy(served, mirror, "stage")
    assert "web/init.sls" in str(drift.value)
    assert (tree_files(served.path), os.readlink(served.path), served.deployed()) == before
    result = deploy(served, mirror, "stage", force=True)
    assert result["discarded"]["modified"] == ["web/init.sls"]
    assert tree_files(served.path)["web/init.sls"] == "# web v2\n"


def test_the_tick_is_twice_the_coarse_clock_at_least_10_ms_and_20_ms_where_that_clock_cannot_be_asked(monkeypatch):
    monkeypatch.setattr(checkout.time, "clock_getres", lambda _clock: 0.01)  # CONFIG_HZ=100
    assert checkout._tick_ns() == 20_000_000  # pylint: disable=protected-access
    monkeypatch.setattr(checkout.time, "clock_getres", lambda _clock: 0.001)  # CONFIG_HZ=1000
    assert checkout._tick_ns() == 10_000_000  # pylint: disable=protected-access

    def unknown_clock(_clock):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(checkout.time, "clock_getres", unknown_clock)
    assert checkout._tick_ns() == 20_000_000  # pylint: disable=protected-access
    monkeypatch.setattr(checkout.sys, "platform", "darwin")  # another system's clock ids mean other clocks
    monkeypatch.setattr(checkout.time, "clock_getres", lambda _clock: 0.000001)
    assert checkout._tick_ns() == 20_000_000  # pylint: disable=protected-access


def test_racy_entries_are_those_within_a_tick_and_many_wait_the_tick_out():
    now = time.time_ns()
    old = now - 2 * checkout._TICK_NS  # pylint: disable=protected-access
    assert checkout.racy_entries({"new": now, "old": old}) == {"new": now}
    many = {f"f{number}": now for number in range(checkout._RACY_MAX + 1)}  # pylint: disable=protected-access
    assert checkout.racy_entries(many) == {}
    assert time.time_ns() >= now + checkout._TICK_NS  # pylint: disable=protected-access


def test_file_times_lag_the_clock_by_less_than_half_the_tick(tmp_path):
    """What every seal and racy entry relies on: a change made after a moment is stamped later than a tick before it.

    The tick is twice the kernel's coarse clock resolution, at least 10 ms
    (20 ms where that clock cannot be asked): files written, directories
    gaining or losing an entry, and both of their times.
    """
    assert checkout._TICK_NS >= 10_000_000  # pylint: disable=protected-access
    path, directory = tmp_path / "file", tmp_path / "dir"
    directory.mkdir()
    lags = []
    for number in range(1000):
        before = time.time_ns()
        path.write_bytes(b"%d" % number)
        entry = directory / "entry"
        if number % 2:
            entry.unlink()
        else:
            entry.write_bytes(b"")
        for found in (os.lstat(path), os.lstat(directory)):
            lags.append(before - min(found.st_mtime_ns, found.st_ctime_ns))
        if number % 200 == 0:
            time.sleep(0.005)  # idle a moment: a tickless kernel's coarse clock catches up on wake-up
    assert max(lags) < checkout._TICK_NS // 2  # pylint: disable=protected-access


def test_a_deploy_stopped_between_prepare_and_switch_leaves_the_served_tree_as_it_was(served, mirror, remote):
    """What a promotion relies on: its branch moves between the phases, and a lost race changes nothing served."""
    deploy(served, mirror, "stage")
    before = tree_files(served.path), os.readlink(served.path), served.deployed()
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    mirror.fetch()
    commit = mirror.commit("stage")
    with served.deploying(mirror.objects, commit) as deployment:
        deployment.prepare()
        assert (tree_files(served.path), os.readlink(served.path), served.deployed()) == before
    assert (tree_files(served.path), os.readlink(served.path), served.deployed()) == before
    with served.deploying(mirror.objects, commit) as deployment:
        result = deployment.switch(deployment.prepare())
    assert result["changed"] is True and tree_files(served.path)["web/init.sls"] == "# web v2\n"
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}


def test_the_first_deploy_never_leaves_path_missing(served, mirror):
    import threading  # pylint: disable=import-outside-toplevel

    os.makedirs(os.path.join(served.path, "old"))
    with open(os.path.join(served.path, "old", "init.sls"), "w", encoding="utf-8") as handle:
        handle.write("# manual checkout\n")
    missing, done = [], threading.Event()

    def watch():
        while not done.is_set():
            if not os.path.lexists(served.path):
                missing.append(True)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = deploy(served, mirror, "stage")
    finally:
        done.set()
        watcher.join()
    assert not missing
    assert result["moved_aside"] == served.path + ".pre-envflow"
    assert tree_files(served.path + ".pre-envflow") == {"old/init.sls": "# manual checkout\n"}


def test_a_directory_left_by_a_killed_exchange_is_put_aside_not_deleted(served, mirror, remote):
    deploy(served, mirror, "stage")
    left = os.path.join(os.path.dirname(served.path), ".stage.envflow", "link.tmp")
    os.makedirs(left)
    with open(os.path.join(left, "init.sls"), "w", encoding="utf-8") as handle:
        handle.write("# what stood at the path\n")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    assert tree_files(served.path + ".pre-envflow") == {"init.sls": "# what stood at the path\n"}
    assert not os.path.lexists(left)


def test_a_file_left_by_a_killed_exchange_is_put_aside_not_deleted(served, mirror, remote):
    deploy(served, mirror, "stage")
    left = os.path.join(os.path.dirname(served.path), ".stage.envflow", "link.tmp")
    with open(left, "w", encoding="utf-8") as handle:
        handle.write("a file that stood at the path\n")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    with open(served.path + ".pre-envflow", encoding="utf-8") as handle:
        assert handle.read() == "a file that stood at the path\n"


def test_a_file_deleted_by_hand_at_the_root_of_the_standby_is_restored(served, mirror, remote):
    """Found by the engine's model: a tree with no subdirectory left the standby's root unsealed."""
    remote.commit("stage", {"top.sls": None, "web/init.sls": None, "a.sls": "# a\n", "b.sls": "# b\n"})
    deploy(served, mirror, "stage")
    os.unlink(os.path.join(_standby(served), "b.sls"))
    remote.commit("stage", {"a.sls": "# a v2\n"})
    deploy(served, mirror, "stage")
    assert tree_files(served.path) == {"a.sls": "# a v2\n", "b.sls": "# b\n"}


def test_a_directory_holding_a_directory_becomes_a_file(served, mirror, remote):
    """Found by the engine's model: sealing ``web/files`` after ``web`` became a file failed (ENOTDIR)."""
    remote.commit("stage", {"web/files/app.conf": "port = 80\n"})
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": None, "web/files/app.conf": None})
    shutil.rmtree(os.path.join(remote.work, "web"))  # the empty directories git leaves in the work tree
    remote.commit("stage", {"web": "# now a file\n"})
    deploy(served, mirror, "stage")
    assert tree_files(served.path) == {"top.sls": V1["top.sls"], "web": "# now a file\n"}


def test_an_index_lock_left_by_a_killed_deploy_does_not_block_the_next(served, mirror, remote):
    """Found by the engine's model: libgit2's ``index.next.lock``, left by a kill, failed every later deploy."""
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    gitdir = os.path.join(os.path.dirname(served.path), ".stage.envflow", os.path.basename(_standby(served)) + ".git")
    with open(os.path.join(gitdir, "index.next.lock"), "w", encoding="utf-8"):
        pass
    remote.commit("stage", {"web/init.sls": "# web v3\n"})
    deploy(served, mirror, "stage")
    assert tree_files(served.path)["web/init.sls"] == "# web v3\n"


def test_a_whole_tree_written_again_never_writes_through_a_next_index_left_linked_to_the_served_one(
    served, mirror, remote
):
    """A kill while the standby's index was linked from the served one leaves ``index.next`` sharing its inode: a
    whole tree's index, written next in that slot, is a new file, and the served index stays as it was."""
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    layout = served.layout
    serving, standby = layout.served_slot(), layout.other(layout.served_slot())
    served_index = os.path.join(layout.gitdir(serving), "index")
    os.link(served_index, os.path.join(layout.gitdir(standby), "index.next"))
    with open(served_index, "rb") as handle:
        before = handle.read()
    layout.drop_record(serving)  # its record lost: a forced deploy writes the standby whole
    remote.commit("stage", {"web/init.sls": "# web v3\n"})
    deploy(served, mirror, "stage", force=True)
    assert layout.served_slot() == standby
    assert tree_files(served.path)["web/init.sls"] == "# web v3\n"
    with open(served_index, "rb") as handle:
        assert handle.read() == before
    assert not os.path.lexists(os.path.join(layout.gitdir(standby), "index.next"))
    assert served.drift(mirror.objects) == slots.no_edits()


def test_a_directory_emptied_by_a_broken_seals_repair_is_not_served(served, mirror, remote):
    """Found by the engine's model: the repair removed ``d/e`` whole, and ``d`` stayed behind, empty."""
    remote.commit("stage", {"d/e/f.sls": "# f\n"})
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    with open(os.path.join(_standby(served), "d", "e", "planted.sls"), "w", encoding="utf-8") as handle:
        handle.write("# planted\n")
    remote.commit("stage", {"d/e/f.sls": None})
    deploy(served, mirror, "stage")
    assert tree_files(served.path) == {"top.sls": V1["top.sls"], "web/init.sls": "# web v2\n"}
    assert not os.path.lexists(os.path.join(served.path, "d"))


@pytest.mark.parametrize("split", [False, True], ids=["one scan", "split scan"])
def test_a_scan_reads_the_slots_index_once(served, mirror, remote, split):
    """The scan's repositories use the index already read: the file is not read again (20,000 entries: 25 ms each)."""
    from envflow import slots  # pylint: disable=import-outside-toplevel

    remote.commit("master", {f"web/file{number}.sls": f"# {number}\n" for number in range(8)}, "more files")
    deploy(served, mirror, "master")
    layout = served.layout
    slot = layout.served_slot()
    repo = slots.open_repo(layout.gitdir(slot), layout.tree(slot), mirror.objects)
    try:
        path = os.path.join(repo.path, "index")
        index = slots.open_index(path)
        tree = repo[layout.record(slot).commit_id].peel(pygit2.Tree)
        halves = slots.scan_halves(index, tree, layout.tree(slot), minimum=1) if split else None
        assert (halves is not None) == split
        with open(path, "r+b") as handle:  # libgit2 refuses this file if it reads it again
            handle.write(b"not an index")
        assert slots.hand_edits(repo, index, halves) == slots.no_edits()
        os.remove(os.path.join(layout.tree(slot), "web", "file3.sls"))
        assert slots.hand_edits(repo, index, halves) == {"added": [], "modified": [], "deleted": ["web/file3.sls"]}
    finally:
        repo.free()


def _index(served, slot=None):
    layout = served.layout
    return os.stat(os.path.join(layout.gitdir(slot or layout.served_slot()), "index"))


def test_a_small_change_keeps_the_index_file_and_records_what_differs(served, mirror, remote):
    """No deploy rewrites every index entry for a few changed files: the slots share one index file."""
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    before = _index(served)
    for number in range(3):
        remote.commit("stage", {"web/init.sls": f"# web v{number + 3}\n", f"new{number}.sls": "# new\n"})
        deploy(served, mirror, "stage")
        assert (_index(served).st_ino, _index(served).st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        for gitdir in ("a.git", "b.git"):
            assert sorted(name for name in os.listdir(os.path.join(served.layout.home, gitdir)) if "index" in name) == [
                "index"
            ]
    remote.commit("stage", {"new0.sls": None})
    deploy(served, mirror, "stage")
    record = served.layout.record(served.layout.served_slot())
    assert set(record.index_changes) >= {"web/init.sls", "new1.sls", "new2.sls", "new0.sls"}
    assert record.index_changes["new0.sls"] is None
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}
    # The scan reads those changes: edits of files changed since the index file was written show, and others do.
    for path in ("web/init.sls", "new1.sls", "top.sls"):
        with open(os.path.join(served.path, path), "a", encoding="utf-8") as handle:
            handle.write("# by hand\n")
    os.unlink(os.path.join(served.path, "new2.sls"))
    drift = served.drift(mirror.objects)
    assert drift == {"added": [], "modified": ["new1.sls", "top.sls", "web/init.sls"], "deleted": ["new2.sls"]}
    with pytest.raises(Drift):
        deploy(served, mirror, "stage")
    deploy(served, mirror, "stage", force=True)
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}


def test_a_large_change_writes_the_index_file_whole(served, mirror, remote):
    """Past 100 changed entries the record would grow with every deploy: the index file is written again."""
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    before = _index(served)
    remote.commit("stage", {f"many/file{number}.sls": f"# {number}\n" for number in range(150)})
    deploy(served, mirror, "stage")
    assert _index(served).st_ino != before.st_ino
    assert served.layout.record(served.layout.served_slot()).index_changes == {}
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}
    with open(os.path.join(served.path, "many", "file7.sls"), "w", encoding="utf-8") as handle:
        handle.write("# by hand\n")
    assert served.drift(mirror.objects)["modified"] == ["many/file7.sls"]


def test_a_lost_standby_is_made_again_from_a_served_tree_whose_index_has_changes(served, mirror, remote):
    """The standby's record is gone (lost, or made by an older envflow) while the served slot's index differs from
    its index file: the standby is linked again from the served tree, with the served index's changes applied."""
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v3\n", "new.sls": "# new\n"})
    deploy(served, mirror, "stage")
    layout = served.layout
    assert layout.record(layout.served_slot()).index_changes  # what this test is about
    layout.drop_record(layout.other(layout.served_slot()))
    v4 = remote.commit("stage", {"web/init.sls": "# web v4\n", "top.sls": None, "other.sls": "# other\n"})
    result = deploy(served, mirror, "stage")
    assert result["new"]["id"] == v4
    assert tree_files(served.path) == {"web/init.sls": "# web v4\n", "new.sls": "# new\n", "other.sls": "# other\n"}
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}
    # Both slots are sound afterwards: a hand edit shows, and later deploys in either direction are exact.
    with open(os.path.join(served.path, "new.sls"), "a", encoding="utf-8") as handle:
        handle.write("# by hand\n")
    assert served.drift(mirror.objects)["modified"] == ["new.sls"]
    deploy(served, mirror, "stage", force=True)
    remote.commit("stage", {"new.sls": None})
    deploy(served, mirror, "stage")
    assert tree_files(served.path) == {"web/init.sls": "# web v4\n", "other.sls": "# other\n"}
    assert served.drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}


_NAMES = hypothesis.strategies.sampled_from(["a", "b", "a-b", "a.b", "a0", "ab", "é"])
_PATHS = hypothesis.strategies.lists(_NAMES, min_size=1, max_size=4).map("/".join)


def _covering(halves, path):
    return [
        (number, listed)
        for number, half in enumerate(halves)
        for listed in half
        if path == listed or path.startswith(listed + "/")
    ]


@hypothesis.settings(deadline=None, max_examples=60)
@hypothesis.given(paths=hypothesis.strategies.sets(_PATHS, min_size=1, max_size=40), planted=_NAMES)
def test_the_scan_split_covers_every_path_once_and_sends_names_added_by_hand_to_the_first_half(paths, planted):
    """Names sorting around ``/`` (``a-b``, ``a.b``, ``a0``) included: each path of the tree lies under exactly one
    entry of the two halves, the first holding what the index lists before its middle entry; a name added by hand in
    a folder the split looked into goes to the first half."""
    files = sorted(path for path in paths if not any(other.startswith(path + "/") for other in paths))
    with tempfile.TemporaryDirectory() as scratch:
        repo = pygit2.init_repository(os.path.join(scratch, "repo.git"), bare=True)
        index = pygit2.Index()
        root = os.path.join(scratch, "tree")
        for path in files:
            blob = repo.create_blob(path.encode())
            index.add(pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.BLOB))
            os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
            with open(os.path.join(root, path), "w", encoding="utf-8") as handle:
                handle.write(path)
        tree = repo[index.write_tree(repo)]
        middle = index[len(index) // 2].path
        folder = os.path.dirname(middle)
        extra = f"{folder}/{planted}-by-hand" if folder else f"{planted}-by-hand"
        with open(os.path.join(root, extra), "w", encoding="utf-8") as handle:
            handle.write("by hand")
        halves = slots.scan_halves(index, tree, root, minimum=1)
        if halves is None:  # one half would be empty: a single file
            assert len(files) == 1
            return
        ordered = [index[position].path for position in range(len(index))]
        for position, path in enumerate(ordered):
            # The first half holds what the index lists before its middle entry, the second the rest.
            assert [number for number, _listed in _covering(halves, path)] == [int(position >= len(ordered) // 2)]
        assert [number for number, _listed in _covering(halves, extra)] == [0]


@pytest.mark.parametrize("on_thread", [False, True], ids=["read in turn", "read on a thread"])
def test_a_served_index_that_cannot_be_read_fails_the_deploy_in_one_line_and_changes_nothing(
    served, mirror, remote, monkeypatch, on_thread
):
    """A large served index is read on a thread while the standby is checked; what that read raises is the deploy's
    one-line error, as when it is read in turn, and nothing served or recorded changes."""
    from envflow import served as served_module  # pylint: disable=import-outside-toplevel

    monkeypatch.setattr(served_module, "_LARGE_INDEX", 0 if on_thread else 1 << 40)
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    layout = served.layout
    index = os.path.join(layout.gitdir(layout.served_slot()), "index")
    with open(index, "r+b") as handle:
        handle.write(b"not an index")
    home = os.path.dirname(layout.gitdir("a"))
    before = snapshot(home), os.readlink(served.path)
    remote.commit("stage", {"web/init.sls": "# web v3\n"})
    with pytest.raises(EnvflowError) as raised:
        deploy(served, mirror, "stage")
    message = str(raised.value)
    assert message.startswith(f"envflow: cannot deploy {remote.tip('stage')[:10]} to {served.path}: ")
    assert "index" in message and "\n" not in message, message
    assert (snapshot(home), os.readlink(served.path)) == before
    assert tree_files(served.path)["web/init.sls"] == "# web v2\n"


@pytest.mark.parametrize("on_thread", [False, True], ids=["read in turn", "read on a thread"])
def test_a_standby_check_that_fails_while_the_index_is_read_fails_the_deploy_in_one_line_and_changes_nothing(
    served, mirror, remote, monkeypatch, on_thread
):
    """The standby is checked while a large served index is read on a thread: an error there waits for the read
    to end, is the deploy's one-line error, and leaves nothing served or recorded changed."""
    import threading  # pylint: disable=import-outside-toplevel

    from envflow import served as served_module  # pylint: disable=import-outside-toplevel

    monkeypatch.setattr(served_module, "_LARGE_INDEX", 0 if on_thread else 1 << 40)
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    home = os.path.dirname(served.layout.gitdir("a"))
    before = snapshot(home), os.readlink(served.path)

    def failing(root, record):
        raise OSError(f"cannot read {root}")

    monkeypatch.setattr(checkout, "broken_seals", failing)
    remote.commit("stage", {"web/init.sls": "# web v3\n"})
    with pytest.raises(EnvflowError) as raised:
        deploy(served, mirror, "stage")
    message = str(raised.value)
    assert message.startswith(f"envflow: cannot deploy {remote.tip('stage')[:10]} to {served.path}: cannot read ")
    assert "\n" not in message, message
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("envflow-")]
    assert (snapshot(home), os.readlink(served.path)) == before
    monkeypatch.undo()
    deploy(served, mirror, "stage")
    assert tree_files(served.path)["web/init.sls"] == "# web v3\n"


@pytest.mark.parametrize("readable", [True, False], ids=["index reads", "index does not read"])
def test_a_deploy_given_up_before_it_prepares_waits_for_the_index_read_ahead_and_changes_nothing(
    served, mirror, remote, monkeypatch, readable
):
    """A large served index is read ahead on a thread once the lock is taken. A deploy that stops before it
    prepares (a hold refuses it) waits for that read before the lock goes, whatever it gave: its own error is
    the one raised, no thread outlives the lock and nothing changes."""
    import threading  # pylint: disable=import-outside-toplevel

    from envflow import served as served_module  # pylint: disable=import-outside-toplevel

    monkeypatch.setattr(served_module, "_LARGE_INDEX", 0)
    deploy(served, mirror, "stage")
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    layout = served.layout
    if not readable:
        with open(os.path.join(layout.gitdir(layout.served_slot()), "index"), "r+b") as handle:
            handle.write(b"not an index")
    home = os.path.dirname(layout.gitdir("a"))
    before = snapshot(home), os.readlink(served.path)
    reading, finished = threading.Event(), []
    read_index = slots.read_index

    def slow_read(path, changes):
        reading.set()
        time.sleep(0.3)  # still reading when the deploy gives up, unless something waits for it
        try:
            return read_index(path, changes)
        finally:
            finished.append(threading.current_thread().name)

    monkeypatch.setattr(slots, "read_index", slow_read)
    remote.commit("stage", {"web/init.sls": "# web v3\n"})
    mirror.fetch()
    with pytest.raises(EnvflowError) as raised, served.deploying(mirror.objects, mirror.commit("stage")):
        assert reading.wait(60)
        raise EnvflowError("envflow: stage is frozen")
    assert str(raised.value) == "envflow: stage is frozen"
    assert finished == ["envflow-index-read"]
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("envflow-")]
    assert (snapshot(home), os.readlink(served.path)) == before


def test_the_served_slots_record_is_written_again_only_when_the_deploy_changed_it(served, mirror, remote):
    """A deploy writes the record of the slot it stops serving only when something in it changed: its directory
    seals settled, hand edits left in it, its index written whole. Otherwise the record (and its flush) is spared."""
    layout = served.layout
    deploy(served, mirror, "stage")  # a whole tree, sealed once a clock tick passed: no seal to settle later
    first = layout.served_slot()
    record_file = os.path.join(layout.gitdir(first), "envflow.json")
    assert not checkout.racy_seals(layout.record(first))
    before = os.lstat(record_file), open(record_file, "rb").read()  # noqa: SIM115

    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    after = os.lstat(record_file), open(record_file, "rb").read()  # noqa: SIM115
    assert (after[0].st_ino, after[0].st_mtime_ns, after[1]) == (before[0].st_ino, before[0].st_mtime_ns, before[1])

    # The slot now served sealed the folders it changed at once: within a tick of them, so they prove nothing yet.
    second = layout.served_slot()
    racy = checkout.racy_seals(layout.record(second))
    assert racy and "web" in racy
    sealed_at = layout.record(second).sealed_at
    assert wait_until(lambda: time.time_ns() > sealed_at + 2 * checkout._TICK_NS)  # pylint: disable=protected-access
    remote.commit("stage", {"web/init.sls": "# web v3\n"})
    deploy(served, mirror, "stage")
    settled = layout.record(second)
    assert settled.sealed_at > sealed_at and not checkout.racy_seals(settled)
    assert tree_files(served.path)["web/init.sls"] == "# web v3\n"


def wait_until(check, timeout=60.0):
    """Wait for ``check()`` to hold (a clock passing a mark); whether it did within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@pytest.fixture
def users_git_config(tmp_path):
    """A ~/.gitconfig whose settings would hide hand edits from a scan, in effect for this test only."""
    home = tmp_path / "user-home"
    home.mkdir()
    (home / ".gitconfig").write_text(
        "[core]\n\tautocrlf = true\n\tfilemode = false\n\ttrustctime = false\n\tcheckstat = minimal\n"
    )
    level = pygit2.enums.ConfigLevel.GLOBAL
    before = pygit2.settings.search_path[level]
    pygit2.settings.search_path[level] = str(home)
    try:
        yield home
    finally:
        pygit2.settings.search_path[level] = before


def test_the_slot_repositories_see_hand_edits_that_the_users_git_config_would_hide(served, mirror, users_git_config):
    deploy(served, mirror, "stage")
    for slot in ("a", "b"):
        settings = pygit2.Repository(served.layout.gitdir(slot)).config
        assert settings["core.autocrlf"] == "false" and settings["core.filemode"] == "true"
        assert settings["core.trustctime"] == "true" and settings["core.checkstat"] == "default"
    top, web = os.path.join(served.path, "top.sls"), os.path.join(served.path, "web", "init.sls")
    with open(top, "rb") as handle:
        lines = handle.read()
    os.unlink(top)  # a new file, as an editor saves one: only its line ends differ
    with open(top, "wb") as handle:
        handle.write(lines.replace(b"\n", b"\r\n"))
    os.chmod(web, 0o755)
    assert served.drift(mirror.objects) == {"added": [], "modified": ["top.sls", "web/init.sls"], "deleted": []}


def test_a_slot_repository_made_by_an_older_envflow_is_given_the_slot_settings(tmp_path, users_git_config):
    gitdir = str(tmp_path / "a.git")
    pygit2.init_repository(gitdir, bare=True).free()
    slots.prepare_gitdir(gitdir, str(tmp_path / "objects"))
    settings = pygit2.Repository(gitdir).config
    assert settings["envflow.layout"] == slots._VERSION  # pylint: disable=protected-access
    assert settings["core.autocrlf"] == "false" and settings["core.trustctime"] == "true"
    with open(os.path.join(gitdir, "info", "attributes"), encoding="utf-8") as handle:
        assert handle.read().startswith("* -text")
    with open(os.path.join(gitdir, "objects", "info", "alternates"), encoding="utf-8") as handle:
        assert handle.read() == str(tmp_path / "objects") + "\n"


def test_a_slot_repository_left_half_made_is_made_again(tmp_path):
    gitdir = str(tmp_path / "a.git")
    os.makedirs(gitdir + ".new/objects")  # a run killed while making it
    os.makedirs(gitdir + "/refs")  # or while renaming: no HEAD yet
    slots.prepare_gitdir(gitdir, str(tmp_path / "objects"))
    repo = pygit2.Repository(gitdir)
    assert repo.is_bare and repo.head_is_unborn and repo.config["envflow.layout"] == slots._VERSION  # pylint: disable=protected-access
    assert not os.path.exists(gitdir + ".new")


def _recording_flushes(monkeypatch, served, slow=0.0, fail_on_thread=None):
    """Record each ``switch.sync_filesystem`` call: its thread, start and end, and whether ``path`` served then."""
    import threading  # pylint: disable=import-outside-toplevel

    from envflow import switch  # pylint: disable=import-outside-toplevel

    calls, flush = [], switch.sync_filesystem

    def recorded(path):
        call = {"thread": threading.current_thread().name, "serving": os.path.islink(served.path)}
        call["start"] = time.monotonic()
        calls.append(call)
        try:
            if call["thread"] != "MainThread":
                time.sleep(slow)
                if fail_on_thread is not None:
                    raise fail_on_thread
            return flush(path)
        finally:
            call["end"] = time.monotonic()

    monkeypatch.setattr(switch, "sync_filesystem", recorded)
    return calls


def _failed_first_deploy(served, mirror):
    """Deploy the stage branch where nothing is served, which must fail and serve nothing: ``(error, short id)``."""
    mirror.fetch()
    commit = mirror.commit("stage")
    with pytest.raises(EnvflowError) as raised:
        served.deploy(mirror.objects, commit)
    assert not os.path.lexists(served.path) and served.deployed() is None
    return str(raised.value), short(commit.id)


def test_a_whole_tree_is_flushed_once_written_and_again_before_the_switch(served, mirror, remote, monkeypatch):
    """A first deploy starts flushing the tree on a thread once its files are written, and flushes again, after
    that one ended, before the switch. A one-file change flushes only what it wrote (no whole flush)."""
    calls = _recording_flushes(monkeypatch, served, slow=0.2)
    deploy(served, mirror, "stage")
    assert [(call["thread"], call["serving"]) for call in calls] == [("envflow-flush", False), ("MainThread", False)]
    assert calls[1]["start"] >= calls[0]["end"]
    assert tree_files(served.path) == V1
    del calls[:]
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(served, mirror, "stage")
    assert calls == []


def test_a_first_deploy_that_fails_after_its_tree_is_written_waits_for_the_flush_and_serves_nothing(
    served, mirror, monkeypatch
):
    import threading  # pylint: disable=import-outside-toplevel

    calls = _recording_flushes(monkeypatch, served, slow=0.3)  # still flushing when the deploy fails

    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(slots, "write_index_file", full)  # the whole tree's index file
    error, commit = _failed_first_deploy(served, mirror)
    assert error == f"envflow: cannot deploy {commit} to {served.path}: [Errno 28] No space left on device"
    assert [call["thread"] for call in calls] == ["envflow-flush"] and "end" in calls[0]
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("envflow-")]


def test_a_flush_that_fails_on_its_thread_fails_the_first_deploy_in_one_line_and_serves_nothing(
    served, mirror, monkeypatch
):
    _recording_flushes(monkeypatch, served, fail_on_thread=OSError(5, "Input/output error"))
    error, commit = _failed_first_deploy(served, mirror)
    assert error == f"envflow: cannot deploy {commit} to {served.path}: [Errno 5] Input/output error"
    monkeypatch.undo()  # the disk is back: the next deploy serves the commit whole
    deploy(served, mirror, "stage")
    assert tree_files(served.path) == V1


def test_a_whole_tree_prepared_but_never_switched_waits_for_its_flush_and_serves_nothing(served, mirror, monkeypatch):
    """A promotion prepares its tree, then its push is refused: no switch. The flush started once the tree was written
    ends before the lock goes, and the path serves nothing."""
    import threading  # pylint: disable=import-outside-toplevel

    calls = _recording_flushes(monkeypatch, served, slow=0.3)
    mirror.fetch()
    with (
        pytest.raises(EnvflowError, match="push refused"),
        served.deploying(mirror.objects, mirror.commit("stage")) as d,
    ):
        d.prepare()
        raise EnvflowError("envflow: push refused")
    assert [call["thread"] for call in calls] == ["envflow-flush"] and "end" in calls[0]
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("envflow-")]
    assert not os.path.lexists(served.path) and served.deployed() is None
