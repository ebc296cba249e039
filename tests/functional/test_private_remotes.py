"""The loader modules against private remotes: a real sshd and a real git http-backend, secrets from sdb."""

import copy
import logging

import pytest
from salt.exceptions import CommandExecutionError
from saltfactories.utils.functional import Loaders

from tests.conftest import HTTP_PASSWORD, HTTP_USER
from tests.functional.conftest import served_file
from tests.gitrepo import git, tree_files

# Salt's env sdb driver reads the process environment: the secrets come from variables of these names.
PASSPHRASE_VAR, TOKEN_VAR = "ENVFLOW_TEST_PASSPHRASE", "ENVFLOW_TEST_TOKEN"
SDB = {"envflow_secrets": {"driver": "env"}}


def everything(block):
    return {env["name"]: tree_files(env["path"]) for env in block["environments"]}


@pytest.fixture(scope="module")
def _module_ssh_block(envflow_block, _module_sshd, ssh_keys, known_hosts):
    # The module's sshd, keys and known_hosts, and the fixed path of each test's ``remote``: one block for all.
    block = copy.deepcopy(envflow_block)
    block["repo"] = _module_sshd.url(envflow_block["repo"])
    block["credentials"] = {
        "ssh_key": ssh_keys.protected,
        "ssh_passphrase": f"sdb://envflow_secrets/{PASSPHRASE_VAR}",
        "known_hosts": known_hosts,
    }
    return block


@pytest.fixture
def ssh_block(_module_ssh_block, remote, sshd, ssh_keys, monkeypatch):
    """The ``envflow`` block for ``remote`` served by sshd: the protected key, its passphrase from sdb."""
    assert _module_ssh_block["repo"] == sshd.url(remote.path)
    monkeypatch.setenv(PASSPHRASE_VAR, ssh_keys.passphrase)
    return _module_ssh_block


@pytest.fixture(scope="module")
def _module_ssh_loaders(minion_base_opts, _module_ssh_block):
    # Building Salt's loaders costs seconds; each test resets their state (context and cache) when done.
    return Loaders(dict(minion_base_opts, envflow=_module_ssh_block, **SDB))


@pytest.fixture
def ssh_loaders(_module_ssh_loaders, ssh_block):
    """Salt's loaders for ``ssh_block``, as :func:`execution_module` would build them."""
    return _module_ssh_loaders


@pytest.fixture
def http_block(envflow_block, git_http, monkeypatch):
    """The ``envflow`` block for ``remote`` behind git http-backend: the token from sdb."""
    monkeypatch.setenv(TOKEN_VAR, HTTP_PASSWORD)
    block = copy.deepcopy(envflow_block)
    block["repo"] = git_http.url("automation.git")
    block["credentials"] = {
        "username": HTTP_USER,
        "password": f"sdb://envflow_secrets/{TOKEN_VAR}",
        "allow_http": True,
    }
    return block


def execution_module(minion_base_opts, block):
    loaders = Loaders(dict(minion_base_opts, envflow=block, **SDB))
    return loaders, loaders.modules.envflow


def runner_functions(master_base_opts, block):
    import salt.loader  # pylint: disable=import-outside-toplevel

    opts = dict(master_base_opts, envflow=block, **SDB)
    context = {}
    functions = salt.loader.runner(opts, utils=salt.loader.utils(opts), context=context)
    functions.context = context
    return functions


def test_deploy_and_promote_over_ssh_with_the_passphrase_from_sdb(ssh_loaders, ssh_block, ssh_keys, remote, caplog):
    caplog.set_level(logging.DEBUG)
    loaders, envflow = ssh_loaders, ssh_loaders.modules.envflow
    try:
        assert envflow.deploy("test")["new"]["id"] == remote.tip("develop")
        assert envflow.deploy("stage")["new"]["id"] == remote.tip("stage")
        tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
        assert envflow.deploy("test")["new"]["id"] == tested
        promoted = envflow.promote("stage")
        assert promoted["new"] == tested
        assert remote.tip("stage") == tested
        assert served_file(ssh_block, "stage", "web/init.sls") == "# web v2\n"
    finally:
        loaders.reset_state()
    assert ssh_block["credentials"]["ssh_passphrase"].startswith("sdb://")  # read when needed, not stored back
    assert ssh_keys.passphrase not in caplog.text


def test_deploy_and_promote_over_http_with_the_token_from_sdb(minion_base_opts, http_block, remote, caplog):
    caplog.set_level(logging.DEBUG)
    loaders, envflow = execution_module(minion_base_opts, http_block)
    try:
        tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
        deployed = envflow.deploy("test")
        assert deployed["new"]["id"] == tested
        assert served_file(http_block, "test", "web/init.sls") == "# web v2\n"
        promoted = envflow.promote("stage")
        assert promoted["new"] == tested
        assert remote.tip("stage") == tested
    finally:
        loaders.reset_state()
    assert HTTP_PASSWORD not in caplog.text + repr(deployed) + repr(promoted)


@pytest.mark.parametrize(
    "credentials, message",
    [
        ({"ssh_key": "stranger", "ssh_passphrase": None}, "refused the ssh key"),
        ({"ssh_passphrase": "wr0ng-passphrase"}, "is wrong; check envflow:credentials:ssh_passphrase"),
        ({"ssh_passphrase": "sdb://no_such_profile/x"}, "envflow:credentials:ssh_passphrase: sdb://no_such_profile/x"),
        ({"known_hosts": "empty"}, "is not in"),
    ],
)
def test_ssh_refusals_are_one_line_and_change_nothing(
    minion_base_opts, ssh_loaders, ssh_block, ssh_keys, remote, tmp_path, credentials, message, caplog
):
    caplog.set_level(logging.DEBUG)
    loaders, envflow = ssh_loaders, ssh_loaders.modules.envflow
    try:
        envflow.deploy("stage")
    finally:
        loaders.reset_state()
    remote.commit("stage", {"web/init.sls": "# web v2\n"})
    changes = dict(credentials)
    if changes.get("ssh_key") == "stranger":
        changes["ssh_key"] = ssh_keys.stranger
    if changes.get("known_hosts") == "empty":
        (tmp_path / "empty").write_text("", encoding="utf-8")
        changes["known_hosts"] = str(tmp_path / "empty")
    block = copy.deepcopy(ssh_block)
    block["credentials"].update(changes)
    block["credentials"] = {key: value for key, value in block["credentials"].items() if value is not None}
    loaders, envflow = execution_module(minion_base_opts, block)
    before = remote.refs(), everything(block)
    try:
        with pytest.raises(CommandExecutionError) as error:
            envflow.deploy("stage")
    finally:
        loaders.reset_state()
    text = str(error.value)
    assert message in text
    assert "\n" not in text
    assert (remote.refs(), everything(block)) == before
    assert "wr0ng-passphrase" not in text + caplog.text
    assert ssh_keys.passphrase not in text + caplog.text


def test_refresh_promote_and_records_over_http_with_the_token_from_sdb(
    master_base_opts, http_block, remote, monkeypatch, caplog
):
    caplog.set_level(logging.DEBUG)
    block = copy.deepcopy(http_block)
    block["environments"][2]["gates"] = {"approvals": 1}
    runners = runner_functions(master_base_opts, block)
    refreshed = runners["envflow.refresh"]()
    assert set(refreshed["environments"]) == {"test", "stage", "prod"}
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    runners["envflow.refresh"]("test")
    assert runners["envflow.promote"]("stage")["new"] == tested
    assert remote.tip("stage") == tested
    monkeypatch.setenv("SUDO_USER", "alice")
    assert runners["envflow.approve"]("prod")["approvals"] == ["sudo_alice"]
    assert '"sudo_alice"' in git("notes", "--ref=envflow", "show", tested, cwd=remote.path)
    assert runners["envflow.promote"]("prod")["new"] == tested
    assert served_file(block, "prod", "web/init.sls") == "# web v2\n"
    status = runners["envflow.status"]()
    assert all(env["in_sync"] for env in status["environments"].values())
    assert "retcode" not in runners.context
    assert HTTP_PASSWORD not in caplog.text + repr(status) + repr(refreshed)


def test_a_wrong_token_fails_the_runner_in_one_line_and_changes_nothing(
    master_base_opts, http_block, remote, monkeypatch, caplog
):
    caplog.set_level(logging.DEBUG)
    runners = runner_functions(master_base_opts, http_block)
    runners["envflow.refresh"]()
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    monkeypatch.setenv(TOKEN_VAR, "n0t-the-t0ken")
    before = remote.refs(), everything(http_block)
    result = runners["envflow.refresh"]("test")
    assert result["retcode"] == 1
    # The one fetch of the refresh fails, before any environment: the error names none.
    assert result["error"] == (
        f"envflow: 127.0.0.1 refused the username {HTTP_USER} and its password; "
        "check envflow:credentials:username and password"
    )
    assert (remote.refs(), everything(http_block)) == before
    assert "n0t-the-t0ken" not in caplog.text + repr(result)
