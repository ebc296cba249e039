"""The envflow execution module, loaded by Salt's loader from the installed package's entry point."""

import copy
import logging
import os

import pytest
from salt.exceptions import CommandExecutionError

from tests.functional.conftest import env_path, served_file
from tests.gitrepo import tree_files


def test_deploy_serves_the_branch_tip(envflow, envflow_block, remote):
    result = envflow.deploy("stage")
    assert result["env"] == "stage"
    assert result["changed"] is True
    assert result["new"]["id"] == remote.tip("stage")
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v1\n"
    assert envflow.deployed("stage") == {**result["new"], "deployed_at": envflow.deployed("stage")["deployed_at"]}
    assert envflow.drift("stage") == {"added": [], "modified": [], "deleted": []}


def test_deploy_a_rev_or_another_branch(envflow, envflow_block, remote):
    first = remote.tip("develop")
    second = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    assert envflow.deploy("stage", branch="develop")["new"]["id"] == second
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v2\n"
    assert envflow.deploy("stage", rev=first[:8])["new"]["id"] == first
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v1\n"


def test_deploy_test_mode_reports_and_changes_nothing(envflow, envflow_block, remote):
    envflow.deploy("stage")
    new = remote.commit("stage", {"web/init.sls": "# web v2\n"})
    result = envflow.deploy("stage", test=True)
    assert result["test"] is True
    assert result["old"]["id"] != new and result["new"]["id"] == new
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v1\n"
    assert envflow.deployed("stage")["id"] == result["old"]["id"]


def test_nothing_deployed_yet(envflow):
    assert envflow.deployed("prod") is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.deploy("stg"), "envflow: no environment named 'stg'; configured: test, stage, prod"),
        (lambda m: m.deployed("stg"), "envflow: no environment named 'stg'; configured: test, stage, prod"),
        (lambda m: m.drift("stg"), "envflow: no environment named 'stg'; configured: test, stage, prod"),
        (lambda m: m.deploy("stage", rev="nope"), "envflow: revision 'nope' is not in"),
        (lambda m: m.deploy("stage", rev="nope", branch="develop"), "envflow: give rev or branch, not both"),
        (lambda m: m.deploy("stage", branch="feature"), "envflow: branch 'feature' does not exist in"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(envflow, envflow_block, call, message):
    envflow.deploy("stage")
    before = {env["name"]: tree_files(env["path"]) for env in envflow_block["environments"]}
    with pytest.raises(CommandExecutionError) as error:
        call(envflow)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)
    assert {env["name"]: tree_files(env["path"]) for env in envflow_block["environments"]} == before


def test_invalid_configuration_is_reported_on_first_use(minion_base_opts, envflow_block, tmp_path):
    from saltfactories.utils.functional import Loaders

    block = copy.deepcopy(envflow_block)
    block["environments"][1]["path"] = "srv/stage"
    loaders = Loaders(dict(minion_base_opts, envflow=block, cachedir=str(tmp_path / "cache")))
    with pytest.raises(CommandExecutionError) as error:
        loaders.modules.envflow.deploy("stage")
    assert str(error.value) == (
        "envflow:environments:1:path: 'srv/stage' is a relative path; use an absolute path such as /srv/salt/stage"
    )
    assert not os.path.exists(tmp_path / "cache" / "envflow")


def test_missing_configuration_says_where_to_put_it(minion_base_opts, tmp_path):
    from saltfactories.utils.functional import Loaders

    loaders = Loaders(dict(minion_base_opts, cachedir=str(tmp_path / "cache")))
    with pytest.raises(CommandExecutionError) as error:
        loaders.modules.envflow.deployed("stage")
    assert str(error.value).startswith("envflow: no configuration found; add an 'envflow' block")


def test_drift_refuses_a_deploy_until_forced(envflow, envflow_block, remote):
    envflow.deploy("stage")
    path = env_path(envflow_block, "stage")
    with open(os.path.join(path, "web", "init.sls"), "w", encoding="utf-8") as handle:
        handle.write("# edited on the master\n")
    assert envflow.drift("stage") == {"added": [], "modified": ["web/init.sls"], "deleted": []}
    remote.commit("stage", {"db/init.sls": "# db\n"})
    with pytest.raises(CommandExecutionError) as error:
        envflow.deploy("stage")
    assert str(error.value) == (
        f"envflow: {path} was edited by hand (modified: web/init.sls); commit those changes to the repository, "
        "or deploy with force=True to discard them"
    )
    assert served_file(envflow_block, "stage", "web/init.sls") == "# edited on the master\n"
    result = envflow.deploy("stage", force=True)
    assert result["discarded"]["modified"] == ["web/init.sls"]
    assert served_file(envflow_block, "stage", "db/init.sls") == "# db\n"
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v1\n"


def test_credentials_in_the_repo_url_never_reach_errors_or_logs(minion_base_opts, envflow_block, tmp_path, caplog):
    from saltfactories.utils.functional import Loaders

    block = dict(envflow_block, repo="https://deploy:s3cr3t-t0ken@127.0.0.1:9/ops/automation.git")
    loaders = Loaders(dict(minion_base_opts, envflow=block, cachedir=str(tmp_path / "cache")))
    with caplog.at_level(logging.DEBUG), pytest.raises(CommandExecutionError) as error:
        loaders.modules.envflow.deploy("stage")
    assert str(error.value).startswith("envflow: cannot fetch https://***@127.0.0.1:9/ops/automation.git: ")
    assert "s3cr3t" not in str(error.value)
    assert "s3cr3t" not in caplog.text


# Issue 6, defect 4: a very long rev was echoed whole, a 10 KB "one-line" message.
@pytest.mark.parametrize("where", ["deploy", "promote", "unknown environment", "branch"])
def test_long_input_is_echoed_cut_short(envflow, envflow_block, remote, where):
    envflow.deploy("test")
    envflow.deploy("stage")
    long = "f" * 10_000
    before = remote.refs(), {env["name"]: tree_files(env["path"]) for env in envflow_block["environments"]}
    with pytest.raises(CommandExecutionError) as error:
        if where == "deploy":
            envflow.deploy("test", rev=long)
        elif where == "promote":
            envflow.promote("stage", rev=long)
        elif where == "unknown environment":
            envflow.deploy(long)
        else:
            envflow.deploy("test", branch=long)
    message = str(error.value)
    # Cut short is the user's input: the paths it names are as long as the test's temporary directory (TMPDIR).
    shown = message.replace(remote.path, "<repo>")
    for env in envflow_block["environments"]:
        shown = shown.replace(env["path"], "<path>")
    assert len(shown) < 300, message
    assert "\n" not in message
    assert "(10000 characters)" in message
    assert (remote.refs(), {env["name"]: tree_files(env["path"]) for env in envflow_block["environments"]}) == before
