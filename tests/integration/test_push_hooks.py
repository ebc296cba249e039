"""Deploys on push: real salt-api (rest_cherrypy over TLS), a real master running the shipped reactor, a minion.

One site for the module: a master whose config holds the shipped
docs/pipelines/push.conf (the reactor SLS where this test copied it, salt-api
on a free loopback port with a certificate the test made), a minion, and
salt-api. Requests are signed exactly as GitHub, Gitea, Forgejo, GitLab and
envflow's post-receive hook sign them (tests/hooksign.py) and POSTed over
HTTPS. Each test reads what it needs from the state the others left.
"""

import concurrent.futures
import json
import os
import pathlib
import re
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
    MASTER_WORKERS,
    MOTD,
    PIPELINES,
    SALT_FILE_LIST_CACHE_TIME,
    Site,
    _at_once,
    fits_unix_sockets,
    fresh_motd,
    minion_of,
    motd,
    ok,
    running,
    stopping,
    wait_for,
)

SECRET = f"envflow-hook-secret-{uuid.uuid4().hex}"
# The logger's name in a line of Salt's log files: ``[time][name:line][LEVEL   ][process] message``.
LOGGER = re.compile(r"^\[[^\]]*\]\[([^:\]]+)")
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
    shipped["envflow"] = {**envflow, "webhook": {"secret": SECRET, "max_body": "64k"}}
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
                **MASTER_WORKERS,
                **shipped,
                "fileserver_list_cache_time": SALT_FILE_LIST_CACHE_TIME,
                # Debug: the master's log is searched for the secret.
                "log_level_logfile": "debug",
            },
        )
    )
    minion = minion_of(master, minion_id, LOG_FILE_LEVEL)
    api = master.salt_api_daemon()
    url = f"https://127.0.0.1:{shipped['rest_cherrypy']['port']}/hook/envflow"
    since = time.time()
    with running(master, minion, api):
        started = PushSite(master, minion, remote, shipped["envflow"], base, out, api=api, url=url, cafile=tls[0])
        started.since = since
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


def _job_seconds(event_listener, site, since):
    """How long each ``envflow.pushed`` job since ``since`` ran, from its ``new`` to its ``ret`` event, in the
    order of :func:`_pushed_jobs` (the ``ret`` events as they came)."""
    started = {
        event.data["jid"]: event.stamp
        for event in event_listener.get_events([(site.master.id, "salt/run/*/new")], after_time=since)
        if event.data.get("fun") == "runner.envflow.pushed"
    }
    ended = [
        event
        for event in event_listener.get_events([(site.master.id, "salt/run/*/ret")], after_time=since)
        if event.data.get("fun") == "runner.envflow.pushed"
    ]
    return [(event.stamp - started[event.data["jid"]]).total_seconds() for event in ended]


def _deployed_events(event_listener, site, env, since):
    """The data of the ``salt/envflow/<env>/deployed`` events since ``since``, in the order they were fired."""
    events = event_listener.get_events([(site.master.id, f"salt/envflow/{env}/deployed")], after_time=since)
    return [event.data for event in sorted(events, key=lambda event: event.stamp)]


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


def test_a_replayed_old_payload_never_rewinds(site, event_listener):
    old = site.remote.commit("develop", {MOTD: fresh_motd("old")}, "old")
    first = hooksign.github(SECRET, "refs/heads/develop", old)
    site.post(*first)
    assert wait_for(lambda: site.deployed("test") == old)
    new = site.remote.commit("develop", {MOTD: fresh_motd("new")}, "new")
    site.post(*hooksign.github(SECRET, "refs/heads/develop", new, before=old))
    assert wait_for(lambda: site.deployed("test") == new)
    entries = gitrepo.git("rev-list", "--count", "refs/envflow/history", cwd=site.remote.path)
    start = time.time()
    site.post(*first)  # the same delivery again, signature and all
    [job] = _pushed_jobs(event_listener, site, start, 1)
    assert job["success"] is True and "retcode" not in job["return"], job
    [deploy] = job["return"]["environments"]["test"]["deploys"]
    assert (deploy["old"], deploy["new"], deploy["changed"]) == (new, new, False)
    assert site.deployed("test") == new
    assert gitrepo.git("rev-list", "--count", "refs/envflow/history", cwd=site.remote.path) == entries


def test_tags_deleted_branches_and_unserved_branches_deploy_nothing(site, event_listener):
    served = {env: site.deployed(env) for env in ("test", "stage", "prod")}
    site.remote.set_branch("feature/x", served["test"])
    commit = site.remote.commit("feature/x", {MOTD: fresh_motd("feature")}, "feature")
    gitrepo.git("tag", "v1", commit, cwd=site.remote.path)
    start = time.time()
    site.post(*hooksign.github(SECRET, "refs/heads/feature/x", commit))
    site.post(*hooksign.github(SECRET, "refs/tags/v1", commit))
    site.post(*hooksign.github(SECRET, "refs/heads/develop", hooksign.ZERO, before=served["test"], deleted=True))
    site.post(*hooksign.gitlab(SECRET, "refs/heads/stage", hooksign.ZERO, before=served["stage"]))
    site.post(*hooksign.github(SECRET, "refs/heads/develop", commit, event="ping"))
    # The reactor handles events in order: once a later push's job ends, the five above were handled.
    site.post(*hooksign.plain(SECRET, [("refs/heads/master", served["prod"], served["prod"])]))
    [job] = _pushed_jobs(event_listener, site, start, 1)
    assert job["return"]["branches"] == ["master"] and list(job["return"]["environments"]) == ["prod"]
    assert len(_pushed_jobs_since(event_listener, site, start)) == 1
    assert {env: site.deployed(env) for env in served} == served
    assert all(os.path.isdir(path) for path in site.paths.values())
    assert "refs/heads/develop" in site.remote.refs()
    log = site.log()
    for line in (
        "github push from 127.0.0.1: no environment serves refs/heads/feature/x; nothing deployed",
        "github push from 127.0.0.1: refs/tags/v1 is not a branch; nothing deployed",
        "github push from 127.0.0.1: refs/heads/develop deleted, which deletes nothing; nothing deployed",
        "gitlab push from 127.0.0.1: refs/heads/stage deleted, which deletes nothing; nothing deployed",
        "github ping from 127.0.0.1: not a push; nothing deployed",
    ):
        assert f"envflow: {line}" in log, line
    assert not event_listener.get_events([(site.master.id, "salt/envflow/hook/refused")], after_time=start)


def test_a_burst_of_twenty_pushes_serves_the_newest_tip_with_few_deploys(site, event_listener):
    """Twenty pushes to develop within about a second, each followed by its hook, as a git server sends them."""
    work = site.remote.work
    gitrepo.git("fetch", "-q", "origin", cwd=work)
    gitrepo.git("checkout", "-q", "-B", "develop", "origin/develop", cwd=work)
    commits = []
    for number in range(20):
        site.remote.write({MOTD: fresh_motd(f"burst{number}")})
        gitrepo.git("commit", "-q", "-am", f"burst {number}", cwd=work)
        commits.append(gitrepo.git("rev-parse", "HEAD", cwd=work))
    start, before = time.time(), site.deployed("test")
    with concurrent.futures.ThreadPoolExecutor(4) as posting:
        for previous, commit in zip([before, *commits[:-1]], commits, strict=True):
            gitrepo.git("push", "-q", "origin", f"{commit}:refs/heads/develop", cwd=work)
            posting.submit(site.post, *hooksign.github(SECRET, "refs/heads/develop", commit, before=previous))
    pushed_in = time.time() - start
    assert wait_for(lambda: site.deployed("test") == commits[-1]), "the newest tip was not served"
    jobs = _pushed_jobs(event_listener, site, start, 20)
    assert all(job["success"] is True and "retcode" not in job["return"] for job in jobs), jobs
    entries = [job["return"]["environments"]["test"] for job in jobs]
    deploys = sum(len(entry["deploys"]) for entry in entries)
    handed_off = sum(entry["handed_off"] for entry in entries)
    changed = sorted(deploy["new"] for entry in entries for deploy in entry["deploys"] if deploy["changed"])
    events = _deployed_events(event_listener, site, "test", start)
    assert sorted(event["new"] for event in events) == changed
    # Every deploy served a newer commit than the one before it: none ran again on a stale tip.
    order = [commits.index(event["new"]) for event in events]
    assert order == sorted(set(order)) and order[-1] == 19, order
    assert [event["old"] for event in events[1:]] == [event["new"] for event in events[:-1]]
    assert deploys < 20, deploys
    # How long each job held a reactor thread: a job handed off returns at once, it never waits for the lock.
    held = _job_seconds(event_listener, site, start)
    quick = max(
        seconds for job, seconds in zip(jobs, held, strict=True) if job["return"]["environments"]["test"]["handed_off"]
    )
    print(
        f"\nburst: 20 pushes in {pushed_in:.2f}s; {len(events)} deploys changed test, {deploys} deploys in all, "
        f"{handed_off} of 20 jobs handed off (each held its reactor thread {quick * 1000:.0f} ms at most), "
        f"the deploying jobs {max(held) * 1000:.0f} ms at most"
    )


def test_a_flood_of_bad_requests_does_not_stop_a_good_push(site, event_listener):
    """500 requests with a wrong signature, as fast as eight senders can post them, then a genuine push."""
    bad = site.remote.commit("develop", {MOTD: fresh_motd("flood")}, "flood")
    forged = hooksign.github("guessed-secret", "refs/heads/develop", bad)
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(8) as senders:
        statuses = list(
            senders.map(lambda _number: hooksign.post(site.url, *forged, cafile=site.cafile)[0], range(500))
        )
    flooded = time.time() - start
    # Every request is taken: push.conf's thread_pool: 1 keeps salt-api's /hook working under concurrent requests.
    assert statuses == [200] * 500, {status: statuses.count(status) for status in set(statuses)}
    content = fresh_motd("after-flood")
    good = site.remote.commit("develop", {MOTD: content}, "after the flood")
    posted = time.time()
    site.post(*hooksign.github(SECRET, "refs/heads/develop", good, before=bad))
    assert wait_for(lambda: site.deployed("test") == good, interval=0.01), "the good push was not served"
    served_in = time.time() - posted
    assert site.minion_reads(MOTD, saltenv="test") == content

    # The events reach this process after the master fired them, the good push's deploy may well come first.
    def refused_since():
        return event_listener.get_events([(site.master.id, "salt/envflow/hook/refused")], after_time=start)

    assert wait_for(lambda: len(refused_since()) >= 500), f"{len(refused_since())} refusals seen of 500"
    refused = refused_since()
    assert len(refused) == 500 and {event.data["reason"].split(":")[0] for event in refused} == {
        "wrong X-Hub-Signature-256"
    }
    # The deploy event comes once the new tree is served: wait for it, then look at every deploy since the flood.
    assert wait_for(lambda: _deployed_events(event_listener, site, "test", start))
    assert [event["new"] for event in _deployed_events(event_listener, site, "test", start)] == [good]
    print(
        f"\nflood: 500 forged requests from 8 senders taken and refused in {flooded:.2f}s; "
        f"the good push then served in {served_in:.2f}s"
    )


def test_the_secret_is_in_no_log_event_or_job_but_gitlabs_own_hook_events(site, event_listener):
    """GitLab sends the secret itself as X-Gitlab-Token: salt-api puts it in the hook event, and only there."""
    gitlab_events = 0
    for event in event_listener.get_events([(site.master.id, "*")], after_time=site.since):
        text = json.dumps(event.full_data, default=str)
        if SECRET not in text:
            continue
        assert event.tag == "salt/netapi/hook/envflow", event.tag
        headers = event.data["headers"]
        assert headers.get("X-Gitlab-Token") == SECRET, headers
        assert SECRET not in json.dumps({**event.data, "headers": {**headers, "X-Gitlab-Token": ""}}, default=str)
        gitlab_events += 1
    assert gitlab_events, "no GitLab hook event was seen: the search above looked at nothing that held the secret"
    searched = 0
    for root, _dirs, files in os.walk(site.master.config["cachedir"]):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                content = handle.read()
            assert SECRET.encode() not in content, os.path.join(root, name)
            searched += b"envflow.pushed" in content
    assert searched, "the job cache holds no envflow.pushed job: the search above found nothing to search"
    # At debug level the hook event itself is logged, with GitLab's token in its headers: by salt-api when it
    # fires it, and in the master by salt-factories' event forwarder (the tests' own engine). Nothing else may.
    api_logfile = os.path.join(site.api.config["root_dir"], site.api.config["api_logfile"])
    with open(api_logfile, encoding="utf-8", errors="replace") as handle:
        api_log = handle.read()
    for log in (site.log(), api_log):
        assert "][DEBUG" in log
        leaked = [line for line in log.splitlines() if SECRET in line]
        loggers = [LOGGER.match(line) for line in leaked]
        assert all(loggers) and not any(found.group(1).strip().startswith("envflow") for found in loggers), leaked
        assert all("salt/netapi/hook/envflow" in line for line in leaked), [line[:300] for line in leaked]
    assert "envflow: refused a push hook" in site.log()


def test_without_a_secret_every_request_is_refused(site, event_listener):
    """The last test of the module: the master and salt-api start again with the secret left out."""
    _at_once(stopping(site.api, site.master))
    written = yaml.safe_load(pathlib.Path(site.master.config_file).read_text(encoding="utf-8"))
    written["envflow"]["webhook"].pop("secret")
    pathlib.Path(site.master.config_file).write_text(yaml.safe_dump(written), encoding="utf-8")
    site.master.start()
    site.api.start()
    served, fetched = site.deployed("test"), site.mirror_tip("develop")
    commit = site.remote.commit("develop", {MOTD: fresh_motd("no-secret")}, "no secret")
    start = time.time()
    site.post(*hooksign.github(SECRET, "refs/heads/develop", commit))
    matched = event_listener.wait_for_events(
        [(site.master.id, "salt/envflow/hook/refused")], after_time=start, timeout=CLI_TIMEOUT
    )
    assert matched.found_all_events, matched.missed
    [event] = list(matched)
    reason = (
        "no secret is configured, so no push can be verified; set envflow:webhook:secret (a string or an sdb:// "
        "URI) and give the git server's webhook the same secret"
    )
    assert event.data["reason"] == reason and event.data["source"] is None
    assert wait_for(lambda: f"envflow: refused a push hook from 127.0.0.1: {reason}" in site.log())
    assert site.deployed("test") == served and site.mirror_tip("develop") == fetched
