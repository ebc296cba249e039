"""After a switch the master forgets only what changed: the hashes of changed paths, the list when paths come or go.

``pipeline.tree_changes`` says what a switch changed (from the served commit to
the new one); ``saltbus.forget_changed`` drops those paths from the ``roots``
caches laid out as Salt's roots file server writes them under the master's
``cachedir``: ``roots/hash/<saltenv>/<path>.hash.<type>`` (``hash:mtime``) and
``file_lists/roots/<saltenv>.p``.
"""

import os

import pytest

from envflow import pipeline, saltbus
from envflow.served import ServedDir
from tests.gitrepo import Symlink, git


def _deploy(config, mirror, remote, files=None, message="change"):
    """Commit ``files`` on develop (when given), fetch, and deploy test; the deploy's result."""
    if files:
        remote.commit("develop", files, message)
    mirror.fetch()
    return pipeline.deploy(config, mirror, "test")


def test_a_modified_file_changes_its_path_only_and_keeps_the_listing(pipeline_config, mirror, remote):
    first = _deploy(pipeline_config, mirror, remote)
    assert first["changes"] is None  # nothing served before: everything is new
    result = _deploy(pipeline_config, mirror, remote, {"web/init.sls": "# web v2\n"})
    assert result["changes"] == {"paths": ["web/init.sls"], "listing": False}


@pytest.mark.parametrize(
    "files",
    [
        {"web/extra.sls": "# new\n"},  # added
        {"web/init.sls": None},  # deleted
    ],
)
def test_a_path_that_comes_or_goes_changes_the_listing(pipeline_config, mirror, remote, files):
    _deploy(pipeline_config, mirror, remote)
    result = _deploy(pipeline_config, mirror, remote, files)
    assert result["changes"] == {"paths": list(files), "listing": True}


def test_a_file_made_executable_changes_the_listing_too(pipeline_config, mirror, remote):
    _deploy(pipeline_config, mirror, remote)
    work = remote.work
    git("fetch", "-q", "origin", cwd=work)
    git("checkout", "-q", "-B", "develop", "origin/develop", cwd=work)
    git("update-index", "--chmod=+x", "web/init.sls", cwd=work)
    git("commit", "-qm", "executable", cwd=work)
    git("push", "-q", "origin", "HEAD:refs/heads/develop", cwd=work)
    result = _deploy(pipeline_config, mirror, remote)
    assert result["changes"] == {"paths": ["web/init.sls"], "listing": True}


def test_a_tree_with_a_symlink_is_forgotten_whole(pipeline_config, mirror, remote):
    """A file read through a link changes while the link's path does not: only forgetting everything is safe."""
    _deploy(pipeline_config, mirror, remote, {"web/alias.sls": Symlink("init.sls")})
    result = _deploy(pipeline_config, mirror, remote, {"web/init.sls": "# web v2\n"})
    assert result["changed"] and result["changes"] is None


def test_a_deploy_that_changes_nothing_has_no_changes(pipeline_config, mirror, remote):
    _deploy(pipeline_config, mirror, remote)
    assert "changes" not in _deploy(pipeline_config, mirror, remote)


def _cache(cachedir, saltenv, paths):
    """Hash entries of ``paths`` and the file list of ``saltenv``, as Salt's roots file server writes them."""
    made = {}
    for path in paths:
        entry = os.path.join(cachedir, "roots", "hash", saltenv, f"{path}.hash.sha256")
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        with open(entry, "w", encoding="utf-8") as handle:
            handle.write("0123:1700000000.0")
        made[path] = entry
    listing = os.path.join(cachedir, "file_lists", "roots", f"{saltenv}.p")
    os.makedirs(os.path.dirname(listing), exist_ok=True)
    with open(listing, "wb") as handle:
        handle.write(b"listing")
    return made, listing


def test_forget_changed_drops_the_hashes_of_changed_paths_only(tmp_path):
    made, listing = _cache(str(tmp_path), "stage", ["top.sls", "web/init.sls", "web/motd.txt", "db/init.sls"])
    saltbus.forget_changed(str(tmp_path), "stage", {"paths": ["web/init.sls", "db/gone.sls"], "listing": False})
    assert {path for path, entry in made.items() if os.path.exists(entry)} == {"top.sls", "web/motd.txt", "db/init.sls"}
    assert os.path.exists(listing)
    saltbus.forget_changed(str(tmp_path), "stage", {"paths": ["web/new.sls"], "listing": True})
    assert not os.path.exists(listing)


def test_forget_changed_reads_paths_under_the_saltenvs_root_in_the_tree(tmp_path):
    """With ``states: states``, file_roots lists <path>/states: a change outside it (pillar) forgets nothing there."""
    made, listing = _cache(str(tmp_path), "stage", ["web/init.sls", "top.sls"])
    outside = {"paths": ["pillar/web.sls", "README.md"], "listing": True}
    saltbus.forget_changed(str(tmp_path), "stage", outside, prefix="states/")
    assert all(os.path.exists(entry) for entry in made.values()) and os.path.exists(listing)
    inside = {"paths": ["states/web/init.sls"], "listing": False}
    saltbus.forget_changed(str(tmp_path), "stage", inside, prefix="states/")
    assert not os.path.exists(made["web/init.sls"]) and os.path.exists(made["top.sls"]) and os.path.exists(listing)


def test_a_path_with_glob_characters_forgets_itself_only(tmp_path):
    made, _listing = _cache(str(tmp_path), "stage", ["web/[ab].sls", "web/a.sls"])
    saltbus.forget_changed(str(tmp_path), "stage", {"paths": ["web/[ab].sls"], "listing": False})
    assert not os.path.exists(made["web/[ab].sls"]) and os.path.exists(made["web/a.sls"])


def test_refresh_caches_forgets_what_the_deploy_changed_and_everything_without_changes(
    pipeline_config, mirror, remote, tmp_path
):
    env = pipeline_config.environment("test")
    opts = {"cachedir": str(tmp_path / "master"), "file_roots": {"test": [env.path]}}
    _deploy(pipeline_config, mirror, remote)
    made, listing = _cache(opts["cachedir"], "test", ["top.sls", "web/init.sls"])
    result = _deploy(pipeline_config, mirror, remote, {"web/init.sls": "# web v2\n"})
    assert saltbus.refresh_caches(opts, env, result["changes"])["refreshed"] == ["test"]
    assert not os.path.exists(made["web/init.sls"]) and os.path.exists(made["top.sls"]) and os.path.exists(listing)
    assert saltbus.refresh_caches(opts, env)["refreshed"] == ["test"]
    assert not os.path.exists(made["top.sls"]) and not os.path.exists(listing)
    assert ServedDir(env.path).deployed()["id"] == remote.tip("develop")


def test_a_promotion_says_what_its_switch_changed(pipeline_config, mirror, remote):
    for env in pipeline_config.environments:
        ServedDir(env.path).deploy(mirror.objects, mirror.commit(env.branch))
    _deploy(pipeline_config, mirror, remote, {"web/init.sls": "# web v2\n"})
    done = pipeline.promote(pipeline_config, mirror, "stage")
    assert done.deployed["changes"] == {"paths": ["web/init.sls"], "listing": False}


def test_a_change_of_more_paths_than_one_unlink_each_is_worth_forgets_the_saltenvs_hashes_whole(tmp_path):
    made, listing = _cache(str(tmp_path), "stage", ["top.sls", "web/init.sls"])
    many = [f"web/file{number}.sls" for number in range(saltbus.FORGET_ALL_PAST + 1)]
    saltbus.forget_changed(str(tmp_path), "stage", {"paths": many, "listing": False})
    assert not any(os.path.exists(entry) for entry in made.values())
    assert os.path.exists(listing)  # only modified files: the list still holds


def test_only_the_masters_hash_type_is_forgotten(tmp_path):
    made, _listing = _cache(str(tmp_path), "stage", ["web/init.sls"])
    saltbus.forget_changed(str(tmp_path), "stage", {"paths": ["web/init.sls"], "listing": False}, hash_type="md5")
    assert os.path.exists(made["web/init.sls"])  # a sha256 entry is not what a master hashing md5 reads
    saltbus.forget_changed(str(tmp_path), "stage", {"paths": ["web/init.sls"], "listing": False}, hash_type="sha256")
    assert not os.path.exists(made["web/init.sls"])
