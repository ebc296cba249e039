"""``salt-run envflow.check`` and ``envflow.status``'s warnings, on the master salt-factories configures.

salt-factories gives the master ``base`` and ``prod`` file_roots of its own
beside envflow's directories, with Salt's default
``fileserver_followsymlinks: True``: two roots envflow does not deploy.
"""


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
