"""See envflow promote a change to a real minion, on a throwaway site it builds itself.

    python3 tests/quickstart.py

Everything lives in ``.quickstart/`` of this checkout, wiped at each run:

1. a bare git repository standing for your team's automation repository, with
   the persistent branches ``develop``, ``stage`` and ``master``; its top file
   puts the minion in the ``stage`` saltenv;
2. a master config whose ``file_roots`` and ``envflow`` block map the saltenvs
   ``test``, ``stage`` and ``prod`` to the branches and their directories, and
   a minion config;
3. a real ``salt-master`` and ``salt-minion``, started from ``.venvs/salt3008``
   (made on first use, with envflow installed from this checkout), and
   ``salt-run envflow.refresh`` to deploy every environment;
4. a change committed on ``develop`` and deployed to ``test``;
5. the minion's highstate, from ``stage``: it still writes the old file;
6. ``salt-run envflow.promote stage``;
7. the minion's highstate again, now writing the new file, and ``salt-run envflow.status``.

The daemons are stopped at the end, whatever happens.
"""

import contextlib
import importlib.metadata
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import gitrepo
import venvs

LINE = venvs.LINES["3008"]
MINION = "quickstart-minion"
MOTD = "motd/motd"

# The automation repository: a top file, one state, the file it manages.
STATES = {
    # Every branch carries the same top file; the minion takes its states from stage.
    "top.sls": f"stage:\n  {MINION!r}:\n    - motd\n",
    "motd/init.sls": (
        "# The message of the day, kept inside the quickstart folder (root_dir), not /etc.\n"
        "{{ opts.root_dir }}/etc/motd:\n"
        "  file.managed:\n"
        "    - source: salt://motd/motd\n"
    ),
    MOTD: "Welcome. This server runs the automation code v1.\n",
}
# Each saltenv and the branch it serves, in pipeline order.
ENVIRONMENTS = [("test", "develop"), ("stage", "stage"), ("prod", "master")]
CHANGE = {MOTD: "Welcome. This server runs the automation code v2, tried in test.\n"}


class StepFailed(Exception):
    """A step of the quickstart did not do what it should; the message says which."""


def heading(text):
    print(f"\n== {text}", flush=True)


def note(text):
    print(f"   {text}", flush=True)


def shown(path):
    """``path`` as the user would type it from where they ran the quickstart."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("../..") else path


class Site:
    """The quickstart's folder, configs and daemons."""

    def __init__(self, root):
        self.root = root
        self.conf = os.path.join(root, "etc", "salt")
        self.bin = os.path.join(sys.prefix, "bin")
        self.daemons = []

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    # -- configuration ---------------------------------------------------------------

    def write_configs(self, remote):
        """Write the master and minion configs; return the master's request port."""
        user = pwd.getpwuid(os.getuid()).pw_name
        publish_port, ret_port = free_ports(2)
        paths = {env: self.path("srv", "salt", env) for env, _branch in ENVIRONMENTS}
        file_roots = "\n".join(f"  {env}: [{json.dumps(paths[env])}]" for env, _branch in ENVIRONMENTS)
        envflow = f"envflow:\n  repo: {json.dumps(remote.path)}\n  environments:\n" + "".join(
            f"    - {{name: {env}, branch: {branch}, path: {json.dumps(paths[env])}}}\n" for env, branch in ENVIRONMENTS
        )
        os.makedirs(self.conf)
        # Relative paths are under root_dir. The ports are free ones, never a real master's.
        self.write(
            "master",
            f"""\
root_dir: {json.dumps(self.root)}
pki_dir: pki/master
cachedir: cache/master
sock_dir: run/master
pidfile: run/master.pid
log_file: logs/master.log
key_logfile: logs/key.log
user: {user}
interface: 127.0.0.1
publish_port: {publish_port}
ret_port: {ret_port}
auto_accept: True

# Each saltenv serves one directory ...
file_roots:
{file_roots}

# ... and envflow keeps each directory serving its branch.
{envflow}""",
        )
        self.write(
            "minion",
            f"""\
id: {MINION}
root_dir: {json.dumps(self.root)}
pki_dir: pki/minion
cachedir: cache/minion
sock_dir: run/minion
pidfile: run/minion.pid
log_file: logs/minion.log
user: {user}
master: 127.0.0.1
master_port: {ret_port}
publish_port: {publish_port}
acceptance_wait_time: 1

# This minion belongs to the stage environment.
saltenv: stage

# For salt-call envflow.* on this host: the same block, and where the master's config is,
# so a deploy here also refreshes the master's file server.
{envflow}  master_config: {json.dumps(os.path.join(self.conf, "master"))}
""",
        )
        return ret_port

    def write(self, name, text):
        with open(os.path.join(self.conf, name), "w", encoding="utf-8") as handle:
            handle.write(text)

    # -- daemons ---------------------------------------------------------------------

    def start(self, name):
        # A session of its own: Ctrl-C reaches the quickstart, which stops the daemons in order.
        with open(self.path(f"{name}.out"), "w", encoding="utf-8") as log:
            process = subprocess.Popen(  # pylint: disable=consider-using-with
                [os.path.join(self.bin, name), "-c", self.conf, "--log-level=warning"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.daemons.append((name, process))
        return process

    def stop_all(self):
        for name, process in reversed(self.daemons):
            if process.poll() is None:
                # The daemon's own process group: the master's workers go with it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            # Workers that outlived their parent share its process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            note(f"stopped {name}")
        self.daemons = []

    def check_running(self, name, process):
        if process.poll() is not None:
            with open(self.path(f"{name}.out"), encoding="utf-8", errors="replace") as handle:
                tail = handle.read().splitlines()[-15:]
            raise StepFailed(f"{name} exited with code {process.returncode}:\n" + "\n".join(tail))

    # -- commands --------------------------------------------------------------------

    def command(self, tool, *args, show=True, color=False):
        """Run ``tool`` (salt, salt-run) against the site; print the command and its output when ``show``."""
        argv = [os.path.join(self.bin, tool), "-c", self.conf, *args]
        if color and sys.stdout.isatty():
            argv.append("--force-color")
        if show:
            print(f"\n   $ {tool} -c {shown(self.conf)} {' '.join(args)}", flush=True)
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if show:
            for line in (done.stdout + done.stderr).rstrip("\n").splitlines():
                # Salt 3008's salt-run warns so after every runner, its own ones included.
                if not re.search(r"unclosed .*; call ``(destroy|close)\(\)``", line):
                    print(f"     {line}")
            sys.stdout.flush()
        return done

    def run(self, *args):
        """``salt-run``; a runner that fails exits non-zero."""
        done = self.command("salt-run", *args, color=True)
        if done.returncode:
            raise StepFailed(f"salt-run {' '.join(args)} failed (exit {done.returncode})")
        return done

    def highstate(self):
        """Apply the minion's states and return the file they wrote."""
        done = self.command("salt", MINION, "state.apply", "--state-verbose=False", color=True)
        if done.returncode:
            raise StepFailed(f"state.apply on {MINION} failed (exit {done.returncode})")
        with open(self.path("etc", "motd"), encoding="utf-8") as handle:
            content = handle.read()
        note(f"the minion's {shown(self.path('etc', 'motd'))} now reads: {content.strip()!r}")
        return content


def free_ports(count):
    """``count`` TCP ports that nothing listens on now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for(what, condition, timeout, check=lambda: None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        if condition():
            return
        time.sleep(0.5)
    raise StepFailed(f"timed out after {timeout}s waiting for {what}")


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def site_root():
    """``.quickstart`` in the checkout, or a temporary folder if that path is too long for Salt's sockets."""
    root = os.path.join(venvs.REPO, ".quickstart")
    # Unix socket paths are limited to 107 bytes; the longest Salt makes here is this one.
    if len(os.path.join(root, "run", "minion", "minion_event_0123456789_pub.ipc")) > 100:
        return tempfile.mkdtemp(prefix="envflow-quickstart-")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    return root


def quickstart():
    started = time.monotonic()
    site = Site(site_root())
    print(f"envflow quickstart, salt {importlib.metadata.version('salt')}, in {site.root} (wiped at each run)")

    heading("1. The automation repository: develop -> test, stage -> stage, master -> prod")
    remote = gitrepo.Remote(site.path("git"), files=STATES)
    note(f"{shown(remote.path)}: develop, stage and master at one commit, {remote.tip('master')[:10]}")
    note(f"its top file puts {MINION} in stage, where the state motd writes salt://{MOTD} to a file")

    heading("2. Salt configuration")
    ret_port = site.write_configs(remote)
    note(f"{shown(os.path.join(site.conf, 'master'))}: file_roots and the envflow block for test, stage and prod")
    note(f"{shown(os.path.join(site.conf, 'minion'))}: the minion {MINION}, in saltenv stage")

    heading("3. A real salt-master and salt-minion; every environment deployed")
    try:
        master = site.start("salt-master")
        wait_for(
            "salt-master to listen", lambda: listening(ret_port), 60, lambda: site.check_running("salt-master", master)
        )
        minion = site.start("salt-minion")

        def answers():
            site.check_running("salt-minion", minion)
            done = site.command("salt", MINION, "test.ping", "--out=json", "--timeout=5", show=False)
            return done.returncode == 0 and json.loads(done.stdout or "{}").get(MINION) is True

        wait_for(f"{MINION} to answer test.ping", answers, 90)
        note(f"{MINION} answers test.ping")
        site.run("envflow.refresh")

        heading("4. A change is committed on develop and deployed to test, where it is tried out")
        commit = remote.commit("develop", CHANGE, "motd: v2")
        note(f"develop is now {commit[:10]} 'motd: v2'")
        site.run("envflow.refresh", "test")

        heading("5. The minion, in stage, does not get it: its highstate writes the old file")
        before = site.highstate()
        if "v1" not in before:
            raise StepFailed(f"before the promotion the minion should have v1, it has {before!r}")

        heading("6. Promote what was tested in test into stage")
        site.run("envflow.promote", "stage")

        heading("7. The minion's highstate now writes the new file")
        after = site.highstate()
        if "v2" not in after:
            raise StepFailed(f"after the promotion the minion should have v2, it has {after!r}")
        site.run("envflow.status")
    finally:
        heading("Stopping the daemons")
        site.stop_all()
        note(f"their logs: {shown(site.path('logs'))}")

    heading(f"Done in {time.monotonic() - started:.0f}s")
    note(f"the repository's work clone, to commit more changes: {shown(remote.work)}")
    note("the runners work without the daemons; try, from this checkout:")
    note(f"  {shown(os.path.join(site.bin, 'salt-run'))} -c {shown(site.conf)} envflow.status")
    note(f"  {shown(os.path.join(site.bin, 'salt-run'))} -c {shown(site.conf)} envflow.promote prod dry_run=True")


def main():
    if os.path.realpath(sys.prefix) != os.path.realpath(venvs.path(LINE)):
        # Set up (or update) Salt's virtualenv, then run this same script inside it.
        venvs.prepare([LINE.name])
        os.execv(venvs.python(LINE), [venvs.python(LINE), os.path.abspath(__file__), *sys.argv[1:]])
    # SIGTERM, like Ctrl-C, goes through the finally block that stops the daemons.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    try:
        quickstart()
    except StepFailed as exc:
        print(f"\nquickstart FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nquickstart interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
