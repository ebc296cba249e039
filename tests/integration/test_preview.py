"""``salt-run envflow.preview prod`` on a real master and two prod minions: a web server and a database server.

One site for the module (starting it costs more than the previews): the
master configuration docs/workflows/previewing.rst shows. ``file_roots`` and
``pillar_roots`` map ``prod`` to prod's directories and ``prod_preview`` to
the preview directory (prod's ``preview_path``), with
``top_file_merging_strategy: same`` and ``pillarenv_from_saltenv: True``;
each minion sets ``saltenv: prod`` and has a ``role`` grain, which the top
files match, and prod's ``target`` matches both. The top files give
``prod_preview`` the ``prod`` section through a YAML anchor. Each minion ran
a real highstate before the first preview: the files it wrote are what every
preview must leave alone.

A candidate is what ``promote prod`` would bring: a commit served in stage.
Each test makes its own candidate on stage's branch, from the files of
:func:`_files`, so none depends on what the one before it left.
"""

import concurrent.futures
import os
import pathlib
import threading
import time

import pytest
from saltfactories.utils import random_string

from envflow import records
from envflow.remote import NOTES, Mirror
from envflow.served import ServedDir
from tests import gitrepo
from tests.integration.conftest import (
    CLI_TIMEOUT,
    LOG_FILE_LEVEL,
    MASTER_TIMEOUTS,
    MASTER_WORKERS,
    SALT_FILE_LIST_CACHE_TIME,
    fits_unix_sockets,
    minion_of,
    ok,
    running,
    salt_run,
    write_roots,
)

ROLES = ("web", "db")
TOP = (
    "prod: &prod\n"
    "  'role:web':\n    - match: grain\n    - web\n"
    "  'role:db':\n    - match: grain\n    - db\n"
    "prod_preview: *prod\n"
)
PILLAR_TOP = "prod: &prod\n  '*':\n    - app\nprod_preview: *prod\n"
# What each prod minion sets (docs/workflows/pillar.rst): a minion without a saltenv would apply the preview for real.
MINION_PROD = {"saltenv": "prod", "pillarenv_from_saltenv": True}
# A preview with a minion down: how long Salt waits for the job, then for the find_job asking whether it runs it.
DOWN_TIMEOUTS = ("timeout=10", "gather_job_timeout=20")


def _web_sls(out_dir, extra=""):
    return (
        "motd:\n  file.managed:\n"
        f"    - name: {out_dir}/{{{{ grains['id'] }}}}/motd.txt\n"
        "    - source: salt://web/motd.txt\n    - makedirs: True\n"
        "greeting:\n  file.managed:\n"
        f"    - name: {out_dir}/{{{{ grains['id'] }}}}/greeting.txt\n"
        "    - contents: {{ pillar['app']['greeting'] }}\n    - makedirs: True\n" + extra
    )


def _files(out_dir, motd="motd v1\n", schema="create table users (id int);\n", web_extra="", greeting="hello", top=TOP):
    """The repository: a web role (a file and a file from pillar), a db role (a file), the top files."""
    return {
        "salt/top.sls": top,
        "salt/web/init.sls": _web_sls(out_dir, web_extra),
        "salt/web/motd.txt": motd,
        "salt/db/init.sls": (
            "schema:\n  file.managed:\n"
            f"    - name: {out_dir}/{{{{ grains['id'] }}}}/schema.sql\n"
            "    - source: salt://db/schema.sql\n    - makedirs: True\n"
            "db-unchanged:\n  test.succeed_without_changes: []\n"
        ),
        "salt/db/schema.sql": schema,
        "pillar/top.sls": PILLAR_TOP,
        "pillar/app.sls": f"app:\n  greeting: {greeting}\n",
        "salt/backup/init.sls": "backup-job:\n  test.succeed_with_changes: []\n",
    }


def master_config(envflow, base):
    """The master configuration of docs/workflows/previewing.rst, for ``envflow``'s environments."""
    roots = [(env["name"], env["path"]) for env in envflow["environments"]]
    roots += [
        (f"{env['name']}_preview", env["preview_path"]) for env in envflow["environments"] if "preview_path" in env
    ]
    return {
        "envflow": envflow,
        "file_roots": {"base": [str(base)], **{name: [f"{path}/salt"] for name, path in roots}},
        "pillar_roots": {name: [f"{path}/pillar"] for name, path in roots},
        "top_file_merging_strategy": "same",
        "pillarenv_from_saltenv": True,
        "fileserver_followsymlinks": False,
    }


class PreviewSite:
    def __init__(self, master, minions, remote, envflow, out_dir, mirror):
        self.master, self.minions, self.remote, self.envflow = master, minions, remote, envflow
        self.out_dir, self.mirror = out_dir, mirror
        self.prod = envflow["environments"][2]
        self.run_cli = master.salt_run_cli(timeout=CLI_TIMEOUT)
        self.salt_cli = master.salt_cli(timeout=CLI_TIMEOUT)

    def run(self, *args, **kwargs):
        return self.run_cli.run(*args, **kwargs)

    def ids(self):
        return {role: minion.id for role, minion in self.minions.items()}

    def candidate(self, message, **changes):
        """Commit ``_files(**changes)`` on stage and serve it there: what ``promote prod`` would bring."""
        commit = self.remote.commit("stage", _files(self.out_dir, **changes), message)
        ok(self.run("envflow.refresh", "stage"))
        return commit

    def written(self):
        """Every file the minions' highstates wrote: ``{minion id: {name: content}}``."""
        return {
            minion: {name: (self.out_dir / minion / name).read_text(encoding="utf-8") for name in sorted(names)}
            for minion, names in ((m, os.listdir(self.out_dir / m)) for m in sorted(os.listdir(self.out_dir)))
        }

    def snapshot(self):
        """What a preview must not change: prod's directory, the branches on the remote, the minions' files."""
        branches = {ref: commit for ref, commit in self.remote.refs().items() if ref.startswith("refs/heads/")}
        return ServedDir(self.prod["path"]).deployed(), branches, self.written()

    def previewed(self, commit):
        """The ``previewed`` records of prod on ``commit``, oldest first."""
        self.mirror.fetch()
        return records.entries(records.read(self.mirror, commit), "previewed", "prod")

    def salt_run(self, *args):
        """``salt-run <args>`` as a user types it (no ``--out``): the completed process."""
        return salt_run(self.master.config_dir, *args)


def _highstate(cli, minion):
    """A real highstate of ``minion`` (in its saltenv, prod), which must succeed."""
    applied = ok(cli.run("state.apply", minion_tgt=minion.id))
    assert applied and all(state["result"] is True for state in applied.values()), applied


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory):
    """A master, a web and a db minion in prod, each with a real highstate done; every environment deployed."""
    master_id = random_string("m-", uppercase=False)
    work = tmp_path_factory.mktemp("preview")
    out_dir = work / "out"
    # Made here: Salt 3006's makedirs of two minions' highstates at once races on a missing parent ([Errno 17]).
    out_dir.mkdir()
    remote = gitrepo.Remote(work / "git", files=_files(out_dir))
    master_root = pathlib.Path(salt_factories.root_dir) / master_id
    envflow = gitrepo.config(remote.path, master_root / "envs")
    envflow.update(states="salt", pillar="pillar")
    prod = envflow["environments"][2]
    prod.update(target="G@role:web or G@role:db", preview_path=str(master_root / "envs" / "prod_preview"))
    config = master_config(envflow, master_root / "state-tree" / "base")
    overrides = {
        **MASTER_TIMEOUTS,
        **MASTER_WORKERS,
        **LOG_FILE_LEVEL,
        **config,
        "fileserver_list_cache_time": SALT_FILE_LIST_CACHE_TIME,
    }
    master = fits_unix_sockets(
        salt_factories.salt_master_daemon(master_id, defaults={"root_dir": str(master_root)}, overrides=overrides)
    )
    write_roots(master, config["file_roots"], config["pillar_roots"])  # exactly the documented roots
    minions = {
        role: minion_of(
            master,
            random_string(f"{role}-", uppercase=False),
            {**LOG_FILE_LEVEL, "grains": {"role": role}, **MINION_PROD},
        )
        for role in ROLES
    }
    with running(master, *minions.values()), Mirror(remote.path, str(work / "mirror")) as mirror:
        started = PreviewSite(master, minions, remote, envflow, out_dir, mirror)
        assert sorted(ok(started.run("envflow.refresh"))["environments"]) == ["prod", "stage", "test"]
        assert ok(started.run("envflow.minions", "prod"))["minions"] == sorted(started.ids().values())
        # prod's real highstate on each minion, both at once (one salt CLI object per concurrent run).
        with concurrent.futures.ThreadPoolExecutor(len(ROLES)) as pool:
            list(pool.map(lambda minion: _highstate(master.salt_cli(timeout=CLI_TIMEOUT), minion), minions.values()))
        assert started.written() == {
            minions["web"].id: {"greeting.txt": "hello\n", "motd.txt": "motd v1\n"},
            minions["db"].id: {"schema.sql": "create table users (id int);\n"},
        }
        yield started


def _one_line(error):
    assert isinstance(error, str) and error and "\n" not in error, error
    return error


def test_a_change_to_one_role_shows_on_its_minion_alone(site, event_listener):
    ids = site.ids()
    candidate = site.candidate("db: a name column", schema="create table users (id int, name text);\n")
    before = site.snapshot()
    since = time.time()

    found = ok(site.run("envflow.preview", "prod"))

    assert (found["env"], found["commit"], found["upstream"], found["saltenv"]) == (
        "prod",
        candidate,
        "stage",
        "prod_preview",
    )
    assert (found["no_answer"], found["passed"]) == ([], True)
    assert "retcode" not in found and "error" not in found
    db = found["minions"][ids["db"]]
    assert (db["changes"], db["failed"]) == (1, 0), found
    (state,) = db["states"]  # db-unchanged would not change: not listed
    assert (state["id"], state["function"], state["sls"], state["result"]) == ("schema", "file.managed", "db", None)
    assert state["name"] == str(site.out_dir / ids["db"] / "schema.sql")
    diff = state["changes"]["diff"]
    assert "-create table users (id int);\n+create table users (id int, name text);" in diff, diff
    assert found["minions"][ids["web"]] == {"changes": 0, "failed": 0, "states": []}
    assert site.snapshot() == before
    assert ServedDir(site.prod["preview_path"]).deployed()["id"] == candidate
    newest = site.previewed(candidate)[-1]
    assert (newest["jid"], newest["passed"], newest["no_answer"]) == (found["jid"], True, [])
    assert newest["minions"] == {ids["db"]: {"changes": 1, "failed": 0}, ids["web"]: {"changes": 0, "failed": 0}}
    matched = event_listener.wait_for_events(
        [(site.master.id, "salt/envflow/prod/previewed")], after_time=since, timeout=CLI_TIMEOUT
    )
    assert matched.found_all_events, matched.missed
    (event,) = list(matched)
    assert {key: value for key, value in event.data.items() if key != "_stamp"} == {
        "env": "prod",
        "commit": candidate,
        "jid": found["jid"],
        "passed": True,
        "outcome": "passed: 1 state to change on 1 of 2 minions",
        "no_answer": [],
        "minions": newest["minions"],
        "by": newest["by"],
    }

    # What a person sees: salt-run without --out, the same candidate previewed again.
    shown = site.salt_run("envflow.preview", "prod")
    print(shown.stdout)  # the documentation's example (docs/workflows/previewing.rst), with -rP
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert f"{ids['db']}: 1 to change, 0 failing" in lines, shown.stdout
    assert f"{ids['web']}: 0 to change, 0 failing" in lines, shown.stdout
    assert "+create table users (id int, name text);" in shown.stdout
    assert site.snapshot() == before
    assert site.previewed(candidate)[-1]["passed"] is True


def test_a_broken_state_fails_on_the_minions_that_run_it(site):
    ids = site.ids()
    broken = (
        "broken:\n  file.managed:\n"
        f"    - name: {site.out_dir}/{{{{ grains['id'] }}}}/broken.txt\n"
        "    - source: salt://web/missing.txt\n"
    )
    candidate = site.candidate("web: a file from a source nobody committed", web_extra=broken)
    before = site.snapshot()

    ret = site.run("envflow.preview", "prod")

    assert ret.returncode == 1, ret
    found = ret.data
    assert (found["retcode"], found["passed"], found["commit"], found["no_answer"]) == (1, False, candidate, [])
    _one_line(found["error"])
    web = found["minions"][ids["web"]]
    assert (web["changes"], web["failed"]) == (0, 1), found
    (state,) = web["states"]
    assert (state["id"], state["function"], state["result"]) == ("broken", "file.managed", False)
    assert state["comment"] == "Source file salt://web/missing.txt not found in saltenv 'prod_preview'"
    # The db role does not run the web states; against what prod's highstate wrote, it has nothing to change.
    assert found["minions"][ids["db"]] == {"changes": 0, "failed": 0, "states": []}
    assert site.snapshot() == before
    newest = site.previewed(candidate)[-1]
    assert (newest["jid"], newest["passed"]) == (found["jid"], False)
    assert newest["minions"][ids["web"]] == {"changes": 0, "failed": 1}


def test_a_minion_that_is_down_is_reported_as_not_answering(site):
    ids = site.ids()
    candidate = site.candidate("web: a new motd", motd="motd v2\n")
    before = site.snapshot()

    with site.minions["web"].stopped():
        ret = site.run("envflow.preview", "prod", *DOWN_TIMEOUTS)
        assert site.snapshot() == before

    assert ret.returncode == 1, ret
    found = ret.data
    assert (found["retcode"], found["passed"], found["commit"]) == (1, False, candidate)
    assert found["no_answer"] == [ids["web"]]
    assert ids["web"] in _one_line(found["error"])
    assert found["minions"] == {ids["db"]: {"changes": 0, "failed": 0, "states": []}}
    newest = site.previewed(candidate)[-1]
    assert (newest["jid"], newest["passed"], newest["no_answer"]) == (found["jid"], False, [ids["web"]])


def test_the_minions_see_the_candidates_pillar_and_top_file(site):
    ids = site.ids()
    # The candidate's pillar changes the web role's greeting; its top file gives the db role a new state.
    top = TOP.replace("    - db\n", "    - db\n    - backup\n")
    candidate = site.candidate("pillar: a new greeting; top: backups on db", greeting="good morning", top=top)
    before = site.snapshot()
    cached = site.run("cache.pillar", f"tgt={ids['web']}").data
    # Salt 3006 caches the pillar of a minion's last compile; Salt 3008 none.
    assert cached[ids["web"]] in ({"app": {"greeting": "hello"}}, {}), cached

    found = ok(site.run("envflow.preview", "prod"))

    assert (found["commit"], found["pillarenv"], found["passed"]) == (candidate, "prod_preview", True)
    (greeting,) = found["minions"][ids["web"]]["states"]
    assert (greeting["id"], greeting["function"]) == ("greeting", "file.managed")
    assert "-hello\n+good morning" in greeting["changes"]["diff"], greeting
    (backup,) = found["minions"][ids["db"]]["states"]
    assert (backup["id"], backup["function"], backup["sls"]) == ("backup-job", "test.succeed_with_changes", "backup")
    # The master's cached pillar of each minion (pillar targeting, cache.pillar) is still prod's: Salt 3006
    # caches the pillar of the preview's run as the minion's, and the preview puts prod's back.
    assert site.run("cache.pillar", f"tgt={ids['web']}").data == cached
    # prod's minions still get prod's pillar and top file: a real test run in prod shows nothing to change.
    for minion in site.minions.values():
        applied = ok(site.salt_cli.run("state.apply", "test=True", minion_tgt=minion.id))
        assert all(state["result"] is True and not state["changes"] for state in applied.values()), applied
    assert site.snapshot() == before


def test_a_preview_that_cannot_be_recorded_still_reports_and_warns_in_one_line(site):
    """The remote's notes reference is locked by another writer throughout: the run is reported, not recorded."""
    ids = site.ids()
    candidate = site.candidate("web: a third motd", motd="motd v3\n")
    before = site.snapshot()
    lock = pathlib.Path(site.remote.path, f"{NOTES}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    released = threading.Event()

    def hold():  # kept fresh, so that it is never taken for a lock a killed process left
        while not released.wait(1):
            os.utime(lock)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        found = ok(site.run("envflow.preview", "prod"))
        shown = site.salt_run("envflow.preview", "prod")
    finally:
        released.set()
        holder.join()
        lock.unlink()

    assert (found["commit"], found["passed"], found["no_answer"]) == (candidate, True, [])
    assert found["minions"][ids["web"]]["changes"] == 1, found
    (warning,) = found["warnings"]
    unrecorded = "envflow: the preview was not recorded, so the previewed gate does not see it: "
    assert _one_line(warning).startswith(unrecorded), warning
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert unrecorded in shown.stdout  # what a person sees says so too
    assert site.previewed(candidate) == []
    assert site.snapshot() == before
