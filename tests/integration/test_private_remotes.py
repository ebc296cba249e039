"""A real master and minion whose automation repository is behind a real sshd, the key's passphrase in sdb.

The passphrase lives in a YAML file only root reads, through Salt's ``yaml``
sdb driver (it ships with Salt 3006 and 3008), as an operator would keep it;
envflow's configuration only names it (``sdb://envflow_secrets/passphrase``).
"""

import os
import pathlib

import pytest
import yaml
from saltfactories.utils import random_string

from tests import gitrepo
from tests.integration.conftest import (
    CLI_TIMEOUT,
    LOG_FILE_LEVEL,
    MASTER_TIMEOUTS,
    MASTER_WORKERS,
    fits_unix_sockets,
    minion_of,
    ok,
    running,
)
from tests.servers import SSHD, SshServer, keygen

PASSPHRASE = "integrati0n-passphrase"


def _yaml_secret(path, key, value):
    """Keep ``value`` under ``key`` in a YAML file only its owner reads, for Salt's ``yaml`` sdb driver."""
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump({key: value}, handle)
    os.chmod(path, 0o600)


class SshSite:
    def __init__(self, master, minion, remote, sshd, known_hosts, paths):
        self.master, self.minion, self.remote, self.sshd, self.known_hosts, self.paths = (
            master,
            minion,
            remote,
            sshd,
            known_hosts,
            paths,
        )
        self.run_cli = master.salt_run_cli(timeout=CLI_TIMEOUT)
        self.call_cli = minion.salt_call_cli(timeout=CLI_TIMEOUT)

    def served(self):
        return {name: gitrepo.tree_files(path) for name, path in self.paths.items()}


@pytest.fixture(scope="module")
def ssh_site(salt_factories, tmp_path_factory):
    if SSHD is None:
        pytest.fail("OpenSSH's sshd is not installed: install openssh-server (tests/run.py does, as root)")
    work = tmp_path_factory.mktemp("ssh-site")
    key = keygen(work / "id_ed25519", passphrase=PASSPHRASE)
    sshd = SshServer(work / "sshd", authorize=[key]).start()
    try:
        remote = gitrepo.Remote(work / "git")
        known_hosts = work / "known_hosts"
        known_hosts.write_text(sshd.known_hosts_line(), encoding="utf-8")
        secrets = str(work / "secrets.yaml")
        _yaml_secret(secrets, "passphrase", PASSPHRASE)
        master_id = random_string("m-", uppercase=False)
        master_root = pathlib.Path(salt_factories.root_dir) / master_id
        envflow = gitrepo.config(sshd.url(remote.path), master_root / "state-tree")
        envflow["credentials"] = {
            "ssh_key": key,
            "ssh_passphrase": "sdb://envflow_secrets/passphrase",
            "known_hosts": str(known_hosts),
        }
        envflow["timeout"] = 20
        envflow["environments"][2]["gates"] = {"approvals": 1}
        profile = {"envflow_secrets": {"driver": "yaml", "files": [secrets]}}
        file_roots = {env["name"]: [env["path"]] for env in envflow["environments"]}
        master = fits_unix_sockets(
            salt_factories.salt_master_daemon(
                master_id,
                defaults={"root_dir": str(master_root), "file_roots": file_roots},
                overrides={**MASTER_TIMEOUTS, **MASTER_WORKERS, **LOG_FILE_LEVEL, **profile, "envflow": envflow},
            )
        )
        minion = minion_of(
            master,
            random_string("n-", uppercase=False),
            {**LOG_FILE_LEVEL, **profile, "envflow": {**envflow, "master_config": master.config_file}},
        )
        paths = {env["name"]: env["path"] for env in envflow["environments"]}
        with running(master, minion):
            yield SshSite(master, minion, remote, sshd, known_hosts, paths)
    finally:
        sshd.stop()


def test_refresh_promote_deploy_and_records_through_sshd(ssh_site):
    site, remote = ssh_site, ssh_site.remote
    refreshed = ok(site.run_cli.run("envflow.refresh"))
    assert sorted(refreshed["environments"]) == ["prod", "stage", "test"], refreshed
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    assert ok(site.run_cli.run("envflow.refresh", "test"))["environments"]["test"]["new"] == tested
    promoted = ok(site.run_cli.run("envflow.promote", "stage"))
    assert promoted["new"] == tested, promoted
    assert remote.tip("stage") == tested
    approved = ok(site.run_cli.run("envflow.approve", "prod"))
    assert approved["commit"] == tested and len(approved["approvals"]) == 1, approved
    assert tested in gitrepo.git("notes", "--ref=envflow", "list", cwd=remote.path)
    assert ok(site.run_cli.run("envflow.promote", "prod"))["new"] == tested
    assert remote.tip("master") == tested
    newer = remote.commit("develop", {"web/init.sls": "# web v3\n"}, message="web v3")
    deployed = ok(site.call_cli.run("envflow.deploy", "test"))
    assert deployed["new"]["id"] == newer, deployed
    assert "Accepted publickey" in site.sshd.read_log()


def test_a_changed_host_key_fails_salt_run_in_one_line_and_changes_nothing(ssh_site, tmp_path):
    site, remote = ssh_site, ssh_site.remote
    ok(site.run_cli.run("envflow.refresh"))
    remote.commit("develop", {"web/init.sls": "# web changed key\n"})
    listed = site.known_hosts.read_text(encoding="utf-8")
    other = keygen(tmp_path / "impostor")
    with open(f"{other}.pub", encoding="utf-8") as handle:
        impostor = " ".join(handle.read().split()[:2])
    before = remote.refs(), site.served()
    site.known_hosts.write_text(f"{listed.split()[0]} {impostor}\n", encoding="utf-8")
    try:
        ret = site.run_cli.run("envflow.refresh", "test")
    finally:
        site.known_hosts.write_text(listed, encoding="utf-8")
    assert ret.returncode == 1, ret
    error = ret.data["error"]
    # The refresh's one fetch fails, before any environment: the error names none.
    assert error.startswith(f"envflow: the ssh host key of [127.0.0.1]:{site.sshd.port} has changed: it is now ")
    assert "\n" not in error
    assert PASSPHRASE not in ret.stdout + ret.stderr
    assert (remote.refs(), site.served()) == before
    # The next run, with the right key listed again, works.
    assert ok(site.run_cli.run("envflow.refresh", "test"))["environments"]["test"]["changed"] is True


def _applied(ret):
    """``{state id: result}`` of a state run on the minion, asserting every state succeeded."""
    states = {key.split("_|-")[1]: state for key, state in ok(ret).items()}
    assert states, "the state run ran no state"
    failed = {name: state for name, state in states.items() if state["result"] is not True}
    assert not failed, failed
    return states


NGINX_TEMPLATE = "nginx.conf.jinja"
TEMPLATES = {NGINX_TEMPLATE: "# nginx {{ version }}, from nginx-templates\nworker_processes auto;\n"}


def test_formulas_pinned_as_submodules_through_sshd_reach_the_minion_in_test_then_prod(ssh_site, tmp_path):
    """Issue 24: two saltstack-formulas repositories on the same sshd, pinned by URLs relative to the automation
    repository's, nginx's templates a submodule of its own (relative too). The top file gives the minion a state
    including both; it applies the pinned versions in test, then in prod once promoted, and a pin bump likewise."""
    site, remote = ssh_site, ssh_site.remote
    beside, out = os.path.dirname(remote.path), tmp_path / "out"
    templates = gitrepo.Remote(beside, files=TEMPLATES, name="nginx-templates")
    nginx = gitrepo.Remote(
        beside,
        files=gitrepo.formula_files("nginx", "1.24.0", out, template=f"nginx/files/default/{NGINX_TEMPLATE}"),
        name="nginx-formula",
    )
    nginx.submodule("master", "nginx/files/default", "../nginx-templates.git", templates.tip("master"))
    users = gitrepo.Remote(beside, files=gitrepo.formula_files("users", "0.48.8", out), name="users-formula")
    repositories = {
        "formulas/nginx-formula": nginx.path,
        "formulas/nginx-formula/nginx/files/default": templates.path,
        "formulas/users-formula": users.path,
    }
    top = "".join(f"{env}:\n  '{site.minion.id}':\n    - site\n" for env in ("test", "stage", "prod"))
    remote.submodule("develop", "formulas/users-formula", "../users-formula.git", users.tip("master"))
    pinned = remote.submodule(
        "develop",
        "formulas/nginx-formula",
        "../nginx-formula.git",
        nginx.tip("master"),
        files={
            "top.sls": top,
            "site/init.sls": "include:\n  - nginx\n  - users\n",
            # Where Salt finds the formulas' states (salt://nginx/init.sls), as file_roots would list each formula.
            "nginx": gitrepo.Symlink("formulas/nginx-formula/nginx"),
            "users": gitrepo.Symlink("formulas/users-formula/users"),
        },
        message="the nginx and users formulas",
    )

    def applies(env, nginx_version):
        states = _applied(site.call_cli.run("state.apply", f"saltenv={env}"))
        assert states["nginx-version"]["comment"] == f"nginx {nginx_version} in {env}", states
        assert states["users-version"]["comment"] == f"users 0.48.8 in {env}", states
        rendered = TEMPLATES[NGINX_TEMPLATE].replace("{{ version }}", nginx_version)
        assert (out / env / "nginx.conf").read_text(encoding="utf-8") == rendered
        assert (out / env / "users.conf").read_text(encoding="utf-8") == "users 0.48.8\n"

    def promote_to_prod(commit):
        promoted = ok(site.run_cli.run("envflow.promote", "stage"))
        assert promoted["new"] == commit, promoted
        ok(site.run_cli.run("envflow.approve", "prod"))
        promoted = ok(site.run_cli.run("envflow.promote", "prod"))
        assert promoted["new"] == commit, promoted
        return promoted

    assert ok(site.run_cli.run("envflow.refresh", "test"))["environments"]["test"]["new"] == pinned
    expected = gitrepo.files_at(remote.path, pinned, repositories)
    assert expected["formulas/nginx-formula/nginx/files/default/nginx.conf.jinja"] == TEMPLATES[NGINX_TEMPLATE]
    served = gitrepo.tree_files(site.paths["test"])
    assert served == expected
    assert not [path for path in served if ".git" in path.split("/")]
    applies("test", "1.24.0")
    promote_to_prod(pinned)
    applies("prod", "1.24.0")

    old_pin = nginx.tip("master")
    defaults = gitrepo.formula_files("nginx", "1.25.3", out)["nginx/defaults.yaml"]
    nginx.commit("master", {"nginx/defaults.yaml": defaults}, message="nginx 1.25.3")
    bumped = remote.submodule(
        "develop", "formulas/nginx-formula", "../nginx-formula.git", nginx.tip("master"), message="nginx 1.25.3"
    )
    assert ok(site.run_cli.run("envflow.refresh", "test"))["environments"]["test"]["new"] == bumped
    applies("test", "1.25.3")
    applies("prod", "1.24.0")
    assert gitrepo.tree_files(site.paths["prod"]) == expected
    promoted = promote_to_prod(bumped)
    assert promoted["submodules"] == [
        f"formulas/nginx-formula: {old_pin[:10]} -> {nginx.tip('master')[:10]} (1 commit)"
    ], promoted
    applies("prod", "1.25.3")
    expected = gitrepo.files_at(remote.path, bumped, repositories)
    assert site.served() == {"test": expected, "stage": expected, "prod": expected}
