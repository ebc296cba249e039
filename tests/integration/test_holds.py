"""Rollbacks, pins and freezes on a real master and minion, announced in a chat by the shipped reactor.

One site for the module (starting one costs more than the checks): a master
whose config holds the shipped docs/pipelines/reactor-notify.conf, its
webhook pointed at a local HTTP listener (tests/webhook.py), and a minion the
top file puts in ``prod``. Each test takes what it needs from the state the
others left: it reads the commits served instead of assuming them.
"""

import json
import os
import pathlib
import shutil
import time

import pytest
import yaml
from saltfactories.utils import random_string

from tests import gitrepo
from tests.integration.conftest import (
    CLI_TIMEOUT,
    MASTER_TIMEOUTS,
    MASTER_WORKERS,
    MOTD,
    PIPELINES,
    SALT_FILE_LIST_CACHE_TIME,
    Site,
    fits_unix_sockets,
    fresh_motd,
    minion_of,
    motd,
    ok,
    running,
    wait_for,
)
from tests.webhook import Webhook


@pytest.fixture(scope="module")
def hook():
    """The chat's incoming webhook, on loopback."""
    with Webhook() as listening:
        yield listening


def _repo_files(minion_id, out):
    """A top file putting ``minion_id`` in prod, and a state writing ``web/motd.txt`` of its saltenv to ``out``."""
    top = f"test:\n  'test-*':\n    - web\nstage:\n  'stage-*':\n    - web\nprod:\n  '{minion_id}':\n    - web\n"
    web = (
        f"envflow-motd:\n  file.managed:\n    - name: {out}\n    - source: salt://web/motd.txt\n    - makedirs: True\n"
    )
    return {"top.sls": top, "web/init.sls": web, MOTD: motd("initial")}


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory, hook):
    """A master with the shipped notification reactor and a prod minion; every environment deployed once."""
    master_id = random_string("m-", uppercase=False)
    minion_id = random_string("n-", uppercase=False)
    work = tmp_path_factory.mktemp("holds")
    out = work / "out" / "motd.txt"
    remote = gitrepo.Remote(work / "git", files=_repo_files(minion_id, out))
    master_root = pathlib.Path(salt_factories.root_dir) / master_id
    state_tree = master_root / "state-tree"
    envflow = gitrepo.config(remote.path, state_tree)
    base = state_tree / "base"
    file_roots = {"base": [str(base)], **{env["name"]: [env["path"]] for env in envflow["environments"]}}

    # The shipped reactor config, with the reactor SLS where this test copied it and the webhook's URL.
    shutil.copytree(PIPELINES / "reactor", work / "reactor")
    shipped = yaml.safe_load((PIPELINES / "reactor-notify.conf").read_text(encoding="utf-8"))
    shipped["reactor"] = [
        {tag: [str(work / "reactor" / os.path.basename(sls)) for sls in files]}
        for entry in shipped["reactor"]
        for tag, files in entry.items()
    ]
    shipped["slack"]["hook"] = hook.url
    master = fits_unix_sockets(
        salt_factories.salt_master_daemon(
            master_id,
            defaults={"root_dir": str(master_root), "file_roots": file_roots},
            overrides={
                **MASTER_TIMEOUTS,
                **MASTER_WORKERS,
                **shipped,
                "envflow": envflow,
                "fileserver_list_cache_time": SALT_FILE_LIST_CACHE_TIME,
                # Salt's default (salt-factories logs debug): what the log holds is checked for the URL.
                "log_level_logfile": "warning",
            },
        )
    )
    (base / "envflow_prod.sls").write_text("prod:\n  envflow.deployed:\n    - branch: master\n", encoding="utf-8")
    minion = minion_of(master, minion_id, {"envflow": {**envflow, "master_config": master.config_file}})
    with running(master, minion):
        started = Site(master, minion, remote, envflow, base, out)
        assert sorted(ok(started.run("envflow.refresh"))["environments"]) == ["prod", "stage", "test"]
        yield started


def _refused(ret):
    """Assert ``ret`` is a runner's one-line refusal (exit code and ``retcode`` 1); return the error."""
    assert ret.returncode == 1 and ret.data["retcode"] == 1, ret
    error = ret.data["error"]
    assert "\n" not in error and "Traceback" not in ret.stdout + ret.stderr, ret
    return error


def _history(site):
    """The remote's history entries, newest first, and its holds, read with plain git."""
    log = gitrepo.git("log", "--format=%B%x00", "refs/envflow/history", cwd=site.remote.path)
    entries = [json.loads(text.strip().partition("\n\n")[2]) for text in log.split("\0") if text.strip()]
    return entries, json.loads(gitrepo.git("show", "refs/envflow/history:holds.json", cwd=site.remote.path))


def _release(site, content, message, into=("stage", "prod")):
    """Commit ``content`` as the motd on develop, deploy it in test and promote it into ``into``; return it."""
    commit = site.remote.commit("develop", {MOTD: content}, message)
    ok(site.run("envflow.refresh", "test"))
    for env in into:
        assert ok(site.run("envflow.promote", env))["new"] == commit
    return commit


def _event(event_listener, site, tag, since):
    """The data of the one event ``tag`` the master fired since ``since``."""
    matched = event_listener.wait_for_events([(site.master.id, tag)], after_time=since, timeout=CLI_TIMEOUT)
    assert matched.found_all_events, matched.missed
    [event] = list(matched)
    return {key: value for key, value in event.data.items() if key != "_stamp"}


def _posted(hook, text):
    """Wait until the webhook received ``text``."""
    assert wait_for(lambda: text in hook.texts()), f"not posted: {text!r}; posted: {hook.texts()}"


def _no_secret_anywhere(site, hook, event_listener, since):
    """The webhook's token is in no event since ``since``, nowhere in the master's cache (job cache) nor its log."""
    for event in event_listener.get_events([(site.master.id, "*")], after_time=since):
        assert hook.token not in json.dumps(event.full_data, default=str), event.tag
    reactions = 0
    for root, _dirs, files in os.walk(site.master.config["cachedir"]):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                content = handle.read()
            assert hook.token.encode() not in content, os.path.join(root, name)
            reactions += b"slack.call_hook" in content
    assert reactions, "the job cache holds none of the reactions' jobs: the search above found nothing to search"
    with open(site.master.config["log_file"], encoding="utf-8", errors="replace") as handle:
        assert hook.token not in handle.read()


def test_a_rollback_serves_the_commit_before_pinned_until_unpinned(site, hook, event_listener):
    """Release v2 to prod; roll back: the minion reads v1, refresh/state/promote leave it; unpin: v2 again."""
    since = time.time()
    v1 = site.deployed("prod")
    assert v1 == site.remote.tip("master")
    first = site.minion_reads(MOTD, saltenv="prod")
    content = fresh_motd("v2")
    v2 = _release(site, content, "motd v2")
    assert site.minion_reads(MOTD, saltenv="prod") == content  # the master's caches know v2 now

    start = time.time()
    done = ok(site.run("envflow.rollback", "prod", "reason=500s on checkout after v2"))
    pin = done["pin"]
    who = pin["by"]
    assert (done["from"], done["to"], done["rolled_back"], pin["commit"]) == (v2, v1, True, v1), done
    assert done["deployed"]["refreshed"] == ["prod"], done
    # Through Salt: the file server's caches were cleared, the minion reads v1 and its highstate writes it.
    assert site.minion_reads(MOTD, saltenv="prod") == first
    applied = ok(site.call("state.apply"))
    assert [state["result"] for state in applied.values()] == [True], applied
    assert site.out.read_text(encoding="utf-8") == first
    assert site.remote.tip("master") == v2  # the branch stays the record of what was promoted
    entries, held = _history(site)
    assert held["prod"]["pin"] == pin
    assert (entries[0]["action"], entries[0]["from"], entries[0]["to"], entries[0]["by"]) == (
        "rolled_back",
        v2,
        v1,
        who,
    )
    status = ok(site.run("envflow.status", "prod"))["environments"]["prod"]
    assert (status["deployed"], status["remote"], status["in_sync"]) == (v1, v2, False), status
    assert _event(event_listener, site, "salt/envflow/prod/rolled_back", start) == {
        "env": "prod",
        "old": v2,
        "new": v1,
        "commit": v1,
        "by": who,
        "reason": "500s on checkout after v2",
    }

    # What would undo it leaves it alone and says why.
    pinned = f"envflow: prod is pinned to {v1[:10]} by {who} since {pin['at']}: 500s on checkout after v2"
    refreshed = ok(site.run("envflow.refresh", "prod"))["environments"]["prod"]
    assert (refreshed["changed"], refreshed["new"]) == (False, v1), refreshed
    assert refreshed["comment"] == (
        f"{pinned}; it serves that commit until salt-run envflow.unpin prod, or a promotion with force=True "
        "reason='<why>'"
    )
    (state,) = ok(site.call("state.apply", "envflow_prod", "saltenv=base")).values()
    assert (state["result"], state["changes"]) == (True, {}), state
    assert state["comment"].startswith(f"prod already serves {v1[:10]} (") and pinned in state["comment"], state
    refs = site.remote.refs()
    assert _refused(site.run("envflow.promote", "prod")) == (
        f"{pinned}; unpin it with salt-run envflow.unpin prod, or promote with force=True reason='<why>'"
    )
    assert site.remote.refs() == refs and site.deployed("prod") == v1

    lifted = ok(site.run("envflow.unpin", "prod", "reason=fixed in the load balancer"))
    assert (lifted["changed"], lifted["pin"]) == (True, pin), lifted
    assert "prod" not in _history(site)[1]
    back = ok(site.run("envflow.refresh", "prod"))["environments"]["prod"]
    assert (back["old"], back["new"], back["changed"]) == (v1, v2, True) and "pinned" not in back, back
    assert site.minion_reads(MOTD, saltenv="prod") == content
    assert _event(event_listener, site, "salt/envflow/prod/unpinned", start) == {
        "env": "prod",
        "commit": v1,
        "by": who,
        "reason": "fixed in the load balancer",
    }

    _posted(
        hook,
        f"envflow: prod rolled back from {v2[:10]} to {v1[:10]}, pinned there, by {who}: 500s on checkout after v2",
    )
    _posted(hook, f"envflow: prod unpinned (it was pinned to {v1[:10]}) by {who}: fixed in the load balancer")
    _posted(hook, f"envflow: prod promoted: master {v1[:10]} -> {v2[:10]} by {who}")
    _no_secret_anywhere(site, hook, event_listener, since)


def test_a_freeze_refuses_promotions_and_refreshes_until_thawed(site, hook, event_listener):
    """Freeze stage: promote and refresh refused in one line, changing nothing; forced, recorded; thawed."""
    since = time.time()
    before = site.deployed("stage")
    tested = _release(site, fresh_motd("v3"), "motd v3", into=())
    frozen = ok(site.run("envflow.freeze", "stage", "reason=load test running", "until=1h"))
    freeze = frozen["freeze"]
    who = freeze["by"]
    assert (frozen["changed"], freeze["reason"]) == (True, "load test running") and freeze["until"] > freeze["at"]
    assert _history(site)[1]["stage"]["freeze"]["until"] == freeze["until"]
    assert _event(event_listener, site, "salt/envflow/stage/frozen", since) == {
        "env": "stage",
        "by": who,
        "reason": "load test running",
        "until": freeze["until"],
    }

    line = f"stage is frozen by {who} since {freeze['at']} until {freeze['until']}: load test running"
    refs = site.remote.refs()
    assert _refused(site.run("envflow.promote", "stage")) == (
        f"envflow: {line}; thaw it with salt-run envflow.thaw stage, or promote with force=True reason='<why>'"
    )
    assert site.remote.refs() == refs and site.deployed("stage") == before
    # Someone pushes stage to what test serves: a refresh would serve it, and is refused.
    site.remote.set_branch("stage", tested)
    refs = site.remote.refs()
    assert _refused(site.run("envflow.refresh", "stage")) == (
        f"stage: envflow: {line}; thaw it with salt-run envflow.thaw stage, or deploy with force=True reason='<why>'"
    )
    assert site.remote.refs() == refs and site.deployed("stage") == before
    site.remote.set_branch("stage", before)  # the push undone

    start = time.time()
    forced = ok(site.run("envflow.promote", "stage", "force=True", "reason=the load test needs v3"))
    assert (forced["old"], forced["new"], forced["bypassed"]) == (before, tested, [f"freeze: {line}"]), forced
    assert _event(event_listener, site, "salt/envflow/stage/promoted", start) == {
        "env": "stage",
        "branch": "stage",
        "old": before,
        "new": tested,
        "by": who,
        "bypassed": [f"freeze: {line}"],
        "reason": "the load test needs v3",
    }
    assert site.minion_reads(MOTD, saltenv="stage") == site.show(tested, MOTD)
    entry = _history(site)[0][0]
    assert {key: entry[key] for key in ("action", "env", "from", "to", "by", "reason", "bypassed")} == {
        "action": "promoted",
        "env": "stage",
        "from": before,
        "to": tested,
        "by": who,
        "reason": "the load test needs v3",
        "bypassed": [f"freeze: {line}"],
    }
    assert _history(site)[1]["stage"]["freeze"] == freeze  # a bypass does not end it

    thawed = ok(site.run("envflow.thaw", "stage"))
    assert (thawed["changed"], thawed["freeze"]) == (True, freeze), thawed
    assert "stage" not in _history(site)[1]
    later = _release(site, fresh_motd("v4"), "motd v4", into=("stage",))
    assert site.deployed("stage") == later
    assert _event(event_listener, site, "salt/envflow/stage/thawed", since) == {
        "env": "stage",
        "by": who,
        "reason": None,
    }

    _posted(hook, f"envflow: stage frozen until {freeze['until']} by {who}: load test running")
    _posted(hook, f"envflow: stage thawed by {who}")
    _posted(
        hook,
        f"envflow: stage promoted (forced past its freeze): stage {before[:10]} -> {tested[:10]} by {who}: "
        "the load test needs v3",
    )
    _posted(hook, f"envflow: stage promoted: stage {tested[:10]} -> {later[:10]} by {who}")
    _no_secret_anywhere(site, hook, event_listener, since)


def test_pins_and_back_merges_are_posted_to_the_chat(site, hook, event_listener):
    """``pin`` and ``backport`` are announced too; the webhook's URL is nowhere in Salt's events, cache or log."""
    since = time.time()
    served = site.deployed("test")
    pinned = ok(site.run("envflow.pin", "test", "reason=demo at 10:00, hold test as it is"))
    who = pinned["pin"]["by"]
    assert (pinned["changed"], pinned["pin"]["commit"]) == (True, served), pinned
    hotfix = site.remote.commit("master", {"web/hotfix.txt": "urgent\n"}, "urgent hotfix")
    develop = site.remote.tip("develop")
    merged = ok(site.run("envflow.backport", "prod"))
    # A merge after the other tests moved develop on; a fast-forward when run alone.
    assert merged["kind"] in ("merge", "fast-forward") and merged["old"] == develop, merged
    assert merged["commits"] == [f"{hotfix[:10]} urgent hotfix"], merged
    _posted(hook, f"envflow: test pinned to {served[:10]} by {who}: demo at 10:00, hold test as it is")
    _posted(
        hook,
        f"envflow: 1 commit(s) of prod back-merged into develop (test), {develop[:10]} -> {merged['new'][:10]} "
        f"({merged['kind']}) by {who}",
    )
    assert all(post["path"] == f"/hooks/{hook.token}" for post in hook.posts)
    _no_secret_anywhere(site, hook, event_listener, since)
    print("posted to the chat:\n" + "\n".join(hook.texts()))
    print(
        "git log --format=%s refs/envflow/history:\n"
        + gitrepo.git("log", "--format=%s", "refs/envflow/history", cwd=site.remote.path)
    )
    shown = site.run("envflow.history")
    print(f"salt-run envflow.history (exit {shown.returncode}):\n{shown.stdout}{shown.stderr}")
