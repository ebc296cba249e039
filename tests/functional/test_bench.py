"""``tests/bench_deploy.py`` runs as the README says and prints every figure, each aim's verdict and each budget.

Tiny sizes, one round: this checks the script, not the speed (speed is
never asserted by a test).
"""

import os
import re
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench_deploy.py")
LAYOUTS = ("own", "flat", "deep", "wide")


def run_bench(tmp_path, *args):
    proc = subprocess.run(
        [sys.executable, BENCH, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not os.listdir(tmp_path), "the benchmark left its temporary directory behind"
    return proc.stdout


def test_the_benchmark_prints_every_figure_in_every_layout_the_aims_met_or_missed_and_the_budgets(tmp_path):
    out = run_bench(tmp_path, "--sizes", "12", "--layouts", ",".join(LAYOUTS), "--repeat", "1", "--no-preview")
    # The same files in every layout, in different folders.
    shapes = dict(re.findall(r"^  (\w+) +12 files: +[\d,]+ folders, .*; +([\d,]+) bytes;", out, re.M))
    assert sorted(shapes) == sorted(LAYOUTS), out
    assert len(set(shapes.values())) == 1, out
    for layout in LAYOUTS:
        row = rf"^{layout} +12  "
        for scenario in (
            "first deploy (git: clone)",
            "second deploy",
            "later one-file change",
            "already served",
            "scan floor (index read + scan)",
        ):
            assert re.search(row + re.escape(scenario), out, re.M), (layout, scenario, out)
        for scenario in ("first deploy", "one-file change (1)", "already served (1)"):
            assert re.search(rf"{row}{re.escape(scenario)} .*\d", out, re.M), (layout, scenario, out)
        # The floor: index read, libgit2's scan on one and two threads, git's own two scans.
        assert re.search(rf"{row}(  +[\d,.]+){{5}}$", out, re.M), out
    aims = re.findall(r"^  (\w+) 12 files, .*\(aim (?:>=|<=|<) [\d.]+(?: MiB)?\): (PASS|MISS)$", out, re.M)
    assert sorted({layout for layout, _verdict in aims}) == sorted(LAYOUTS), out
    assert len(aims) == len(LAYOUTS) * 5, out  # at 12 files: three deploys against git.latest, first deploy, memory
    verdicts = [verdict for _layout, verdict in aims]
    met, missed = map(int, re.search(r"^  (\d+) aims met, (\d+) missed", out, re.M).groups())
    assert (met, missed) == (verdicts.count("PASS"), verdicts.count("MISS"))
    glance = re.findall(r"^ +12  .*(?: +(?:PASS|MISS)){4}$", out, re.M)
    assert len(glance) == 5, out
    budgets = re.findall(r"^  \w+ 12 files, .*: budget [\d,.]+; state [\d,.]+ = deploy .*; (met|missed.*)$", out, re.M)
    assert len(budgets) == len(LAYOUTS) * 3, out


def test_the_profile_mode_prints_the_phases_the_floor_and_what_cprofile_saw(tmp_path):
    out = run_bench(tmp_path, "--profile-noop", "wide", "--sizes", "12", "--repeat", "1")
    for scenario in ("first deploy", "one-file change (1)", "already served (1)"):
        assert re.search(rf"^wide +12  {re.escape(scenario)} .*\d", out, re.M), (scenario, out)
    assert re.search(r"^wide +12(  +[\d,.]+){5}$", out, re.M), out
    for scenario in ("already served", "one-file change"):
        section = out.split(f"cProfile: wide layout, 12 files, {scenario} ", 1)[1].split("cProfile:", 1)[0]
        for ranking in ("cumulative", "own (total)"):
            table = section.split(f"top 15 by {ranking} time", 1)[1].split("top 15 by", 1)[0]
            rows = re.findall(r"^ +[\d,]+ +[\d,.]+ +[\d,.]+  \S", table, re.M)
            assert len(rows) == 15, table
        assert re.search(r"envflow/pipeline\.py:\d+\(deploy\)", section), section
