import datetime

from envflow.jobs import failures, jid_time


def state(result, comment="", run=0):
    return {"result": result, "comment": comment, "__run_num__": run, "changes": {}}


def job(result, minions=("web1", "web2"), function="state.apply"):
    return {"Function": function, "Minions": list(minions), "Result": result}


def test_a_passing_state_run_has_no_failures():
    good = {"file_|-motd_|-/etc/motd_|-managed": state(True)}
    assert failures(job({"web1": {"return": good, "retcode": 0}, "web2": {"return": good, "retcode": 0}})) == []


def test_failed_states_and_silent_minions_are_named():
    ret = {
        "web1": {
            "return": {
                "pkg_|-nginx_|-nginx_|-installed": state(True, run=0),
                "file_|-conf_|-/etc/nginx.conf_|-managed": state(
                    False, "Source file salt://nginx.conf not found\nmore", run=1
                ),
            },
            "retcode": 2,
        }
    }
    assert failures(job(ret)) == [
        "web2 did not answer",
        "web1: state conf failed (Source file salt://nginx.conf not found)",
    ]


def test_render_errors_and_empty_runs_fail():
    ret = {
        "web1": {"return": ["Rendering SLS 'stage:web' failed: mapping values are not allowed here"], "retcode": 1},
        "web2": {"return": {}, "retcode": 0},
    }
    assert failures(job(ret)) == [
        "web1: Rendering SLS 'stage:web' failed: mapping values are not allowed here",
        "web2: ran no state",
    ]


def test_the_environments_minions_must_all_have_answered():
    good = {"web1": {"return": {"a_|-b_|-c_|-d": state(True)}, "retcode": 0}}
    assert failures(job(good, minions=("web1",)), expected=("web1", "web3")) == ["web3 did not answer"]


def test_unknown_jobs_and_non_state_jobs():
    assert failures({"jid": "1", "Result": {}}) == ["it is not in the master's job cache"]
    assert failures(job({"web1": {"return": True}}, function="test.ping"))[0].startswith(
        "it ran test.ping, not a highstate"
    )


def test_jid_time():
    assert jid_time("20261127211425123456", utc=True) == datetime.datetime(
        2026, 11, 27, 21, 14, 25, 123456, tzinfo=datetime.timezone.utc
    )


def test_only_a_real_highstate_verifies():
    good = {"web1": {"return": {"a_|-b_|-c_|-d": state(True)}, "retcode": 0}}
    partial = dict(job(good, minions=("web1",)), Arguments=["web"])
    assert failures(partial) == ["it applied web only, not the highstate"]
    dry = dict(
        job({"web1": {"return": {"a_|-b_|-c_|-d": state(None)}}}, minions=("web1",)),
        Arguments=[{"test": True, "__kwarg__": True}],
    )
    assert failures(dry) == ["it ran in test mode, so no state was applied"]
    assert failures(job(good, minions=("web1",), function="state.sls")) == [
        "it ran state.sls, not a highstate (state.highstate or state.apply without mods)"
    ]
    unknown = job({"web1": {"return": {"a_|-b_|-c_|-d": state(None)}}}, minions=("web1",))
    assert failures(unknown) == ["web1: state b did not run (result None)"]


def test_is_highstate():
    from envflow.jobs import is_highstate  # pylint: disable=import-outside-toplevel

    assert is_highstate({"Function": "state.highstate", "Arguments": []})
    assert is_highstate({"Function": "state.apply", "Arguments": [{"queue": True, "__kwarg__": True}]})
    assert not is_highstate({"Function": "state.apply", "Arguments": ["web"]})
    assert not is_highstate({"Function": "state.apply", "Arguments": [{"test": True, "__kwarg__": True}]})
    assert not is_highstate({"Function": "state.sls", "Arguments": ["web"]})
