"""The runner's envflow.backport, loaded by Salt's runner loader with master options (no daemon running)."""

import socket

import salt.utils.user

from tests.gitrepo import git, tree_files


def everything(block):
    return {env["name"]: tree_files(env["path"]) for env in block["environments"]}


def test_backport_merges_the_hotfix_into_develop_and_records_it(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    work = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    hotfix = remote.commit("master", {"hotfix.sls": "# urgent\n"}, message="urgent hotfix")
    dry = runners["envflow.backport"]("prod", dry_run=True)
    assert (dry["dry_run"], dry["kind"], dry["old"], dry["new"]) == (True, "merge", work, None)
    assert remote.tip("develop") == work

    result = runners["envflow.backport"]("prod")
    merged = remote.tip("develop")
    assert result == {
        "env": "prod",
        "into": "test",
        "branch": "develop",
        "old": work,
        "new": merged,
        "kind": "merge",
        "commits": [f"{hotfix[:10]} urgent hotfix"],
        "files": ["A hotfix.sls"],
        "comment": "merged 1 commit(s) of master (prod) into develop; now promote them through the pipeline from test",
    }
    who = salt.utils.user.get_specific_user()  # the runner's user when no eauth user runs it
    assert (
        git("log", "-1", "--format=%an|%cn|%ae", merged, cwd=remote.path) == f"{who}|{who}|{who}@{socket.gethostname()}"
    )
    assert "retcode" not in runners.context
    assert '"action": "backported"' in git("log", "-1", "--format=%B", "refs/envflow/history", cwd=remote.path)
    assert runners["envflow.backport"]("prod")["comment"] == (
        "nothing to do: develop already holds every commit of master (prod)"
    )


def test_a_conflict_fails_the_runner_with_the_files_and_changes_nothing(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    remote.commit("develop", {"web/init.sls": "# develop's web\n"})
    hotfix = remote.commit("master", {"web/init.sls": "# prod's web\n"}, message="web hotfix")
    before = remote.refs(), everything(envflow_block)
    result = runners["envflow.backport"]("prod")
    assert result == {
        "retcode": 1,
        "error": "envflow: back-merging 1 commit(s) of master (prod) into develop conflicts in 1 file(s): "
        "'web/init.sls'; nothing changed: merge master into develop by hand, resolve them, push develop and "
        "promote it through the pipeline from test",
        "conflicts": ["web/init.sls"],
        "commits": [f"{hotfix[:10]} web hotfix"],
    }
    assert runners.context["retcode"] == 1
    assert (remote.refs(), everything(envflow_block)) == before


def test_refusals_are_one_line_failures(runners, remote):
    assert runners["envflow.backport"]("test") == {
        "retcode": 1,
        "error": "envflow: test is the first environment of the pipeline: envflow.backport brings the commits of a "
        "later environment's branch into develop; give stage or prod",
    }
    assert runners["envflow.backport"]("qa") == {
        "retcode": 1,
        "error": "envflow: no environment named 'qa'; configured: test, stage, prod",
    }
