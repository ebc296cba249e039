"""A hotfix committed on master, back-merged with envflow.backport and promoted through the pipeline, on a real master.

One test, on the module's own site: starting a site costs more than the checks.
"""

import json
import re
import time

from tests import gitrepo
from tests.integration.conftest import CLI_TIMEOUT, MOTD, fresh_motd, ok, salt_run

HOTFIX = "web/hotfix.txt"


def test_a_hotfix_on_master_is_back_merged_then_promoted_to_every_environment(site, event_listener):
    """Hotfix on master; ``promote prod`` refused listing it; ``backport prod``; refresh test, promote stage, prod."""
    site.remote.commit("develop", {MOTD: fresh_motd("develop")}, "motd being tried in test")
    ok(site.run("envflow.refresh", "test"))
    ok(site.run("envflow.promote", "stage"))
    hotfix = site.remote.commit("master", {HOTFIX: "urgent fix\n"}, "urgent hotfix on prod")
    # develop moves on too, so the back-merge must make a merge commit.
    work = site.remote.commit("develop", {MOTD: fresh_motd("develop")}, "more work in test")

    refs = site.remote.refs()
    refused = site.run("envflow.promote", "prod")
    assert refused.returncode != 0 and refused.data["retcode"] == 1, refused
    error = refused.data["error"]
    assert "\n" not in error and f"{hotfix[:10]} 'urgent hotfix on prod'" in error, error
    assert "salt-run envflow.backport prod" in error, error
    assert site.remote.refs() == refs

    start = time.time()
    backported = ok(site.run("envflow.backport", "prod"))
    merged = site.remote.tip("develop")
    assert (backported["kind"], backported["old"], backported["new"]) == ("merge", work, merged), backported
    assert backported["commits"] == [f"{hotfix[:10]} urgent hotfix on prod"], backported
    parents = gitrepo.git("log", "-1", "--format=%P|%an", merged, cwd=site.remote.path)
    assert parents.split("|")[0] == f"{work} {hotfix}", parents
    operator = parents.split("|")[1]

    matched = event_listener.wait_for_events(
        [(site.master.id, "salt/envflow/prod/backported")], after_time=start, timeout=CLI_TIMEOUT
    )
    assert matched.found_all_events, matched.missed
    [event] = list(matched)
    assert {key: event.data[key] for key in ("env", "into", "branch", "old", "new", "kind", "commits", "by")} == {
        "env": "prod",
        "into": "test",
        "branch": "develop",
        "old": work,
        "new": merged,
        "kind": "merge",
        "commits": [hotfix],
        "by": operator,
    }

    assert ok(site.run("envflow.refresh", "test"))["environments"]["test"]["new"] == merged
    assert ok(site.run("envflow.promote", "stage"))["new"] == merged
    assert ok(site.run("envflow.promote", "prod"))["new"] == merged
    for env, branch in (("test", "develop"), ("stage", "stage"), ("prod", "master")):
        assert site.remote.tip(branch) == merged == site.deployed(env)
        assert site.served_file(env, HOTFIX) == "urgent fix\n"
    assert site.minion_reads(HOTFIX, saltenv="prod") == "urgent fix\n"
    assert site.minion_reads(HOTFIX, saltenv="stage") == "urgent fix\n"

    # The history on the remote, read with plain git.
    log = gitrepo.git("log", "--format=%B%x00", "refs/envflow/history", cwd=site.remote.path)
    entries = [json.loads(message.strip().partition("\n\n")[2]) for message in log.split("\0") if message.strip()]
    backports = [entry for entry in entries if entry["action"] == "backported"]
    assert len(backports) == 1, entries
    assert {key: backports[0][key] for key in ("env", "by", "from", "to", "into", "branch", "merge", "commits")} == {
        "env": "prod",
        "by": operator,
        "from": work,
        "to": merged,
        "into": "test",
        "branch": "develop",
        "merge": True,
        "commits": [f"{hotfix[:10]} urgent hotfix on prod"],
    }
    print(
        "git log --format=%s refs/envflow/history:\n"
        + gitrepo.git("log", "--format=%s", "refs/envflow/history", cwd=site.remote.path)
    )
    # What an operator sees: the real salt-run (salt-factories' CLI adds --out=json) prints the history table.
    shown = salt_run(site.master.config_dir, "envflow.history")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert re.search(rf"\bbackported\s+prod\s+{work[:10]} -> {merged[:10]}\s+{operator}\b", shown.stdout), shown.stdout
    print(f"salt-run envflow.history:\n{shown.stdout}")
