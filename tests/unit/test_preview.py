"""The preview deploy: the commit ``promote <env>`` would bring, in the preview directory, and nothing else."""

import os
import threading

import pytest

from envflow import history, preview
from envflow.config import parse
from envflow.errors import Busy, Diverged, Drift, EnvflowError, RevisionError
from envflow.served import ServedDir
from tests.gitrepo import Symlink, config, tree_files


def deploy(mirror, env, rev=None):
    mirror.fetch()
    return ServedDir(env.path).deploy(mirror.objects, mirror.commit(rev or env.branch))


@pytest.fixture
def previewed_config(remote, tmp_path):
    """test, stage and prod under tmp_path/srv; prod and stage with a preview directory beside their own."""
    raw = config(remote.path, tmp_path / "srv")
    raw["environments"][1]["preview_path"] = str(tmp_path / "srv" / "stage_preview")
    raw["environments"][2]["preview_path"] = str(tmp_path / "srv" / "prod_preview")
    return parse(raw)


@pytest.fixture
def deployed(previewed_config, mirror):
    """Every environment serving its branch."""
    for env in previewed_config.environments:
        deploy(mirror, env)
    return previewed_config


def untouched(config, remote):
    """What a preview must leave as it is: every ref of the remote, each environment's served commit and tree."""
    return (
        remote.refs(),
        {env.name: ServedDir(env.path).deployed() for env in config.environments},
        {env.name: tree_files(env.path) for env in config.environments},
    )


def test_the_preview_serves_the_commit_deployed_upstream_and_nothing_else_changes(deployed, mirror, remote):
    config = deployed
    candidate = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    deploy(mirror, config.environment("test"))
    promote_stage = remote.commit("develop", {"web/init.sls": "# web v3, not tested\n"}, message="web v3")
    mirror.fetch()
    before = untouched(config, remote)

    done = preview.deploy(config, mirror, "stage")

    assert done.commit == candidate != promote_stage
    assert (done.env, done.saltenv, done.upstream) == ("stage", "stage_preview", "test")
    assert done.path == config.environment("stage").preview_path
    assert done.deployed["changed"] is True and done.deployed["new"]["id"] == candidate
    assert ServedDir(done.path).deployed()["id"] == candidate
    assert tree_files(done.path) == {"top.sls": "base:\n  '*':\n    - web\n", "web/init.sls": "# web v2\n"}
    assert untouched(config, remote) == before
    assert history.entries(mirror) == []


def test_a_second_preview_is_incremental_and_the_same_commit_again_writes_nothing(deployed, mirror, remote):
    config = deployed
    remote.commit("develop", {"web/init.sls": "# web v2\n", "db/init.sls": "# db\n"}, message="web v2, db")
    deploy(mirror, config.environment("test"))
    first = preview.deploy(config, mirror, "stage")
    assert first.deployed["old"] is None and first.deployed["files"]["added"] == 3

    candidate = remote.commit("develop", {"web/init.sls": "# web v3\n"}, message="web v3")
    deploy(mirror, config.environment("test"))
    before = untouched(config, remote)
    second = preview.deploy(config, mirror, "stage")
    assert second.commit == candidate
    assert second.deployed["old"]["id"] == first.commit
    assert second.deployed["files"] == {"added": 0, "modified": 1, "deleted": 0}
    assert tree_files(second.path)["web/init.sls"] == "# web v3\n"

    again = preview.deploy(config, mirror, "stage")
    assert again.commit == candidate and again.deployed["changed"] is False
    assert untouched(config, remote) == before


def test_rev_previews_an_older_tested_commit(deployed, mirror, remote):
    config = deployed
    older = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    remote.commit("develop", {"web/init.sls": "# web v3\n"}, message="web v3")
    deploy(mirror, config.environment("test"))
    done = preview.deploy(config, mirror, "stage", rev=older[:12])
    assert done.commit == older
    assert tree_files(done.path)["web/init.sls"] == "# web v2\n"


def test_prod_is_previewed_from_what_stage_serves(deployed, mirror, remote):
    config = deployed
    candidate = remote.commit("stage", {"web/init.sls": "# on stage\n"}, message="stage fix")
    deploy(mirror, config.environment("stage"))
    before = untouched(config, remote)
    done = preview.deploy(config, mirror, "prod")
    assert (done.commit, done.saltenv, done.upstream) == (candidate, "prod_preview", "stage")
    assert tree_files(done.path)["web/init.sls"] == "# on stage\n"
    assert untouched(config, remote) == before


def test_the_preview_pillarenv_is_the_previews_when_the_repository_holds_the_pillar(remote, tmp_path, mirror):
    remote.commit("develop", {"salt/top.sls": "prod: {}\n", "pillar/top.sls": "prod: {}\n"})
    raw = config(remote.path, tmp_path / "srv")
    raw.update(states="salt", pillar="pillar")
    raw["environments"][1]["preview_path"] = str(tmp_path / "srv" / "stage_preview")
    with_pillar = parse(raw)
    for env in with_pillar.environments:
        deploy(mirror, env)
    done = preview.deploy(with_pillar, mirror, "stage")
    assert done.has_pillar is True
    assert done.state_kwargs({"stage": ["/srv/pillar"]}) == {
        "test": True,
        "saltenv": "stage_preview",
        "pillarenv": "stage_preview",
        "cache_name": "envflow_preview",
    }
    assert os.path.isfile(os.path.join(done.path, "pillar", "top.sls"))


def test_without_pillar_in_the_repository_the_minions_keep_the_environments_pillar(deployed, mirror):
    done = preview.deploy(deployed, mirror, "stage")
    assert done.has_pillar is False
    assert done.pillarenv({"base": ["/srv/pillar"], "stage": ["/srv/pillar/stage"]}) == "stage"
    # No pillarenv of that name: every pillarenv merged, as for a minion that names none.
    assert done.pillarenv({"base": ["/srv/pillar"]}) is None
    assert done.pillarenv(None) is None
    assert done.state_kwargs(None)["saltenv"] == "stage_preview"


def test_an_environment_without_preview_path_is_refused_naming_the_key(deployed, mirror, remote):
    raw = config(remote.path, os.path.dirname(deployed.environment("test").path))
    bare = parse(raw)
    before = untouched(bare, remote)
    with pytest.raises(EnvflowError) as error:
        preview.deploy(bare, mirror, "prod")
    prod = bare.environment("prod")
    assert str(error.value) == (
        f"envflow: prod has no preview directory; add preview_path: {os.path.dirname(prod.path)}/prod_preview to "
        "envflow:environments:2 and list it in file_roots as the saltenv prod_preview"
    )
    assert untouched(bare, remote) == before


def test_nothing_deployed_upstream_is_refused_and_nothing_is_written(previewed_config, mirror, remote):
    config = previewed_config
    deploy(mirror, config.environment("prod"))
    before = untouched(config, remote)
    with pytest.raises(EnvflowError) as error:
        preview.deploy(config, mirror, "prod")
    assert str(error.value) == (
        "envflow: nothing is deployed in stage, so nothing was tested there to promote; run envflow.refresh stage first"
    )
    assert untouched(config, remote) == before
    assert not os.path.lexists(config.environment("prod").preview_path)


def test_the_first_environment_has_nothing_to_preview(remote, tmp_path, mirror):
    raw = config(remote.path, tmp_path / "srv")
    raw["environments"][0]["preview_path"] = str(tmp_path / "srv" / "test_preview")
    first = parse(raw)
    with pytest.raises(EnvflowError) as error:
        preview.deploy(first, mirror, "test")
    assert str(error.value).startswith("envflow: test is the first environment of the pipeline")
    assert not os.path.lexists(first.environment("test").preview_path)


def test_a_rev_that_was_not_tested_upstream_is_refused(deployed, mirror, remote):
    config = deployed
    untested = remote.commit("develop", {"web/init.sls": "# untested\n"})
    mirror.fetch()
    before = untouched(config, remote)
    with pytest.raises(RevisionError) as error:
        preview.deploy(config, mirror, "stage", rev=untested)
    assert str(error.value) == (
        f"envflow: {untested} is not part of {remote.tip('stage')[:10]}, the commit deployed in test; "
        "only a commit that was tested there can be promoted"
    )
    assert untouched(config, remote) == before
    assert not os.path.lexists(config.environment("stage").preview_path)


def test_a_promotion_that_would_be_refused_is_not_previewed(deployed, mirror, remote):
    config = deployed
    hotfix = remote.commit("stage", {"web/init.sls": "# hotfix on stage\n"}, message="hotfix")
    remote.commit("develop", {"db/init.sls": "# db\n"}, message="db")
    deploy(mirror, config.environment("test"))
    before = untouched(config, remote)
    with pytest.raises(Diverged) as error:
        preview.deploy(config, mirror, "stage")
    assert f"{hotfix[:10]} 'hotfix'" in str(error.value) and "\n" not in str(error.value)
    assert untouched(config, remote) == before
    assert not os.path.lexists(config.environment("stage").preview_path)


def test_hand_edits_in_the_preview_directory_refuse_unless_forced(deployed, mirror, remote):
    config = deployed
    first = preview.deploy(config, mirror, "stage")
    with open(os.path.join(first.path, "web", "init.sls"), "w", encoding="utf-8") as handle:
        handle.write("# edited by hand\n")
    candidate = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    deploy(mirror, config.environment("test"))
    before = untouched(config, remote)
    with pytest.raises(Drift) as error:
        preview.deploy(config, mirror, "stage")
    assert str(error.value) == (
        f"envflow: {first.path} was edited by hand (modified: web/init.sls); commit those changes to the "
        "repository, or preview with force=True to discard them"
    )
    assert ServedDir(first.path).deployed()["id"] == first.commit
    assert untouched(config, remote) == before
    forced = preview.deploy(config, mirror, "stage", force=True)
    assert forced.commit == candidate
    assert forced.deployed["discarded"] == {"added": [], "modified": ["web/init.sls"], "deleted": []}
    assert tree_files(forced.path)["web/init.sls"] == "# web v2\n"


def test_the_preview_holds_its_lock_while_the_minions_test_runs(deployed, mirror):
    config = deployed
    entered, release = threading.Event(), threading.Event()

    def first_preview():
        with preview.previewing(config, mirror, "stage"):
            entered.set()
            release.wait(30)

    worker = threading.Thread(target=first_preview)
    worker.start()
    try:
        assert entered.wait(30)
        with pytest.raises(Busy) as error:
            preview.deploy(config, mirror, "stage", wait=0.2)
        assert str(error.value) == (
            "envflow: the preview of stage is busy with another envflow run; try again when it ends"
        )
        # Another environment's preview is not held up.
        other = preview.deploy(config, mirror, "prod", wait=0.2)
        assert other.saltenv == "prod_preview"
    finally:
        release.set()
        worker.join(30)
    assert preview.deploy(config, mirror, "stage", wait=0.2).deployed["changed"] is False


def test_a_commit_changing_custom_modules_is_refused_unless_the_minions_do_not_autoload(deployed, mirror, remote):
    config = deployed
    candidate = remote.commit(
        "develop",
        {"_modules/greet.py": "def hello():\n    return 1\n", "_grains/role.py": "def role():\n    return {}\n"},
        message="custom modules",
    )
    deploy(mirror, config.environment("test"))
    before = untouched(config, remote)
    with pytest.raises(EnvflowError) as error:
        preview.deploy(config, mirror, "stage")
    assert str(error.value) == (
        f"envflow: {candidate[:10]} changes custom modules (_grains/role.py, _modules/greet.py), which the "
        "preview's test run would copy to stage's minions and leave there before any promotion; set "
        "autoload_dynamic_modules: False on them (sync_minions: true syncs modules after each deploy) and "
        "preview with autoload=False"
    )
    assert untouched(config, remote) == before
    assert not os.path.lexists(config.environment("stage").preview_path)
    assert preview.deploy(config, mirror, "stage", autoload=False).commit == candidate


def test_only_loader_files_of_the_synced_directories_that_changed_count(remote, tmp_path, mirror):
    raw = dict(config(remote.path, tmp_path / "srv"), states="salt")
    raw["environments"][1]["preview_path"] = str(tmp_path / "srv" / "stage_preview")
    layout = parse(raw)
    served = remote.commit("develop", {"salt/top.sls": "stage: {}\n", "salt/_modules/kept.py": "x = 1\n"})
    for env in layout.environments:
        deploy(mirror, env, rev=served)
    stage = layout.environment("stage")
    candidate = remote.commit(
        "develop",
        {
            "salt/_modules/README.md": "not a module\n",  # Salt copies .py, .pyx, .so and .zip only
            "salt/_modules/kept.py": "x = 1\n",  # unchanged
            "salt/_unknown/thing.py": "x = 1\n",  # not a directory Salt syncs
            "salt/web/_modules.py": "x = 1\n",
            "_modules/outside.py": "x = 1\n",  # outside the states directory: never served
        },
    )
    mirror.fetch()
    assert preview.synced_changes(mirror, stage, candidate) == []
    changed = remote.commit(
        "develop",
        {"salt/_modules/kept.py": "x = 2\n", "salt/_states/new.py": "x = 1\n", "salt/_utils/lib/deep.so": "bin"},
    )
    mirror.fetch()
    assert preview.synced_changes(mirror, stage, changed) == [
        "salt/_modules/kept.py",
        "salt/_states/new.py",
        "salt/_utils/lib/deep.so",
    ]
    # A removed module is removed from the minions too (clean_dynamic_modules).
    removed = remote.commit("develop", {"salt/_modules/kept.py": None})
    mirror.fetch()
    assert "salt/_modules/kept.py" in preview.synced_changes(mirror, stage, removed)


def test_symlinks_leading_out_are_never_served_by_a_preview_first_or_later(deployed, mirror, remote):
    config = deployed
    outward = {"leak": Symlink("/etc/passwd"), "web/up": Symlink("../../outside"), "web/main.sls": Symlink("init.sls")}
    preview_dir = config.environment("prod").preview_path
    # The first preview builds one slot, the second the other, the third updates the first in place.
    for round_ in range(3):
        remote.commit("stage", {**outward, "web/init.sls": f"# web round {round_}\n"}, message=f"round {round_}")
        deploy(mirror, config.environment("stage"))
        done = preview.deploy(config, mirror, "prod")
        assert done.deployed["changed"] is True
        assert sorted(link["path"] for link in done.deployed["refused_links"]) == ["leak", "web/up"]
        files = tree_files(preview_dir)
        assert "leak" not in files and "web/up" not in files
        assert files["web/main.sls"] == Symlink("init.sls") and files["web/init.sls"] == f"# web round {round_}\n"
