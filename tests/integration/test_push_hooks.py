"""Deploys on push: real salt-api (rest_cherrypy over TLS), a real master running the shipped reactor, a minion.

One site for the module: a master whose config holds the shipped
docs/pipelines/push.conf (the reactor SLS where this test copied it, salt-api
on a free loopback port with a certificate the test made), a minion, and
salt-api. Requests are signed exactly as GitHub, Gitea, Forgejo, GitLab and
envflow's post-receive hook sign them (tests/hooksign.py) and POSTed over
HTTPS. Each test reads what it needs from the state the others left.
"""

import json
import os
import pathlib
import shutil
import subprocess
import time
import uuid

import pytest
import yaml
from saltfactories.utils import random_string

from envflow.remote import Mirror
from tests import gitrepo, hooksign, servers
from tests.integration.conftest import (
    CLI_TIMEOUT,
    LOG_FILE_LEVEL,
    MASTER_TIMEOUTS,
    MOTD,
    PIPELINES,
    SALT_FILE_LIST_CACHE_TIME,
    Site,
    fits_unix_sockets,
    fresh_motd,
    motd,
    ok,
    running,
    wait_for,
)

SECRET = f"envflow-hook-secret-{uuid.uuid4().hex}"
MAX_BODY = 64 * 1024


class PushSite(Site):
    """A :class:`Site` with salt-api: ``post()`` sends a request to its ``/hook/envflow`` over HTTPS."""

    def __init__(self, *args, api, url, cafile):
        super().__init__(*args)
        self.api, self.url, self.cafile = api, url, cafile

    def post(self, headers, body):
        status, text = hooksign.post(self.url, headers, body, cafile=self.cafile)
        assert status == 200, (status, text)
        return text

    def mirror_tip(self, branch):
        """The commit envflow's mirror on the master holds for ``branch`` (what it last fetched)."""
        with Mirror(self.envflow["repo"], self.master.config["cachedir"]) as mirror:
            return str(mirror.tip(branch)) if mirror.tip(branch) is not None else None

    def log(self):
        with open(self.master.config["log_file"], encoding="utf-8", errors="replace") as handle:
            return handle.read()


def _repo_files(out):
    web = (
        f"envflow-motd:\n  file.managed:\n    - name: {out}\n    - source: salt://web/motd.txt\n    - makedirs: True\n"
    )
    return {"top.sls": "test:\n  'nobody':\n    - web\n", "web/init.sls": web, MOTD: motd("initial")}


def _master_overrides(work, envflow, tls):
    """The shipped push.conf, with the reactor SLS where this test copied it and salt-api on loopback over TLS."""
    _ca, cert, key = tls
    shutil.copytree(PIPELINES / "reactor", work / "reactor")
    shipped = yaml.safe_load((PIPELINES / "push.conf").read_text(encoding="utf-8"))
    shipped["reactor"] = [
        {tag: [str(work / "reactor" / os.path.basename(sls)) for sls in files]}
        for entry in shipped["reactor"]
        for tag, files in entry.items()
    ]
    shipped["rest_cherrypy"].update(port=servers.free_port(), host="127.0.0.1", ssl_crt=cert, ssl_key=key)
    shipped["envflow"] = {**envflow, "webhook": {**shipped["envflow"]["webhook"], "secret": SECRET, "max_body": "64k"}}
    return shipped


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return servers.make_ca_and_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory, tls):
    """A master with the shipped push config, salt-api and a minion; every environment deployed once."""
    master_id = random_string("m-", uppercase=False)
    minion_id = random_string("n-", uppercase=False)
    work = tmp_path_factory.mktemp("push")
    out = work / "out" / "motd.txt"
    remote = gitrepo.Remote(work / "git", files=_repo_files(out))
    master_root = pathlib.Path(salt_factories.root_dir) / master_id
    state_tree = master_root / "state-tree"
    envflow = gitrepo.config(remote.path, state_tree)
    base = state_tree / "base"
    file_roots = {"base": [str(base)], **{env["name"]: [env["path"]] for env in envflow["environments"]}}
    shipped = _master_overrides(work, envflow, tls)
    master = fits_unix_sockets(
        salt_factories.salt_master_daemon(
            master_id,
            defaults={"root_dir": str(master_root), "file_roots": file_roots},
            overrides={
                **MASTER_TIMEOUTS,
                **shipped,
                "fileserver_list_cache_time": SALT_FILE_LIST_CACHE_TIME,
                # Debug: the master's log is searched for the secret.
                "log_level_logfile": "debug",
            },
        )
    )
    minion = fits_unix_sockets(master.salt_minion_daemon(minion_id, overrides=LOG_FILE_LEVEL))
    api = master.salt_api_daemon()
    url = f"https://127.0.0.1:{shipped['rest_cherrypy']['port']}/hook/envflow"
    with running(master, minion), api.started():
        started = PushSite(master, minion, remote, shipped["envflow"], base, out, api=api, url=url, cafile=tls[0])
        assert sorted(ok(started.run("envflow.refresh"))["environments"]) == ["prod", "stage", "test"]
        yield started


def _pushed_jobs(event_listener, site, since, count):
    """The returns of the first ``count`` ``envflow.pushed`` runner jobs started since ``since``, as they end."""

    def finished():
        events = event_listener.get_events([(site.master.id, "salt/run/*/ret")], after_time=since)
        found = [event.data for event in events if event.data.get("fun") == "runner.envflow.pushed"]
        return found if len(found) >= count else None

    found = wait_for(finished)
    assert found, f"fewer than {count} envflow.pushed jobs ended"
    return found


def _deployed_events(event_listener, site, env, since):
    return [
        event.data
        for event in event_listener.get_events([(site.master.id, f"salt/envflow/{env}/deployed")], after_time=since)
    ]


@pytest.mark.parametrize("sender", ["github", "gitea", "forgejo", "gitlab"])
def test_a_signed_push_is_served_and_the_minion_reads_it(site, event_listener, sender):
    content = fresh_motd(sender)
    commit = site.remote.commit("develop", {MOTD: content}, f"{sender} change")
    ref = "refs/heads/develop"
    signed = {
        "github": lambda: hooksign.github(SECRET, ref, commit, pusher="alice"),
        "gitea": lambda: hooksign.gitea(SECRET, ref, commit, pusher="alice"),
        "forgejo": lambda: hooksign.gitea(SECRET, ref, commit, forgejo=True, pusher="alice"),
        "gitlab": lambda: hooksign.gitlab(SECRET, ref, commit, user="alice"),
    }[sender]
    start = time.time()
    site.post(*signed())
    assert wait_for(lambda: site.deployed("test") == commit), "the push was not served"
    assert site.minion_reads(MOTD, saltenv="test") == content
    [job] = _pushed_jobs(event_listener, site, start, 1)
    assert job["success"] is True and "retcode" not in job["return"], job
    entry = job["return"]["environments"]["test"]
    assert entry["handed_off"] is False and [deploy["new"] for deploy in entry["deploys"]] == [commit]
    assert job["return"]["sender"] == "127.0.0.1"
    [event] = _deployed_events(event_listener, site, "test", start)
    assert event["new"] == commit
    history = gitrepo.git("log", "-1", "--format=%s", "refs/envflow/history", cwd=site.remote.path)
    assert history.startswith("deployed test") and f"by alice (push from {sender})" in history, history
    assert site.deployed("stage") != commit


def test_a_plain_git_server_post_receive_hook_serves_a_push_of_two_branches(site, tmp_path):
    """The shipped post-receive hook, installed in the bare repository, signs and posts each push."""
    hook = pathlib.Path(site.remote.path) / "hooks" / "post-receive"
    shutil.copy(PIPELINES / "post-receive", hook)
    hook.chmod(0o755)
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    secret_file.chmod(0o600)
    for key, value in (
        ("envflow.hookUrl", site.url),
        ("envflow.secretFile", secret_file),
        ("envflow.caFile", site.cafile),
    ):
        gitrepo.git("config", key, str(value), cwd=site.remote.path)
    try:
        content = fresh_motd("plain")
        gitrepo.git("fetch", "-q", "origin", cwd=site.remote.work)
        gitrepo.git("checkout", "-q", "-B", "develop", "origin/develop", cwd=site.remote.work)
        site.remote.write({MOTD: content})
        gitrepo.git("commit", "-q", "-am", "plain push", cwd=site.remote.work)
        done = subprocess.run(
            ["git", "push", "origin", "HEAD:refs/heads/develop", "HEAD:refs/heads/stage"],
            cwd=site.remote.work,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **gitrepo._GIT_ENV},  # pylint: disable=protected-access
        )
        assert f"envflow: post-receive: notified {site.url}" in done.stderr, done.stderr
        commit = site.remote.tip("develop")
        assert wait_for(lambda: site.deployed("test") == commit and site.deployed("stage") == commit)
        assert site.minion_reads(MOTD, saltenv="stage") == content
    finally:
        hook.unlink()


def _bad_requests(commit):
    ref = "refs/heads/develop"
    github = hooksign.github(SECRET, ref, commit)
    unsigned = {key: value for key, value in github[0].items() if not key.startswith("X-Hub-Signature")}
    not_json = b"this is not json"
    no_ref = json.dumps({"before": hooksign.ZERO, "after": commit}).encode()
    too_big = json.dumps({"ref": ref, "after": commit, "padding": "x" * (MAX_BODY + 1)}).encode()

    def signed(body, content_type="application/json"):
        return {**hooksign.plain(SECRET, [])[0], "Content-Type": content_type, "X-Envflow-Signature": _sig(body)}, body

    return {
        "missing signature": (
            (unsigned, github[1]),
            "the request from github carries no X-Hub-Signature-256; set the webhook's secret on the git server to "
            "envflow:webhook:secret",
        ),
        "wrong signature": (
            hooksign.github("not-the-secret", ref, commit),
            "wrong X-Hub-Signature-256: the request was not signed with envflow:webhook:secret; give the git "
            "server's webhook the same secret",
        ),
        "wrong token": (
            hooksign.gitlab("not-the-secret", ref, commit),
            "wrong X-Gitlab-Token: the request was not signed with envflow:webhook:secret; give the git server's "
            "webhook the same secret",
        ),
        "unknown sender": (
            ({"Content-Type": "application/json"}, github[1]),
            "unknown sender: the request has none of the headers GitHub, GitLab, Gitea, Forgejo or envflow's "
            "post-receive hook send; point only those at /hook/envflow",
        ),
        "not JSON": (
            signed(not_json, "text/plain"),
            "the body is not JSON; send the git server's push payload as application/json",
        ),
        "no ref": (
            signed(no_ref),
            'the body names no ref; send {"refs": [{"ref": ..., "after": ...}]}',
        ),
        "too large": (
            signed(too_big),
            f"the body is {len(too_big)} bytes, over envflow:webhook:max_body ({MAX_BODY}); raise max_body if the "
            "git server's pushes are that large",
        ),
    }


def _sig(body):
    import hashlib  # pylint: disable=import-outside-toplevel
    import hmac  # pylint: disable=import-outside-toplevel

    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "case", ["missing signature", "wrong signature", "wrong token", "unknown sender", "not JSON", "no ref", "too large"]
)
def test_a_refused_request_fetches_and_deploys_nothing(site, event_listener, case):
    served, fetched = site.deployed("test"), site.mirror_tip("develop")
    refs = site.remote.refs()
    commit = site.remote.commit("develop", {MOTD: fresh_motd("refused")}, "not hooked")
    (headers, body), reason = _bad_requests(commit)[case]
    start = time.time()
    site.post(headers, body)
    matched = event_listener.wait_for_events(
        [(site.master.id, "salt/envflow/hook/refused")], after_time=start, timeout=CLI_TIMEOUT
    )
    assert matched.found_all_events, matched.missed
    [event] = list(matched)
    data = {key: value for key, value in event.data.items() if key != "_stamp"}
    assert data["reason"] == reason and data["sender"] == "127.0.0.1", data
    line = f"envflow: refused a push hook from 127.0.0.1: {reason}"
    assert wait_for(lambda: line in site.log()), f"not logged: {line}"
    assert site.deployed("test") == served and site.mirror_tip("develop") == fetched
    assert {ref: sha for ref, sha in site.remote.refs().items() if ref != "refs/heads/develop"} == {
        ref: sha for ref, sha in refs.items() if ref != "refs/heads/develop"
    }
    assert not _pushed_jobs_since(event_listener, site, start)


def _pushed_jobs_since(event_listener, site, since):
    return [
        event
        for event in event_listener.get_events([(site.master.id, "salt/run/*/new")], after_time=since)
        if event.data.get("fun") == "runner.envflow.pushed"
    ]
