"""Three masters serving one repository over git's smart HTTP, kept in step by the git server's push hook.

The remote is a bare repository behind ``git http-backend`` (tests/servers.py),
whose ``post-receive`` is the shipped hook, posting each push, signed, to the
three masters' salt-api (rest_cherrypy over TLS, the shipped push.conf). Each
master has directories of its own, records what it serves on the remote, and
runs the shipped schedule.conf with the interval set to an hour: only its round
at start acts, as for a master that was down and comes back. Nobody runs
anything on a master but the one a test acts on.

One minion is connected to the three at once (hot multi-master): it keeps a
connection to each, and a job one master publishes fetches its files from that
master, so what the minion reads through each master is what that master serves.
"""

import concurrent.futures
import functools
import json
import os
import pathlib
import shutil
import threading
import time
import uuid

import pytest
import yaml
from saltfactories.utils import random_string

from tests import gitrepo, servers
from tests.conftest import HTTP_PASSWORD, HTTP_USER
from tests.integration.conftest import (
    CLI_TIMEOUT,
    LOG_FILE_LEVEL,
    MASTER_TIMEOUTS,
    MASTER_WORKERS,
    MOTD,
    PIPELINES,
    _at_once,
    fits_unix_sockets,
    fresh_motd,
    key_pair,
    minion_of,
    motd,
    ok,
    salt_run,
    stopping,
    wait_for,
    write_key_pair,
    write_roots,
)
from tests.integration.test_push_schedule import _Served

SECRET = f"envflow-fleet-secret-{uuid.uuid4().hex}"
NAMES = ("one", "two", "three")


def _master(salt_factories, work, name, repo, tls):
    master_id = random_string(f"{name}-", uppercase=False)
    root = pathlib.Path(salt_factories.root_dir) / master_id
    envflow = gitrepo.config(repo, root / "state-tree")
    envflow.update(
        credentials={"username": HTTP_USER, "password": HTTP_PASSWORD, "allow_http": True},
        webhook={"secret": SECRET},
    )
    shipped = yaml.safe_load((PIPELINES / "push.conf").read_text(encoding="utf-8"))
    shipped["reactor"] = [{"salt/netapi/hook/envflow": [str(work / "reactor" / "envflow-push.sls")]}]
    _ca, cert, key = tls
    shipped["rest_cherrypy"].update(port=servers.free_port(), host="127.0.0.1", ssl_crt=cert, ssl_key=key)
    schedule = yaml.safe_load((PIPELINES / "schedule.conf").read_text(encoding="utf-8"))
    schedule["schedule"]["envflow-refresh"]["seconds"] = 3600
    master = fits_unix_sockets(
        salt_factories.salt_master_daemon(
            master_id,
            defaults={"root_dir": str(root)},
            overrides={
                **MASTER_TIMEOUTS,
                **MASTER_WORKERS,
                **LOG_FILE_LEVEL,
                **shipped,
                **schedule,
                "envflow": envflow,
            },
        )
    )
    write_roots(master, {env["name"]: [env["path"]] for env in envflow["environments"]}, {})  # envflow's only
    url = f"https://127.0.0.1:{shipped['rest_cherrypy']['port']}/hook/envflow"
    return master, master.salt_api_daemon(), envflow, url


def _minion_of_all(masters):
    """A minion whose ``master`` lists every one of ``masters`` (hot multi-master), its key accepted by each.

    The keys are made before anything starts: the masters share one key pair, as a minion refuses a master
    whose key is not the one it has seen (the way Salt's tests/pytests/scenarios/multimaster does it).
    """
    master_key = key_pair()
    for master in masters:
        write_key_pair(master.config["pki_dir"], "master", master_key)
    return minion_of(
        masters[0],
        random_string("n-", uppercase=False),
        {**LOG_FILE_LEVEL, "master": [f"127.0.0.1:{master.config['ret_port']}" for master in masters]},
        accepted_by=masters,
    )


class Fleet:
    def __init__(self, remote, masters, minion):
        self.remote = remote
        self.masters = masters  # name -> (_Served, api, hook url)
        self.minion = minion
        self.salt_clis = {name: site.master.salt_cli(timeout=CLI_TIMEOUT) for name, (site, *_rest) in masters.items()}

    def site(self, name):
        return self.masters[name][0]

    def run(self, name, *args):
        return self.site(name).master.salt_run_cli().run(*args)

    def start(self, name):
        site, api, _url = self.masters[name]
        site.master.start()
        api.start()

    def stop(self, name):
        site, api, _url = self.masters[name]
        _at_once(stopping(api, site.master))

    def all_serve(self, env, commit):
        return all(self.site(name).deployed(env) == commit for name in NAMES)

    def where(self, env):
        """For a failure's message: per master, what its directory serves and what its record says."""
        return {
            name: (self.site(name).deployed(env), _served_record(self, name)["environments"].get(env, {}).get("commit"))
            for name in NAMES
        }

    def settled(self, env, commit):
        """Every master serves ``commit`` in ``env`` and says so on the remote: its record follows its switch, and
        a promotion compares the records."""
        records = [_served_record(self, name)["environments"].get(env, {}) for name in NAMES]
        return self.all_serve(env, commit) and all(record.get("commit") == commit for record in records)

    def status(self, name):
        return ok(self.run(name, "envflow.status"))

    def minion_reads(self, name, path, saltenv="stage"):
        """What the minion gets for ``salt://<path>`` in a job master ``name`` publishes: what that master serves."""
        ret = self.salt_clis[name].run(
            "cp.get_file_str", f"salt://{path}", f"saltenv={saltenv}", minion_tgt=self.minion.id
        )
        return ok(ret)

    def minion_reads_through_each(self, path, saltenv="stage"):
        """What the minion gets for ``salt://<path>`` through each master, the three asked at once: name -> content."""
        with concurrent.futures.ThreadPoolExecutor(len(NAMES)) as pool:
            reads = {name: pool.submit(self.minion_reads, name, path, saltenv) for name in NAMES}
        return {name: read.result() for name, read in reads.items()}


@pytest.fixture(scope="module")
def fleet(salt_factories, tmp_path_factory, event_listener):
    work = tmp_path_factory.mktemp("fleet")
    tls = servers.make_ca_and_certificate(work / "tls")
    remote = gitrepo.Remote(work / "git", files={"top.sls": "{}\n", MOTD: motd("initial")})
    shutil.copytree(PIPELINES / "reactor", work / "reactor")
    server = servers.GitHttpServer(os.path.dirname(remote.path), HTTP_USER, HTTP_PASSWORD).start()
    try:
        repo = server.url("automation.git")
        built = {name: _master(salt_factories, work, name, repo, tls) for name in NAMES}
        # The shipped post-receive hook, posting every push to each master's salt-api.
        hook = pathlib.Path(remote.path) / "hooks" / "post-receive"
        shutil.copy(PIPELINES / "post-receive", hook)
        hook.chmod(0o755)
        secret_file = work / "webhook-secret"
        secret_file.write_text(SECRET + "\n", encoding="utf-8")
        for *_parts, url in built.values():
            gitrepo.git("config", "--add", "envflow.hookUrl", url, cwd=remote.path)
        gitrepo.git("config", "envflow.secretFile", str(secret_file), cwd=remote.path)
        gitrepo.git("config", "envflow.caFile", tls[0], cwd=remote.path)
        masters = {
            name: (_Served(master, remote, envflow), api, url) for name, (master, api, envflow, url) in built.items()
        }
        minion = _minion_of_all([built[name][0] for name in NAMES])
        started = Fleet(remote, masters, minion)
        try:
            # Started together: most of a daemon's start is waiting, which three need not spend in turn;
            # the minion signs in to the masters while their salt-api start.
            _at_once([started.site(name).master.start for name in NAMES])
            since = time.time()
            _at_once([*(api.start for _site, api, _url in masters.values()), minion.start])
            # salt-factories' start check heard the minion's start event on the first master only;
            # a job published by a master it has not signed in to yet would be lost.
            signed_in = [(started.site(name).master.id, f"salt/minion/{minion.id}/start") for name in NAMES]
            matched = event_listener.wait_for_events(signed_in, after_time=since, timeout=CLI_TIMEOUT)
            assert not matched.missed, f"the minion did not sign in to {matched.missed}"
            tip = remote.tip("develop")
            # Each master's round at start deploys every environment.
            assert wait_for(lambda: all(started.all_serve(env, tip) for env in ("test", "stage", "prod")))
            yield started
        finally:
            _at_once([*stopping(minion), *(functools.partial(started.stop, name) for name in NAMES)])
    finally:
        server.stop()


def _served_record(fleet, name):
    master = fleet.site(name).master.id
    return json.loads(gitrepo.git("show", f"refs/envflow/served/{master}:served.json", cwd=fleet.remote.path))


def test_a_push_and_a_promotion_made_on_one_master_reach_every_master(fleet):
    commit = fleet.remote.commit("develop", {MOTD: fresh_motd("fleet-push")}, "pushed to the git server")
    assert wait_for(lambda: fleet.settled("test", commit)), "the push did not reach every master"
    assert ok(fleet.run("one", "envflow.promote", "stage"))["new"] == commit
    assert wait_for(lambda: fleet.settled("stage", commit)), "the promotion did not reach every master"
    found = fleet.status("two")["fleet"]["stage"]
    assert {entry["commit"] for entry in found.values()} == {commit} and len(found) == 3
    assert not any(entry["behind_others"] or entry["behind_branch"] for entry in found.values())


def test_after_a_promotion_on_one_master_the_minion_reads_the_new_file_through_every_master(fleet):
    content = fresh_motd("fleet-minion")
    commit = fleet.remote.commit("develop", {MOTD: content}, "for the minion")
    assert wait_for(lambda: fleet.settled("test", commit))
    assert ok(fleet.run("one", "envflow.promote", "stage"))["new"] == commit
    promoted, seconds = time.monotonic(), {}

    def read_through_every_master():
        for name, read in fleet.minion_reads_through_each(MOTD).items():
            if read == content:
                seconds.setdefault(name, round(time.monotonic() - promoted, 1))
        return len(seconds) == len(NAMES)

    assert wait_for(read_through_every_master, interval=1), (
        f"the minion read the promoted file only through {sorted(seconds)}"
    )
    print(f"\nseconds from the promotion on one until the minion read the new file through each master: {seconds}")


def test_a_rollback_or_freeze_on_one_master_holds_on_every_master(fleet):
    before = fleet.site("one").deployed("stage")
    commit = fleet.remote.commit("develop", {MOTD: fresh_motd("fleet-bad")}, "a bad change")
    assert wait_for(lambda: fleet.settled("test", commit))
    ok(fleet.run("one", "envflow.promote", "stage"))
    assert wait_for(lambda: fleet.all_serve("stage", commit)), fleet.where("stage")
    ok(fleet.run("two", "envflow.rollback", "stage", "reason=bad change"))
    assert wait_for(lambda: fleet.all_serve("stage", before)), "the rollback did not reach every master"
    pinned = gitrepo.git("show", f"{before}:{MOTD}", cwd=fleet.remote.path, text=False).decode("utf-8")
    assert wait_for(lambda: set(fleet.minion_reads_through_each(MOTD).values()) == {pinned}, interval=1), (
        f"the minion does not read the pinned file through every master: {fleet.minion_reads_through_each(MOTD)}"
    )
    refused = fleet.run("one", "envflow.promote", "stage")
    assert refused.returncode == 1 and "stage is pinned to" in refused.data["error"], refused.data
    ok(fleet.run("three", "envflow.unpin", "stage"))
    assert wait_for(lambda: fleet.all_serve("stage", commit)), "the unpin did not reach every master"
    # A freeze set on three holds on one: a push to develop is not served in test while it lasts.
    ok(fleet.run("three", "envflow.freeze", "test", "reason=release week"))
    frozen_at = fleet.site("one").deployed("test")
    newer = fleet.remote.commit("develop", {MOTD: fresh_motd("fleet-frozen")}, "during the freeze")
    refused = fleet.run("one", "envflow.refresh", "test")
    assert refused.returncode == 1 and "test is frozen by" in refused.data["error"], refused.data
    assert fleet.site("one").deployed("test") == frozen_at
    ok(fleet.run("three", "envflow.thaw", "test"))
    assert wait_for(lambda: fleet.settled("test", newer)), "the thaw did not reach every master"


def test_a_master_that_was_down_is_shown_behind_holds_promotions_back_and_catches_up(fleet):
    tested = fleet.remote.commit("develop", {MOTD: fresh_motd("fleet-tested")}, "tested everywhere")
    assert wait_for(lambda: fleet.settled("test", tested)), fleet.where("test")
    fleet.stop("three")
    one, three = fleet.site("one").master.id, fleet.site("three").master.id
    old_stage = fleet.site("three").deployed("stage")
    # Promote while three is down: the others serve it, three is shown behind on stage.
    assert ok(fleet.run("one", "envflow.promote", "stage"))["new"] == tested
    assert wait_for(lambda: all(fleet.site(name).deployed("stage") == tested for name in ("one", "two"))), fleet.where(
        "stage"
    )
    assert fleet.site("three").deployed("stage") == old_stage
    found = fleet.status("one")["fleet"]["stage"]
    assert found[three]["commit"] == old_stage and found[three]["behind_others"] and found[three]["behind_branch"]
    assert not found[one]["behind_others"] and not found[one]["behind_branch"]
    # A push while three is down: the next promotion would take a commit three does not serve in test.
    old_test = fleet.site("three").deployed("test")
    commit = fleet.remote.commit("develop", {MOTD: fresh_motd("fleet-down")}, "while three is down")
    assert wait_for(lambda: all(fleet.site(name).deployed("test") == commit for name in ("one", "two"))), fleet.where(
        "test"
    )
    found = fleet.status("one")["fleet"]["test"]
    assert found[three]["commit"] == old_test and found[three]["behind_others"] and found[three]["behind_branch"]
    printed = salt_run(fleet.site("one").master.config_dir, "envflow.status").stdout
    print(f"\nwhile {three} is down:\n{printed}")
    assert three in printed and "behind the others for" in printed, printed
    refused = fleet.run("one", "envflow.promote", "stage")
    assert refused.returncode == 1
    assert refused.data["error"] == (
        f"envflow: the masters disagree on what test serves: {one} serves {commit[:10]}, "
        f"{three} serves {old_test[:10]}; promote once they agree (salt-run envflow.status shows them), "
        "or name the commit with rev="
    )
    assert fleet.remote.tip("stage") == tested
    # Started again, three catches up on both with nobody running anything on it.
    fleet.start("three")
    assert wait_for(lambda: fleet.settled("test", commit) and fleet.settled("stage", tested)), (
        f"three did not catch up when it started: test {fleet.where('test')}, stage {fleet.where('stage')}"
    )
    assert wait_for(
        lambda: (
            not any(
                entry["behind_others"] or entry["behind_branch"]
                for env in ("test", "stage")
                for entry in fleet.status("one")["fleet"][env].values()
            )
        ),
        interval=1,
    ), fleet.status("one")["fleet"]
    printed = salt_run(fleet.site("one").master.config_dir, "envflow.status").stdout
    print(f"\nafter {three} caught up:\n{printed}")
    assert ok(fleet.run("one", "envflow.promote", "stage"))["new"] == commit
    assert wait_for(lambda: fleet.all_serve("stage", commit)), fleet.where("stage")


def test_a_promotion_on_one_master_and_a_pin_on_another_started_together_never_slip_past_the_pin(fleet):
    """Twenty rounds: master one promotes stage while master two pins it, both let go at the same moment.

    Each runs in this process with that master's own configuration, mirror and directories, against the
    remote over HTTP. A pin recorded before the promotion's branch moved must refuse it (the branch moved
    back); one recorded after holds from then on. Either way the pin is honoured everywhere once unpinned
    and pinned again in turn. tests/unit/test_pipeline.py sets the pin at the worst moment on purpose.
    """
    from envflow import holds, pipeline  # pylint: disable=import-outside-toplevel
    from envflow.config import parse  # pylint: disable=import-outside-toplevel
    from envflow.errors import Held  # pylint: disable=import-outside-toplevel
    from envflow.remote import Mirror  # pylint: disable=import-outside-toplevel

    one = fleet.site("one")
    configs = {name: parse(fleet.site(name).envflow) for name in ("one", "two")}
    cache = {name: fleet.site(name).master.config["cachedir"] for name in ("one", "two")}
    outcomes = {"refused, branch moved back": 0, "refused before moving": 0, "promoted before the pin": 0}
    # Twenty commits in one push: round n promotes the n-th, contained in what test serves once the push is.
    work = fleet.remote.work
    gitrepo.git("fetch", "-q", "origin", cwd=work)
    gitrepo.git("checkout", "-q", "-B", "develop", "origin/develop", cwd=work)
    commits = []
    for number in range(20):
        fleet.remote.write({MOTD: fresh_motd(f"race{number}")})
        gitrepo.git("commit", "-q", "-am", f"race {number}", cwd=work)
        commits.append(gitrepo.git("rev-parse", "HEAD", cwd=work))
    gitrepo.git("push", "-q", "origin", "HEAD:refs/heads/develop", cwd=work)
    assert wait_for(lambda: one.deployed("test") == commits[-1])
    for number, commit in enumerate(commits):
        before = fleet.remote.tip("stage")
        barrier = threading.Barrier(2)

        def promote(commit=commit, barrier=barrier):
            with Mirror.of(configs["one"], cache["one"]) as mirror:
                mirror.fetch()
                barrier.wait()
                return pipeline.promote(configs["one"], mirror, "stage", rev=commit, by="alice", master=one.master.id)

        def pin(number=number, barrier=barrier):
            with Mirror.of(configs["two"], cache["two"]) as mirror:
                mirror.fetch()
                barrier.wait()
                return holds.pin(configs["two"], mirror, "stage", reason=f"race {number}", by="bob")

        with concurrent.futures.ThreadPoolExecutor(2) as both:
            promoted, pinned = both.submit(promote), both.submit(pin)
        assert pinned.result()["changed"] is True
        try:
            promoted.result()
        except Held as exc:
            assert "stage is pinned to" in str(exc), exc
            assert fleet.remote.tip("stage") == before, "a refused promotion left the branch moved"
            moved_back = str(exc).endswith("(set while this promotion ran: stage was moved back)")
            outcomes["refused, branch moved back" if moved_back else "refused before moving"] += 1
        else:
            assert fleet.remote.tip("stage") == commit
            outcomes["promoted before the pin"] += 1
        with Mirror.of(configs["two"], cache["two"]) as mirror:
            mirror.fetch()
            assert holds.unpin(configs["two"], mirror, "stage", by="bob")["changed"] is True
    print(f"\n20 rounds of a promotion on one and a pin on two at once: {outcomes}")
    tip = fleet.remote.tip("stage")
    assert wait_for(lambda: fleet.all_serve("stage", tip)), "the masters did not settle on stage's tip"
