"""The envflow.deployed state, run through Salt's state.single as Salt runs it."""

import os

from tests.functional.conftest import env_path, served_file


def test_test_mode_then_real_then_nothing_to_do(loaders, envflow_block, remote):
    loaders.modules.envflow.deploy("stage")
    old = remote.tip("stage")
    new = remote.commit("stage", {"web/init.sls": "# web v2\n"}, message="web v2")

    preview = loaders.states.envflow.deployed(name="stage", test=True)
    assert preview.result is None
    assert preview.changes == {"revision": {"old": old, "new": new}}
    assert preview.comment == f"stage would serve {new[:10]} (web v2) instead of {old[:10]} (initial states)"
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v1\n"

    applied = loaders.states.envflow.deployed(name="stage")
    assert applied.result is True
    assert applied.changes == {"revision": {"old": old, "new": new}}
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v2\n"

    again = loaders.states.envflow.deployed(name="stage")
    assert again.result is True
    assert again.changes == {}
    assert again.comment == f"stage already serves {new[:10]} (web v2)"


def test_first_deploy_reports_no_old_revision(loaders, remote):
    result = loaders.states.envflow.deployed(name="prod", branch="master")
    assert result.result is True
    assert result.changes == {"revision": {"old": None, "new": remote.tip("master")}}


def test_a_fixed_rev(loaders, envflow_block, remote):
    first = remote.tip("develop")
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    result = loaders.states.envflow.deployed(name="test", rev=first)
    assert result.result is True
    assert result.changes["revision"]["new"] == first
    assert served_file(envflow_block, "test", "web/init.sls") == "# web v1\n"


def test_a_declared_branch_other_than_the_configured_one(loaders, envflow_block, remote):
    feature = remote.commit("develop", {"web/init.sls": "# feature\n"})
    result = loaders.states.envflow.deployed(name="test", branch="develop")
    assert result.changes["revision"]["new"] == feature


def test_hand_edits_fail_the_state_and_force_discards_them(loaders, envflow_block, remote):
    loaders.modules.envflow.deploy("stage")
    path = env_path(envflow_block, "stage")
    os.unlink(os.path.join(path, "top.sls"))
    new = remote.commit("stage", {"web/init.sls": "# web v2\n"})
    failed = loaders.states.envflow.deployed(name="stage")
    assert failed.result is False
    assert failed.changes == {}
    assert failed.comment == (
        f"envflow: {path} was edited by hand (deleted: top.sls); commit those changes to the repository, "
        "or deploy with force=True to discard them"
    )
    assert loaders.states.envflow.deployed(name="stage", test=True).result is False
    forced = loaders.states.envflow.deployed(name="stage", force=True)
    assert forced.result is True
    assert forced.changes["revision"]["new"] == new
    assert os.path.exists(os.path.join(path, "top.sls"))


def test_force_repairs_drift_on_the_commit_already_served(loaders, envflow_block):
    loaders.modules.envflow.deploy("stage")
    path = env_path(envflow_block, "stage")
    with open(os.path.join(path, "extra.sls"), "w", encoding="utf-8") as handle:
        handle.write("# planted\n")
    refused = loaders.states.envflow.deployed(name="stage")
    assert refused.result is False and refused.changes == {}
    assert refused.comment.endswith(
        "was edited by hand (added: extra.sls); commit those changes to the repository, "
        "or deploy with force=True to discard them"
    )
    preview = loaders.states.envflow.deployed(name="stage", force=True, test=True)
    assert preview.result is None
    assert preview.changes["discarded"] == {"added": ["extra.sls"], "modified": [], "deleted": []}
    assert os.path.exists(os.path.join(path, "extra.sls"))
    repaired = loaders.states.envflow.deployed(name="stage", force=True)
    assert repaired.result is True
    assert repaired.comment.startswith("stage now serves ") and repaired.comment.endswith(
        "again, without the hand edits"
    )
    assert repaired.changes["discarded"] == {"added": ["extra.sls"], "modified": [], "deleted": []}
    assert not os.path.exists(os.path.join(path, "extra.sls"))
    assert loaders.states.envflow.deployed(name="stage", force=True).changes == {}


def test_unknown_environment_fails_with_one_line(loaders):
    result = loaders.states.envflow.deployed(name="qa")
    assert result.result is False
    assert result.comment == "envflow: no environment named 'qa'; configured: test, stage, prod"


def test_force_replaces_a_tree_envflow_has_no_record_of(loaders, envflow_block, remote):
    loaders.modules.envflow.deploy("stage")
    path = env_path(envflow_block, "stage")
    home = os.path.join(os.path.dirname(path), ".stage.envflow")
    os.unlink(os.path.join(home, os.readlink(path).split("/")[-1] + ".git", "envflow.json"))
    refused = loaders.states.envflow.deployed(name="stage")
    assert refused.result is False
    assert (
        refused.comment
        == f"envflow: {path} serves a tree envflow has no record of; deploy with force=True to replace it"
    )
    forced = loaders.states.envflow.deployed(name="stage", force=True)
    assert forced.result is True
    assert forced.changes == {"revision": {"old": None, "new": remote.tip("stage")}}
    assert loaders.modules.envflow.deployed("stage")["id"] == remote.tip("stage")


def test_promoted_previews_then_promotes_then_has_nothing_to_do(loaders, envflow_block, remote):
    envflow = loaders.modules.envflow
    for env in ("test", "stage", "prod"):
        envflow.deploy(env)
    old = remote.tip("stage")
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    envflow.deploy("test")

    preview = loaders.states.envflow.promoted(name="stage", test=True)
    assert preview.result is None
    assert preview.changes == {"revision": {"old": old, "new": tested}, "commits": [f"{tested[:10]} web v2"]}
    assert preview.comment == f"stage would be promoted to {tested[:10]} from test, bringing 1 commit(s)"
    assert remote.tip("stage") == old

    done = loaders.states.envflow.promoted(name="stage")
    assert done.result is True
    assert done.changes == {"revision": {"old": old, "new": tested}, "commits": [f"{tested[:10]} web v2"]}
    assert remote.tip("stage") == tested
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v2\n"

    again = loaders.states.envflow.promoted(name="stage")
    assert again.result is True and again.changes == {}
    assert again.comment == f"stage already holds and serves {tested[:10]}"


def test_promoted_fails_on_hand_edits_in_test_mode_too(loaders, envflow_block, remote):
    envflow = loaders.modules.envflow
    for env in ("test", "stage"):
        envflow.deploy(env)
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    envflow.deploy("test")
    path = env_path(envflow_block, "stage")
    with open(os.path.join(path, "top.sls"), "a", encoding="utf-8") as handle:
        handle.write("# hand edit\n")
    before = remote.refs()
    for test in (True, False):
        result = loaders.states.envflow.promoted(name="stage", test=test)
        assert result.result is False
        assert result.comment == (
            f"envflow: {path} was edited by hand (modified: top.sls); commit those changes to the repository, "
            "or promote with force=True to discard them"
        )
    assert remote.refs() == before


def test_promoted_into_the_first_environment_fails(loaders, remote):
    result = loaders.states.envflow.promoted(name="test")
    assert result.result is False
    assert result.comment.startswith("envflow: test is the first environment of the pipeline")


def test_promoted_does_not_call_an_edited_environment_done(loaders, envflow_block, remote):
    for env in ("test", "stage"):
        loaders.modules.envflow.deploy(env)
    path = env_path(envflow_block, "stage")
    os.unlink(os.path.join(path, "top.sls"))
    result = loaders.states.envflow.promoted(name="stage")
    assert result.result is False
    assert result.comment.startswith(f"envflow: {path} was edited by hand (deleted: top.sls)")
    repaired = loaders.states.envflow.promoted(name="stage", force=True)
    assert repaired.result is True
    assert os.path.exists(os.path.join(path, "top.sls"))
