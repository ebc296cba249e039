"""Two masters configured with one set of paths, as the masters of a cluster on a shared file system are.

Both deploy into the same directories. Master ``a`` promotes while master
``b`` refreshes, at once, round after round, each through ``salt-run`` and
each with a mirror of its own; meanwhile a reader polls the directories as a
file server would. Every tree it finds is the whole tree of one commit, the
directories end exact, and the status of either master shows each directory
as one tree served by both.
"""

import functools
import json
import os
import pathlib
import threading

import pytest
from saltfactories.utils import random_string

from envflow.errors import EnvflowError
from envflow.served import ServedDir
from tests import gitrepo
from tests.integration.conftest import (
    LOG_FILE_LEVEL,
    MASTER_TIMEOUTS,
    MASTER_WORKERS,
    _at_once,
    fits_unix_sockets,
    ok,
    salt_run,
    stopping,
    write_roots,
)

ROUNDS = 3
# Every commit rewrites each of these files, so a tree holding two commits' files is told from either's.
FILES = 40


def _files(number):
    found = {f"web/part{index:02d}.sls": f"# round {number}, part {index}\n" for index in range(FILES)}
    found[f"web/only{number}.sls"] = f"# only in round {number}\n"
    return {"top.sls": "{}\n", **found}


def _commit_files(remote, commit):
    names = gitrepo.git("ls-tree", "-r", "--name-only", commit, cwd=remote.path).splitlines()
    return {name: gitrepo.git("show", f"{commit}:{name}", cwd=remote.path) + "\n" for name in names}


def _served(path):
    """``(slot, commit, since)`` of what ``path`` serves, or ``None`` while nothing or no record is there."""
    try:
        info = ServedDir(path).deployed()
        return (os.readlink(path), info["id"], info["deployed_at"]) if info else None
    except (OSError, EnvflowError):
        return None


class Reader(threading.Thread):
    """Reads the served trees again and again, as the master's file server would, until told to stop.

    A tree is judged only when its directory served the same slot, commit and
    switch before and after the reading: else a deploy switched meanwhile, and
    the slot read may be the one being brought to the next commit.
    """

    def __init__(self, paths, commit_files):
        super().__init__(daemon=True)
        self.paths, self.commit_files = paths, commit_files
        self.checked, self.bad, self.done = 0, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            for path in self.paths:
                before = _served(path)
                if before is None:
                    continue
                found = gitrepo.tree_files(os.path.join(os.path.dirname(path), before[0]))
                if _served(path) != before:
                    continue
                if found != self.commit_files(before[1]):
                    self.bad.append((path, before[1], sorted(set(found) ^ set(self.commit_files(before[1])))[:5]))
                self.checked += 1


def _master(salt_factories, envflow):
    master_id = random_string("sh-", uppercase=False)
    root = pathlib.Path(salt_factories.root_dir) / master_id
    file_roots = {env["name"]: [env["path"]] for env in envflow["environments"]}
    master = fits_unix_sockets(
        salt_factories.salt_master_daemon(
            master_id,
            defaults={"root_dir": str(root)},
            overrides={**MASTER_TIMEOUTS, **MASTER_WORKERS, **LOG_FILE_LEVEL, "envflow": envflow},
        )
    )
    write_roots(master, file_roots, {})  # only the shared directories
    return master


def _into(runs, key, master, *args):
    runs[key] = master.salt_run_cli().run(*args)


@pytest.fixture(scope="module")
def pair(salt_factories, tmp_path_factory):
    work = tmp_path_factory.mktemp("shared")
    remote = gitrepo.Remote(work / "git", files=_files(0))
    # One set of directories, outside both masters' roots: the same paths in both configurations.
    envflow = gitrepo.config(remote.path, work / "state-tree")
    masters = [_master(salt_factories, envflow) for _ in range(2)]
    try:
        _at_once([master.start for master in masters])
        yield remote, envflow, masters
    finally:
        _at_once(stopping(*masters))


def test_two_masters_deploying_into_one_set_of_directories_at_once_never_serve_a_half_tree(pair):
    remote, envflow, (first, second) = pair
    paths = [env["path"] for env in envflow["environments"]]
    ok(first.salt_run_cli().run("envflow.refresh"))
    known = {}

    def commit_files(commit):
        if commit not in known:
            known[commit] = _commit_files(remote, commit)
        return known[commit]

    reader = Reader(paths, commit_files)
    reader.start()
    outcomes = []
    try:
        for number in range(1, ROUNDS + 1):
            pushed = remote.commit("develop", _files(number), f"round {number}")
            ok(first.salt_run_cli().run("envflow.refresh", "test"))
            runs = {}
            _at_once(
                [
                    functools.partial(_into, runs, "promote", first, "envflow.promote", "stage"),
                    functools.partial(_into, runs, "refresh", second, "envflow.refresh"),
                ]
            )
            assert ok(runs["promote"])["new"] == pushed
            refreshed = ok(runs["refresh"])
            outcomes.append((number, refreshed["environments"]["stage"].get("new", "")[:10], pushed[:10]))
    finally:
        reader.done.set()
        reader.join()
    print(f"\nthe reader judged {reader.checked} trees while the masters deployed; rounds: {outcomes}")
    assert reader.bad == [], reader.bad
    assert reader.checked >= ROUNDS
    # Both settle on the branch tips, exactly, with no hand edits seen.
    ok(second.salt_run_cli().run("envflow.refresh"))
    for env in envflow["environments"]:
        served = ServedDir(env["path"]).deployed()["id"]
        assert served == remote.tip(env["branch"])
        assert gitrepo.tree_files(env["path"]) == commit_files(served)
    assert remote.tip("stage") == remote.tip("develop")
    # Each master's status shows every directory as one tree served by both.
    ok(first.salt_run_cli().run("envflow.refresh"))
    status = ok(first.salt_run_cli().run("envflow.status"))["fleet"]
    for env in ("test", "stage", "prod"):
        assert {name: entry["shared_with"] for name, entry in status[env].items()} == {
            first.id: [second.id],
            second.id: [first.id],
        }, json.dumps(status[env])
        assert not any(entry["behind_others"] for entry in status[env].values())
    printed = salt_run(first.config_dir, "envflow.status").stdout
    print(f"\n{printed}")
    assert f"one tree with {second.id}" in printed, printed
