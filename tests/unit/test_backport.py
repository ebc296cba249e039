"""Hotfix back-merge (envflow.backport): the commits only a later branch holds, brought into develop."""

import socket

import pygit2
import pytest

from envflow import backport, history, pipeline
from envflow.errors import BranchMoved, EnvflowError
from envflow.served import ServedDir
from tests.gitrepo import git, tree_files


def deploy(mirror, env):
    mirror.fetch()
    return ServedDir(env.path).deploy(mirror.objects, mirror.commit(env.branch))


@pytest.fixture
def deployed_pipeline(pipeline_config, mirror):
    """Every environment serving its branch (all three at the initial commit)."""
    for env in pipeline_config.environments:
        deploy(mirror, env)
    return pipeline_config


def contains(remote, branch, commit):
    """Whether ``branch`` on the remote holds ``commit``, as git itself says."""
    merged = git("branch", "--contains", commit, "--format=%(refname:short)", cwd=remote.path).split()
    return branch in merged


def through_the_pipeline(config, mirror):
    """``refresh test``, ``promote stage``, ``promote prod``; each promotion must fast-forward its branch."""
    deploy(mirror, config.environment("test"))
    for name in ("stage", "prod"):
        mirror.fetch()
        done = pipeline.promote(config, mirror, name)
        assert done.report["new"] == str(mirror.tip(config.environment("test").branch)), done.report


def test_a_hotfix_fast_forwards_develop_that_did_not_move_then_reaches_every_environment(
    deployed_pipeline, mirror, remote
):
    config = deployed_pipeline
    old = remote.tip("develop")
    hotfix = remote.commit("master", {"hotfix.sls": "# urgent\n"}, message="urgent hotfix")
    mirror.fetch()
    with pytest.raises(EnvflowError, match=r"with salt-run envflow\.backport prod and promote"):
        pipeline.plan(config, mirror, "prod")

    done = backport.backport(config, mirror, "prod", by="alice")
    assert done.report == {
        "env": "prod",
        "into": "test",
        "branch": "develop",
        "old": old,
        "new": hotfix,
        "kind": "fast-forward",
        "commits": [f"{hotfix[:10]} urgent hotfix"],
        "files": ["A hotfix.sls"],
        "comment": "fast-forwarded develop to master (prod): 1 commit(s); "
        "now promote them through the pipeline from test",
    }
    assert done.commits == [hotfix]
    assert remote.tip("develop") == hotfix  # no merge commit: develop is master's tip itself
    [entry] = history.entries(mirror, "prod")
    assert {key: value for key, value in entry.items() if key not in ("at", "master")} == {
        "action": "backported",
        "env": "prod",
        "by": "alice",
        "from": old,
        "to": hotfix,
        "into": "test",
        "branch": "develop",
        "commits": [f"{hotfix[:10]} urgent hotfix"],
        "merge": False,
    }

    through_the_pipeline(config, mirror)
    for env in config.environments:
        assert contains(remote, env.branch, hotfix)
        assert tree_files(env.path)["hotfix.sls"] == "# urgent\n"


def test_a_hotfix_is_merged_into_develop_that_moved_on_then_reaches_every_environment(
    deployed_pipeline, mirror, remote
):
    config = deployed_pipeline
    work = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2, not promoted yet")
    deploy(mirror, config.environment("test"))
    stage_before = remote.tip("stage")
    hotfix = remote.commit("master", {"hotfix.sls": "# urgent\n"}, message="urgent hotfix")
    mirror.fetch()

    done = backport.backport(config, mirror, "prod", by="sudo_alice")
    merged = remote.tip("develop")
    assert merged not in (work, hotfix)
    assert done.report == {
        "env": "prod",
        "into": "test",
        "branch": "develop",
        "old": work,
        "new": merged,
        "kind": "merge",
        "commits": [f"{hotfix[:10]} urgent hotfix"],
        "files": ["A hotfix.sls"],
        "comment": "merged 1 commit(s) of master (prod) into develop; now promote them through the pipeline from test",
    }
    commit = mirror.repo[pygit2.Oid(hex=merged)]
    assert [str(parent) for parent in commit.parent_ids] == [work, hotfix]
    for signature in (commit.author, commit.committer):
        assert (signature.name, signature.email) == ("sudo_alice", f"sudo_alice@{socket.gethostname()}")
    assert commit.message == (
        "Back-merge 1 commit(s) of master (prod) into develop\n\n"
        f"- {hotfix[:10]} urgent hotfix\n\n"
        "Made by salt-run envflow.backport prod, so that promotions from test fast-forward master again.\n"
    )
    assert git("show", f"{merged}:web/init.sls", cwd=remote.path) == "# web v2"
    assert git("show", f"{merged}:hotfix.sls", cwd=remote.path) == "# urgent"
    assert remote.tip("stage") == stage_before and remote.tip("master") == hotfix  # only develop moved
    [entry] = history.entries(mirror, "prod")
    assert (entry["from"], entry["to"], entry["merge"], entry["by"]) == (work, merged, True, "sudo_alice")

    through_the_pipeline(config, mirror)
    assert remote.tip("stage") == remote.tip("master") == merged
    for env in config.environments:
        assert contains(remote, env.branch, hotfix)
        served = tree_files(env.path)
        assert (served["hotfix.sls"], served["web/init.sls"]) == ("# urgent\n", "# web v2\n")


def test_a_conflict_changes_nothing_and_lists_the_files(deployed_pipeline, mirror, remote):
    files = [f"app{number}/init.sls" for number in range(7)]
    remote.commit("develop", dict.fromkeys(files, "# develop's version\n"), message="develop's apps")
    hotfix = remote.commit("master", dict.fromkeys(files, "# the hotfix\n"), message="hotfix of the apps")
    mirror.fetch()
    before, develop_in_mirror = remote.refs(), mirror.tip("develop")
    with pytest.raises(backport.Conflicted) as error:
        backport.backport(deployed_pipeline, mirror, "prod", by="alice")
    assert str(error.value) == (
        "envflow: back-merging 1 commit(s) of master (prod) into develop conflicts in 7 file(s): "
        "'app0/init.sls', 'app1/init.sls', 'app2/init.sls', 'app3/init.sls', 'app4/init.sls' and 2 more; "
        "nothing changed: merge master into develop by hand, resolve them, push develop and promote it through "
        "the pipeline from test"
    )
    assert error.value.conflicts == files
    assert error.value.commits == [f"{hotfix[:10]} hotfix of the apps"]
    assert remote.refs() == before and "refs/envflow/history" not in before
    assert mirror.tip("develop") == develop_in_mirror
    # A dry run meets the same conflict, and says so the same way.
    with pytest.raises(backport.Conflicted) as dry:
        backport.backport(deployed_pipeline, mirror, "prod", by="alice", dry_run=True)
    assert str(dry.value) == str(error.value)
    assert remote.refs() == before


def test_nothing_to_do_when_develop_holds_every_commit_already(deployed_pipeline, mirror, remote):
    before = remote.refs()
    done = backport.backport(deployed_pipeline, mirror, "prod", by="alice")
    assert done.report["kind"] is None and done.report["commits"] == [] and done.commits == []
    assert done.report["comment"] == "nothing to do: develop already holds every commit of master (prod)"
    assert done.report["old"] == done.report["new"] == remote.tip("develop")
    assert remote.refs() == before
    # After a back-merge, the hotfix is in develop: a second back-merge has nothing to do, and records nothing.
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    remote.commit("master", {"hotfix.sls": "# urgent\n"}, message="urgent hotfix")
    mirror.fetch()
    assert backport.backport(deployed_pipeline, mirror, "prod", by="alice").report["kind"] == "merge"
    mirror.fetch()
    after = remote.refs()
    again = backport.backport(deployed_pipeline, mirror, "prod", by="alice", dry_run=True)
    assert again.report["kind"] is None and again.report["dry_run"] is True
    assert backport.backport(deployed_pipeline, mirror, "prod", by="alice").report["kind"] is None
    assert remote.refs() == after
    assert len(history.entries(mirror)) == 1


def test_the_first_environment_is_refused(deployed_pipeline, mirror, remote):
    before = remote.refs()
    with pytest.raises(EnvflowError) as error:
        backport.backport(deployed_pipeline, mirror, "test", by="alice")
    assert str(error.value) == (
        "envflow: test is the first environment of the pipeline: envflow.backport brings the commits of a later "
        "environment's branch into develop; give stage or prod"
    )
    assert remote.refs() == before


@pytest.mark.parametrize(
    ("deleted", "message"),
    [
        (
            "master",
            "envflow: branch 'master' of prod does not exist in {repo}, so there is nothing to back-merge; "
            "push it, or fix the branch of prod",
        ),
        (
            "develop",
            "envflow: branch 'develop' of test does not exist in {repo}, so there is nothing to back-merge into; "
            "push it, or fix the branch of test",
        ),
    ],
)
def test_a_missing_branch_is_refused(deployed_pipeline, mirror, remote, deleted, message):
    remote.commit("master", {"hotfix.sls": "# urgent\n"})
    git("update-ref", "-d", f"refs/heads/{deleted}", cwd=remote.path)
    mirror.fetch()
    before = remote.refs()
    with pytest.raises(EnvflowError) as error:
        backport.backport(deployed_pipeline, mirror, "prod", by="alice")
    assert str(error.value) == message.format(repo=mirror.shown)
    assert remote.refs() == before


@pytest.mark.parametrize("moved_on", [False, True], ids=["fast-forward", "merge"])
def test_a_dry_run_reports_and_changes_nothing(deployed_pipeline, mirror, remote, moved_on):
    old = remote.commit("develop", {"web/init.sls": "# web v2\n"}) if moved_on else remote.tip("develop")
    hotfix = remote.commit("master", {"hotfix.sls": "# urgent\n"}, message="urgent hotfix")
    mirror.fetch()
    before = remote.refs()
    done = backport.backport(deployed_pipeline, mirror, "prod", by="alice", dry_run=True)
    kind, new = ("merge", None) if moved_on else ("fast-forward", hotfix)
    assert done.report == {
        "env": "prod",
        "into": "test",
        "branch": "develop",
        "old": old,
        "new": new,
        "kind": kind,
        "commits": [f"{hotfix[:10]} urgent hotfix"],
        "files": ["A hotfix.sls"],
        "comment": (
            "would merge 1 commit(s) of master (prod) into develop"
            if moved_on
            else "would fast-forward develop to master (prod): 1 commit(s)"
        ),
        "dry_run": True,
    }
    assert remote.refs() == before
    assert str(mirror.tip("develop")) == old


def test_develop_moving_during_the_back_merge_changes_nothing(deployed_pipeline, mirror, remote):
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    remote.commit("master", {"hotfix.sls": "# urgent\n"})
    mirror.fetch()
    # Another operator pushes to develop after envflow fetched, before it pushes.
    moved = remote.commit("develop", {"db/init.sls": "# db\n"})
    before = remote.refs()
    with pytest.raises(BranchMoved) as error:
        backport.backport(deployed_pipeline, mirror, "prod", by="alice")
    assert str(error.value) == (
        f"envflow: develop moved on {mirror.shown} while master was being back-merged into it; "
        "nothing changed: run salt-run envflow.backport prod again"
    )
    assert remote.refs() == before and remote.tip("develop") == moved
    assert "refs/envflow/history" not in remote.refs()
    # Run again, it merges on top of the other operator's commit.
    mirror.fetch()
    assert backport.backport(deployed_pipeline, mirror, "prod", by="alice").report["old"] == moved


def test_a_branch_between_with_commits_of_its_own_is_named(deployed_pipeline, mirror, remote):
    remote.commit("stage", {"stage-fix.sls": "# fixed on stage\n"}, message="stage hotfix")
    remote.commit("master", {"hotfix.sls": "# urgent\n"}, message="prod hotfix")
    mirror.fetch()
    done = backport.backport(deployed_pipeline, mirror, "prod", by="alice", dry_run=True)
    warning = (
        "stage (stage) still holds commits develop lacks, which block promoting into stage: "
        "run salt-run envflow.backport stage too"
    )
    assert done.report["warnings"] == [warning]
    assert backport.backport(deployed_pipeline, mirror, "prod", by="alice").report["warnings"] == [warning]
    mirror.fetch()
    assert "warnings" not in backport.backport(deployed_pipeline, mirror, "stage", by="alice").report
