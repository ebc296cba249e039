import os

import pytest

from envflow import history, pipeline
from envflow.errors import BranchMoved, Diverged, EnvflowError, RevisionError
from envflow.remote import HISTORY
from envflow.served import ServedDir


def deploy(mirror, env, rev=None):
    mirror.fetch()
    return ServedDir(env.path).deploy(mirror.objects, mirror.commit(rev or env.branch))


@pytest.fixture
def deployed_pipeline(pipeline_config, mirror):
    """Every environment serving its branch."""
    for env in pipeline_config.environments:
        deploy(mirror, env)
    return pipeline_config


def test_promotion_takes_the_commit_deployed_upstream_not_the_branch_tip(deployed_pipeline, mirror, remote):
    config = deployed_pipeline
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    deploy(mirror, config.environment("test"))
    remote.commit("develop", {"web/init.sls": "# web v3, untested\n"}, message="web v3")
    mirror.fetch()
    promotion = pipeline.plan(config, mirror, "stage")
    assert promotion.new == tested
    assert promotion.old == remote.tip("stage")
    report = promotion.as_dict()
    assert report["commits"] == [f"{tested[:10]} web v2"]
    assert report["files"] == ["M web/init.sls"]
    assert (report["env"], report["branch"], report["from"]) == ("stage", "stage", "test")
    done = pipeline.promote(config, mirror, "stage")
    assert remote.tip("stage") == tested
    assert done.moved is True and done.report["new"] == tested
    assert done.deployed["changed"] is True and done.deployed["new"]["id"] == tested
    assert ServedDir(config.environment("stage").path).deployed()["id"] == tested


def test_planning_changes_nothing(deployed_pipeline, mirror, remote):
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    deploy(mirror, deployed_pipeline.environment("test"))
    before = remote.refs()
    pipeline.plan(deployed_pipeline, mirror, "stage")
    assert remote.refs() == before


def test_an_older_tested_commit_can_be_promoted_with_rev(deployed_pipeline, mirror, remote):
    older = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    remote.commit("develop", {"web/init.sls": "# web v3\n"})
    deploy(mirror, deployed_pipeline.environment("test"))
    promotion = pipeline.plan(deployed_pipeline, mirror, "stage", rev=older[:12])
    assert promotion.new == older


def test_rev_outside_what_was_tested_is_refused(deployed_pipeline, mirror, remote):
    untested = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    mirror.fetch()
    with pytest.raises(RevisionError) as error:
        pipeline.plan(deployed_pipeline, mirror, "stage", rev=untested)
    deployed = remote.tip("stage")
    assert str(error.value) == (
        f"envflow: {untested} is not part of {deployed[:10]}, the commit deployed in test; "
        "only a commit that was tested there can be promoted"
    )


def test_promoting_into_the_first_environment_is_an_error(deployed_pipeline, mirror):
    with pytest.raises(EnvflowError) as error:
        pipeline.plan(deployed_pipeline, mirror, "test")
    assert str(error.value) == (
        "envflow: test is the first environment of the pipeline, so nothing is promoted into it; "
        "use envflow.refresh test to deploy the tip of develop"
    )


def test_nothing_deployed_upstream_is_an_error(pipeline_config, mirror):
    with pytest.raises(EnvflowError) as error:
        pipeline.plan(pipeline_config, mirror, "stage")
    assert str(error.value) == (
        "envflow: nothing is deployed in test, so nothing was tested there to promote; run envflow.refresh test first"
    )


def test_a_hotfix_on_the_branch_blocks_promotion_and_is_listed(deployed_pipeline, mirror, remote):
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    deploy(mirror, deployed_pipeline.environment("test"))
    promotion = pipeline.promote(deployed_pipeline, mirror, "stage").report
    hotfix = remote.commit("master", {"hotfix.sls": "# urgent\n"}, message="urgent hotfix")
    mirror.fetch()
    before = remote.refs()
    with pytest.raises(Diverged) as error:
        pipeline.plan(deployed_pipeline, mirror, "prod")
    assert error.value.commits == [(hotfix, "urgent hotfix")]
    assert str(error.value) == (
        f"envflow: master has 1 commit(s) that {promotion['new'][:10]} from stage lacks: "
        f"{hotfix[:10]} 'urgent hotfix'; "
        "bring them into develop with salt-run envflow.backport prod and promote them through the pipeline from test, "
        "or remove them from master"
    )
    assert remote.refs() == before


def test_a_promotion_losing_the_race_changes_nothing(deployed_pipeline, mirror, remote):
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    deploy(mirror, deployed_pipeline.environment("test"))
    stage = ServedDir(deployed_pipeline.environment("stage").path)
    served_before = stage.deployed()
    moved = remote.commit("stage", {"other.sls": "# another operator\n"})  # the mirror has not seen it
    before = remote.refs()
    with pytest.raises(BranchMoved):
        pipeline.promote(deployed_pipeline, mirror, "stage")
    assert remote.refs() == before
    assert remote.tip("stage") == moved
    assert stage.deployed() == served_before


def test_promoting_what_the_branch_already_holds_pushes_nothing(deployed_pipeline, mirror, remote):
    before = remote.refs()
    promotion = pipeline.plan(deployed_pipeline, mirror, "stage")
    assert promotion.old == promotion.new and promotion.commits == []
    done = pipeline.promote(deployed_pipeline, mirror, "stage")
    assert remote.refs() == before
    assert done.moved is False and done.deployed["changed"] is False


def test_status_reports_each_environment(deployed_pipeline, mirror, remote):
    config = deployed_pipeline
    first = remote.tip("develop")
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    deploy(mirror, config.environment("test"))
    tip = remote.commit("develop", {"web/init.sls": "# web v3\n"})
    with open(os.path.join(config.environment("prod").path, "top.sls"), "a", encoding="utf-8") as handle:
        handle.write("# hand edit\n")
    mirror.fetch()
    # The keys status always had (the others: tests/unit/test_status.py).
    kept = ("branch", "remote", "deployed", "in_sync", "waiting", "drift")
    report = {name: {key: entry[key] for key in kept} for name, entry in pipeline.status(config, mirror).items()}
    assert report["test"] == {
        "branch": "develop",
        "remote": tip,
        "deployed": report["test"]["deployed"],
        "in_sync": False,
        "waiting": None,
        "drift": 0,
    }
    assert report["test"]["deployed"] not in (tip, first)
    assert report["stage"] == {
        "branch": "stage",
        "remote": first,
        "deployed": first,
        "in_sync": True,
        "waiting": 1,
        "drift": 0,
    }
    assert report["prod"] == {
        "branch": "master",
        "remote": first,
        "deployed": first,
        "in_sync": True,
        "waiting": 0,
        "drift": 1,
    }
    assert list(pipeline.status(config, mirror, "stage")) == ["stage"]


def test_status_describes_the_others_when_one_directory_is_unreadable(deployed_pipeline, mirror):
    stage = deployed_pipeline.environment("stage").path
    home = os.path.join(os.path.dirname(stage), ".stage.envflow")
    os.unlink(os.path.join(home, "a.git", "envflow.json"))
    report = pipeline.status(deployed_pipeline, mirror)
    assert report["stage"]["problem"] == (
        f"envflow: {stage} serves a tree envflow has no record of; deploy with force=True to replace it"
    )
    assert report["stage"]["deployed"] is None
    assert "problem" not in report["prod"] and report["prod"]["waiting"] is None
    assert report["test"]["in_sync"] is True and "problem" not in report["test"]


def test_promoting_an_older_commit_than_the_branch_holds_is_refused_as_a_rewind(deployed_pipeline, mirror, remote):
    older = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    newer = remote.commit("develop", {"web/init.sls": "# web v3\n"})
    deploy(mirror, deployed_pipeline.environment("test"))
    pipeline.promote(deployed_pipeline, mirror, "stage")
    before = remote.refs()
    with pytest.raises(Diverged) as error:
        pipeline.plan(deployed_pipeline, mirror, "stage", rev=older)
    assert str(error.value) == (
        f"envflow: stage already holds {older[:10]} and is ahead of it at {newer[:10]}; promoting would move it "
        f"back: promote a commit that contains {newer[:10]}, such as {newer[:10]} deployed in test"
    )
    assert remote.refs() == before


def test_a_promotion_refused_for_hand_edits_moves_no_branch(deployed_pipeline, mirror, remote):
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    deploy(mirror, deployed_pipeline.environment("test"))
    stage = ServedDir(deployed_pipeline.environment("stage").path)
    with open(os.path.join(stage.path, "web", "init.sls"), "a", encoding="utf-8") as handle:
        handle.write("# quick fix\n")
    before = remote.refs(), stage.deployed()
    with pytest.raises(EnvflowError) as error:
        pipeline.promote(deployed_pipeline, mirror, "stage")
    assert str(error.value) == (
        f"envflow: {stage.path} was edited by hand (modified: web/init.sls); commit those changes to the "
        "repository, or promote with force=True to discard them"
    )
    assert (remote.refs(), stage.deployed()) == before
    done = pipeline.promote(deployed_pipeline, mirror, "stage", force=True)
    assert done.deployed["discarded"] == {"added": [], "modified": ["web/init.sls"], "deleted": []}
    assert remote.tip("stage") == done.report["new"] == stage.deployed()["id"]


def test_a_branch_that_holds_the_commit_gets_its_directory_deployed(deployed_pipeline, mirror, remote):
    """A promotion whose deploy failed after the branch moved: promoting again deploys, and moves nothing."""
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    deploy(mirror, deployed_pipeline.environment("test"))
    remote.set_branch("stage", tested)
    mirror.fetch()
    before = remote.refs()
    done = pipeline.promote(deployed_pipeline, mirror, "stage")
    assert done.moved is False and done.deployed["changed"] is True
    after = remote.refs()
    assert after.pop(HISTORY) and after == {ref: commit for ref, commit in before.items() if ref != HISTORY}
    [entry] = history.entries(mirror, "stage")
    assert (entry["action"], entry["to"]) == ("deployed", tested)
    assert ServedDir(deployed_pipeline.environment("stage").path).deployed()["id"] == tested


def test_a_pin_set_on_another_master_while_the_branch_moves_refuses_the_promotion(
    deployed_pipeline, mirror, remote, tmp_path, monkeypatch
):
    """The holds are read before the branch moves; a pin recorded in between must not be slipped past.

    The other master pins stage with its own directories and mirror, for real, at the worst moment: right
    before this master's branch update reaches the remote.
    """
    from envflow import holds  # pylint: disable=import-outside-toplevel
    from envflow.config import parse  # pylint: disable=import-outside-toplevel
    from envflow.errors import Held  # pylint: disable=import-outside-toplevel
    from envflow.remote import Mirror  # pylint: disable=import-outside-toplevel
    from tests.gitrepo import config as make_config  # pylint: disable=import-outside-toplevel

    config = deployed_pipeline
    old = remote.tip("stage")
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    deploy(mirror, config.environment("test"))
    other = parse(make_config(remote.path, tmp_path / "other-master"))
    with Mirror(remote.path, str(tmp_path / "other-cache")) as theirs:
        deploy(theirs, other.environment("stage"))
        update_branch = type(mirror).update_branch

        def pinned_meanwhile(self, branch, before, after, **kwargs):
            if after == tested:
                theirs.fetch()
                holds.pin(other, theirs, "stage", reason="demo on stage", by="carol")
            return update_branch(self, branch, before, after, **kwargs)

        monkeypatch.setattr(type(mirror), "update_branch", pinned_meanwhile)
        mirror.fetch()
        with pytest.raises(Held) as refused:
            pipeline.promote(config, mirror, "stage", by="alice")
    assert str(refused.value).startswith("envflow: stage is pinned to ")
    assert str(refused.value).endswith("(set while this promotion ran: stage was moved back)")
    assert remote.tip("stage") == old
    assert ServedDir(config.environment("stage").path).deployed()["id"] == old
    assert [entry["action"] for entry in history.entries(mirror, "stage")][:1] == ["pinned"]


def test_a_pin_set_on_another_master_after_the_promotion_looked_holds_from_then_on(
    deployed_pipeline, mirror, remote, tmp_path, monkeypatch
):
    """A pin recorded after the promotion's last look at the holds, before its history entry, is not ended by it.

    Found by the fleet's race test (a promotion on one master and a pin on another, twenty rounds): the promotion's
    entry ended whatever pin it found, so the pin reported as set was gone and the unpin after it changed nothing.
    Only a forced promotion ends a pin, and only the one it overrode.
    """
    from envflow import holds  # pylint: disable=import-outside-toplevel
    from envflow.config import parse  # pylint: disable=import-outside-toplevel
    from envflow.errors import Held  # pylint: disable=import-outside-toplevel
    from envflow.remote import Mirror  # pylint: disable=import-outside-toplevel
    from tests.gitrepo import config as make_config  # pylint: disable=import-outside-toplevel

    config = deployed_pipeline
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    deploy(mirror, config.environment("test"))
    other = parse(make_config(remote.path, tmp_path / "other-master"))
    with Mirror(remote.path, str(tmp_path / "other-cache")) as theirs:
        deploy(theirs, other.environment("stage"))
        looked = pipeline._no_hold_since  # pylint: disable=protected-access

        def pinned_after_the_look(*args, **kwargs):
            found = looked(*args, **kwargs)
            theirs.fetch()
            assert holds.pin(other, theirs, "stage", reason="demo on stage", by="carol")["changed"] is True
            return found

        monkeypatch.setattr(pipeline, "_no_hold_since", pinned_after_the_look)
        mirror.fetch()
        done = pipeline.promote(config, mirror, "stage", by="alice")
    assert done.moved and remote.tip("stage") == tested
    mirror.fetch()
    pin = history.pin_of(history.holds(mirror), "stage")
    assert (pin["by"], pin["reason"]) == ("carol", "demo on stage"), pin
    assert [entry["action"] for entry in history.entries(mirror, "stage")][:2] == ["promoted", "pinned"]
    monkeypatch.undo()
    remote.commit("develop", {"web/init.sls": "# web v3\n"}, message="web v3")
    deploy(mirror, config.environment("test"))
    with pytest.raises(Held) as refused:
        pipeline.promote(config, mirror, "stage", by="alice")
    assert str(refused.value).startswith("envflow: stage is pinned to "), refused.value
    assert holds.unpin(config, mirror, "stage", by="alice")["changed"] is True


def test_a_forced_promotion_ends_the_pin_it_overrode(deployed_pipeline, mirror, remote):
    from envflow import holds  # pylint: disable=import-outside-toplevel

    config = deployed_pipeline
    assert holds.pin(config, mirror, "stage", reason="demo", by="carol")["changed"] is True
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    deploy(mirror, config.environment("test"))
    done = pipeline.promote(config, mirror, "stage", force=True, reason="hotfix", by="alice")
    assert done.moved and remote.tip("stage") == tested
    assert done.bypassed and done.bypassed[0].startswith("pin: "), done.bypassed
    mirror.fetch()
    assert history.pin_of(history.holds(mirror), "stage") is None
