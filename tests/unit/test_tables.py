"""``envflow.tables``: the readable text of status, history and diff returns."""

import datetime

from envflow import history, tables

NOW = datetime.datetime(2026, 1, 5, 16, 13, 30, tzinfo=datetime.timezone.utc)
A, B, C = "a" * 40, "b" * 40, "c" * 40


def entry(**changes):
    base = {
        "branch": "master",
        "remote": A,
        "deployed": A,
        "in_sync": True,
        "waiting": 0,
        "drift": 0,
        "served": {"id": A, "summary": "web v2", "since": "2026-01-05T14:03:00+00:00"},
        "ahead": 0,
        "pin": None,
        "freeze": None,
        "gates": [],
    }
    return {**base, **changes}


def test_the_status_table_has_one_row_per_environment():
    report = {
        "environments": {
            "test": entry(branch="develop", remote=B, in_sync=False, ahead=None, waiting=None, gates=None),
            "stage": entry(
                branch="stage",
                waiting=3,
                drift=2,
                served={"id": B, "summary": "a summary far longer than the column has room for", "since": None},
                freeze={"by": "bob", "reason": "launch", "until": "2026-01-05T18:00:00+00:00"},
            ),
            "prod": entry(
                in_sync=False,
                ahead=2,
                pin={"commit": A, "by": "alice", "reason": "bad release"},
                gates=[
                    "verified: aaaaaaaaaa was not verified in stage; run salt-run envflow.verify stage jid=...",
                    "soak: stage has served it for 5m of the 1h required; promote again in 55m",
                ],
            ),
        },
        "warnings": ["file_roots:base: serves symlinks"],
        "outputter": "envflow",
    }
    assert tables.status_table(report, now=NOW).splitlines() == [
        "ENV    BRANCH   SERVES                                     SINCE  IN SYNC        WAITING  DRIFT  "
        "HOLDS                                     GATES",
        "test   develop  aaaaaaaaaa web v2                          2h10m  no             -        0      "
        "-                                         -",
        "stage  stage    bbbbbbbbbb a summary far longer than t...  -      yes            3        2      "
        "frozen by bob until 2026-01-05 18:00:...  none",
        "prod   master   aaaaaaaaaa web v2                          2h10m  no, branch +2  0        0      "
        "pinned by alice: bad release              verified, soak",
        "warning: file_roots:base: serves symlinks",
    ]


def test_an_unreadable_environment_shows_its_problem_under_the_table():
    report = {
        "environments": {
            "stage": {
                "branch": "stage",
                "remote": A,
                "deployed": None,
                "in_sync": False,
                "waiting": None,
                "drift": None,
                "problem": "envflow: /srv/salt/stage serves a tree envflow has no record of; deploy with force=True",
            }
        }
    }
    assert tables.status_table(report, now=NOW).splitlines() == [
        "ENV    BRANCH  SERVES  SINCE  IN SYNC  WAITING  DRIFT  HOLDS  GATES",
        "stage  stage   ?       -      ?        -        -      -      -",
        "stage: envflow: /srv/salt/stage serves a tree envflow has no record of; deploy with force=True",
    ]


def test_the_history_table_shows_recorded_entries_newest_first(mirror):
    master = "salt-master-1.example.com.internal"
    promoted = {"action": "promoted", "env": "stage", "by": "sudo_alice", "from": A, "to": B, "master": master}
    history.record(mirror, {**promoted, "at": "2026-01-05T14:03:09+00:00"})
    reason = "bad release 1.2\n\x1b[31mseen by customers\x1b[0m, see INC-42 and the long thread about it"
    rolled_back = {"action": "rolled_back", "env": "prod", "by": "bob", "from": C, "to": A, "reason": reason}
    history.record(mirror, {**rolled_back, "at": "2026-01-05T15:10:00+00:00", "master": "m2"})
    frozen = {"action": "frozen", "env": "prod", "by": "bob", "reason": "launch", "at": "2026-01-05T17:00:00+01:00"}
    history.record(mirror, {**frozen, "master": "m2"})
    assert tables.history_table({"history": history.entries(mirror)}).splitlines() == [
        "WHEN (UTC)        ACTION       ENV    FROM -> TO                BY          "
        "REASON                                    MASTER",
        "2026-01-05 16:00  frozen       prod   -                         bob         "
        "launch                                    m2",
        "2026-01-05 15:10  rolled_back  prod   cccccccccc -> aaaaaaaaaa  bob         "
        "bad release 1.2 [31mseen by customers...  m2",
        "2026-01-05 14:03  promoted     stage  aaaaaaaaaa -> bbbbbbbbbb  sudo_alice  "
        "-                                         salt-master-1.exa...",
    ]
    assert len(tables.history_table({"history": history.entries(mirror, "stage")}).splitlines()) == 2


def test_an_empty_history_says_so():
    assert tables.history_table({"history": []}) == "no history recorded yet"


def test_a_cell_is_one_line_without_control_characters_and_cut_to_its_width():
    assert tables.cell("one\ntwo\tthree\x1b[0m") == "one two three [0m"
    assert tables.cell("x" * 50, 10) == "xxxxxxx..."
    assert tables.cell(None) == tables.cell("") == "-"
    assert tables.cell(0) == "0"


def test_ages_and_times():
    assert tables.age("2026-01-05T14:03:00+00:00", NOW) == "2h10m"
    assert tables.age("2026-01-05T16:13:29+00:00", NOW) == "1s"
    assert tables.age("2026-01-05T17:00:00+00:00", NOW) == "0s"  # a clock ahead of this one
    assert tables.age(None, NOW) == tables.age("yesterday", NOW) == "-"
    assert tables.when("2026-01-05T15:03:00+01:00") == "2026-01-05 14:03"


def test_the_diff_text_reads_like_git_show_stat():
    report = {
        "env": "prod",
        "branch": "master",
        "upstream": "stage",
        "from": A,
        "to": B,
        "commits": ["bbbbbbbbbb web v2"],
        "dropped": ["cccccccccc hotfix"],
        "files": ["M web/init.sls (+1 -1)", "A logo.png (binary)"],
        "totals": {"commits": 1, "dropped": 1, "files": 2, "added": 1, "removed": 1},
        "blocked": "envflow: master has 1 commit(s) that bbbbbbbbbb from stage lacks: cccccccccc 'hotfix'; ...",
        "holds": ["freeze: prod is frozen by bob since 2026-01-05T14:00:00+00:00 until thawed: launch"],
        "patch": "diff --git a/web/init.sls b/web/init.sls\n-# web v1\n+# web v2\n",
    }
    assert tables.diff_text(report).splitlines() == [
        "promote prod (master): stage serves bbbbbbbbbb, master is at aaaaaaaaaa",
        "blocked: envflow: master has 1 commit(s) that bbbbbbbbbb from stage lacks: cccccccccc 'hotfix'; ...",
        "held back: prod is frozen by bob since 2026-01-05T14:00:00+00:00 until thawed: launch",
        "commits (1):",
        "  bbbbbbbbbb web v2",
        "dropped, not in bbbbbbbbbb (1):",
        "  cccccccccc hotfix",
        "files (2, +1 -1):",
        "  M web/init.sls (+1 -1)",
        "  A logo.png (binary)",
        "diff --git a/web/init.sls b/web/init.sls",
        "-# web v1",
        "+# web v2",
    ]
    same = {"from_env": "stage", "to_env": "prod", "from": A, "to": A, "commits": [], "dropped": [], "files": []}
    assert tables.diff_text({**same, "totals": {}}).splitlines() == [
        "stage serves aaaaaaaaaa, prod serves aaaaaaaaaa",
        "no difference",
    ]


def test_render_knows_the_runners_returns_and_nothing_else():
    assert tables.render({"history": []}) == "no history recorded yet"
    assert tables.render({"environments": {}}) == tables.status_table({"environments": {}})
    assert tables.render({"retcode": 1, "error": "envflow: no environment named 'qa'"}) is None
    assert tables.render({"environments": {"prod": {"error": "failed"}}}) is None  # refresh's return
    assert tables.render(["a list"]) is None


def fleet_entry(**changes):
    base = {
        "commit": A,
        "since": "2026-01-05T14:03:00+00:00",
        "seen": "2026-01-05T16:12:30+00:00",
        "silent": None,
        "this": False,
        "behind_branch": False,
        "behind_others": False,
        "behind_for": None,
    }
    return {**base, **changes}


def test_the_status_table_is_followed_by_each_masters_row_per_environment():
    report = {
        "environments": {"prod": entry()},
        "fleet": {
            "test": {
                "salt1": fleet_entry(commit=B, this=True, behind_others=True, behind_for=5400, behind_branch=True),
                "salt2": fleet_entry(commit=C, since="2026-01-05T14:43:30+00:00"),
                "salt3": fleet_entry(commit=B, behind_others=True),
            },
            "prod": {
                "salt1": fleet_entry(this=True, behind_branch=True),
                "salt2": fleet_entry(seen="2026-01-05T15:00:00+00:00", silent=4410, behind_others=True, behind_for=60),
            },
        },
        "outputter": "envflow",
    }
    status = tables.status_table({"environments": report["environments"]}, now=NOW)
    assert tables.status_table(report, now=NOW).splitlines() == [
        *status.splitlines(),
        "",
        "ENV   MASTER            SERVES      SINCE  REPORTED  STATE",
        "test  salt1 (this one)  bbbbbbbbbb  2h10m  1m        behind the others for 1h30m, behind its branch",
        "test  salt2             cccccccccc  1h30m  1m        ok",
        "test  salt3             bbbbbbbbbb  2h10m  1m        behind",
        "prod  salt1 (this one)  aaaaaaaaaa  2h10m  1m        behind its branch",
        "prod  salt2             aaaaaaaaaa  2h10m  1h13m     silent for 1h13m",
    ]


def test_a_fleet_row_shows_no_time_it_does_not_know_and_no_control_characters():
    report = {
        "environments": {},
        "fleet": {
            "test": {
                "salt\x1b[2J1": fleet_entry(since=None, seen="not a time", behind_for=None),
                "salt2": fleet_entry(since=None, seen=None, behind_for=None),
            }
        },
    }
    lines = tables.status_table(report, now=NOW).splitlines()
    assert lines[-2].split() == ["test", "salt", "[2J1", "aaaaaaaaaa", "-", "-", "ok"]
    assert all(ch.isprintable() for line in lines for ch in line)


def test_no_fleet_section_for_a_master_alone():
    report = {"environments": {"prod": entry()}, "fleet": {"prod": {"salt1": fleet_entry(this=True)}}}
    assert "MASTER" not in tables.status_table(report, now=NOW)


def test_no_fleet_section_without_records():
    report = {"environments": {"prod": entry()}}
    alone = tables.status_table(report, now=NOW)
    assert "MASTER" not in alone and not alone.endswith("\n")
    assert tables.status_table({**report, "fleet": {}}, now=NOW) == alone
    assert tables.status_table({**report, "fleet": None}, now=NOW) == alone
