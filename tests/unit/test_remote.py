import os
import time

import pygit2
import pytest

from envflow.errors import BranchMoved, RemoteError, RevisionError
from envflow.remote import Mirror, redact


def test_redact_hides_user_information_in_urls():
    assert redact("https://ci:s3cret@git.example.com/ops/a.git") == "https://***@git.example.com/ops/a.git"
    assert redact("https://tok3n@git.example.com/a.git") == "https://***@git.example.com/a.git"
    assert redact("https://git.example.com/a.git") == "https://git.example.com/a.git"
    assert redact("/srv/git/a.git") == "/srv/git/a.git"


def test_fetch_mirrors_every_branch(remote, mirror):
    for branch in ("develop", "stage", "master"):
        assert str(mirror.tip(branch)) == remote.tip(branch)
    assert mirror.tip("nope") is None


def test_fetch_from_a_file_url(remote, tmp_path):
    with Mirror(f"file://{remote.path}", str(tmp_path / "cache2")) as mirror:
        mirror.fetch()
        assert str(mirror.tip("develop")) == remote.tip("develop")


def test_fetch_follows_new_commits_and_deleted_branches(remote, mirror):
    new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    os.system(f"git --git-dir={remote.path} branch -q feature {new}")
    mirror.fetch()
    assert str(mirror.tip("develop")) == new
    assert str(mirror.tip("feature")) == new
    os.system(f"git --git-dir={remote.path} branch -q -D feature")
    mirror.fetch()
    assert mirror.tip("feature") is None


def test_fetch_of_a_missing_repository_says_what_to_fix(tmp_path):
    with Mirror(str(tmp_path / "nowhere.git"), str(tmp_path / "cache")) as mirror, pytest.raises(RemoteError) as error:
        mirror.fetch()
    assert (
        str(error.value)
        == f"envflow:repo: {tmp_path / 'nowhere.git'} does not exist; point envflow:repo at the automation repository"
    )


def test_credentials_never_reach_an_error_or_the_cache_path(tmp_path):
    url = "https://deploy:hunter2-token@127.0.0.1:9/ops/automation.git"
    with Mirror(url, str(tmp_path / "cache")) as mirror:
        with pytest.raises(RemoteError) as error:
            mirror.fetch()
        assert "hunter2" not in mirror.path and "deploy" not in mirror.path
    text = str(error.value)
    assert text.startswith("envflow: cannot fetch https://***@127.0.0.1:9/ops/automation.git: ")
    assert "hunter2" not in text and "deploy:" not in text


def test_fetch_recovers_from_lock_files_a_killed_git_left(remote, mirror):
    new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    for name in ("refs/heads/develop.lock", "packed-refs.lock", "HEAD.lock"):
        with open(os.path.join(mirror.path, name), "w", encoding="utf-8"):
            pass
    mirror.fetch()
    assert str(mirror.tip("develop")) == new
    assert not os.path.exists(os.path.join(mirror.path, "refs/heads/develop.lock"))


def test_commit_resolves_ids_tags_and_branches(remote, mirror):
    first = remote.tip("develop")
    os.system(f"git --git-dir={remote.path} tag v1 {first}")
    second = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    mirror.fetch()
    assert str(mirror.commit("develop").id) == second
    assert str(mirror.commit("v1").id) == first
    assert str(mirror.commit(first[:10]).id) == first
    assert str(mirror.commit(pygit2.Oid(hex=first)).id) == first
    for bad in ("nope", "0" * 40, "develop~9"):
        with pytest.raises(RevisionError) as error:
            mirror.commit(bad)
        assert str(error.value).startswith(f"envflow: revision {bad!r} is not in {remote.path}; give a commit id")


def test_commits_and_changed_files_between_two_commits(remote, mirror):
    base = mirror.tip("develop")
    remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    head = remote.commit("develop", {"db/init.sls": "# db\n", "top.sls": None}, message="db, no top")
    mirror.fetch()
    assert [summary for _id, summary in mirror.commits(mirror.tip("develop"), base)] == ["db, no top", "web v2"]
    assert sorted(mirror.changed_files(base, head)) == [("A", "db/init.sls"), ("D", "top.sls"), ("M", "web/init.sls")]
    assert mirror.contains(mirror.tip("develop"), base)
    assert not mirror.contains(base, mirror.tip("develop"))


def test_update_branch_moves_the_remote_branch(remote, mirror):
    new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    mirror.fetch()
    mirror.update_branch("stage", mirror.tip("stage"), pygit2.Oid(hex=new))
    assert remote.tip("stage") == new
    assert str(mirror.tip("stage")) == new


def test_update_branch_creates_a_missing_branch(remote, mirror):
    mirror.update_branch("hotfix", None, mirror.tip("develop"))
    assert remote.tip("hotfix") == str(mirror.tip("develop"))


def test_compare_and_swap_loses_a_race_and_changes_nothing(remote, mirror):
    new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    other = remote.commit("develop", {"web/init.sls": "# web v3\n"})
    mirror.fetch()
    read = mirror.tip("stage")
    # Another master promotes stage to an older tested commit first: a fast-forward
    # libgit2 alone would accept, but it is not the value envflow read.
    remote.set_branch("stage", new)
    before = remote.refs()
    with pytest.raises(BranchMoved) as error:
        mirror.update_branch("stage", read, pygit2.Oid(hex=other))
    assert str(error.value) == (
        "envflow: stage moved on the remote while envflow was working; nothing was changed, run the command again"
    )
    assert remote.refs() == before


def test_compare_and_swap_refuses_creating_a_branch_that_appeared(remote, mirror):
    remote.set_branch("hotfix", remote.tip("develop"))
    before = remote.refs()
    with pytest.raises(BranchMoved):
        mirror.update_branch("hotfix", None, mirror.tip("develop"))
    assert remote.refs() == before


def _race(args):
    remote_path, cache, old, new = args
    from envflow.errors import BranchMoved  # pylint: disable=import-outside-toplevel
    from envflow.remote import Mirror  # pylint: disable=import-outside-toplevel

    with Mirror(remote_path, cache) as mirror:
        try:
            mirror.update_branch("stage", pygit2.Oid(hex=old), pygit2.Oid(hex=new))
            return new
        except BranchMoved:
            return None


def test_concurrent_compare_and_swaps_let_exactly_one_win(remote, mirror, tmp_path):
    """Several masters move stage from the same value at once: one wins, the others change nothing."""
    import multiprocessing  # pylint: disable=import-outside-toplevel

    old = remote.tip("stage")
    candidates = [remote.commit("develop", {"web/init.sls": f"# web v{n}\n"}) for n in range(2, 8)]
    mirror.fetch()
    jobs = [(remote.path, str(tmp_path / f"cache{n}"), old, new) for n, new in enumerate(candidates)]
    for cache in (job[1] for job in jobs):
        from envflow.remote import Mirror  # pylint: disable=import-outside-toplevel

        with Mirror(remote.path, cache) as other:
            other.fetch()
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        winners = [won for won in pool.map(_race, jobs) if won]
    assert len(winners) == 1
    assert remote.tip("stage") == winners[0]


def test_redact_also_hides_credentials_in_malformed_urls():
    assert redact("https//alice:T0KEN@git.example.com/r.git") == "https//***@git.example.com/r.git"
    assert redact("alice:T0KEN@git.example.com:ops/r.git") == "***@git.example.com:ops/r.git"
    assert redact("https://[::1/ops@x") == "https://[::1/***@x"


def test_a_revision_that_reached_envflow_as_a_number_is_refused_in_one_line(mirror):
    with pytest.raises(RevisionError) as error:
        mirror.commit(1234567)
    assert str(error.value) == (
        "envflow: revision 1234567 reached envflow as an int, not as text; give the full commit id, "
        "or quote it for Salt: rev=\"'1234567'\""
    )


def test_a_mirror_left_half_made_is_made_anew(remote, tmp_path):
    with Mirror(remote.path, str(tmp_path / "cache")) as mirror:
        os.makedirs(os.path.join(mirror.path, "objects"))  # a killed init: no HEAD
    with Mirror(remote.path, str(tmp_path / "cache")) as mirror:
        mirror.fetch()
        assert str(mirror.tip("stage")) == remote.tip("stage")


def test_a_lock_a_killed_process_left_in_a_local_remote_long_ago_is_cleared(remote, mirror):
    new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    mirror.fetch()
    lock = os.path.join(remote.path, "refs", "heads", "stage.lock")
    with open(lock, "w", encoding="utf-8"):
        pass
    with pytest.raises(BranchMoved):  # a fresh lock: someone is writing right now
        mirror.update_branch("stage", mirror.tip("stage"), pygit2.Oid(hex=new))
    os.utime(lock, (time.time() - 600, time.time() - 600))
    mirror.update_branch("stage", mirror.tip("stage"), pygit2.Oid(hex=new))
    assert remote.tip("stage") == new
    assert not os.path.exists(lock)


def test_a_local_fetch_copies_branches_tags_and_notes_and_prunes_the_rest(remote, mirror):
    """A local remote's objects are read in place: the fetch sets the references as they are there, no more."""
    from tests.gitrepo import git  # pylint: disable=import-outside-toplevel

    new = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    git("tag", "-a", "-m", "release", "v1", new, cwd=remote.path)
    git("tag", "light", remote.tip("stage"), cwd=remote.path)
    git("notes", "--ref=envflow", "add", "-m", '{"verified": true}', new, cwd=remote.path)
    git("symbolic-ref", "refs/heads/alias", "refs/heads/develop", cwd=remote.path)
    git("update-ref", "refs/other/kept-out", new, cwd=remote.path)
    mirror.fetch()
    refs = {name: str(mirror.repo.references[name].target) for name in mirror.repo.references}
    expected = {
        name: git("rev-parse", name, cwd=remote.path)
        for name in git("for-each-ref", "--format=%(refname)", cwd=remote.path).split()
        if name.startswith(("refs/heads/", "refs/tags/", "refs/notes/envflow"))
    }
    assert refs == expected
    assert refs["refs/heads/alias"] == new
    assert mirror.commit("v1").id == pygit2.Oid(hex=new)
    git("tag", "-d", "v1", cwd=remote.path)
    git("update-ref", "-d", "refs/notes/envflow", cwd=remote.path)
    git("symbolic-ref", "--delete", "refs/heads/alias", cwd=remote.path)
    mirror.fetch()
    assert not {"refs/tags/v1", "refs/notes/envflow", "refs/heads/alias"} & set(mirror.repo.references)
    assert str(mirror.repo.references["refs/tags/light"].target) == remote.tip("stage")
