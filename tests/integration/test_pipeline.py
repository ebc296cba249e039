"""The pipeline end to end: a real master serves envflow's directories to a real minion.

Every test makes its own commits and first deploys what it relies on, so the
tests do not depend on their order. The remote's ``stage`` branch only ever
moves forward along ``develop``, and ``master`` is put back after the test
that adds a hotfix to it, so promotions stay possible for the other tests.
"""

import importlib.metadata
import os
import pathlib
import time

import pytest
import salt.version

from tests import gitrepo
from tests.integration.conftest import CLI_TIMEOUT, MOTD, fresh_motd, ok


def _applied(result):
    """The results of a ``state.apply`` run, asserting every state succeeded."""
    assert result, "state.apply ran no state"
    failed = {key: state for key, state in result.items() if state["result"] is not True}
    assert not failed, failed
    return result


def _one_line_failure(ret):
    """Assert ``ret`` is a runner failure: non-zero exit, ``retcode: 1`` and a one-line ``error``; return it."""
    assert ret.returncode != 0, ret
    assert ret.data["retcode"] == 1, ret.data
    error = ret.data["error"]
    assert error and "\n" not in error, error
    assert "Traceback" not in ret.stdout + ret.stderr, ret
    return error


# 1
def test_minion_in_stage_gets_stage_content(site):
    """The top file (committed on every branch) puts the minion in stage; it reads stage's files, not test's."""
    testing = fresh_motd("test-only")
    site.remote.commit("develop", {MOTD: testing}, "motd being tried in test")
    ok(site.run("envflow.refresh", "test"))
    expected = site.show(site.deployed("stage"), MOTD)
    assert expected != testing

    assert ok(site.call("state.show_top")) == {"stage": ["web"]}
    assert site.minion_reads(MOTD, saltenv="test") == testing
    assert site.minion_reads(MOTD, saltenv="stage") == expected
    _applied(ok(site.call("state.apply")))
    assert site.out.read_text(encoding="utf-8") == expected


# 2
def test_promote_stage_serves_what_was_tested(site):
    """A commit made on develop and deployed in test reaches the stage minion after ``envflow.promote stage``."""
    before = site.minion_reads(MOTD)
    content = fresh_motd("promoted")
    tested = site.remote.commit("develop", {MOTD: content}, "motd to promote")
    refreshed = ok(site.run("envflow.refresh", "test"))
    assert refreshed["environments"]["test"]["new"] == tested
    assert site.minion_reads(MOTD, saltenv="test") == content
    assert site.minion_reads(MOTD) == before != content

    report = ok(site.run("envflow.promote", "stage"))
    assert report["new"] == tested
    assert report["deployed"]["new"] == tested
    assert site.remote.tip("stage") == tested
    assert site.deployed("stage") == tested
    assert site.minion_reads(MOTD) == content
    _applied(ok(site.call("state.apply")))
    assert site.out.read_text(encoding="utf-8") == content


# 3
@pytest.mark.parametrize("route", ["salt-call", "salt-run salt.cmd"])
def test_back_to_back_deploys_serve_the_second(site, route):
    """Two same-size commits deployed one after the other: the minion gets the second, not the master's cached hash.

    Salt's roots backend caches a file's hash keyed by its mtime. Two trees
    written within one clock tick (one second on file systems with coarse
    timestamps) give the file the same mtime; this host stamps nanoseconds,
    so the test gives the second tree's file the first one's mtime, which is
    what such a clock does. Without envflow clearing the master's hash cache
    after the switch, the master keeps serving the first file's hash and the
    minion keeps its cached copy of the first file.
    """
    first_content, second_content = fresh_motd("first"), fresh_motd("second")
    assert len(first_content) == len(second_content) and first_content != second_content
    first = site.remote.commit("develop", {MOTD: first_content}, "first of two deploys")
    second = site.remote.commit("develop", {MOTD: second_content}, "second of two deploys")

    def deploy(rev):
        if route == "salt-call":
            return ok(site.call("envflow.deploy", "stage", f"rev={rev}"))
        return ok(site.run("salt.cmd", "envflow.deploy", "stage", f"rev={rev}"))

    assert deploy(first)["new"]["id"] == first
    # The master hashes the first file now, and caches that hash with the file's mtime.
    assert site.minion_reads(MOTD) == first_content
    served = os.path.join(site.paths["stage"], MOTD)
    stamp = os.stat(served)

    assert deploy(second)["new"]["id"] == second
    assert site.served_file("stage", MOTD) == second_content
    os.utime(served, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert site.minion_reads(MOTD) == second_content


# Issue 6, defect 1: only the first two deploys of an environment used to refuse an outward symlink.
@pytest.mark.parametrize("force", [False, True])
def test_an_outward_symlink_is_never_served_by_a_reused_standby(site, force):
    """Three deploys reuse both slots; then a commit adds ``leak -> /etc/passwd``: no minion reads the master's file."""
    for label in ("one", "two", "three"):
        site.remote.commit("develop", {MOTD: fresh_motd(label)}, f"deploy {label}")
        assert ok(site.call("envflow.deploy", "test"))["changed"] is True
    site.remote.commit("develop", {"leak": gitrepo.Symlink("/etc/passwd")}, "a symlink out of the tree")
    done = ok(site.call("envflow.deploy", "test", *(["force=True"] if force else [])))
    assert done["refused_links"] == [{"path": "leak", "target": "/etc/passwd"}]
    assert not os.path.lexists(os.path.join(site.paths["test"], "leak"))
    assert site.minion_reads("leak", saltenv="test") is False
    assert "leak" not in ok(site.call("cp.list_master", "saltenv=test"))
    site.remote.commit("develop", {"leak": None}, "no more link")
    ok(site.call("envflow.deploy", "test"))


# 4
def test_promote_prod_refused_while_master_has_a_hotfix(site):
    """A commit on master that stage lacks blocks ``promote prod``, listed in a one-line message; nothing changes."""
    assert site.deployed("stage") is not None  # something was tested in stage, to promote
    master_before = site.remote.tip("master")
    hotfix = site.remote.commit("master", {"hotfix.txt": "fixed in prod\n"}, "hotfix made on master")
    try:
        refs = site.remote.refs()
        prod = site.paths["prod"]
        prod_link, prod_tree = os.readlink(prod), gitrepo.tree_files(prod)
        prod_deployed = ok(site.call("envflow.deployed", "prod"))
        assert prod_deployed is not None

        error = _one_line_failure(site.run("envflow.promote", "prod"))
        assert hotfix[:10] in error, error
        assert "hotfix made on master" in error, error

        assert site.remote.refs() == refs
        assert os.readlink(prod) == prod_link
        assert gitrepo.tree_files(prod) == prod_tree
        assert ok(site.call("envflow.deployed", "prod")) == prod_deployed
    finally:
        site.remote.set_branch("master", master_before)


# 5
def test_deployed_state(site):
    """``envflow.deployed`` in an SLS: test mode reports, a real run deploys, the minion sees it, a rerun is idle."""
    old = site.deployed("stage")
    old_content = site.minion_reads(MOTD)
    content = fresh_motd("state")
    new = site.remote.commit("develop", {MOTD: content}, "motd for the state")
    ok(site.run("envflow.refresh", "test"))
    site.remote.set_branch("stage", new)  # stage fast-forwarded to what test serves
    apply = ("state.apply", "envflow_stage", "saltenv=base")

    (dry,) = ok(site.call(*apply, "test=True")).values()
    assert dry["result"] is None, dry
    assert dry["changes"] == {"revision": {"old": old, "new": new}}, dry
    assert site.deployed("stage") == old
    assert site.minion_reads(MOTD) == old_content

    (done,) = _applied(ok(site.call(*apply))).values()
    assert done["changes"] == {"revision": {"old": old, "new": new}}, done
    assert site.deployed("stage") == new
    assert site.minion_reads(MOTD) == content

    (again,) = _applied(ok(site.call(*apply))).values()
    assert again["changes"] == {}, again
    assert site.deployed("stage") == new


# 6
def test_daemons_and_clis_run_this_interpreters_salt(site):
    """The master and minion daemons, salt-call and salt-run all run the Salt of the virtualenv running pytest."""
    expected = salt.version.__version__
    # The minion daemon, reached through the master.
    assert ok(site.salt_cli.run("test.version", minion_tgt=site.minion.id)) == expected
    # A runner executed inside the master daemon, on the minion's request.
    assert ok(site.call("publish.runner", "salt.cmd", arg="test.version", timeout=CLI_TIMEOUT - 30)) == expected
    assert ok(site.call("test.version")) == expected
    ret = site.run("salt.cmd", "test.version")
    ok(ret)
    assert ret.stdout == expected  # salt-factories moves a bare string's JSON to stdout


# 7a
def test_entry_point_loads_envflow_without_sync(site):
    """The installed package's ``salt.loader`` entry point gives Salt the module, state and runner; nothing synced."""
    entry_points = [ep for ep in importlib.metadata.entry_points(group="salt.loader") if ep.value.startswith("envflow")]
    assert entry_points

    assert {"envflow.deploy", "envflow.deployed", "envflow.drift"} <= set(
        ok(site.call("sys.list_functions", "envflow"))
    )
    assert "envflow.deployed" in ok(site.call("sys.list_state_functions", "envflow"))
    assert {"envflow.promote", "envflow.status", "envflow.refresh"} <= set(ok(site.run("doc.runner")))
    status = ok(site.run("envflow.status"))
    assert sorted(status["environments"]) == ["prod", "stage", "test"], status
    for daemon in (site.master, site.minion):
        synced = sorted(pathlib.Path(daemon.config["extension_modules"]).rglob("envflow*"))
        assert not synced, synced


# 8
def test_promote_fires_promoted_and_deployed_events(site, event_listener):
    """``salt/envflow/stage/promoted`` and ``.../deployed`` reach the master bus with the old and new commits."""
    old_tip, old_served = site.remote.tip("stage"), site.deployed("stage")
    new = site.remote.commit("develop", {MOTD: fresh_motd("event")}, "motd for the events")
    ok(site.run("envflow.refresh", "test"))
    start = time.time()
    ok(site.run("envflow.promote", "stage"))

    wanted = [(site.master.id, "salt/envflow/stage/promoted"), (site.master.id, "salt/envflow/stage/deployed")]
    matched = event_listener.wait_for_events(wanted, after_time=start, timeout=CLI_TIMEOUT)
    assert matched.found_all_events, matched.missed
    events = {event.tag: event.data for event in matched}
    promoted, deployed = events["salt/envflow/stage/promoted"], events["salt/envflow/stage/deployed"]
    assert (promoted["old"], promoted["new"]) == (old_tip, new), promoted
    assert (deployed["old"], deployed["new"]) == (old_served, new), deployed


# 9
@pytest.mark.parametrize("env", ["test", "nowhere"])
def test_runner_failure_is_one_line_without_traceback(site, env):
    """``promote`` into the first environment, or an unknown one, fails: exit code 1, a one-line error, no traceback."""
    refs = site.remote.refs()
    error = _one_line_failure(site.run("envflow.promote", env))
    assert env in error, error
    assert site.remote.refs() == refs


# Orchestrate: the runner and the state chained by salt-run state.orchestrate.
def _orchestrate(site, name, text):
    (site.base / "orch").mkdir(exist_ok=True)
    (site.base / "orch" / f"{name}.sls").write_text(text, encoding="utf-8")
    return site.run("state.orchestrate", f"orch.{name}", "saltenv=base")


def _apply_stage_after_promotion(site):
    """An orchestrate step: the stage minion's highstate, once promote_stage succeeded."""
    return (
        "apply_stage:\n"
        "  salt.state:\n"
        f"    - tgt: {site.minion.id}\n"
        "    - highstate: True\n"
        "    - require:\n"
        "      - salt: promote_stage\n"
    )


def _steps(ret):
    """The orchestration's state results, keyed by state id."""
    (results,) = ret.data["data"].values()
    return {key.split("_|-")[1]: value for key, value in results.items()}


def test_orchestrate_promotes_then_applies_the_stage_highstate(site):
    """An orchestrate SLS: envflow.deployed serves test, salt.runner envflow.promote stage, then stage's highstate."""
    content = fresh_motd("orchestrated")
    tested = site.remote.commit("develop", {MOTD: content}, "motd through orchestrate")
    ret = _orchestrate(
        site,
        "release",
        "serve_test:\n"
        "  envflow.deployed:\n"
        "    - name: test\n"
        "promote_stage:\n"
        "  salt.runner:\n"
        "    - name: envflow.promote\n"
        "    - env: stage\n"
        "    - require:\n"
        "      - envflow: serve_test\n" + _apply_stage_after_promotion(site),
    )
    assert ret.returncode == 0, ret
    steps = _steps(ret)
    assert steps["serve_test"]["changes"]["revision"]["new"] == tested
    assert steps["promote_stage"]["result"] is True
    assert steps["promote_stage"]["changes"]["return"]["new"] == tested
    assert "retcode" not in steps["promote_stage"]["changes"]["return"]
    assert steps["apply_stage"]["result"] is True
    assert site.remote.tip("stage") == tested
    assert site.out.read_text(encoding="utf-8") == content


def test_orchestrate_stops_when_a_promotion_is_refused(site):
    """A refused promotion fails its orchestrate step, blocks what requires it, and salt-run exits non-zero."""
    untested = site.remote.commit("develop", {MOTD: fresh_motd("untested")}, "never deployed in test")
    before = site.remote.refs(), site.deployed("stage"), site.out.read_text(encoding="utf-8")
    ret = _orchestrate(
        site,
        "refused",
        "promote_stage:\n"
        "  salt.runner:\n"
        "    - name: envflow.promote\n"
        "    - env: stage\n"
        f"    - rev: {untested}\n" + _apply_stage_after_promotion(site),
    )
    assert ret.returncode != 0, ret
    steps = _steps(ret)
    assert steps["promote_stage"]["result"] is False
    error = steps["promote_stage"]["changes"]["return"]["error"]
    assert error.startswith(f"envflow: {untested} is not part of ")
    assert steps["apply_stage"]["result"] is False
    assert "requisite failed" in steps["apply_stage"]["comment"].lower()
    assert (site.remote.refs(), site.deployed("stage"), site.out.read_text(encoding="utf-8")) == before


# Issue 24: submodules.
def test_a_formula_pinned_by_a_file_url_reaches_test_then_prod_and_a_pin_it_lacks_is_refused(site, tmp_path):
    """A saltstack-formulas repository pinned by a ``file://`` URL: the minion applies it in test; a pin bump,
    promoted to prod, is what prod's minion applies. A pin the formula's remote lacks fails the refresh in one
    line naming the submodule, and test serves what it served."""
    out = tmp_path / "out"
    users = gitrepo.Remote(
        os.path.dirname(site.remote.path), files=gitrepo.formula_files("users", "0.48.8", out), name="users-formula"
    )
    url = f"file://{users.path}"
    pinned = site.remote.submodule(
        "develop",
        "formulas/users-formula",
        url,
        users.tip("master"),
        files={"users": gitrepo.Symlink("formulas/users-formula/users")},
        message="the users formula",
    )

    def applies(env, version):
        states = _applied(ok(site.call("state.sls", "users", f"saltenv={env}")))
        comments = {key.split("_|-")[1]: state["comment"] for key, state in states.items()}
        assert comments["users-version"] == f"users {version} in {env}", states
        assert (out / env / "users.conf").read_text(encoding="utf-8") == f"users {version}\n"

    assert ok(site.run("envflow.refresh", "test"))["environments"]["test"]["new"] == pinned
    repositories = {"formulas/users-formula": users.path}
    assert gitrepo.tree_files(site.paths["test"]) == gitrepo.files_at(site.remote.path, pinned, repositories)
    applies("test", "0.48.8")

    defaults = gitrepo.formula_files("users", "0.49.0", out)["users/defaults.yaml"]
    users.commit("master", {"users/defaults.yaml": defaults}, message="users 0.49.0")
    bumped = site.remote.submodule("develop", "formulas/users-formula", url, users.tip("master"), message="bump")
    assert ok(site.run("envflow.refresh", "test"))["environments"]["test"]["new"] == bumped
    assert ok(site.run("envflow.promote", "stage"))["new"] == bumped
    assert ok(site.run("envflow.promote", "prod"))["new"] == bumped
    assert gitrepo.tree_files(site.paths["prod"]) == gitrepo.files_at(site.remote.path, bumped, repositories)
    applies("prod", "0.49.0")

    served = gitrepo.tree_files(site.paths["test"]), site.deployed("test")
    missing = os.urandom(20).hex()
    site.remote.submodule("develop", "formulas/users-formula", url, missing, message="a pin the formula lacks")
    try:
        error = _one_line_failure(site.run("envflow.refresh", "test"))
    finally:
        site.remote.set_branch("develop", bumped)
    assert error == (
        f"test: envflow: submodule 'formulas/users-formula' pins {missing[:10]}, which {url} does not have; "
        "push that commit to the submodule's remote (or pin one it has)"
    )
    assert (gitrepo.tree_files(site.paths["test"]), site.deployed("test")) == served
