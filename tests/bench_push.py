#!/usr/bin/env python
"""Benchmark deploy-on-push: a signed hook through salt-api and the reactor, against a refresh run by hand.

A script, not a test (pytest does not collect it: no ``test_`` prefix). Run it with the
Python of a virtualenv holding Salt, CherryPy, pygit2 and envflow (installed from this
checkout: ``python3 tests/venvs.py 3008``)::

    .venvs/salt3008/bin/python tests/bench_push.py [--sizes 200,20000] [--repeat 10] [--flood 500] [--keep]

For each size it builds a bare repository of that many files with the repository
builder of ``tests/bench_deploy.py`` (``git fast-import``), with the branches
``develop``, ``stage`` and ``master`` at one commit, and a work clone to push from.
Then it starts, from this virtualenv, a real ``salt-master`` (the reactor and
``reactor_worker_threads`` of ``docs/pipelines/push.conf``, the shipped reactor SLS
``docs/pipelines/reactor/envflow-push.sls``, the environments test/stage/prod and
``file_roots`` mapping each saltenv to its path), a ``salt-minion`` and ``salt-api``
(rest_cherrypy on a free port of 127.0.0.1, plain HTTP: ``disable_ssl``, for timing
only; push.conf serves it over TLS), deploys every environment once
(``salt-run envflow.refresh``) and measures, in the same run:

* push latency: a one-file change committed on ``develop`` in the work clone and
  ``git push``-ed (timed apart), then the GitHub-signed hook (``tests/hooksign.py``)
  POSTed to ``/hook/envflow``; from the POST until the master serves the new commit
  (``envflow.served.ServedDir(path).deployed()``, polled every 5 ms in this process).
  Half of the rounds measure that alone (quiet); the other half also ask the minion,
  from right after the POST and again until it answers with the new content,
  ``cp.get_file_str salt://<the changed file> saltenv=test`` through a
  ``salt.client.LocalClient`` in this process. Where the time goes is read from the
  master's event bus (the hook event, the ``runner.envflow.pushed`` job's start and end,
  ``salt/envflow/test/deployed``);
* the same one-file change served by ``salt-run envflow.refresh test`` run by hand
  (the CLI's wall time) and by the same runner in this process
  (``salt.runner.RunnerClient``);
* the polling fallback (``docs/pipelines/schedule.conf``): one round where nothing was
  pushed, ``envflow.refresh`` for the three environments, by the CLI and in process,
  and ``salt-run test.arg`` as the CLI's own start-up;
* floods: ``--flood`` wrongly signed requests as fast as salt-api answers them, from one
  sender and then from four threads, each followed by one good push; from its POST to
  served, against the quiet median, and how fast the reactor worked through the
  refusals. Then a correctly signed ping tells whether salt-api still answers. Should
  push.conf's salt-api run more than one thread (``thread_pool``), the four-thread
  flood is run again with ``thread_pool: 1`` (Salt's ``/hook`` shares one event loop
  between CherryPy's threads; two requests at once broke it in Salt 3008.4).

Aims (issue 21), printed with PASS or MISS: push to served, median, under 0.5 s at
200 files and under 1 s at 20,000 files; after each flood on push.conf's salt-api, the
good push is served. The master's log is searched for envflow's lines, other warnings
and the secret; salt-api logs at debug level (its own copy of the master's config), so
the reason for any HTTP 500 it gave a hook is printed too.
The script never fails on an aim: speed is measured here, not asserted by tests.
Every daemon is stopped at the end (Ctrl-C and errors included) and the temporary
directory removed (``--keep`` keeps it, with the daemons' logs).
"""

import argparse
import contextlib
import datetime
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import hooksign
import quickstart
from bench_deploy import BRANCH, BenchRepo, git

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINES = os.path.join(CHECKOUT, "docs", "pipelines")
MINION = "bench-push-minion"
ENVIRONMENTS = (("test", BRANCH), ("stage", "stage"), ("prod", "master"))
HOOK = "envflow"  # salt-api's /hook/envflow fires salt/netapi/hook/envflow
AIMS_S = {200: 0.5, 20000: 1.0}  # push to served, median, by repository size
POLL_S = 0.005  # how often this process reads which commit the master serves
FLOOD_THREADS = 4
FLOOD_WINDOW_S = 10
TIMEOUT_S = 60


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait until the block ends: a second one must not leave daemons running."""
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def progress(message):
    print(message, file=sys.stderr, flush=True)


def _ms(seconds):
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def _median(values):
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def _spread(values):
    values = [value for value in values if value is not None]
    return f"{min(values) * 1000:,.0f}-{max(values) * 1000:,.0f}" if len(values) > 1 else ""


def _stamp(data):
    """The wall time at which the master fired an event (its ``_stamp``, UTC), or ``None``."""
    try:
        return datetime.datetime.fromisoformat(data["_stamp"]).replace(tzinfo=datetime.timezone.utc).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def _load_yaml(path):
    import salt.utils.yaml

    with open(path, encoding="utf-8") as handle:
        return salt.utils.yaml.safe_load(handle)


# -- the repository and the pushes -------------------------------------------


@dataclass
class Change:
    """One pushed commit: the file it changed, its new content, the tips before and after, the push's time."""

    path: str
    content: bytes
    before: str
    commit: str
    push_s: float


class Work:
    """A clone of the bench repository, to commit one-line changes on develop and ``git push`` them."""

    def __init__(self, repo, root):
        self.repo = repo
        self.path = os.path.join(root, "work")
        self.pushes = 0
        git("clone", "-q", "-b", BRANCH, repo.path, self.path)

    def change(self):
        """Commit a one-line change to one file and push it; the :class:`Change`."""
        self.pushes += 1
        path = self.repo.random.choice(self.repo._changeable())  # pylint: disable=protected-access
        content = self.repo.contents[path] + b"# push %d\n" % self.pushes
        with open(os.path.join(self.path, path), "wb") as handle:
            handle.write(content)
        git("add", path, cwd=self.path)
        git("commit", "-q", "-m", f"push {self.pushes}: {path}", cwd=self.path)
        start = time.perf_counter()
        git("push", "-q", "origin", f"HEAD:refs/heads/{BRANCH}", cwd=self.path)
        push_s = time.perf_counter() - start
        before, self.repo.tip = self.repo.tip, git("rev-parse", "HEAD", cwd=self.path)
        self.repo.contents[path] = content
        self.repo.changed = path
        return Change(path, content, before, self.repo.tip, push_s)


# -- Salt ---------------------------------------------------------------------


class Site(quickstart.Site):
    """A master (push.conf's reactor), a minion and salt-api under ``root``, their configs and processes."""

    def __init__(self, root, repo, secret):
        super().__init__(root)
        self.secret = secret
        self.paths = {env: self.path("srv", env) for env, _branch in ENVIRONMENTS}
        self.push_conf = _load_yaml(os.path.join(PIPELINES, "push.conf"))
        self.ret_port, publish_port, self.api_port = quickstart.free_ports(3)
        os.makedirs(self.conf)
        master = self.master_config(repo, publish_port)
        minion = {
            "id": MINION,
            "root_dir": root,
            "pki_dir": "pki/minion",
            "cachedir": "cache/minion",
            "sock_dir": "run/minion",
            "pidfile": "run/minion.pid",
            "log_file": "logs/minion.log",
            "user": master["user"],
            "master": "127.0.0.1",
            "master_port": self.ret_port,
            "publish_port": publish_port,
            "acceptance_wait_time": 1,
        }
        for name, document in (("master", master), ("minion", minion)):
            with open(os.path.join(self.conf, name), "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)  # JSON is YAML
        # salt-api reads the master's config from a directory of its own: the same, logged at debug level, where
        # rest_cherrypy logs why it answered a request with HTTP 500.
        self.api_conf = os.path.join(root, "etc", "api")
        os.makedirs(self.api_conf)
        self.write_api_conf(dict(master, log_level_logfile="debug"))
        self.url = f"http://127.0.0.1:{self.api_port}{self.push_conf['rest_cherrypy']['webhook_url']}/{HOOK}"

    def master_config(self, repo, publish_port):
        """The master's config: push.conf's reactor and salt-api, the environments over ``repo``."""
        return {
            "root_dir": self.root,
            "pki_dir": "pki/master",
            "cachedir": "cache/master",
            "sock_dir": "run/master",
            "pidfile": "run/master.pid",
            "log_file": "logs/master.log",
            "log_level_logfile": "info",
            "key_logfile": "logs/key.log",
            "api_logfile": "logs/api.log",
            "api_pidfile": "run/api.pid",
            "user": pwd.getpwuid(os.getuid()).pw_name,
            "interface": "127.0.0.1",
            "publish_port": publish_port,
            "ret_port": self.ret_port,
            "auto_accept": True,
            "file_roots": {env: [path] for env, path in self.paths.items()},
            "envflow": {
                "repo": repo.path,
                "environments": [
                    {"name": env, "branch": branch, "path": self.paths[env]} for env, branch in ENVIRONMENTS
                ],
                # The secret itself rather than push.conf's sdb:// URI: no sdb profile to set up.
                "webhook": {**(self.push_conf.get("envflow") or {}).get("webhook", {}), "secret": self.secret},
            },
            "reactor": self._reactor(),
            "reactor_worker_threads": self.push_conf["reactor_worker_threads"],
            # push.conf's salt-api, on loopback and without TLS (timing only).
            "rest_cherrypy": {
                **{key: value for key, value in self.push_conf["rest_cherrypy"].items() if not key.startswith("ssl_")},
                "host": "127.0.0.1",
                "port": self.api_port,
                "disable_ssl": True,
            },
        }

    def _reactor(self):
        """push.conf's reactor, each SLS the shipped one of this checkout."""
        return [
            {tag: [os.path.join(PIPELINES, "reactor", os.path.basename(sls)) for sls in files]}
            for entry in self.push_conf["reactor"]
            for tag, files in entry.items()
        ]

    def start_all(self):
        master = self.start("salt-master")
        quickstart.wait_for(
            "salt-master to listen",
            lambda: quickstart.listening(self.ret_port),
            TIMEOUT_S,
            lambda: self.check_running("salt-master", master),
        )
        self.start("salt-minion")
        self.start_api()

    def write_api_conf(self, master):
        with open(os.path.join(self.api_conf, "master"), "w", encoding="utf-8") as handle:
            json.dump(master, handle, indent=2)

    def start_api(self):
        conf, self.conf = self.conf, self.api_conf
        try:
            api = self.start("salt-api")
        finally:
            self.conf = conf
        quickstart.wait_for(
            "salt-api to listen",
            lambda: quickstart.listening(self.api_port),
            TIMEOUT_S,
            lambda: self.check_running("salt-api", api),
        )

    def restart_api(self, **rest_cherrypy):
        """Stop salt-api, change its ``rest_cherrypy`` block, start it again on the same port."""
        for name, process in list(self.daemons):
            if name == "salt-api":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                self.daemons.remove((name, process))
        with open(os.path.join(self.api_conf, "master"), encoding="utf-8") as handle:
            master = json.load(handle)
        master["rest_cherrypy"].update(rest_cherrypy)
        self.write_api_conf(master)
        deadline = time.monotonic() + TIMEOUT_S
        while quickstart.listening(self.api_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.api_port} still answers after salt-api stopped")
            time.sleep(0.1)
        self.start_api()

    def salt_run(self, *args):
        """``salt-run <args> --out=json``: its wall time (s) and what it returned; raise if it failed."""
        start = time.perf_counter()
        done = self.command("salt-run", *args, "--out=json", show=False)
        elapsed = time.perf_counter() - start
        try:
            ret = json.loads(done.stdout[done.stdout.index("{") :]) if "{" in done.stdout else done.stdout.strip()
        except ValueError:
            ret = done.stdout.strip()
        if done.returncode or (isinstance(ret, dict) and ("retcode" in ret or "error" in ret)):
            raise RuntimeError(f"salt-run {' '.join(args)} failed ({done.returncode}): {done.stdout[-1500:]}")
        return elapsed, ret

    def log_lines(self, name):
        try:
            with open(self.path("logs", name), encoding="utf-8", errors="replace") as handle:
                return handle.read().splitlines()
        except FileNotFoundError:
            return []


class Bus:
    """The master's event bus, listened to from a thread: the events envflow, runners and salt-api fire."""

    WATCHED = ("salt/envflow/", "salt/run/", f"salt/netapi/hook/{HOOK}")

    def __init__(self, opts):
        self._opts = opts
        self._events = []  # (tag, data without the hook's headers and body)
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._failed = None
        self._thread = threading.Thread(target=self._listen, name="bus", daemon=True)
        self._thread.start()
        if not self._ready.wait(TIMEOUT_S) or self._failed:
            raise RuntimeError(f"could not listen to the master's event bus: {self._failed}")

    def _listen(self):
        import salt.utils.event

        try:
            event = salt.utils.event.get_master_event(self._opts, self._opts["sock_dir"], listen=True)
            event.connect_pub(timeout=TIMEOUT_S)
        except Exception as exc:  # pylint: disable=broad-except
            self._failed = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                found = event.get_event(wait=0.2, full=True)
                if not found or not found["tag"].startswith(self.WATCHED):
                    continue
                data = self.kept(found["tag"], found.get("data") or {})
                with self._cond:
                    self._events.append((found["tag"], data))
                    self._cond.notify_all()
        finally:
            event.destroy()

    @staticmethod
    def kept(tag, data):
        """What is kept of an event's data: of a hook's, only when it was fired (not its headers and body)."""
        return {"_stamp": data.get("_stamp")} if tag.startswith("salt/netapi/hook/") else data

    def mark(self):
        with self._cond:
            return len(self._events)

    def matching(self, match, after=0):
        with self._cond:
            return [(tag, data) for tag, data in self._events[after:] if match(tag, data)]

    def wait(self, match, after=0, timeout=TIMEOUT_S, count=1):
        """The first ``count`` events after index ``after`` that ``match(tag, data)``; fewer after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [(tag, data) for tag, data in self._events[after:] if match(tag, data)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    return found[:count]
                self._cond.wait(min(left, 0.5))

    def settle(self, match, after, count, idle=5, timeout=TIMEOUT_S):
        """The events after ``after`` that ``match``, once there are ``count`` or none came for ``idle`` seconds."""
        deadline = time.monotonic() + timeout
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            found = self.matching(match, after)
            if len(found) >= count:
                return found
            if len(found) != seen:
                seen, quiet_since = len(found), time.monotonic()
            elif time.monotonic() - quiet_since > idle:
                return found
            time.sleep(0.1)
        return self.matching(match, after)

    def close(self):
        self._stop.set()
        self._thread.join(5)


def _runner_job(fun, part):
    return lambda tag, data: tag.startswith("salt/run/") and tag.endswith(f"/{part}") and data.get("fun") == fun


PUSHED_NEW = _runner_job("runner.envflow.pushed", "new")
PUSHED_RET = _runner_job("runner.envflow.pushed", "ret")


def refused(tag, _data):
    return tag == "salt/envflow/hook/refused"


class ServedWatch(threading.Thread):
    """Reads, every few ms, which commit ``path`` serves; ``seconds`` since ``t0`` when it is ``commit``."""

    def __init__(self, path, commit, t0, timeout=TIMEOUT_S):
        super().__init__(name="served", daemon=True)
        from envflow.served import ServedDir

        self.served = ServedDir(path)
        self.commit, self.t0, self.timeout = commit, t0, timeout
        self.seconds = None
        self.start()

    def run(self):
        from envflow.errors import EnvflowError

        while time.perf_counter() - self.t0 < self.timeout:
            try:
                deployed = self.served.deployed()
            except (EnvflowError, OSError, ValueError):
                deployed = None
            if deployed and deployed["id"] == self.commit:
                self.seconds = time.perf_counter() - self.t0
                return
            time.sleep(POLL_S)


# -- measuring ----------------------------------------------------------------


class Bench:
    """One size: the repository, the daemons and the clients, and every measurement made with them."""

    def __init__(self, root, size, args):
        self.root, self.size, self.args = root, size, args
        self.secret = secrets.token_hex(20)
        start = time.perf_counter()
        self.repo = BenchRepo(root, size)
        for _env, branch in ENVIRONMENTS:
            if branch != BRANCH:
                git("branch", branch, BRANCH, cwd=self.repo.path)
        self.work = Work(self.repo, root)
        self.built_s = time.perf_counter() - start
        self.site = Site(os.path.join(root, "salt"), self.repo, self.secret)
        self.bus = self.local = self.runner = None
        self.found = {"files": len(self.repo.contents), "built_s": self.built_s, "problems": []}

    def problem(self, text):
        progress(f"  problem: {text}")
        self.found["problems"].append(text)

    # -- set-up

    def start(self):
        import salt.client
        import salt.config
        import salt.runner

        progress(f"size {self.size}: starting salt-master, salt-minion and salt-api ...")
        self.site.start_all()
        conf = os.path.join(self.site.conf, "master")
        self.bus = Bus(salt.config.client_config(conf))
        self.local = salt.client.LocalClient(mopts=salt.config.client_config(conf))
        self.runner = salt.runner.RunnerClient(salt.config.master_config(conf))
        deadline = time.monotonic() + 90
        while self.local.cmd(MINION, "test.ping", timeout=5).get(MINION) is not True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{MINION} did not answer test.ping within 90 s")
        progress(f"size {self.size}: deploying every environment (salt-run envflow.refresh) ...")
        self.found["first_refresh_s"], ret = self.site.salt_run("envflow.refresh")
        served = {env: entry.get("new") for env, entry in ret["environments"].items()}
        if set(served.values()) != {self.repo.tip}:
            raise RuntimeError(f"the first refresh served {served}, not {self.repo.tip} everywhere")

    def stop(self):
        closers = (
            self.bus and self.bus.close,
            self.local and self.local.destroy,
            getattr(self.runner, "destroy", None),
        )
        with signals_held():
            for closing in closers:
                if closing:
                    with contextlib.suppress(Exception):
                        closing()
            with contextlib.redirect_stdout(sys.stderr):
                self.site.stop_all()

    def served(self, env="test"):
        from envflow.served import ServedDir

        return (ServedDir(self.site.paths[env]).deployed() or {}).get("id")

    def minion_file(self, path):
        ret = self.local.cmd(MINION, "cp.get_file_str", [f"salt://{path}"], kwarg={"saltenv": "test"}, timeout=15)
        return ret.get(MINION)

    # -- push latency

    def push_round(self, minion, change=None):
        """Push (unless ``change`` was pushed already), POST the signed hook, time what follows; a dict of seconds."""
        change = change or self.work.change()
        headers, body = hooksign.github(self.secret, f"refs/heads/{BRANCH}", change.commit, before=change.before)
        mark = self.bus.mark()
        posted_at = time.time()
        t0 = time.perf_counter()
        status, answer = hooksign.post(self.site.url, headers, body)
        found = {"push": change.push_s, "answered": time.perf_counter() - t0, "status": status}
        if status != 200:
            self.problem(f"salt-api answered the signed hook with HTTP {status}: {answer[:200]}")
        # A refused POST may still have fired its event: wait for it, a shorter while.
        watch = ServedWatch(self.site.paths["test"], change.commit, t0, TIMEOUT_S if status == 200 else 15)
        if minion:
            calls, found["minion"] = 0, None
            text = change.content.decode()
            while time.perf_counter() - t0 < TIMEOUT_S:
                calls += 1
                if self.minion_file(change.path) == text:
                    found["minion"] = time.perf_counter() - t0
                    break
            found["calls"] = calls
            if found["minion"] is None:
                self.problem(f"the minion did not get the new {change.path} within {TIMEOUT_S} s of the POST")
        watch.join()
        found["served"] = watch.seconds
        if watch.seconds is None:
            self.problem(f"{change.commit[:10]} was not served within {watch.timeout} s of the POST (HTTP {status})")
            return found
        with open(os.path.join(self.site.paths["test"], change.path), "rb") as handle:
            if handle.read() != change.content:
                self.problem(f"test serves {change.commit[:10]} but not the new content of {change.path}")
        self._where_the_time_went(found, mark, posted_at, change.commit)
        return found

    def _where_the_time_went(self, found, mark, posted_at, commit):
        """The bus's view of one push: when each step's event was fired, since the POST; check the runner's return."""
        ended = self.bus.wait(PUSHED_RET, mark)
        if not ended:
            self.problem(f"no runner.envflow.pushed job ended within {TIMEOUT_S} s of the POST of {commit[:10]}")
            return
        ret = ended[0][1]
        if not ret.get("success", True) or "retcode" in (ret.get("return") or {}):
            self.problem(f"runner.envflow.pushed failed: {json.dumps(ret.get('return'))[:400]}")
        steps = {
            "hook event": lambda tag, data: tag == f"salt/netapi/hook/{HOOK}",
            "runner start": PUSHED_NEW,
            "deployed event": lambda tag, data: tag == "salt/envflow/test/deployed" and data.get("new") == commit,
            "runner end": PUSHED_RET,
        }
        for step, match in steps.items():
            seen = self.bus.matching(match, mark)
            stamp = _stamp(seen[0][1]) if seen else None
            found[step] = None if stamp is None else stamp - posted_at
        found["runners"] = len(self.bus.matching(PUSHED_RET, mark))

    def measure_pushes(self):
        progress(
            f"size {self.size}: push latency, {self.args.repeat} quiet rounds and {self.args.repeat} with the minion"
        )
        self.found["cold"] = self.push_round(minion=True)  # the reactor's and the runner's loaders are cold
        roundtrip = []
        for _ in range(5):
            start = time.perf_counter()
            if self.minion_file(self.repo.changed) != self.repo.contents[self.repo.changed].decode():
                self.problem("cp.get_file_str of an unchanged file returned something else")
            roundtrip.append(time.perf_counter() - start)
        self.found["roundtrip"] = roundtrip
        self.found["quiet"], self.found["minion"] = [], []
        for number in range(2 * self.args.repeat):
            kind = "minion" if number % 2 else "quiet"
            self.found[kind].append(self.push_round(minion=kind == "minion"))

    # -- by hand, and the polling fallback

    def measure_by_hand(self):
        progress(f"size {self.size}: salt-run envflow.refresh test by hand, and in process")
        self.found["cli"], self.found["inprocess"] = [], []
        if "envflow.refresh" not in self.runner.functions:
            reason = self.runner.functions.missing_fun_string("envflow.refresh")
            raise RuntimeError(f"envflow's runner does not load in this process (reinstalled meanwhile?): {reason}")
        self.runner.cmd("envflow.refresh", ["test"], print_event=False)  # loads the runners, untimed
        for _ in range(self.args.repeat):
            change = self.work.change()
            elapsed, _ret = self.site.salt_run("envflow.refresh", "test")
            self.found["cli"].append(elapsed)
            if self.served() != change.commit:
                self.problem(f"salt-run envflow.refresh test did not serve {change.commit[:10]}")
        for _ in range(self.args.repeat):
            change = self.work.change()
            start = time.perf_counter()
            ret = self.runner.cmd("envflow.refresh", ["test"], print_event=False)
            self.found["inprocess"].append(time.perf_counter() - start)
            if "retcode" in ret or self.served() != change.commit:
                self.problem(f"envflow.refresh test in process did not serve {change.commit[:10]}: {ret}")

    def measure_polling(self):
        progress(f"size {self.size}: the polling fallback's no-op round")
        self.found["noop_cli"], self.found["noop_inprocess"], self.found["salt_run"] = [], [], []
        for _ in range(self.args.repeat):
            elapsed, ret = self.site.salt_run("envflow.refresh")
            self.found["noop_cli"].append(elapsed)
            self._check_noop(ret, "salt-run envflow.refresh")
        for _ in range(self.args.repeat):
            start = time.perf_counter()
            ret = self.runner.cmd("envflow.refresh", print_event=False)
            self.found["noop_inprocess"].append(time.perf_counter() - start)
            self._check_noop(ret, "envflow.refresh in process")
        for _ in range(min(self.args.repeat, 5)):
            elapsed, _ret = self.site.salt_run("test.arg")
            self.found["salt_run"].append(elapsed)

    def _check_noop(self, ret, what):
        changed = [env for env, entry in (ret.get("environments") or {}).items() if entry.get("changed")]
        if "retcode" in ret or changed or len(ret.get("environments") or {}) != len(ENVIRONMENTS):
            self.problem(f"{what} with nothing pushed: {json.dumps(ret)[:300]}")

    # -- the flood

    def flood(self, label, senders):
        """``--flood`` wrongly signed requests from ``senders`` threads, then a good push; what happened."""
        count = self.args.flood
        progress(f"size {self.size}: a flood of {count} wrongly signed requests ({label}), then a good push")
        change = self.work.change()  # pushed before the flood: the good POST follows its last request at once
        mark = self.bus.mark()
        statuses, lock = {}, threading.Lock()

        def send(share):
            for _ in range(share):
                headers, body = hooksign.github("not-the-secret", f"refs/heads/{BRANCH}", secrets.token_hex(20))
                try:
                    status, _answer = hooksign.post(self.site.url, headers, body, timeout=FLOOD_WINDOW_S)
                except OSError as exc:
                    status = type(exc).__name__
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

        shares = [count // senders + (n < count % senders) for n in range(senders)]
        threads = [threading.Thread(target=send, args=(share,), daemon=True) for share in shares]
        start = time.perf_counter()
        flood_started_at = time.time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent_s = time.perf_counter() - start
        good = self.push_round(minion=False, change=change)
        seen = self.bus.settle(refused, mark, count)
        stamps = [_stamp(data) for _tag, data in seen]
        return {
            "label": label,
            "count": count,
            "sent_s": sent_s,
            "statuses": statuses,
            "good": good,
            "refusals": len(seen),
            "last_refusal_s": max(stamps) - flood_started_at if stamps and None not in stamps else None,
            # How fast the reactor worked through the refusals once they came.
            "reactor_pace": (len(stamps) - 1) / (max(stamps) - min(stamps))
            if len(stamps) > 1 and None not in stamps and max(stamps) > min(stamps)
            else None,
            "leaked": sum(self.secret in json.dumps(data) for _tag, data in seen),
        }

    def probe(self):
        """The HTTP status salt-api gives a correctly signed GitHub ping (genuine, deploys nothing)."""
        headers, body = hooksign.github(self.secret, f"refs/heads/{BRANCH}", self.repo.tip, event="ping")
        try:
            return hooksign.post(self.site.url, headers, body, timeout=FLOOD_WINDOW_S)[0]
        except OSError as exc:
            return type(exc).__name__

    def measure_floods(self):
        floods = self.found["floods"] = []
        floods.append(self.flood("one sender", 1))
        pool = self.site.push_conf["rest_cherrypy"].get("thread_pool")
        label = f"{FLOOD_THREADS} senders, push.conf's salt-api" + (f", thread_pool: {pool}" if pool else "")
        floods.append(self.flood(label, FLOOD_THREADS))
        time.sleep(2)
        floods[-1]["probe"] = self.probe()
        if floods[-1]["probe"] != 200:
            self.problem(
                f"after the flood from {FLOOD_THREADS} senders salt-api still answers a signed ping with HTTP "
                f"{floods[-1]['probe']} (2 s later)"
            )
        if pool != 1:
            # salt-api's /hook shares one event loop between CherryPy's threads: one thread serves requests in turn.
            self.site.restart_api(thread_pool=1)
            floods.append(self.flood(f"{FLOOD_THREADS} senders, salt-api thread_pool: 1", FLOOD_THREADS))
            floods[-1]["workaround"] = True

    # -- the master's log

    def read_logs(self):
        lines = self.site.log_lines("master.log")
        flagged = [line for line in lines if re.search(r"\[(WARNING|ERROR|CRITICAL)\s*\]", line)]
        refused = [line for line in flagged if "refused a push hook" in line]
        unclosed = [line for line in flagged if re.search(r"unclosed \w+ <", line)]
        stopping = [line for line in flagged if "received a SIGTERM" in line]
        known = set(refused + unclosed + stopping)
        self.found["log"] = {
            "refused": len(refused),
            "unclosed": len(unclosed),
            "other": [line for line in flagged if line not in known],
            "pushes": sum("envflow: github push from" in line for line in lines),
            "api_failures": hook_failures(self.site.log_lines("api.log")),
            "secret": sum(
                self.secret in line
                for name in ("master.log", "api.log", "minion.log")
                for line in self.site.log_lines(name)
            ),
        }

    def run(self):
        try:
            self.start()
            self.measure_pushes()
            self.measure_by_hand()
            self.measure_polling()
            if self.args.flood:
                self.measure_floods()
        finally:
            self.stop()
            self.read_logs()
        return self.found


# -- report -------------------------------------------------------------------

_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \[")


def hook_failures(lines):
    """Why salt-api answered requests to /hook with HTTP 500, from its debug log: ``{exception (where): count}``."""
    found = {}
    for number, line in enumerate(lines):
        if "Error while processing request for: /hook/" not in line:
            continue
        block = []
        for following in lines[number + 1 :]:
            if _LOG_RECORD.match(following):
                break
            block.append(following.strip())
        frames = [text for text in block if text.startswith('File "')]
        raised = next((text for text in reversed(block) if text), "?")
        salts = [text for text in frames if "/site-packages/salt/" in text] or frames
        where = re.sub(r'File ".*/site-packages/', "", salts[-1]).replace('"', "") if salts else "?"
        key = f"{raised} (in {where})"
        found[key] = found.get(key, 0) + 1
    return found


def _salt_version():
    import salt.version

    return salt.version.__version__


def _envflow_origin():
    import envflow

    return os.path.dirname(envflow.__file__)


def _installed_at():
    """When the envflow package the daemons import was last (re)installed: its folder's mtime."""
    return os.stat(_envflow_origin()).st_mtime


def report(results, args, started):
    lines = []
    out = lines.append
    schedule = _load_yaml(os.path.join(PIPELINES, "schedule.conf"))["schedule"]
    job = next(iter(schedule.values()))
    push_conf = _load_yaml(os.path.join(PIPELINES, "push.conf"))
    out("")
    out("envflow deploy-on-push benchmark")
    out(
        f"python {sys.version.split()[0]}, salt {_salt_version()}, {git('--version')}, {os.cpu_count()} CPUs; "
        f"envflow imported from {_envflow_origin()} (here and in the daemons)"
    )
    out(
        "a real salt-master (push.conf's reactor on salt/netapi/hook/envflow, the shipped envflow-push.sls, "
        f"reactor_worker_threads: {push_conf['reactor_worker_threads']}), salt-minion and salt-api (rest_cherrypy) "
        "from this virtualenv;"
    )
    api = {
        key: value for key, value in push_conf["rest_cherrypy"].items() if not key.startswith(("ssl_", "host", "port"))
    }
    out(
        f"  salt-api: push.conf's rest_cherrypy ({', '.join(f'{key}: {value}' for key, value in api.items())}) on "
        "127.0.0.1 over plain HTTP (disable_ssl: True):"
    )
    out("    fine for timing on loopback, never for a real git server (push.conf serves it over TLS)")
    out(
        "  environments test/stage/prod (develop/stage/master) over a bare repository on local disk; "
        f"envflow:webhook:secret a random string; about {50} files per directory (tests/bench_deploy.py's builder)"
    )
    out("times in ms, median of the rounds (min-max):")
    out("  git push = `git push` of a one-line change of one file on develop from a work clone (before the POST)")
    out("  POST = until salt-api answered the GitHub-signed hook (tests/hooksign.github) to /hook/envflow")
    out(
        f"  served = from the POST until ServedDir(test's path).deployed() names the pushed commit (read every "
        f"{POLL_S * 1000:.0f} ms in this process)"
    )
    out(
        "  minion = from the POST until cp.get_file_str salt://<changed file> saltenv=test, issued again and again "
        "through a salt.client.LocalClient in this process from right after the POST, returns the new content;"
    )
    out("    those rounds (with minion) also time served, under the minion's requests; quiet rounds time served alone")
    out(
        "  hook event, runner start, deployed event, runner end = when the master fired salt/netapi/hook/envflow, "
        "the runner.envflow.pushed job's new and ret events and salt/envflow/test/deployed (their _stamp),"
        " since the POST"
    )
    out(
        f"load average (1 min) at the start / end: {args.load_start:.2f} / {os.getloadavg()[0]:.2f}; other work "
        "on the machine shows up as noise, ratios within one run are what to compare"
    )
    if _installed_at() != args.installed_at:
        when = datetime.datetime.fromtimestamp(_installed_at()).strftime("%H:%M:%S")
        out(f"WARNING: envflow was reinstalled during the run (at {when}): parts of it ran other code than the rest")

    out("")
    out("push latency")
    columns = ("git push", "POST", "served", "(min-max)", "minion", "(min-max)", "calls")
    widths = (9, 6, 7, 11, 7, 11, 6)
    out(f"{'files':>6}  {'rounds':<28} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for res in results.values():
        rows = (
            ("first push (loaders cold)", [res["cold"]]),
            (f"quiet (median of {len(res['quiet'])})", res["quiet"]),
            (f"with minion (median of {len(res['minion'])})", res["minion"]),
        )
        for label, rounds in rows:
            get = lambda key, rounds=rounds: [r.get(key) for r in rounds]  # noqa: E731
            minion = get("minion")
            cells = (
                _ms(_median(get("push"))),
                _ms(_median(get("answered"))),
                _ms(_median(get("served"))),
                _spread(get("served")),
                _ms(_median(minion)) if any(m is not None for m in minion) else "-",
                _spread(minion),
                f"{_median(get('calls')):.0f}" if any(r.get("calls") for r in rounds) else "-",
            )
            out(f"{res['files']:>6}  {label:<28} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
        out(
            f"{'':>6}  (a cp.get_file_str of an unchanged file, the minion column's resolution: "
            f"{_ms(_median(res['roundtrip']))} ms, {_spread(res['roundtrip'])}; where calls is 1, the first call, "
            "issued right after the POST,"
        )
        out(f"{'':>6}  already returned the new content: that round's figure is one such call after the POST)")
    out("")
    out("where a push's time goes (the master's events, ms since the POST; medians of every round)")
    steps = ("hook event", "runner start", "deployed event", "runner end")
    out(f"{'files':>6}  " + " ".join(f"{step:>14}" for step in steps) + f" {'pushed jobs/round':>18}")
    for res in results.values():
        rounds = res["quiet"] + res["minion"]
        cells = " ".join(f"{_ms(_median([r.get(step) for r in rounds])):>14}" for step in steps)
        jobs = sorted({r.get("runners") for r in rounds if r.get("runners") is not None})
        out(f"{res['files']:>6}  {cells} {'/'.join(map(str, jobs)) or '-':>18}")

    out("")
    out("the same one-file change served by hand (after its git push; no hook): salt-run envflow.refresh test, wall")
    out("  time of the CLI; and the same runner in this process (salt.runner.RunnerClient, loaded before timing);")
    out("  beside them the hook's push to served (quiet median) and to the end of its runner.envflow.pushed job")
    out(
        f"{'files':>6}  {'CLI':>7} {'(min-max)':>11} {'in process':>11} {'(min-max)':>11} {'hook served':>12} "
        f"{'hook job end':>13} {'served/CLI':>11} {'served/in process':>18} {'job end/in process':>19}"
    )
    for res in results.values():
        quiet = _median([r.get("served") for r in res["quiet"]])
        ended = _median([r.get("runner end") for r in res["quiet"]])
        cli, inproc = _median(res["cli"]), _median(res["inprocess"])
        out(
            f"{res['files']:>6}  {_ms(cli):>7} {_spread(res['cli']):>11} {_ms(inproc):>11} "
            f"{_spread(res['inprocess']):>11} {_ms(quiet):>12} {_ms(ended):>13} {_ratio(quiet, cli):>11} "
            f"{_ratio(quiet, inproc):>18} {_ratio(ended, inproc):>19}"
        )

    out("")
    out(
        f"the polling fallback (schedule.conf: {job['function']} every {job['seconds']} s): one round where nothing "
        f"was pushed, the {len(ENVIRONMENTS)} environments"
    )
    out("  (one fetch, a scan of each served tree for hand edits); CLI wall time, the runner in this process, and")
    out("  salt-run test.arg: the CLI's own start-up")
    out(
        f"{'files':>6}  {'CLI':>7} {'(min-max)':>11} {'in process':>11} {'(min-max)':>11} {'salt-run test.arg':>18} "
        f"{'CPU s per hour':>15}"
    )
    for res in results.values():
        inproc = _median(res["noop_inprocess"])
        hourly = f"{inproc * 3600 / job['seconds']:.1f}" if inproc is not None else "-"
        out(
            f"{res['files']:>6}  {_ms(_median(res['noop_cli'])):>7} {_spread(res['noop_cli']):>11} {_ms(inproc):>11} "
            f"{_spread(res['noop_inprocess']):>11} {_ms(_median(res['salt_run'])):>18} {hourly:>15}"
        )
    out(f"{'':>6}  (CPU s per hour: the in-process round's wall time times the rounds in an hour, an upper bound)")

    if any(res.get("floods") for res in results.values()):
        out("")
        out(
            "floods: wrongly signed GitHub requests as fast as salt-api answers them, then one good push (pushed "
            "before the flood),"
        )
        out(
            "  its POST right after the flood's last answer; served = from that POST (ms), against the quiet median; "
            "last refusal ="
        )
        out("  when the master fired the last salt/envflow/hook/refused event, in s since the flood's first request;")
        out("  reactor/s = refusal events fired per second, from the first to the last: the reactor's pace on a flood")
        out(
            f"{'files':>6}  {'flood':<50} {'requests':>8} {'in s':>5} {'per s':>6} {'HTTP answers':>14} "
            f"{'good POST':>9} {'served':>7} {'vs quiet':>8} {'refusals':>8} {'last refusal':>12} {'reactor/s':>9}"
        )
        for res in results.values():
            quiet = _median([r.get("served") for r in res["quiet"]])
            for flood in res.get("floods", []):
                statuses = ",".join(f"{value}x{key}" for key, value in sorted(flood["statuses"].items(), key=str))
                last, pace = flood["last_refusal_s"], flood["reactor_pace"]
                served = flood["good"].get("served")
                out(
                    f"{res['files']:>6}  {flood['label']:<50} {flood['count']:>8} {flood['sent_s']:>5.1f} "
                    f"{flood['count'] / flood['sent_s']:>6.0f} {statuses:>14} {flood['good']['status']:>9} "
                    f"{_ms(served):>7} {_ratio(served, quiet):>8} {flood['refusals']:>8} "
                    f"{'-' if last is None else f'{last:.1f}':>12} {'-' if pace is None else f'{pace:.0f}':>9}"
                )
                if "probe" in flood:
                    out(f"{'':>6}  {'':<50} (then, 2 s later, a correctly signed ping: HTTP {flood['probe']})")

    out("")
    out("aims (PASS or MISS)")
    met = missed = 0

    def aim(label, ok):
        nonlocal met, missed
        met, missed = met + bool(ok), missed + (not ok)
        out(f"  {label}: {'PASS' if ok else 'MISS'}")

    for size, res in results.items():
        quiet = _median([r.get("served") for r in res["quiet"]])
        limit = AIMS_S.get(size)
        if limit is None:
            out(f"  {res['files']} files, push to served = {_ms(quiet)} ms: no aim at this size")
        else:
            aim(
                f"{res['files']} files, push to served (quiet median) = {_ms(quiet)} ms (aim < {limit * 1000:,.0f} ms)",
                quiet is not None and quiet < limit,
            )
    for res in results.values():
        for flood in res.get("floods", []):
            if flood.get("workaround"):
                continue  # not push.conf's salt-api: shown above, no aim
            served = flood["good"].get("served")
            aim(
                f"{res['files']} files, a good push after {flood['count']} bad requests ({flood['label']}) is served "
                f"(in {_ms(served)} ms)",
                served is not None,
            )
    out(f"  {met} aims met, {missed} missed")
    for res in results.values():
        quiet = _median([r.get("served") for r in res["quiet"]])
        cli, inproc = _ratio(quiet, _median(res["cli"])), _ratio(quiet, _median(res["inprocess"]))
        out(
            f"  ({res['files']} files: hook latency / hand-run refresh = {cli} of the CLI, {inproc} of the runner "
            "in process)"
        )

    out("")
    out("the master's log (level info) and what misbehaved")
    for res in results.values():
        log = res["log"]
        leaked = sum(flood["leaked"] for flood in res.get("floods", []))
        out(
            f"  {res['files']} files: {log['refused']} 'refused a push hook' warnings, {log['pushes']} 'github push "
            f"from' lines, {log['unclosed']} of Salt's own 'unclosed Runner' warnings (salt-run's), "
            f"{len(log['other'])} other warnings or errors;"
        )
        out(
            f"    the secret in the daemons' logs: {log['secret']} times, in the refusal events: {leaked} times; "
            f"repository built in {res['built_s']:.1f} s; first refresh of every environment "
            f"{_ms(res.get('first_refresh_s'))} ms"
        )
        for line in log["other"][:8]:
            out(f"    {line[:300]}")
        for raised, count in log["api_failures"].items():
            out(f"    salt-api's log (debug level): {count} requests to /hook answered HTTP 500 after {raised}")
        for text in res["problems"]:
            out(f"    problem: {text}")
        if not res["problems"]:
            out("    no problem seen: every push served, every runner returned without failing")
    out(f"\n(total run time {time.perf_counter() - started:.0f} s)")
    print("\n".join(lines), flush=True)


def _ratio(numerator, denominator):
    return "-" if not numerator or not denominator else f"{numerator / denominator:.2f}x"


def _interrupted(signum, _frame):
    """Ctrl-C or SIGTERM: stop the run through the finally blocks that stop the daemons; ignore any more of them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    sys.exit(143)


def _workdir(prefix="envflow-push-"):
    """A temporary directory short enough for Salt's unix sockets (107 bytes)."""
    workdir = tempfile.mkdtemp(prefix=prefix)
    if len(workdir) > 40:
        os.rmdir(workdir)
        workdir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    return workdir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--sizes", default="200,20000", help="comma-separated file counts (default: 200,20000)")
    parser.add_argument("--repeat", type=int, default=10, help="rounds of each kind per size (default: 10)")
    parser.add_argument(
        "--flood", type=int, default=500, help="wrongly signed requests before a good push (default: 500; 0: none)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (and the logs)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    if not sizes or min(sizes) < 2 or args.repeat < 1 or args.flood < 0:
        parser.error("give sizes of at least 2 files, --repeat of at least 1 and --flood of 0 or more")
    for daemon in ("salt-master", "salt-minion", "salt-api", "salt-run"):
        if not os.access(os.path.join(sys.prefix, "bin", daemon), os.X_OK):
            parser.error(f"no {daemon} beside this Python: run it with a virtualenv's Python (tests/venvs.py)")
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    args.load_start = os.getloadavg()[0]
    args.installed_at = _installed_at()
    started = time.perf_counter()
    workdir = _workdir()
    benches = []
    try:
        results = {}
        for size in sizes:
            root = os.path.join(workdir, f"s{size}")
            os.makedirs(root)
            progress(f"size {size}: building the repository ...")
            benches.append(Bench(root, size, args))
            results[size] = benches[-1].run()
        report(results, args, started)
    except KeyboardInterrupt:
        progress("interrupted; the daemons are stopped")
        return 130
    finally:
        with signals_held():
            for bench in benches:
                bench.stop()  # again: a signal may have cut its own stop short; stopping twice does nothing
            if args.keep:
                progress(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
