"""The shipped reactor (docs/pipelines/reactor) applies an environment's states after a deploy, and verifies it."""

import pytest

from tests import gitrepo
from tests.integration.conftest import MOTD, fresh_motd, ok, release_site, wait_for

# The reactor applies and verifies test, then stage, one orchestration at a time: on a busy
# machine that takes minutes. The waits end as soon as what they wait for is done.
REACTION_TIMEOUT = 420


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory):
    with release_site(salt_factories, tmp_path_factory, reactor=True) as started:
        yield started


def test_a_promotion_gets_stage_highstated_and_verified_without_anyone_running_it(site):
    content = fresh_motd("reacted")
    tested = site.remote.commit("develop", {MOTD: content}, "motd for the reactor")
    ok(site.run("envflow.refresh", "test"))
    assert site.written("stage") != content
    ok(site.run("envflow.promote", "stage"))
    assert wait_for(lambda: site.written("stage") == content, REACTION_TIMEOUT), (
        f"stage minion wrote {site.written('stage')!r}"
    )

    def verified():
        try:
            note = gitrepo.git("notes", "--ref=envflow", "show", tested, cwd=site.remote.path)
        except Exception:  # pylint: disable=broad-except
            return False
        return '"verified"' in note and '"stage"' in note

    assert wait_for(verified, REACTION_TIMEOUT), "the reactor's orchestration did not verify stage"
