"""The shipped release orchestration (docs/pipelines/orch/release.sls) on a master with a stage and a prod minion.

prod has the ``verified`` gate: the pipeline itself opens it, by verifying stage with its highstate job.
"""

import pytest

from tests import gitrepo
from tests.integration.conftest import MOTD, fresh_motd, ok, release_site


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory):
    with release_site(salt_factories, tmp_path_factory, gates={"verified": True}) as started:
        yield started


def _release(site):
    return site.run("state.orchestrate", "orch.release", "saltenv=base")


def test_each_environment_lists_its_minions(site):
    for env in ("stage", "prod"):
        listed = ok(site.run("envflow.minions", env))
        assert listed == {"env": env, "target": f"G@env:{env}", "minions": [site.minions[env].id]}


def test_the_release_pipeline_brings_the_tested_commit_to_prod(site):
    content = fresh_motd("release")
    tested = site.remote.commit("develop", {MOTD: content}, "motd to release")
    ok(site.run("envflow.refresh", "test"))
    ret = _release(site)
    assert ret.returncode == 0, ret
    assert site.remote.tip("stage") == tested == site.remote.tip("master")
    assert site.deployed("prod") == tested
    assert site.written("stage") == content  # the pipeline's highstate of stage's minions
    prod = site.minions["prod"]
    assert ok(site.salt_cli.run("cp.get_file_str", f"salt://{MOTD}", "saltenv=prod", minion_tgt=prod.id)) == content
    note = gitrepo.git("notes", "--ref=envflow", "show", tested, cwd=site.remote.path)
    assert '"verified"' in note and '"stage"' in note


def test_a_failing_state_on_stage_stops_the_release(site):
    prod_before = site.remote.tip("master"), site.deployed("prod"), site.served_file("prod", MOTD)
    broken = {
        "web/init.sls": "envflow-motd:\n  file.managed:\n    - name: /nonexistent-dir-envflow/x\n    - source: salt://web/missing.txt\n"
    }
    bad = site.remote.commit("develop", broken, "a state that fails on the minions")
    ok(site.run("envflow.refresh", "test"))
    ret = _release(site)
    assert ret.returncode != 0, ret
    assert site.remote.tip("stage") == bad  # stage was promoted, then its highstate failed
    assert (site.remote.tip("master"), site.deployed("prod"), site.served_file("prod", MOTD)) == prod_before
    output = ret.stdout + ret.stderr
    assert "highstate_stage" in output and "envflow-motd" in output, output
    assert "promote_prod" in output
    # The failed job cannot verify stage.
    refused = site.run("envflow.verify", "stage", "jid=last")
    assert refused.returncode != 0
    assert "state envflow-motd failed" in refused.data["error"], refused.data
    # Repair develop for whatever runs next.
    site.remote.commit(
        "develop", {"web/init.sls": gitrepo.git("show", f"{prod_before[0]}:web/init.sls", cwd=site.remote.path) + "\n"}
    )
