#!/usr/bin/env python
"""Benchmark a fleet: a promotion on one of three masters, until the last of them serves it.

A script, not a test (pytest does not collect it: no ``test_`` prefix). Run it with the
Python of a virtualenv holding Salt, CherryPy, pygit2 and envflow (installed from this
checkout: ``python3 tests/venvs.py 3008``)::

    .venvs/salt3008/bin/python tests/bench_fleet.py [--sizes 200,20000] [--repeat 5] [--keep]

The set-up of ``tests/integration/test_fleet.py``, with ``tests/bench_push.py``'s
harness: for each size, a bare repository of that many files (the builder of
``tests/bench_deploy.py``; ``develop``, ``stage`` and ``master`` at one commit) served
by git's smart HTTP (``git http-backend`` behind basic authentication,
``tests/servers.py``) on 127.0.0.1, whose ``hooks/post-receive`` is the shipped
``docs/pipelines/post-receive``, given each master's ``/hook/envflow`` URL
(``envflow.hookUrl``, in the order of the masters) and ``envflow.secretFile``. Three
real ``salt-master`` daemons from this virtualenv, each with its own salt-api
(push.conf's ``rest_cherrypy``: ``thread_pool: 1``, ``webhook_disable_auth``; on
loopback over plain HTTP, ``disable_ssl``, for timing only), push.conf's reactor with
the shipped ``envflow-push.sls``, its own environment directories and an ``envflow``
block reaching the repository over HTTP (``credentials``: username, password,
``allow_http: true``). No minion, no schedule. Each master deploys every environment
first (``salt-run envflow.refresh`` on each), then each round:

* a one-file change committed on ``develop`` in a work clone and ``git push``-ed over
  HTTP: the hook serves it in ``test`` on all three masters; the round waits until all
  three serve it and their records on the remote (``refs/envflow/served/<id>``) say so
  (a promotion refuses while the masters disagree on what ``test`` serves), then until
  the fleet is quiet (every ``runner.envflow.pushed`` job ended, no event for a second);
* ``salt-run envflow.promote stage`` on master 1, timed (its wall time), while this
  process reads every few ms ``envflow.served.ServedDir(path).deployed()["id"]`` of
  each master's stage directory: when master 1 serves the promoted commit, and when
  the last of the three does. The spread is the last minus master 1. Where it goes is
  read from each master's event bus: the hooks fired for ``refs/heads/stage`` and
  ``refs/envflow/history`` (the body's ref names only are kept), the
  ``runner.envflow.pushed`` and ``runner.envflow.promote`` jobs' start and end,
  ``salt/envflow/stage/deployed`` and ``promoted``;
* then until the fleet is quiet again.

The first round is reported apart (the promotion's loaders cold on every master); the
others give the median and min-max. Aims (issue 22), printed with PASS or MISS: the
spread's median under 1 s at 200 files and under 2 s at 20,000 files. The masters' logs
are searched for envflow's push lines and for warnings and errors. The script never
fails on an aim. Every daemon and the git server are stopped at the end (Ctrl-C and
errors included) and the temporary directory removed (``--keep`` keeps it, with the
daemons' logs).
"""

import argparse
import contextlib
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import sys
import time

import quickstart
import servers
from bench_deploy import BRANCH, BenchRepo, git
from bench_push import (
    CHECKOUT,
    ENVIRONMENTS,
    HOOK,
    PIPELINES,
    POLL_S,
    PUSHED_NEW,
    PUSHED_RET,
    TIMEOUT_S,
    Bus,
    ServedWatch,
    Site,
    Work,
    _envflow_origin,
    _installed_at,
    _interrupted,
    _load_yaml,
    _median,
    _ms,
    _runner_job,
    _salt_version,
    _spread,
    _stamp,
    _workdir,
    hook_failures,
    progress,
    signals_held,
)

MASTERS = 3
# As tests/conftest.py's HTTP_USER and HTTP_PASSWORD (not imported: that module needs pytest and the tests package).
HTTP_USER, HTTP_PASSWORD = "envflow", "s3cret-t0ken-for-http"
AIMS_S = {200: 1.0, 20000: 2.0}  # last master serving minus master 1 serving, median, by repository size
QUIET_S = 1.0  # the fleet is quiet once no event came for this long and no pushed job runs
RECORDS_S = 15  # how long a round waits for the masters' records before it promotes all the same
PROMOTED = "stage"
STAGE_HOOK = f"refs/heads/{PROMOTED}"
HISTORY_HOOK = "refs/envflow/history"
PROMOTE_NEW = _runner_job("runner.envflow.promote", "new")
PROMOTE_RET = _runner_job("runner.envflow.promote", "ret")
# What the report shows of a promotion on each master, in order: ms since `salt-run envflow.promote` started.
STEPS = (
    ("promote start", "the runner.envflow.promote job started (master 1)"),
    ("stage hook", f"salt-api fired the hook of the push of {STAGE_HOOK}"),
    ("pushed start", "the first runner.envflow.pushed job after it started"),
    ("served", "the stage directory serves the promoted commit (read by this process)"),
    ("deployed event", "salt/envflow/stage/deployed (after the caches were cleared and the record written)"),
    ("pushed end", "that runner.envflow.pushed job ended"),
    ("promoted event", "salt/envflow/stage/promoted (master 1)"),
    ("promote end", "the runner.envflow.promote job ended (master 1)"),
    ("history hook", f"salt-api fired the first hook of a push of {HISTORY_HOOK} (a history entry)"),
    ("quiet", "the last runner.envflow.pushed job of the round ended"),
)


def _hook_of(ref):
    return lambda tag, data: tag == f"salt/netapi/hook/{HOOK}" and ref in data.get("refs", ())


def _jid(tag):
    return tag.split("/")[2]


class FleetBus(Bus):
    """A master's event bus; of each hook, when it was fired and the names of the refs pushed."""

    @staticmethod
    def kept(tag, data):
        if not tag.startswith("salt/netapi/hook/"):
            return data
        post = data.get("post")
        if not isinstance(post, dict):
            try:
                post = json.loads(data.get("body") or "{}")
            except (TypeError, ValueError):
                post = {}
        updates = post.get("refs") if isinstance(post, dict) else None
        refs = [update.get("ref") for update in updates or () if isinstance(update, dict)]
        return {"_stamp": data.get("_stamp"), "refs": refs}


class Master(Site):
    """One master of the fleet and its salt-api, reaching the repository over git's smart HTTP."""

    def __init__(self, root, number, repo, remote_url, secret):
        self.master_id = f"bench-fleet-{number}"
        self.remote_url = remote_url
        super().__init__(root, repo, secret)

    def master_config(self, repo, publish_port):
        master = super().master_config(repo, publish_port)
        master["id"] = self.master_id
        master["envflow"].update(
            repo=self.remote_url,
            credentials={"username": HTTP_USER, "password": HTTP_PASSWORD, "allow_http": True},
        )
        return master

    def wait_master(self, process):
        quickstart.wait_for(
            f"{self.master_id} to listen",
            lambda: quickstart.listening(self.ret_port),
            TIMEOUT_S,
            lambda: self.check_running("salt-master", process),
        )


class Fleet:
    """One size: the repository and its git server, the three masters, and every promotion measured with them."""

    def __init__(self, root, size, args):
        self.root, self.size, self.args = root, size, args
        self.secret = secrets.token_hex(20)
        start = time.perf_counter()
        projects = os.path.join(root, "git")
        os.makedirs(projects)
        self.repo = BenchRepo(projects, size)
        for _env, branch in ENVIRONMENTS:
            if branch != BRANCH:
                git("branch", branch, BRANCH, cwd=self.repo.path)
        self.work = Work(self.repo, root)
        self.server = servers.GitHttpServer(projects, HTTP_USER, HTTP_PASSWORD).start()
        self.server.server.handle_error = self._git_server_error  # one line in the report, not a traceback
        try:
            remote_url = self.server.url("automation.git")
            # The work clone pushes over HTTP too, as a developer would: its push runs the hook.
            signed_in = remote_url.replace("://", f"://{HTTP_USER}:{HTTP_PASSWORD}@", 1)
            git("remote", "set-url", "origin", signed_in, cwd=self.work.path)
            self.masters = [
                Master(os.path.join(root, f"m{number}"), number, self.repo, remote_url, self.secret)
                for number in range(1, MASTERS + 1)
            ]
            self._install_hook()
        except BaseException:
            self.server.stop()
            raise
        self.built_s = time.perf_counter() - start
        self.buses = []
        self.found = {"files": len(self.repo.contents), "built_s": self.built_s, "problems": [], "rounds": []}

    def _install_hook(self):
        hook = os.path.join(self.repo.path, "hooks", "post-receive")
        shutil.copy(os.path.join(PIPELINES, "post-receive"), hook)
        os.chmod(hook, 0o755)
        secret_file = os.path.join(self.root, "webhook-secret")
        with open(os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
            handle.write(self.secret + "\n")
        for master in self.masters:
            git("config", "--add", "envflow.hookUrl", master.url, cwd=self.repo.path)
        git("config", "envflow.secretFile", secret_file, cwd=self.repo.path)

    def _git_server_error(self, _request, client_address):
        exc = sys.exc_info()[1]
        self.problem(f"the git server failed a request from port {client_address[1]}: {type(exc).__name__}: {exc}")

    def problem(self, text):
        text = " ".join(str(text).split())  # one line, whatever salt-run printed
        progress(f"  problem: {text}")
        self.found["problems"].append(text)

    # -- set-up

    def start(self):
        import salt.config

        progress(f"size {self.size}: starting {MASTERS} salt-masters and their salt-api ...")
        processes = [master.start("salt-master") for master in self.masters]
        for master, process in zip(self.masters, processes, strict=True):
            master.wait_master(process)
        for master in self.masters:
            master.start_api()
        for master in self.masters:
            self.buses.append(FleetBus(salt.config.client_config(os.path.join(master.conf, "master"))))
        progress(f"size {self.size}: deploying every environment on each master (salt-run envflow.refresh) ...")
        self.found["first_refresh_s"] = []
        for master in self.masters:
            elapsed, ret = master.salt_run("envflow.refresh")
            self.found["first_refresh_s"].append(elapsed)
            report = ret["environments"]
            if report.get("warning"):
                self.problem(f"salt-run envflow.refresh on {master.master_id} warned: {report['warning']}")
            served = {env: entry.get("new") for env, entry in report.items() if isinstance(entry, dict)}
            if set(served.values()) != {self.repo.tip}:
                raise RuntimeError(f"the first refresh on {master.master_id} served {served}, not {self.repo.tip}")
        if not self.settle([0] * MASTERS):
            self.problem(f"the fleet was not quiet within {TIMEOUT_S} s of the first refreshes")

    def stop(self):
        with signals_held():
            for bus in self.buses:
                with contextlib.suppress(Exception):
                    bus.close()
            self.buses = []
            with contextlib.redirect_stdout(sys.stderr):
                for master in self.masters:
                    master.stop_all()
            if self.server.thread is not None:
                with contextlib.suppress(Exception):
                    self.server.stop()
                self.server.thread = None

    # -- waiting

    def records(self, env, commit):
        """Whether every master's record on the remote says it serves ``commit`` in ``env``."""
        for master in self.masters:
            try:
                shown = git("show", f"refs/envflow/served/{master.master_id}:served.json", cwd=self.repo.path)
                record = json.loads(shown)
            except (RuntimeError, ValueError):
                return False
            if (record.get("environments", {}).get(env) or {}).get("commit") != commit:
                return False
        return True

    def history(self):
        """How many entries envflow's history on the remote holds (``refs/envflow/history``, one commit each)."""
        try:
            return int(git("rev-list", "--count", "refs/envflow/history", cwd=self.repo.path))
        except RuntimeError:
            return 0

    def settle(self, marks, timeout=TIMEOUT_S):
        """Wait until every pushed job started since ``marks`` ended and no event came for :data:`QUIET_S`."""
        deadline = time.monotonic() + timeout
        seen, quiet_since = None, time.monotonic()
        while time.monotonic() < deadline:
            counts = [bus.mark() for bus in self.buses]
            running = any(
                len(bus.matching(PUSHED_NEW, mark)) > len(bus.matching(PUSHED_RET, mark))
                for bus, mark in zip(self.buses, marks, strict=True)
            )
            if counts != seen:
                seen, quiet_since = counts, time.monotonic()
            elif not running and time.monotonic() - quiet_since >= QUIET_S:
                return True
            time.sleep(0.05)
        return False

    # -- one round

    def push(self):
        """Push a one-file change on develop; wait until every master serves it in test and records it; the change."""
        t0 = time.perf_counter()
        marks, entries = [bus.mark() for bus in self.buses], self.history()
        change = self.work.change()
        watches = [ServedWatch(master.paths["test"], change.commit, t0) for master in self.masters]
        for watch in watches:
            watch.join()
        found = {"push": change.push_s, "test served": [watch.seconds for watch in watches]}
        missing = [master.master_id for master, watch in zip(self.masters, watches, strict=True) if not watch.seconds]
        if missing:
            self.problem(f"{', '.join(missing)} did not serve {change.commit[:10]} in test within {TIMEOUT_S} s")
            return None, found
        deadline = time.monotonic() + RECORDS_S
        while not self.records("test", change.commit):
            if time.monotonic() > deadline:
                self.problem(f"the masters' records did not all name {change.commit[:10]} in test within {RECORDS_S} s")
                break
            time.sleep(0.05)
        else:
            found["records"] = time.perf_counter() - t0
        if not self.settle(marks):
            self.problem(f"the fleet was not quiet within {TIMEOUT_S} s of the push of {change.commit[:10]}")
        found["history push"] = self.history() - entries
        return change, found

    def promote_round(self):
        change, found = self.push()
        if change is None:
            return found
        marks, entries = [bus.mark() for bus in self.buses], self.history()
        promoted_at = time.time()
        t0 = time.perf_counter()
        watches = [ServedWatch(master.paths[PROMOTED], change.commit, t0) for master in self.masters]
        try:
            found["promote"], ret = self.masters[0].salt_run("envflow.promote", PROMOTED)
        except RuntimeError as exc:
            self.problem(str(exc)[:600])
            for watch in watches:
                watch.timeout = 0  # nothing comes: stop reading at once
            ret = None
        if isinstance(ret, dict) and ret.get("new") != change.commit:
            self.problem(f"envflow.promote {PROMOTED} returned {json.dumps(ret)[:300]}, not {change.commit[:10]}")
        for watch in watches:
            watch.join()
        served = [watch.seconds for watch in watches]
        found["served"] = served
        if ret is None:
            return found
        late = [master.master_id for master, seconds in zip(self.masters, served, strict=True) if seconds is None]
        if late:
            self.problem(f"{', '.join(late)} did not serve {change.commit[:10]} in {PROMOTED} within {TIMEOUT_S} s")
        else:
            found["master 1"], found["last"] = served[0], max(served)
            found["spread"] = found["last"] - found["master 1"]
            found["last master"] = served.index(found["last"]) + 1
        for master in self.masters:
            try:
                with open(os.path.join(master.paths[PROMOTED], change.path), "rb") as handle:
                    content = handle.read()
            except OSError as exc:
                content = exc
            if content != change.content:
                self.problem(f"{master.master_id} serves {change.commit[:10]} but not the new {change.path}")
        if not self.settle(marks):
            self.problem(f"the fleet was not quiet within {TIMEOUT_S} s of the promotion of {change.commit[:10]}")
        found["history promotion"] = self.history() - entries
        found["steps"] = [
            self._steps(bus, mark, promoted_at, change.commit, seconds)
            for bus, mark, seconds in zip(self.buses, marks, served, strict=True)
        ]
        return found

    def _steps(self, bus, mark, promoted_at, commit, served):
        """When each step of :data:`STEPS` happened on one master, in seconds since the promotion started."""

        def first(match):
            seen = bus.matching(match, mark)
            return seen[0] if seen else None

        def since(event):
            stamp = _stamp(event[1]) if event else None
            return None if stamp is None else stamp - promoted_at

        started = first(PUSHED_NEW)
        ended = first(lambda tag, data: started and tag == f"salt/run/{_jid(started[0])}/ret")
        if ended and not ended[1].get("success", True):
            self.problem(f"runner.envflow.pushed failed: {json.dumps(ended[1].get('return'))[:400]}")
        rets = bus.matching(PUSHED_RET, mark)
        return {
            "promote start": since(first(PROMOTE_NEW)),
            "stage hook": since(first(_hook_of(STAGE_HOOK))),
            "pushed start": since(started),
            "served": served,
            "deployed event": since(
                first(lambda tag, data: tag == f"salt/envflow/{PROMOTED}/deployed" and data.get("new") == commit)
            ),
            "pushed end": since(ended),
            "promoted event": since(first(lambda tag, data: tag == f"salt/envflow/{PROMOTED}/promoted")),
            "promote end": since(first(PROMOTE_RET)),
            "history hook": since(first(_hook_of(HISTORY_HOOK))),
            "quiet": since(rets[-1]) if rets else None,
            "pushed jobs": len(rets),
        }

    def measure(self):
        progress(f"size {self.size}: the first promotion (loaders cold), then {self.args.repeat} rounds")
        self.found["cold"] = self.promote_round()
        if "promote" not in self.found["cold"]:
            self.problem(f"the first promotion did not run: the {self.args.repeat} rounds after it were skipped")
            return
        for number in range(1, self.args.repeat + 1):
            progress(f"size {self.size}: round {number} of {self.args.repeat}")
            found = self.promote_round()
            self.found["rounds"].append(found)
            if "promote" not in found and number < self.args.repeat:
                left = self.args.repeat - number
                self.problem(f"round {number}'s promotion did not run: the {left} rounds after it were skipped")
                return

    # -- the masters' logs

    def read_logs(self):
        logs = []
        for master in self.masters:
            lines = master.log_lines("master.log")
            flagged = [line for line in lines if re.search(r"\[(WARNING|ERROR|CRITICAL)\s*\]", line)]
            known = [line for line in flagged if re.search(r"unclosed \w+ <|received a SIGTERM", line)]
            served = {}
            for line in lines:
                found = re.search(r"envflow: \S+ push from \S+ to (.+)$", line)
                if found:
                    served[found.group(1)] = served.get(found.group(1), 0) + 1
            logs.append(
                {
                    "master": master.master_id,
                    "served": served,
                    "nothing": sum(
                        bool(re.search(r"envflow: \S+ push from .*; nothing deployed$", line)) for line in lines
                    ),
                    "other": [line for line in flagged if line not in known],
                    "api_failures": hook_failures(master.log_lines("api.log")),
                    "secret": sum(
                        self.secret in line for name in ("master.log", "api.log") for line in master.log_lines(name)
                    ),
                }
            )
        self.found["logs"] = logs

    def run(self):
        try:
            self.start()
            self.measure()
        finally:
            self.stop()
            self.read_logs()
        return self.found


# -- report -------------------------------------------------------------------


def report(results, args, started):
    lines = []
    out = lines.append
    push_conf = _load_yaml(os.path.join(PIPELINES, "push.conf"))
    api = {
        key: value for key, value in push_conf["rest_cherrypy"].items() if not key.startswith(("ssl_", "host", "port"))
    }
    out("")
    out("envflow fleet benchmark: a promotion on one of three masters, until the last of them serves it")
    out(
        f"python {sys.version.split()[0]}, salt {_salt_version()}, {git('--version')}, {os.cpu_count()} CPUs; "
        f"envflow imported from {_envflow_origin()} (here and in the daemons)"
    )
    out(
        f"{MASTERS} real salt-masters from this virtualenv, each with its own directories, push.conf's reactor on "
        f"salt/netapi/hook/{HOOK} (the shipped envflow-push.sls,"
    )
    out(
        f"  reactor_worker_threads: {push_conf['reactor_worker_threads']}) and its own salt-api: push.conf's "
        f"rest_cherrypy ({', '.join(f'{key}: {value}' for key, value in api.items())})"
    )
    out(
        "  on 127.0.0.1 over plain HTTP (disable_ssl: True): fine for timing on loopback, never across a network "
        "(push.conf serves it over TLS); no minion, no schedule"
    )
    out(
        "one bare repository behind git's smart HTTP (git http-backend, basic authentication; envflow:credentials "
        "username/password, allow_http: true) on 127.0.0.1;"
    )
    out(
        "  its hooks/post-receive is the shipped docs/pipelines/post-receive, posting each push, signed, to "
        "envflow.hookUrl = each master's /hook/envflow, master 1 first"
    )
    out(
        "  (one request after another); environments test/stage/prod (develop/stage/master); about 50 files per "
        "directory (tests/bench_deploy.py's builder)"
    )
    out(
        "each round: a one-file change pushed on develop (over HTTP), served in test by all three masters and "
        "recorded on the remote; the fleet quiet;"
    )
    out(f"  then `salt-run envflow.promote {PROMOTED}` on master 1; the fleet quiet again before the next round")
    out("times in ms since the promotion command started, median of the rounds (min-max):")
    out("  promotion = the wall time of salt-run envflow.promote stage on master 1 (CLI start-up included)")
    out(
        f"  master 1 serves, last serves = until ServedDir(stage's path).deployed()['id'] of master 1, of the last "
        f"of the three, names the promoted commit (read every {POLL_S * 1000:.0f} ms in this process)"
    )
    out("  spread = last serves - master 1 serves, per round")
    out(
        f"load average (1 min) at the start / end: {args.load_start:.2f} / {os.getloadavg()[0]:.2f}; other work "
        "on the machine shows up as noise, ratios within one run are what to compare"
    )
    out(f"checkout {args.checkout}")
    if _installed_at() != args.installed_at:
        when = datetime.datetime.fromtimestamp(_installed_at()).strftime("%H:%M:%S")
        out(f"WARNING: envflow was reinstalled during the run (at {when}): parts of it ran other code than the rest")

    out("")
    out("a promotion on master 1 and when the fleet serves it")
    columns = ("promotion", "(min-max)", "master 1", "(min-max)", "last", "(min-max)", "spread", "(min-max)")
    widths = (9, 11, 8, 11, 6, 11, 6, 11)
    out(f"{'files':>6}  {'rounds':<26} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for res in results.values():
        for label, rounds in (
            ("first (loaders cold)", [res["cold"]]),
            (f"median of {len(res['rounds'])}", res["rounds"]),
        ):
            cells = []
            for key in ("promote", "master 1", "last", "spread"):
                values = [r.get(key) for r in rounds]
                cells += [_ms(_median(values)), _spread(values)]
            out(f"{res['files']:>6}  {label:<26} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
        lasts = [r.get("last master") for r in res["rounds"] if r.get("last master")]
        counted = ", ".join(f"master {n}: {lasts.count(n)}" for n in range(1, MASTERS + 1) if lasts.count(n))
        out(f"{'':>6}  (the last to serve, over the median's rounds: {counted or '-'})")

    out("")
    out("each master's stage directory serves the promoted commit (ms since the promotion started, median (min-max))")
    out(
        f"{'files':>6}  "
        + " ".join(f"{f'master {n}':>20}" for n in range(1, MASTERS + 1))
        + f" {'first to last serving':>22}"
    )
    for res in results.values():
        cells = []
        for index in range(MASTERS):
            values = [(r.get("served") or [None] * MASTERS)[index] for r in res["rounds"]]
            cells.append(f"{_ms(_median(values))} ({_spread(values) or '-'})")
        whole = [r["last"] - min(r["served"]) for r in res["rounds"] if r.get("last") is not None]
        cells.append(f"{_ms(_median(whole))} ({_spread(whole) or '-'})")
        out(f"{res['files']:>6}  " + " ".join(f"{cell:>20}" for cell in cells[:-1]) + f" {cells[-1]:>22}")
    out(f"{'':>6}  (first to last serving: whichever master served first, unlike the spread, which starts at master 1)")

    out("")
    out("where the spread goes: each master's events (their _stamp), ms since the promotion started, medians")
    for step, meaning in STEPS:
        out(f"  {step:<15} {meaning}")
    for res in results.values():
        out(f"{res['files']:>6} files  " + " ".join(f"{f'master {n}':>10}" for n in range(1, MASTERS + 1)))
        for step, _meaning in (*STEPS, ("pushed jobs", "")):
            cells = []
            for index in range(MASTERS):
                values = [r["steps"][index].get(step) for r in res["rounds"] if r.get("steps")]
                if step == "pushed jobs":
                    cells.append("/".join(str(v) for v in sorted(set(values))) or "-")
                else:
                    cells.append(_ms(_median(values)))
            out(f"{'':>6}  {step:<15}" + " ".join(f"{cell:>10}" for cell in cells))
        out(f"{'':>6}  (pushed jobs: runner.envflow.pushed jobs per round on each master, from the promotion on)")
        by_push = sorted({r.get("history push") for r in res["rounds"] if r.get("history push") is not None})
        by_promotion = sorted(
            {r.get("history promotion") for r in res["rounds"] if r.get("history promotion") is not None}
        )
        out(
            f"{'':>6}  (history entries added to refs/envflow/history per round: "
            f"{'/'.join(map(str, by_push)) or '-'} by the develop push, "
            f"{'/'.join(map(str, by_promotion)) or '-'} by the promotion; each entry is a push whose hook has every "
            "master fetch and compare the holds, refreshing every environment only when they are new to it)"
        )

    out("")
    out("the develop push before each promotion (ms since the commit; the hook serves test on every master)")
    out(f"{'files':>6}  {'git push':>9} {'(min-max)':>11} {'last serves test':>17} {'(min-max)':>11} {'records':>8}")
    for res in results.values():
        rounds = [res["cold"], *res["rounds"]]
        pushes = [r.get("push") for r in rounds]
        tests = [max(r["test served"]) if None not in r.get("test served", [None]) else None for r in rounds]
        records = [r.get("records") for r in rounds]
        out(
            f"{res['files']:>6}  {_ms(_median(pushes)):>9} {_spread(pushes):>11} {_ms(_median(tests)):>17} "
            f"{_spread(tests):>11} {_ms(_median(records)):>8}"
        )
    out(f"{'':>6}  (git push includes the post-receive hook's three requests; records = all three records name it)")

    out("")
    out("aims (PASS or MISS)")
    met = missed = 0
    for size, res in results.items():
        spread = _median([r.get("spread") for r in res["rounds"]])
        limit = AIMS_S.get(size)
        if limit is None:
            out(f"  {res['files']} files, spread = {_ms(spread)} ms: no aim at this size")
            continue
        ok = spread is not None and spread < limit
        met, missed = met + ok, missed + (not ok)
        promote = _median([r.get("promote") for r in res["rounds"]])
        out(
            f"  {res['files']} files, last master serving - master 1 serving (median) = {_ms(spread)} ms "
            f"(aim < {limit * 1000:,.0f} ms; the promotion itself {_ms(promote)} ms): {'PASS' if ok else 'MISS'}"
        )
    out(f"  {met} aims met, {missed} missed")

    out("")
    out("the masters' logs (level info) and what misbehaved")
    for res in results.values():
        first = ", ".join(_ms(s) for s in res.get("first_refresh_s", []))
        out(
            f"  {res['files']} files: repository built in {res['built_s']:.1f} s; first refresh of every "
            f"environment on each master, one after another: {first or '-'} ms"
        )
        out(
            "    (master 1's first deploys push history entries; the first history hook a master gets refreshes "
            "every environment there, as no holds were served yet: their own refresh finds little left to do)"
        )
        for log in res.get("logs", []):
            served = ", ".join(f"{count} to {branches}" for branches, count in sorted(log["served"].items()))
            out(
                f"    {log['master']}: 'push from' lines: {served or 'none'}; {log['nothing']} deployed nothing; "
                f"{len(log['other'])} warnings or errors; the secret {log['secret']} times"
            )
            for line in log["other"][:6]:
                out(f"      {line[:300]}")
            for raised, count in log["api_failures"].items():
                out(f"      salt-api's log (debug level): {count} requests to /hook answered HTTP 500 after {raised}")
        for text in res["problems"]:
            out(f"    problem: {text}")
        if not res["problems"]:
            out("    no problem seen: every push and promotion served on every master, every runner returned")
    out(f"\n(total run time {time.perf_counter() - started:.0f} s)")
    print("\n".join(lines), flush=True)


def _checkout():
    """This checkout's commit, and the product files changed in its work tree (what the daemons may run)."""
    try:
        head = git("log", "-1", "--format=%h %s", cwd=CHECKOUT)[:70]
        changed = git("diff", "HEAD", "--name-only", "--", "envflow", "_runners", "_modules", "_states", cwd=CHECKOUT)
    except RuntimeError:
        return f"{CHECKOUT} (not a git work tree)"
    # Names alone: porcelain status lines start with a space that the stripped output loses on the first line.
    files = changed.splitlines()
    return f"{head}; " + (f"changed in the work tree: {', '.join(files)}" if files else "envflow's code as committed")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--sizes", default="200,20000", help="comma-separated file counts (default: 200,20000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed promotions per size (default: 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (and the logs)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    if not sizes or min(sizes) < 2 or args.repeat < 1:
        parser.error("give sizes of at least 2 files and --repeat of at least 1")
    for daemon in ("salt-master", "salt-api", "salt-run"):
        if not os.access(os.path.join(sys.prefix, "bin", daemon), os.X_OK):
            parser.error(f"no {daemon} beside this Python: run it with a virtualenv's Python (tests/venvs.py)")
    if servers.HTTP_BACKEND is None:
        parser.error("git http-backend is not installed: install git's full package")
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    args.load_start = os.getloadavg()[0]
    args.installed_at = _installed_at()
    args.checkout = _checkout()
    started = time.perf_counter()
    workdir = _workdir("envflow-fleet-")
    fleets = []
    try:
        results = {}
        for size in sizes:
            root = os.path.join(workdir, f"s{size}")
            os.makedirs(root)
            progress(f"size {size}: building the repository ...")
            fleets.append(Fleet(root, size, args))
            results[size] = fleets[-1].run()
            if not args.keep:
                progress(f"size {size}: removing its directories ...")
                shutil.rmtree(root, ignore_errors=True)
        report(results, args, started)
    except KeyboardInterrupt:
        progress("interrupted; the daemons are stopped")
        return 130
    finally:
        with signals_held():
            for fleet in fleets:
                fleet.stop()  # again: a signal may have cut its own stop short; stopping twice does nothing
            if args.keep:
                progress(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
