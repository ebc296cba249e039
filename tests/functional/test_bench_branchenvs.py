"""``tests/bench_branchenvs.py --quick`` runs and prints its table, where the time goes and the aim, met or missed.

12 files, 3 branches, one round: this checks the script, not the speed (speed is
never asserted by a test).
"""

import os
import re
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench_branchenvs.py")
MS = r"[\d,]+\.\d"


def run_bench(tmp_path, *args):
    proc = subprocess.run(
        [sys.executable, BENCH, "--quick", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not os.listdir(tmp_path), "the benchmark left its temporary directory behind"
    return proc.stdout


def test_the_quick_run_prints_the_table_where_the_time_goes_and_the_aim(tmp_path):
    out = run_bench(tmp_path)
    assert re.search(r"^load average \(1 min\) at the start / end: [\d.]+ / [\d.]+;", out, re.M), out
    checkout = os.path.dirname(os.path.dirname(BENCH))
    assert f"envflow imported from {os.path.join(checkout, 'envflow')}" in out, out
    measured = r"^checkout at the start: \S+ .*; (changed in the work tree: |envflow's code as committed)"
    assert re.search(measured, out, re.M), out
    for label in (
        "(a) refresh of 3 branch environments, nothing changed (fetch + sync)",
        "(b) 3 no-op deploys, one of each pipeline environment (the baseline)",
        "one pipeline environment deployed 3 times",
        "one refresh of the 3 pipeline environments: fetch + 3 no-op deploys",
        "3 separate refreshes: 3 x (open the mirror, fetch, no-op deploy)",
        "(c) one update: a commit on one branch, then the refresh (2 no-ops)",
        "(d) creation of 3 from nothing, the first sync (the mirror new)",
        "creation of 3 after their removal (branches made again, refresh)",
        "removal of 3 (every branch deleted, refresh)",
    ):
        # The figure (ms), its spread over the rounds (none in one round) and the figure per environment.
        assert re.search(rf"^ +{re.escape(label)} +{MS} +\S* *{MS}$", out, re.M), (label, out)
    for label in ("Mirror.fetch()", "plan: branchenvs.plan", "deploys: branchenvs._deploy (3 calls)"):
        assert re.search(rf"^ +{re.escape(label)}.* {MS}", out, re.M), (label, out)
    assert re.search(r"^  \(a\) a no-op refresh of the branch environments: \S", out, re.M), out
    aim = re.findall(
        r"^aim: a refresh of 3 branch environments where nothing changed costs about 3 no-op deploys .*"
        r"\(within 1\.25x\): \(a\)/\(b\) = \d+\.\d\dx: (PASS|MISS)$",
        out,
        re.M,
    )
    assert len(aim) == 1, out
    assert re.search(rf"^  per environment: \(a\) {MS} ms, \(b\) {MS} ms; \(a\)'s fetch {MS} ms", out, re.M), out
    if aim == ["PASS"]:
        assert "cProfile:" not in out, "profiled without --profile although the aim was met"


def test_profile_prints_what_cprofile_saw_in_both_kinds(tmp_path):
    out = run_bench(tmp_path, "--profile")
    for kind in ("(a) refresh of the branch environments", "(b) the baseline's no-op deploys"):
        section = out.split(f"cProfile: {kind}, 3 rounds;", 1)[1].split("cProfile:", 1)[0]
        for ranking in ("cumulative", "own"):
            table = section.split(f"top 15 by {ranking} time", 1)[1].split("top 15 by", 1)[0]
            rows = re.findall(r"^ +[\d,]+ +[\d,.]+ +[\d,.]+  \S", table, re.M)
            assert len(rows) == 15, table
    assert re.search(r"envflow/branchenvs\.py:\d+\(sync\)", out), out
    assert re.search(r"envflow/pipeline\.py:\d+\(deploy\)", out), out
