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
from tests.integration.conftest import CLI_TIMEOUT, LOG_FILE_LEVEL, MASTER_TIMEOUTS, fits_unix_sockets, ok, running
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
                overrides={**MASTER_TIMEOUTS, **LOG_FILE_LEVEL, **profile, "envflow": envflow},
            )
        )
        minion = fits_unix_sockets(
            master.salt_minion_daemon(
                random_string("n-", uppercase=False),
                overrides={**LOG_FILE_LEVEL, **profile, "envflow": {**envflow, "master_config": master.config_file}},
            )
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
