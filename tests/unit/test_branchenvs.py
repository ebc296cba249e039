"""Branch environments served from a real remote: the plan's cap, sync (create, update, remove), status, dry runs,
and the master's caches of their saltenvs.

Each test makes branches on a real bare repository (``tests.gitrepo``) and a
real mirror of it; ``<srv>/branches`` is served as ``file_roots: {__env__:
[<srv>/branches/__env__]}`` would serve it.
"""

import dataclasses
import os
import shutil

import pytest
import salt.config

from envflow import branchenvs, history, pipeline, saltbus
from envflow.config import parse
from envflow.errors import RemoteError
from envflow.remote import Mirror
from tests.gitrepo import config, files_at, git, tree_files
from tests.unit.test_saltbus import _cached, _store

FEATURE = ["feature/*"]


def configured(remote, tmp_path, **block):
    """The pipeline (test, stage, prod under ``tmp_path/srv``) with branch environments at ``srv/branches``.

    ``block`` sets keys of ``envflow:branch_environments`` (``branches``
    defaults to ``feature/*``); ``states`` and ``pillar`` are the block's layout.
    """
    raw = config(remote.path, tmp_path / "srv")
    for key in ("states", "pillar"):
        if key in block:
            raw[key] = block.pop(key)
    raw["branch_environments"] = {"branches": FEATURE, "path": str(tmp_path / "srv" / "branches"), **block}
    return parse(raw)


@pytest.fixture
def branch_config(remote, tmp_path):
    return configured(remote, tmp_path)


def push_branch(remote, name, files=None, base="develop"):
    """Make branch ``name`` on the remote at ``base``'s tip, with ``files`` committed on top when given; its tip."""
    git("fetch", "-q", "origin", cwd=remote.work)
    git("checkout", "-q", "--detach", f"origin/{base}", cwd=remote.work)
    if files:
        remote.write(files)
        git("add", "-A", cwd=remote.work)
        git("commit", "-q", "-m", f"work on {name}", cwd=remote.work)
    git("push", "-q", "origin", f"HEAD:refs/heads/{name}", cwd=remote.work)
    return remote.tip(name)


def delete_branch(remote, name):
    git("update-ref", "-d", f"refs/heads/{name}", cwd=remote.path)


def synced(config, mirror, **options):
    """Fetch, then sync as the runner does."""
    mirror.fetch()
    return branchenvs.sync(config, mirror, branchenvs.reserved_saltenvs(config), **options)


def served_at(config, saltenv):
    return os.path.join(config.branch_environments.path, saltenv)


def snapshot(root):
    """Every entry under ``root``, not following symlinks: kind, content or target, inode and mtime."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(folder, name)
            info = os.lstat(full)
            if os.path.islink(full):
                what = ("link", os.readlink(full))
            elif os.path.isdir(full):
                what = ("dir",)
            else:
                with open(full, "rb") as handle:
                    what = ("file", handle.read())
            rel = os.path.relpath(full, root)
            # The slots' git directories are envflow's scratch space: their files count, not their folders' times.
            stamp = None if what == ("dir",) and ".git" in rel else info.st_mtime_ns
            found[rel] = (*what, info.st_ino, stamp)
    return found


def deployed_entries(mirror, saltenv=None):
    return [
        entry for entry in history.entries(mirror, saltenv, limit=None) if entry["action"] in ("deployed", "removed")
    ]


# The cap


def configured_settings(config, limit):
    return dataclasses.replace(config.branch_environments, max=limit)


def test_the_first_branches_by_name_are_served_and_the_rest_capped(branch_config):
    settings = configured_settings(branch_config, limit=2)
    found = branchenvs.plan(settings, ["feature/c", "feature/a", "feature/b", "develop"], {})
    assert found.serve == {"feature_a": "feature/a", "feature_b": "feature/b"}
    assert list(found.capped) == ["feature/c"]
    line = found.capped["feature/c"]
    assert line.startswith("branch 'feature/c': ")
    assert line.endswith(
        "2 branch environments are served, the most envflow:branch_environments:max allows; "
        "delete a branch or raise max"
    )
    assert "\n" not in line


def test_served_ones_keep_their_place_when_a_branch_sorting_before_them_comes(remote, mirror, tmp_path):
    config = configured(remote, tmp_path, max=2)
    push_branch(remote, "feature/c")
    push_branch(remote, "feature/d")
    assert sorted(synced(config, mirror)["environments"]) == ["feature_c", "feature_d"]
    push_branch(remote, "feature/a")
    report = synced(config, mirror)
    assert list(report["capped"]) == ["feature/a"]
    assert "max" in report["capped"]["feature/a"]
    assert report["removed"] == {}
    assert branchenvs.served(config.branch_environments) == {"feature_c": "feature/c", "feature_d": "feature/d"}
    assert not os.path.lexists(served_at(config, "feature_a"))


def test_deleting_a_branch_frees_its_place_for_a_capped_one(remote, mirror, tmp_path):
    config = configured(remote, tmp_path, max=2)
    for name in ("feature/c", "feature/d", "feature/a"):
        push_branch(remote, name)
    synced(config, mirror)
    assert sorted(branchenvs.served(config.branch_environments)) == ["feature_a", "feature_c"]
    delete_branch(remote, "feature/c")
    # As a push deleting feature/c makes the runner sync: that branch only, filling the places free.
    report = synced(config, mirror, only=lambda _saltenv, branch: branch == "feature/c", fill=True)
    assert list(report["removed"]) == ["feature_c"]
    assert list(report["environments"]) == ["feature_d"]
    assert report["environments"]["feature_d"]["changed"] is True
    assert report["capped"] == {}
    assert branchenvs.served(config.branch_environments) == {"feature_a": "feature/a", "feature_d": "feature/d"}
    assert os.path.isdir(served_at(config, "feature_d"))


def test_lowering_max_removes_the_last_ones_served(remote, mirror, tmp_path):
    for name in ("feature/c", "feature/d", "feature/e"):
        push_branch(remote, name)
    synced(configured(remote, tmp_path, max=3), mirror)
    config = configured(remote, tmp_path, max=1)
    report = synced(config, mirror)
    assert sorted(report["removed"]) == ["feature_d", "feature_e"]
    assert sorted(report["capped"]) == ["feature/d", "feature/e"]
    assert branchenvs.served(config.branch_environments) == {"feature_c": "feature/c"}
    assert sorted(os.listdir(config.branch_environments.path)) == ["feature_c"]


# Sync: create, update, no-op


def test_the_first_sync_serves_each_branch_at_path_saltenv(remote, mirror, branch_config):
    settings = branch_config.branch_environments
    os.makedirs(os.path.join(settings.path, "__env__"))  # made by salt-master for file_roots: {__env__: [...]}
    nginx = push_branch(remote, "feature/new-nginx", {"web/init.sls": "# nginx\n", "nginx/init.sls": "# new\n"})
    other = push_branch(remote, "feature/b")
    report = synced(branch_config, mirror, by="alice")
    assert sorted(report["environments"]) == ["feature_b", "feature_new-nginx"]
    entry = report["environments"]["feature_new-nginx"]
    assert (entry["branch"], entry["changed"], entry["new"]["id"], entry["old"]) == (
        "feature/new-nginx",
        True,
        nginx,
        None,
    )
    assert (report["removed"], report["refused"], report["capped"]) == ({}, {}, {})
    path = served_at(branch_config, "feature_new-nginx")
    assert os.readlink(path) == "../.branches.envflow/feature_new-nginx/a"
    assert os.path.realpath(path) == os.path.join(
        os.path.dirname(settings.path), ".branches.envflow/feature_new-nginx/a"
    )
    assert tree_files(path) == files_at(remote.path, "feature/new-nginx")
    assert tree_files(served_at(branch_config, "feature_b")) == files_at(remote.path, "feature/b")
    assert branchenvs.served(settings) == {"feature_b": "feature/b", "feature_new-nginx": "feature/new-nginx"}
    # salt-master's __env__ directory is left as it is, and nothing of envflow's lies in path.
    assert sorted(os.listdir(settings.path)) == ["__env__", "feature_b", "feature_new-nginx"]
    assert os.listdir(os.path.join(settings.path, "__env__")) == []
    got = {entry["env"]: entry for entry in deployed_entries(mirror)}
    assert {env: (e["action"], e["branch"], e["to"], e["by"], "from" in e) for env, e in got.items()} == {
        "feature_new-nginx": ("deployed", "feature/new-nginx", nginx, "alice", False),
        "feature_b": ("deployed", "feature/b", other, "alice", False),
    }


def test_the_blocks_states_and_pillar_layout_is_served_under_each_saltenv(remote, mirror, tmp_path):
    config = configured(remote, tmp_path, states="salt", pillar="pillar")
    files = {"salt/top.sls": "base: {}\n", "salt/web/init.sls": "# web\n", "pillar/top.sls": "base: {}\n"}
    push_branch(remote, "feature/x", files)
    synced(config, mirror)
    env = branchenvs.environment(config.branch_environments, "feature_x", "feature/x")
    assert tree_files(env.path) == files_at(remote.path, "feature/x")
    assert tree_files(env.states_dir) == {"top.sls": "base: {}\n", "web/init.sls": "# web\n"}
    assert tree_files(env.pillar_dir) == {"top.sls": "base: {}\n"}
    # What file_roots and pillar_roots list, with __env__ made the saltenv, is that directory.
    settings = config.branch_environments
    assert settings.states_root.replace("__env__", "feature_x") == env.states_dir
    assert settings.pillar_root.replace("__env__", "feature_x") == env.pillar_dir


def test_a_branch_that_moves_updates_its_environment_only(remote, mirror, branch_config):
    first = push_branch(remote, "feature/a")
    push_branch(remote, "feature/b")
    synced(branch_config, mirror)
    b_before = snapshot(served_at(branch_config, "feature_b")), os.readlink(served_at(branch_config, "feature_b"))
    b_home = snapshot(branchenvs.home_of(branch_config.branch_environments, "feature_b"))
    entries_before = deployed_entries(mirror)
    new = remote.commit("feature/a", {"web/init.sls": "# web on feature a\n"})
    report = synced(branch_config, mirror, by="bob")
    assert report["environments"]["feature_a"]["changed"] is True
    assert report["environments"]["feature_a"]["files"] == {"added": 0, "modified": 1, "deleted": 0}
    assert report["environments"]["feature_b"]["changed"] is False
    assert tree_files(served_at(branch_config, "feature_a")) == files_at(remote.path, "feature/a")
    assert os.readlink(served_at(branch_config, "feature_a")) == "../.branches.envflow/feature_a/b"
    assert (
        snapshot(served_at(branch_config, "feature_b")),
        os.readlink(served_at(branch_config, "feature_b")),
    ) == b_before
    assert snapshot(branchenvs.home_of(branch_config.branch_environments, "feature_b")) == b_home
    added = deployed_entries(mirror)[: -len(entries_before)]
    assert [{key: entry.get(key) for key in ("action", "env", "branch", "from", "to", "by")} for entry in added] == [
        {"action": "deployed", "env": "feature_a", "branch": "feature/a", "from": first, "to": new, "by": "bob"}
    ]


def test_a_sync_with_nothing_new_changes_nothing(remote, mirror, branch_config):
    push_branch(remote, "feature/a")
    synced(branch_config, mirror)
    before = snapshot(str(os.path.dirname(branch_config.branch_environments.path)))
    entries = deployed_entries(mirror)
    report = synced(branch_config, mirror)
    assert report["environments"]["feature_a"]["changed"] is False
    assert report["removed"] == {}
    assert deployed_entries(mirror) == entries
    after = snapshot(str(os.path.dirname(branch_config.branch_environments.path)))
    # The lock file is opened to be held; every tree, link and record stays as it was.
    assert {path: held for path, held in after.items() if not path.endswith("lock")} == {
        path: held for path, held in before.items() if not path.endswith("lock")
    }


def test_the_same_path_of_two_branch_environments_is_written_at_different_mtimes(remote, mirror, branch_config):
    """Salt keeps one hash cache, keyed by mtime, for every saltenv served through __env__ (see _next_tick)."""
    push_branch(remote, "feature/a", {"web/init.sls": "# a\n"})
    push_branch(remote, "feature/b", {"web/init.sls": "# b\n"})
    synced(branch_config, mirror)
    stamps = {
        os.stat(os.path.join(served_at(branch_config, s), "web/init.sls")).st_mtime_ns
        for s in ("feature_a", "feature_b")
    }
    assert len(stamps) == 2


def test_next_tick_returns_once_the_file_systems_clock_moved(tmp_path):
    before = tmp_path / "before"
    before.write_text("x")
    branchenvs._next_tick(str(tmp_path))  # pylint: disable=protected-access
    after = tmp_path / "after"
    after.write_text("x")
    assert after.stat().st_mtime_ns > before.stat().st_mtime_ns


# Sync: removal


def test_a_branch_deleted_on_the_remote_is_removed_in_one_unlink_then_its_home(remote, mirror, branch_config):
    settings = branch_config.branch_environments
    os.makedirs(os.path.join(settings.path, "__env__"))
    tip = push_branch(remote, "feature/a")
    push_branch(remote, "feature/b")
    synced(branch_config, mirror)
    delete_branch(remote, "feature/a")
    calls = []

    def removed(env, done):
        calls.append((env.name, env.branch, env.path, dict(done)))
        return {**done, "seen": True}

    report = synced(branch_config, mirror, by="carol", removed=removed)
    assert report["removed"] == {"feature_a": {"branch": "feature/a", "commit": tip, "seen": True}}
    assert calls == [
        ("feature_a", "feature/a", served_at(branch_config, "feature_a"), {"branch": "feature/a", "commit": tip})
    ]
    assert not os.path.lexists(served_at(branch_config, "feature_a"))
    assert not os.path.lexists(branchenvs.home_of(settings, "feature_a"))
    assert sorted(os.listdir(settings.path)) == ["__env__", "feature_b"]
    assert branchenvs.served(settings) == {"feature_b": "feature/b"}
    assert tree_files(served_at(branch_config, "feature_b")) == files_at(remote.path, "feature/b")
    entry = deployed_entries(mirror, "feature_a")[0]
    assert {key: entry.get(key) for key in ("action", "env", "branch", "from", "by")} == {
        "action": "removed",
        "env": "feature_a",
        "branch": "feature/a",
        "from": tip,
        "by": "carol",
    }


def test_a_branch_no_longer_matching_the_patterns_is_removed(remote, mirror, tmp_path):
    push_branch(remote, "feature/a")
    push_branch(remote, "bug/b")
    synced(configured(remote, tmp_path, branches=["feature/*", "bug/*"]), mirror)
    config = configured(remote, tmp_path, branches=["feature/*"])
    assert branchenvs.status(config, mirror)["environments"]["bug_b"]["goes"] == (
        "its branch is gone or no longer served: the next refresh removes it"
    )
    assert list(synced(config, mirror)["removed"]) == ["bug_b"]
    assert branchenvs.served(config.branch_environments) == {"feature_a": "feature/a"}


@pytest.mark.parametrize("failure", ["moved away", "not a repository"])
def test_a_failed_fetch_raises_so_nothing_is_removed_from_what_the_mirror_last_saw(
    remote, mirror, branch_config, failure
):
    push_branch(remote, "feature/a")
    synced(branch_config, mirror)
    path = served_at(branch_config, "feature_a")
    served = tree_files(path), os.readlink(path)
    delete_branch(remote, "feature/a")
    if failure == "moved away":
        os.rename(remote.path, remote.path + ".moved")
    else:
        os.rename(os.path.join(remote.path, "HEAD"), os.path.join(remote.path, "HEAD.moved"))
    # The runner fetches before it syncs (its _mirror): a fetch that fails raises, and sync is never reached.
    with pytest.raises(RemoteError):
        mirror.fetch()
    assert "feature/a" in mirror.branches()
    # And sync, given that mirror all the same, removes nothing the mirror still lists.
    report = branchenvs.sync(branch_config, mirror)
    assert report["removed"] == {}
    assert (tree_files(path), os.readlink(path)) == served
    assert branchenvs.served(branch_config.branch_environments) == {"feature_a": "feature/a"}
    if failure == "not a repository":
        assert report["environments"]["feature_a"]["changed"] is False


def test_a_removal_interrupted_after_the_branch_file_leaves_nothing_listed_or_served(remote, mirror, branch_config):
    settings = branch_config.branch_environments
    push_branch(remote, "feature/a")
    synced(branch_config, mirror)
    # What a removal killed after its first steps leaves: the link gone, the branch file gone, the home still there.
    os.unlink(served_at(branch_config, "feature_a"))
    os.unlink(os.path.join(branchenvs.home_of(settings, "feature_a"), "branch"))
    assert branchenvs.served(settings) == {}
    assert branchenvs.status(branch_config, mirror)["environments"] == {}
    # The branch still there, the next sync serves it again, whole, from what was left.
    report = synced(branch_config, mirror)
    assert report["environments"]["feature_a"]["changed"] is True
    assert tree_files(served_at(branch_config, "feature_a")) == files_at(remote.path, "feature/a")
    assert branchenvs.served(settings) == {"feature_a": "feature/a"}


def test_a_saltenv_served_again_for_another_branch_is_removed_then_deployed(remote, mirror, tmp_path):
    branch_config = configured(remote, tmp_path, branches=["feature*"])
    settings = branch_config.branch_environments
    push_branch(remote, "feature/x")
    synced(branch_config, mirror)
    delete_branch(remote, "feature/x")
    push_branch(remote, "feature_x", {"web/init.sls": "# now from feature_x\n"})
    report = synced(branch_config, mirror)
    assert report["removed"]["feature_x"]["branch"] == "feature/x"
    assert report["environments"]["feature_x"]["branch"] == "feature_x"
    assert branchenvs.served(settings) == {"feature_x": "feature_x"}
    assert tree_files(served_at(branch_config, "feature_x")) == files_at(remote.path, "feature_x")


# Sync: what it touches


def test_only_limits_the_work_and_fill_adds_those_not_served_yet(remote, mirror, branch_config):
    push_branch(remote, "feature/a")
    push_branch(remote, "feature/b")
    synced(branch_config, mirror)
    remote.commit("feature/a", {"web/init.sls": "# a2\n"})
    remote.commit("feature/b", {"web/init.sls": "# b2\n"})
    push_branch(remote, "feature/c")
    delete_branch(remote, "feature/b")
    b_before = snapshot(served_at(branch_config, "feature_b"))
    report = synced(branch_config, mirror, only=lambda _saltenv, branch: branch == "feature/a")
    assert list(report["environments"]) == ["feature_a"]
    assert report["removed"] == {}
    assert tree_files(served_at(branch_config, "feature_a")) == files_at(remote.path, "feature/a")
    assert snapshot(served_at(branch_config, "feature_b")) == b_before
    assert not os.path.lexists(served_at(branch_config, "feature_c"))
    report = synced(branch_config, mirror, only=lambda _saltenv, branch: branch == "feature/a", fill=True)
    assert sorted(report["environments"]) == ["feature_a", "feature_c"]
    assert report["environments"]["feature_a"]["changed"] is False
    assert report["removed"] == {}
    assert os.path.lexists(served_at(branch_config, "feature_b"))
    assert list(synced(branch_config, mirror)["removed"]) == ["feature_b"]


def test_a_pipeline_environments_directory_is_never_touched(remote, mirror, tmp_path):
    config = configured(remote, tmp_path, branches=["feature/*", "stage", "Test", "Prod_preview"])
    mirror.fetch()
    pipeline.deploy(config, mirror, "test")
    pipeline.deploy(config, mirror, "stage")
    srv = tmp_path / "srv"
    pipeline_dirs = ("test", ".test.envflow", "stage", ".stage.envflow")
    before = {name: snapshot(str(srv / name)) for name in pipeline_dirs}
    links = {name: os.readlink(srv / name) for name in ("test", "stage")}
    push_branch(remote, "Test")
    push_branch(remote, "feature/a")
    report = synced(config, mirror)
    assert list(report["environments"]) == ["feature_a"]
    assert sorted(report["refused"]) == ["Test", "stage"]
    assert report["refused"]["Test"] == (
        "branch 'Test': its saltenv Test is test, a saltenv the pipeline or the master's roots already serve "
        "(letter case aside); rename the branch"
    )
    remote.commit("feature/a", {"web/init.sls": "# a2\n"})
    synced(config, mirror)
    assert {name: snapshot(str(srv / name)) for name in pipeline_dirs} == before
    assert {name: os.readlink(srv / name) for name in ("test", "stage")} == links
    assert sorted(os.listdir(config.branch_environments.path)) == ["feature_a"]


def test_a_saltenv_the_masters_roots_list_by_name_is_refused(remote, mirror, branch_config):
    push_branch(remote, "feature/qa")
    push_branch(remote, "feature/ok")
    opts = {"file_roots": {"base": ["/srv/salt/base"], "feature_qa": ["/srv/qa"], "__env__": ["/x/__env__"]}}
    mirror.fetch()
    report = branchenvs.sync(branch_config, mirror, branchenvs.reserved_saltenvs(branch_config, opts))
    assert list(report["refused"]) == ["feature/qa"]
    assert list(report["environments"]) == ["feature_ok"]
    assert not os.path.lexists(served_at(branch_config, "feature_qa"))


def test_the_names_salt_would_not_take_are_refused_and_the_others_served(remote, mirror, tmp_path):
    config = configured(remote, tmp_path, branches=["*"])
    for name in ("feature/a+b", "-feature", "__env__", "feature/ok"):
        push_branch(remote, name)
    report = synced(config, mirror)
    assert sorted(report["refused"]) == ["-feature", "__env__", "feature/a+b", "stage"]
    assert sorted(report["environments"]) == ["develop", "feature_ok", "master"]
    assert sorted(os.listdir(config.branch_environments.path)) == ["develop", "feature_ok", "master"]


@pytest.mark.parametrize("name", ["lock", "tick"])
def test_a_branch_named_as_envflows_own_files_is_served_or_refused_in_one_line(remote, mirror, tmp_path, name):
    """The branch environments' lock and clock probe are files of the directory that holds the saltenvs' homes."""
    config = configured(remote, tmp_path, branches=[name, "feature/*"])
    push_branch(remote, name, {"web/init.sls": f"# {name}\n"})
    first = synced(config, mirror)
    push_branch(remote, "feature/a")
    second = synced(config, mirror)
    assert second["environments"]["feature_a"]["changed"] is True
    for report in (first, second):
        if name in report["refused"]:
            assert "\n" not in report["refused"][name]
        else:
            assert "error" not in report["environments"][name]
    if name not in second["refused"]:
        assert tree_files(served_at(config, name)) == files_at(remote.path, name)


def test_hand_edits_are_refused_in_their_environment_only_unless_forced(remote, mirror, branch_config):
    push_branch(remote, "feature/a")
    push_branch(remote, "feature/b")
    synced(branch_config, mirror)
    edited = os.path.join(served_at(branch_config, "feature_a"), "web", "extra.sls")
    with open(edited, "w", encoding="utf-8") as handle:
        handle.write("# by hand\n")
    remote.commit("feature/a", {"web/init.sls": "# a2\n"})
    remote.commit("feature/b", {"web/init.sls": "# b2\n"})
    report = synced(branch_config, mirror)
    assert report["environments"]["feature_a"] == {
        "branch": "feature/a",
        "error": f"envflow: {served_at(branch_config, 'feature_a')} was edited by hand (added: web/extra.sls); commit "
        "those changes to the repository, or deploy with force=True to discard them",
    }
    assert report["environments"]["feature_b"]["changed"] is True
    assert tree_files(served_at(branch_config, "feature_b")) == files_at(remote.path, "feature/b")
    assert os.path.exists(edited)
    report = synced(branch_config, mirror, force=True)
    assert report["environments"]["feature_a"]["changed"] is True
    assert report["environments"]["feature_a"]["discarded"] == {
        "added": ["web/extra.sls"],
        "modified": [],
        "deleted": [],
    }
    assert tree_files(served_at(branch_config, "feature_a")) == files_at(remote.path, "feature/a")


def test_a_deploy_that_fails_does_not_stop_the_others(remote, mirror, branch_config):
    settings = branch_config.branch_environments
    for name in ("feature/a", "feature/b", "feature/c"):
        push_branch(remote, name)
    os.makedirs(settings.home)
    blocker = branchenvs.home_of(settings, "feature_b")
    with open(blocker, "w", encoding="utf-8") as handle:  # a file where its home must go
        handle.write("")
    report = synced(branch_config, mirror)
    assert report["environments"]["feature_b"]["branch"] == "feature/b"
    assert report["environments"]["feature_b"]["error"].startswith(
        f"envflow: cannot deploy {remote.tip('feature/b')[:10]} to {served_at(branch_config, 'feature_b')}: "
    )
    assert "\n" not in report["environments"]["feature_b"]["error"]
    assert report["environments"]["feature_a"]["changed"] is True
    assert report["environments"]["feature_c"]["changed"] is True
    assert not os.path.lexists(served_at(branch_config, "feature_b"))


# Status and dry runs


def test_status_reports_each_served_one_and_the_branches_not_served(remote, mirror, tmp_path):
    config = configured(remote, tmp_path, max=2)
    a = push_branch(remote, "feature/a")
    push_branch(remote, "feature/b")
    mirror.fetch()
    assert branchenvs.status(config, mirror)["environments"] == {}  # nothing served yet, nothing made on disk
    assert not os.path.exists(config.branch_environments.home)
    synced(config, mirror)
    push_branch(remote, "feature/c")
    push_branch(remote, "feature/x+y")
    new = remote.commit("feature/a", {"web/init.sls": "# a2\n"})
    delete_branch(remote, "feature/b")
    mirror.fetch()
    report = branchenvs.status(config, mirror)
    assert report["path"] == config.branch_environments.path
    assert sorted(report["environments"]) == ["feature_a", "feature_b"]
    entry = report["environments"]["feature_a"]
    assert (entry["branch"], entry["deployed"], entry["remote"], entry["in_sync"]) == ("feature/a", a, new, False)
    assert entry["summary"] == "initial states"
    assert entry["since"] is not None and "goes" not in entry
    gone = report["environments"]["feature_b"]
    assert (gone["remote"], gone["in_sync"]) == (None, False)
    assert gone["goes"] == "its branch is gone or no longer served: the next refresh removes it"
    assert list(report["refused"]) == ["feature/x+y"]
    # feature/b's place is free, and feature/c takes it at the next sync: not capped.
    assert report["capped"] == {}
    synced(config, mirror)
    report = branchenvs.status(config, mirror)
    assert {saltenv: e["in_sync"] for saltenv, e in report["environments"].items()} == {
        "feature_a": True,
        "feature_c": True,
    }
    push_branch(remote, "feature/0")
    mirror.fetch()
    assert list(branchenvs.status(config, mirror)["capped"]) == ["feature/0"]


def test_status_says_why_a_saltenv_cannot_be_read(remote, mirror, branch_config):
    push_branch(remote, "feature/a")
    synced(branch_config, mirror)
    home = branchenvs.home_of(branch_config.branch_environments, "feature_a")
    os.unlink(os.path.join(home, "a.git", "envflow.json"))
    entry = branchenvs.status(branch_config, mirror)["environments"]["feature_a"]
    assert (entry["deployed"], entry["in_sync"]) == (None, False)
    assert entry["problem"] == (
        f"envflow: {served_at(branch_config, 'feature_a')} serves a tree envflow has no record of; deploy with "
        "force=True to replace it"
    )
    assert branchenvs.dry_run(branch_config, mirror)["environments"]["feature_a"] == {
        "branch": "feature/a",
        "error": entry["problem"],
    }


def test_a_dry_run_says_what_sync_would_do_and_changes_nothing(remote, mirror, branch_config):
    same = push_branch(remote, "feature/same")
    moved_from = push_branch(remote, "feature/moved")
    gone = push_branch(remote, "feature/gone")
    synced(branch_config, mirror)
    moved_to = remote.commit("feature/moved", {"web/init.sls": "# moved\n"})
    new = push_branch(remote, "feature/new", {"new.sls": "# new\n"})
    push_branch(remote, "feature/a+b")
    delete_branch(remote, "feature/gone")
    mirror.fetch()
    srv = os.path.dirname(branch_config.branch_environments.path)
    before, entries = snapshot(srv), deployed_entries(mirror)
    report = branchenvs.dry_run(branch_config, mirror)
    assert report["environments"] == {
        "feature_same": {"branch": "feature/same", "action": "none", "old": same, "new": same},
        "feature_moved": {"branch": "feature/moved", "action": "update", "old": moved_from, "new": moved_to},
        "feature_new": {"branch": "feature/new", "action": "create", "old": None, "new": new},
        "feature_gone": {"branch": "feature/gone", "action": "remove"},
    }
    assert list(report["refused"]) == ["feature/a+b"]
    assert report["capped"] == {}
    assert snapshot(srv) == before
    assert deployed_entries(mirror) == entries
    assert gone != new


def test_a_dry_run_of_a_saltenv_changing_branch_says_it_is_served_after(remote, mirror, tmp_path):
    """sync removes feature_x (of feature/x) and serves feature_x again, of branch feature_x."""
    branch_config = configured(remote, tmp_path, branches=["feature*"])
    push_branch(remote, "feature/x")
    synced(branch_config, mirror)
    delete_branch(remote, "feature/x")
    tip = push_branch(remote, "feature_x", {"web/init.sls": "# feature_x\n"})
    mirror.fetch()
    planned = branchenvs.dry_run(branch_config, mirror)["environments"]["feature_x"]
    assert (planned["branch"], planned["action"], planned["new"]) == ("feature_x", "create", tip)


# The master's caches


@pytest.fixture
def master_opts(tmp_path, branch_config):
    opts = dict(salt.config.DEFAULT_MASTER_OPTS)
    root = os.path.join(branch_config.branch_environments.path, "__env__")
    opts.update(
        cachedir=str(tmp_path / "master-cache"),
        file_roots={"base": ["/srv/salt/base"], "__env__": [root]},
        pillar_roots={"base": ["/srv/pillar"], "__env__": [os.path.join(root, "pillar")]},
        hash_type="sha256",
    )
    os.makedirs(opts["cachedir"])
    return opts


def fill_cache(opts, paths, saltenvs):
    """Lay out the roots caches as Salt's roots file server writes them: one __env__ hash cache, a list per saltenv."""
    for path in paths:
        full = os.path.join(opts["cachedir"], "roots", "hash", "__env__", f"{path}.hash.sha256")
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w", encoding="utf-8") as handle:
            handle.write("0" * 64 + ":1")
    lists = os.path.join(opts["cachedir"], "file_lists", "roots")
    os.makedirs(lists, exist_ok=True)
    for saltenv in saltenvs:
        with open(os.path.join(lists, f"{saltenv}.p"), "wb") as handle:
            handle.write(b"\x80")


def cached(opts):
    """The cache files left, relative to the cachedir."""
    found = []
    for folder, _dirs, files in os.walk(opts["cachedir"]):
        found.extend(os.path.relpath(os.path.join(folder, name), opts["cachedir"]) for name in files)
    return sorted(path for path in found if path.startswith(("roots", "file_lists")))


HASHES = ["roots/hash/__env__/top.sls.hash.sha256", "roots/hash/__env__/web/init.sls.hash.sha256"]
LISTS = ["file_lists/roots/feature_a.p", "file_lists/roots/feature_b.p"]


def test_with_changes_only_the_changed_paths_hashes_go(master_opts, branch_config):
    env = branchenvs.environment(branch_config.branch_environments, "feature_a", "feature/a")
    fill_cache(master_opts, ["top.sls", "web/init.sls"], ["feature_a", "feature_b"])
    done = saltbus.refresh_branch_caches(master_opts, env, {"paths": ["web/init.sls"], "listing": False})
    assert done == {"refreshed": ["feature_a"], "pillar_refreshed": []}
    assert cached(master_opts) == sorted([HASHES[0], *LISTS])
    saltbus.refresh_branch_caches(master_opts, env, {"paths": ["new.sls"], "listing": True})
    assert cached(master_opts) == sorted([HASHES[0], LISTS[1]])


def test_without_changes_every_env_hash_and_the_saltenvs_list_go(master_opts, branch_config):
    env = branchenvs.environment(branch_config.branch_environments, "feature_a", "feature/a")
    fill_cache(master_opts, ["top.sls", "web/init.sls"], ["feature_a", "feature_b"])
    saltbus.refresh_branch_caches(master_opts, env)
    assert cached(master_opts) == [LISTS[1]]


def test_a_states_directory_is_the_root_of_the_changed_paths(master_opts, remote, tmp_path):
    config = configured(remote, tmp_path, states="salt", pillar="pillar")
    env = branchenvs.environment(config.branch_environments, "feature_a", "feature/a")
    fill_cache(master_opts, ["top.sls", "web/init.sls"], [])
    saltbus.refresh_branch_caches(
        master_opts, env, {"paths": ["salt/web/init.sls", "pillar/top.sls"], "listing": False}
    )
    assert cached(master_opts) == [HASHES[0]]


@pytest.mark.parametrize(
    "file_roots",
    [
        {"base": ["/srv/salt/base"], "feature_a": ["/srv/qa"], "__env__": ["/srv/salt/branches/__env__"]},
        {"base": ["/srv/salt/base"]},
        None,
    ],
    ids=["listed-by-name", "no-__env__", "no-file_roots"],
)
def test_nothing_is_cleared_for_a_saltenv_not_served_through_env(master_opts, branch_config, file_roots):
    env = branchenvs.environment(branch_config.branch_environments, "feature_a", "feature/a")
    fill_cache(master_opts, ["top.sls", "web/init.sls"], ["feature_a", "feature_b"])
    opts = dict(master_opts, file_roots=file_roots, pillar_roots={})
    assert saltbus.refresh_branch_caches(opts, env) == {"refreshed": [], "pillar_refreshed": []}
    assert saltbus.refresh_branch_caches(opts, env, {"paths": ["top.sls"], "listing": True})["refreshed"] == []
    assert cached(master_opts) == sorted(HASHES + LISTS)


@pytest.mark.parametrize("pillar_cache", [True, False])
def test_the_cached_pillars_of_the_saltenv_go_when_pillar_roots_serve_it(master_opts, remote, tmp_path, pillar_cache):
    config = configured(remote, tmp_path, states="salt", pillar="pillar")
    env = branchenvs.environment(config.branch_environments, "feature_a", "feature/a")
    opts = dict(master_opts, pillar_cache=pillar_cache)
    for pillarenv in ("feature_a", "feature_b"):
        _store(opts, "web1", pillarenv, {"app": pillarenv})
    assert saltbus.refresh_branch_caches(opts, env)["pillar_refreshed"] == ["feature_a"]
    assert _cached(opts) == {("web1", "feature_b"): {"app": "feature_b"}}


# The keys docs/workflows/events.rst gives a branch environment's events (a deployed one has no minions).
EVENT_KEYS = {
    "deployed": ("env", "branch", "path", "old", "new", "refreshed", "pillar_refreshed"),
    "removed": ("env", "branch", "path", "commit", "refreshed", "pillar_refreshed"),
}


class Fired:
    """A ``fire(saltenv, action, data)`` that records what it was called with: each documented key of the data."""

    def __init__(self):
        self.calls = []

    def __call__(self, saltenv, action, data):
        assert "minions" not in data
        self.calls.append((saltenv, action, {key: data.get(key, "<missing>") for key in EVENT_KEYS[action]}))


def test_each_change_clears_its_caches_and_fires_an_event(remote, mirror, branch_config, master_opts):
    fire = Fired()

    def deployed(env, result):
        return saltbus.after_branch_change(master_opts, env, result, fire)

    def removed(env, done):
        return saltbus.after_branch_change(master_opts, env, done, fire, action="removed")

    first = push_branch(remote, "feature/a")
    fill_cache(master_opts, ["top.sls", "web/init.sls"], ["feature_a", "feature_b"])
    synced(branch_config, mirror, deployed=deployed, removed=removed)
    path = served_at(branch_config, "feature_a")
    assert fire.calls == [
        (
            "feature_a",
            "deployed",
            {
                "env": "feature_a",
                "branch": "feature/a",
                "path": path,
                "old": None,
                "new": first,
                "refreshed": ["feature_a"],
                "pillar_refreshed": [],
            },
        )
    ]
    assert cached(master_opts) == [LISTS[1]]  # nothing was served before: every __env__ hash went
    # A deploy that changes one file: its hash goes, the others stay.
    fill_cache(master_opts, ["top.sls", "web/init.sls"], ["feature_a"])
    second = remote.commit("feature/a", {"web/init.sls": "# a2\n"})
    report = synced(branch_config, mirror, deployed=deployed, removed=removed)
    assert report["environments"]["feature_a"]["refreshed"] == ["feature_a"]
    assert "changes" not in report["environments"]["feature_a"]
    assert fire.calls[-1] == (
        "feature_a",
        "deployed",
        {
            "env": "feature_a",
            "branch": "feature/a",
            "path": path,
            "old": first,
            "new": second,
            "refreshed": ["feature_a"],
            "pillar_refreshed": [],
        },
    )
    assert cached(master_opts) == sorted([HASHES[0], *LISTS])
    # An unchanged deploy fires nothing and clears nothing.
    report = synced(branch_config, mirror, deployed=deployed, removed=removed)
    assert len(fire.calls) == 2
    assert report["environments"]["feature_a"]["refreshed"] == []
    assert cached(master_opts) == sorted([HASHES[0], *LISTS])
    delete_branch(remote, "feature/a")
    report = synced(branch_config, mirror, deployed=deployed, removed=removed)
    assert report["removed"]["feature_a"] == {
        "branch": "feature/a",
        "commit": second,
        "refreshed": ["feature_a"],
        "pillar_refreshed": [],
    }
    assert fire.calls[-1] == (
        "feature_a",
        "removed",
        {
            "env": "feature_a",
            "branch": "feature/a",
            "path": path,
            "commit": second,
            "refreshed": ["feature_a"],
            "pillar_refreshed": [],
        },
    )
    assert cached(master_opts) == [LISTS[1]]


def test_caches_that_cannot_be_cleared_are_a_warning_and_the_event_still_fires(master_opts, branch_config):
    env = branchenvs.environment(branch_config.branch_environments, "feature_a", "feature/a")
    os.makedirs(os.path.join(master_opts["cachedir"], "file_lists", "roots", "feature_a.p"))  # not a file
    fire = Fired()
    done = saltbus.after_branch_change(master_opts, env, {"branch": "feature/a", "commit": "c" * 40}, fire, "removed")
    assert done["warning"].startswith("envflow: the master's caches for saltenv feature_a were not cleared: ")
    assert [(saltenv, action) for saltenv, action, _data in fire.calls] == [("feature_a", "removed")]


def test_the_mirror_lists_the_remotes_branches_after_each_fetch(remote, tmp_path):
    with Mirror(remote.path, str(tmp_path / "cache2")) as mirror:
        mirror.fetch()
        assert mirror.branches() == ["develop", "master", "stage"]
        push_branch(remote, "feature/x")
        mirror.fetch()
        assert mirror.branches() == ["develop", "feature/x", "master", "stage"]
        delete_branch(remote, "feature/x")
        mirror.fetch()
        assert mirror.branches() == ["develop", "master", "stage"]
        shutil.rmtree(remote.path)
        with pytest.raises(RemoteError):
            mirror.fetch()
        assert mirror.branches() == ["develop", "master", "stage"]
