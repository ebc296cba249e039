"""The runner's rollback, pin, unpin, freeze and thaw, loaded by Salt's runner loader with master options.

No daemon runs: the runner reaches the execution module through ``salt.cmd``
in this process, as on a master. Events need a master's bus; they are tested
in tests/integration/test_holds.py.
"""

import json

import pytest
import salt.utils.user

from envflow.served import ServedDir
from tests.functional.conftest import env_path, served_file
from tests.gitrepo import git, tree_files

WEB = "web/init.sls"


def everything(block):
    return {env["name"]: tree_files(env["path"]) for env in block["environments"]}


def served(block, env):
    info = ServedDir(env_path(block, env)).deployed()
    return info["id"] if info else None


def history(remote):
    """The entries of the remote's history, newest first, and its holds, read with plain git."""
    try:
        log = git("log", "--format=%B%x00", "refs/envflow/history", cwd=remote.path)
    except Exception:  # pylint: disable=broad-except
        return [], {}
    entries = [json.loads(text.strip().partition("\n\n")[2]) for text in log.split("\0") if text.strip()]
    return entries, json.loads(git("show", "refs/envflow/history:holds.json", cwd=remote.path))


def release(runners, remote, text):
    """Commit ``text`` as web/init.sls on develop and take it through test, stage and prod; return the commit."""
    commit = remote.commit("develop", {WEB: text}, message=text.strip("# \n"))
    assert "retcode" not in runners["envflow.refresh"]("test")
    for env in ("stage", "prod"):
        assert runners["envflow.promote"](env)["new"] == commit
    return commit


@pytest.fixture
def released(runners, remote):
    """Every environment served v1, then stage and prod v2: prod can roll back to v1."""
    runners["envflow.refresh"]()
    v1 = remote.tip("master")
    v2 = release(runners, remote, "# web v2\n")
    return v1, v2


def test_a_rollback_serves_v1_pinned_until_unpinned(runners, envflow_block, remote, released):
    v1, v2 = released
    who = salt.utils.user.get_specific_user()
    before = remote.refs(), everything(envflow_block)
    dry = runners["envflow.rollback"]("prod", reason="checking", dry_run=True)
    assert dry == {
        "env": "prod",
        "from": v2,
        "to": v1,
        "changed": False,
        "dry_run": True,
        "drift": {"added": [], "modified": [], "deleted": []},
    }
    assert (remote.refs(), everything(envflow_block)) == before

    done = runners["envflow.rollback"]("prod", reason="500s after v2")
    pin = done.pop("pin")
    assert done == {
        "env": "prod",
        "from": v2,
        "to": v1,
        "changed": True,
        "rolled_back": True,
        "deployed": {
            "old": v2,
            "new": v1,
            "changed": True,
            "moved_aside": None,
            "refused_links": [],
            "refreshed": ["prod"],
            "pillar_refreshed": [],
            "discarded": None,
        },
    }
    assert (pin["commit"], pin["by"], pin["reason"]) == (v1, who, "500s after v2")
    assert "retcode" not in runners.context
    assert served(envflow_block, "prod") == v1 and served_file(envflow_block, "prod", WEB) == "# web v1\n"
    assert remote.tip("master") == v2  # the branch stays the record of what was promoted
    entries, held = history(remote)
    assert {key: entries[0][key] for key in ("action", "env", "from", "to", "by", "reason")} == {
        "action": "rolled_back",
        "env": "prod",
        "from": v2,
        "to": v1,
        "by": who,
        "reason": "500s after v2",
    }
    assert held["prod"]["pin"]["commit"] == v1

    # A refresh leaves it alone and says why; an explicit rev too.
    refreshed = runners["envflow.refresh"]("prod")["environments"]["prod"]
    assert (refreshed["changed"], refreshed["new"], refreshed["pinned"]["commit"]) == (False, v1, v1)
    assert refreshed["comment"] == (
        f"envflow: prod is pinned to {v1[:10]} by {who} since {pin['at']}: 500s after v2; it serves that commit "
        "until salt-run envflow.unpin prod, or a promotion with force=True reason='<why>'"
    )
    assert "retcode" not in runners.context
    dry_refresh = runners["envflow.refresh"]("prod", dry_run=True)
    planned = {"old": v1, "new": v1, "drift": dry["drift"], "pinned": refreshed["pinned"]}
    assert dry_refresh == {"dry_run": True, "environments": {"prod": {**planned, "comment": refreshed["comment"]}}}

    # Rolling back to the commit pinned already does nothing, and says so.
    refs = remote.refs()
    again = runners["envflow.rollback"]("prod", to=v1, reason="once more")
    assert again == {
        "env": "prod",
        "from": v1,
        "to": v1,
        "changed": False,
        "rolled_back": False,
        "pin": pin,
        "comment": f"prod is pinned to {v1[:10]} by {who} since {pin['at']}: 500s after v2 already",
    }
    assert remote.refs() == refs

    lifted = runners["envflow.unpin"]("prod", dry_run=True)
    assert lifted == {"env": "prod", "changed": False, "pin": pin, "dry_run": True, "would_change": True}
    assert remote.refs() == refs
    lifted = runners["envflow.unpin"]("prod")
    assert lifted == {"env": "prod", "changed": True, "pin": pin}
    assert "pin" not in history(remote)[1].get("prod", {})
    assert runners["envflow.unpin"]("prod") == {
        "env": "prod",
        "changed": False,
        "pin": None,
        "comment": "prod is not pinned",
    }
    back = runners["envflow.refresh"]("prod")["environments"]["prod"]
    assert (back["old"], back["new"], back["changed"]) == (v1, v2, True) and "pinned" not in back
    assert served_file(envflow_block, "prod", WEB) == "# web v2\n"
    assert [entry["action"] for entry in history(remote)[0][:3]] == ["deployed", "unpinned", "rolled_back"]


def test_a_rollback_to_a_commit_served_before_and_pins(runners, envflow_block, remote, released):
    v1, v2 = released
    v3 = release(runners, remote, "# web v3\n")
    done = runners["envflow.rollback"]("prod", to=v1[:12], reason="back to v1")
    assert (done["from"], done["to"], done["rolled_back"]) == (v3, v1, True)
    assert served_file(envflow_block, "prod", WEB) == "# web v1\n"
    again = runners["envflow.rollback"]("prod", to=v2, reason="v2 after all")
    assert (again["from"], again["to"]) == (v1, v2) and served(envflow_block, "prod") == v2
    # Rolling back to the commit served pins it there, and the history calls it so.
    held = runners["envflow.rollback"]("stage", to=v3, reason="hold stage")
    assert (held["changed"], held["rolled_back"], held["to"]) == (True, False, v3) and "deployed" not in held
    assert history(remote)[0][0]["action"] == "pinned"

    pinned = runners["envflow.pin"]("test", reason="demo tomorrow")
    assert pinned["changed"] is True and "dry_run" not in pinned
    assert (pinned["env"], pinned["pin"]["commit"], pinned["pin"]["reason"]) == ("test", v3, "demo tomorrow")
    refs = remote.refs()
    assert runners["envflow.pin"]("test", reason="again") == {
        "env": "test",
        "changed": False,
        "pin": pinned["pin"],
        "comment": "test is pinned to that commit already",
    }
    assert runners["envflow.pin"]("stage", reason="x", dry_run=True) == {
        "env": "stage",
        "changed": False,
        "pin": history(remote)[1]["stage"]["pin"],
        "dry_run": True,
        "would_change": False,
        "comment": "stage is pinned to that commit already",
    }
    assert remote.refs() == refs
    assert runners["envflow.unpin"]("test", reason="demo done")["changed"] is True
    entry = history(remote)[0][0]
    assert (entry["action"], entry["from"], entry["reason"]) == ("unpinned", v3, "demo done")
    assert remote.tip("develop") == v3 and "retcode" not in runners.context


def test_a_promotion_into_a_pinned_environment_is_refused_unless_forced(runners, envflow_block, remote, released):
    v1, v2 = released
    who = salt.utils.user.get_specific_user()
    pin = runners["envflow.rollback"]("prod", reason="bad v2")["pin"]
    v3 = remote.commit("develop", {WEB: "# web v3\n"}, message="web v3")
    runners["envflow.refresh"]("test")
    runners["envflow.promote"]("stage")
    line = f"envflow: prod is pinned to {v1[:10]} by {who} since {pin['at']}: bad v2"
    before = remote.refs(), everything(envflow_block)
    for kwargs, error in (
        ({}, f"{line}; unpin it with salt-run envflow.unpin prod, or promote with force=True reason='<why>'"),
        (
            {"force": True},
            "envflow: force=True overrides the pin of prod only with a reason, which is recorded; add reason='<why>'",
        ),
    ):
        runners.context.clear()
        assert runners["envflow.promote"]("prod", **kwargs) == {"retcode": 1, "error": error}
        assert runners.context["retcode"] == 1
        assert (remote.refs(), everything(envflow_block)) == before
    runners.context.clear()
    forced = runners["envflow.promote"]("prod", force=True, reason="v3 fixes it")
    assert (forced["old"], forced["new"], forced["bypassed"]) == (v2, v3, [f"pin: {line.removeprefix('envflow: ')}"])
    assert served(envflow_block, "prod") == v3 and "prod" not in history(remote)[1]  # the promotion ended the pin
    [entry, *_] = history(remote)[0]
    assert (entry["action"], entry["served_before"], entry["reason"]) == ("promoted", v1, "v3 fixes it")
    assert "retcode" not in runners.context


def test_a_freeze_refuses_promotions_and_refreshes_until_thawed(runners, envflow_block, remote, released):
    _v1, v2 = released
    who = salt.utils.user.get_specific_user()
    dry = runners["envflow.freeze"]("stage", reason="load test", until="1h", dry_run=True)
    assert (dry["changed"], dry["dry_run"], dry["would_change"]) == (False, True, True)
    assert history(remote)[1] == {}
    frozen = runners["envflow.freeze"]("stage", reason="load test running", until="1h")
    freeze = frozen.pop("freeze")
    assert frozen == {"env": "stage", "changed": True}
    assert (freeze["by"], freeze["reason"]) == (who, "load test running") and freeze["until"] > freeze["at"]
    assert history(remote)[1]["stage"]["freeze"]["until"] == freeze["until"]

    v3 = remote.commit("develop", {WEB: "# web v3\n"}, message="web v3")
    runners["envflow.refresh"]("test")
    line = f"envflow: stage is frozen by {who} since {freeze['at']} until {freeze['until']}: load test running"
    before = remote.refs(), everything(envflow_block)
    assert runners["envflow.promote"]("stage") == {
        "retcode": 1,
        "error": f"{line}; thaw it with salt-run envflow.thaw stage, or promote with force=True reason='<why>'",
    }
    assert runners.context["retcode"] == 1
    runners.context.clear()
    assert runners["envflow.promote"]("stage", force=True) == {
        "retcode": 1,
        "error": "envflow: force=True overrides the freeze of stage only with a reason, which is recorded; "
        "add reason='<why>'",
    }
    # A refresh that would change stage: its branch moved by hand to what test serves.
    remote.set_branch("stage", v3)
    before = remote.refs(), everything(envflow_block)
    refused = runners["envflow.refresh"]("stage")
    assert refused == {
        "retcode": 1,
        "error": f"stage: {line}; thaw it with salt-run envflow.thaw stage, or deploy with force=True reason='<why>'",
        "environments": {
            "stage": {
                "error": f"{line}; thaw it with salt-run envflow.thaw stage, or deploy with force=True reason='<why>'"
            }
        },
    }
    assert (remote.refs(), everything(envflow_block)) == before
    # A dry run says why it would be refused, and changes nothing either.
    dry = runners["envflow.refresh"]("stage", dry_run=True)["environments"]["stage"]
    assert (dry["new"], dry["refused"]) == (v3, refused["environments"]["stage"]["error"])
    assert (remote.refs(), everything(envflow_block)) == before
    remote.set_branch("stage", v2)
    runners.context.clear()

    forced = runners["envflow.promote"]("stage", force=True, reason="load test needs v3")
    assert (forced["new"], forced["bypassed"]) == (v3, [f"freeze: {line.removeprefix('envflow: ')}"])
    assert served(envflow_block, "stage") == v3 and remote.tip("stage") == v3
    [entry, *_] = history(remote)[0]
    assert (entry["action"], entry["reason"], entry["bypassed"]) == (
        "promoted",
        "load test needs v3",
        forced["bypassed"],
    )
    assert "retcode" not in runners.context

    thawed = runners["envflow.thaw"]("stage")
    assert thawed == {"env": "stage", "changed": True, "freeze": freeze}
    assert runners["envflow.thaw"]("stage") == {
        "env": "stage",
        "changed": False,
        "freeze": None,
        "comment": "stage is not frozen",
    }
    v4 = remote.commit("develop", {WEB: "# web v4\n"}, message="web v4")
    runners["envflow.refresh"]("test")
    assert runners["envflow.promote"]("stage")["new"] == v4 and served(envflow_block, "stage") == v4


def test_a_rollback_is_not_held_back_by_a_freeze(runners, envflow_block, remote, released):
    v1, _v2 = released
    runners["envflow.freeze"]("prod", reason="end of year")
    assert runners["envflow.rollback"]("prod", reason="bad v2")["to"] == v1
    assert served(envflow_block, "prod") == v1


def test_user_errors_fail_in_one_line_and_change_nothing(runners, envflow_block, remote, released):
    v1, v2 = released
    only_in_test = remote.commit("develop", {WEB: "# web v3, only in test\n"}, message="web v3")
    runners["envflow.refresh"]("test")
    reason = "envflow: {} needs a reason, which is recorded with it; add reason='<why>'"
    unknown = "envflow: no environment named 'qa'; configured: test, stage, prod"
    neither = "is neither a duration nor a time; give a duration such as 2h or 1d, or a time such as "
    neither += "2026-12-24T18:00:00+00:00"
    cases = [
        ("envflow.rollback", ("prod",), {}, reason.format("rolling back prod")),
        ("envflow.rollback", ("prod",), {"reason": "  "}, reason.format("rolling back prod")),
        ("envflow.rollback", ("qa",), {"reason": "x"}, unknown),
        (
            "envflow.rollback",
            ("prod",),
            {"reason": "x", "to": only_in_test},
            f"envflow: {only_in_test} was never served in prod; a rollback serves only a commit it served before "
            f"(the latest: {v2[:10]}, {v1[:10]})",
        ),
        (
            "envflow.rollback",
            ("prod",),
            {"reason": "x", "to": "v0"},
            f"envflow: revision 'v0' is not in {remote.path}; give a commit id, tag or branch of that repository",
        ),
        ("envflow.pin", ("prod",), {}, reason.format("pinning prod")),
        ("envflow.pin", ("qa",), {"reason": "x"}, unknown),
        ("envflow.unpin", ("qa",), {}, unknown),
        ("envflow.freeze", ("prod",), {"until": "2h"}, reason.format("freezing prod")),
        ("envflow.freeze", ("prod",), {"reason": "x", "until": "soon"}, f"envflow: until='soon' {neither}"),
        ("envflow.freeze", ("prod",), {"reason": "x", "until": True}, f"envflow: until=True {neither}"),
        (
            "envflow.freeze",
            ("prod",),
            {"reason": "x", "until": "2001-01-01T00:00:00"},
            "envflow: until='2001-01-01T00:00:00' is already past; give a later time, or a duration such as 2h",
        ),
        (
            "envflow.freeze",
            ("prod",),
            {"reason": "x", "until": "0m"},
            "envflow: until='0m' is no time from now; give a duration such as 2h",
        ),
        ("envflow.freeze", ("qa",), {"reason": "x"}, unknown),
        ("envflow.thaw", ("qa",), {}, unknown),
    ]
    before = remote.refs(), everything(envflow_block)
    for fun, args, kwargs, error in cases:
        runners.context.clear()
        assert runners[fun](*args, **kwargs) == {"retcode": 1, "error": error}, (fun, args, kwargs)
        assert runners.context["retcode"] == 1 and "\n" not in error
        assert (remote.refs(), everything(envflow_block)) == before, (fun, args, kwargs)


def test_a_rollback_needs_something_served_before(runners, envflow_block, remote):
    before = remote.refs(), everything(envflow_block)
    for fun in ("envflow.rollback", "envflow.pin"):
        what = "roll back" if fun == "envflow.rollback" else "pin"
        assert runners[fun]("prod", reason="x") == {
            "retcode": 1,
            "error": f"envflow: nothing is deployed in prod, so there is nothing to {what}",
        }
    assert (remote.refs(), everything(envflow_block)) == before
    runners["envflow.refresh"]("prod")
    before = remote.refs(), everything(envflow_block)
    assert runners["envflow.rollback"]("prod", reason="x") == {
        "retcode": 1,
        "error": f"envflow: no commit prod served before {remote.tip('master')[:10]} is known; "
        "give to=<commit> it served before",
    }
    assert (remote.refs(), everything(envflow_block)) == before
