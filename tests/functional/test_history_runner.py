"""``envflow.history``, ``envflow.diff`` and ``envflow.status``'s new entries, through Salt's runner loader."""

import pytest

from envflow import history
from envflow.remote import Mirror
from envflow.served import ServedDir
from tests.functional.conftest import env_path
from tests.gitrepo import tree_files


def everything(block):
    return {env["name"]: tree_files(env["path"]) for env in block["environments"]}


@pytest.fixture
def recorder(remote, tmp_path):
    """A mirror of ``remote`` of its own, to write history entries as another master would."""
    with Mirror(remote.path, str(tmp_path / "other-master")) as mirror:
        mirror.fetch()
        yield mirror


def record(mirror, **entry):
    mirror.fetch()
    return history.record(mirror, {"by": "alice", **entry})


def test_history_lists_the_entries_newest_first(runners, remote, recorder):
    first = record(recorder, action="promoted", env="stage", to=remote.tip("stage"))
    second = record(recorder, action="frozen", env="prod", reason="launch")
    third = record(recorder, action="promoted", env="prod", to=remote.tip("master"))
    assert runners["envflow.history"]() == {"history": [third, second, first], "outputter": "envflow"}
    assert runners["envflow.history"]("prod") == {"history": [third, second], "outputter": "envflow"}
    assert runners["envflow.history"]("prod", limit=1)["history"] == [third]
    assert runners["envflow.history"]("test")["history"] == []
    assert "retcode" not in runners.context


@pytest.mark.parametrize("limit", [0, -3, "ten", 2.5, True, None])
def test_history_refuses_a_limit_that_is_no_positive_whole_number(runners, envflow_block, remote, limit):
    before = (remote.refs(), everything(envflow_block))
    result = runners["envflow.history"](limit=limit)
    assert result == {
        "retcode": 1,
        "error": f"envflow: limit must be a positive whole number, not {limit!r}; for example limit=50",
    }
    assert runners.context["retcode"] == 1
    assert (remote.refs(), everything(envflow_block)) == before


def test_history_and_diff_refuse_an_unknown_environment(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    before = (remote.refs(), everything(envflow_block))
    refused = {"retcode": 1, "error": "envflow: no environment named 'qa'; configured: test, stage, prod"}
    assert runners["envflow.history"]("qa") == refused
    assert runners["envflow.diff"]("qa") == refused
    assert runners["envflow.diff"]("prod", "qa") == refused
    assert (remote.refs(), everything(envflow_block)) == before


def test_diff_shows_what_a_promotion_would_bring(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    old = remote.tip("stage")
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    runners["envflow.refresh"]("test")
    before = (remote.refs(), everything(envflow_block))
    result = runners["envflow.diff"]("stage", patch=True)
    assert result["patch"].endswith("-# web v1\n+# web v2\n")
    del result["patch"]
    assert result == {
        "env": "stage",
        "branch": "stage",
        "upstream": "test",
        "from": old,
        "to": tested,
        "commits": [f"{tested[:10]} web v2"],
        "dropped": [],
        "files": ["M web/init.sls (+1 -1)"],
        "totals": {"commits": 1, "dropped": 0, "files": 1, "added": 1, "removed": 1},
        "outputter": "envflow",
    }
    assert (remote.refs(), everything(envflow_block)) == before


def test_diff_of_a_blocked_promotion_says_why_and_succeeds(runners, remote):
    runners["envflow.refresh"]()
    hotfix = remote.commit("master", {"web/init.sls": "# hotfix\n"}, message="hotfix")
    refused = runners["envflow.promote"]("prod", dry_run=True)["error"]
    runners.context.clear()
    result = runners["envflow.diff"]("prod")
    assert result["blocked"] == refused
    assert result["dropped"] == [f"{hotfix[:10]} hotfix"]
    assert "retcode" not in result and "retcode" not in runners.context


def test_diff_of_two_environments_compares_what_they_serve(runners, remote):
    runners["envflow.refresh"]()
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    runners["envflow.refresh"]("test")
    result = runners["envflow.diff"]("prod", "test")
    assert (result["from_env"], result["to_env"], result["to"]) == ("prod", "test", tested)
    assert result["commits"] == [f"{tested[:10]} web v2"]


def test_diff_of_an_environment_serving_nothing_is_refused(runners, envflow_block, remote):
    runners["envflow.refresh"]("test")
    before = (remote.refs(), everything(envflow_block))
    assert runners["envflow.diff"]("test", "prod") == {
        "retcode": 1,
        "error": "envflow: nothing is deployed in prod, so there is nothing to compare; run envflow.refresh prod first",
    }
    assert runners["envflow.diff"]("prod") == {
        "retcode": 1,
        "error": "envflow: nothing is deployed in stage, so nothing was tested there to promote; "
        "run envflow.refresh stage first",
    }
    assert runners.context["retcode"] == 1
    assert (remote.refs(), everything(envflow_block)) == before


def test_status_shows_what_is_served_and_the_holds(runners, envflow_block, remote, recorder):
    runners["envflow.refresh"]()
    served = remote.tip("master")
    remote.commit("master", {"web/init.sls": "# pushed to master, not served\n"})

    def pin(holds):
        holds.setdefault("prod", {})["pin"] = {"commit": served, "by": "alice", "reason": "bad release"}
        return holds

    recorder.fetch()
    history.record(recorder, {"action": "pinned", "env": "prod", "by": "alice"}, pin)
    report = runners["envflow.status"]()
    assert report["outputter"] == "envflow"
    prod = report["environments"]["prod"]
    since = ServedDir(env_path(envflow_block, "prod")).deployed()["deployed_at"]
    assert prod["served"] == {"id": served, "summary": "initial states", "since": since}
    assert (prod["in_sync"], prod["ahead"]) == (False, 1)
    assert prod["pin"] == {"commit": served, "by": "alice", "reason": "bad release"}
    assert prod["gates"] is None  # master was pushed to directly: no promotion into prod is possible now
    assert report["environments"]["stage"]["gates"] == []


def test_after_a_rollback_status_shows_the_pin_and_the_branch_ahead_and_history_the_change(runners, remote):
    runners["envflow.refresh"]()
    before = remote.tip("develop")
    tip = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    runners["envflow.refresh"]("test")
    rolled_back = runners["envflow.rollback"]("test", reason="web v2 breaks the login")
    assert "retcode" not in rolled_back, rolled_back
    test = runners["envflow.status"]("test")["environments"]["test"]
    assert (test["served"]["id"], test["remote"], test["in_sync"], test["ahead"]) == (before, tip, False, 1)
    assert (test["pin"]["commit"], test["pin"]["reason"]) == (before, "web v2 breaks the login")
    newest = runners["envflow.history"]("test", limit=1)["history"]
    assert [(entry["action"], entry["from"], entry["to"]) for entry in newest] == [("rolled_back", tip, before)]
