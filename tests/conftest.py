import multiprocessing
import multiprocessing.managers
import os
import pathlib
import shutil
import sys
import tempfile

import pytest
from hypothesis import Phase, settings

from tests.gitrepo import Remote

# The deploy engine's model (tests/unit/test_engine_model.py) runs engine-ci unless
# --hypothesis-profile=engine-long is given; registered here, before pytest reads that option.
# engine-ci does not shrink a failure: on these steps shrinking takes minutes, and the
# unshrunk steps are printed whole; engine-long shrinks.
settings.register_profile(
    "engine-ci",
    max_examples=30,
    stateful_step_count=15,
    derandomize=True,
    database=None,
    deadline=None,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.generate],
)
settings.register_profile(
    "engine-long", max_examples=300, stateful_step_count=40, database=None, deadline=None, print_blob=True
)

# The longest path a unix socket may have: sun_path holds 108 bytes on Linux, 104 on macOS and the
# BSDs, one of them the terminating NUL.
SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103
# The longest daemon id the tests give salt-factories (such as ``stage-1a2b3c``).
DAEMON_ID_MAX = 12
# What a daemon's longest socket adds to salt-factories' root: Salt puts a minion's event sockets in
# ``<root>/<id>/run/minion`` as ``minion_event_<10 hex digits>_pull.ipc``, and a master's, shorter, in ``run/master``.
SOCKET_UNDER_ROOT = len(f"/{'x' * DAEMON_ID_MAX}/run/minion/minion_event_0123456789_pull.ipc")
_ROOT_PREFIX = "sf-"


@pytest.fixture
def remote(tmp_path):
    """A bare automation repository with develop, stage and master at one commit."""
    return Remote(tmp_path / "remote")


def _root_candidates():
    """Where salt-factories' root may go, best first: the run's temporary directory, then usual short ones."""
    seen = set()
    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm", os.environ.get("XDG_RUNTIME_DIR")):
        if base and os.path.isabs(base) and base not in seen:
            seen.add(base)
            yield base


def short_root():
    """A new directory whose path leaves room for the daemons' unix sockets (see :data:`SOCKET_UNDER_ROOT`).

    Under ``$TMPDIR`` when its path is short enough, else under the first
    writable one of ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``$XDG_RUNTIME_DIR``
    that is. Salt prepends ``root_dir`` to every absolute path it is given in
    a config, ``sock_dir`` too, so the sockets can only be kept short by
    keeping the whole root short.
    """
    room = SOCKET_PATH_MAX - SOCKET_UNDER_ROOT - len(os.sep + _ROOT_PREFIX) - 8  # mkdtemp adds 8 characters
    tried = []
    for base in _root_candidates():
        if len(base) > room:
            tried.append(f"{base} (too long)")
            continue
        try:
            return pathlib.Path(tempfile.mkdtemp(prefix=_ROOT_PREFIX, dir=base))
        except OSError as exc:
            tried.append(f"{base} ({exc.strerror or exc})")
    pytest.fail(
        f"no writable directory of at most {room} characters for salt-factories' root, where the Salt daemons' "
        f"unix sockets go (at most {SOCKET_PATH_MAX} characters); tried: {'; '.join(tried)}. "
        "Set TMPDIR to a short writable directory.",
        pytrace=False,
    )


@pytest.fixture
def spawn_barrier():
    """Make a barrier for ``parties`` processes of multiprocessing's ``spawn`` context: ``spawn_barrier(parties)``.

    Served by a manager listening on loopback TCP: ``multiprocessing.Manager()``
    listens on a unix socket under ``$TMPDIR``, whose path is too long for one
    when ``TMPDIR`` is. The managers are shut down after the test.
    """
    managers = []

    def make(parties):
        manager = multiprocessing.managers.SyncManager(
            address=("127.0.0.1", 0), ctx=multiprocessing.get_context("spawn")
        )
        manager.start()
        managers.append(manager)
        return manager.Barrier(parties)

    yield make
    for manager in managers:
        manager.shutdown()


@pytest.fixture(scope="session")
def salt_factories_config():
    """A root of this run's own for salt-factories, short enough for the daemons' unix sockets.

    salt-factories reuses the CLI wrappers it finds in ``<root_dir>/scripts``,
    each pinned to the virtualenv that wrote it: a shared root would let a
    Salt 3006 run silently use 3008's wrappers. The root is made afresh for
    the run (see :func:`short_root`) and removed after it.
    """
    root = short_root()
    # salt-factories gives a daemon 60 seconds to start (then tries twice more); a busy machine needs more.
    # slow_stop=False: daemons are killed at teardown instead of being asked to stop and waited for
    # (about 3 seconds a daemon); no test looks at a daemon after its site is torn down.
    yield {"root_dir": root, "start_timeout": 120, "slow_stop": False}
    shutil.rmtree(root, ignore_errors=True)


def _long(item):
    """Whether ``item``'s file is one of the long ones: an integration module (it starts a master and minions) or a
    functional test of a benchmark script."""
    return item.path.parent.name == "integration" or item.path.name.startswith("test_bench")


def pytest_configure(config):
    # pytest-xdist (3.6 and later) would hand the files out by their number of tests, most first, which leaves the
    # long files of one or two tests last; the order pytest_collection_modifyitems sets is kept instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """The long files first, the rest after them, each group in the order collected.

    ``--dist loadfile`` (tests/run.py) hands each of the two workers one file at a
    time in this order, so both end on short files and finish together, instead of
    one of them waiting idle while the other runs a long file it was handed last.
    """
    items.sort(key=lambda item: not _long(item))


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
    """Stop Salt's temporary log handler before pytest closes the stream it captured.

    Otherwise Salt flushes into the closed stream at exit and prints a
    "Logging error" traceback per buffered record.
    """
    import salt._logging.impl  # pylint: disable=import-outside-toplevel

    salt._logging.impl.shutdown_temp_handler()  # pylint: disable=protected-access


# Real git servers on loopback (tests/servers.py). One sshd serves a whole test module (a test only
# reads its log, from where its own connections begin); each git HTTP server is stopped when its test ends.


def _need_sshd():
    from tests.servers import SSHD  # pylint: disable=import-outside-toplevel

    if SSHD is None:
        pytest.fail("OpenSSH's sshd is not installed: install openssh-server (tests/run.py does, as root)")


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory):
    """Key pairs for the ssh tests: ``plain``, ``protected`` (with ``passphrase``) and ``stranger`` (not let in).

    Shared by the module's tests: a test that changes a key file's mode puts it back.
    """
    from types import SimpleNamespace  # pylint: disable=import-outside-toplevel

    from tests.servers import keygen  # pylint: disable=import-outside-toplevel

    keys = tmp_path_factory.mktemp("keys")
    passphrase = "c0rrect-h0rse-passphrase"
    return SimpleNamespace(
        plain=keygen(keys / "id_plain"),
        protected=keygen(keys / "id_protected", passphrase=passphrase),
        passphrase=passphrase,
        stranger=keygen(keys / "id_stranger"),
    )


@pytest.fixture(scope="module")
def _module_sshd(tmp_path_factory, ssh_keys):
    _need_sshd()
    from tests.servers import SshServer  # pylint: disable=import-outside-toplevel

    server = SshServer(tmp_path_factory.mktemp("sshd"), authorize=[ssh_keys.plain, ssh_keys.protected]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd(_module_sshd):
    """OpenSSH's sshd on loopback, letting the current user in with ``plain`` or ``protected``, running git-shell.

    One server for the module; ``read_log()`` gives what it logged from this test's start on.
    """
    _module_sshd.mark_log()
    return _module_sshd


@pytest.fixture(scope="module")
def known_hosts(tmp_path_factory, _module_sshd):
    """A known_hosts file listing ``sshd``'s host key (no test writes to it)."""
    path = tmp_path_factory.mktemp("known-hosts") / "known_hosts"
    path.write_text(_module_sshd.known_hosts_line(), encoding="utf-8")
    return str(path)


HTTP_USER, HTTP_PASSWORD = "envflow", "s3cret-t0ken-for-http"


@pytest.fixture
def git_http(remote):
    """git's smart HTTP for ``remote`` on loopback, behind basic authentication (HTTP_USER, HTTP_PASSWORD)."""
    from tests.servers import HTTP_BACKEND, GitHttpServer  # pylint: disable=import-outside-toplevel

    if HTTP_BACKEND is None:
        pytest.fail("git http-backend is not installed: install git's full package")
    server = GitHttpServer(os.path.dirname(remote.path), HTTP_USER, HTTP_PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()
