"""Submodules served at the commit each gitlink pins, exactly, fetched from their own remotes (issue 24).

Real repositories: a formula repository (and one nested in it) pinned as
submodules of the automation repository, deployed by the pipeline as every
environment is.
"""

import os

import pytest

from envflow import pipeline
from envflow.config import parse
from envflow.errors import Drift, EnvflowError
from envflow.layout import Layout
from envflow.remote import Mirror
from envflow.served import ServedDir
from tests.gitrepo import BRANCHES, Remote, Symlink, config, git, tree_files

NGINX = {"nginx/init.sls": "nginx:\n  pkg.installed\n", "nginx/map.jinja": "{% set nginx = {} %}\n"}


@pytest.fixture
def formula(tmp_path):
    return Remote(tmp_path / "nginx-formula", files=NGINX)


@pytest.fixture
def pipeline_config(remote, tmp_path):
    return parse(config(remote.path, tmp_path / "srv"))


def _served(config, env="test"):
    return tree_files(config.environment(env).path)


def _deploy(config, mirror, env="test", **kwargs):
    mirror.fetch()
    return pipeline.deploy(config, mirror, env, **kwargs)


def _expected(remote, branch, formula_files, at="formulas/nginx-formula"):
    """What the commit's recursive tree holds: the branch's files, with the formula's files under ``at``."""
    work = remote.work
    git("checkout", "-q", "-B", branch, f"origin/{branch}", cwd=work)
    found = {rel: content for rel, content in tree_files(work).items() if not rel.startswith(".git/")}
    found = {rel: content for rel, content in found.items() if rel != ".git" and not rel.startswith(at + "/")}
    found.update({f"{at}/{rel}": content for rel, content in formula_files.items()})
    return found


def test_a_gitlink_is_served_as_the_pinned_commits_tree(remote, formula, mirror, pipeline_config):
    pin = formula.tip("develop")
    remote.submodule("develop", "formulas/nginx-formula", formula.path, pin)
    result = _deploy(pipeline_config, mirror)
    assert result["changed"] is True
    served = _served(pipeline_config)
    assert served["formulas/nginx-formula/nginx/init.sls"] == NGINX["nginx/init.sls"]
    assert served == _expected(remote, "develop", NGINX)
    record = Layout(pipeline_config.environment("test").path)
    held = record.record(record.served_slot())
    assert held.submodules["formulas/nginx-formula"]["commit"] == pin
    # A bump of the pin serves the formula's new commit, and only that changes.
    bumped = formula.commit("develop", {"nginx/init.sls": "nginx:\n  pkg.latest\n"})
    remote.submodule("develop", "formulas/nginx-formula", formula.path, bumped)
    result = _deploy(pipeline_config, mirror)
    assert result["files"] == {"added": 0, "modified": 1, "deleted": 0}
    # What the master's caches forget: the formula's changed file, not the gitlink.
    assert result["changes"] == {"paths": ["formulas/nginx-formula/nginx/init.sls"], "listing": False}
    assert _served(pipeline_config)["formulas/nginx-formula/nginx/init.sls"] == "nginx:\n  pkg.latest\n"
    assert ServedDir(pipeline_config.environment("test").path).drift(mirror.objects) == {
        "added": [],
        "modified": [],
        "deleted": [],
    }


def test_a_deploy_where_no_pin_changed_does_no_submodule_work(remote, formula, mirror, pipeline_config):
    """The formula's remote lost its branches since: a change beside the submodule deploys, and the formula's
    mirror still holds them (it was not fetched, which would have pruned them)."""
    remote.submodule("develop", "formulas/nginx-formula", formula.path, formula.tip("develop"))
    _deploy(pipeline_config, mirror)
    for branch in BRANCHES:
        git("update-ref", "-d", f"refs/heads/{branch}", cwd=formula.path)
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    result = _deploy(pipeline_config, mirror)
    assert result["files"] == {"added": 0, "modified": 1, "deleted": 0}
    assert _served(pipeline_config)["formulas/nginx-formula/nginx/init.sls"] == NGINX["nginx/init.sls"]
    with Mirror(formula.path, mirror.cachedir) as formula_mirror:
        assert formula_mirror.tip("develop") is not None


def test_hand_edits_inside_a_submodule_are_found_like_any_other(remote, formula, mirror, pipeline_config):
    remote.submodule("develop", "formulas/nginx-formula", formula.path, formula.tip("develop"))
    _deploy(pipeline_config, mirror)
    path = os.path.join(pipeline_config.environment("test").path, "formulas", "nginx-formula", "nginx", "init.sls")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("# by hand\n")
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    with pytest.raises(Drift, match=r"formulas/nginx-formula/nginx/init\.sls"):
        _deploy(pipeline_config, mirror)


def test_submodules_removed_moved_replaced_by_a_folder_and_back(remote, formula, mirror, pipeline_config):
    pin = formula.tip("develop")
    remote.submodule("develop", "formulas/nginx-formula", formula.path, pin)
    _deploy(pipeline_config, mirror)
    # Moved.
    remote.submodule("develop", "formulas/nginx-formula", None)
    remote.submodule("develop", "vendor/nginx", formula.path, pin)
    _deploy(pipeline_config, mirror)
    assert _served(pipeline_config) == _expected(remote, "develop", NGINX, at="vendor/nginx")
    # Replaced by a plain folder of the same name.
    remote.submodule("develop", "vendor/nginx", None, files={"vendor/nginx/init.sls": "# plain\n"})
    _deploy(pipeline_config, mirror)
    served = _served(pipeline_config)
    assert served["vendor/nginx/init.sls"] == "# plain\n"
    assert not any(rel.startswith("vendor/nginx/nginx/") for rel in served)
    # And back.
    remote.submodule("develop", "vendor/nginx", formula.path, pin, files={"vendor/nginx/init.sls": None})
    _deploy(pipeline_config, mirror)
    assert _served(pipeline_config) == _expected(remote, "develop", NGINX, at="vendor/nginx")
    # Removed.
    remote.submodule("develop", "vendor/nginx", None)
    _deploy(pipeline_config, mirror)
    assert not any(rel.startswith("vendor/") for rel in _served(pipeline_config))
    assert ".gitmodules" not in _served(pipeline_config)


def test_a_nested_submodule_with_a_relative_url(remote, formula, mirror, pipeline_config, tmp_path):
    """The formula pins a map of its own by a URL relative to the formula's: resolved against the formula's URL."""
    inner = Remote(tmp_path / "maps", files={"maps/defaults.yaml": "port: 80\n"})
    # ../../maps/automation.git from .../nginx-formula/automation.git is .../maps/automation.git
    nested_pin = formula.submodule("develop", "nginx/maps", "../../maps/automation.git", inner.tip("develop"))
    remote.submodule("develop", "formulas/nginx-formula", formula.path, nested_pin)
    _deploy(pipeline_config, mirror)
    served = _served(pipeline_config)
    assert served["formulas/nginx-formula/nginx/maps/maps/defaults.yaml"] == "port: 80\n"
    assert served["formulas/nginx-formula/nginx/init.sls"] == NGINX["nginx/init.sls"]
    record = Layout(pipeline_config.environment("test").path)
    assert set(record.record(record.served_slot()).submodules) == {
        "formulas/nginx-formula",
        "formulas/nginx-formula/nginx/maps",
    }


def _refused(remote, mirror, pipeline_config, match):
    before = _served(pipeline_config)
    with pytest.raises(EnvflowError) as refused:
        _deploy(pipeline_config, mirror)
    message = str(refused.value)
    assert "\n" not in message
    assert match in message, message
    assert _served(pipeline_config) == before
    return message


def test_a_pin_its_remote_does_not_have_is_refused_and_nothing_changes(remote, formula, mirror, pipeline_config):
    _deploy(pipeline_config, mirror)
    unpushed = "1" * 40
    remote.submodule("develop", "formulas/nginx-formula", formula.path, unpushed)
    message = _refused(remote, mirror, pipeline_config, "does not have; push that commit to the submodule's remote")
    assert message.startswith(f"envflow: submodule 'formulas/nginx-formula' pins {unpushed[:10]}, which ")


def test_an_unreachable_submodule_remote_is_refused(remote, formula, mirror, pipeline_config, tmp_path):
    _deploy(pipeline_config, mirror)
    remote.submodule("develop", "formulas/nginx-formula", str(tmp_path / "nowhere.git"), formula.tip("develop"))
    _refused(remote, mirror, pipeline_config, "envflow: submodule 'formulas/nginx-formula' (")
    # What to fix is the submodule's URL, not envflow:repo.
    message = _refused(remote, mirror, pipeline_config, "nowhere.git does not exist; fix its url in .gitmodules")
    assert "envflow:repo" not in message


def test_a_gitlink_gitmodules_does_not_list_is_refused(remote, formula, mirror, pipeline_config):
    _deploy(pipeline_config, mirror)
    git("fetch", "-q", "origin", cwd=remote.work)
    git("checkout", "-q", "-B", "develop", "origin/develop", cwd=remote.work)
    git("update-index", "--add", "--cacheinfo", f"160000,{formula.tip('develop')},formulas/x", cwd=remote.work)
    git("commit", "-q", "-m", "gitlink without .gitmodules", cwd=remote.work)
    git("push", "-q", "origin", "HEAD:refs/heads/develop", cwd=remote.work)
    _refused(remote, mirror, pipeline_config, "submodule 'formulas/x' is not listed in .gitmodules")


def test_a_refused_url_is_never_fetched(remote, formula, mirror, pipeline_config, tmp_path):
    _deploy(pipeline_config, mirror)
    planted = tmp_path / "pwned"
    remote.submodule("develop", "formulas/x", f"ext::sh -c touch% {planted}", formula.tip("develop"))
    _refused(remote, mirror, pipeline_config, "uses a transport git runs as a command")
    assert not planted.exists()


def test_submodules_off_refuse_a_commit_with_a_gitlink(remote, formula, mirror, tmp_path):
    block = dict(config(remote.path, tmp_path / "srv"), submodules=False)
    off = parse(block)
    _deploy(off, mirror)
    remote.submodule("develop", "formulas/nginx-formula", formula.path, formula.tip("develop"))
    message = _refused(remote, mirror, off, "holds submodules (formulas/nginx-formula) and envflow:submodules is false")
    assert message.endswith("turn submodules on, or remove the gitlinks from the branch")


def test_promotions_diffs_and_the_history_name_each_submodule_moved(remote, formula, mirror, pipeline_config):
    """``formulas/nginx-formula: 3f2c9a1 -> 8d1e0f2 (4 commits)``, added and removed ones too."""
    from envflow import diffs, history, tables  # pylint: disable=import-outside-toplevel

    first = formula.tip("develop")
    remote.submodule("develop", "formulas/nginx-formula", formula.path, first)
    _deploy(pipeline_config, mirror)
    mirror.fetch()
    pipeline.promote(pipeline_config, mirror, "stage", by="alice")
    for number in range(4):
        formula.commit("develop", {"nginx/init.sls": f"# v{number}\n"})
    bumped = formula.tip("develop")
    users = Remote(remote.path + "-users", files={"users/init.sls": "# users\n"})
    remote.submodule("develop", "formulas/nginx-formula", formula.path, bumped)
    remote.submodule("develop", "formulas/users-formula", users.path, users.tip("develop"))
    _deploy(pipeline_config, mirror)
    mirror.fetch()
    expected = [
        f"formulas/nginx-formula: {first[:10]} -> {bumped[:10]} (4 commits)",
        f"formulas/users-formula: added at {users.tip('develop')[:10]}",
    ]
    promotion = pipeline.plan(pipeline_config, mirror, "stage")
    assert promotion.as_dict()["submodules"] == expected
    assert diffs.promotion(pipeline_config, mirror, "stage")["submodules"] == expected
    text = tables.diff_text(diffs.promotion(pipeline_config, mirror, "stage"))
    assert f"submodules (2):\n  {expected[0]}\n  {expected[1]}" in text
    pipeline.promote(pipeline_config, mirror, "stage", by="alice")
    entry = history.entries(mirror, "stage", limit=1)[0]
    assert entry["submodules"] == expected
    assert expected[0] in tables.history_table({"history": [entry]})
    # Moved back, and removed.
    remote.submodule("develop", "formulas/nginx-formula", formula.path, first)
    remote.submodule("develop", "formulas/users-formula", None)
    _deploy(pipeline_config, mirror)
    mirror.fetch()
    assert pipeline.plan(pipeline_config, mirror, "stage").as_dict()["submodules"] == [
        f"formulas/nginx-formula: {bumped[:10]} -> {first[:10]} (back 4 commits)",
        f"formulas/users-formula: removed (was {users.tip('develop')[:10]})",
    ]
    assert history.entries(mirror, "test", limit=1)[0]["submodules"] == [
        f"formulas/nginx-formula: {bumped[:10]} -> {first[:10]} (back 4 commits)",
        f"formulas/users-formula: removed (was {users.tip('develop')[:10]})",
    ]


def test_a_deploy_in_test_mode_names_the_submodules_it_would_move(remote, formula, mirror, pipeline_config):
    _deploy(pipeline_config, mirror)
    pin = formula.tip("develop")
    remote.submodule("develop", "formulas/nginx-formula", formula.path, pin)
    mirror.fetch()
    before = _served(pipeline_config)
    preview = pipeline.deploy_preview(pipeline_config, mirror, "test")
    assert preview["submodules"] == [f"formulas/nginx-formula: added at {pin[:10]}"]
    assert _served(pipeline_config) == before


def test_the_symlink_policy_applies_inside_a_submodule(remote, mirror, pipeline_config, tmp_path):
    """A formula's symlink out of the tree is refused as one in the main repository would be; one inside is served."""
    linked = Remote(
        tmp_path / "linked-formula",
        files={"f/init.sls": "# f\n", "f/inside.sls": Symlink("init.sls"), "f/secret": Symlink("/etc/shadow")},
    )
    remote.submodule("develop", "formulas/f", linked.path, linked.tip("develop"))
    result = _deploy(pipeline_config, mirror)
    assert [link["path"] for link in result["refused_links"]] == ["formulas/f/f/secret"]
    served = _served(pipeline_config)
    assert served["formulas/f/f/inside.sls"] == Symlink("init.sls")
    assert "formulas/f/f/secret" not in served


def test_a_commit_without_submodules_is_not_walked_for_them_again(remote, mirror, pipeline_config, monkeypatch):
    """Known to hold none, the next deploy looks at the change since for gitlinks, not at every folder."""
    from envflow import trees  # pylint: disable=import-outside-toplevel

    _deploy(pipeline_config, mirror)
    walked = []
    whole = trees.gitlinks
    monkeypatch.setattr(trees, "gitlinks", lambda *args: walked.append(args) or whole(*args))
    remote.commit("develop", {"web/init.sls": "# web v2\n"})
    _deploy(pipeline_config, mirror)
    assert walked == []


def test_a_pin_bump_reads_only_what_the_bump_changed(remote, formula, mirror, pipeline_config, tmp_path, monkeypatch):
    """Bumping a formula that nests another finds the nested pins from the formula's change, not by walking it."""
    from envflow import trees  # pylint: disable=import-outside-toplevel

    inner = Remote(tmp_path / "maps", files={"maps/defaults.yaml": "port: 80\n"})
    formula.submodule("develop", "nginx/maps", "../../maps/automation.git", inner.tip("develop"))
    remote.submodule("develop", "formulas/nginx-formula", formula.path, formula.tip("develop"))
    _deploy(pipeline_config, mirror)
    walked = []
    whole = trees.gitlinks
    monkeypatch.setattr(trees, "gitlinks", lambda *args: walked.append(args) or whole(*args))
    # The formula changes a file; its nested pin stays.
    formula.commit("develop", {"nginx/init.sls": "# bumped\n"})
    remote.submodule("develop", "formulas/nginx-formula", formula.path, formula.tip("develop"))
    _deploy(pipeline_config, mirror)
    served = _served(pipeline_config)
    assert served["formulas/nginx-formula/nginx/init.sls"] == "# bumped\n"
    assert served["formulas/nginx-formula/nginx/maps/maps/defaults.yaml"] == "port: 80\n"
    # The formula moves its nested pin.
    inner.commit("develop", {"maps/defaults.yaml": "port: 8080\n"})
    formula.submodule("develop", "nginx/maps", "../../maps/automation.git", inner.tip("develop"))
    remote.submodule("develop", "formulas/nginx-formula", formula.path, formula.tip("develop"))
    _deploy(pipeline_config, mirror)
    assert _served(pipeline_config)["formulas/nginx-formula/nginx/maps/maps/defaults.yaml"] == "port: 8080\n"
    assert walked == []


def test_a_record_older_than_submodules_is_completed_by_the_next_deploy_even_a_no_op(
    remote, mirror, pipeline_config, monkeypatch
):
    """Records written before submodules were served say nothing of them: the first deploy after the upgrade, even
    one that serves the same commit, notes that the commit holds none, so the deploys after it walk no folder."""
    import json  # pylint: disable=import-outside-toplevel

    from envflow import trees  # pylint: disable=import-outside-toplevel

    _deploy(pipeline_config, mirror)
    layout = Layout(pipeline_config.environment("test").path)
    record_file = os.path.join(layout.gitdir(layout.served_slot()), "envflow.json")
    with open(record_file, encoding="utf-8") as handle:
        written = json.load(handle)
    written.pop("submodules")
    written.pop("tree")
    with open(record_file, "w", encoding="utf-8") as handle:
        json.dump(written, handle)
    assert layout.record(layout.served_slot()).submodules is None
    assert _deploy(pipeline_config, mirror)["changed"] is False
    assert layout.record(layout.served_slot()).submodules == {}
    walked = []
    whole = trees.gitlinks
    monkeypatch.setattr(trees, "gitlinks", lambda *args: walked.append(args) or whole(*args))
    assert _deploy(pipeline_config, mirror)["changed"] is False
    assert walked == []
