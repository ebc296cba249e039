"""Rollbacks, pins and freezes (envflow.holds), and how promotions and deploys honour them, on real repositories."""

import datetime
import os

import pytest

from envflow import history, holds, pipeline
from envflow.config import parse
from envflow.errors import EnvflowError, Held
from envflow.remote import HISTORY, Mirror
from envflow.served import ServedDir
from tests.gitrepo import config as make_config


def served_id(config, name):
    info = ServedDir(config.environment(name).path).deployed()
    return info["id"] if info else None


def served_text(config, name, rel="web/init.sls"):
    with open(os.path.join(config.environment(name).path, rel), encoding="utf-8") as handle:
        return handle.read()


def refresh(config, mirror, name, **kwargs):
    mirror.fetch()
    return pipeline.deploy(config, mirror, name, by="ci", **kwargs)


def release(config, mirror, remote, text):
    """Commit ``text`` on develop, deploy it in test and promote it through stage and prod; return the commit."""
    commit = remote.commit("develop", {"web/init.sls": text}, message=text.strip())
    refresh(config, mirror, "test")
    for name in ("stage", "prod"):
        mirror.fetch()
        pipeline.promote(config, mirror, name, by="ci")
    return commit


@pytest.fixture
def released(pipeline_config, mirror, remote):
    """Every environment served v1, then v2: prod serves v2 and served v1 before."""
    for env in pipeline_config.environments:
        refresh(pipeline_config, mirror, env.name)
    v1 = remote.tip("master")
    v2 = release(pipeline_config, mirror, remote, "# web v2\n")
    return pipeline_config, v1, v2


def unchanged(remote, config):
    """A snapshot of what must not change: the remote's references and what each environment serves."""
    return remote.refs(), {env.name: served_id(config, env.name) for env in config.environments}


# -- rollback ----------------------------------------------------------------------------------------------


def test_a_rollback_serves_the_previous_commit_from_the_tree_on_disk_and_pins_it(released, mirror, remote):
    config, v1, v2 = released
    layout = ServedDir(config.environment("prod").path).layout
    standby = layout.other(layout.served_slot())
    top = os.stat(os.path.join(layout.tree(standby), "top.sls")).st_ino
    done = holds.rollback(config, mirror, "prod", reason="500s after v2", by="alice")
    assert (done["from"], done["to"], done["rolled_back"], done["changed"]) == (v2, v1, True, True)
    assert served_id(config, "prod") == v1 and served_text(config, "prod") == "# web v1\n"
    # The tree still on disk was switched in: only the file the two commits differ in was checked out again.
    assert layout.served_slot() == standby
    assert done["deployed"]["files"] == {"added": 0, "modified": 1, "deleted": 0}
    assert os.stat(os.path.join(config.environment("prod").path, "top.sls")).st_ino == top
    assert remote.tip("master") == v2  # the branch stays the record of what was promoted
    pin = history.pin_of(history.holds(mirror), "prod")
    assert (pin["commit"], pin["by"], pin["reason"]) == (v1, "alice", "500s after v2")
    [entry, *_] = history.entries(mirror, "prod")
    assert (entry["action"], entry["from"], entry["to"], entry["by"]) == ("rolled_back", v2, v1, "alice")


def test_a_rollback_needs_no_fetch(released, mirror, remote):
    """Switched at once from what is on the master: the mirror still has master where it was, not the new tip."""
    config, v1, v2 = released
    remote.commit("master", {"later.sls": "# pushed after the last fetch\n"})
    done = holds.rollback(config, mirror, "prod", reason="roll back", by="alice")
    assert done["rolled_back"] is True and served_id(config, "prod") == v1
    assert str(mirror.tip("master")) == v2 != remote.tip("master")


def test_a_rollback_whose_pin_cannot_be_recorded_still_rolls_back_and_warns(released, mirror, remote):
    config, v1, _v2 = released
    # Another writer holds the remote's history reference, and keeps holding it.
    lock = os.path.join(remote.path, HISTORY + ".lock")
    with open(lock, "w", encoding="utf-8"):
        pass
    done = holds.rollback(config, mirror, "prod", reason="roll back", by="alice")
    assert done["rolled_back"] is True and served_id(config, "prod") == v1
    assert done["warning"].startswith("envflow: prod changed, but its history could not be written: ")
    assert "\n" not in done["warning"]


def test_a_pinned_environment_keeps_its_pin_through_refreshes_and_refuses_promotions(released, mirror, remote):
    config, v1, v2 = released
    holds.rollback(config, mirror, "prod", reason="bad v2", by="alice")
    result = refresh(config, mirror, "prod")
    assert result["changed"] is False and result["new"]["id"] == v1 and result["pinned"]["commit"] == v1
    assert result["comment"].startswith(f"envflow: prod is pinned to {v1[:10]} by alice since ")
    assert "bad v2" in result["comment"] and "envflow.unpin prod" in result["comment"]
    assert refresh(config, mirror, "prod", rev=v2)["new"]["id"] == v1  # an explicit rev too
    v3 = remote.commit("develop", {"web/init.sls": "# web v3\n"})
    refresh(config, mirror, "test")
    pipeline.promote(config, mirror, "stage", by="ci")
    before = unchanged(remote, config)
    with pytest.raises(Held) as refused:
        mirror.fetch()
        pipeline.promote(config, mirror, "prod", by="bob")
    message = str(refused.value)
    assert message.startswith(f"envflow: prod is pinned to {v1[:10]} by alice since ") and "\n" not in message
    assert message.endswith(
        ": bad v2; unpin it with salt-run envflow.unpin prod, or promote with force=True reason='<why>'"
    )
    with pytest.raises(Held, match=r"force=True overrides the pin of prod only with a reason"):
        pipeline.promote(config, mirror, "prod", force=True, by="bob")
    assert unchanged(remote, config) == before
    done = pipeline.promote(config, mirror, "prod", force=True, reason="v3 fixes it", by="bob")
    assert done.moved and served_id(config, "prod") == v3 and remote.tip("master") == v3
    assert history.pin_of(history.holds(mirror), "prod") is None  # the forced promotion ended the pin
    [entry, *_] = history.entries(mirror, "prod")
    assert (entry["action"], entry["from"], entry["to"], entry["reason"]) == ("promoted", v2, v3, "v3 fixes it")
    assert entry["served_before"] == v1 and entry["bypassed"][0].startswith("pin: prod is pinned to")


def test_every_master_honours_a_pin(released, mirror, remote, tmp_path):
    """A second master (its own directories and mirror, the same remote) serves the pinned commit on refresh."""
    config, v1, _v2 = released
    holds.rollback(config, mirror, "prod", reason="bad v2", by="alice")
    other = parse(make_config(remote.path, tmp_path / "other-master"))
    with Mirror(remote.path, str(tmp_path / "other-cache")) as theirs:
        result = refresh(other, theirs, "prod")
    assert result["changed"] is True and served_id(other, "prod") == v1 and result["pinned"]["commit"] == v1


def test_unpin_lets_the_next_refresh_serve_the_branch(released, mirror, remote):
    config, v1, v2 = released
    holds.rollback(config, mirror, "prod", reason="bad v2", by="alice")
    done = holds.unpin(config, mirror, "prod", by="alice")
    assert done["changed"] is True and done["pin"]["commit"] == v1
    assert history.pin_of(history.holds(mirror), "prod") is None
    assert refresh(config, mirror, "prod")["new"]["id"] == v2 and served_id(config, "prod") == v2
    refs = remote.refs()
    again = holds.unpin(config, mirror, "prod", by="alice")
    assert again == {"env": "prod", "changed": False, "pin": None, "comment": "prod is not pinned"}
    assert remote.refs() == refs  # nothing to do writes nothing


def test_a_rollback_to_an_older_commit_served_before(released, mirror, remote):
    config, v1, v2 = released
    v3 = release(config, mirror, remote, "# web v3\n")
    done = holds.rollback(config, mirror, "prod", to=v1[:12], reason="back to v1", by="alice")
    assert (done["from"], done["to"]) == (v3, v1) and served_text(config, "prod") == "# web v1\n"
    # Then forward again to v2, which prod also served: any commit of its history.
    done = holds.rollback(config, mirror, "prod", to=v2, reason="v2 after all", by="alice")
    assert done["to"] == v2 and served_id(config, "prod") == v2
    assert history.pin_of(history.holds(mirror), "prod")["commit"] == v2


def test_a_second_rollback_goes_back_to_what_was_served_before_it(released, mirror):
    config, v1, v2 = released
    holds.rollback(config, mirror, "prod", reason="bad v2", by="alice")
    done = holds.rollback(config, mirror, "prod", reason="v2 was fine", by="alice")
    assert (done["from"], done["to"]) == (v1, v2) and served_id(config, "prod") == v2


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"reason": None}, "envflow: rolling back prod needs a reason, which is recorded with it; add reason='<why>'"),
        ({"reason": "   "}, "envflow: rolling back prod needs a reason, which is recorded with it; add reason='<why>'"),
        (
            {"reason": "x", "to": "develop"},
            "envflow: develop was never served in prod; a rollback serves only a commit it served before (the latest: ",
        ),
        (
            {"reason": "x", "to": "f" * 5000},
            "envflow: revision '" + "f" * 76 + "... (5000 characters) is not in ",
        ),
    ],
    ids=["no reason", "blank reason", "never served", "long rev"],
)
def test_a_refused_rollback_changes_nothing(released, mirror, remote, kwargs, expected):
    config, _v1, _v2 = released
    remote.commit("develop", {"web/init.sls": "# web v3, never beyond test\n"})
    refresh(config, mirror, "test")
    mirror.fetch()
    before = unchanged(remote, config)
    with pytest.raises(EnvflowError) as refused:
        holds.rollback(config, mirror, "prod", by="alice", **kwargs)
    assert str(refused.value).startswith(expected) and "\n" not in str(refused.value)
    assert unchanged(remote, config) == before


def test_a_rollback_with_nothing_served_before_is_refused(pipeline_config, mirror, remote):
    refresh(pipeline_config, mirror, "prod")
    before = unchanged(remote, pipeline_config)
    with pytest.raises(EnvflowError) as refused:
        holds.rollback(pipeline_config, mirror, "prod", reason="x", by="alice")
    tip = remote.tip("master")
    assert str(refused.value) == (
        f"envflow: no commit prod served before {tip[:10]} is known; give to=<commit> it served before"
    )
    assert unchanged(remote, pipeline_config) == before
    with pytest.raises(
        EnvflowError, match=r"^envflow: nothing is deployed in stage, so there is nothing to roll back$"
    ):
        holds.rollback(pipeline_config, mirror, "stage", reason="x", by="alice")


def test_a_rollback_refuses_hand_edits_unless_forced(released, mirror, remote):
    config, v1, _v2 = released
    edited = os.path.join(config.environment("prod").path, "web/init.sls")
    with open(edited, "a", encoding="utf-8") as handle:
        handle.write("# hot edit\n")
    before = unchanged(remote, config)
    with pytest.raises(EnvflowError, match=r"roll back with force=True to discard them$"):
        holds.rollback(config, mirror, "prod", reason="bad v2", by="alice")
    assert unchanged(remote, config) == before
    done = holds.rollback(config, mirror, "prod", reason="bad v2", force=True, by="alice")
    assert done["to"] == v1 and served_text(config, "prod") == "# web v1\n"
    assert done["deployed"]["discarded"]["modified"] == ["web/init.sls"]


def test_rolling_back_to_the_commit_served_pins_it_and_again_does_nothing(released, mirror, remote):
    config, _v1, v2 = released
    done = holds.rollback(config, mirror, "prod", to=v2, reason="hold v2", by="alice")
    assert (done["changed"], done["rolled_back"]) == (True, False) and served_id(config, "prod") == v2
    assert history.entries(mirror, "prod")[0]["action"] == "pinned"
    refs = remote.refs()
    again = holds.rollback(config, mirror, "prod", to=v2, reason="hold v2", by="alice")
    assert again["changed"] is False and again["comment"].startswith("prod is pinned to")
    assert remote.refs() == refs


def test_a_rollback_dry_run_changes_nothing(released, mirror, remote):
    config, v1, v2 = released
    before = unchanged(remote, config)
    done = holds.rollback(config, mirror, "prod", reason="check", by="alice", dry_run=True)
    assert (done["from"], done["to"], done["dry_run"], done["changed"]) == (v2, v1, True, False)
    assert done["drift"] == {"added": [], "modified": [], "deleted": []}
    assert unchanged(remote, config) == before


# -- pin -----------------------------------------------------------------------------------------------------


def test_pin_holds_what_is_served(released, mirror, remote):
    config, _v1, v2 = released
    done = holds.pin(config, mirror, "stage", reason="demo tomorrow", by="carol")
    assert done["changed"] is True and done["pin"]["commit"] == v2
    remote.commit("develop", {"web/init.sls": "# web v3\n"})
    refresh(config, mirror, "test")
    mirror.fetch()
    with pytest.raises(Held, match=r"^envflow: stage is pinned to .* by carol since .*: demo tomorrow; unpin it"):
        pipeline.promote(config, mirror, "stage", by="ci")
    refs = remote.refs()
    assert holds.pin(config, mirror, "stage", reason="demo", by="carol")["changed"] is False
    assert remote.refs() == refs
    with pytest.raises(EnvflowError, match=r"^envflow: pinning stage needs a reason"):
        holds.pin(config, mirror, "stage", by="carol")


# -- freeze --------------------------------------------------------------------------------------------------


def test_a_freeze_refuses_promotions_and_refreshes_with_its_reason(released, mirror, remote):
    config, _v1, v2 = released
    done = holds.freeze(config, mirror, "prod", reason="end-of-year freeze", until="2d", by="dave")
    until = done["freeze"]["until"]
    assert done["changed"] is True and datetime.datetime.fromisoformat(until) > history.now()
    v3 = remote.commit("develop", {"web/init.sls": "# web v3\n"})
    refresh(config, mirror, "test")
    pipeline.promote(config, mirror, "stage", by="ci")
    remote.commit("master", {"hotfix.sls": "# on master\n"})  # a refresh of prod would change it too
    mirror.fetch()
    remote.set_branch("master", v2)
    mirror.fetch()
    before = unchanged(remote, config)
    expected = (
        f"envflow: prod is frozen by dave since {done['freeze']['at']} until {until}: end-of-year freeze; "
        "thaw it with salt-run envflow.thaw prod, or {doing} with force=True reason='<why>'"
    )
    with pytest.raises(Held) as refused:
        pipeline.promote(config, mirror, "prod", by="erin")
    assert str(refused.value) == expected.format(doing="promote")
    # A refresh that would change nothing is no change, frozen or not; one that would is refused.
    assert refresh(config, mirror, "prod")["changed"] is False
    with pytest.raises(Held) as refused:
        refresh(config, mirror, "prod", rev=v3)
    assert str(refused.value) == expected.format(doing="deploy")
    with pytest.raises(Held, match=r"^envflow: force=True overrides the freeze of prod only with a reason"):
        pipeline.promote(config, mirror, "prod", force=True, by="erin")
    assert unchanged(remote, config) == before
    done = pipeline.promote(config, mirror, "prod", force=True, reason="security fix", by="erin")
    assert done.moved and served_id(config, "prod") == v3
    [entry, *_] = history.entries(mirror, "prod")
    assert entry["action"] == "promoted" and entry["reason"] == "security fix"
    assert entry["bypassed"] == [f"freeze: {expected.split('envflow: ')[1].split('; thaw', maxsplit=1)[0]}"]
    assert history.freeze_of(history.holds(mirror), "prod") is not None  # overriding it does not end it


def test_thaw_ends_a_freeze(released, mirror, remote):
    config, _v1, _v2 = released
    holds.freeze(config, mirror, "stage", reason="load test", by="dave")
    done = holds.thaw(config, mirror, "stage", by="dave")
    assert done["changed"] is True and done["freeze"]["reason"] == "load test"
    v3 = remote.commit("develop", {"web/init.sls": "# web v3\n"})
    refresh(config, mirror, "test")
    assert pipeline.promote(config, mirror, "stage", by="ci").moved and served_id(config, "stage") == v3
    refs = remote.refs()
    assert holds.thaw(config, mirror, "stage", by="dave") == {
        "env": "stage",
        "changed": False,
        "freeze": None,
        "comment": "stage is not frozen",
    }
    assert remote.refs() == refs


def test_a_freeze_with_until_ends_by_itself(released, mirror, remote):
    config, _v1, _v2 = released
    holds.freeze(config, mirror, "stage", reason="load test", until="1h", by="dave")
    found = history.holds(mirror)
    assert history.freeze_of(found, "stage") is not None
    later = history.now() + datetime.timedelta(hours=1, seconds=1)
    assert history.freeze_of(found, "stage", at=later) is None
    # A freeze whose time passed (written as the clock would have it an hour later) holds nothing back.
    past = (history.now() - datetime.timedelta(seconds=1)).isoformat()
    history.record(
        mirror,
        {"action": "frozen", "env": "stage", "by": "dave"},
        lambda held: {**held, "stage": {"freeze": {"by": "dave", "reason": "old", "until": past}}},
    )
    v3 = remote.commit("develop", {"web/init.sls": "# web v3\n"})
    refresh(config, mirror, "test")
    assert pipeline.promote(config, mirror, "stage", by="ci").moved and served_id(config, "stage") == v3


def test_a_rollback_is_not_held_back_by_a_freeze(released, mirror):
    config, v1, _v2 = released
    holds.freeze(config, mirror, "prod", reason="freeze", by="dave")
    assert holds.rollback(config, mirror, "prod", reason="bad v2", by="alice")["to"] == v1


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        ("soon", "envflow: until='soon' is neither a duration nor a time; give a duration such as 2h or 1d, or a time"),
        ("2001-01-01T00:00:00", "envflow: until='2001-01-01T00:00:00' is already past; give a later time"),
        ("0m", "envflow: until='0m' is no time from now; give a duration such as 2h"),
        ("x" * 300, "envflow: until='xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
    ],
)
def test_a_bad_freeze_changes_nothing(released, mirror, remote, until, expected):
    config, _v1, _v2 = released
    refs = remote.refs()
    with pytest.raises(EnvflowError) as refused:
        holds.freeze(config, mirror, "prod", reason="x", until=until, by="dave")
    assert str(refused.value).startswith(expected) and len(str(refused.value)) < 250
    with pytest.raises(EnvflowError, match=r"^envflow: freezing prod needs a reason"):
        holds.freeze(config, mirror, "prod", by="dave")
    assert remote.refs() == refs


def test_parse_until_reads_durations_and_times():
    at = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
    assert holds.parse_until("90m", at) == at + datetime.timedelta(minutes=90)
    assert holds.parse_until("2d", at) == at + datetime.timedelta(days=2)
    assert holds.parse_until(3600, at) == at + datetime.timedelta(hours=1)
    assert holds.parse_until("2026-12-24T18:00:00", at).isoformat() == "2026-12-24T18:00:00+00:00"
    assert holds.parse_until("2026-12-24T18:00:00+01:00", at).isoformat() == "2026-12-24T17:00:00+00:00"
    assert holds.parse_until(None, at) is None


def test_dry_runs_of_holds_change_nothing(released, mirror, remote):
    config, _v1, _v2 = released
    refs = remote.refs()
    assert holds.freeze(config, mirror, "prod", reason="x", by="d", dry_run=True)["would_change"] is True
    assert holds.thaw(config, mirror, "prod", by="d", dry_run=True)["would_change"] is False
    assert holds.pin(config, mirror, "prod", reason="x", by="d", dry_run=True)["would_change"] is True
    assert holds.unpin(config, mirror, "prod", by="d", dry_run=True)["would_change"] is False
    assert remote.refs() == refs


# -- history -------------------------------------------------------------------------------------------------


def test_history_has_one_entry_per_change(released, mirror, remote):
    config, v1, v2 = released
    holds.freeze(config, mirror, "prod", reason="f", by="a")
    holds.thaw(config, mirror, "prod", by="a")
    holds.rollback(config, mirror, "prod", reason="r", by="a")
    holds.unpin(config, mirror, "prod", by="a")
    refresh(config, mirror, "prod")
    refresh(config, mirror, "prod")  # nothing to do: no entry
    actions = [(entry["action"], entry.get("from"), entry.get("to")) for entry in history.entries(mirror, "prod")]
    assert actions == [
        ("deployed", v1, v2),
        ("unpinned", v1, None),
        ("rolled_back", v2, v1),
        ("thawed", None, None),
        ("frozen", None, None),
        ("promoted", v1, v2),
        ("deployed", None, v1),
    ]
    # Plain git reads it, on the remote.
    from tests.gitrepo import git  # pylint: disable=import-outside-toplevel

    lines = git("log", "--format=%s", HISTORY, cwd=remote.path).splitlines()
    assert lines[0] == f"deployed prod {v1[:10]} -> {v2[:10]} by ci" and len(lines) == len(history.entries(mirror))
    assert lines[2] == f"rolled_back prod {v2[:10]} -> {v1[:10]} by a: r"


def test_a_deploy_or_promotion_whose_history_cannot_be_written_is_done_and_warns(released, mirror, remote):
    """The change stands (it is served, the branch moved); only its entry is missing, said as a one-line warning."""
    config, _v1, _v2 = released
    open(os.path.join(remote.path, HISTORY + ".lock"), "w", encoding="utf-8").close()  # held by another writer
    v3 = remote.commit("develop", {"web/init.sls": "# web v3\n"})
    deployed = refresh(config, mirror, "test")
    assert deployed["changed"] is True and served_id(config, "test") == v3
    assert deployed["warning"].startswith("envflow: test changed, but its history could not be written: ")
    done = pipeline.promote(config, mirror, "stage", by="ci")
    assert done.moved and remote.tip("stage") == v3 and served_id(config, "stage") == v3
    assert done.report["warning"].startswith("envflow: stage changed, but its history could not be written: ")
    assert "\n" not in done.report["warning"] + deployed["warning"]
