"""Gates on promotions into prod, and the runner functions that open them, loaded as the master loads them."""

import copy

import pytest

from tests.functional.conftest import served_file
from tests.gitrepo import git, tree_files


@pytest.fixture
def gated_runners(master_base_opts, envflow_block, remote):
    import salt.loader  # pylint: disable=import-outside-toplevel

    block = copy.deepcopy(envflow_block)
    block["environments"][2]["gates"] = {"verified": True, "soak": "1d", "approvals": 2}
    opts = dict(master_base_opts, envflow=block)
    context = {}
    functions = salt.loader.runner(opts, utils=salt.loader.utils(opts), context=context)
    functions.context = context
    return functions


@pytest.fixture
def promoted_to_stage(gated_runners, remote):
    """A new commit tested in test and promoted to stage: the candidate for prod."""
    gated_runners["envflow.refresh"]()
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    gated_runners["envflow.refresh"]("test")
    assert gated_runners["envflow.promote"]("stage")["new"] == tested
    return tested


def test_closed_gates_block_the_promotion_and_change_nothing(gated_runners, promoted_to_stage, envflow_block, remote):
    before = remote.refs(), {env["name"]: tree_files(env["path"]) for env in envflow_block["environments"]}
    result = gated_runners["envflow.promote"]("prod")
    assert result["retcode"] == 1
    short = promoted_to_stage[:10]
    assert result["error"].startswith(
        f"envflow: promoting {short} into prod is blocked by verified: {short} was not verified in stage"
    )
    assert "soak: stage has served it for " in result["error"]
    assert "approvals: 0 of 2 for prod (none yet)" in result["error"]
    assert "\n" not in result["error"]
    assert (remote.refs(), {env["name"]: tree_files(env["path"]) for env in envflow_block["environments"]}) == before
    dry = gated_runners["envflow.promote"]("prod", dry_run=True)
    assert [line.split(":")[0] for line in dry["gates"]] == ["verified", "soak", "approvals"]


def test_verify_and_approvals_are_recorded_on_the_remote(
    gated_runners, promoted_to_stage, remote, monkeypatch, master_base_opts
):
    verified = gated_runners["envflow.verify"]("stage")
    assert verified == {
        "env": "stage",
        "commit": promoted_to_stage,
        "verified_by": "root",
        "jid": None,
        "master": master_base_opts["id"],
    }
    monkeypatch.setenv("SUDO_USER", "alice")
    assert gated_runners["envflow.approve"]("prod")["approvals"] == ["sudo_alice"]
    assert gated_runners["envflow.approve"]("prod")["approvals"] == ["sudo_alice"]  # once per person
    monkeypatch.setenv("SUDO_USER", "bob")
    approved = gated_runners["envflow.approve"]("prod", rev=promoted_to_stage[:8])
    assert approved == {
        "env": "prod",
        "commit": promoted_to_stage,
        "approvals": ["sudo_alice", "sudo_bob"],
        "needed": 2,
    }
    note = git("notes", "--ref=envflow", "show", promoted_to_stage, cwd=remote.path)
    assert '"sudo_alice"' in note and '"sudo_bob"' in note and '"verified"' in note
    result = gated_runners["envflow.promote"]("prod")
    assert result["retcode"] == 1
    assert result["error"].startswith(f"envflow: promoting {promoted_to_stage[:10]} into prod is blocked by soak: ")
    assert "verified:" not in result["error"] and "approvals:" not in result["error"]


def test_force_bypasses_gates_only_with_a_reason_and_records_it(
    gated_runners, promoted_to_stage, envflow_block, remote
):
    before = remote.refs()
    result = gated_runners["envflow.promote"]("prod", force=True)
    assert result == {
        "retcode": 1,
        "error": "envflow: force=True bypasses the gates of prod only with a reason, which is recorded with the "
        "promotion; add reason='<why>'",
    }
    assert remote.refs() == before
    forced = gated_runners["envflow.promote"]("prod", force=True, reason="CVE fix, approved on the phone")
    assert forced["new"] == promoted_to_stage
    assert [line.split(":")[0] for line in forced["bypassed"]] == ["verified", "soak", "approvals"]
    assert remote.tip("master") == promoted_to_stage
    assert served_file(envflow_block, "prod", "web/init.sls") == "# web v2\n"
    note = git("notes", "--ref=envflow", "show", promoted_to_stage, cwd=remote.path)
    assert '"forced"' in note and "CVE fix, approved on the phone" in note


def test_approving_needs_something_to_approve(gated_runners, remote):
    assert gated_runners["envflow.approve"]("test") == {
        "retcode": 1,
        "error": "envflow: test is the first environment of the pipeline; nothing is promoted into it",
    }
    assert gated_runners["envflow.approve"]("stage") == {
        "retcode": 1,
        "error": "envflow: nothing is deployed in test; give rev=<commit> to approve",
    }
    assert gated_runners["envflow.approve"]("stage", rev="nope")["error"].startswith(
        "envflow: revision 'nope' is not in"
    )
    assert gated_runners["envflow.verify"]("stage") == {
        "retcode": 1,
        "error": "envflow: nothing is deployed in stage, so there is nothing to verify",
    }


def test_minions_needs_a_target(gated_runners, remote):
    assert gated_runners["envflow.minions"]("stage") == {
        "retcode": 1,
        "error": "envflow:environments:1:target: not set for stage; add a compound target such as G@env:stage",
    }


def test_verify_with_a_job_the_cache_does_not_hold_records_nothing(gated_runners, promoted_to_stage, remote):
    before = remote.refs()
    result = gated_runners["envflow.verify"]("stage", jid="20201127211425123456")
    assert result == {
        "retcode": 1,
        "error": f"envflow: job 20201127211425123456 does not verify {promoted_to_stage[:10]} in stage: "
        "it is not in the master's job cache; nothing was recorded",
    }
    assert remote.refs() == before


def test_the_promoted_state_reports_closed_gates_in_test_mode_and_fails_on_them(
    minion_base_opts, envflow_block, remote, tmp_path
):
    from saltfactories.utils.functional import Loaders  # pylint: disable=import-outside-toplevel

    block = copy.deepcopy(envflow_block)
    block["environments"][2]["gates"] = {"approvals": 1}
    loaders = Loaders(dict(minion_base_opts, envflow=block, cachedir=str(tmp_path / "cache")))
    for env in ("test", "stage", "prod"):
        loaders.modules.envflow.deploy(env)
    tested = remote.commit("stage", {"web/init.sls": "# web v2\n"})
    loaders.modules.envflow.deploy("stage")
    before = remote.refs()
    blocked = "approvals: 0 of 1 for prod (none yet); 1 more person must run salt-run envflow.approve prod"
    preview = loaders.states.envflow.promoted(name="prod", test=True)
    assert preview.result is False
    assert preview.comment == f"promoting {tested[:10]} into prod would be blocked by {blocked}"
    real = loaders.states.envflow.promoted(name="prod")
    assert real.result is False
    assert (
        real.comment == f"envflow: promoting {tested[:10]} into prod is blocked by {blocked}; "
        "or bypass the gates with force=True reason='<why>'"
    )
    assert remote.refs() == before
    forced = loaders.states.envflow.promoted(name="prod", force=True, reason="hotfix window")
    assert forced.result is True
    assert forced.changes["bypassed"] == [blocked]
    assert remote.tip("master") == tested


def test_verify_refuses_what_is_not_a_job_id(gated_runners, promoted_to_stage, remote):
    before = remote.refs()
    for bad in ("yesterday", ["20261127211425123456"], 12):
        result = gated_runners["envflow.verify"]("stage", jid=bad)
        assert result == {
            "retcode": 1,
            "error": f"envflow: jid {bad!r} is not a job id; give one such as 20261127211425123456, or jid=last",
        }
    assert remote.refs() == before


def test_dry_runs_of_verify_approve_and_refresh_record_and_change_nothing(
    gated_runners, promoted_to_stage, envflow_block, remote, master_base_opts
):
    before = remote.refs(), {env["name"]: tree_files(env["path"]) for env in envflow_block["environments"]}
    assert gated_runners["envflow.verify"]("stage", dry_run=True) == {
        "dry_run": True,
        "env": "stage",
        "commit": promoted_to_stage,
        "verified_by": "root",
        "jid": None,
        "master": master_base_opts["id"],
    }
    assert gated_runners["envflow.approve"]("prod", dry_run=True) == {
        "dry_run": True,
        "approver": "root",
        "env": "prod",
        "commit": promoted_to_stage,
        "approvals": [],
        "needed": 2,
    }
    newer = remote.commit("develop", {"db/init.sls": "# db\n"})
    before = remote.refs(), before[1]
    refreshed = gated_runners["envflow.refresh"](dry_run=True)
    assert refreshed["dry_run"] is True
    assert refreshed["environments"]["test"]["new"] == newer
    assert refreshed["environments"]["test"]["old"] != newer
    assert refreshed["environments"]["stage"]["drift"] == {"added": [], "modified": [], "deleted": []}
    assert (remote.refs(), {env["name"]: tree_files(env["path"]) for env in envflow_block["environments"]}) == before
