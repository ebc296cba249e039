"""A preview's ``state.apply test=True`` on a real (masterless) minion, and the report made of its returns.

The minion's ``file_roots`` and ``pillar_roots`` map ``prod`` to prod's
directories and ``prod_preview`` to the preview directory, with the master
settings docs/workflows/pillar.rst shows (``top_file_merging_strategy:
same``, the minion's ``saltenv: prod`` and ``pillarenv_from_saltenv``). The
top files give ``prod_preview`` the ``prod`` section through a YAML anchor:
Salt applies only the section named after the run's saltenv.
"""

import contextlib
import os

import pytest
from saltfactories.utils.functional import Loaders

from envflow import preview, saltbus
from envflow.config import parse
from envflow.errors import EnvflowError
from envflow.remote import Mirror
from envflow.served import ServedDir
from tests.gitrepo import Remote, config

TOP = "prod: &prod\n  '*':\n    - web\nprod_preview: *prod\n"
PILLAR_TOP = "prod: &prod\n  '*':\n    - app\nprod_preview: *prod\n"


def files(out, motd="live motd\n", greeting="hello", top=TOP):
    """The repository: two files managed in ``out`` (one from pillar) and a state that never changes."""
    web = (
        "motd:\n  file.managed:\n"
        f"    - name: {out}/motd.txt\n    - source: salt://web/motd.txt\n"
        "greeting:\n  file.managed:\n"
        f"    - name: {out}/greeting.txt\n    - contents: {{{{ pillar['app']['greeting'] }}}}\n"
        "unchanged:\n  test.succeed_without_changes: []\n"
    )
    return {
        "salt/top.sls": top,
        "salt/web/init.sls": web,
        "salt/web/motd.txt": motd,
        "salt/db/init.sls": "db-schema:\n  test.succeed_with_changes: []\n",
        "pillar/top.sls": PILLAR_TOP,
        "pillar/app.sls": f"app:\n  greeting: {greeting}\n",
    }


class Site:
    def __init__(self, remote, block, mirror, loaders, out):
        self.remote, self.block, self.mirror, self.loaders, self.out = remote, block, mirror, loaders, out

    def preview(self, changes, autoload=True):
        """Serve ``changes`` in stage, as a promotion would bring them to prod; preview prod; the report.

        With no ``changes``, what stage serves already is previewed again.
        """
        if changes:
            self.remote.commit("stage", changes, message="candidate")
            self.mirror.fetch()
            ServedDir(self.block.environment("stage").path).deploy(self.mirror.objects, self.mirror.commit("stage"))
        done = preview.deploy(self.block, self.mirror, "prod", autoload=autoload)
        # What the runner's deploy does after every switch (here the minion's own file server is the master's).
        saltbus.refresh_caches(self.loaders.opts, self.block.environment("prod").preview)
        ret = self.loaders.modules.state.apply(**done.state_kwargs(self.loaders.opts["pillar_roots"]))
        answer = getattr(ret, "raw", ret)  # salt-factories wraps state returns
        return done, answer, preview.report("prod", done.commit, done.saltenv, {"web-01": answer})

    def written(self):
        return {name: (self.out / name).read_text(encoding="utf-8") for name in sorted(os.listdir(self.out))}


@contextlib.contextmanager
def make_site(tmp_path_factory, minion_base_opts, **minion_config):
    root = tmp_path_factory.mktemp("preview")
    out = root / "out"
    out.mkdir()
    # What prod's last real highstate wrote.
    (out / "motd.txt").write_text("live motd\n", encoding="utf-8")
    (out / "greeting.txt").write_text("hello\n", encoding="utf-8")
    remote = Remote(root / "remote", files=files(out))
    raw = dict(config(remote.path, root / "srv"), states="salt", pillar="pillar")
    raw["environments"][2]["preview_path"] = str(root / "srv" / "prod_preview")
    block = parse(raw)
    prod = block.environment("prod")
    opts = dict(
        minion_base_opts,
        cachedir=str(root / "cache"),
        extension_modules=str(root / "cache" / "extmods"),
        file_roots={"prod": [prod.states_dir], "prod_preview": [prod.preview.states_dir]},
        pillar_roots={"prod": [prod.pillar_dir], "prod_preview": [prod.preview.pillar_dir]},
        top_file_merging_strategy="same",
        saltenv="prod",
        pillarenv_from_saltenv=True,
        # As salt-call --local sets it: without it every module refresh waits a second for a minion daemon's answer.
        local=True,
    )
    opts.update(minion_config)
    loaders = Loaders(opts)
    with Mirror(remote.path, str(root / "mirror")) as mirror:
        mirror.fetch()
        for env in block.environments:
            ServedDir(env.path).deploy(mirror.objects, mirror.commit(env.branch))
        try:
            yield Site(remote, block, mirror, loaders, out)
        finally:
            loaders.reset_state()


@pytest.fixture(scope="module")
def site(tmp_path_factory, minion_base_opts):
    with make_site(tmp_path_factory, minion_base_opts) as made:
        yield made


def test_the_preview_shows_the_candidates_changes_with_its_pillar_and_top_file_and_changes_nothing(site):
    prod = site.block.environment("prod")
    served = ServedDir(prod.path).deployed()
    written = site.written()
    top = TOP.replace("    - web\n", "    - web\n    - db\n")  # a state added to the top file

    done, _answer, found = site.preview(files(site.out, motd="new motd\n", greeting="hi", top=top))

    entry = found["minions"]["web-01"]
    assert (entry["changes"], entry["failed"]) == (3, 0), found
    assert [(state["id"], state["function"], state["sls"]) for state in entry["states"]] == [
        ("motd", "file.managed", "web"),
        ("greeting", "file.managed", "web"),
        ("db-schema", "test.succeed_with_changes", "db"),
    ]
    motd, greeting, _db = entry["states"]
    assert motd["name"] == str(site.out / "motd.txt") and motd["result"] is None
    assert "-live motd\n+new motd" in motd["changes"]["diff"]
    assert "+hi" in greeting["changes"]["diff"]  # the candidate's pillar, not prod's
    assert motd["comment"].startswith(f"The file {site.out / 'motd.txt'} is set to be changed")
    assert (found["env"], found["commit"], found["no_answer"]) == ("prod", done.commit, [])
    assert preview.summary(found) == ["web-01: 3 to change, 0 failing"]
    assert preview.failing(found) is False
    # Nothing changed: the managed files, prod's directory, the highstate the minion keeps for cache=True.
    assert site.written() == written
    assert ServedDir(prod.path).deployed() == served
    cache = site.loaders.opts["cachedir"]
    assert os.path.isfile(os.path.join(cache, "envflow_preview.cache.p"))
    assert not os.path.exists(os.path.join(cache, "highstate.cache.p"))


def test_a_broken_state_fails_and_a_render_error_stops_the_run(site):
    broken = dict(files(site.out))
    broken["salt/web/init.sls"] += "missing:\n  file.managed:\n    - name: /nonexistent/x\n    - source: salt://nope\n"
    _done, _answer, found = site.preview(broken)
    entry = found["minions"]["web-01"]
    assert (entry["changes"], entry["failed"]) == (0, 1), found
    (state,) = entry["states"]
    assert (state["id"], state["function"], state["result"]) == ("missing", "file.managed", False)
    assert state["comment"] == "Source file salt://nope not found in saltenv 'prod_preview'"
    assert preview.summary(found) == ["web-01: 0 to change, 1 failing"]
    assert preview.failing(found) is True

    _done, answer, found = site.preview({"salt/web/init.sls": "broken: [\n"})
    assert isinstance(answer, list)
    entry = found["minions"]["web-01"]
    assert (entry["changes"], entry["failed"], entry["states"]) == (0, 1, [])
    assert entry["error"].startswith("Rendering SLS 'prod_preview:web' failed:")


def test_a_top_file_without_the_preview_section_gives_the_minion_nothing(site):
    _done, answer, found = site.preview(files(site.out, top="prod:\n  '*':\n    - web\n"))
    assert list(answer) == [preview.NO_STATES]
    entry = found["minions"]["web-01"]
    assert (entry["changes"], entry["failed"], entry["states"]) == (0, 1, [])
    assert entry["error"].startswith("No Top file or master_tops data matches found.")
    assert "give the top file a prod_preview section equal to prod's" in entry["error"]


def test_a_test_run_copies_the_candidates_custom_modules_to_the_minion(site):
    """Salt's default (autoload_dynamic_modules): why a preview refuses a commit that changes custom modules."""
    modules = os.path.join(site.loaders.opts["extension_modules"], "modules")
    changes = dict(files(site.out))
    changes["salt/_modules/candidate_one.py"] = "def hello():\n    return 1\n"
    with pytest.raises(EnvflowError) as error:
        site.preview(changes)
    assert "changes custom modules (salt/_modules/candidate_one.py)" in str(error.value)
    assert not os.path.exists(os.path.join(modules, "candidate_one.py"))
    # Forced past the refusal, the test run leaves the preview's module on the minion.
    site.preview({}, autoload=False)
    assert "candidate_one.py" in os.listdir(modules)


def test_a_minion_that_does_not_autoload_keeps_its_modules(tmp_path_factory, minion_base_opts):
    with make_site(tmp_path_factory, minion_base_opts, autoload_dynamic_modules=False) as quiet:
        modules = os.path.join(quiet.loaders.opts["extension_modules"], "modules")
        changes = dict(files(quiet.out))
        changes["salt/_modules/candidate_two.py"] = "def hello():\n    return 2\n"
        _done, _answer, found = quiet.preview(changes, autoload=False)
        assert found["minions"]["web-01"]["failed"] == 0, found
        assert not os.path.exists(os.path.join(modules, "candidate_two.py"))


@pytest.mark.parametrize(
    "minion_config, sections",
    [
        # Each saltenv's own top file gives its own section: the preview's too, applied for real.
        ({"saltenv": None}, {"prod": ["web"], "prod_preview": ["web"]}),
        ({"saltenv": None, "top_file_merging_strategy": "merge"}, {"prod": ["web"], "prod_preview": ["web"]}),
        # env_order leaves out of such a run the saltenvs it does not list.
        ({"saltenv": None, "env_order": ["base", "test", "stage", "prod"]}, {"prod": ["web"]}),
    ],
)
def test_a_highstate_without_saltenv_reads_the_previews_top_file_unless_env_order_leaves_it_out(
    tmp_path_factory, minion_base_opts, minion_config, sections
):
    """Why the minions must name their saltenv, or the master set env_order, once a preview saltenv exists."""
    with make_site(tmp_path_factory, minion_base_opts, **minion_config) as made:
        made.preview({"salt/web/motd.txt": "candidate motd\n"}, autoload=False)
        assert dict(made.loaders.modules.state.show_top()) == sections
