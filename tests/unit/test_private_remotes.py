"""Fetch, compare-and-swap push and notes through a real sshd and a real git http-backend, on loopback."""

import contextlib
import logging
import os
import shutil
import subprocess
import time

import pygit2
import pytest

from envflow import records
from envflow.config import parse
from envflow.errors import ConfigError, RemoteError
from envflow.remote import Mirror
from tests.conftest import HTTP_PASSWORD, HTTP_USER, short_root
from tests.gitrepo import config, git
from tests.servers import SilentServer, SshServer, fingerprint, keygen, make_ca_and_certificate, wait_for


def mirror_for(url, tmp_path, credentials=None, timeout=None, cache="cache"):
    """A :class:`Mirror` configured as the loader modules configure it, from an ``envflow`` block."""
    raw = config(url, tmp_path / "srv")
    if credentials is not None:
        raw["credentials"] = credentials
    if timeout is not None:
        raw["timeout"] = timeout
    parsed = parse(raw)
    return Mirror(parsed.repo, str(tmp_path / cache), parsed.credentials, parsed.timeout)


def mirror_refs(mirror):
    return {name: str(mirror.repo.references[name].target) for name in mirror.repo.references}


def fails(mirror, operation=None):
    """The one-line message of the RemoteError or ConfigError that ``operation`` (a fetch by default) raises."""
    with pytest.raises((RemoteError, ConfigError)) as error:
        (operation or mirror.fetch)()
    text = str(error.value)
    assert "\n" not in text
    return text


# ssh


def test_fetch_push_and_notes_over_ssh_with_a_key_file(remote, sshd, ssh_keys, known_hosts, tmp_path):
    url = sshd.url(remote.path)
    with mirror_for(url, tmp_path, {"ssh_key": ssh_keys.plain, "known_hosts": known_hosts}) as mirror:
        mirror.fetch()
        assert str(mirror.tip("develop")) == remote.tip("develop")
        new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
        mirror.fetch()
        mirror.update_branch("stage", mirror.tip("stage"), pygit2.Oid(hex=new))
        assert remote.tip("stage") == new
        records.add(mirror, new, "approved", "prod", {"by": "alice"})
    note = git("notes", "--ref=envflow", "show", new, cwd=remote.path)
    assert '"by": "alice"' in note


def test_a_passphrase_protected_key_over_ssh(remote, sshd, ssh_keys, known_hosts, tmp_path):
    credentials = {"ssh_key": ssh_keys.protected, "ssh_passphrase": ssh_keys.passphrase, "known_hosts": known_hosts}
    with mirror_for(sshd.url(remote.path), tmp_path, credentials) as mirror:
        mirror.fetch()
        assert str(mirror.tip("master")) == remote.tip("master")


@contextlib.contextmanager
def ssh_agent(key, monkeypatch):
    """An ssh-agent holding ``key``, named by ``SSH_AUTH_SOCK`` for this test; stopped afterwards.

    Its socket goes under a short directory: a unix socket's path has room
    for about 100 characters, fewer than a long ``TMPDIR`` leaves.
    """
    folder = short_root()
    sock = str(folder / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(sock), "ssh-agent's socket")
        env = dict(os.environ, SSH_AUTH_SOCK=sock)
        subprocess.run(["ssh-add", "-q", key], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        yield
    finally:
        agent.terminate()
        agent.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_ssh_agent(remote, sshd, ssh_keys, known_hosts, tmp_path, monkeypatch):
    agent = {"ssh_agent": True, "known_hosts": known_hosts}
    with ssh_agent(ssh_keys.plain, monkeypatch), mirror_for(sshd.url(remote.path), tmp_path, agent) as mirror:
        mirror.fetch()
        assert str(mirror.tip("develop")) == remote.tip("develop")


def test_an_agent_whose_keys_the_server_refuses_says_so_and_changes_nothing(
    remote, sshd, ssh_keys, known_hosts, tmp_path, monkeypatch
):
    with ssh_agent(ssh_keys.stranger, monkeypatch):
        before = remote.refs()
        with mirror_for(sshd.url(remote.path), tmp_path, {"ssh_agent": True, "known_hosts": known_hosts}) as mirror:
            text = fails(mirror)
            assert mirror_refs(mirror) == {}
        assert text == (
            f"envflow: 127.0.0.1 refused every key of the ssh agent (SSH_AUTH_SOCK) for user {sshd.user}; "
            "add one to the agent (ssh-add), or set envflow:credentials:ssh_key"
        )
        assert remote.refs() == before


def test_the_ssh_agent_without_ssh_auth_sock_is_refused_in_one_line(remote, sshd, known_hosts, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with mirror_for(sshd.url(remote.path), tmp_path, {"ssh_agent": True, "known_hosts": known_hosts}) as mirror:
        assert fails(mirror) == (
            "envflow:credentials:ssh_agent: SSH_AUTH_SOCK is not set for the user running Salt; "
            "start Salt with an ssh agent, or give ssh_key"
        )


def test_a_key_the_server_does_not_know_is_refused_and_changes_nothing(remote, sshd, ssh_keys, known_hosts, tmp_path):
    with mirror_for(sshd.url(remote.path), tmp_path, {"ssh_key": ssh_keys.stranger, "known_hosts": known_hosts}) as m:
        before = remote.refs()
        assert fails(m) == (
            f"envflow: 127.0.0.1 refused the ssh key {ssh_keys.stranger} for user {sshd.user}; add its public key "
            "to that user's authorized keys on the server, or fix envflow:credentials:ssh_key"
        )
        assert mirror_refs(m) == {}
        assert remote.refs() == before


def test_a_wrong_passphrase_is_refused_and_never_shown(remote, sshd, ssh_keys, known_hosts, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    credentials = {"ssh_key": ssh_keys.protected, "ssh_passphrase": "wr0ng-passphrase", "known_hosts": known_hosts}
    with mirror_for(sshd.url(remote.path), tmp_path, credentials) as mirror:
        text = fails(mirror)
        assert text.startswith(f"envflow: cannot fetch {sshd.url(remote.path).replace(sshd.user + '@', '***@')}: ")
        assert text.endswith(
            f"the passphrase of the ssh key {ssh_keys.protected} is wrong; check envflow:credentials:ssh_passphrase"
        )
        assert mirror_refs(mirror) == {}
    assert "wr0ng-passphrase" not in text + caplog.text + sshd.read_log()


def test_a_protected_key_without_its_passphrase_says_so(remote, sshd, ssh_keys, known_hosts, tmp_path):
    with mirror_for(sshd.url(remote.path), tmp_path, {"ssh_key": ssh_keys.protected, "known_hosts": known_hosts}) as m:
        assert fails(m) == (
            f"envflow:credentials:ssh_key: {ssh_keys.protected} is protected by a passphrase; "
            "set envflow:credentials:ssh_passphrase"
        )


def test_a_key_file_others_can_read_is_refused(remote, sshd, ssh_keys, known_hosts, tmp_path):
    try:
        os.chmod(ssh_keys.plain, 0o644)
        with mirror_for(sshd.url(remote.path), tmp_path, {"ssh_key": ssh_keys.plain, "known_hosts": known_hosts}) as m:
            assert fails(m) == (
                f"envflow:credentials:ssh_key: {ssh_keys.plain} can be read by users other than its owner "
                f"(mode 0644); make it private: chmod 600 {ssh_keys.plain}"
            )
            assert mirror_refs(m) == {}
        os.chmod(ssh_keys.plain, 0o640)
        with mirror_for(sshd.url(remote.path), tmp_path, {"ssh_key": ssh_keys.plain, "known_hosts": known_hosts}) as m:
            assert "(mode 0640)" in fails(m)
    finally:
        os.chmod(ssh_keys.plain, 0o600)  # the module's other tests share the key


def test_an_unknown_host_key_is_refused_naming_host_and_fingerprint(remote, sshd, ssh_keys, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("", encoding="utf-8")
    with mirror_for(sshd.url(remote.path), tmp_path, {"ssh_key": ssh_keys.plain, "known_hosts": str(empty)}) as m:
        text = fails(m)
        assert mirror_refs(m) == {}
    name = f"[127.0.0.1]:{sshd.port}"
    assert text == (
        f"envflow: the ssh host key of {name} (ssh-ed25519 {fingerprint(sshd.host_public_key)}) is not in {empty}; "
        f"check the fingerprint with the server's administrator and add the key (ssh-keyscan -p {sshd.port} "
        f"127.0.0.1 >> {empty}), or set envflow:credentials:known_hosts, or accept_unknown_host_key: true to skip "
        "the check"
    )
    assert "Accepted publickey" not in sshd.read_log()  # refused before any credential was sent


def test_a_changed_host_key_is_refused_even_when_unknown_keys_are_accepted(remote, sshd, ssh_keys, tmp_path):
    other = keygen(tmp_path / "other_host_key")
    with open(f"{other}.pub", encoding="utf-8") as handle:
        listed = f"[127.0.0.1]:{sshd.port} {' '.join(handle.read().split()[:2])}\n"
    stale = tmp_path / "stale_known_hosts"
    stale.write_text(listed, encoding="utf-8")
    credentials = {"ssh_key": ssh_keys.plain, "known_hosts": str(stale), "accept_unknown_host_key": True}
    with mirror_for(sshd.url(remote.path), tmp_path, credentials) as mirror:
        text = fails(mirror)
        assert mirror_refs(mirror) == {}
    name = f"[127.0.0.1]:{sshd.port}"
    assert text.startswith(
        f"envflow: the ssh host key of {name} has changed: it is now ssh-ed25519 {fingerprint(sshd.host_public_key)}, "
        f"which {stale} does not list for it; someone may be intercepting the connection;"
    )


def test_accepting_unknown_host_keys_logs_the_fingerprint(remote, sshd, ssh_keys, tmp_path, caplog):
    credentials = {
        "ssh_key": ssh_keys.plain,
        "known_hosts": str(tmp_path / "missing_known_hosts"),
        "accept_unknown_host_key": True,
    }
    with (
        caplog.at_level(logging.WARNING, logger="envflow"),
        mirror_for(sshd.url(remote.path), tmp_path, credentials) as m,
    ):
        m.fetch()
        assert str(m.tip("develop")) == remote.tip("develop")
    assert fingerprint(sshd.host_public_key) in caplog.text
    assert "accept_unknown_host_key" in caplog.text


def test_hashed_known_hosts_entries_and_the_default_file(remote, sshd, ssh_keys, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    default = home / ".ssh" / "known_hosts"
    default.write_text("# comment\n" + sshd.known_hosts_line(), encoding="utf-8")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(default)], check=True, capture_output=True)
    assert "127.0.0.1" not in default.read_text(encoding="utf-8")
    monkeypatch.setenv("HOME", str(home))
    with mirror_for(sshd.url(remote.path), tmp_path, {"ssh_key": ssh_keys.plain}) as mirror:
        mirror.fetch()
        assert str(mirror.tip("develop")) == remote.tip("develop")
    default.write_text("", encoding="utf-8")
    with mirror_for(sshd.url(remote.path), tmp_path, {"ssh_key": ssh_keys.plain}) as mirror:
        assert f"is not in {default};" in fails(mirror)


def test_a_push_with_a_refused_key_changes_nothing(remote, sshd, ssh_keys, known_hosts, tmp_path):
    url = sshd.url(remote.path)
    new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    with mirror_for(url, tmp_path, {"ssh_key": ssh_keys.plain, "known_hosts": known_hosts}) as mirror:
        mirror.fetch()
        old = mirror.tip("stage")
    before, mirrored = remote.refs(), None
    with mirror_for(url, tmp_path, {"ssh_key": ssh_keys.stranger, "known_hosts": known_hosts}) as mirror:
        mirrored = mirror_refs(mirror)
        text = fails(mirror, lambda: mirror.update_branch("stage", old, pygit2.Oid(hex=new)))
        assert text.startswith(f"envflow: 127.0.0.1 refused the ssh key {ssh_keys.stranger} ")
        assert mirror_refs(mirror) == mirrored
    assert remote.refs() == before


def test_scp_like_urls_on_port_22(remote, ssh_keys, tmp_path):
    """``user@host:path`` always means port 22: a second loopback address gives the test one of its own (root only)."""
    if os.geteuid() != 0:
        pytest.skip("binding port 22 needs root")
    from tests.conftest import _need_sshd  # pylint: disable=import-outside-toplevel

    _need_sshd()
    server = None
    for last in range(2, 250):
        host = f"127.0.0.{last}"
        try:
            server = SshServer(tmp_path / f"sshd-{last}", authorize=[ssh_keys.plain], port=22, host=host).start()
            break
        except RuntimeError:
            continue  # that address's port 22 is taken
    if server is None:
        pytest.skip("no loopback address with a free port 22")
    try:
        hosts = tmp_path / "known_hosts22"
        hosts.write_text(server.known_hosts_line(), encoding="utf-8")
        assert server.known_hosts_line().startswith(f"{host} ")
        url = f"{server.user}@{host}:{remote.path}"
        with mirror_for(url, tmp_path, {"ssh_key": ssh_keys.plain, "known_hosts": str(hosts)}) as mirror:
            mirror.fetch()
            new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
            mirror.fetch()
            mirror.update_branch("stage", mirror.tip("stage"), pygit2.Oid(hex=new))
        assert remote.tip("stage") == new
    finally:
        server.stop()


# http


def test_fetch_push_and_notes_over_http_with_a_username_and_password(remote, git_http, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    credentials = {"username": HTTP_USER, "password": HTTP_PASSWORD, "allow_http": True}
    with mirror_for(git_http.url("automation.git"), tmp_path, credentials) as mirror:
        mirror.fetch()
        assert str(mirror.tip("develop")) == remote.tip("develop")
        new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
        mirror.fetch()
        mirror.update_branch("stage", mirror.tip("stage"), pygit2.Oid(hex=new))
        records.add(mirror, new, "verified", "stage", {"by": "root", "jid": "1"})
    assert remote.tip("stage") == new
    assert '"jid": "1"' in git("notes", "--ref=envflow", "show", new, cwd=remote.path)
    assert HTTP_PASSWORD not in caplog.text


def test_a_wrong_password_is_refused_and_never_shown(remote, git_http, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    credentials = {"username": HTTP_USER, "password": "n0t-the-t0ken", "allow_http": True}
    before = remote.refs()
    with mirror_for(git_http.url("automation.git"), tmp_path, credentials) as mirror:
        text = fails(mirror)
        assert mirror_refs(mirror) == {}
    assert text == (
        f"envflow: 127.0.0.1 refused the username {HTTP_USER} and its password; "
        "check envflow:credentials:username and password"
    )
    assert git_http.server.refused >= 1
    assert "n0t-the-t0ken" not in caplog.text
    assert remote.refs() == before


def test_plain_http_gets_no_credentials_unless_allowed(remote, git_http, tmp_path):
    with mirror_for(git_http.url("automation.git"), tmp_path) as mirror:
        assert fails(mirror) == (
            "envflow: 127.0.0.1 asks for credentials over plain http, which would send them unencrypted; "
            "use https, or set envflow:credentials:allow_http: true"
        )


def test_a_token_in_an_http_url_is_scrubbed_from_a_refusal(remote, git_http, tmp_path):
    url = git_http.url("automation.git").replace("http://", f"http://{HTTP_USER}:wr0ng-url-t0ken@")
    with mirror_for(url, tmp_path, {"allow_http": True}) as mirror:
        text = fails(mirror)
    assert "wr0ng-url-t0ken" not in text
    assert text.startswith("envflow: 127.0.0.1 refused the username envflow and its password")


def test_https_with_an_internal_ca(remote, git_http, tmp_path):
    ca, certificate, key = make_ca_and_certificate(tmp_path / "tls")
    git_http.use_tls(certificate, key)
    url = git_http.url("automation.git")
    assert url.startswith("https://")
    credentials = {"username": HTTP_USER, "password": HTTP_PASSWORD}
    with mirror_for(url, tmp_path, credentials) as mirror:
        assert fails(mirror) == (
            "envflow: the TLS certificate of 127.0.0.1 is not trusted; if an internal CA signed it, "
            "give that CA as envflow:credentials:ca_bundle"
        )
        assert mirror_refs(mirror) == {}
    with mirror_for(url, tmp_path, {**credentials, "ca_bundle": ca}) as mirror:
        mirror.fetch()
        assert str(mirror.tip("develop")) == remote.tip("develop")
        new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
        mirror.fetch()
        mirror.update_branch("stage", mirror.tip("stage"), pygit2.Oid(hex=new))
    assert remote.tip("stage") == new


def test_a_missing_ca_bundle_is_refused(remote, git_http, tmp_path):
    credentials = {"username": HTTP_USER, "password": HTTP_PASSWORD, "ca_bundle": str(tmp_path / "nope.pem")}
    with mirror_for(git_http.url("automation.git").replace("http:", "https:"), tmp_path, credentials) as mirror:
        assert fails(mirror) == f"envflow:credentials:ca_bundle: {tmp_path / 'nope.pem'} is not a file"


# timeouts


@pytest.mark.parametrize("scheme", ["ssh", "http"])
def test_a_server_that_never_answers_fails_within_the_timeout_and_releases_the_lock(scheme, remote, ssh_keys, tmp_path):
    silent = SilentServer().start()
    try:
        if scheme == "ssh":
            hosts = tmp_path / "known_hosts"
            hosts.write_text("", encoding="utf-8")
            url = f"ssh://git@127.0.0.1:{silent.port}{remote.path}"
            credentials = {"ssh_key": ssh_keys.plain, "known_hosts": str(hosts)}
        else:
            url = f"http://127.0.0.1:{silent.port}/automation.git"
            credentials = None
        with mirror_for(url, tmp_path, credentials, timeout=2) as mirror:
            started = time.monotonic()
            text = fails(mirror)
            elapsed = time.monotonic() - started
            assert text == (
                f"envflow: cannot fetch {url.replace('git@', '***@')}: "
                "127.0.0.1 did not answer within 2s (envflow:timeout); "
                "check that the server is up and reachable, or raise envflow:timeout"
            )
            assert elapsed < 20  # two seconds asked; far below what a hung connection would take
            assert silent.accepted
            # The lock is free at once, and the next run fails the same way, not as busy.
            with mirror.locked():
                pass
            assert "did not answer within 2s" in fails(mirror)
    finally:
        silent.stop()


def test_the_next_run_after_a_timeout_works(remote, ssh_keys, tmp_path):
    """The same URL (same mirror, same lock) times out, then works once a real sshd listens on its port."""
    from tests.conftest import _need_sshd  # pylint: disable=import-outside-toplevel

    _need_sshd()
    silent = SilentServer().start()
    port = silent.port
    server = SshServer(tmp_path / "sshd", authorize=[ssh_keys.plain], port=port)
    hosts = tmp_path / "known_hosts"
    hosts.write_text(server.known_hosts_line(), encoding="utf-8")
    url = server.url(remote.path)
    credentials = {"ssh_key": ssh_keys.plain, "known_hosts": str(hosts)}
    try:
        with mirror_for(url, tmp_path, credentials, timeout=2) as mirror:
            assert "did not answer within 2s" in fails(mirror)
        silent.stop()
        server.start()
        with mirror_for(url, tmp_path, credentials, timeout=2) as mirror:
            mirror.fetch()
            assert str(mirror.tip("develop")) == remote.tip("develop")
    finally:
        silent.stop()
        server.stop()


def test_every_secret_read_is_scrubbed_from_a_runners_unexpected_error():
    """A runner's catch-all reports an exception's text: no passphrase or password read in this process is in it."""
    from envflow.access import Credentials, scrub_held  # pylint: disable=import-outside-toplevel

    tokens = {"sdb://vault/token": "t0ken-from-sdb-4242"}
    Credentials(password="sdb://vault/token", resolve=lambda uri, key: tokens[uri]).resolved()
    Credentials(ssh_passphrase="plain-passphrase-77").resolved()
    text = "boom near t0ken-from-sdb-4242 and plain-passphrase-77 in a message"
    assert scrub_held(text) == "boom near *** and *** in a message"


def test_a_push_to_a_server_that_stops_answering_fails_within_the_timeout_and_moves_nothing(remote, ssh_keys, tmp_path):
    """Fetched from a real sshd, then the port answers nothing: the compare-and-swap push times out in one line."""
    from tests.conftest import _need_sshd  # pylint: disable=import-outside-toplevel

    _need_sshd()
    probe = SilentServer().start()
    port = probe.port
    probe.stop()
    server = SshServer(tmp_path / "sshd", authorize=[ssh_keys.plain], port=port)
    hosts = tmp_path / "known_hosts"
    hosts.write_text(server.known_hosts_line(), encoding="utf-8")
    url = server.url(remote.path)
    credentials = {"ssh_key": ssh_keys.plain, "known_hosts": str(hosts)}
    new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    before = remote.tip("stage")
    silent = None
    try:
        server.start()
        with mirror_for(url, tmp_path, credentials, timeout=2) as mirror:
            mirror.fetch()
            server.stop()
            silent = SilentServer(port=port).start()
            started = time.monotonic()
            text = fails(mirror, lambda: mirror.update_branch("stage", mirror.tip("stage"), pygit2.Oid(hex=new)))
            assert time.monotonic() - started < 20
            assert "did not answer within 2s (envflow:timeout)" in text, text
            assert text.startswith("envflow: cannot push stage to ")
            with mirror.locked():
                pass
        assert remote.tip("stage") == before
    finally:
        server.stop()
        if silent is not None:
            silent.stop()
