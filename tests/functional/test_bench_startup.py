"""``tests/bench_startup.py`` runs as its docstring says and prints every figure: times, overheads, imports.

One round: this checks the script, not the speed (speed is never asserted by a test).
"""

import os
import re
import subprocess
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(TESTS, "bench_startup.py")
ENVFLOW_COMMANDS = ("envflow.status", "envflow.refresh test")
COMMANDS = ("test.arg", *ENVFLOW_COMMANDS)
MS = r"[\d,]+\.\d"
OVER = rf"[+-]{MS} +\d+\.\d\dx"


def test_the_benchmark_prints_times_overheads_over_test_arg_and_what_each_command_imported(tmp_path):
    proc = subprocess.run(
        [sys.executable, BENCH, "--repeat", "1"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not os.listdir(tmp_path), "the benchmark left its temporary directory behind"
    out = proc.stdout

    assert re.search(r"^python [\d.]+, salt [\d.]+, pygit2 [\d.]+ \(libgit2 [\d.]+\), \d+ CPUs$", out, re.M), out
    assert f"envflow imported from {os.path.join(os.path.dirname(TESTS), 'envflow')} " in out, out
    assert re.search(r"^load average .* ratios within one run are what to compare$", out, re.M), out
    assert not re.search(r"\b(PASS|FAIL|MISS)\b", out), "no aims for this item: figures only"

    # Wall and CPU: median, min, and for envflow's commands the difference from test.arg's and the ratio.
    assert re.search(rf"^salt-run test\.arg +{MS} +{MS} +- +- +{MS} +{MS} +- +-$", out, re.M), out
    for command in ENVFLOW_COMMANDS:
        name = re.escape(f"salt-run {command}")
        assert re.search(rf"^{name} +{MS} +{MS} +{OVER} +{MS} +{MS} +{OVER}$", out, re.M), (command, out)
        assert re.search(
            rf"^overhead of {name} over salt-run test\.arg: wall [+-]{MS} ms median \(\d+\.\d\dx\), "
            rf"[+-]{MS} ms min \(\d+\.\d\dx\); CPU [+-]{MS} ms median \(\d+\.\d\dx\), [+-]{MS} ms min \(\d+\.\d\dx\)$",
            out,
            re.M,
        ), (command, out)

    imports = out.split("imports, one run of each command", 1)[1]
    for command in COMMANDS:
        name = re.escape(f"salt-run {command}")
        row = re.search(rf"^{name} +(?:{MS}|-) +{MS} +(\d+) +{MS} +\d+$", imports, re.M)
        assert row, (command, imports)
        summary = re.search(rf"^{name}: envflow imports: pygit2 (yes|no), (\d+) envflow modules$", imports, re.M)
        assert summary, (command, imports)
        section = imports[summary.end() :].split("\n\n", 1)[0]
        pygit2 = r"^  pygit2 (first imported by \S.*|not imported); (held by envflow\.\S.*|no envflow module holds it)$"
        assert re.search(pygit2, section, re.M), section
        listed = re.search(r"^  envflow modules imported: (.*)$", section, re.M).group(1)
        modules = [] if listed == "-" else listed.split(", ")
        assert len(modules) == int(summary.group(2)) == int(row.group(1)), (command, section)
        assert all(module == "envflow" or module.startswith("envflow.") for module in modules), section
        assert re.search(r"^  python -X importtime logged \d+ of them", section, re.M), section
        if command == "envflow.status":
            # The runner's call needs envflow's package beyond what Salt's entry point loads.
            assert len(modules) > 2, section
            assert set(modules) - {"envflow", "envflow.loader"}, section
