import datetime
import os
import re

import pytest

from envflow import fleet, pipeline, records
from envflow.config import parse
from envflow.errors import GateBlocked
from envflow.served import ServedDir
from tests.gitrepo import config, git


def deployed_with_gates(remote, mirror, tmp_path, gates, **prod):
    """test -> stage -> prod, prod with ``gates`` (and ``prod``'s other keys); every environment deployed,
    a new commit deployed in stage."""
    raw = config(remote.path, tmp_path / "srv")
    raw["environments"][2].update(gates=gates, **prod)
    cfg = parse(raw)
    new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    remote.set_branch("stage", new)
    mirror.fetch()
    for env in cfg.environments:
        ServedDir(env.path).deploy(mirror.objects, mirror.commit(env.branch))
    return cfg


@pytest.fixture
def gated(remote, mirror, tmp_path):
    return deployed_with_gates(remote, mirror, tmp_path, {"verified": True, "soak": "1h", "approvals": 2})


def later(hours):
    return datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(hours=hours)


def test_every_closed_gate_is_named_with_what_opens_it(gated, mirror):
    promotion = pipeline.plan(gated, mirror, "prod")
    blocked = pipeline.blocking_gates(promotion, mirror)
    short = promotion.new[:10]
    assert blocked[0] == (
        f"verified: {short} was not verified in stage; run salt-run envflow.verify stage jid=<its highstate job> "
        "once it passed there"
    )
    assert re.match(r"^soak: stage has served it for \d+s of the 1h required; promote again in 59m\d+s$", blocked[1])
    assert blocked[2] == "approvals: 0 of 2 for prod (none yet); 2 more people must run salt-run envflow.approve prod"
    with pytest.raises(GateBlocked) as error:
        pipeline.check_gates(promotion, mirror)
    assert str(error.value).startswith(f"envflow: promoting {short} into prod is blocked by verified: ")
    assert str(error.value).endswith("; or bypass the gates with force=True reason='<why>'")
    assert "\n" not in str(error.value)


def test_gates_open_one_by_one(gated, mirror):
    promotion = pipeline.plan(gated, mirror, "prod")
    records.add(mirror, promotion.new, "verified", "stage", {"by": "root", "jid": "20261127000000000000"})
    records.add(mirror, promotion.new, "approved", "prod", {"by": "alice"})
    records.add(mirror, promotion.new, "approved", "prod", {"by": "alice"})  # the same person twice counts once
    blocked = pipeline.blocking_gates(promotion, mirror, now=later(2))
    assert blocked == ["approvals: 1 of 2 for prod (alice); 1 more person must run salt-run envflow.approve prod"]
    records.add(mirror, promotion.new, "approved", "prod", {"by": "bob"})
    assert pipeline.blocking_gates(promotion, mirror, now=later(0.5))[0].startswith("soak: stage has served it for 30m")
    assert pipeline.blocking_gates(promotion, mirror, now=later(1)) == []


def test_the_verified_gate_counts_the_minions_of_every_master_that_reports_them(gated, mirror):
    """salt1's job passed on web1 and web2; salt2 serves stage to web3 as well, whose job went to salt2 alone."""
    minions = {"salt1": ["web1", "web2"], "salt2": ["web2", "web3"], "salt3": ["web9"]}
    for master, listed in minions.items():
        at = fleet.now() - datetime.timedelta(seconds=fleet.SILENT + 60 if master == "salt3" else 0)  # salt3: silent
        assert fleet.report(mirror, gated, master, at=at, minions_of=lambda env, listed=listed: listed) is None
    mirror.fetch()
    promotion = pipeline.plan(gated, mirror, "prod")
    short = promotion.new[:10]
    records.add(
        mirror,
        promotion.new,
        "verified",
        "stage",
        {"by": "root", "jid": "1", "master": "salt1", "minions": ["web1", "web2"]},
    )
    blocked = pipeline.blocking_gates(promotion, mirror, now=later(2))
    assert blocked[0] == (
        f"verified: {short} passed in stage on web1, web2, not yet on web3 of salt2; "
        "run salt-run envflow.verify stage jid=last on salt2 once it passed there"
    )
    records.add(
        mirror, promotion.new, "verified", "stage", {"by": "root", "jid": "2", "master": "salt2", "minions": ["web3"]}
    )
    assert not [line for line in pipeline.blocking_gates(promotion, mirror, now=later(2)) if "verified" in line]


def test_a_verification_without_a_job_is_its_authors_word_for_every_minion(gated, mirror):
    assert fleet.report(mirror, gated, "salt2", minions_of=lambda env: ["web3"]) is None
    mirror.fetch()
    promotion = pipeline.plan(gated, mirror, "prod")
    records.add(mirror, promotion.new, "verified", "stage", {"by": "root", "master": "salt1"})
    assert not [line for line in pipeline.blocking_gates(promotion, mirror, now=later(2)) if "verified" in line]


def test_force_needs_a_reason(gated, mirror):
    promotion = pipeline.plan(gated, mirror, "prod")
    with pytest.raises(GateBlocked) as error:
        pipeline.check_gates(promotion, mirror, force=True)
    assert str(error.value) == (
        "envflow: force=True bypasses the gates of prod only with a reason, which is recorded with the promotion; "
        "add reason='<why>'"
    )
    assert len(pipeline.check_gates(promotion, mirror, force=True, reason="security fix")) == 3


def test_ungated_environments_are_never_blocked(gated, mirror, remote):
    remote.commit("develop", {"db/init.sls": "# db\n"})
    mirror.fetch()
    ServedDir(gated.environment("test").path).deploy(mirror.objects, mirror.commit("develop"))
    assert pipeline.blocking_gates(pipeline.plan(gated, mirror, "stage"), mirror) == []


def test_records_live_on_the_remote_and_read_with_plain_git(gated, mirror, remote, tmp_path):
    commit = remote.tip("stage")
    records.add(mirror, commit, "approved", "prod", {"by": "alice"})
    text = git("notes", "--ref=envflow", "show", commit, cwd=remote.path)
    assert '"approved"' in text and '"alice"' in text
    # Another master, with a mirror of its own, sees it and adds to it.
    from envflow.remote import Mirror

    with Mirror(remote.path, str(tmp_path / "other-master")) as other:
        other.fetch()
        assert [entry["by"] for entry in records.entries(records.read(other, commit), "approved", "prod")] == ["alice"]
        records.add(other, commit, "approved", "prod", {"by": "bob"})
    mirror.fetch()
    assert [entry["by"] for entry in records.entries(records.read(mirror, commit), "approved", "prod")] == [
        "alice",
        "bob",
    ]


def test_a_record_written_meanwhile_by_another_master_is_merged_not_lost(gated, mirror, remote, tmp_path):
    from envflow.remote import Mirror

    commit = remote.tip("stage")
    with Mirror(remote.path, str(tmp_path / "other-master")) as other:
        other.fetch()
        records.add(other, commit, "approved", "prod", {"by": "bob"})
    # This mirror has not fetched since: its compare-and-swap loses, it fetches and merges.
    result = records.add(mirror, commit, "approved", "prod", {"by": "alice"})
    assert sorted(entry["by"] for entry in records.entries(result, "approved", "prod")) == ["alice", "bob"]
    assert os.path.isdir(remote.path)
    text = git("notes", "--ref=envflow", "show", commit, cwd=remote.path)
    assert '"alice"' in text and '"bob"' in text


def test_every_forced_promotion_is_kept_for_the_audit_trail(gated, mirror, remote):
    commit = remote.tip("stage")
    records.add(mirror, commit, "forced", "prod", {"by": "alice", "reason": "first"})
    found = records.add(mirror, commit, "forced", "prod", {"by": "alice", "reason": "second"})
    assert [entry["reason"] for entry in records.entries(found, "forced", "prod")] == ["first", "second"]


def test_a_note_written_by_hand_counts_as_no_record(gated, mirror, remote):
    commit = remote.tip("stage")
    for text in (
        '{"approved": {"prod": ["alice"]}}',
        '["not", "a", "mapping"]',
        '{"approved": {"prod": [{"who": "x"}]}}',
    ):
        git("notes", "--ref=envflow", "add", "-f", "-m", text, commit, cwd=remote.path)
        mirror.fetch()
        assert records.entries(records.read(mirror, commit), "approved", "prod") == []
        promotion = pipeline.plan(gated, mirror, "prod")
        assert pipeline.blocking_gates(promotion, mirror)[-1].startswith("approvals: 0 of 2")
    records.add(mirror, commit, "approved", "prod", {"by": "alice"})
    assert [entry["by"] for entry in records.entries(records.read(mirror, commit), "approved", "prod")] == ["alice"]


def test_the_previewed_gate_opens_only_on_a_passing_preview_of_the_very_commit(remote, mirror, tmp_path):
    preview_path = str(tmp_path / "srv" / "prod_preview")
    cfg = deployed_with_gates(
        remote, mirror, tmp_path, {"previewed": True}, preview_path=preview_path, target="G@env:prod"
    )
    promotion = pipeline.plan(cfg, mirror, "prod")
    short = promotion.new[:10]
    assert pipeline.blocking_gates(promotion, mirror) == [
        f"previewed: {short} was not previewed in prod; run salt-run envflow.preview prod"
    ]
    # A passing preview in another environment, or of another commit, does not count.
    full = {"target": "G@env:prod", "passed": True}
    records.add(mirror, promotion.new, "previewed", "stage", {**full, "by": "alice", "jid": "1"})
    records.add(mirror, remote.tip("master"), "previewed", "prod", {**full, "by": "alice", "jid": "2"})
    # Nor does a passing preview of some of prod's minions only (tgt=).
    records.add(mirror, promotion.new, "previewed", "prod", {**full, "by": "carol", "jid": "3", "target": "web-01"})
    assert pipeline.blocking_gates(promotion, mirror)[0].startswith(f"previewed: {short} was not previewed in prod")
    failed = {
        "by": "alice",
        "jid": "20261202070000000000",
        "target": "G@env:prod",
        "passed": False,
        "outcome": "got no answer from db-01",
    }
    records.add(mirror, promotion.new, "previewed", "prod", failed)
    (blocked,) = pipeline.blocking_gates(promotion, mirror)
    assert re.fullmatch(
        rf"previewed: the last preview of {short} in prod \(job 20261202070000000000, [-\d:T+]+\) got no answer "
        r"from db-01; fix it and run salt-run envflow.preview prod again",
        blocked,
    )
    records.add(mirror, promotion.new, "previewed", "prod", {**full, "by": "bob", "jid": "5"})
    assert pipeline.blocking_gates(promotion, mirror) == []
    # The newest preview decides: a failing one after a passing one closes the gate again.
    records.add(mirror, promotion.new, "previewed", "prod", {**failed, "jid": "4"})
    assert pipeline.blocking_gates(promotion, mirror)[0].startswith(
        f"previewed: the last preview of {short} in prod (job 4"
    )
