"""Run envflow's whole test suite on every supported Salt line, then build the documentation.

    python3 tests/run.py                  # everything; what CI runs
    python3 tests/run.py --salt 3008      # one Salt line only
    python3 tests/run.py -k promote -x    # other arguments go to pytest
    python3 tests/run.py tests/unit       # paths replace the default ``tests``
    python3 tests/run.py -n 0 tests/unit  # one test at a time (two pytest-xdist workers otherwise)

It sets up ``.venvs/salt3008`` and ``.venvs/salt3006`` (see ``tests/venvs.py``),
installs envflow into each from this checkout, checks the code with ruff, and
runs pytest in each with its own ``TMPDIR``: salt-factories keeps its CLI wrappers in ``$TMPDIR/scripts``
and would otherwise run the daemons of one line from another line's
virtualenv. The documentation is built with Sphinx, warnings as errors.
Exits non-zero if anything failed.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import venvs

REPO = venvs.REPO


def _environ(tmpdir):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["TMPDIR"] = tmpdir
    return env


def _counts(junit):
    """``(passed, failed, skipped)`` from pytest's JUnit XML, or ``None`` if pytest wrote none."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root)
    total = sum(int(suite.get("tests", 0)) for suite in suites)
    failed = sum(int(suite.get(key, 0)) for suite in suites for key in ("failures", "errors"))
    skipped = sum(int(suite.get("skipped", 0)) for suite in suites)
    return total - failed - skipped, failed, skipped


def run_tests(name, pytest_args):
    """Run pytest in the virtualenv of Salt line ``name``; return ``(ok, counts, seconds)``."""
    tmpdir = tempfile.mkdtemp(prefix=f"envflow-salt{name}-")
    junit = os.path.join(tmpdir, "junit.xml")
    # Tests must exercise the installed envflow, not the source next to them. Collecting
    # ``tests`` puts the checkout first on sys.path, so ``-p envflow`` imports the installed
    # package before that happens, and every later ``import envflow...`` resolves to it.
    # (The pytest script, not ``python -m pytest``, which would put the checkout first at once.)
    command = [
        os.path.join(venvs.path(venvs.LINES[name]), "bin", "pytest"),
        "-q",
        "-p",
        "envflow",
        f"--junitxml={junit}",
        *pytest_args,
    ]
    venvs.say(f"\n=== salt {name}: pytest {' '.join(pytest_args)} (TMPDIR={tmpdir})")
    started = time.monotonic()
    try:
        code = subprocess.run(command, cwd=REPO, env=_environ(tmpdir), stdin=subprocess.DEVNULL, check=False).returncode
        counts = _counts(junit)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    seconds = time.monotonic() - started
    if code == 5:
        venvs.say(f"salt {name}: pytest collected no tests")
    return code == 0, counts, seconds


def build_docs():
    """Build the HTML documentation with Sphinx, warnings as errors; return ``(ok, seconds)``."""
    venvs.say("\n=== docs: sphinx -W --keep-going -b html docs")
    if not os.path.isfile(os.path.join(REPO, "docs", "conf.py")):
        venvs.say("docs: docs/conf.py is missing")
        return False, 0.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="envflow-docs-") as tmpdir:
        command = [
            venvs.python(venvs.LINES[venvs.DOCS_LINE]),
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            os.path.join(tmpdir, "doctrees"),
            "docs",
            os.path.join(tmpdir, "html"),
        ]
        code = subprocess.run(command, cwd=REPO, env=_environ(tmpdir), stdin=subprocess.DEVNULL, check=False).returncode
    return code == 0, time.monotonic() - started


def lint():
    """Check the code with ruff (its rules and formatting, set in pyproject.toml); return ``(ok, seconds)``."""
    ruff = os.path.join(venvs.path(venvs.LINES[venvs.LINT_LINE]), "bin", "ruff")
    started = time.monotonic()
    ok = True
    for args in (["check", "."], ["format", "--check", "--diff", "."]):
        venvs.say(f"\n=== lint: ruff {' '.join(args)}")
        done = subprocess.run([ruff, *args], cwd=REPO, stdin=subprocess.DEVNULL, check=False)
        ok = ok and done.returncode == 0
    return ok, time.monotonic() - started


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run envflow's tests on each Salt line and build the docs; other arguments go to pytest.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--salt",
        action="append",
        choices=list(venvs.LINES),
        metavar="LINE",
        help=f"run only this Salt line ({', '.join(venvs.LINES)}); may be repeated",
    )
    parser.add_argument("--no-docs", action="store_true", help="skip building the documentation")
    parser.add_argument("--no-lint", action="store_true", help="skip ruff's lint and format checks")
    options, pytest_args = parser.parse_known_args(argv)
    # Paths given select tests; otherwise the whole suite.
    if not any(
        os.path.exists(os.path.join(REPO, arg.split("::")[0])) for arg in pytest_args if not arg.startswith("-")
    ):
        pytest_args = ["tests", *pytest_args]
    # Two workers (pytest-xdist), each test module whole in one of them (its module fixtures: a master, a minion, a
    # server): the integration tests spend most of their time waiting on Salt's daemons, so two at once keep the
    # suite inside its 15 minutes per Salt line on a 2-core machine. -n 0 (or -p no:xdist) runs them one by one.
    if not any(arg == "no:xdist" or arg.startswith(("-n", "--numprocesses")) for arg in pytest_args):
        pytest_args = ["-n", "2", "--dist", "loadfile", *pytest_args]
    return options, pytest_args


# Programs the tests start or call (real servers on loopback: tests/servers.py), and the Debian packages holding them.
_PROGRAMS = {
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "ssh-agent": "openssh-client",
    "openssl": "openssl",
}


def _missing_programs():
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/usr/local/sbin"
    return {name: package for name, package in _PROGRAMS.items() if shutil.which(name, path=path) is None}


def system_programs():
    """Install (as root, with apt-get) the programs the tests need and lack; ``False`` if any is still missing."""
    missing = _missing_programs()
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = sorted(set(missing.values()))
        venvs.say(f"tests: installing {', '.join(packages)} with apt-get (for {', '.join(sorted(missing))})")
        command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        quiet = {"stdout": subprocess.DEVNULL, "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}}
        if subprocess.run(command, check=False, **quiet).returncode:
            subprocess.run(["apt-get", "update", "-q"], check=False, **quiet)
            subprocess.run(command, check=False, **quiet)
        missing = _missing_programs()
    if missing:
        venvs.say(
            f"tests: {', '.join(sorted(missing))} missing; install {' '.join(sorted(set(missing.values())))} "
            "(the private-remote tests start a real sshd), or run this as root where apt-get can"
        )
        return False
    return True


def main(argv):
    options, pytest_args = parse_args(argv)
    if not system_programs():
        return 1
    names = options.salt or list(venvs.LINES)
    docs, linting = not options.no_docs, not options.no_lint
    started = time.monotonic()
    extra = ({venvs.DOCS_LINE} if docs else set()) | ({venvs.LINT_LINE} if linting else set())
    versions = venvs.prepare(sorted(set(names) | extra))

    results = []
    if linting:
        ok, seconds = lint()
        results.append(("lint, ruff check and ruff format --check", ok, None, seconds))
    for name in names:
        ok, counts, seconds = run_tests(name, pytest_args)
        results.append((f"salt {versions[name]} (.venvs/salt{name})", ok, counts, seconds))
    if docs:
        ok, seconds = build_docs()
        results.append(
            (f"docs, sphinx {venvs.installed_version(venvs.LINES[venvs.DOCS_LINE], 'sphinx')}", ok, None, seconds)
        )

    venvs.say("\n=== summary")
    passed = failed = skipped = 0
    for what, ok, counts, seconds in results:
        detail = f": {counts[0]} passed, {counts[1]} failed, {counts[2]} skipped" if counts else ""
        venvs.say(f"  {'ok    ' if ok else 'FAILED'} {what} in {seconds:.0f}s{detail}")
        if counts:
            passed, failed, skipped = passed + counts[0], failed + counts[1], skipped + counts[2]
    venvs.say(f"  total time {time.monotonic() - started:.0f}s")
    venvs.say(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if all(ok for _what, ok, _counts, _seconds in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
