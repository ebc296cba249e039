"""``envflow.diffs``: what a promotion would bring and how two served trees differ, on real repositories."""

import os

import pytest

from envflow import diffs, holds, pipeline
from envflow.config import parse
from envflow.errors import Diverged, EnvflowError
from envflow.remote import Mirror
from envflow.served import ServedDir
from tests.gitrepo import config, git


def deploy(mirror, env, rev=None):
    mirror.fetch()
    return ServedDir(env.path).deploy(mirror.objects, mirror.commit(rev or env.branch))


@pytest.fixture
def deployed_pipeline(pipeline_config, mirror):
    for env in pipeline_config.environments:
        deploy(mirror, env)
    return pipeline_config


def served(config, name):
    return ServedDir(config.environment(name).path).deployed()["id"]


def commit_binary(remote, branch, rel, data, message):
    """Commit bytes ``data`` as ``rel`` on ``branch`` (Remote.commit writes text only)."""
    git("fetch", "-q", "origin", cwd=remote.work)
    git("checkout", "-q", "-B", branch, f"origin/{branch}", cwd=remote.work)
    full = os.path.join(remote.work, rel)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as handle:
        handle.write(data)
    git("add", "-A", cwd=remote.work)
    git("commit", "-q", "-m", message, cwd=remote.work)
    git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=remote.work)
    return remote.tip(branch)


def test_a_promotions_diff_lists_its_commits_and_files_with_line_counts(deployed_pipeline, mirror, remote):
    config, old = deployed_pipeline, remote.tip("stage")
    first = remote.commit(
        "develop", {"web/init.sls": "# web v2\nline two\nline three\n", "top.sls": None}, message="web v2"
    )
    tested = commit_binary(remote, "develop", "web/logo.png", b"\x89PNG\x00\x01\x02", "logo")
    deploy(mirror, config.environment("test"))
    remote.commit("develop", {"web/init.sls": "# untested\n"}, message="untested")
    mirror.fetch()
    before = remote.refs()
    report = diffs.promotion(config, mirror, "stage")
    assert report == {
        "env": "stage",
        "branch": "stage",
        "upstream": "test",
        "from": old,
        "to": tested,
        "commits": [f"{tested[:10]} logo", f"{first[:10]} web v2"],
        "dropped": [],
        "files": ["D top.sls (+0 -3)", "M web/init.sls (+3 -1)", "A web/logo.png (binary)"],
        "totals": {"commits": 2, "dropped": 0, "files": 3, "added": 3, "removed": 4},
    }
    # The same commits as the promotion itself would take.
    planned = pipeline.plan(config, mirror, "stage")
    assert (planned.old, planned.new) == (report["from"], report["to"])
    assert remote.refs() == before


def test_the_patch_is_the_unified_diff_of_the_promotion(deployed_pipeline, mirror, remote):
    config, old = deployed_pipeline, remote.tip("stage")
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    deploy(mirror, config.environment("test"))
    report = diffs.promotion(config, mirror, "stage", patch=True)
    assert report["patch"] == git("diff", old, tested, cwd=remote.path) + "\n"  # what git itself shows
    lines = report["patch"].splitlines()
    assert lines[0] == "diff --git a/web/init.sls b/web/init.sls"
    assert lines[-2:] == ["-# web v1", "+# web v2"]
    assert "patch" not in diffs.promotion(config, mirror, "stage")


def test_a_diverged_branch_is_still_diffed_and_the_block_said(deployed_pipeline, mirror, remote):
    config = deployed_pipeline
    hotfix = remote.commit("master", {"web/init.sls": "# hotfix\n"}, message="hotfix on master")
    tested = served(config, "stage")
    mirror.fetch()
    with pytest.raises(Diverged) as refused:
        pipeline.plan(config, mirror, "prod")
    before = remote.refs()
    report = diffs.promotion(config, mirror, "prod")
    assert report["blocked"] == str(refused.value)
    assert report["blocked"].startswith("envflow: master has 1 commit(s) that ")
    assert (report["from"], report["to"]) == (hotfix, tested)
    assert report["commits"] == []
    assert report["dropped"] == [f"{hotfix[:10]} hotfix on master"]
    assert report["files"] == ["M web/init.sls (+1 -1)"]
    assert report["totals"]["dropped"] == 1
    assert remote.refs() == before


def test_a_promotion_that_can_go_ahead_is_not_blocked(deployed_pipeline, mirror):
    assert "blocked" not in diffs.promotion(deployed_pipeline, mirror, "prod")


def test_diffing_the_first_environment_is_refused_as_promote_refuses_it(deployed_pipeline, mirror, remote):
    before = remote.refs()
    with pytest.raises(EnvflowError) as error:
        diffs.promotion(deployed_pipeline, mirror, "test")
    assert str(error.value) == (
        "envflow: test is the first environment of the pipeline, so nothing is promoted into it; "
        "use envflow.refresh test to deploy the tip of develop"
    )
    assert remote.refs() == before


def test_two_environments_are_compared_by_what_they_serve_not_their_branches(deployed_pipeline, mirror, remote):
    config = deployed_pipeline
    old = served(config, "prod")
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    deploy(mirror, config.environment("test"))
    remote.commit("master", {"web/init.sls": "# pushed, never deployed\n"}, message="not served")
    mirror.fetch()
    report = diffs.served(config, mirror, "prod", "test")
    assert report == {
        "from_env": "prod",
        "to_env": "test",
        "from": old,
        "to": tested,
        "commits": [f"{tested[:10]} web v2"],
        "dropped": [],
        "files": ["M web/init.sls (+1 -1)"],
        "totals": {"commits": 1, "dropped": 0, "files": 1, "added": 1, "removed": 1},
    }
    backwards = diffs.served(config, mirror, "test", "prod")
    assert (backwards["commits"], backwards["dropped"]) == ([], [f"{tested[:10]} web v2"])
    assert diffs.served(config, mirror, "prod", "prod")["files"] == []


def test_comparing_an_environment_that_serves_nothing_is_refused(pipeline_config, mirror, remote):
    deploy(mirror, pipeline_config.environment("test"))
    before = remote.refs()
    with pytest.raises(EnvflowError) as error:
        diffs.served(pipeline_config, mirror, "test", "stage")
    assert str(error.value) == (
        "envflow: nothing is deployed in stage, so there is nothing to compare; run envflow.refresh stage first"
    )
    assert remote.refs() == before
    assert ServedDir(pipeline_config.environment("stage").path).deployed() is None


def test_an_unknown_environment_is_refused(deployed_pipeline, mirror):
    with pytest.raises(EnvflowError) as error:
        diffs.served(deployed_pipeline, mirror, "prod", "qa")
    assert str(error.value) == "envflow: no environment named 'qa'; configured: test, stage, prod"


def test_long_lists_are_cut_and_say_how_many_more(deployed_pipeline, mirror, remote):
    config = deployed_pipeline
    git("fetch", "-q", "origin", cwd=remote.work)
    git("checkout", "-q", "-B", "develop", "origin/develop", cwd=remote.work)
    count = diffs.COMMITS_SHOWN + 7
    for number in range(count):
        remote.write({f"many/file{number:03d}.sls": f"# {number}\n"})
        git("add", "-A", cwd=remote.work)
        git("commit", "-q", "-m", f"commit {number}", cwd=remote.work)
    remote.write({f"more/file{number:03d}.sls": "# more\n" for number in range(diffs.FILES_SHOWN)})
    git("add", "-A", cwd=remote.work)
    git("commit", "-q", "-m", "many files", cwd=remote.work)
    git("push", "-q", "origin", "HEAD:refs/heads/develop", cwd=remote.work)
    deploy(mirror, config.environment("test"))
    report = diffs.promotion(config, mirror, "stage")
    assert len(report["commits"]) == diffs.COMMITS_SHOWN + 1
    assert report["commits"][-1] == f"... and {count + 1 - diffs.COMMITS_SHOWN} more"
    assert len(report["files"]) == diffs.FILES_SHOWN + 1
    assert report["files"][-1] == f"... and {count} more"
    assert report["totals"] == {
        "commits": count + 1,
        "dropped": 0,
        "files": count + diffs.FILES_SHOWN,
        "added": count + diffs.FILES_SHOWN,
        "removed": 0,
    }


def test_a_long_patch_is_cut_at_its_line_cap_and_says_how_much(deployed_pipeline, mirror, remote):
    config, old = deployed_pipeline, remote.tip("stage")
    body = "".join(f"line {number}\n" for number in range(2000))
    tested = remote.commit("develop", {"big.txt": body}, message="big")
    deploy(mirror, config.environment("test"))
    patch = diffs.promotion(config, mirror, "stage", patch=True)["patch"]
    lines = patch.splitlines()
    assert len(lines) == diffs.PATCH_LINES + 1
    whole = git("diff", old, tested, cwd=remote.path).splitlines()
    assert lines[5:-1] == whole[5 : diffs.PATCH_LINES]  # past the header, the same lines as git's own
    cut = len(whole) - diffs.PATCH_LINES
    assert lines[-1].startswith(f"... {cut} more lines (")
    assert lines[-1].endswith(
        f"bytes) cut: the patch is capped at 500 lines and 64 KiB; git diff {old[:10]} {tested[:10]} shows it all"
    )


def test_a_patch_of_long_lines_is_cut_at_its_size_cap(deployed_pipeline, mirror, remote):
    config = deployed_pipeline
    remote.commit("develop", {"wide.txt": "".join(f"{number:04d}{'x' * 995}\n" for number in range(100))})
    deploy(mirror, config.environment("test"))
    patch = diffs.promotion(config, mirror, "stage", patch=True)["patch"]
    shown, note = patch.rsplit("\n", 2)[0], patch.splitlines()[-1]
    assert len(shown.encode()) <= diffs.PATCH_BYTES
    assert len(patch.splitlines()) < 100
    assert note.startswith("... ") and " more lines (" in note


def test_a_freeze_or_pin_in_the_way_of_the_promotion_is_listed(deployed_pipeline, mirror, remote):
    config = deployed_pipeline
    remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    deploy(mirror, config.environment("test"))
    holds.freeze(config, mirror, "stage", reason="launch week", by="bob")
    before = remote.refs()
    report = diffs.promotion(config, mirror, "stage")
    (line,) = report["holds"]
    assert line.startswith("freeze: stage is frozen by bob since ") and line.endswith(" until thawed: launch week")
    assert report["commits"] and "blocked" not in report
    assert remote.refs() == before


def test_a_patch_names_pillar_files_but_never_shows_them(remote, tmp_path):
    """Pillar often holds secrets, and a runner's return lands in the job cache and on the event bus."""
    raw = config(remote.path, tmp_path / "srv")
    raw.update(states="salt", pillar="pillar")
    parsed = parse(raw)
    old = remote.tip("develop")
    new = remote.commit("develop", {"pillar/db.sls": "password: hunter2-secret\n", "salt/web.sls": "# web v2\n"})
    with Mirror(remote.path, str(tmp_path / "cache")) as mirror:
        mirror.fetch()
        compared = diffs.compare(mirror, old, new, patch=True, private=diffs._pillar_dirs(*parsed.environments))
    assert "A pillar/db.sls (+1 -0)" in compared["files"]
    assert "hunter2-secret" not in compared["patch"]
    assert "--- pillar/db.sls: pillar, not shown here (it may hold secrets); git diff shows it\n" in compared["patch"]
    assert "+# web v2" in compared["patch"]
