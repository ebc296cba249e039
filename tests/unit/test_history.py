"""The history on the remote (envflow.history): written by compare-and-swap, merged when masters race, read by git."""

import json
import multiprocessing
import os

import pygit2
import pytest

from envflow import history
from envflow.errors import BranchMoved
from envflow.remote import HISTORY, Mirror, _create_local_ref
from tests.gitrepo import git


def _freeze(env, by):
    def change(found):
        found.setdefault(env, {})["freeze"] = {"by": by, "reason": f"{by} froze {env}"}
        return found

    return change


def test_an_entry_is_one_commit_that_plain_git_reads(remote, mirror):
    entry = history.record(
        mirror, {"action": "frozen", "env": "prod", "by": "alice", "reason": "audit"}, _freeze("prod", "alice")
    )
    assert entry["at"] and entry["master"]
    assert git("log", "--format=%s", HISTORY, cwd=remote.path) == "frozen prod by alice: audit"
    body = git("log", "--format=%b", HISTORY, cwd=remote.path)
    assert json.loads(body) == entry
    holds = json.loads(git("show", f"{HISTORY}:holds.json", cwd=remote.path))
    assert holds == {"prod": {"freeze": {"by": "alice", "reason": "alice froze prod"}}}
    assert history.holds(mirror) == holds and history.entries(mirror) == [entry]


def test_two_masters_writing_at_once_are_merged_never_lost(remote, mirror, tmp_path):
    """The second master's mirror is stale when it writes: its entry goes on top of the first's, holds merged."""
    with Mirror(remote.path, str(tmp_path / "other-master")) as other:
        other.fetch()
        history.record(mirror, {"action": "frozen", "env": "prod", "by": "alice"}, _freeze("prod", "alice"))
        history.record(other, {"action": "frozen", "env": "stage", "by": "bob"}, _freeze("stage", "bob"))
        assert [entry["by"] for entry in history.entries(other)] == ["bob", "alice"]
    mirror.fetch()
    assert set(history.holds(mirror)) == {"prod", "stage"}
    assert git("rev-list", "--count", HISTORY, cwd=remote.path) == "2"


def test_a_change_that_finds_nothing_to_do_after_a_race_writes_nothing(remote, mirror, tmp_path):
    with Mirror(remote.path, str(tmp_path / "other-master")) as other:
        other.fetch()
        history.record(mirror, {"action": "frozen", "env": "prod", "by": "alice"}, _freeze("prod", "alice"))

        def thaw(found):
            if not found.get("prod", {}).get("freeze"):
                return None
            found["prod"].pop("freeze")
            return found

        # Both thaw; the stale one retries on the fresh holds and finds nothing left to do.
        assert history.record(mirror, {"action": "thawed", "env": "prod", "by": "alice"}, thaw) is not None
        assert history.record(other, {"action": "thawed", "env": "prod", "by": "bob"}, thaw) is None
    assert git("log", "--format=%s", HISTORY, cwd=remote.path).splitlines() == [
        "thawed prod by alice",
        "frozen prod by alice",
    ]


def test_a_dry_run_writes_nothing(remote, mirror):
    refs = remote.refs()
    entry = history.record(mirror, {"action": "frozen", "env": "prod", "by": "a"}, _freeze("prod", "a"), dry_run=True)
    assert entry["action"] == "frozen" and remote.refs() == refs and history.entries(mirror) == []


def test_commits_and_holds_written_by_hand_do_not_break_reading(remote, mirror):
    """Someone committed to the history with git: a message without an entry is skipped, bad holds read as none."""
    history.record(mirror, {"action": "frozen", "env": "prod", "by": "alice"}, _freeze("prod", "alice"))
    work = str(remote.path) + "-hand"
    git("clone", "-q", remote.path, work)
    git("fetch", "-q", "origin", f"{HISTORY}:{HISTORY}", cwd=work)
    git("checkout", "-q", HISTORY, cwd=work)
    with open(f"{work}/holds.json", "w", encoding="utf-8") as handle:
        handle.write("not json")
    git("commit", "-q", "-am", "fiddled by hand", cwd=work)
    git("push", "-q", "origin", f"HEAD:{HISTORY}", cwd=work)
    mirror.fetch()
    assert history.holds(mirror) == {}
    assert [entry["action"] for entry in history.entries(mirror)] == ["frozen"]
    # The next write replaces the bad holds and keeps the chain.
    history.record(mirror, {"action": "frozen", "env": "stage", "by": "bob"}, _freeze("stage", "bob"))
    assert set(history.holds(mirror)) == {"stage"}
    assert git("rev-list", "--count", HISTORY, cwd=remote.path) == "3"


def _write(remote_path, cachedir, number, barrier):
    with Mirror(remote_path, cachedir) as mirror:
        mirror.fetch()
        barrier.wait()
        history.record(mirror, {"action": "frozen", "env": f"env{number}", "by": f"master{number}"})


def test_eight_masters_at_once_lose_no_entry(remote, tmp_path, spawn_barrier):
    """Eight masters write at once, starting from no history at all (its creation is the tightest race), 4 times."""
    context = multiprocessing.get_context("spawn")
    writers = 8
    barrier = spawn_barrier(writers)
    with context.Pool(writers) as pool:
        for round_number in range(4):
            git("update-ref", "-d", HISTORY, cwd=remote.path)
            caches = [str(tmp_path / f"round{round_number}" / f"master{n}") for n in range(writers)]
            pool.starmap(_write, [(remote.path, caches[n], n, barrier) for n in range(writers)])
            listed = git("log", "--format=%s", HISTORY, cwd=remote.path).splitlines()
            assert sorted(listed) == sorted(f"frozen env{n} by master{n}" for n in range(writers))
            assert git("rev-list", "--merges", "--count", HISTORY, cwd=remote.path) == "0"  # one straight chain


def test_a_reference_made_meanwhile_or_locked_is_not_overwritten(remote):
    """Creating a reference in a local remote takes git's lock first (libgit2 checks for it before locking)."""
    repo = pygit2.Repository(remote.path)
    develop, master = repo.references["refs/heads/develop"].target, repo.references["refs/heads/master"].target
    _create_local_ref(repo, "refs/envflow/made", develop)
    with pytest.raises(BranchMoved):
        _create_local_ref(repo, "refs/envflow/made", master)
    assert repo.references["refs/envflow/made"].target == develop
    lock = os.path.join(remote.path, "refs/envflow/locked.lock")
    with open(lock, "w", encoding="ascii"):
        pass
    with pytest.raises(BranchMoved):
        _create_local_ref(repo, "refs/envflow/locked", master)
    assert repo.references.get("refs/envflow/locked") is None and os.path.exists(lock)  # the holder's lock stays


def test_over_https_the_history_is_fetched_pushed_and_merged(remote, git_http, tmp_path):
    """The same through git's smart HTTP (a real git http-backend), a race between two masters included."""
    from envflow.config import parse  # pylint: disable=import-outside-toplevel
    from tests.conftest import HTTP_PASSWORD, HTTP_USER  # pylint: disable=import-outside-toplevel
    from tests.gitrepo import config  # pylint: disable=import-outside-toplevel

    raw = config(git_http.url("automation.git"), tmp_path / "srv")
    raw["credentials"] = {"username": HTTP_USER, "password": HTTP_PASSWORD, "allow_http": True}
    parsed = parse(raw)
    masters = [Mirror(parsed.repo, str(tmp_path / name), parsed.credentials, parsed.timeout) for name in "ab"]
    try:
        for mirror in masters:
            mirror.fetch()
        history.record(masters[0], {"action": "frozen", "env": "prod", "by": "alice"}, _freeze("prod", "alice"))
        history.record(masters[1], {"action": "frozen", "env": "stage", "by": "bob"}, _freeze("stage", "bob"))
        masters[0].fetch()
        assert [entry["by"] for entry in history.entries(masters[0])] == ["bob", "alice"]
        assert set(history.holds(masters[0])) == {"prod", "stage"}
    finally:
        for mirror in masters:
            mirror.close()
    assert git("log", "--format=%s", HISTORY, cwd=remote.path).splitlines() == [
        "frozen stage by bob",
        "frozen prod by alice",
    ]


def test_a_freeze_whose_end_was_written_by_hand_still_reads():
    """holds.json edited by hand: an end without a time zone is UTC, one nobody can read leaves the freeze on."""
    found = {"prod": {"freeze": {"by": "a", "until": "2001-01-01T00:00:00"}}, "stage": {"freeze": {"until": "soon"}}}
    assert history.freeze_of(found, "prod") is None
    assert history.freeze_of(found, "stage") == {"until": "soon"}


def test_a_name_git_would_refuse_is_recorded_without_what_git_refuses(remote, mirror):
    """``by`` comes from the caller (salt-call envflow.promote by=...): angle brackets or newlines are no traceback."""
    from envflow import records  # pylint: disable=import-outside-toplevel

    entry = history.record(mirror, {"action": "frozen", "env": "prod", "by": "Eve <eve@example.com>\nagain"})
    assert entry["by"] == "Eve <eve@example.com>\nagain"  # the entry keeps what was given
    assert (
        git("log", "-1", "--format=%an <%ae>", HISTORY, cwd=remote.path)
        == "Eve eve@example.com again <envflow@localhost>"
    )
    records.add(mirror, remote.tip("master"), "approved", "prod", {"by": "Mallory <m>"})
    assert records.entries(records.read(mirror, remote.tip("master")), "approved", "prod")[0]["by"] == "Mallory <m>"
