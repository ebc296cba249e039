"""The polling fallback: the master's scheduler runs envflow.refresh, as the shipped schedule.conf sets it up.

A master of its own (the schedule refreshes in the background, which the
push hook tests must not see): a push with no hook is served by the next
scheduled round, and a master that was down serves what was pushed meanwhile
as soon as it starts, with nobody running anything.
"""

import pathlib

import pytest
import yaml
from saltfactories.utils import random_string

from tests import gitrepo
from tests.integration.conftest import (
    LOG_FILE_LEVEL,
    MASTER_TIMEOUTS,
    MASTER_WORKERS,
    MOTD,
    PIPELINES,
    Site,
    fits_unix_sockets,
    fresh_motd,
    motd,
    wait_for,
)

# The shipped interval is 60 seconds; the test polls every 2, and waits for a condition, never a time.
INTERVAL = 2


def _schedule(seconds):
    shipped = yaml.safe_load((PIPELINES / "schedule.conf").read_text(encoding="utf-8"))
    assert shipped["schedule"]["envflow-refresh"]["function"] == "envflow.refresh"
    assert shipped["schedule"]["envflow-refresh"]["run_on_start"] is True
    shipped["schedule"]["envflow-refresh"]["seconds"] = seconds
    return shipped


class _Served:
    """The master, the repository and what each environment's directory serves (no minion needed here)."""

    def __init__(self, master, remote, envflow):
        self.master, self.remote, self.envflow = master, remote, envflow
        self.paths = {env["name"]: env["path"] for env in envflow["environments"]}

    deployed = Site.deployed
    served_file = Site.served_file


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory):
    master_id = random_string("m-", uppercase=False)
    work = tmp_path_factory.mktemp("schedule")
    remote = gitrepo.Remote(work / "git", files={"top.sls": "test: {}\n", MOTD: motd("initial")})
    master_root = pathlib.Path(salt_factories.root_dir) / master_id
    envflow = gitrepo.config(remote.path, master_root / "state-tree")
    file_roots = {env["name"]: [env["path"]] for env in envflow["environments"]}
    master = fits_unix_sockets(
        salt_factories.salt_master_daemon(
            master_id,
            defaults={"root_dir": str(master_root), "file_roots": file_roots},
            overrides={
                **MASTER_TIMEOUTS,
                **MASTER_WORKERS,
                **LOG_FILE_LEVEL,
                **_schedule(INTERVAL),
                "envflow": envflow,
            },
        )
    )
    with master.started():
        started = _Served(master, remote, envflow)
        # The first round (run_on_start) deploys every environment.
        assert wait_for(lambda: all(started.deployed(env) for env in ("test", "stage", "prod")))
        yield started


def test_a_push_without_a_hook_is_served_by_the_next_scheduled_refresh(site):
    content = fresh_motd("polled")
    commit = site.remote.commit("develop", {MOTD: content}, "no hook")
    stage = site.deployed("stage")
    assert wait_for(lambda: site.deployed("test") == commit), "the schedule did not serve the push"
    assert site.served_file("test", MOTD) == content
    assert site.deployed("stage") == stage


def test_a_master_that_was_down_serves_what_was_pushed_as_soon_as_it_starts(site):
    """With the interval set to an hour, only the round at start (run_on_start) can serve the push."""
    site.master.terminate()
    written = yaml.safe_load(pathlib.Path(site.master.config_file).read_text(encoding="utf-8"))
    written.update(_schedule(3600))
    pathlib.Path(site.master.config_file).write_text(yaml.safe_dump(written), encoding="utf-8")
    commit = site.remote.commit("stage", {MOTD: fresh_motd("while-down")}, "pushed while the master was down")
    assert site.deployed("stage") != commit
    site.master.start()
    assert wait_for(lambda: site.deployed("stage") == commit), "the master did not catch up when it started"
