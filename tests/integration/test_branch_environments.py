"""Branch environments (issue 25): every branch matching envflow:branch_environments:branches served as its own saltenv.

One site for the module: a master whose roots serve the pipeline's three
environments by name and every other saltenv through Salt's ``__env__``
entries (``file_roots: {__env__: [<path>/__env__/states]}``, ``pillar_roots:
{__env__: [<path>/__env__/pillar]}``), the shipped push config
(docs/pipelines/push.conf: the reactor on ``salt/netapi/hook/envflow``, salt-api
on loopback over TLS), a minion, and salt-api. Branches are made, moved and
deleted in a real bare repository with the git CLI; envflow hears of them
through signed hook requests or ``salt-run envflow.refresh``. Each test uses
branch names of its own; after it, its branches are deleted and their
environments removed, so every test starts with no branch environment served.

The repository's top files name their section ``{{ saltenv }}``: ``state.apply
saltenv=feature_x`` reads feature_x's top file and applies only its
``feature_x`` section, and a pillarenv's top file is read the same way, so one
top file serves every branch whatever its name.
"""

import concurrent.futures
import os
import pathlib
import shutil
import time

import pytest
import salt.version
from saltfactories.utils import random_string

from envflow import branchenvs
from envflow import config as envflow_config
from envflow.remote import Mirror
from tests import gitrepo, hooksign, servers
from tests.integration.conftest import (
    CLI_TIMEOUT,
    LOG_FILE_LEVEL,
    MASTER_TIMEOUTS,
    MASTER_WORKERS,
    SALT_FILE_LIST_CACHE_TIME,
    fits_unix_sockets,
    minion_of,
    motd,
    ok,
    running,
    salt_run,
    wait_for,
    write_roots,
)
from tests.integration.test_push_hooks import SECRET, PushSite, _master_overrides, _pushed_jobs

# Few places, so that the cap test fills them with a handful of branches.
MAX = 5
# Prod and test too: branches whose saltenvs are, letter case aside, the pipeline's own.
PATTERNS = ["feature/*", "Feature/*", "Prod", "test"]
# A file every branch of the two-branch test has, at the same path, the same size, with contents of its own.
MINE = "mine.txt"
# The top file of the states and of the pillar: its section is whichever saltenv Salt reads it for.
TOP = "{{ saltenv }}:\n  '*':\n    - hello\n"


def _hello_state(out_dir, prefix=""):
    """The state writing ``<out_dir>/<saltenv>.txt`` from the pillar's ``hello:greeting`` (after ``prefix``)."""
    return (
        "hello-file:\n"
        "  file.managed:\n"
        f"    - name: {out_dir}/{{{{ saltenv }}}}.txt\n"
        f"    - contents: {{{{ ({prefix!r} ~ pillar['hello']['greeting']) | yaml_dquote }}}}\n"
        "    - makedirs: True\n"
    )


def _greeting(text):
    return {"pillar/hello.sls": f"hello:\n  greeting: {text}\n"}


def _repo_files(out_dir):
    return {
        "states/top.sls": TOP,
        "states/hello/init.sls": _hello_state(out_dir),
        "pillar/top.sls": TOP,
        **_greeting("from the pipeline"),
    }


class BranchSite(PushSite):
    """A :class:`PushSite` whose master serves branch environments; helpers to make branches and read what is served."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = envflow_config.parse(self.envflow).branch_environments
        self.made = set()

    def branch(self, name, files, message="branch change"):
        """Make ``name`` on the remote from develop's tip if it is not there, commit ``files`` on it; the new tip."""
        if f"refs/heads/{name}" not in self.remote.refs():
            self.remote.set_branch(name, self.remote.tip("develop"))
        self.made.add(name)
        return self.remote.commit(name, files, message)

    def delete(self, *names):
        for name in names:
            gitrepo.git("update-ref", "-d", f"refs/heads/{name}", cwd=self.remote.path)

    def served(self):
        """``{saltenv: branch}`` of the branch environments on disk."""
        return branchenvs.served(self.settings)

    def serves(self, saltenv):
        """The commit the branch environment ``saltenv`` serves, read from disk; ``None`` when it serves nothing."""
        info = branchenvs.served_dir(self.settings, saltenv).deployed()
        return info["id"] if info else None

    def path(self, saltenv):
        return os.path.join(self.settings.path, saltenv)

    def listing(self):
        """The names in the branch environments' directory and in envflow's home beside it."""
        return sorted(os.listdir(self.settings.path)), sorted(os.listdir(self.settings.home))

    def hook(self, branch, after, before=hooksign.ZERO):
        """A GitHub push of ``branch`` to ``after`` (``ZERO``: its deletion), through salt-api's /hook/envflow."""
        deleted = after == hooksign.ZERO
        self.post(*hooksign.github(SECRET, f"refs/heads/{branch}", after, before=before, deleted=deleted))

    def written(self, saltenv):
        path = self.out / f"{saltenv}.txt"
        return path.read_text(encoding="utf-8").strip() if path.exists() else None

    def history(self, *args):
        return ok(self.run("envflow.history", *args))["history"]


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory):
    """A master with the pipeline, branch environments through ``__env__`` and the push reactor; a minion; salt-api."""
    master_id = random_string("m-", uppercase=False)
    minion_id = random_string("n-", uppercase=False)
    work = tmp_path_factory.mktemp("branchenvs")
    out_dir = work / "out"
    remote = gitrepo.Remote(work / "git", files=_repo_files(out_dir))
    master_root = pathlib.Path(salt_factories.root_dir) / master_id
    envs = master_root / "envs"
    envflow = gitrepo.config(remote.path, envs)
    branches = str(envs / "branches")
    envflow.update(
        states="states",
        pillar="pillar",
        branch_environments={"branches": PATTERNS, "path": branches, "max": MAX},
    )
    base = master_root / "state-tree" / "base"
    file_roots = {
        "base": [str(base)],
        **{env["name"]: [f"{env['path']}/states"] for env in envflow["environments"]},
        "__env__": [f"{branches}/__env__/states"],
    }
    pillar_roots = {
        **{env["name"]: [f"{env['path']}/pillar"] for env in envflow["environments"]},
        "__env__": [f"{branches}/__env__/pillar"],
    }
    tls = servers.make_ca_and_certificate(work / "tls")
    shipped = _master_overrides(work, envflow, tls)
    master = fits_unix_sockets(
        salt_factories.salt_master_daemon(
            master_id,
            defaults={"root_dir": str(master_root)},
            overrides={
                **MASTER_TIMEOUTS,
                **MASTER_WORKERS,
                **LOG_FILE_LEVEL,
                **shipped,
                "file_roots": file_roots,
                "pillar_roots": pillar_roots,
                "fileserver_list_cache_time": SALT_FILE_LIST_CACHE_TIME,
                "top_file_merging_strategy": "same",
                "pillarenv_from_saltenv": True,
                "fileserver_followsymlinks": False,
            },
        )
    )
    write_roots(master, file_roots, pillar_roots)
    minion = minion_of(master, minion_id, LOG_FILE_LEVEL)
    api = master.salt_api_daemon()
    url = f"https://127.0.0.1:{shipped['rest_cherrypy']['port']}/hook/envflow"
    with running(master, minion, api):
        started = BranchSite(master, minion, remote, shipped["envflow"], base, out_dir, api=api, url=url, cafile=tls[0])
        first = ok(started.run("envflow.refresh"))
        assert sorted(first["environments"]) == ["prod", "stage", "test"], first
        assert first["branch_environments"]["environments"] == {}, first
        yield started


@pytest.fixture(autouse=True)
def only_its_own_branches(site):
    """After each test, its branches are deleted and no branch environment is left: the next test finds every place
    of the cap free, whatever this one did or where it failed."""
    yield
    refs = site.remote.refs()
    site.delete(*(name for name in site.made if f"refs/heads/{name}" in refs))
    site.made.clear()
    if site.served():
        ok(site.run("envflow.refresh"))
    assert not site.served()


# The data each event carries, as docs/workflows/branch-environments.rst lists it.
EVENT_KEYS = {
    "deployed": ("env", "branch", "path", "old", "new", "refreshed", "pillar_refreshed"),
    "removed": ("env", "branch", "path", "commit", "refreshed", "pillar_refreshed"),
}


def _event(event_listener, site, saltenv, action, since):
    """The documented data of the one ``salt/envflow/<saltenv>/<action>`` event the master fired since ``since``."""
    tag = f"salt/envflow/{saltenv}/{action}"
    matched = event_listener.wait_for_events([(site.master.id, tag)], after_time=since, timeout=CLI_TIMEOUT)
    assert matched.found_all_events, matched.missed
    [event] = list(matched)
    missing = [key for key in EVENT_KEYS[action] if key not in event.data]
    assert not missing, (tag, missing, event.data)
    return {key: event.data[key] for key in EVENT_KEYS[action]}


def _one_line(text):
    assert isinstance(text, str) and text and "\n" not in text and "Traceback" not in text, text
    return text


def test_a_branch_created_moved_and_deleted_by_pushes_is_served_then_gone(site, event_listener):
    """Through salt-api's /hook/envflow and the shipped reactor: served at its tip, moved with it, removed."""
    first = site.branch("feature/hook", _greeting("hook v1"))
    start = time.time()
    site.hook("feature/hook", first)
    assert wait_for(lambda: site.serves("feature_hook") == first), "the new branch was not served"
    assert site.served()["feature_hook"] == "feature/hook"
    served_pillar = pathlib.Path(site.path("feature_hook"), "pillar", "hello.sls").read_text(encoding="utf-8")
    assert served_pillar == "hello:\n  greeting: hook v1\n"
    deployed = _event(event_listener, site, "feature_hook", "deployed", start)
    assert deployed == {
        "env": "feature_hook",
        "branch": "feature/hook",
        "path": site.path("feature_hook"),
        "old": None,
        "new": first,
        "refreshed": ["feature_hook"],
        "pillar_refreshed": ["feature_hook"],
    }

    second = site.branch("feature/hook", _greeting("hook v2"))
    start = time.time()
    site.hook("feature/hook", second, before=first)
    assert wait_for(lambda: site.serves("feature_hook") == second), "the moved branch was not served"
    assert _event(event_listener, site, "feature_hook", "deployed", start)["old"] == first

    site.delete("feature/hook")
    start = time.time()
    site.hook("feature/hook", hooksign.ZERO, before=second)
    removed = _event(event_listener, site, "feature_hook", "removed", start)
    assert removed == {
        "env": "feature_hook",
        "branch": "feature/hook",
        "path": site.path("feature_hook"),
        "commit": second,
        "refreshed": ["feature_hook"],
        "pillar_refreshed": ["feature_hook"],
    }
    assert "feature_hook" not in site.served()
    assert not os.path.lexists(site.path("feature_hook"))
    assert not os.path.exists(os.path.join(site.settings.home, "feature_hook"))
    [job] = _pushed_jobs(event_listener, site, start, 1)
    assert "retcode" not in job["return"], job
    assert job["return"]["branch_environments"]["removed"] == {
        "feature_hook": {
            "branch": "feature/hook",
            "commit": second,
            "refreshed": ["feature_hook"],
            "pillar_refreshed": ["feature_hook"],
        }
    }

    everything = [entry for entry in site.history("limit=100") if entry.get("env") == "feature_hook"]
    assert [(entry["action"], entry.get("from"), entry.get("to")) for entry in everything] == [
        ("removed", second, None),
        ("deployed", first, second),
        ("deployed", None, first),
    ]
    assert {entry["by"] for entry in everything} == {"octocat (push from github)"}
    # What a user types to see one branch environment's history, once it is gone too.
    assert site.history("feature_hook") == everything
    table = salt_run(site.master.config_dir, "envflow.history", "feature_hook")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()[1:]]
    assert [row[2:7] for row in rows] == [
        ["removed", "feature_hook", second[:10], "->", "-"],
        ["deployed", "feature_hook", first[:10], "->", second[:10]],
        ["deployed", "feature_hook", "-", "->", first[:10]],
    ], table.stdout


def test_refresh_creates_moves_and_removes_a_branch_environment(site, event_listener):
    first = site.branch("feature/cli", _greeting("cli v1"))
    before = site.listing()
    planned = ok(site.run("envflow.refresh", "dry_run=True"))["branch_environments"]
    assert planned["environments"]["feature_cli"] == {
        "branch": "feature/cli",
        "action": "create",
        "old": None,
        "new": first,
    }
    assert site.listing() == before and "feature_cli" not in site.served()

    start = time.time()
    done = ok(site.run("envflow.refresh"))["branch_environments"]
    entry = done["environments"]["feature_cli"]
    assert entry["branch"] == "feature/cli" and entry["changed"] is True and entry["new"] == first, entry
    assert site.serves("feature_cli") == first
    assert gitrepo.tree_files(site.path("feature_cli")) == gitrepo.files_at(site.remote.path, first)
    assert _event(event_listener, site, "feature_cli", "deployed", start)["new"] == first

    # refresh <saltenv> serves that branch environment alone.
    second = site.branch("feature/cli", _greeting("cli v2"))
    done = ok(site.run("envflow.refresh", "feature_cli"))
    assert done["environments"] == {} and list(done["branch_environments"]["environments"]) == ["feature_cli"]
    assert site.serves("feature_cli") == second

    site.delete("feature/cli")
    start = time.time()
    done = ok(site.run("envflow.refresh", "feature_cli"))["branch_environments"]
    assert done["removed"]["feature_cli"]["commit"] == second, done
    assert not os.path.lexists(site.path("feature_cli")) and "feature_cli" not in site.served()
    # The root salt-master made for __env__ is not a branch environment: nothing removes it.
    assert os.path.isdir(os.path.join(site.path("__env__"), "states"))
    assert _event(event_listener, site, "feature_cli", "removed", start)["commit"] == second
    actions = [
        (entry["action"], entry.get("to")) for entry in site.history("limit=100") if entry.get("env") == "feature_cli"
    ]
    assert actions == [("removed", None), ("deployed", second), ("deployed", first)]

    # A saltenv that is neither an environment nor a branch environment: one line, nothing changed.
    listing, refs = site.listing(), site.remote.refs()
    ret = site.run("envflow.refresh", "feature_cli")
    assert ret.returncode == 1, ret
    assert _one_line(ret.data["error"]) == (
        "envflow: no environment or branch environment named 'feature_cli'; configured: test, stage, prod; "
        "salt-run envflow.status lists the branch environments"
    )
    assert site.listing() == listing and site.remote.refs() == refs


def _refused_everywhere(site, event_listener, error, tip, served_files):
    """A refresh, a refresh of the saltenv and a push hook of the deletion each fail in ``error``; nothing changed."""
    listing, since = site.listing(), time.time()
    for args in ((), ("feature_offline",)):
        ret = site.run("envflow.refresh", *args)
        assert ret.returncode == 1 and ret.data["retcode"] == 1, ret
        assert _one_line(ret.data["error"]) == error
    site.hook("feature/offline", hooksign.ZERO, before=tip)
    [job] = _pushed_jobs(event_listener, site, since, 1)
    assert job["return"]["retcode"] == 1, job
    assert _one_line(job["return"]["error"]) == f"branch environments: {error}"
    assert site.listing() == listing and site.serves("feature_offline") == tip
    assert gitrepo.tree_files(site.path("feature_offline")) == served_files
    assert not event_listener.get_events([(site.master.id, "salt/envflow/feature_offline/removed")], after_time=since)


def test_a_fetch_that_fails_removes_nothing(site, event_listener):
    """The branch deleted, then the remote moved away: the branch environment stays until a fetch succeeds.

    envflow's mirror on the master is gone too (a cache cleared, a fresh
    master): it knows no branch at all, so only the failed fetch stands
    between a refresh and removing every branch environment.
    """
    tip = site.branch("feature/offline", _greeting("offline"))
    ok(site.run("envflow.refresh", "feature_offline"))
    assert site.serves("feature_offline") == tip
    served_files = gitrepo.tree_files(site.path("feature_offline"))
    site.delete("feature/offline")
    moved = f"{site.remote.path}.moved"
    os.rename(site.remote.path, moved)
    try:
        shutil.rmtree(Mirror(site.envflow["repo"], site.master.config["cachedir"]).path)
        missing = f"envflow:repo: {site.remote.path} does not exist; point envflow:repo at the automation repository"
        _refused_everywhere(site, event_listener, missing, tip, served_files)
        # An empty directory left where the repository was: libgit2's fetch fails.
        os.mkdir(site.remote.path)
        ret = site.run("envflow.refresh")
        assert ret.returncode == 1 and _one_line(ret.data["error"]).startswith(
            f"envflow: cannot fetch {site.remote.path}: "
        ), ret
        _refused_everywhere(site, event_listener, ret.data["error"], tip, served_files)
    finally:
        if os.path.isdir(site.remote.path) and not os.listdir(site.remote.path):
            os.rmdir(site.remote.path)
        os.rename(moved, site.remote.path)
    # The same hook once the remote is back: the removal is done, and the reactor's job says it succeeded.
    start = time.time()
    site.hook("feature/offline", hooksign.ZERO, before=tip)
    [job] = _pushed_jobs(event_listener, site, start, 1)
    assert job["return"]["branch_environments"]["removed"]["feature_offline"]["commit"] == tip, job
    assert not os.path.lexists(site.path("feature_offline"))
    assert "retcode" not in job["return"] and job["success"] is True, job


def _changed(report):
    """The saltenvs a refresh's or push's ``branch_environments`` report deployed anew."""
    return sorted(saltenv for saltenv, entry in report["environments"].items() if entry.get("changed"))


def test_pushes_to_two_branches_at_once_are_both_served(site, event_listener):
    """Two hook requests sent at the same moment, for a branch each, created and then moved."""
    names = ("feature/two-a", "feature/two-b")
    before = dict.fromkeys(names, hooksign.ZERO)
    for label in ("created", "moved"):
        tips = {name: site.branch(name, {f"states/{MINE}": motd(f"{name} {label}")}) for name in names}
        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(len(names)) as senders:
            sent = [senders.submit(site.hook, name, tips[name], before[name]) for name in names]
        for request in sent:
            request.result()
        assert wait_for(lambda: all(site.serves(name.replace("/", "_")) == tips[name] for name in names)), (  # noqa: B023 - called in this round
            f"{label}: {site.served()}"
        )
        jobs = _pushed_jobs(event_listener, site, start, 2)
        assert all("retcode" not in job["return"] for job in jobs), jobs
        assert sorted(branch for job in jobs for branch in job["return"]["branches"]) == list(names)
        assert sorted(saltenv for job in jobs for saltenv in _changed(job["return"]["branch_environments"])) == [
            "feature_two-a",
            "feature_two-b",
        ]
        # Salt keeps one hash cache for every saltenv served through __env__: each saltenv still gets its own file.
        for name in names:
            assert site.minion_reads(MINE, saltenv=name.replace("/", "_")) == motd(f"{name} {label}")
        before = tips


def _capped(found, branch):
    """Whether ``found`` (a ``capped`` mapping) names ``branch`` alone, in one line that says why and what to do."""
    assert list(found) == [branch], found
    line = _one_line(found[branch])
    assert line.startswith(f"branch '{branch}': "), line
    assert f"{MAX} branch environments are served" in line and "envflow:branch_environments:max" in line, line
    assert line.endswith("; delete a branch or raise max"), line
    return line


def test_the_cap_serves_max_names_the_next_and_a_deleted_branch_frees_its_place(site, event_listener):
    names = [f"feature/cap-{number}" for number in range(MAX)]
    over = "feature/cap-over"
    tips = {name: site.branch(name, _greeting(name)) for name in (*names, over)}
    done = ok(site.run("envflow.refresh"))["branch_environments"]
    # New branches take the free places in name order: the last one is left out.
    assert _changed(done) == [name.replace("/", "_") for name in names]
    line = _capped(done["capped"], over)
    assert sorted(site.served()) == [name.replace("/", "_") for name in names]
    assert not os.path.lexists(site.path("feature_cap-over"))
    assert ok(site.run("envflow.status"))["branch_environments"]["capped"] == {over: line}
    table = salt_run(site.master.config_dir, "envflow.status")
    assert table.returncode == 0, table.stderr
    assert f"not served: {line}" in table.stdout.splitlines(), table.stdout

    # A push hook deleting a served branch: its place goes to the branch left out.
    site.delete(names[0])
    start = time.time()
    site.hook(names[0], hooksign.ZERO, before=tips[names[0]])
    [job] = _pushed_jobs(event_listener, site, start, 1)
    found = job["return"]["branch_environments"]
    assert list(found["removed"]) == ["feature_cap-0"] and _changed(found) == ["feature_cap-over"], job
    assert site.serves("feature_cap-over") == tips[over] and not os.path.lexists(site.path("feature_cap-0"))

    # Full again: a new branch pushed is named, not served, and the served keep their places.
    late = "feature/cap-late"
    tip = site.branch(late, _greeting(late))
    start = time.time()
    site.hook(late, tip)
    [job] = _pushed_jobs(event_listener, site, start, 1)
    found = job["return"]["branch_environments"]
    _capped(found["capped"], late)
    assert not _changed(found), job
    assert "retcode" not in job["return"], job
    assert sorted(site.served()) == sorted(name.replace("/", "_") for name in (*names[1:], over))


def _bad_names():
    """Branch names that match the patterns but cannot be served, and the line each is refused with."""
    long_name = "feature/" + "x" * 100
    shown_long = f"{repr(long_name)[:57]}... ({len(long_name)} characters)"
    return {
        "feature/a+b": "branch 'feature/a+b': its saltenv 'feature_a+b' is not a name Salt takes as a saltenv "
        "(letters, digits, '_', '-' and '.', not first '.' or '-', no '..' and no control character); rename the "
        "branch",
        long_name: f"branch {shown_long}: its saltenv would be 108 characters, over 100; use a shorter name",
        "Prod": "branch 'Prod': its saltenv Prod is prod, a saltenv the pipeline or the master's roots already serve "
        "(letter case aside); rename the branch",
        "test": "branch 'test': its saltenv test is test, a saltenv the pipeline or the master's roots already serve "
        "(letter case aside); rename the branch",
        "feature/a_b": "branch 'feature/a_b': 'feature/a/b' and 'feature/a_b' both make saltenv feature_a_b (letter "
        "case aside); rename one",
        "feature/a/b": "branch 'feature/a/b': 'feature/a/b' and 'feature/a_b' both make saltenv feature_a_b (letter "
        "case aside); rename one",
        "Feature/case": "branch 'Feature/case': 'Feature/case' and 'feature/Case' both make saltenv Feature_case "
        "(letter case aside); rename one",
        "feature/Case": "branch 'feature/Case': 'Feature/case' and 'feature/Case' both make saltenv feature_Case "
        "(letter case aside); rename one",
        "Feature/Good": "branch 'Feature/Good': its saltenv Feature_Good is (letter case aside) feature_good, served "
        "for branch 'feature/good'; rename the branch",
    }


def test_bad_names_are_refused_in_one_line_and_block_no_other(site, event_listener):
    good = site.branch("feature/good", _greeting("good"))
    ok(site.run("envflow.refresh", "feature_good"))
    bad = _bad_names()
    tips = {name: site.branch(name, _greeting("bad")) for name in bad}
    other = site.branch("feature/other", _greeting("other"))
    listing, history = site.listing(), site.history("limit=100")

    # One push of a bad name and a good one (envflow's post-receive hook sends both in one request).
    start = time.time()
    updates = [
        ("refs/heads/feature/a+b", hooksign.ZERO, tips["feature/a+b"]),
        ("refs/heads/feature/other", hooksign.ZERO, other),
    ]
    site.post(*hooksign.plain(SECRET, updates))
    [job] = _pushed_jobs(event_listener, site, start, 1)
    assert "retcode" not in job["return"], job
    found = job["return"]["branch_environments"]
    assert _changed(found) == ["feature_other"] and found["refused"] == bad, found
    assert site.serves("feature_other") == other and site.serves("feature_good") == good

    done = ok(site.run("envflow.refresh"))["branch_environments"]
    assert done["refused"] == bad
    assert all(_one_line(line) for line in done["refused"].values())
    assert {"feature_good", "feature_other"} <= set(done["environments"]) and not _changed(done)
    status = ok(site.run("envflow.status"))["branch_environments"]
    assert status["refused"] == bad
    table = salt_run(site.master.config_dir, "envflow.status").stdout.splitlines()
    for line in bad.values():
        assert f"not served: {line}" in table, table

    # Nothing of a refused name was made: no directory, no home, no history entry.
    paths, homes = site.listing()
    assert paths == sorted([*listing[0], "feature_other"]) and homes == sorted([*listing[1], "feature_other"])
    refused_envs = {name.replace("/", "_") for name in bad}
    assert {"feature_good", "feature_other"} <= set(site.served()) and not refused_envs & set(site.served())
    newer = [entry for entry in site.history("limit=100") if entry not in history]
    assert [entry["env"] for entry in newer] == ["feature_other"], newer


def test_status_lists_branch_environments_and_a_refused_name(site):
    tip = site.branch("feature/status", _greeting("status"))
    site.branch("feature/st+tus", _greeting("refused"))
    ok(site.run("envflow.refresh", "feature_status"))
    full = ok(site.run("envflow.status"))
    # The master's configuration is the documented one: envflow.check finds nothing wrong in it.
    assert "warnings" not in full, full["warnings"]
    report = full["branch_environments"]
    assert report["path"] == site.settings.path
    entry = report["environments"]["feature_status"]
    assert {key: entry[key] for key in ("branch", "deployed", "remote", "in_sync")} == {
        "branch": "feature/status",
        "deployed": tip,
        "remote": tip,
        "in_sync": True,
    }
    assert entry["since"] and entry["summary"] == "branch change"
    line = (
        "branch 'feature/st+tus': its saltenv 'feature_st+tus' is not a name Salt takes as a saltenv (letters, "
        "digits, '_', '-' and '.', not first '.' or '-', no '..' and no control character); rename the branch"
    )
    assert report["refused"] == {"feature/st+tus": line}

    table = salt_run(site.master.config_dir, "envflow.status")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert f"branch environments in {site.settings.path}: 1 served" in lines, table.stdout
    [row] = [line for line in lines if line.split()[:2] == ["feature_status", "feature/status"]]
    assert tip[:10] in row and row.split()[-1] == "yes", row
    assert f"not served: {line}" in lines

    # Its branch deleted, before any refresh: still served, and said to go.
    site.delete("feature/status")
    entry = ok(site.run("envflow.status"))["branch_environments"]["environments"]["feature_status"]
    goes = "its branch is gone or no longer served: the next refresh removes it"
    assert (entry["remote"], entry["deployed"], entry["in_sync"], entry["goes"]) == (None, tip, False, goes)
    lines = salt_run(site.master.config_dir, "envflow.status").stdout.splitlines()
    [row] = [line for line in lines if line.split()[:2] == ["feature_status", "feature/status"]]
    assert row.split()[-1] == "no" and f"feature_status: {goes}" in lines, lines
    assert site.serves("feature_status") == tip


def test_a_minion_applies_a_branch_environments_states_and_pillar(site, event_listener):
    """salt-call state.apply saltenv=feature_x pillarenv=feature_x, before and after pushes, and once it is gone."""
    assert ok(site.call("test.version")) == salt.version.__version__
    first = site.branch("feature/x", _greeting("feature x v1"))
    site.hook("feature/x", first)
    assert wait_for(lambda: site.serves("feature_x") == first)
    apply = ("state.apply", "saltenv=feature_x", "pillarenv=feature_x")
    ret = ok(site.call(*apply))
    assert [state["result"] for state in ret.values()] == [True], ret
    assert site.written("feature_x") == "feature x v1"

    # One push changes both the pillar and the state.
    second = site.branch(
        "feature/x", {**_greeting("feature x v2"), "states/hello/init.sls": _hello_state(site.out, "state v2: ")}
    )
    site.hook("feature/x", second, before=first)
    assert wait_for(lambda: site.serves("feature_x") == second)
    ok(site.call(*apply))
    assert site.written("feature_x") == "state v2: feature x v2"

    # The pipeline's saltenvs are served as before, each from its own top file section.
    ok(site.call("state.apply", "saltenv=test", "pillarenv=test"))
    assert site.written("test") == "from the pipeline"

    site.delete("feature/x")
    start = time.time()
    site.hook("feature/x", hooksign.ZERO, before=second)
    _event(event_listener, site, "feature_x", "removed", start)
    written = (site.out / "feature_x.txt").stat()
    ret = site.call(*apply)
    assert ret.returncode != 0, ret
    assert "No Top file" in str(ret.data), ret.data
    assert (site.out / "feature_x.txt").stat().st_mtime_ns == written.st_mtime_ns
    assert ok(site.call("cp.get_file_str", "salt://hello/init.sls", "saltenv=feature_x")) is False


def test_a_top_file_whose_section_is_not_the_saltenv_applies_nothing_in_a_branch_environment(site):
    """Why top files name their section ``{{ saltenv }}``: a ``base:`` section applies nothing in saltenv feature_y."""
    literal = "base:\n  '*':\n    - hello\n"
    site.branch("feature/y", {**_greeting("feature y"), "states/top.sls": literal, "pillar/top.sls": literal})
    ok(site.run("envflow.refresh", "feature_y"))
    assert site.minion_reads("top.sls", saltenv="feature_y") == literal
    ret = site.call("state.apply", "saltenv=feature_y", "pillarenv=feature_y")
    assert ret.returncode != 0, ret
    assert "No Top file" in str(ret.data), ret.data
    assert site.written("feature_y") is None
