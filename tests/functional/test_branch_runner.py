"""The runner's branch environments, loaded by Salt's runner loader with master options (no daemon running)."""

import os
import shutil

import pytest

from envflow import tables
from tests.gitrepo import git, tree_files


@pytest.fixture
def branch_block(envflow_block, workspace):
    return {
        **envflow_block,
        "branch_environments": {"branches": ["feature/*"], "path": str(workspace / "srv" / "branches"), "max": 2},
    }


@pytest.fixture
def branch_runners(master_base_opts, branch_block, remote):
    """The runner modules of a master that serves branch environments through ``__env__``."""
    import salt.loader  # pylint: disable=import-outside-toplevel

    path = branch_block["branch_environments"]["path"]
    opts = dict(
        master_base_opts,
        envflow=branch_block,
        file_roots={**master_base_opts["file_roots"], "__env__": [os.path.join(path, "__env__")]},
    )
    context = {}
    functions = salt.loader.runner(opts, utils=salt.loader.utils(opts), context=context)
    functions.context = context
    return functions


def _branch(remote, name, files):
    """Make ``name`` from develop on the remote, with ``files`` committed on it when there are any."""
    git("push", "-q", "origin", f"{remote.tip('develop')}:refs/heads/{name}", cwd=remote.work)
    return remote.commit(name, files, message=f"work on {name}") if files else remote.tip(name)


def _delete(remote, name):
    git("push", "-q", "origin", f":refs/heads/{name}", cwd=remote.work)


def test_refresh_serves_branches_names_the_refused_and_the_capped_and_status_lists_them(
    branch_runners, branch_block, remote
):
    path = branch_block["branch_environments"]["path"]
    os.makedirs(os.path.join(path, "__env__"))  # what salt-master makes for the root
    one = _branch(remote, "feature/one", {"web/one.sls": "# one\n"})
    _branch(remote, "feature/two", {"web/two.sls": "# two\n"})
    _branch(remote, "feature/three", {})
    _branch(remote, "feature/a+b", {})

    done = branch_runners["envflow.refresh"]()
    assert "retcode" not in done, done
    branches = done["branch_environments"]
    assert sorted(branches["environments"]) == ["feature_one", "feature_three"]
    assert branches["environments"]["feature_one"]["new"] == one
    assert tree_files(os.path.join(path, "feature_one"))["web/one.sls"] == "# one\n"
    assert list(branches["capped"]) == ["feature/two"]
    assert "max" in branches["capped"]["feature/two"]
    assert "not a name Salt takes as a saltenv" in branches["refused"]["feature/a+b"]
    assert os.path.isdir(os.path.join(path, "__env__")) and not os.listdir(os.path.join(path, "__env__"))

    report = branch_runners["envflow.status"]()
    assert sorted(report["branch_environments"]["environments"]) == ["feature_one", "feature_three"]
    assert report["branch_environments"]["environments"]["feature_one"]["deployed"] == one
    text = tables.render(report)
    assert "branch environments in" in text and "feature_one" in text
    assert "not served: branch 'feature/a+b'" in text and "not served: branch 'feature/two'" in text

    # Deleting a branch frees its place: the push of the deletion serves the branch that waited.
    _delete(remote, "feature/one")
    pushed = branch_runners["envflow.pushed"](["feature/one"])
    assert "retcode" not in pushed, pushed
    assert list(pushed["branch_environments"]["removed"]) == ["feature_one"]
    assert list(pushed["branch_environments"]["environments"]) == ["feature_two"]
    assert not os.path.lexists(os.path.join(path, "feature_one"))
    assert sorted(os.listdir(path)) == ["__env__", "feature_three", "feature_two"]

    history = branch_runners["envflow.history"]("feature_one")["history"]
    assert [entry["action"] for entry in history] == ["removed", "deployed"]
    assert history[0]["branch"] == "feature/one" and history[1]["to"] == one


def test_refresh_of_one_branch_environment_and_its_dry_run(branch_runners, branch_block, remote):
    path = branch_block["branch_environments"]["path"]
    _branch(remote, "feature/one", {})
    branch_runners["envflow.refresh"]()
    moved = remote.commit("feature/one", {"web/init.sls": "# moved\n"})
    _branch(remote, "feature/two", {})

    preview = branch_runners["envflow.refresh"](dry_run=True)["branch_environments"]["environments"]
    assert preview["feature_one"]["action"] == "update" and preview["feature_one"]["new"] == moved
    assert preview["feature_two"]["action"] == "create"
    assert sorted(os.listdir(path)) == ["feature_one"]

    done = branch_runners["envflow.refresh"]("feature_one")
    assert "retcode" not in done, done
    assert list(done["branch_environments"]["environments"]) == ["feature_one"]
    assert done["environments"] == {}
    assert sorted(os.listdir(path)) == ["feature_one"]
    assert tree_files(os.path.join(path, "feature_one"))["web/init.sls"] == "# moved\n"


def test_an_unknown_name_is_refused_and_changes_nothing(branch_runners, remote):
    _branch(remote, "feature/one", {})
    done = branch_runners["envflow.refresh"]("qa")
    assert done["retcode"] == 1
    assert "no environment or branch environment named 'qa'" in done["error"]
    assert "\n" not in done["error"]
    assert done["branch_environments"]["environments"] == {}
    assert branch_runners.context["retcode"] == 1
    # The reactor runs every job with one __context__: the next call that succeeds must not inherit the failure.
    assert "retcode" not in branch_runners["envflow.refresh"]()
    assert "retcode" not in branch_runners.context


def test_a_fetch_that_fails_removes_nothing(branch_runners, branch_block, remote):
    path = branch_block["branch_environments"]["path"]
    _branch(remote, "feature/one", {"web/one.sls": "# one\n"})
    branch_runners["envflow.refresh"]()
    before = tree_files(os.path.join(path, "feature_one"))
    moved = remote.path + ".moved"
    shutil.move(remote.path, moved)
    try:
        done = branch_runners["envflow.refresh"]()
        assert done["retcode"] == 1 and "does not exist" in done["error"], done
        assert "\n" not in done["error"]
        assert tree_files(os.path.join(path, "feature_one")) == before
    finally:
        shutil.move(moved, remote.path)
