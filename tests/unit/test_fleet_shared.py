"""Two masters configured with the same paths: one directory, deploys serialized, one whole tree, shown as one."""

import concurrent.futures
import threading

import pytest

from envflow import fleet, pipeline
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
