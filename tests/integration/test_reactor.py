"""The shipped reactor (docs/pipelines/reactor) applies an environment's states after a deploy, and verifies it."""

import time

import pytest

from tests import gitrepo
from tests.integration.conftest import MOTD, fresh_motd, ok, release_site


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory):
    with release_site(salt_factories, tmp_path_factory, reactor=True) as started:
        yield started


def _wait_for(check, timeout=150):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(1)
    return False


def test_a_promotion_gets_stage_highstated_and_verified_without_anyone_running_it(site):
    content = fresh_motd("reacted")
    tested = site.remote.commit("develop", {MOTD: content}, "motd for the reactor")
    ok(site.run("envflow.refresh", "test"))
    assert site.written("stage") != content
    ok(site.run("envflow.promote", "stage"))
    assert _wait_for(lambda: site.written("stage") == content), f"stage minion wrote {site.written('stage')!r}"

    def verified():
        try:
            note = gitrepo.git("notes", "--ref=envflow", "show", tested, cwd=site.remote.path)
        except Exception:  # pylint: disable=broad-except
            return False
        return '"verified"' in note and '"stage"' in note

    assert _wait_for(verified), "the reactor's orchestration did not verify stage"
