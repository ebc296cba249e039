"""``pipeline.status``: what each environment serves and since when, the branch ahead of it, holds and gates."""

import datetime
import os

import pytest

from envflow import history, pipeline
from envflow.config import parse
from envflow.served import ServedDir
from tests.gitrepo import config


def deploy(mirror, env, rev=None):
    mirror.fetch()
    return ServedDir(env.path).deploy(mirror.objects, mirror.commit(rev or env.branch))


@pytest.fixture
def gated_pipeline(remote, mirror, tmp_path):
    """test -> stage -> prod with a soak gate on prod; every environment serving its branch."""
    raw = config(remote.path, tmp_path / "srv")
    raw["environments"][2]["gates"] = {"soak": "1h"}
    cfg = parse(raw)
    for env in cfg.environments:
        deploy(mirror, env)
    return cfg


def hold(mirror, env, kind, **held):
    """Set ``env``'s pin or freeze in the history, as rollback or freeze would."""

    def change(holds):
        holds.setdefault(env, {})[kind] = held
        return holds

    action = {"pin": "pinned", "freeze": "frozen"}[kind]
    return history.record(mirror, {"action": action, "env": env, "by": held["by"], "reason": held["reason"]}, change)


def test_status_says_what_is_served_since_when_and_how_far_the_branch_is_ahead(gated_pipeline, mirror, remote):
    config = gated_pipeline
    first = remote.tip("develop")
    remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    tip = remote.commit("develop", {"web/init.sls": "# web v3\n"}, message="web v3")
    deploy(mirror, config.environment("test"), rev=first)  # served behind its branch, as after a rollback
    report = pipeline.status(config, mirror)
    test = report["test"]
    since = ServedDir(config.environment("test").path).deployed()["deployed_at"]
    assert test["served"] == {"id": first, "summary": "initial states", "since": since}
    assert (test["deployed"], test["remote"], test["in_sync"], test["ahead"]) == (first, tip, False, 2)
    assert (test["pin"], test["freeze"], test["gates"]) == (None, None, None)  # first environment: no promotion
    assert report["stage"]["ahead"] == 0 and report["stage"]["in_sync"] is True
    assert report["stage"]["gates"] == []  # nothing to promote: no gate to pass


def test_status_shows_pins_and_freezes_from_the_history(gated_pipeline, mirror):
    pin = {"commit": "a" * 40, "by": "alice", "at": "2026-01-05T14:03:00+00:00", "reason": "bad release"}
    hold(mirror, "prod", "pin", **pin)
    until = (datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(hours=2)).isoformat()
    hold(mirror, "stage", "freeze", by="bob", reason="launch", until=until)
    hold(mirror, "test", "freeze", by="bob", reason="over", until="2026-01-01T00:00:00+00:00")
    report = pipeline.status(gated_pipeline, mirror)
    assert report["prod"]["pin"] == pin and report["prod"]["freeze"] is None
    assert report["stage"]["freeze"]["reason"] == "launch" and report["stage"]["pin"] is None
    assert report["test"]["freeze"] is None  # ended by itself


def test_status_lists_the_closed_gates_of_the_next_promotion(gated_pipeline, mirror, remote):
    config = gated_pipeline
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    deploy(mirror, config.environment("stage"))
    gates = pipeline.status(config, mirror, "prod")["prod"]["gates"]
    assert len(gates) == 1 and gates[0].startswith("soak: stage has served it for ")


def test_status_gives_no_gates_when_the_promotion_is_refused(gated_pipeline, mirror, remote):
    remote.commit("master", {"web/init.sls": "# hotfix\n"})
    mirror.fetch()
    assert pipeline.status(gated_pipeline, mirror, "prod")["prod"]["gates"] is None


def test_an_unreadable_directory_leaves_the_new_entries_empty_but_keeps_its_holds(gated_pipeline, mirror):
    stage = gated_pipeline.environment("stage").path
    os.unlink(os.path.join(os.path.dirname(stage), ".stage.envflow", "a.git", "envflow.json"))
    hold(mirror, "stage", "pin", commit="a" * 40, by="alice", reason="kept")
    entry = pipeline.status(gated_pipeline, mirror, "stage")["stage"]
    assert entry["problem"].startswith(f"envflow: {stage} serves a tree envflow has no record of")
    assert (entry["served"], entry["ahead"], entry["gates"], entry["freeze"]) == (None, None, None, None)
    assert entry["pin"]["reason"] == "kept"
