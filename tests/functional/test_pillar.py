"""States and pillar from one repository, served from one directory per environment (``states:``, ``pillar:``).

A masterless minion's loaders stand for the master's file server here: its
``file_roots`` list each environment's states directory and its
``pillar_roots`` each pillar directory, both under the path envflow switches.
"""

import inspect
import os

import pytest
from salt.exceptions import CommandExecutionError
from saltfactories.utils.functional import Loaders

from tests.gitrepo import Remote, config

SECRET = "s3cret-only-for-pillar"
FILES = {
    "salt/top.sls": "stage:\n  '*':\n    - web\n",
    "salt/web/init.sls": "web:\n  test.show_notification:\n    - text: {{ pillar['app']['greeting'] }}\n",
    "pillar/top.sls": "stage:\n  '*':\n    - app\n",
    "pillar/app.sls": f"app:\n  greeting: hello\n  secret: {SECRET}\n",
}


def pillar_of(loaders, pillarenv):
    """The pillar compiled for ``pillarenv``, values shown (Salt 3008 masks them unless ``unmask``)."""
    items = loaders.modules.pillar.items
    unmask = {"unmask": True} if "unmask" in inspect.signature(items).parameters else {}
    return items(pillarenv=pillarenv, **unmask)


@pytest.fixture(scope="module")
def site(tmp_path_factory, minion_base_opts):
    root = tmp_path_factory.mktemp("pillar")
    remote = Remote(root / "remote", files=FILES)
    block = dict(config(remote.path, root / "srv"), states="salt", pillar="pillar")
    stage = os.path.join(str(root / "srv"), "stage")
    opts = dict(
        minion_base_opts,
        envflow=block,
        cachedir=str(root / "cache"),
        file_roots={"stage": [os.path.join(stage, "salt")]},
        pillar_roots={"stage": [os.path.join(stage, "pillar")]},
    )
    loaders = Loaders(opts)
    try:
        yield remote, loaders, stage
    finally:
        loaders.reset_state()


def test_states_and_pillar_are_served_together_and_pillar_is_not_reachable_through_salt(site):
    remote, loaders, stage = site
    done = loaders.modules.envflow.deploy("stage")
    assert (done["changed"], done["refreshed"], done["pillar_refreshed"]) == (True, ["stage"], ["stage"]), done
    cp = loaders.modules.cp
    assert sorted(cp.list_master(saltenv="stage")) == ["top.sls", "web/init.sls"]
    for path in ("salt://pillar/app.sls", "salt://app.sls", "salt://../pillar/app.sls"):
        assert not cp.get_file_str(path, saltenv="stage"), path
    assert pillar_of(loaders, "stage")["app"] == {"greeting": "hello", "secret": SECRET}

    # One commit changes a state and the pillar it reads; one switch serves both.
    remote.commit("stage", {"pillar/app.sls": "app:\n  greeting: bonjour\n", "salt/web/extra.sls": "{}\n"})
    again = loaders.modules.envflow.deploy("stage")
    assert (again["refreshed"], again["pillar_refreshed"], "minions" in again) == (["stage"], ["stage"], False)
    assert pillar_of(loaders, "stage")["app"] == {"greeting": "bonjour"}
    assert sorted(cp.list_master(saltenv="stage")) == ["top.sls", "web/extra.sls", "web/init.sls"]
    assert os.path.islink(stage) and not os.path.islink(os.path.join(stage, "pillar"))


def test_pillar_beside_states_at_the_root_is_refused_and_changes_nothing(tmp_path, minion_base_opts):
    remote = Remote(tmp_path / "remote", files=FILES)
    block = dict(config(remote.path, tmp_path / "srv"), pillar="pillar")
    loaders = Loaders(dict(minion_base_opts, envflow=block, cachedir=str(tmp_path / "cache")))
    try:
        with pytest.raises(CommandExecutionError) as error:
            loaders.modules.envflow.deploy("stage")
    finally:
        loaders.reset_state()
    assert str(error.value) == (
        "envflow:pillar: 'pillar' is inside the repository root, where the states are, so every minion could "
        "read the pillar through salt://; set states to a directory beside it, such as salt"
    )
    assert not (tmp_path / "srv").exists()
    assert not any("envflow" in name for name in os.listdir(tmp_path / "cache"))  # no mirror fetched


def test_the_pillar_tree_keeps_every_guarantee_of_the_served_tree(site):
    """Hand edits of the pillar are refused; an outward symlink in it is never served; no bookkeeping lands in it."""
    from tests.gitrepo import Symlink  # pylint: disable=import-outside-toplevel

    remote, loaders, stage = site
    envflow = loaders.modules.envflow
    remote.commit("stage", {"pillar/leak.sls": Symlink("/etc/passwd"), "pillar/up": Symlink("../../..")}, "leaks")
    done = envflow.deploy("stage")
    assert sorted(link["path"] for link in done["refused_links"]) == ["pillar/leak.sls", "pillar/up"]
    pillar_dir = os.path.join(stage, "pillar")
    assert not os.path.lexists(os.path.join(pillar_dir, "leak.sls"))
    assert not os.path.lexists(os.path.join(pillar_dir, "up"))
    assert not [name for name in os.listdir(pillar_dir) if name.startswith(".")]
    with open(os.path.join(pillar_dir, "app.sls"), "a", encoding="utf-8") as handle:
        handle.write("  edited: by hand\n")
    remote.commit("stage", {"salt/web/more.sls": "{}\n"})
    with pytest.raises(CommandExecutionError) as error:
        envflow.deploy("stage")
    assert "was edited by hand (modified: pillar/app.sls)" in str(error.value)
    with open(os.path.join(pillar_dir, "app.sls"), encoding="utf-8") as handle:
        assert "edited: by hand" in handle.read()
    assert "web/more.sls" not in loaders.modules.cp.list_master(saltenv="stage")
    forced = envflow.deploy("stage", force=True)
    assert forced["discarded"]["modified"] == ["pillar/app.sls"]
    assert "edited" not in pillar_of(loaders, "stage")["app"]
