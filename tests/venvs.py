"""One virtualenv per supported Salt line, under ``<repo>/.venvs/``, with envflow installed from this checkout.

Used by ``tests/run.py`` and ``tests/quickstart.py``; on its own,
``python3 tests/venvs.py [3008] [3006]`` makes or updates them.

Each virtualenv gets Salt of its line plus envflow's other requirements and
its ``tests`` extra (and ``docs`` for the line that builds the documentation),
all read from ``setup.cfg``. A stamp file records what was installed, so the
dependencies are installed once and again only when the requirements or the
base Python change. envflow itself is reinstalled from a freshly built wheel
on every call: what is tested is the installed package with its
``salt.loader`` entry point, as users get it, and code changes are picked up.
"""

import configparser
import contextlib
import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENVS = os.path.join(REPO, ".venvs")


@dataclass(frozen=True)
class Line:
    """A Salt release line: the pip requirement that selects it and the extras it needs."""

    name: str
    salt: str
    extras: tuple


LINES = {
    "3008": Line("3008", "salt>=3008,<3009", ("tests", "docs", "lint")),
    "3006": Line("3006", "salt>=3006,<3007", ("tests",)),
}
DOCS_LINE = "3008"
# The line whose virtualenv holds ruff, for the lint step.
LINT_LINE = "3008"


def say(message):
    print(message, flush=True)


def _setup_cfg():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(REPO, "setup.cfg"), encoding="utf-8")
    return parser


def _listed(value):
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def requirements(line):
    """What ``line``'s virtualenv needs besides envflow: its Salt, then envflow's requirements and extras."""
    cfg = _setup_cfg()
    wanted = [line.salt]
    for requirement in _listed(cfg.get("options", "install_requires", fallback="")):
        # envflow supports several Salt lines; the line's own range replaces the broad one.
        if re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() != "salt":
            wanted.append(requirement)
    for extra in line.extras:
        wanted.extend(_listed(cfg.get("options.extras_require", extra, fallback="")))
    return wanted


def path(line):
    return os.path.join(VENVS, f"salt{line.name}")


def _shown(where):
    return os.path.relpath(where, REPO)


def python(line):
    return os.path.join(path(line), "bin", "python")


def _stamp_key(line):
    """What the installed dependencies depend on: the requirements and the base interpreter."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return {"requirements": requirements(line), "python": base, "version": sys.version}


def _pip(line, args, log):
    """Run pip of ``line``'s virtualenv, its output going to ``log``; on failure show the end of it and exit."""
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ pip {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(
            [python(line), "-m", "pip", "--disable-pip-version-check", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    if done.returncode:
        with open(log, encoding="utf-8", errors="replace") as out:
            tail = [text for text in out.read().splitlines() if "is ignored: it is neither" not in text][-25:]
        say("\n".join(tail))
        sys.exit(f"venvs: pip failed in {path(line)} (exit {done.returncode}); full log: {log}")


def _usable(line):
    try:
        return subprocess.run([python(line), "-c", "import sys"], check=False, capture_output=True).returncode == 0
    except OSError:
        return False


def _ensure_deps(line, log):
    stamp = os.path.join(path(line), "envflow-deps.json")
    key = _stamp_key(line)
    if _usable(line) and os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as handle:
            if json.load(handle) == key:
                return
    started = time.monotonic()
    say(f"venvs: creating {_shown(path(line))} with {line.salt} (about a minute; log in {_shown(log)})")
    # A fresh virtualenv, so nothing of a previous set of requirements stays behind.
    subprocess.run([sys.executable, "-m", "venv", "--clear", path(line)], check=True)
    _pip(line, ["install", *key["requirements"]], log)
    with open(stamp, "w", encoding="utf-8") as handle:
        json.dump(key, handle, indent=1)
    say(f"venvs: {_shown(path(line))} ready in {time.monotonic() - started:.0f}s")


def _build_wheel(line, into, log):
    # setuptools builds inside the checkout and never empties build/: a module removed
    # from the source would otherwise still be packed into the wheel from there.
    shutil.rmtree(os.path.join(REPO, "build"), ignore_errors=True)
    _pip(line, ["wheel", "--no-deps", "--quiet", "--wheel-dir", into, REPO], log)
    (wheel,) = glob.glob(os.path.join(into, "envflow-*.whl"))
    return wheel


def installed_version(line, dist):
    """The version of distribution ``dist`` installed in ``line``'s virtualenv."""
    return subprocess.run(
        [python(line), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@contextlib.contextmanager
def _locked():
    """One process at a time sets virtualenvs up (run.py and quickstart.py may start together)."""
    os.makedirs(VENVS, exist_ok=True)
    with open(os.path.join(VENVS, ".lock"), "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def prepare(names):
    """Make or update the virtualenvs of the Salt lines ``names`` and install this checkout's envflow in each.

    Returns ``{name: salt version}``.
    """
    lines = [LINES[name] for name in names]
    versions = {}
    with _locked(), tempfile.TemporaryDirectory(prefix="envflow-wheel-") as wheels:
        logs = {line.name: os.path.join(VENVS, f"salt{line.name}.log") for line in lines}
        for line in lines:
            with open(logs[line.name], "w", encoding="utf-8"):
                pass
            _ensure_deps(line, logs[line.name])
        wheel = _build_wheel(lines[0], wheels, logs[lines[0].name])
        for line in lines:
            _pip(line, ["install", "--no-deps", "--force-reinstall", "--quiet", wheel], logs[line.name])
            versions[line.name] = installed_version(line, "salt")
            say(f"venvs: {_shown(path(line))}: salt {versions[line.name]}, envflow from {REPO}")
    return versions


def main(argv):
    names = argv or list(LINES)
    unknown = [name for name in names if name not in LINES]
    if unknown:
        sys.exit(f"venvs: unknown Salt line {unknown[0]!r}; known: {', '.join(LINES)}")
    prepare(names)


if __name__ == "__main__":
    main(sys.argv[1:])
