"""What each master serves, kept on the remote (envflow.fleet): written, read by git, compared, and checked."""

import datetime
import json
import os
import shutil
import socket
import tempfile

import pygit2
import pytest
from pygit2.enums import ConfigLevel

from envflow import fleet, pipeline, saltbus
from envflow.config import parse
from envflow.errors import EnvflowError
from envflow.remote import SERVED_PREFIX, Mirror
from envflow.served import ServedDir
from tests.gitrepo import Remote, config, git

AT = datetime.datetime(2026, 12, 6, 20, 0, 0, tzinfo=datetime.timezone.utc)
NOBODY = 65534


def warning_of(master):
    return f"envflow: what {master} serves could not be recorded on the remote:"


class Host:
    """One master: its own directories for the environments and its own mirror of the remote."""

    def __init__(self, remote, root, master):
        self.master = master
        self.config = parse(config(remote.path, os.path.join(str(root), "srv")))
        self.mirror = Mirror(remote.path, os.path.join(str(root), "cache"))

    def deploy(self, name, rev=None, fetch=True):
        env = self.config.environment(name)
        if fetch:
            self.mirror.fetch()
        return ServedDir(env.path).deploy(self.mirror.objects, self.mirror.commit(rev or env.branch))

    def deploy_all(self):
        for env in self.config.environments:
            self.deploy(env.name)

    def report(self, **kwargs):
        return fleet.report(self.mirror, self.config, self.master, **kwargs)

    def serving(self):
        """What ServedDir says each directory serves, as served.json holds it."""
        found = {}
        for env in self.config.environments:
            info = ServedDir(env.path).deployed()
            if info:
                tree = ServedDir(env.path).layout.tree_id()
                found[env.name] = {"commit": info["id"], "since": info["deployed_at"], "path": env.path, "tree": tree}
        return found

    def deployed(self, name):
        return ServedDir(self.config.environment(name).path).deployed()


@pytest.fixture
def hosts(remote, tmp_path):
    """Make masters by id, each under tmp_path/<id>: ``hosts("salt1")``; their mirrors are closed after the test."""
    made = []

    def make(master, root=None):
        host = Host(remote, root or tmp_path / "masters" / str(len(made)), master)
        made.append(host)
        return host

    yield make
    for host in made:
        host.mirror.close()


def record_of(remote, master):
    """served.json of ``master``'s reference, read by plain git on the remote."""
    return json.loads(git("show", f"{fleet.ref_of(master)}:served.json", cwd=remote.path))


def ref_value(remote, master):
    return remote.refs().get(fleet.ref_of(master))


def parents_of(remote, commit):
    """The parents of ``commit``: none for a record, whose newest alone matters."""
    return git("rev-list", "--parents", "-n", "1", commit, cwd=remote.path).split()[1:]


# report


def test_the_first_report_creates_a_reference_that_plain_git_reads(remote, hosts):
    host = hosts("salt1")
    host.deploy_all()
    at = fleet.now()
    assert host.report(at=at) is None
    tip = remote.tip("develop")
    assert record_of(remote, "salt1") == {
        "master": "salt1",
        "host": socket.gethostname(),
        "seen": at.isoformat(),
        "environments": host.serving(),
    }
    assert set(host.serving()) == {"test", "stage", "prod"}
    assert all(entry["commit"] == tip for entry in host.serving().values())
    ref = fleet.ref_of("salt1")
    assert ref == "refs/envflow/served/salt1"
    assert git("rev-list", "--count", ref, cwd=remote.path) == "1"
    assert git("log", "-1", "--format=%an <%ae>%n%s", ref, cwd=remote.path).splitlines() == [
        "salt1 <envflow@localhost>",
        f"salt1 serves prod {tip[:10]}, stage {tip[:10]}, test {tip[:10]}",
    ]
    # As the module says: a clone fetches the references and shows them.
    git("fetch", "-q", "origin", f"{SERVED_PREFIX}*:{SERVED_PREFIX}*", cwd=remote.work)
    assert json.loads(git("show", f"{ref}:served.json", cwd=remote.work)) == record_of(remote, "salt1")
    host.mirror.fetch()
    assert fleet.read(host.mirror) == {"salt1": record_of(remote, "salt1")}


def test_a_master_serving_nothing_says_so(remote, hosts):
    host = hosts("salt1")
    at = fleet.now()
    assert host.report(at=at) is None
    assert record_of(remote, "salt1") == {
        "master": "salt1",
        "host": socket.gethostname(),
        "seen": at.isoformat(),
        "environments": {},
    }
    assert git("log", "-1", "--format=%s", fleet.ref_of("salt1"), cwd=remote.path) == "salt1 serves nothing"


def test_a_report_with_nothing_changed_writes_nothing(remote, hosts):
    host = hosts("salt1")
    host.deploy_all()
    at = fleet.now()
    host.report(at=at)
    before = remote.refs()
    assert host.report(at=at + datetime.timedelta(seconds=1)) is None
    assert host.report(at=at + datetime.timedelta(days=1)) is None  # no heartbeat asked: however old it is
    assert remote.refs() == before
    assert record_of(remote, "salt1")["seen"] == at.isoformat()


def test_a_heartbeat_rewrites_the_record_only_once_it_is_older_than_heartbeat(remote, hosts):
    host = hosts("salt1")
    host.deploy_all()
    at = fleet.now()
    host.report(at=at)
    first = ref_value(remote, "salt1")
    assert host.report(heartbeat=True, at=at + datetime.timedelta(seconds=fleet.HEARTBEAT - 1)) is None
    assert ref_value(remote, "salt1") == first
    later = at + datetime.timedelta(seconds=fleet.HEARTBEAT)
    assert host.report(heartbeat=True, at=later) is None
    second = ref_value(remote, "salt1")
    assert second != first and parents_of(remote, second) == []
    assert record_of(remote, "salt1") == {
        "master": "salt1",
        "host": socket.gethostname(),
        "seen": later.isoformat(),
        "environments": host.serving(),
    }
    # The new record is the one measured from.
    assert host.report(heartbeat=True, at=later + datetime.timedelta(seconds=fleet.HEARTBEAT - 1)) is None
    assert ref_value(remote, "salt1") == second


def test_a_deploy_is_recorded_on_top_of_the_record_before_it(remote, hosts):
    host = hosts("salt1")
    host.deploy_all()
    host.report()
    old = ref_value(remote, "salt1")
    before = record_of(remote, "salt1")["environments"]
    new_commit = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    host.deploy("test")
    at = fleet.now()
    assert host.report(at=at) is None
    new = ref_value(remote, "salt1")
    assert new != old and parents_of(remote, new) == []
    record = record_of(remote, "salt1")
    assert record == {
        "master": "salt1",
        "host": socket.gethostname(),
        "seen": at.isoformat(),
        "environments": host.serving(),
    }
    assert record["environments"]["test"]["commit"] == new_commit
    assert record["environments"]["test"]["since"] == host.deployed("test")["deployed_at"]
    assert {name: record["environments"][name] for name in ("stage", "prod")} == {
        name: before[name] for name in ("stage", "prod")
    }


def test_a_record_moved_by_another_process_of_this_master_is_fetched_and_written_on_top(remote, hosts, tmp_path):
    host = hosts("salt1")
    host.deploy_all()
    at = fleet.now()
    host.report(at=at)
    new_commit = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    host.mirror.fetch()  # the last fetch of this process: it will not see what the other process writes
    with Mirror(remote.path, str(tmp_path / "another-process")) as other:
        other.fetch()
        later = at + datetime.timedelta(seconds=fleet.HEARTBEAT)
        assert fleet.report(other, host.config, "salt1", heartbeat=True, at=later) is None
    moved = ref_value(remote, "salt1")
    assert host.mirror.repo.references[fleet.ref_of("salt1")].target != pygit2.Oid(hex=moved)
    host.deploy("test", rev=new_commit, fetch=False)
    assert host.report() is None
    written = ref_value(remote, "salt1")
    assert written != moved and parents_of(remote, written) == []
    assert record_of(remote, "salt1")["environments"]["test"]["commit"] == new_commit


def test_a_stale_mirror_that_finds_the_same_record_on_the_remote_writes_nothing(remote, hosts, tmp_path):
    """Another process of this master recorded what it serves already: nothing to add after fetching it."""
    host = hosts("salt1")
    host.deploy_all()
    host.report()
    before = remote.refs()
    with Mirror(remote.path, str(tmp_path / "fresh-cache")) as fresh:
        fresh.fetch()
        fresh.repo.references.delete(fleet.ref_of("salt1"))  # as if fetched before the record was written
        assert fleet.report(fresh, host.config, "salt1") is None
    assert remote.refs() == before


def test_a_remote_that_is_gone_gives_a_one_line_warning_and_raises_nothing(remote, hosts):
    """The remote moved away after the mirror was made (a URL to a missing path): a warning says why."""
    host = hosts("salt1")
    host.deploy_all()
    served = host.serving()
    away = remote.path + ".away"
    os.rename(remote.path, away)
    try:
        warning = host.report()
    finally:
        os.rename(away, remote.path)
    assert warning.startswith(warning_of("salt1") + " ")
    assert "\n" not in warning
    assert fleet.ref_of("salt1") not in remote.refs()
    assert host.serving() == served


def _world_root():
    """A new directory every user can reach (a read-only remote is tested as an unprivileged user)."""
    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        path, reachable = os.path.realpath(base), True
        while path != os.path.dirname(path):
            reachable = reachable and bool(os.stat(path).st_mode & 0o001)
            path = os.path.dirname(path)
        if reachable and os.access(base, os.W_OK):
            root = tempfile.mkdtemp(prefix="envflow-fleet-", dir=base)
            os.chmod(root, 0o755)
            return root
    return pytest.skip("no directory that an unprivileged user can reach")


def _walk_chown(path, uid, gid):
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def _set_writable(path, writable):
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, name) for name in dirs + files)]:
            mode = os.lstat(name).st_mode
            os.chmod(name, (mode | 0o200) if writable else (mode & ~0o222))


def _as_nobody(function, home):
    """Run ``function()`` in a child process that has dropped root's rights; return ``("returned"|"raised", text)``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            for level in (ConfigLevel.GLOBAL, ConfigLevel.XDG, ConfigLevel.SYSTEM):
                pygit2.settings.search_path[level] = home  # root's own would be unreadable now
            outcome = ["returned", function()]
        except BaseException as exc:  # whatever it is, the parent reports it
            outcome = ["raised", f"{type(exc).__name__}: {exc}"]
        os.write(write, json.dumps(outcome).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return tuple(json.loads(b"".join(chunks)))


def test_a_read_only_remote_gives_a_one_line_warning_and_raises_nothing():
    root = _world_root()
    remote = Remote(os.path.join(root, "remote"))
    host = Host(remote, root, "salt1")
    try:
        host.deploy_all()
        host.mirror.close()
        before = remote.refs()
        as_root = os.geteuid() == 0
        if as_root:
            # root writes anything: the report runs as another user, who owns the remote but may not write it.
            for path in (remote.path, os.path.join(root, "cache"), os.path.join(root, "srv")):
                _walk_chown(path, NOBODY, NOBODY)
        _set_writable(remote.path, False)
        try:
            if as_root:
                kind, warning = _as_nobody(host.report, root)
                assert kind == "returned", warning
            else:
                warning = host.report()
        finally:
            _set_writable(remote.path, True)
            if as_root:
                _walk_chown(root, 0, 0)
        assert warning.startswith(warning_of("salt1") + " ")
        assert "\n" not in warning
        assert remote.refs() == before
    finally:
        host.mirror.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(
    "master",
    ["salt1", "salt 1", "../../etc", "a..b", "salt.lock", "", "...", "a/b", "ü", "@{x}", "x.", "-x", "a~b^c:d"],
)
def test_ref_of_makes_any_master_id_a_valid_reference_of_its_own(master):
    ref = fleet.ref_of(master)
    assert ref.startswith(SERVED_PREFIX)
    assert "/" not in ref[len(SERVED_PREFIX) :]
    assert pygit2.reference_is_valid_name(ref), ref


def test_ref_of_keeps_an_ordinary_id_readable_and_never_gives_two_ids_one_reference():
    assert fleet.ref_of("salt1.example.com") == "refs/envflow/served/salt1.example.com"
    assert fleet.ref_of("salt 1/x").startswith("refs/envflow/served/salt_1_x-")
    ids = ["salt 1", "salt_1", "salt/1", "", "master", "a..b", "a_b", "salt.lock", "salt_lock"]
    assert len({fleet.ref_of(master) for master in ids}) == len(ids)


@pytest.mark.parametrize("master", ["salt 1", "a..b", "salt.lock"])
def test_a_master_whose_id_git_refuses_in_a_name_is_recorded_all_the_same(remote, hosts, master):
    host = hosts(master)
    host.deploy("test")
    assert host.report() is None
    host.mirror.fetch()
    assert fleet.read(host.mirror)[master]["environments"] == host.serving()


def test_report_served_records_what_the_master_of_these_options_serves(remote, hosts, tmp_path):
    host = hosts("salt1", root=tmp_path / "master")
    host.deploy_all()
    opts = {"id": "salt1", "cachedir": str(tmp_path / "master" / "cache")}
    assert saltbus.report_served(opts, host.config) is None
    assert record_of(remote, "salt1")["environments"] == host.serving()


def test_report_served_logs_the_warning_it_returns(remote, hosts, tmp_path, caplog):
    host = hosts("salt1", root=tmp_path / "master")
    host.deploy_all()
    opts = {"id": "salt1", "cachedir": str(tmp_path / "master" / "cache")}
    away = remote.path + ".away"
    os.rename(remote.path, away)
    try:
        warning = saltbus.report_served(opts, host.config, heartbeat=True)
    finally:
        os.rename(away, remote.path)
    assert warning.startswith(warning_of("salt1"))
    assert warning in caplog.messages


# read


def _hand_made_ref(remote, name, tree_files):
    """A commit whose tree holds ``tree_files`` (name -> text), under ``refs/envflow/served/<name>``, made with git."""
    work = os.path.join(os.path.dirname(remote.path), f"hand-{name}")
    git("init", "-q", work)
    for path, text in tree_files.items():
        with open(os.path.join(work, path), "w", encoding="utf-8") as handle:
            handle.write(text)
        git("add", path, cwd=work)
    tree = git("write-tree", cwd=work)
    commit = git("commit-tree", tree, "-m", "by hand", cwd=work)
    git("push", "-q", remote.path, f"{commit}:{SERVED_PREFIX}{name}", cwd=work)


def test_read_gives_every_masters_record_and_skips_what_is_not_one(remote, hosts):
    first, second, third = hosts("salt1"), hosts("salt2"), hosts("salt 3")
    first.deploy_all()
    second.deploy("prod")
    third.deploy("stage")
    for host in (first, second, third):
        assert host.report() is None
    _hand_made_ref(remote, "empty", {"README": "nothing here\n"})
    _hand_made_ref(remote, "broken", {"served.json": "{not json"})
    _hand_made_ref(remote, "no-environments", {"served.json": '{"master": "x", "seen": "2026-01-01T00:00:00"}\n'})
    _hand_made_ref(remote, "a-list", {"served.json": "[1, 2]\n"})
    _hand_made_ref(remote, "listed", {"served.json": '{"master": "y", "environments": ["prod"]}\n'})
    blob = git("hash-object", "-w", "--stdin", cwd=remote.path, input="a blob, not a commit\n")
    git("update-ref", f"{SERVED_PREFIX}blob", blob, cwd=remote.path)
    first.mirror.fetch()
    found = fleet.read(first.mirror)
    assert found == {name: record_of(remote, name) for name in ("salt1", "salt2", "salt 3")}
    assert found["salt2"]["environments"] == second.serving() and set(second.serving()) == {"prod"}


def test_read_names_a_record_without_its_master_by_its_reference(remote, mirror):
    _hand_made_ref(remote, "salt9", {"served.json": '{"environments": {}}\n'})
    mirror.fetch()
    assert fleet.read(mirror) == {"salt9": {"environments": {}}}


# view and disagreeing


def seen(seconds_ago):
    return (AT - datetime.timedelta(seconds=seconds_ago)).isoformat()


def record(master, seconds_ago, **environments):
    """A record as read() gives it: ``environments`` maps env -> (commit, since seconds ago)."""
    return {
        "master": master,
        "seen": seen(seconds_ago),
        "environments": {
            env: {"commit": commit, "since": seen(since), "path": f"/srv/{master}/{env}"}
            for env, (commit, since) in environments.items()
        },
    }


@pytest.fixture
def commits(remote, mirror):
    """``(older, newer, aside)``: newer contains older; aside (on stage) contains neither and neither contains it."""
    older = remote.tip("develop")
    newer = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    aside = remote.commit("stage", {"hotfix.sls": "# hotfix\n"}, message="hotfix")
    mirror.fetch()
    return older, newer, aside


def test_view_says_who_serves_what_and_who_is_behind_its_branch_and_the_others(
    pipeline_config, mirror, commits, remote
):
    older, newer, _aside = commits
    records = {
        "salt1": record("salt1", 60, test=(older, 7200), prod=(older, 7200)),
        "salt2": record("salt2", 30, test=(newer, 3600)),
        "salt3": record("salt3", 10, test=(newer, 600)),
    }
    tips = pipeline.branch_tips(pipeline_config, mirror)
    assert tips == {"develop": newer, "stage": remote.tip("stage"), "master": older}
    found = fleet.view(records, pipeline_config, tips, mirror.contains, master="salt1", at=AT)
    assert found == {
        "test": {
            "salt1": {
                "commit": older,
                "since": seen(7200),
                "seen": seen(60),
                "silent": None,
                "this": True,
                "shared_with": [],
                "behind_branch": True,
                "behind_others": True,
                "behind_for": 3600,  # since the first of the others began serving the newer commit
            },
            "salt2": {
                "commit": newer,
                "since": seen(3600),
                "seen": seen(30),
                "silent": None,
                "this": False,
                "shared_with": [],
                "behind_branch": False,
                "behind_others": False,
                "behind_for": None,
            },
            "salt3": {
                "commit": newer,
                "since": seen(600),
                "seen": seen(10),
                "silent": None,
                "this": False,
                "shared_with": [],
                "behind_branch": False,
                "behind_others": False,
                "behind_for": None,
            },
        },
        "prod": {  # stage: no master serves it, so it is left out
            "salt1": {
                "commit": older,
                "since": seen(7200),
                "seen": seen(60),
                "silent": None,
                "this": True,
                "shared_with": [],
                "behind_branch": False,
                "behind_others": False,
                "behind_for": None,
            },
        },
    }


def test_a_silent_master_is_shown_silent_and_makes_no_one_behind(pipeline_config, mirror, commits):
    older, newer, _aside = commits
    records = {
        "salt1": record("salt1", 60, test=(older, 7200)),
        "salt2": record("salt2", fleet.SILENT + 1, test=(newer, 3600)),
        "salt3": record("salt3", fleet.SILENT, test=(older, 3600)),  # just at the limit: still reporting
    }
    tips = {"develop": older}
    found = fleet.view(records, pipeline_config, tips, mirror.contains, master="salt3", at=AT)["test"]
    assert found["salt2"]["silent"] == fleet.SILENT + 1
    assert found["salt1"]["silent"] is None and found["salt3"]["silent"] is None
    assert [found[name]["this"] for name in ("salt1", "salt2", "salt3")] == [False, False, True]
    for name in ("salt1", "salt3"):
        assert (found[name]["behind_others"], found[name]["behind_for"], found[name]["behind_branch"]) == (
            False,
            None,
            False,
        )
    assert found["salt2"]["behind_branch"] is True  # its branch is older than what it serves: not the tip


def test_view_compares_only_commits_one_contains_the_other(pipeline_config, mirror, commits):
    older, newer, aside = commits
    unknown = "f" * 40  # a commit this mirror does not hold
    records = {
        "salt1": record("salt1", 5, test=(newer, 100)),
        "salt2": record("salt2", 5, test=(aside, 100)),
        "salt3": record("salt3", 5, test=(unknown, 100)),
    }
    found = fleet.view(records, pipeline_config, {}, mirror.contains, at=AT)["test"]
    assert {name: found[name]["behind_others"] for name in found} == {"salt1": False, "salt2": False, "salt3": False}
    assert {name: found[name]["behind_branch"] for name in found} == {"salt1": False, "salt2": False, "salt3": False}
    assert not any(entry["this"] for entry in found.values())
    # The older commit is contained by the newer one only.
    records["salt4"] = record("salt4", 5, test=(older, 100))
    found = fleet.view(records, pipeline_config, {}, mirror.contains, at=AT)["test"]
    assert {name: found[name]["behind_others"] for name in found} == {
        "salt1": False,
        "salt2": False,
        "salt3": False,
        "salt4": True,
    }
    assert found["salt4"]["behind_for"] == 100


def test_view_of_records_read_from_the_remote(remote, hosts):
    first, second = hosts("salt1"), hosts("salt2")
    first.deploy_all()
    second.deploy_all()
    newer = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    second.deploy("test")
    first.report()
    second.report()
    first.mirror.fetch()
    mirror = first.mirror
    found = fleet.view(
        fleet.read(mirror), first.config, pipeline.branch_tips(first.config, mirror), mirror.contains, master="salt1"
    )
    assert set(found) == {"test", "stage", "prod"}
    assert found["test"]["salt1"]["this"] and found["test"]["salt1"]["behind_others"]
    assert found["test"]["salt1"]["behind_branch"]
    assert 0 <= found["test"]["salt1"]["behind_for"] < 600
    assert found["test"]["salt2"]["commit"] == newer and not found["test"]["salt2"]["behind_others"]
    assert found["test"]["salt2"]["since"] == second.deployed("test")["deployed_at"]
    assert not any(entry["behind_others"] or entry["behind_branch"] for entry in found["prod"].values())
    # Each has directories of its own: no tree is shared.
    assert all(entry["shared_with"] == [] for masters in found.values() for entry in masters.values())


def test_masters_deploying_into_one_directory_at_different_paths_are_shown_as_one_tree(remote, hosts, tmp_path):
    """As masters of a cluster mounting one shared file system at different paths: the directory's id tells."""
    first = hosts("salt1", root=tmp_path / "first")
    first.deploy_all()
    (tmp_path / "mount").symlink_to(tmp_path / "first" / "srv")  # the same directories under another path
    second = hosts("salt2", root=tmp_path / "second")
    second.config = parse(config(remote.path, str(tmp_path / "mount")))
    assert second.config.environment("test").path != first.config.environment("test").path
    assert first.report() is None and second.report() is None
    first.mirror.fetch()
    records = fleet.read(first.mirror)
    trees = {name: data["environments"]["test"]["tree"] for name, data in records.items()}
    assert trees["salt1"] == trees["salt2"] and len(trees["salt1"]) == 32
    found = fleet.view(records, first.config, pipeline.branch_tips(first.config, first.mirror), first.mirror.contains)
    assert {name: entry["shared_with"] for name, entry in found["test"].items()} == {
        "salt1": ["salt2"],
        "salt2": ["salt1"],
    }


def test_a_directory_id_is_made_once_and_read_the_same_by_everyone(tmp_path):
    layout = ServedDir(str(tmp_path / "srv" / "test")).layout
    os.makedirs(layout.home)
    made = layout.tree_id()
    assert made == layout.tree_id() == ServedDir(str(tmp_path / "srv" / "test")).layout.tree_id()
    assert os.listdir(layout.home) == ["tree.id"]  # nothing of the making is left
    other = ServedDir(str(tmp_path / "srv" / "prod")).layout
    os.makedirs(other.home)
    assert other.tree_id() != made


def test_the_minions_of_an_environment_with_a_target_are_recorded_and_counted_while_the_master_reports(remote, hosts):
    host = hosts("salt1")
    host.deploy_all()
    assert host.report(minions_of=lambda env: ["web2", "web1"] if env.name == "stage" else None) is None
    served = record_of(remote, "salt1")["environments"]
    assert served["stage"]["minions"] == ["web1", "web2"]
    assert "minions" not in served["test"] and "minions" not in served["prod"]
    host.mirror.fetch()
    records = fleet.read(host.mirror)
    assert fleet.minions(records, "stage") == {"salt1": ["web1", "web2"]}
    assert fleet.minions(records, "test") == {}
    later = fleet.now() + datetime.timedelta(seconds=fleet.SILENT + 60)
    assert fleet.minions(records, "stage", at=later) == {}  # a silent master's minions are not counted


def test_disagreeing_lists_the_other_reporting_masters_serving_another_commit(commits):
    older, newer, _aside = commits
    records = {
        "salt1": record("salt1", 60, test=(older, 100)),
        "salt2": record("salt2", 60, test=(newer, 100)),
        "salt3": record("salt3", 60, test=(older, 100)),
        "salt4": record("salt4", fleet.SILENT + 1, test=(newer, 100)),  # silent: ignored
        "salt5": record("salt5", 60, prod=(newer, 100)),  # serves no test
    }
    assert fleet.disagreeing(records, "test", "salt1", at=AT) == {"salt2": newer}
    assert fleet.disagreeing(records, "test", "salt2", at=AT) == {"salt1": older, "salt3": older}
    assert fleet.disagreeing(records, "test", "salt4", at=AT) == {"salt1": older, "salt3": older}
    assert fleet.disagreeing(records, "stage", "salt1", at=AT) == {}
    del records["salt2"]
    assert fleet.disagreeing(records, "test", "salt1", at=AT) == {}


# promotions


@pytest.fixture
def two_masters(remote, hosts):
    """``(here, there, older, newer)``: both serve older everywhere, then here deploys newer in test."""
    here, there = hosts("salt1"), hosts("salt2")
    here.deploy_all()
    there.deploy_all()
    older = remote.tip("develop")
    newer = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    here.deploy("test")
    return here, there, older, newer


def _refused(older, newer):
    return (
        f"envflow: the masters disagree on what test serves: salt1 serves {newer[:10]}, salt2 serves {older[:10]}; "
        "promote once they agree (salt-run envflow.status shows them), or name the commit with rev="
    )


def _directories(*hosts):
    return {
        (host.master, env.name): ServedDir(env.path).deployed() for host in hosts for env in host.config.environments
    }


def test_a_promotion_is_refused_while_the_masters_disagree_on_what_upstream_serves(remote, two_masters):
    here, there, older, newer = two_masters
    here.report()
    there.report()
    here.mirror.fetch()
    refs, served = remote.refs(), _directories(here, there)
    with pytest.raises(EnvflowError) as planned:
        pipeline.plan(here.config, here.mirror, "stage", master="salt1")
    assert str(planned.value) == _refused(older, newer)
    with pytest.raises(EnvflowError) as promoted:
        pipeline.promote(here.config, here.mirror, "stage", master="salt1")
    assert str(promoted.value) == _refused(older, newer)
    with pytest.raises(EnvflowError):
        pipeline.promote(here.config, here.mirror, "stage", master="salt1", dry_run=True)
    assert remote.refs() == refs
    assert _directories(here, there) == served
    # Without a master id (not on a master), nothing is compared.
    assert pipeline.plan(here.config, here.mirror, "stage").new == newer


def test_a_promotion_naming_the_commit_goes_ahead_while_the_masters_disagree(remote, two_masters):
    here, there, _older, newer = two_masters
    here.report()
    there.report()
    here.mirror.fetch()
    assert pipeline.plan(here.config, here.mirror, "stage", rev=newer, master="salt1").new == newer
    done = pipeline.promote(here.config, here.mirror, "stage", rev=newer, master="salt1")
    assert done.moved and remote.tip("stage") == newer
    assert here.deployed("stage")["id"] == newer


def test_a_silent_master_does_not_hold_a_promotion_back(remote, two_masters):
    here, there, _older, newer = two_masters
    here.report()
    there.report(at=fleet.now() - datetime.timedelta(seconds=fleet.SILENT + 60))
    here.mirror.fetch()
    done = pipeline.promote(here.config, here.mirror, "stage", master="salt1")
    assert done.moved and remote.tip("stage") == newer


def test_masters_that_agree_let_the_promotion_through(remote, two_masters):
    here, there, _older, newer = two_masters
    there.deploy("test")
    here.report()
    there.report()
    here.mirror.fetch()
    done = pipeline.promote(here.config, here.mirror, "stage", master="salt1")
    assert done.moved and remote.tip("stage") == newer


def test_a_master_with_no_record_yet_is_compared_by_what_it_serves(remote, two_masters):
    """This master has never reported: what its directory serves is what the others must agree with."""
    here, there, older, newer = two_masters
    there.report()
    here.mirror.fetch()
    refs = remote.refs()
    with pytest.raises(EnvflowError) as error:
        pipeline.plan(here.config, here.mirror, "stage", master="salt1")
    assert str(error.value) == _refused(older, newer)
    assert remote.refs() == refs


def test_the_stale_record_of_a_master_deploying_into_the_same_directory_does_not_hold_a_promotion_back(remote, hosts):
    """salt2 shares salt1's directories and last wrote that test served older: it serves what they serve."""
    here, there = hosts("salt1"), hosts("salt2")
    there.config = here.config  # the same paths: one set of directories
    here.deploy_all()
    there.report()
    newer = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    here.deploy("test")
    here.mirror.fetch()
    assert fleet.read(here.mirror)["salt2"]["environments"]["test"]["commit"] != newer
    done = pipeline.promote(here.config, here.mirror, "stage", master="salt1")
    assert done.moved and remote.tip("stage") == newer


def test_a_stale_record_of_this_master_does_not_hide_that_the_others_disagree(remote, hosts):
    """This master's last report (older) failed to be replaced after it deployed newer in test: the other master
    still serves older, so the promotion of newer must be refused, whatever this master's own record says."""
    here, there = hosts("salt1"), hosts("salt2")
    here.deploy_all()
    there.deploy_all()
    older = remote.tip("develop")
    here.report()
    there.report()
    newer = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    here.deploy("test")  # no report after it (it failed, or has not run yet)
    here.mirror.fetch()
    assert fleet.read(here.mirror)["salt1"]["environments"]["test"]["commit"] == older
    refs = remote.refs()
    with pytest.raises(EnvflowError) as error:
        pipeline.plan(here.config, here.mirror, "stage", master="salt1")
    assert str(error.value) == _refused(older, newer)
    assert remote.refs() == refs


def test_over_http_each_new_record_replaces_the_last(remote, git_http, tmp_path):
    """A record is a commit without parent: over git's smart HTTP its push is forced, and stays a swap."""
    from tests.conftest import HTTP_PASSWORD, HTTP_USER  # pylint: disable=import-outside-toplevel

    raw = config(git_http.url("automation.git"), tmp_path / "srv")
    raw["credentials"] = {"username": HTTP_USER, "password": HTTP_PASSWORD, "allow_http": True}
    parsed = parse(raw)
    with Mirror(parsed.repo, str(tmp_path / "cache"), parsed.credentials, parsed.timeout) as mirror:
        mirror.fetch()
        ServedDir(parsed.environment("test").path).deploy(mirror.objects, mirror.commit("develop"))
        assert fleet.report(mirror, parsed, "salt1", at=AT) is None
        first = git("rev-parse", fleet.ref_of("salt1"), cwd=remote.path)
        newer = remote.commit("develop", {"web/init.sls": "# web v2\n"})
        mirror.fetch()
        ServedDir(parsed.environment("test").path).deploy(mirror.objects, mirror.commit("develop"))
        assert fleet.report(mirror, parsed, "salt1", at=AT) is None
    second = git("rev-parse", fleet.ref_of("salt1"), cwd=remote.path)
    assert second != first and parents_of(remote, second) == []
    assert json.loads(git("show", f"{second}:served.json", cwd=remote.path))["environments"]["test"]["commit"] == newer
