"""States, pillar and custom modules from one repository, promoted together (envflow:states, pillar, sync_minions).

One master, a stage minion and a prod minion (by their ``env`` grain), with
the master configuration docs/workflows/pillar.rst shows: each saltenv's
``file_roots`` lists ``<path>/salt``, its ``pillar_roots`` ``<path>/pillar``,
``top_file_merging_strategy: same``, ``pillarenv_from_saltenv: True``, and
``pillar_cache: True`` (so a pillar the master kept would show) and
``fileserver_followsymlinks: False`` (for ``base``). Each minion
sets ``saltenv`` to its environment. Nothing is mocked.
"""

import inspect
import pathlib
import time

import pytest
import salt.modules.pillar
from saltfactories.utils import random_string

from tests import gitrepo
from tests.integration.conftest import (
    CLI_TIMEOUT,
    LOG_FILE_LEVEL,
    MASTER_TIMEOUTS,
    MASTER_WORKERS,
    fits_unix_sockets,
    minion_of,
    ok,
    running,
    write_roots,
)

ENVS = ("test", "stage", "prod")
# Salt 3008 masks pillar values in pillar.items unless asked not to.
UNMASK = ["unmask=True"] if "unmask" in inspect.signature(salt.modules.pillar.items).parameters else []


def _files(out_dir):
    top = "".join(f"{env}:\n  'G@env:{env}':\n    - match: compound\n    - {{name}}\n" for env in ENVS)
    web = (
        "envflow-greeting:\n"
        "  file.managed:\n"
        f"    - name: {out_dir}/{{{{ grains['id'] }}}}.txt\n"
        "    - contents: {{ pillar['app']['greeting'] }}\n"
        "    - makedirs: True\n"
    )
    return {
        "salt/top.sls": top.format(name="web"),
        "salt/web/init.sls": web,
        "pillar/top.sls": top.format(name="app"),
        "pillar/app.sls": "app:\n  greeting: hello\n",
    }


def master_config(envflow, base):
    """The master configuration of docs/workflows/pillar.rst, for ``envflow``'s environments."""
    return {
        "envflow": envflow,
        "file_roots": {
            "base": [str(base)],
            **{env["name"]: [f"{env['path']}/salt"] for env in envflow["environments"]},
        },
        "pillar_roots": {env["name"]: [f"{env['path']}/pillar"] for env in envflow["environments"]},
        "top_file_merging_strategy": "same",
        "pillarenv_from_saltenv": True,
        "pillar_cache": True,
        "fileserver_followsymlinks": False,
    }


class PillarSite:
    def __init__(self, master, minions, remote, envflow, out_dir):
        self.master, self.minions, self.remote, self.envflow, self.out_dir = master, minions, remote, envflow, out_dir
        self.run_cli = master.salt_run_cli(timeout=CLI_TIMEOUT)
        self.salt_cli = master.salt_cli(timeout=CLI_TIMEOUT)

    def run(self, *args, **kwargs):
        return self.run_cli.run(*args, **kwargs)

    def on(self, env, *args, **kwargs):
        """``salt <env's minion> ...``; the parsed return."""
        return self.salt_cli.run(*args, minion_tgt=self.minions[env].id, **kwargs)

    def pillar(self, env):
        return ok(self.on(env, "pillar.items", *UNMASK))

    def written(self, env):
        path = self.out_dir / f"{self.minions[env].id}.txt"
        return (
            path.read_text(encoding="utf-8").strip() if path.exists() else None
        )  # file.managed ends it with a newline


@pytest.fixture(scope="module")
def site(salt_factories, tmp_path_factory):
    master_id = random_string("m-", uppercase=False)
    work = tmp_path_factory.mktemp("pillar")
    out_dir = work / "out"
    remote = gitrepo.Remote(work / "git", files=_files(out_dir))
    master_root = pathlib.Path(salt_factories.root_dir) / master_id
    envflow = gitrepo.config(remote.path, master_root / "envs")
    envflow.update(states="salt", pillar="pillar")
    for env in envflow["environments"]:
        env["target"] = f"G@env:{env['name']}"
    envflow["environments"][1]["sync_minions"] = True  # stage; prod is left to the master's caches alone
    base = master_root / "state-tree" / "base"
    config = master_config(envflow, base)
    master = fits_unix_sockets(
        salt_factories.salt_master_daemon(
            master_id,
            defaults={"root_dir": str(master_root)},
            overrides={**MASTER_TIMEOUTS, **MASTER_WORKERS, **LOG_FILE_LEVEL, **config},
        )
    )
    write_roots(master, config["file_roots"], config["pillar_roots"])  # exactly the documented roots
    minions = {
        env: minion_of(
            master,
            random_string(f"{env}-", uppercase=False),
            {**LOG_FILE_LEVEL, "grains": {"env": env}, "saltenv": env, "pillarenv_from_saltenv": True},
        )
        for env in ("stage", "prod")
    }
    with running(master, minions["stage"], minions["prod"]):
        started = PillarSite(master, minions, remote, envflow, out_dir)
        assert sorted(ok(started.run("envflow.refresh"))["environments"]) == list(sorted(ENVS))
        yield started


def test_the_master_serves_exactly_the_documented_roots(site):
    roots = ok(site.run("salt.cmd", "config.get", "pillar_roots"))
    assert roots == {env["name"]: [f"{env['path']}/pillar"] for env in site.envflow["environments"]}


def test_the_documented_configuration_passes_the_check(site):
    assert ok(site.run("envflow.check")) == {"problems": []}
    assert "warnings" not in ok(site.run("envflow.status"))


def test_minions_cannot_reach_the_pillar_through_salt(site):
    for env in ("stage", "prod"):
        listed = ok(site.on(env, "cp.list_master", f"saltenv={env}"))
        assert sorted(listed) == ["top.sls", "web/init.sls"], listed
        for path in ("salt://pillar/app.sls", "salt://app.sls", "salt://../pillar/app.sls"):
            assert not ok(site.on(env, "cp.get_file_str", path, f"saltenv={env}")), path
        assert site.pillar(env)["app"] == {"greeting": "hello"}


MODULE = '"""A custom execution module shipped in the automation repository."""\n\n\ndef hello():\n    return "{}"\n'


def test_a_commit_of_pillar_state_and_module_reaches_each_environment_with_its_promotion(site, event_listener):
    label = f"feature-{time.monotonic_ns()}"
    web = site.remote.commit(
        "develop",
        {
            "pillar/app.sls": f"app:\n  greeting: hello\n  feature: {label}\n",
            "salt/web/init.sls": (
                "envflow-greeting:\n  file.managed:\n"
                f"    - name: {site.out_dir}/{{{{ grains['id'] }}}}.txt\n"
                "    - contents: {{ pillar['app']['feature'] }}\n    - makedirs: True\n"
            ),
            "salt/_modules/envflowdemo.py": MODULE.format(label),
        },
        "a pillar key, a state reading it and a module",
    )
    ok(site.run("envflow.refresh", "test"))
    # Before the promotion: the master caches both minions' pillars (pillar_cache), and no module.
    for env in ("stage", "prod"):
        assert "feature" not in site.pillar(env)["app"]
        missing = site.on(env, "envflowdemo.hello")
        assert "'envflowdemo.hello' is not available" in str(missing.data or missing.stdout), missing

    start = time.time()
    promoted = ok(site.run("envflow.promote", "stage"))
    deployed = promoted["deployed"]
    assert (deployed["new"], deployed["refreshed"], deployed["pillar_refreshed"]) == (web, ["stage"], ["stage"])
    stage_minion = site.minions["stage"].id
    assert deployed["minions"] == {"target": "G@env:stage", "answered": [stage_minion], "failed": {}, "missing": []}
    matched = event_listener.wait_for_events(
        [(site.master.id, "salt/envflow/stage/deployed")], after_time=start, timeout=CLI_TIMEOUT
    )
    assert matched.found_all_events, matched.missed
    (event,) = matched
    assert event.data["pillar_refreshed"] == ["stage"] and event.data["minions"]["answered"] == [stage_minion]

    # stage: the highstate renders the new key, the module runs; prod has neither.
    applied = ok(site.on("stage", "state.apply"))
    assert all(state["result"] for state in applied.values()), applied
    assert site.written("stage") == label
    assert ok(site.on("stage", "envflowdemo.hello")) == label
    assert "feature" not in site.pillar("prod")["app"]
    assert "'envflowdemo.hello' is not available" in str(site.on("prod", "envflowdemo.hello").data)

    # prod, without sync_minions: the master forgets its cached pillar, so the minion gets the new key.
    deployed = ok(site.run("envflow.promote", "prod"))["deployed"]
    assert (deployed["pillar_refreshed"], "minions" in deployed) == (["prod"], False)
    assert site.pillar("prod")["app"]["feature"] == label
    applied = ok(site.on("prod", "state.apply"))
    assert all(state["result"] for state in applied.values()), applied
    assert site.written("prod") == label


_PREPARE_THEN_WAIT = """
import sys
from envflow.remote import Mirror
from envflow.served import ServedDir
with Mirror({repo!r}, {cache!r}) as mirror:
    mirror.fetch()
    with ServedDir({path!r}).deploying(mirror.objects, mirror.commit({rev!r})) as deployment:
        deployment.prepare()
        print("prepared", flush=True)
        sys.stdin.read()  # killed here: the new tree is ready in the standby, not switched
        raise SystemExit("not killed")
"""


def test_a_kill_between_preparing_and_switching_leaves_states_and_pillar_at_one_commit(site, tmp_path):
    """States and pillar live in one tree behind one symlink: the minion reads both old, then both new."""
    import signal  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    from envflow.saltbus import forget_pillar_cache  # pylint: disable=import-outside-toplevel

    stage = next(env for env in site.envflow["environments"] if env["name"] == "stage")
    label = f"killed-{time.monotonic_ns()}"
    state = "salt/web/init.sls"
    new = site.remote.commit(
        "develop", {"pillar/app.sls": f"app:\n  greeting: {label}\n", state: f"# {label}\n"}, "both change"
    )

    def read_both():
        forget_pillar_cache(site.master.config, f"{stage['path']}/pillar")  # as envflow does after a deploy
        served_state = ok(site.on("stage", "cp.get_file_str", "salt://web/init.sls", "saltenv=stage"))
        return site.pillar("stage")["app"]["greeting"], label in served_state

    assert read_both() == ("hello", False)
    cache = str(tmp_path / "cache")
    script = _PREPARE_THEN_WAIT.format(repo=site.remote.path, cache=cache, path=stage["path"], rev=new)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"prepared\n"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
        child.stdout.close()
        child.stdin.close()
    assert child.returncode == -signal.SIGKILL
    assert read_both() == ("hello", False)  # neither the new pillar nor the new state
    ok(site.run("envflow.refresh", "test"))
    assert ok(site.run("envflow.promote", "stage"))["deployed"]["new"] == new
    assert read_both() == (label, True)
