"""``salt-run envflow.check`` and ``envflow.status``'s warnings, on the master salt-factories configures.

salt-factories gives the master ``base`` and ``prod`` file_roots of its own
beside envflow's directories, with Salt's default
``fileserver_followsymlinks: True``: two roots envflow does not deploy.
"""

import os


def _outside(master_base_opts):
    return [
        f"fileserver_followsymlinks is on and file_roots:{saltenv} lists {root}, which envflow does not deploy: "
        "a symlink in it leading out of it is served to every minion; set fileserver_followsymlinks: False, "
        "or keep such links out of it"
        for saltenv in ("base", "prod")
        for root in master_base_opts["file_roots"][saltenv]
        if "state-tree" in root
    ]


def test_check_lists_each_problem_in_one_line_and_fails(runners, master_base_opts):
    expected = _outside(master_base_opts)
    assert len(expected) == 2
    assert runners["envflow.check"]() == {
        "retcode": 1,
        "error": "envflow: 2 problem(s) in the master configuration, listed in problems",
        "problems": expected,
    }
    assert runners.context["retcode"] == 1


def test_status_shows_the_same_lines_as_warnings(runners, master_base_opts):
    runners["envflow.refresh"]()
    report = runners["envflow.status"]()
    assert report["warnings"] == _outside(master_base_opts)
    assert sorted(report["environments"]) == ["prod", "stage", "test"]
    assert "retcode" not in runners.context


def test_check_reports_an_invalid_block_in_one_line_and_changes_nothing(master_base_opts, envflow_block, remote):
    import salt.loader  # pylint: disable=import-outside-toplevel

    block = dict(envflow_block, pillar="pillar")  # the states are at the root: refused
    opts = dict(master_base_opts, envflow=block)
    context = {}
    runners = salt.loader.runner(opts, utils=salt.loader.utils(opts), context=context)
    srv, before = os.path.dirname(block["environments"][0]["path"]), remote.refs()
    assert not os.path.exists(srv)
    assert runners["envflow.check"]() == {
        "retcode": 1,
        "error": "envflow:pillar: 'pillar' is inside the repository root, where the states are, so every minion "
        "could read the pillar through salt://; set states to a directory beside it, such as salt",
    }
    assert context["retcode"] == 1
    assert remote.refs() == before and not os.path.exists(srv)
