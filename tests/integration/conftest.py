"""A real salt-master and salt-minion per test module, serving real git repositories.

Each test module gets one :class:`Site`: a bare automation repository built
with the git CLI, a master whose ``file_roots`` map the saltenvs test, stage
and prod to envflow's directories, and a minion on the same host whose top
file (committed on every branch) puts it in the ``stage`` saltenv. Nothing is
mocked: what is tested runs through ``salt-run``, ``salt-call`` and ``salt``.

salt-factories' root comes from ``salt_factories_config`` in tests/conftest.py:
one per run, so this run's daemons and CLIs use wrappers of its own virtualenv,
and short, so the daemons' unix sockets fit whatever ``TMPDIR`` is.

The tests must pass on a busy machine too: Salt's own timeouts for jobs sent
to minions are raised in the masters' config (:data:`MASTER_TIMEOUTS`), every
CLI gets :data:`CLI_TIMEOUT`, and whatever happens in the background (events,
the reactor) is waited for as a condition, never with a fixed sleep.
"""

import concurrent.futures
import contextlib
import functools
import itertools
import os
import pathlib
import shutil
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from saltfactories.utils import random_string

from envflow.served import ServedDir
from tests import gitrepo
from tests.conftest import SOCKET_PATH_MAX

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# How long a CLI run may take, in seconds; salt-factories also passes it to the CLI as ``--timeout``
# (to ``salt``: how long to wait for the minions; to ``salt-call``: the minion's auth timeout).
CLI_TIMEOUT = 180
# Salt's defaults give a minion 5 seconds (``timeout``) to return a job before the master asks it,
# with saltutil.find_job, whether it still runs it, and wait 10 seconds (``gather_job_timeout``) for that
# answer and the return; a minion late in both is reported as "Minion did not return. [No response]".
# The salt.state and salt.function steps of salt-run state.orchestrate (those of the shipped
# docs/pipelines files too, run by the reactor as well) use the master's values, and so does ``salt``
# for gather_job_timeout; a busy machine needs more. A job that is done returns at once all the same.
MASTER_TIMEOUTS = {"timeout": 60, "gather_job_timeout": 60}
# Salt starts 5 request servers (MWorker processes) by default, each loading Salt's modules as the master starts:
# the 3 beyond the 2 that serve a test's few minions and CLIs cost about 4 seconds of CPU of every master's start.
MASTER_WORKERS = {"worker_threads": 2}
# The virtualenv's own salt-run, for what a user sees without --out (salt-factories' CLI objects add --out=json).
SALT_RUN = os.path.join(sys.prefix, "bin", "salt-run")
# salt-factories has every daemon, and every CLI run with its config, write its log file at debug level:
# about a tenth of a site's time here. Info keeps what a failure's diagnosis usually needs (jobs, auth, errors).
LOG_FILE_LEVEL = {"log_level_logfile": "info"}
# Salt's longest socket name in a sock_dir (a minion's event pull socket; a master's are shorter).
LONGEST_SOCKET = "minion_event_0123456789_pull.ipc"
# The file the minion's highstate writes, from salt://web/motd.txt of its saltenv.
MOTD = "web/motd.txt"
_LABELS = itertools.count(1)
# Salt's default for fileserver_list_cache_time, in seconds.
SALT_FILE_LIST_CACHE_TIME = 20


def motd(label):
    """Content for ``web/motd.txt``: always 32 bytes, so versions differ only in content, never in size."""
    text = f"motd {label}"[:31]
    return f"{text:<31}\n"


def fresh_motd(prefix):
    """A ``motd`` content no other commit of the run has."""
    return motd(f"{prefix}-{next(_LABELS):04d}")


def fits_unix_sockets(factory):
    """Return ``factory`` (a Salt daemon's), asserting its unix sockets' paths will not be too long for the kernel."""
    longest = os.path.join(factory.config["sock_dir"], LONGEST_SOCKET)
    assert len(longest) <= SOCKET_PATH_MAX, (
        f"{factory.id}: its socket {longest} would be longer than {SOCKET_PATH_MAX} characters; "
        "give the daemon a shorter id or salt-factories a shorter root (tests/conftest.py)"
    )
    return factory


def key_pair():
    """An RSA key pair as Salt writes one (salt.crypt): the private key and the public key, in PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private.decode(), public.decode()


def write_key_pair(pki_dir, name, pair):
    """Write ``pair`` as ``<name>.pem`` and ``<name>.pub`` in ``pki_dir``, as Salt keeps its own."""
    pki_dir = pathlib.Path(pki_dir)
    pki_dir.mkdir(parents=True, exist_ok=True)
    private, public = pair
    (pki_dir / f"{name}.pem").write_text(private, encoding="utf-8")
    (pki_dir / f"{name}.pem").chmod(0o400)
    (pki_dir / f"{name}.pub").write_text(public, encoding="utf-8")


def minion_of(master, minion_id, overrides, accepted_by=None):
    """``master``'s minion ``minion_id`` (salt-factories' factory, not started), its key already accepted.

    The key pair is made here and its public key put where ``salt-key --accept`` puts it on ``master`` (and on each
    of ``accepted_by``, when given), so the minion signs in at its first try. Otherwise its key is pending then:
    salt-factories accepts it with a salt-key run on each of the master's auth events while the minion retries
    after growing waits (0.5, 1, 2, 4 seconds), seconds of every site's start.
    """
    minion = fits_unix_sockets(master.salt_minion_daemon(minion_id, overrides=overrides))
    pair = key_pair()
    write_key_pair(minion.config["pki_dir"], "minion", pair)
    for accepting in accepted_by or (master,):
        accepted = pathlib.Path(accepting.config["pki_dir"]) / "minions"
        accepted.mkdir(parents=True, exist_ok=True)
        (accepted / minion.id).write_text(pair[1], encoding="utf-8")
    return minion


def salt_run(config_dir, *args):
    """The real ``salt-run <args>`` with the master config in ``config_dir``, as a user types it (no ``--out``
    unless given): the completed process. salt-factories' CLI objects add ``--out=json``."""
    return subprocess.run(
        [SALT_RUN, "-c", str(config_dir), "--log-level=quiet", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def write_roots(master, file_roots, pillar_roots):
    """Make ``master``'s config file list exactly these roots: salt-factories adds directories of its own to
    ``file_roots`` and ``pillar_roots`` (it merges lists), so a prod saltenv would also serve its prod tree."""
    written = yaml.safe_load(pathlib.Path(master.config_file).read_text(encoding="utf-8"))
    written.update(file_roots=file_roots, pillar_roots=pillar_roots)
    pathlib.Path(master.config_file).write_text(yaml.safe_dump(written), encoding="utf-8")


def wait_for(check, timeout=CLI_TIMEOUT, interval=0.25):
    """Call ``check`` until it returns something true, and return that; ``None`` once ``timeout`` seconds passed.

    For what happens in the background (the reactor, a soak period): the wait
    ends as soon as the condition holds, however fast or slow the machine is.
    ``interval`` seconds pass between two calls: a check that runs a CLI,
    which costs a second or more of CPU, is given 1.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result or None
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def ok(ret):
    """Assert a CLI run succeeded and return its parsed output."""
    assert ret.returncode == 0, f"{ret.cmdline} failed ({ret.returncode}):\n{ret.stdout}\n{ret.stderr}"
    return ret.data


def _at_once(calls):
    """Run each of ``calls`` in a thread of its own and wait for all; raise the first error, once all are done."""
    if not calls:
        return
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
    for future in futures:
        future.result()


def stop(daemon):
    """Terminate ``daemon`` (a salt-factories daemon), also while other processes end beside it.

    Once the daemon's processes are gone, salt-factories looks through every
    process on the machine for one still listening on its ports, and fails
    with ``psutil.NoSuchProcess`` when any of them ends during that look (a
    daemon stopped at the same moment, or anything else on the machine). The
    daemon is down by then: that is not a failure to stop it.
    """
    try:
        daemon.terminate()
    except psutil.NoSuchProcess:
        daemon.terminate()  # recorded as terminated: returns at once


def stopping(*daemons):
    """What :func:`_at_once` calls to :func:`stop` each of ``daemons``."""
    return [functools.partial(stop, daemon) for daemon in daemons]


@contextlib.contextmanager
def running(master, *daemons):
    """Run ``master`` and ``daemons`` (its minions, its salt-api) for the ``with`` block.

    The daemons start together once the master is up, and all stop together:
    most of a daemon's start and stop is waiting (for its start event, for
    its processes to be gone), which one daemon need not spend after another.
    """
    try:
        master.start()
        _at_once([daemon.start for daemon in daemons])
        yield
    finally:
        _at_once(stopping(*daemons, master))


class Site:
    """One master, one minion, the automation repository and envflow's directories."""

    def __init__(self, master, minion, remote, envflow, base, out):
        self.master = master
        self.minion = minion
        self.remote = remote
        self.envflow = envflow
        self.base = base
        self.out = out
        self.paths = {env["name"]: env["path"] for env in envflow["environments"]}
        # One process per CLI object: none of these runs two commands at once.
        self.run_cli = master.salt_run_cli(timeout=CLI_TIMEOUT)
        self.salt_cli = master.salt_cli(timeout=CLI_TIMEOUT)
        self.call_cli = minion.salt_call_cli(timeout=CLI_TIMEOUT)

    def run(self, *args, **kwargs):
        """``salt-run`` on the master."""
        return self.run_cli.run(*args, **kwargs)

    def call(self, *args, **kwargs):
        """``salt-call`` on the minion (the same host as the master)."""
        return self.call_cli.run(*args, **kwargs)

    def minion_reads(self, path, saltenv="stage"):
        """What the minion gets for ``salt://<path>`` in ``saltenv``, through the master's file server."""
        return ok(self.call("cp.get_file_str", f"salt://{path}", f"saltenv={saltenv}"))

    def deployed(self, env):
        """The commit id ``env``'s directory serves, read from disk in this process (a CLI run costs a second)."""
        info = ServedDir(self.paths[env]).deployed()
        return info["id"] if info else None

    def show(self, rev, path):
        """The content of ``path`` at ``rev`` in the automation repository."""
        return gitrepo.git("show", f"{rev}:{path}", cwd=self.remote.path, text=False).decode("utf-8")

    def served_file(self, env, path):
        """The content of ``path`` as ``env``'s directory serves it, read from disk."""
        with open(os.path.join(self.paths[env], path), encoding="utf-8") as handle:
            return handle.read()


def _repo_files(target, out):
    top = f"test:\n  'test-*':\n    - web\nstage:\n  '{target}':\n    - web\nprod:\n  'prod-*':\n    - web\n"
    web = (
        f"envflow-motd:\n  file.managed:\n    - name: {out}\n    - source: salt://web/motd.txt\n    - makedirs: True\n"
    )
    return {"top.sls": top, "web/init.sls": web, MOTD: motd("initial")}


@pytest.fixture(scope="module")
def site_options():
    """How the module's site is built; a test module overrides this fixture to change it.

    ``loader_folders``: copy the repository's ``_modules``, ``_states``,
    ``_runners`` and ``_output`` into the ``base`` file_roots, to be synced with ``saltutil.sync_all``.
    ``minion_in_top``: whether the top file puts the minion in ``stage`` (a
    minion that no top file matches syncs from ``base``).
    """
    return {"loader_folders": False, "minion_in_top": True}


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory, site_options):
    """Start a master and a minion for the module, with every environment deployed once."""
    master_id = random_string("m-", uppercase=False)
    minion_id = random_string("n-", uppercase=False)
    work = tmp_path_factory.mktemp("site")
    out = work / "out" / "motd.txt"
    remote = gitrepo.Remote(
        work / "git", files=_repo_files(minion_id if site_options["minion_in_top"] else "nobody", out)
    )

    # The master's root is chosen here so envflow's directories can be the
    # file_roots salt-factories makes anyway (base and prod under state-tree):
    # salt-factories merges file_roots lists, so any other path would be
    # served beside its own instead of replacing it.
    master_root = pathlib.Path(salt_factories.root_dir) / master_id
    state_tree = master_root / "state-tree"
    envflow = gitrepo.config(remote.path, state_tree)
    base = state_tree / "base"
    file_roots = {"base": [str(base)]}
    file_roots.update({env["name"]: [env["path"]] for env in envflow["environments"]})
    master = salt_factories.salt_master_daemon(
        master_id,
        defaults={"root_dir": str(master_root), "file_roots": file_roots},
        overrides={
            **MASTER_TIMEOUTS,
            **MASTER_WORKERS,
            **LOG_FILE_LEVEL,
            "envflow": envflow,
            # salt-factories turns the file list cache off (0); envflow must work with Salt's
            # default, which salt/fileserver/__init__.py applies when the key is absent.
            "fileserver_list_cache_time": SALT_FILE_LIST_CACHE_TIME,
            # Lets the minion run a runner inside the master daemon (publish.runner), to ask its Salt version.
            "peer_run": {minion_id: ["salt.cmd"]},
        },
    )
    fits_unix_sockets(master)
    assert {env: list(roots) for env, roots in master.config["file_roots"].items()} == file_roots
    # An SLS declaring what stage serves, applied on the minion with saltenv=base.
    (base / "envflow_stage.sls").write_text("stage:\n  envflow.deployed:\n    - branch: stage\n", encoding="utf-8")
    if site_options["loader_folders"]:
        for kind in ("_modules", "_states", "_runners", "_output"):
            shutil.copytree(REPO_ROOT / kind, base / kind, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    minion = minion_of(
        master,
        minion_id,
        # The execution module clears the master's file server caches through the master's config.
        {**LOG_FILE_LEVEL, "envflow": {**envflow, "master_config": master.config_file}},
    )
    with running(master, minion):
        test_site = Site(master, minion, remote, envflow, base, out)
        deployed = ok(test_site.run("envflow.refresh"))
        assert sorted(deployed["environments"]) == ["prod", "stage", "test"], deployed
        yield test_site


PIPELINES = REPO_ROOT / "docs" / "pipelines"


def _release_files(out_dir):
    """A repository whose top file maps minions to environments by their ``env`` grain.

    The ``prod_preview`` section is prod's (a YAML alias), for previews of prod.
    """
    top = "".join(f"{env}:\n  'G@env:{env}':\n    - match: compound\n    - web\n" for env in ("test", "stage"))
    top += "prod: &prod\n  'G@env:prod':\n    - match: compound\n    - web\nprod_preview: *prod\n"
    web = (
        "envflow-motd:\n"
        "  file.managed:\n"
        f"    - name: {out_dir}/{{{{ grains['id'] }}}}.txt\n"
        "    - source: salt://web/motd.txt\n"
        "    - makedirs: True\n"
    )
    return {"top.sls": top, "web/init.sls": web, MOTD: motd("initial")}


class ReleaseSite:
    """One master, a stage minion and a prod minion (by their ``env`` grain), and the shipped pipeline files."""

    def __init__(self, master, minions, remote, envflow, out_dir):
        self.master, self.minions, self.remote, self.envflow, self.out_dir = master, minions, remote, envflow, out_dir
        self.paths = {env["name"]: env["path"] for env in envflow["environments"]}
        self.run_cli = master.salt_run_cli(timeout=CLI_TIMEOUT)
        self.salt_cli = master.salt_cli(timeout=CLI_TIMEOUT)

    def run(self, *args, **kwargs):
        return self.run_cli.run(*args, **kwargs)

    def written(self, env):
        """What the highstate of ``env``'s minion last wrote, or ``None``."""
        path = self.out_dir / f"{self.minions[env].id}.txt"
        return path.read_text(encoding="utf-8") if path.exists() else None

    def deployed(self, env):
        info = ServedDir(self.paths[env]).deployed()
        return info["id"] if info else None

    def served_file(self, env, path):
        with open(os.path.join(self.paths[env], path), encoding="utf-8") as handle:
            return handle.read()


@contextlib.contextmanager
def release_site(salt_factories, tmp_path_factory, gates=None, reactor=False, preview=False):
    """Start a master with the shipped orchestrate files (and, if asked, the shipped reactor) and two minions.

    With ``preview``, prod has a preview directory, served as ``prod_preview``,
    and each minion names its saltenv, so that no highstate reads the preview's top file.
    """
    master_id = random_string("m-", uppercase=False)
    work = tmp_path_factory.mktemp("release")
    out_dir = work / "out"
    remote = gitrepo.Remote(work / "git", files=_release_files(out_dir))
    master_root = pathlib.Path(salt_factories.root_dir) / master_id
    state_tree = master_root / "state-tree"
    envflow = gitrepo.config(remote.path, state_tree)
    for env in envflow["environments"]:
        env["target"] = f"G@env:{env['name']}"
    if gates:
        envflow["environments"][2]["gates"] = gates
    base = state_tree / "base"
    shutil.copytree(PIPELINES / "orch", base / "orch")
    file_roots = {"base": [str(base)], **{env["name"]: [env["path"]] for env in envflow["environments"]}}
    overrides = {
        **MASTER_TIMEOUTS,
        **MASTER_WORKERS,
        **LOG_FILE_LEVEL,
        "envflow": envflow,
        "fileserver_list_cache_time": SALT_FILE_LIST_CACHE_TIME,
    }
    if preview:
        preview_path = str(state_tree / "prod_preview")
        envflow["environments"][2]["preview_path"] = preview_path
        file_roots["prod_preview"] = [preview_path]
    if reactor:
        # The shipped reactor config, with the reactor SLS where this test copied it.
        shutil.copytree(PIPELINES / "reactor", work / "reactor")
        shipped = yaml.safe_load((PIPELINES / "reactor.conf").read_text(encoding="utf-8"))
        shipped["reactor"] = [
            {tag: [str(work / "reactor" / os.path.basename(sls)) for sls in files]}
            for entry in shipped["reactor"]
            for tag, files in entry.items()
        ]
        overrides.update(shipped)
    master = fits_unix_sockets(
        salt_factories.salt_master_daemon(
            master_id, defaults={"root_dir": str(master_root), "file_roots": file_roots}, overrides=overrides
        )
    )
    minions = {
        env: minion_of(
            master,
            random_string(f"{env}-", uppercase=False),
            {**LOG_FILE_LEVEL, "grains": {"env": env}, **({"saltenv": env} if preview else {})},
        )
        for env in ("stage", "prod")
    }
    with running(master, minions["stage"], minions["prod"]):
        site = ReleaseSite(master, minions, remote, envflow, out_dir)
        assert sorted(ok(site.run("envflow.refresh"))["environments"]) == ["prod", "stage", "test"]
        yield site
