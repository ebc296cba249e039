"""Gates on prod (verified, soak, approvals) with a real master, a stage minion and a prod minion."""

import time

import pytest

from tests.integration.conftest import MOTD, fresh_motd, ok, release_site, wait_for

# Longer than the steps between promoting stage and the last blocked promotion take on a busy
# machine (about 7 seconds on an idle 2-core machine, over 30 seconds with CPU hogs on both cores),
# so that promotion still meets a closed soak; the test asserts it did. The test waits the whole soak.
SOAK = 60
SOAK_SHOWN = "1m"  # as envflow's messages spell it


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory):
    gates = {"verified": True, "soak": f"{SOAK}s", "approvals": 2}
    with release_site(salt_factories, tmp_path_factory, gates=gates) as started:
        yield started


def _blocked(ret):
    assert ret.returncode != 0, ret
    error = ret.data["error"]
    assert "\n" not in error
    return error


def test_each_gate_blocks_prod_until_it_is_met(site):
    tested = site.remote.commit("develop", {MOTD: fresh_motd("gated")}, "motd through the gates")
    ok(site.run("envflow.refresh", "test"))
    ok(site.run("envflow.promote", "stage"))
    promoted_at = time.monotonic()
    before = site.remote.refs(), site.deployed("prod")

    error = _blocked(site.run("envflow.promote", "prod"))
    assert error.startswith(f"envflow: promoting {tested[:10]} into prod is blocked by verified: ")
    assert "; soak: stage has served it for " in error and f"of the {SOAK_SHOWN} required" in error
    assert "; approvals: 0 of 2 for prod (none yet)" in error
    assert (site.remote.refs(), site.deployed("prod")) == before

    # verified: a highstate of stage's minions, then envflow.verify with that job.
    stage = site.minions["stage"]
    ok(site.salt_cli.run("state.apply", minion_tgt=stage.id))
    verified = ok(site.run("envflow.verify", "stage", "jid=last"))
    assert verified["commit"] == tested and verified["jid"]
    # approvals: two distinct people (sudo_alice and sudo_bob, as Salt names root under sudo).
    for person in ("alice", "bob"):
        approved = ok(site.run("envflow.approve", "prod", env={"SUDO_USER": person}))
    assert approved["approvals"] == ["sudo_alice", "sudo_bob"]

    error = _blocked(site.run("envflow.promote", "prod"))
    assert "verified:" not in error and "approvals:" not in error
    assert f"of the {SOAK_SHOWN} required" in error
    assert time.monotonic() - promoted_at < SOAK  # soak still closed: this check is meaningful
    assert (site.remote.refs()["refs/heads/master"], site.deployed("prod")) == (
        before[0]["refs/heads/master"],
        before[1],
    )

    # soak: stage began serving the commit before promoted_at; from SOAK seconds after it, the gate opens.
    time.sleep(max(0.0, promoted_at + SOAK - time.monotonic()))
    assert wait_for(lambda: not ok(site.run("envflow.promote", "prod", "dry_run=True"))["gates"], 60, interval=1)
    done = ok(site.run("envflow.promote", "prod"))
    assert done["new"] == tested
    assert site.deployed("prod") == tested
