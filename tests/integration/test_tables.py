"""The real ``salt-run`` prints ``envflow.status``, ``history`` and ``diff`` as tables; ``--out=json``, their dicts.

salt-factories' CLI objects always add ``--out=json``, so the default output
is read from the virtualenv's own ``salt-run`` script, run against a master
started by salt-factories.
"""

import json
import pathlib
import re

import pytest
from saltfactories.utils import random_string

from envflow import history
from envflow.remote import Mirror
from tests import gitrepo
from tests.integration.conftest import CLI_TIMEOUT, MASTER_TIMEOUTS, MASTER_WORKERS, fits_unix_sockets, ok, salt_run


class Master:
    """A running master serving envflow's environments, and the real ``salt-run`` against it."""

    def __init__(self, factory, remote):
        self.factory, self.remote = factory, remote
        self.cli = factory.salt_run_cli(timeout=CLI_TIMEOUT)

    def salt_run(self, *args):
        """``salt-run <args>`` as a user types it: no ``--out`` unless given. Returns the completed process."""
        done = salt_run(self.factory.config_dir, *args)
        assert done.returncode == 0, f"salt-run {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done


@pytest.fixture(scope="module")
def master(salt_factories, tmp_path_factory):
    master_id = random_string("m-", uppercase=False)
    work = tmp_path_factory.mktemp("tables")
    remote = gitrepo.Remote(work / "git")
    root = pathlib.Path(salt_factories.root_dir) / master_id
    envflow = gitrepo.config(remote.path, root / "state-tree")
    factory = fits_unix_sockets(
        salt_factories.salt_master_daemon(
            master_id,
            defaults={"root_dir": str(root)},
            overrides={
                **MASTER_TIMEOUTS,
                **MASTER_WORKERS,
                "envflow": envflow,
                "file_roots": {env["name"]: [env["path"]] for env in envflow["environments"]},
            },
        )
    )
    with factory.started():
        site = Master(factory, remote)
        ok(site.cli.run("envflow.refresh"))
        yield site


def test_status_prints_one_row_per_environment_and_json_the_dict(master):
    remote = master.remote
    served = remote.tip("develop")
    rows = master.salt_run("envflow.status").stdout.splitlines()
    assert re.split(r"\s{2,}", rows[0]) == [
        "ENV",
        "BRANCH",
        "SERVES",
        "SINCE",
        "IN SYNC",
        "WAITING",
        "DRIFT",
        "HOLDS",
        "GATES",
    ]
    expected = (("test", "develop", "-", "-"), ("stage", "stage", "0", "none"), ("prod", "master", "0", "none"))
    for row, (env, branch, waiting, gates) in zip(rows[1:4], expected, strict=True):
        cells = re.split(r"\s{2,}", row)
        assert cells[:3] == [env, branch, f"{served[:10]} initial states"], row
        assert re.fullmatch(r"\d+[smhd](\d+[smh])?", cells[3]), row
        assert cells[4:] == ["yes", waiting, "0", "-", gates], row
    structured = json.loads(master.salt_run("envflow.status", "--out=json").stdout)
    assert structured["outputter"] == "envflow"
    assert sorted(structured["environments"]) == ["prod", "stage", "test"]
    assert structured["environments"]["prod"]["served"]["id"] == served
    assert rows[4:] == [f"warning: {line}" for line in structured["warnings"]]


def test_history_prints_one_row_per_entry_and_json_the_entries(master, tmp_path):
    remote = master.remote
    with Mirror(remote.path, str(tmp_path / "cache")) as mirror:
        mirror.fetch()
        promoted = history.record(
            mirror,
            {
                "action": "promoted",
                "env": "stage",
                "by": "sudo_alice",
                "from": remote.tip("develop"),
                "to": remote.tip("stage"),
                "at": "2026-01-05T14:03:09+00:00",
                "master": "m1",
            },
        )
        frozen = history.record(
            mirror,
            {
                "action": "frozen",
                "env": "prod",
                "by": "bob",
                "reason": "launch week",
                "at": "2026-01-05T16:00:00+00:00",
                "master": "m2",
            },
        )
    tip = remote.tip("stage")[:10]
    rows = [re.split(r"\s{2,}", line) for line in master.salt_run("envflow.history").stdout.splitlines()]
    # Newest first: the two entries just recorded, then the first deploys the module's refresh recorded.
    assert rows[:3] == [
        ["WHEN (UTC)", "ACTION", "ENV", "FROM -> TO", "BY", "REASON", "MASTER"],
        ["2026-01-05 16:00", "frozen", "prod", "-", "bob", "launch week", "m2"],
        ["2026-01-05 14:03", "promoted", "stage", f"{tip} -> {tip}", "sudo_alice", "-", "m1"],
    ]
    assert [row[1:4] for row in rows[3:]] == [["deployed", env, f"- -> {tip}"] for env in ("prod", "stage", "test")]
    structured = json.loads(master.salt_run("envflow.history", "--out=json").stdout)
    assert structured["outputter"] == "envflow"
    assert structured["history"][:2] == [frozen, promoted]
    assert [entry["action"] for entry in structured["history"][2:]] == ["deployed"] * 3
    only_prod = [
        re.split(r"\s{2,}", line)[1:3]
        for line in master.salt_run("envflow.history", "prod", "limit=1").stdout.splitlines()
    ]
    assert only_prod == [["ACTION", "ENV"], ["frozen", "prod"]]


def test_diff_prints_the_commits_and_files(master):
    remote = master.remote
    printed = master.salt_run("envflow.diff", "test", "prod").stdout.splitlines()
    assert printed[:2] == [
        f"test serves {remote.tip('develop')[:10]}, prod serves {remote.tip('master')[:10]}",
        "no difference",
    ]


def test_a_failure_prints_as_before_and_exits_non_zero(master):
    done = salt_run(master.factory.config_dir, "envflow.history", "limit=0")
    assert done.returncode == 1
    assert "envflow: limit must be a positive whole number, not 0; for example limit=50" in done.stdout
    assert "retcode:" in done.stdout  # Salt's nested output, as every failure prints
