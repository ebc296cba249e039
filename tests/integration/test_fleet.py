"""Two masters serving one repository: each records what it serves on the remote, and status shows both.

Master ``one`` is driven by the tests; master ``two`` runs the shipped
schedule.conf (interval set to an hour, so only its round at start acts), as a
master that is down and comes back would. Each has directories of its own.
"""

import json
import pathlib
import subprocess

import pytest
import yaml
from saltfactories.utils import random_string

from tests import gitrepo
from tests.integration.conftest import (
    LOG_FILE_LEVEL,
    MASTER_TIMEOUTS,
    MOTD,
    PIPELINES,
    SALT_RUN,
    fits_unix_sockets,
    fresh_motd,
    motd,
    ok,
    wait_for,
)
from tests.integration.test_push_schedule import _Served


def _master(salt_factories, remote, name, overrides=None):
    master_id = random_string(f"{name}-", uppercase=False)
    root = pathlib.Path(salt_factories.root_dir) / master_id
    envflow = gitrepo.config(remote.path, root / "state-tree")
    file_roots = {env["name"]: [env["path"]] for env in envflow["environments"]}
    return fits_unix_sockets(
        salt_factories.salt_master_daemon(
            master_id,
            defaults={"root_dir": str(root), "file_roots": file_roots},
            overrides={**MASTER_TIMEOUTS, **LOG_FILE_LEVEL, **(overrides or {}), "envflow": envflow},
        )
    ), envflow


@pytest.fixture(scope="module")
def fleet(salt_factories, tmp_path_factory):
    remote = gitrepo.Remote(tmp_path_factory.mktemp("fleet") / "git", files={"top.sls": "{}\n", MOTD: motd("initial")})
    schedule = yaml.safe_load((PIPELINES / "schedule.conf").read_text(encoding="utf-8"))
    schedule["schedule"]["envflow-refresh"]["seconds"] = 3600
    one, one_envflow = _master(salt_factories, remote, "one")
    two, two_envflow = _master(salt_factories, remote, "two", schedule)
    with one.started(), two.started():
        masters = {"one": _Served(one, remote, one_envflow), "two": _Served(two, remote, two_envflow)}
        ok(one.salt_run_cli().run("envflow.refresh"))
        assert wait_for(lambda: all(masters["two"].deployed(env) for env in ("test", "stage", "prod")))
        yield masters


def _status(site):
    return ok(site.master.salt_run_cli().run("envflow.status"))


def test_each_master_records_what_it_serves_and_status_shows_the_fleet(fleet):
    one, two = fleet["one"], fleet["two"]
    commit = one.remote.tip("develop")
    for site in (one, two):
        served = gitrepo.git("show", f"refs/envflow/served/{site.master.id}:served.json", cwd=site.remote.path)
        assert json.loads(served)["environments"]["test"]["commit"] == commit
    found = _status(one)["fleet"]["test"]
    assert set(found) == {one.master.id, two.master.id}
    assert all(entry["commit"] == commit and not entry["behind_others"] for entry in found.values())
    assert found[one.master.id]["this"] is True and found[two.master.id]["this"] is False


def test_a_master_that_was_down_is_shown_behind_refuses_promotions_and_catches_up_when_it_starts(fleet):
    one, two = fleet["one"], fleet["two"]
    two.master.terminate()
    old = one.deployed("test")
    commit = one.remote.commit("develop", {MOTD: fresh_motd("fleet")}, "while two is down")
    ok(one.master.salt_run_cli().run("envflow.refresh", "test"))
    found = _status(one)["fleet"]["test"]
    assert found[one.master.id]["commit"] == commit and found[two.master.id]["commit"] == old
    assert found[two.master.id]["behind_others"] is True and found[two.master.id]["behind_branch"] is True
    assert found[one.master.id]["behind_others"] is False
    printed = subprocess.run(
        [SALT_RUN, "-c", str(one.master.config_dir), "--log-level=quiet", "envflow.status"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert f"{two.master.id}" in printed and "behind the others" in printed, printed
    refused = one.master.salt_run_cli().run("envflow.promote", "stage")
    assert refused.returncode == 1
    assert refused.data["error"] == (
        f"envflow: the masters disagree on what test serves: {one.master.id} serves {commit[:10]}, "
        f"{two.master.id} serves {old[:10]}; promote once they agree (salt-run envflow.status shows them), "
        "or name the commit with rev="
    )
    assert one.remote.tip("stage") != commit
    two.master.start()
    assert wait_for(lambda: two.deployed("test") == commit), "two did not catch up when it started"
    assert wait_for(lambda: not _status(one)["fleet"]["test"][two.master.id]["behind_others"])
    assert ok(one.master.salt_run_cli().run("envflow.promote", "stage"))["new"] == commit
