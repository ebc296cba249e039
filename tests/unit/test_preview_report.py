"""The preview's report, from what minions return to ``state.apply test=True``.

The returns are those a Salt 3008 minion gave (tests/functional/test_preview_returns.py
produces them), with shorter paths, plus the other shapes Salt returns.
"""

import json

from envflow import preview, tables

COMMIT = "3f2c9a1b7e" * 4
MOTD_DIFF = "--- \n+++ \n@@ -1 +1 @@\n-live motd\n+new motd\n"
WOULD_CHANGE = (
    "The file /srv/www/motd.txt is set to be changed\nNote: No changes made, actual changes may\n"
    "be different due to other states."
)


def state(run_num, state_id, name, result, comment, changes=None, sls="web"):
    return {
        "changes": changes or {},
        "comment": comment,
        "name": name,
        "result": result,
        "__sls__": sls,
        "__run_num__": run_num,
        "start_time": "05:15:48.761852",
        "duration": 10.731,
        "__id__": state_id,
    }


# Out of run order on purpose: the report follows __run_num__, not the dict's order.
CHANGES = {
    "test_|-unchanged_|-unchanged_|-succeed_without_changes": state(2, "unchanged", "unchanged", True, "Success!"),
    "file_|-motd_|-/srv/www/motd.txt_|-managed": state(
        0, "motd", "/srv/www/motd.txt", None, WOULD_CHANGE, {"diff": MOTD_DIFF}
    ),
    "cmd_|-reload_|-systemctl reload nginx_|-run": state(
        1, "reload", "systemctl reload nginx", None, 'Command "systemctl reload nginx" would have been executed'
    ),
    "test_|-db-schema_|-db-schema_|-succeed_with_changes": state(
        3,
        "db-schema",
        "db-schema",
        True,
        "Success!",
        {"testing": {"old": "Unchanged", "new": "Something pretended"}},
        "db",
    ),
}
FAILING = {
    "file_|-x_|-/nonexistent/dir/x_|-managed": state(
        0, "x", "/nonexistent/dir/x", False, "Source file salt://nope not found in saltenv 'prod_preview'"
    ),
    "test_|-unchanged_|-unchanged_|-succeed_without_changes": state(1, "unchanged", "unchanged", True, "Success!"),
}
RENDER_ERROR = [
    "Rendering SLS 'prod_preview:web' failed: while parsing a flow node\n"
    "did not find expected node content\n"
    '  in "<unicode string>", line 2, column 1'
]
NO_TOP = {
    preview.NO_STATES: {
        "result": False,
        "comment": "No Top file or master_tops data matches found. Please see master log for details.",
        "name": "No States",
        "changes": {},
        "__run_num__": 0,
    }
}


def report(answers, expected=()):
    return preview.report("prod", COMMIT, "prod_preview", answers, expected)


def test_states_that_would_change_or_fail_are_listed_in_run_order():
    found = report({"web-01": CHANGES, "web-02": FAILING}, expected=["web-01", "web-02"])
    assert (found["env"], found["commit"], found["no_answer"]) == ("prod", COMMIT, [])
    web1 = found["minions"]["web-01"]
    assert (web1["changes"], web1["failed"]) == (3, 0)
    assert web1["states"] == [
        {
            "id": "motd",
            "function": "file.managed",
            "name": "/srv/www/motd.txt",
            "sls": "web",
            "result": None,
            "comment": WOULD_CHANGE,
            "changes": {"diff": MOTD_DIFF},
        },
        {
            "id": "reload",
            "function": "cmd.run",
            "name": "systemctl reload nginx",
            "sls": "web",
            "result": None,
            "comment": 'Command "systemctl reload nginx" would have been executed',
            "changes": {},
        },
        {
            "id": "db-schema",
            "function": "test.succeed_with_changes",
            "name": "db-schema",
            "sls": "db",
            "result": True,
            "comment": "Success!",
            "changes": {"testing": {"old": "Unchanged", "new": "Something pretended"}},
        },
    ]
    web2 = found["minions"]["web-02"]
    assert (web2["changes"], web2["failed"]) == (0, 1)
    assert [(s["id"], s["result"], s["comment"]) for s in web2["states"]] == [
        ("x", False, "Source file salt://nope not found in saltenv 'prod_preview'")
    ]
    assert preview.summary(found) == ["web-01: 3 to change, 0 failing", "web-02: 0 to change, 1 failing"]
    assert preview.failing(found) is True
    json.dumps(found)  # a job return, an event: plain data only


def test_nothing_to_change_passes():
    quiet = {"test_|-unchanged_|-unchanged_|-succeed_without_changes": CHANGES[next(iter(CHANGES))]}
    found = report({"web-01": quiet}, expected=["web-01"])
    assert found["minions"]["web-01"] == {"changes": 0, "failed": 0, "states": []}
    assert preview.summary(found) == ["web-01: 0 to change, 0 failing"]
    assert preview.failing(found) is False


def test_minions_that_did_not_answer_are_listed_and_fail_the_preview():
    found = report({"web-01": CHANGES}, expected=["web-03", "web-01", "web-02"])
    assert found["no_answer"] == ["web-02", "web-03"]
    assert list(found["minions"]) == ["web-01"]
    assert preview.summary(found) == [
        "web-01: 3 to change, 0 failing",
        "web-02: did not answer",
        "web-03: did not answer",
    ]
    assert preview.failing(found) is True


def test_a_run_that_could_not_start_counts_as_one_failure_with_its_error():
    found = report({"render": RENDER_ERROR, "locked": "ERROR: lock_saltenv is enabled, saltenv cannot be changed"})
    assert found["minions"]["render"] == {"changes": 0, "failed": 1, "states": [], "error": RENDER_ERROR[0]}
    assert found["minions"]["locked"]["error"] == "ERROR: lock_saltenv is enabled, saltenv cannot be changed"
    busy = ['The function "state.apply" is running as PID 4242 and was started at 2026, Dec 02 05:15:48 with jid 1']
    assert report({"web-01": busy})["minions"]["web-01"]["error"] == busy[0]
    assert preview.failing(found) is True


def test_a_top_file_without_the_preview_section_says_how_to_add_it():
    entry = report({"web-01": NO_TOP})["minions"]["web-01"]
    assert (entry["changes"], entry["failed"], entry["states"]) == (0, 1, [])
    assert entry["error"] == (
        "No Top file or master_tops data matches found. Please see master log for details. (a run in saltenv "
        "prod_preview takes the prod_preview section of the top file, and Salt ignores its prod section: give the "
        "top file a prod_preview section equal to prod's, such as prod_preview: *prod with an anchor &prod)"
    )


def test_comments_and_diffs_are_capped():
    diff = "".join(f"+line {number}\n" for number in range(500))
    comment = "\n".join(f"comment line {number}" for number in range(40))
    huge = {
        "file_|-big_|-/srv/big_|-managed": state(0, "big", "/srv/big", None, comment, {"diff": diff}),
        "file_|-wide_|-/srv/wide_|-managed": state(1, "wide", "/srv/wide", None, "x" * 5000, {"diff": "y" * 20000}),
        "pkg_|-many_|-many_|-installed": state(
            2, "many", "many", None, "", {f"pkg{number}": {"old": "", "new": "1.0"} for number in range(80)}
        ),
        "test_|-deep_|-deep_|-nop": state(3, "deep", "deep", None, "", {"a": {"b": {"c": {"d": {"e": "f"}}}}}),
    }
    big, wide, many, deep = report({"web-01": huge})["minions"]["web-01"]["states"]
    assert big["changes"]["diff"].splitlines()[-1] == "... and 400 more lines"
    assert len(big["changes"]["diff"].splitlines()) == preview.DIFF_LINES + 1
    assert big["comment"].endswith("\n... and 30 more lines")
    assert wide["comment"] == "x" * preview.COMMENT_CHARS + "... (3000 more characters)"
    assert wide["changes"]["diff"] == "y" * preview.DIFF_CHARS + "... (12000 more characters)"
    assert len(many["changes"]) == preview.ITEMS_SHOWN + 1 and many["changes"]["..."] == "and 30 more"
    assert deep["changes"] == {"a": {"b": {"c": {"d": "{'e': 'f'}"}}}}


def test_at_most_a_hundred_states_are_listed_and_the_rest_counted():
    many = {
        f"cmd_|-run{number}_|-true_|-run": state(number, f"run{number}", "true", None, "would run")
        for number in range(130)
    }
    entry = report({"web-01": many})["minions"]["web-01"]
    assert entry["changes"] == 130
    assert len(entry["states"]) == preview.STATES_SHOWN and entry["more"] == 30
    assert entry["states"][0]["id"] == "run0" and entry["states"][-1]["id"] == "run99"


def test_a_state_without_its_bookkeeping_keys_is_read_from_its_tag():
    bare = {"file_|-motd_|-/srv/www/motd.txt_|-managed": {"result": None, "comment": "", "changes": {}}}
    (entry,) = report({"web-01": bare})["minions"]["web-01"]["states"]
    assert (entry["id"], entry["function"], entry["name"], entry["sls"]) == (
        "motd",
        "file.managed",
        "/srv/www/motd.txt",
        None,
    )


def test_the_outcome_says_what_fails_the_preview_else_how_much_would_change():
    assert preview.outcome(report({"web-01": CHANGES, "db-01": CHANGES}, ["web-01", "db-01"])) == (
        "passed: 6 states to change on 2 of 2 minions"
    )
    quiet = {"test_|-unchanged_|-unchanged_|-succeed_without_changes": CHANGES[next(iter(CHANGES))]}
    assert preview.outcome(report({"web-01": quiet})) == "passed: 0 states to change on 0 of 1 minions"
    assert preview.outcome(report({"web-01": CHANGES, "web-02": FAILING, "web-03": RENDER_ERROR}, ["web-04"])) == (
        "shows 2 failing states (web-02: 1, web-03: 1) and got no answer from web-04"
    )
    assert preview.outcome(report({"web-02": FAILING})) == "shows 1 failing state (web-02: 1)"


def test_the_text_has_a_line_per_minion_then_what_would_change_or_fail_on_each():
    found = report({"web-01": CHANGES, "web-02": FAILING, "web-03": RENDER_ERROR}, ["web-04"])
    found.update(upstream="stage", saltenv="prod_preview", jid="20261202070000000000")
    text = tables.render({**found, "outputter": "envflow"})
    lines = text.splitlines()
    assert lines[:5] == [
        "preview of prod: 3f2c9a1b7e from stage in saltenv prod_preview, job 20261202070000000000",
        "web-01: 3 to change, 0 failing",
        "web-02: 0 to change, 1 failing",
        "web-03: 0 to change, 1 failing",
        "web-04: did not answer",
    ]
    web1 = lines[lines.index("web-01:") : lines.index("web-02:")]
    assert web1[:2] == ["web-01:", "  changes: file.managed motd (/srv/www/motd.txt)"]
    # Salt's note of every test-mode file state is left out: the diff follows the comment's first line.
    assert web1[2:4] == ["      The file /srv/www/motd.txt is set to be changed", "      ---"]
    assert "      -live motd" in web1 and not any("Note: No changes made" in line for line in web1)
    assert "  changes: cmd.run reload (systemctl reload nginx)" in web1
    assert "  changes: test.succeed_with_changes db-schema" in web1
    web2 = lines[lines.index("web-02:") :]
    assert web2[1:3] == [
        "  fails: file.managed x (/nonexistent/dir/x)",
        "      Source file salt://nope not found in saltenv 'prod_preview'",
    ]
    assert "  error: Rendering SLS 'prod_preview:web' failed: while parsing a flow node" in lines
    # A failing preview carries the runner's error, printed last.
    failed = tables.render({**found, "retcode": 1, "error": "envflow: the preview of 3f2c9a1b7e in prod shows 2"})
    assert failed.splitlines()[-1] == "envflow: the preview of 3f2c9a1b7e in prod shows 2"
    # Long diffs are cut to a few lines, and the rest is counted.
    long = {"file_|-big_|-/big_|-managed": state(0, "big", "/big", None, "x", {"diff": "\n".join(map(str, range(50)))})}
    big = report({"web-01": long})
    big.update(jid="1", saltenv="prod_preview")
    assert "      ... 38 more lines (--out=json)" in tables.render(big).splitlines()
