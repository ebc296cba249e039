"""The loader folders served from file_roots and synced, the way Salt users install custom modules.

This module has its own master and minion: the sync writes into their
extension_modules, which the entry-point test of test_pipeline.py checks is
empty.
"""

import pathlib

import pytest

from tests.integration.conftest import MOTD, REPO_ROOT, fresh_motd, ok

SYNCED = {"modules": "_modules", "states": "_states", "runners": "_runners", "output": "_output"}


@pytest.fixture(scope="module")
def site_options():
    # Copies of _modules, _states, _runners and _output in base; no top file matches the
    # minion, so a plain saltutil.sync_all on the minion syncs from base.
    return {"loader_folders": True, "minion_in_top": False}


def _same_file(synced, kind):
    source = REPO_ROOT / SYNCED[kind] / "envflow.py"
    assert synced.is_file(), f"{synced} was not synced"
    assert synced.read_bytes() == source.read_bytes(), f"{synced} differs from {source}"


# 7b
def test_loader_folders_synced_from_file_roots_work(site):
    """``saltutil.sync_all`` on the minion and the master report envflow, write it to extension_modules, and it runs."""
    minion_sync = ok(site.call("saltutil.sync_all"))
    assert "modules.envflow" in minion_sync["modules"], minion_sync
    assert "states.envflow" in minion_sync["states"], minion_sync
    master_sync = ok(site.run("saltutil.sync_all"))
    assert "runners.envflow" in master_sync["runners"], master_sync
    assert "modules.envflow" in master_sync["modules"], master_sync
    assert "states.envflow" in master_sync["states"], master_sync
    assert "output.envflow" in master_sync["output"], master_sync

    minion_ext = pathlib.Path(site.minion.config["extension_modules"])
    master_ext = pathlib.Path(site.master.config["extension_modules"])
    for kind in ("modules", "states"):
        _same_file(minion_ext / kind / "envflow.py", kind)
    for kind in ("modules", "states", "runners", "output"):
        _same_file(master_ext / kind / "envflow.py", kind)

    # The synced functions work: the runner, the execution module and the state.
    content = fresh_motd("synced")
    tip = site.remote.commit("develop", {MOTD: content}, "motd after the sync")
    refreshed = ok(site.run("envflow.refresh", "test"))
    assert refreshed["environments"]["test"]["new"] == tip
    assert ok(site.call("envflow.deployed", "test"))["id"] == tip
    assert site.minion_reads(MOTD, saltenv="test") == content
    status = ok(site.run("envflow.status"))
    assert status["environments"]["test"]["in_sync"] is True, status
    (state,) = ok(site.call("state.apply", "envflow_stage", "saltenv=base")).values()
    assert state["result"] is True and state["changes"] == {}, state
