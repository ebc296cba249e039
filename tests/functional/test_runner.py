"""The envflow runner, loaded by Salt's runner loader with master options (no daemon running)."""

import json
import os
import subprocess
import sys

from tests.functional.conftest import env_path, served_file
from tests.gitrepo import tree_files


def everything(block):
    return {env["name"]: tree_files(env["path"]) for env in block["environments"]}


def test_refresh_deploys_each_branch_tip(runners, envflow_block, remote):
    result = runners["envflow.refresh"]()
    assert set(result["environments"]) == {"test", "stage", "prod"}
    for name, branch in (("test", "develop"), ("stage", "stage"), ("prod", "master")):
        assert result["environments"][name]["new"] == remote.tip(branch)
        assert result["environments"][name]["changed"] is True
    assert "retcode" not in result and "retcode" not in runners.context
    assert runners["envflow.refresh"]("test")["environments"]["test"]["changed"] is False


def test_promote_moves_the_tested_commit_and_deploys_it(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    old = remote.tip("stage")
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    runners["envflow.refresh"]("test")
    remote.commit("develop", {"web/init.sls": "# web v3, not tested\n"})
    result = runners["envflow.promote"]("stage")
    assert result == {
        "env": "stage",
        "branch": "stage",
        "from": "test",
        "old": old,
        "new": tested,
        "commits": [f"{tested[:10]} web v2"],
        "files": ["M web/init.sls"],
        "deployed": {
            "old": old,
            "new": tested,
            "changed": True,
            "moved_aside": None,
            "refused_links": [],
            "refreshed": ["stage"],
            "pillar_refreshed": [],
            "discarded": None,
        },
    }
    assert remote.tip("stage") == tested
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v2\n"
    assert "retcode" not in runners.context


def test_dry_run_reports_and_changes_nothing(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    tested = remote.commit("develop", {"db/init.sls": "# db\n"}, message="db")
    runners["envflow.refresh"]("test")
    before = remote.refs(), everything(envflow_block)
    result = runners["envflow.promote"]("stage", dry_run=True)
    assert result["dry_run"] is True
    assert result["new"] == tested
    assert result["commits"] == [f"{tested[:10]} db"]
    assert result["files"] == ["A db/init.sls"]
    assert (remote.refs(), everything(envflow_block)) == before


def test_refusals_fail_the_runner_and_change_nothing(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    hotfix = remote.commit("master", {"hotfix.sls": "# hotfix\n"}, message="hotfix")
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    runners["envflow.refresh"]("test")
    runners["envflow.promote"]("stage")
    before = remote.refs(), everything(envflow_block)
    result = runners["envflow.promote"]("prod")
    assert result["retcode"] == 1
    assert result["error"].startswith("envflow: master has 1 commit(s) that ")
    assert f"{hotfix[:10]} 'hotfix'" in result["error"]
    assert "\n" not in result["error"]
    assert "data" not in result and "Error" not in result
    assert runners.context["retcode"] == 1
    assert (remote.refs(), everything(envflow_block)) == before


def test_promoting_the_first_environment_is_refused(runners, remote):
    result = runners["envflow.promote"]("test")
    assert result == {
        "retcode": 1,
        "error": "envflow: test is the first environment of the pipeline, so nothing is promoted into it; "
        "use envflow.refresh test to deploy the tip of develop",
    }


def test_unknown_environment(runners, remote):
    for call in (
        lambda: runners["envflow.promote"]("qa"),
        lambda: runners["envflow.status"]("qa"),
        lambda: runners["envflow.refresh"]("qa"),
    ):
        assert call() == {"retcode": 1, "error": "envflow: no environment named 'qa'; configured: test, stage, prod"}


def test_status_reports_every_environment(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    runners["envflow.refresh"]("test")
    with open(os.path.join(env_path(envflow_block, "prod"), "top.sls"), "a", encoding="utf-8") as handle:
        handle.write("# edit\n")
    report = runners["envflow.status"]()["environments"]
    assert report["test"]["in_sync"] is True
    assert report["stage"]["waiting"] == 1 and report["stage"]["in_sync"] is True
    assert report["prod"]["drift"] == 1


def _plant(cachedir, saltenv, paths):
    """The roots caches of ``saltenv`` as Salt's file server writes them: each path's hash, and the file list."""
    planted = {}
    for path in paths:
        planted[path] = os.path.join(cachedir, "roots", "hash", saltenv, f"{path}.hash.sha256")
        os.makedirs(os.path.dirname(planted[path]), exist_ok=True)
        with open(planted[path], "w", encoding="utf-8") as handle:
            handle.write("0" * 64 + ":1.0")
    listing = os.path.join(cachedir, "file_lists", "roots", f"{saltenv}.p")
    os.makedirs(os.path.dirname(listing), exist_ok=True)
    with open(listing, "wb") as handle:
        handle.write(b"\x80")
    return planted, listing


def test_a_deploy_forgets_what_it_changed_in_the_masters_roots_caches_of_that_saltenv(
    runners, master_base_opts, remote
):
    runners["envflow.refresh"]()
    cachedir = master_base_opts["cachedir"]
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    stage, stage_list = _plant(cachedir, "stage", ["web/init.sls", "top.sls"])
    prod, prod_list = _plant(cachedir, "prod", ["web/init.sls"])
    runners["envflow.refresh"]("stage")
    # A modified file: its hash is forgotten, the others' and the file list are kept.
    assert not os.path.exists(stage["web/init.sls"])
    assert os.path.exists(stage["top.sls"]) and os.path.exists(stage_list)
    assert os.path.exists(prod["web/init.sls"]) and os.path.exists(prod_list)
    # A file added: the file list goes too.
    remote.commit("stage", {"web/extra.sls": "# extra\n"})
    runners["envflow.refresh"]("stage")
    assert not os.path.exists(stage_list) and os.path.exists(stage["top.sls"])
    assert os.path.exists(prod_list)


def test_promotion_into_an_edited_directory_is_refused_before_the_branch_moves(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    runners["envflow.refresh"]("test")
    stage = env_path(envflow_block, "stage")
    with open(os.path.join(stage, "top.sls"), "a", encoding="utf-8") as handle:
        handle.write("# edited on the master\n")
    before = remote.refs(), everything(envflow_block)
    result = runners["envflow.promote"]("stage")
    assert result == {
        "retcode": 1,
        "error": f"envflow: {stage} was edited by hand (modified: top.sls); commit those changes to the "
        "repository, or promote with force=True to discard them",
    }
    assert (remote.refs(), everything(envflow_block)) == before
    forced = runners["envflow.promote"]("stage", force=True)
    assert forced["new"] == tested and forced["deployed"]["changed"] is True
    assert forced["deployed"]["discarded"] == {"added": [], "modified": ["top.sls"], "deleted": []}
    assert served_file(envflow_block, "stage", "top.sls") == "base:\n  '*':\n    - web\n"


def test_refresh_reports_drift_and_force_discards_it(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    prod = env_path(envflow_block, "prod")
    os.unlink(os.path.join(prod, "top.sls"))
    result = runners["envflow.refresh"]("prod")
    assert result["retcode"] == 1
    assert result["error"] == (
        f"prod: envflow: {prod} was edited by hand (deleted: top.sls); commit those changes to the repository, "
        "or deploy with force=True to discard them"
    )
    assert not os.path.exists(os.path.join(prod, "top.sls"))
    repaired = runners["envflow.refresh"]("prod", force=True)
    assert repaired["environments"]["prod"]["changed"] is True
    assert os.path.exists(os.path.join(prod, "top.sls"))


def test_the_roots_update_runs_only_for_fileserver_events(master_base_opts, envflow_block, tmp_path):
    from envflow import saltbus  # pylint: disable=import-outside-toplevel

    stage = env_path(envflow_block, "stage")
    for events in (False, True):
        opts = dict(master_base_opts, cachedir=str(tmp_path / f"cache-{events}"), fileserver_events=events)
        assert saltbus.refresh_fileserver(opts, stage) == ["stage"]
        assert os.path.exists(tmp_path / f"cache-{events}" / "roots" / "mtime_map") is events
    assert saltbus.refresh_fileserver(dict(master_base_opts, file_roots={"base": ["/srv/salt"]}), stage) == []


def test_a_refresh_whose_record_cannot_be_written_says_so_once_beside_the_environments(runners, envflow_block, remote):
    """The master's record of what it serves (envflow.fleet) fails to be written: the deploys stand, one warning."""
    os.makedirs(os.path.join(remote.path, "refs", "envflow"), exist_ok=True)
    with open(os.path.join(remote.path, "refs", "envflow", "served"), "w", encoding="utf-8"):
        pass  # a file where git would make the directory of the masters' records
    result = runners["envflow.refresh"]()
    assert set(result["environments"]) == {"test", "stage", "prod"}
    assert all(entry["changed"] is True for entry in result["environments"].values())
    assert result["warning"].startswith("envflow: what ") and "could not be recorded on the remote" in result["warning"]
    assert "\n" not in result["warning"] and "retcode" not in result


_IMPORTS_PROBE = """
import json, sys
import salt.loader
opts = json.load(open(sys.argv[1]))
runners = salt.loader.runner(opts, utils=salt.loader.utils(opts), context={})
seen = {}
def loaded():
    return sorted(name for name in sys.modules if name == "pygit2" or name.startswith("envflow."))
assert "envflow.status" in runners
seen["loaded"] = loaded()
assert "error" not in runners["envflow.refresh"]()
seen["refresh"] = loaded()
print(json.dumps(seen))
"""


def test_a_call_imports_the_modules_it_runs_and_loading_the_runner_imports_none(master_base_opts, remote, tmp_path):
    """Salt loads the runner module to find its functions: that imports neither pygit2 nor envflow's engine. A
    refresh imports what a deploy runs, and none of what other calls need (the preview, diffs, backports, push
    hooks, job lookups)."""
    options = tmp_path / "opts.json"
    options.write_text(json.dumps(master_base_opts, default=str), encoding="utf-8")
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    found = subprocess.run(
        [sys.executable, "-c", _IMPORTS_PROBE, str(options)],
        env={**os.environ, "PYTHONPATH": checkout},
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(found.stdout.strip().splitlines()[-1])
    assert "pygit2" not in seen["loaded"]
    assert not {"envflow.pipeline", "envflow.served", "envflow.remote"} & set(seen["loaded"])
    assert {"pygit2", "envflow.pipeline", "envflow.served", "envflow.remote"} <= set(seen["refresh"])
    assert not {"envflow.preview", "envflow.diffs", "envflow.backport", "envflow.hooks", "envflow.jobs"} & set(
        seen["refresh"]
    )
