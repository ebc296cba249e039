"""Two masters configured with the same paths: one directory, deploys serialized, one whole tree, shown as one."""

import concurrent.futures
import os
import threading

import pytest

from envflow import fleet, pipeline, saltbus
from envflow.config import parse
from envflow.remote import Mirror
from envflow.served import ServedDir
from tests.conftest import HTTP_PASSWORD, HTTP_USER
from tests.gitrepo import config, git, tree_files


def _commit_files(remote, commit):
    names = git("ls-tree", "-r", "--name-only", commit, cwd=remote.path).splitlines()
    return {name: git("show", f"{commit}:{name}", cwd=remote.path) + "\n" for name in names}


def test_two_masters_sharing_paths_deploy_in_turn_serve_one_whole_tree_and_show_as_one(remote, tmp_path):
    commits = [
        remote.commit("develop", {"web/init.sls": f"# web v{number}\n", f"web/extra{number}.sls": "# extra\n"})
        for number in range(6)
    ]
    shared = parse(config(remote.path, tmp_path / "srv"))
    path = shared.environment("test").path
    start = threading.Barrier(2)
    served = []

    def master(name, offset):
        with Mirror(remote.path, str(tmp_path / f"cache-{name}")) as mirror:
            start.wait()
            for number in range(8):
                mirror.fetch()
                commit = commits[(number + offset) % len(commits)]
                result = pipeline.deploy(shared, mirror, "test", rev=commit, by=name)
                served.append((name, result["new"]["id"]))
                assert fleet.report(mirror, shared, name) is None

    with concurrent.futures.ThreadPoolExecutor(2) as both:
        done = [both.submit(master, "salt1", 0), both.submit(master, "salt2", 3)]
    for future in done:
        future.result()
    assert len(served) == 16
    now = ServedDir(path).deployed()["id"]
    assert now in commits
    assert tree_files(path) == _commit_files(remote, now)
    with Mirror(remote.path, str(tmp_path / "cache-salt1")) as mirror:
        mirror.fetch()
        assert ServedDir(path).drift(mirror.objects) == {"added": [], "modified": [], "deleted": []}
        assert fleet.report(mirror, shared, "salt1") is None
        assert fleet.report(mirror, shared, "salt2") is None
        mirror.fetch()
        found = fleet.view(fleet.read(mirror), shared, pipeline.branch_tips(shared, mirror), mirror.contains)
    assert {name: entry["shared_with"] for name, entry in found["test"].items()} == {
        "salt1": ["salt2"],
        "salt2": ["salt1"],
    }
    assert {entry["commit"] for entry in found["test"].values()} == {now}


@pytest.mark.parametrize("transport", ["local", "http"])
def test_a_master_whose_fetch_is_older_than_the_tree_another_master_deployed_does_not_move_it_back(
    remote, tmp_path, request, transport
):
    """Over HTTP the late master's mirror lacks the newer commit altogether; a local one may share its objects."""
    raw = config(remote.path, tmp_path / "srv")
    if transport == "http":
        raw["repo"] = request.getfixturevalue("git_http").url("automation.git")
        raw["credentials"] = {"username": HTTP_USER, "password": HTTP_PASSWORD, "allow_http": True}
    shared = parse(raw)
    with (
        Mirror(shared.repo, str(tmp_path / "cache-salt1"), shared.credentials, shared.timeout) as late,
        Mirror(shared.repo, str(tmp_path / "cache-salt2"), shared.credentials, shared.timeout) as early,
    ):
        late.fetch()
        assert pipeline.deploy(shared, late, "test", by="salt1")["changed"] is True
        newer = remote.commit("develop", {"web/init.sls": "# web v2\n"})
        early.fetch()
        assert pipeline.deploy(shared, early, "test", by="salt2")["new"]["id"] == newer
        # salt1 fetched before the push: its branch tip is older than what the directory serves now.
        assert str(late.tip("develop")) != newer
        result = pipeline.deploy(shared, late, "test", by="salt1")
        assert (result["changed"], result["new"]["id"]) == (False, newer)
        assert ServedDir(shared.environment("test").path).deployed()["id"] == newer
        # A branch moved back on the remote is served all the same: it is the tip once fetched again.
        older = git("rev-parse", "develop~1", cwd=remote.path)
        remote.set_branch("develop", older)
        late.fetch()
        result = pipeline.deploy(shared, late, "test", by="salt1")
        assert (result["changed"], result["new"]["id"]) == (True, older)


def _cache_of(opts, saltenv):
    """The master's roots caches of ``saltenv`` as its file server leaves them: the hash of web/init.sls (the file
    the test changes) and the file list."""
    entry = os.path.join(opts["cachedir"], "roots", "hash", saltenv, "web", "init.sls.hash.sha256")
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    with open(entry, "w", encoding="utf-8") as handle:
        handle.write("0:stale\n")
    lists = os.path.join(opts["cachedir"], "file_lists", "roots")
    os.makedirs(lists, exist_ok=True)
    with open(os.path.join(lists, f"{saltenv}.p"), "wb") as handle:
        handle.write(b"stale")
    return [entry, os.path.join(lists, f"{saltenv}.p")]


def test_a_master_finding_its_shared_directory_switched_by_another_clears_its_own_caches(remote, tmp_path):
    shared = parse(config(remote.path, tmp_path / "srv"))
    opts = {
        name: {
            "__role": "master",
            "id": name,
            "cachedir": str(tmp_path / f"cache-{name}"),
            "file_roots": {env.name: [env.path] for env in shared.environments},
        }
        for name in ("salt1", "salt2")
    }
    fired = []

    def deploy(name, catch_up=True):
        with Mirror.of(shared, opts[name]["cachedir"]) as mirror:
            mirror.fetch()
            served = pipeline.deploy(shared, mirror, "test", by=name)
        fire = lambda *event: fired.append(event)  # noqa: E731
        return saltbus.after_deploy(shared, "test", served, lambda: opts[name], fire, catch_up=catch_up)

    assert deploy("salt1")["changed"] is True
    caches = {name: _cache_of(opts[name], "test") for name in opts}
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    switched = deploy("salt1")
    assert (switched["changed"], switched["refreshed"]) == (True, ["test"])
    # salt1 switched: it forgets the changed file's hash (and keeps the list, as no path came or went).
    assert [os.path.exists(path) for path in caches["salt1"]] == [False, True]
    # salt2 serves the same directory: its own caches still hold the old tree until it looks.
    assert all(os.path.exists(path) for path in caches["salt2"])
    assert deploy("salt2", catch_up=False)["refreshed"] == []
    assert all(os.path.exists(path) for path in caches["salt2"])
    caught = deploy("salt2")
    assert (caught["changed"], caught["refreshed"]) == (False, ["test"])
    assert not any(os.path.exists(path) for path in caches["salt2"])  # it does not know what changed: everything
    assert "warning" not in caught
    # Once caught up, a deploy that changes nothing clears nothing.
    caches["salt2"] = _cache_of(opts["salt2"], "test")
    assert deploy("salt2")["refreshed"] == []
    assert all(os.path.exists(path) for path in caches["salt2"])
    assert [event[:2] for event in fired] == [("test", "deployed"), ("test", "deployed")]
