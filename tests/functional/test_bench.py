"""``tests/bench_deploy.py`` runs as the README says and prints every figure, each aim's verdict and each budget.

Tiny sizes, one round: this checks the script, not the speed (speed is
never asserted by a test).
"""

import os
import re
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench_deploy.py")


def test_the_benchmark_prints_every_figure_the_aims_met_or_missed_and_the_budgets(tmp_path):
    proc = subprocess.run(
        [sys.executable, BENCH, "--sizes", "12,30", "--repeat", "1", "--no-preview"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for size in ("12", "30"):
        for scenario in ("first deploy (git: clone)", "second deploy", "later one-file change", "already served"):
            assert re.search(rf"^ +{size}  {re.escape(scenario)}", out, re.M), (size, scenario, out)
        for scenario in ("first deploy", "one-file change (1)", "already served (1)"):
            assert re.search(rf"^ +{size}  {re.escape(scenario)} .*\d", out, re.M), (size, scenario, out)
        # The floor: index read, libgit2's scan on one and two threads, git's own two scans.
        assert re.search(rf"^ +{size}(  +[\d,.]+){{5}}$", out, re.M), out
    aims = re.findall(r"^  .*\(aim (?:>=|<=|<) [\d.]+(?: MiB)?\): (PASS|MISS)$", out, re.M)
    assert len(aims) == 2 * 6 + 1, out
    met, missed = map(int, re.search(r"(\d+) aims met, (\d+) missed", out).groups())
    assert (met, missed) == (aims.count("PASS"), aims.count("MISS"))
    budgets = re.findall(r"^  (12|30) files, .*: budget [\d,.]+; state [\d,.]+ = deploy .*; (met|missed.*)$", out, re.M)
    assert len(budgets) == 2 * 5, out
    assert not os.listdir(tmp_path), "the benchmark left its temporary directory behind"
