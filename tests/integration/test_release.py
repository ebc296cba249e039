"""The shipped release orchestration (docs/pipelines/orch/release.sls) on a master with a stage and a prod minion.

prod has the ``verified`` and ``previewed`` gates: the pipeline itself opens them, by verifying stage with its
highstate job and by previewing prod (it has a preview directory) before promoting it.
"""

import json

import pytest

from tests import gitrepo
from tests.integration.conftest import MOTD, fresh_motd, ok, release_site


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory):
    gates = {"verified": True, "previewed": True}
    with release_site(salt_factories, tmp_path_factory, gates=gates, preview=True) as started:
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
    note = json.loads(gitrepo.git("notes", "--ref=envflow", "show", tested, cwd=site.remote.path))
    assert [entry["by"] for entry in note["verified"]["stage"]] == ["root"]
    # The pipeline previewed prod before promoting it: prod's minion answered, and nothing failed.
    (previewed,) = note["previewed"]["prod"]
    assert previewed["passed"] is True and previewed["no_answer"] == []
    assert previewed["minions"] == {prod.id: {"changes": 1, "failed": 0}}
    assert "preview_prod" in ret.stdout, ret.stdout


def test_a_state_failing_on_prod_in_the_preview_stops_the_release(site):
    prod_before = site.remote.tip("master"), site.deployed("prod"), site.served_file("prod", MOTD)
    prod_written = site.written("prod")
    # Fine on stage's minion, failing on prod's: its source exists only for stage.
    web = (
        f"envflow-motd:\n  file.managed:\n    - name: {site.out_dir}/{{{{ grains['id'] }}}}.txt\n"
        "    - source: salt://web/{{ 'motd.txt' if grains['env'] == 'stage' else 'missing.txt' }}\n"
        "    - makedirs: True\n"
    )
    content = fresh_motd("prod-only failure")
    candidate = site.remote.commit("develop", {"web/init.sls": web, MOTD: content}, "fails on prod only")
    ok(site.run("envflow.refresh", "test"))
    ret = _release(site)
    assert ret.returncode != 0, ret
    # stage was promoted, applied and verified; the preview of prod failed; prod was not promoted.
    assert site.remote.tip("stage") == candidate and site.written("stage") == content
    assert (site.remote.tip("master"), site.deployed("prod"), site.served_file("prod", MOTD)) == prod_before
    assert site.written("prod") == prod_written
    output = ret.stdout + ret.stderr
    assert "preview_prod" in output and "missing.txt" in output, output
    note = json.loads(gitrepo.git("notes", "--ref=envflow", "show", candidate, cwd=site.remote.path))
    (previewed,) = note["previewed"]["prod"]
    assert previewed["passed"] is False
    assert previewed["minions"] == {site.minions["prod"].id: {"changes": 0, "failed": 1}}
    # Repair develop for whatever runs next.
    site.remote.commit(
        "develop", {"web/init.sls": gitrepo.git("show", f"{prod_before[0]}:web/init.sls", cwd=site.remote.path) + "\n"}
    )


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
