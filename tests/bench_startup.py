#!/usr/bin/env python
"""Benchmark what envflow adds to a salt-run's start-up: ``envflow.status`` and a no-op refresh against ``test.arg``.

A script, not a test (pytest does not collect it: no ``test_`` prefix). Run it with the
Python of a virtualenv holding Salt, pygit2 and envflow::

    .venvs/salt3008/bin/python tests/bench_startup.py [--repeat 7] [--venv PATH] [--keep]

Issue 23, item 5: each salt-run or salt-call that uses envflow imports pygit2 and the
package; a call should import what it needs, when it needs it. This measures it, with
no aims: it prints figures, never PASS or FAIL.

In a temporary directory (removed at the end unless ``--keep``) it builds a bare
repository of 200 Salt files (``top.sls`` and states in four folders) with ``develop``,
``stage`` and ``master`` at one commit, and the quickstart's master config
(``tests/quickstart.py``: root, cache, pki, socket and log directories inside the
temporary directory, ``user`` the current user, ``file_roots`` and the ``envflow`` block
for test/stage/prod). No salt-master runs: salt-run works without one once the job
directory the master would make (``<cachedir>/proc``) exists. Every salt-run imports
envflow from this checkout (``PYTHONPATH``; the installed ``salt.loader`` entry point
``envflow.loader:salt_dirs`` then finds ``_runners/`` beside the package).

``salt-run envflow.refresh`` deploys the three environments first; then, in the same run:

* imports: ``salt-run test.arg``, ``envflow.status`` and ``envflow.refresh test`` once
  each under ``python -X importtime``, with an import timer of this script's own
  (``_TIMED_IMPORTS``) that records every module the process loads, its own and its
  cumulative time: ``-X importtime`` does not log a module loaded through
  ``importlib.import_module`` (Salt loads its ``salt.loader`` entry points so, and a
  module imported on first use may be), and the report says which envflow modules it
  missed. pygit2 = the cumulative time of the top-level ``pygit2`` import, whoever made
  it (Salt's own ``salt.utils.gitfs`` imports it when it is installed: the report says who
  did, and which envflow modules hold it); envflow = the sum of every ``envflow`` module's
  own time. These runs come first, so the timed rounds find every cache warm; the
  checkout's modules are byte-compiled before.
* wall and CPU time: ``--repeat`` rounds of the three commands as subprocesses, the whole
  process timed (CPU: its user + system time, less disturbed by other work), the order of
  the commands rotated each round so that noise on the machine hits all three alike. Each
  run must exit 0 and print what it should: test.arg its arguments, status a row per
  environment serving the deployed commit, the refresh ``changed: False``.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import gitrepo
import quickstart
from bench_deploy import CHECKOUT, _env, _load_line, _median, _ms

FOLDERS = ("web", "db", "monitoring", "users")
FILES = 200  # top.sls included
COMMANDS = (("test.arg",), ("envflow.status",), ("envflow.refresh", "test"))
TIMEOUT_S = 300

# salt-run, every module load timed: what the process imported, with its own and cumulative time (us), the module
# that imported it, and which envflow modules hold pygit2 (its module or a name from it); to $ENVFLOW_BENCH_IMPORTS.
# It wraps importlib's _find_and_load_unlocked, which every import passes through once per module it loads, by
# the import statement and by importlib.import_module alike (-X importtime logs only the first).
_TIMED_IMPORTS = textwrap.dedent(
    """
    import _frozen_importlib, _thread, sys, time

    loads, stacks = [], {}
    load = _frozen_importlib._find_and_load_unlocked

    def timed(name, import_):
        stack = stacks.setdefault(_thread.get_ident(), [])
        stack.append([name, 0])
        start = time.perf_counter_ns()
        try:
            return load(name, import_)
        finally:
            spent = time.perf_counter_ns() - start
            _name, nested = stack.pop()
            if stack:
                stack[-1][1] += spent
            by = stack[-1][0] if stack else None
            loads.append([name, (spent - nested) // 1000, spent // 1000, len(stack), by, name in sys.modules])

    _frozen_importlib._find_and_load_unlocked = timed

    def origin(value):
        # Only what the value is and where its type comes from: getattr on a lazy proxy could import.
        if isinstance(value, type(sys)):
            return value.__name__
        if isinstance(value, (type, type(origin), type(len))):
            return str(value.__module__)
        return type(value).__module__

    def holds_pygit2(module):
        return any(origin(value).split(".")[0] == "pygit2" for value in list(vars(module).values()))

    def dump():
        import json, os

        done = list(loads)
        ours = [name for name in sys.modules if name == "envflow" or name.startswith("envflow.")]
        found = {"loads": done, "pygit2_held_by": sorted(name for name in ours if holds_pygit2(sys.modules[name]))}
        with open(os.environ["ENVFLOW_BENCH_IMPORTS"], "w", encoding="utf-8") as handle:
            json.dump(found, handle)

    import os, runpy

    sys.argv = sys.argv[1:]  # salt-run's path and its arguments, as when it runs as a script
    sys.path[0] = os.path.dirname(sys.argv[0])
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        dump()
    """
)
_IMPORTTIME = re.compile(r"^import time: +\d+ \| +\d+ \| +(\S+)$", re.M)  # the module each line names


def is_envflow(name):
    return name == "envflow" or name.startswith("envflow.")


def progress(text):
    print(text, file=sys.stderr, flush=True)


def shown(command):
    return "salt-run " + " ".join(command)


class Site:
    """The throwaway repository and master config, and the salt-run of the virtualenv measured."""

    def __init__(self, root, venv):
        self.root = root
        self.python = os.path.join(venv, "bin", "python")
        self.salt_run = os.path.join(venv, "bin", "salt-run")
        self.remote = gitrepo.Remote(os.path.join(root, "git"), files=repository_files())
        self.tip = self.remote.tip("develop")
        config = quickstart.Site(root)
        config.write_configs(self.remote)
        self.conf = config.conf
        # salt-run writes its job's file there; a salt-master makes the directory when it starts, and none runs.
        os.makedirs(os.path.join(root, "cache", "master", "proc"))

    def run(self, command, *options, python_args=(), environ=None):
        """salt-run ``command`` (a tuple) with ``options``; its wall and CPU time (s) and the finished process."""
        argv = [self.salt_run, "-c", self.conf, *command, *options]
        if python_args:
            argv = [self.python, *python_args, *argv]
        cpu = _children_cpu()
        start = time.perf_counter()
        done = subprocess.run(
            argv,
            env=dict(_env(), **(environ or {})),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT_S,
        )
        elapsed, cpu = time.perf_counter() - start, _children_cpu() - cpu
        if done.returncode:
            raise RuntimeError(
                f"{shown(command)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )
        return elapsed, cpu, done

    def deploy(self):
        """Deploy every environment; raise unless each now serves the branches' commit."""
        _elapsed, _cpu, done = self.run(("envflow.refresh",), "--out=json")
        report = json.loads(done.stdout[done.stdout.index("{") :])["environments"]
        served = {env: (entry.get("new"), entry.get("changed")) for env, entry in report.items()}
        expected = {env: (self.tip, True) for env, _branch in quickstart.ENVIRONMENTS}
        if served != expected:
            raise RuntimeError(f"the first envflow.refresh should deploy {self.tip} everywhere: {report}")

    def check(self, command, done):
        """Raise unless ``command``'s output is what it should print here."""
        out = done.stdout
        if command == ("test.arg",):
            ok = re.search(r"^args:", out, re.M) and re.search(r"^kwargs:", out, re.M)
        elif command == ("envflow.status",):
            ok = all(
                re.search(rf"^{env} +{branch} +{self.tip[:10]} ", out, re.M) for env, branch in quickstart.ENVIRONMENTS
            )
        else:
            # The nested outputter: environments / test / changed: False, old and new the deployed commit.
            ok = (
                re.search(r"^ +changed:\n +False$", out, re.M)
                and len(re.findall(rf"^ +(?:new|old):\n +{self.tip}$", out, re.M)) == 2
                and "error" not in out
            )
        if not ok:
            raise RuntimeError(f"{shown(command)} printed what it should not:\n{out[-3000:]}\n{done.stderr[-2000:]}")


def repository_files():
    """``top.sls`` and states in :data:`FOLDERS`, :data:`FILES` files in all."""
    files = {
        "top.sls": "".join(
            f"{env}:\n  '*':\n" + "".join(f"    - {folder}\n" for folder in FOLDERS)
            for env, _branch in quickstart.ENVIRONMENTS
        )
    }
    for number in range(FILES - 1):
        folder = FOLDERS[number % len(FOLDERS)]
        index = number // len(FOLDERS)
        name = "init" if index == 0 else f"state{index:02d}"
        include = "".join(f"  - {folder}.state{i:02d}\n" for i in range(1, 4)) if index == 0 else ""
        files[f"{folder}/{name}.sls"] = (
            (f"include:\n{include}\n" if include else "")
            + f"{folder}-{name}:\n  file.managed:\n    - name: /etc/{folder}/{name}.conf\n"
            + f"    - contents: 'setting_{number} = {number * 7919 % 100003}'\n"
        )
    return files


def measure_imports(site, command):
    """``command`` once under ``-X importtime`` and :data:`_TIMED_IMPORTS`: what it imported, and how long it took."""
    path = os.path.join(site.root, "imports.json")
    _elapsed, _cpu, done = site.run(
        command,
        python_args=("-X", "importtime", "-c", _TIMED_IMPORTS),
        environ={"ENVFLOW_BENCH_IMPORTS": path},
    )
    site.check(command, done)
    with open(path, encoding="utf-8") as handle:
        found = json.load(handle)
    os.unlink(path)
    loads = [
        {"name": name, "own": own / 1000, "cumulative": cumulative / 1000, "depth": depth, "by": by}
        for name, own, cumulative, depth, by, loaded in found["loads"]
        if loaded  # an optional module that failed to import is left out
    ]
    pygit2 = next((load for load in loads if load["name"] == "pygit2"), None)
    envflow = [load for load in loads if is_envflow(load["name"])]
    logged = set(_IMPORTTIME.findall(done.stderr))
    return {
        "pygit2_ms": pygit2["cumulative"] if pygit2 else None,
        "pygit2_by": pygit2["by"] if pygit2 else None,
        "pygit2_held_by": found["pygit2_held_by"],
        "envflow_ms": sum(load["own"] for load in envflow),
        "modules": [load["name"] for load in envflow],
        "missed_by_importtime": sorted(load["name"] for load in envflow if load["name"] not in logged),
        "all_ms": sum(load["cumulative"] for load in loads if load["depth"] == 0),
        "count": len(loads),
    }


def measure_wall(site, repeat):
    """``repeat`` rounds of :data:`COMMANDS`, each round starting one command later; ``{command: {"wall", "cpu"}}``.

    Wall and CPU (user + system) seconds of each run: the CPU time is less disturbed by other work on the machine.
    """
    times = {command: {"wall": [], "cpu": []} for command in COMMANDS}
    for round_ in range(repeat):
        progress(f"round {round_ + 1} of {repeat} ...")
        shift = round_ % len(COMMANDS)
        for command in COMMANDS[shift:] + COMMANDS[:shift]:
            elapsed, cpu, done = site.run(command)
            site.check(command, done)
            times[command]["wall"].append(elapsed)
            times[command]["cpu"].append(cpu)
    return times


def _children_cpu():
    """User + system seconds of this process's finished children (one salt-run at a time runs)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def probe(python):
    """What the measured virtualenv's Python runs, as salt-run sees it: its versions and where envflow comes from."""
    code = (
        "import json, os, sys, pygit2, salt.version, envflow; print(json.dumps([sys.version.split()[0], "
        "salt.version.__version__, pygit2.__version__, pygit2.LIBGIT2_VERSION, os.path.dirname(envflow.__file__)]))"
    )
    out = subprocess.run([python, "-c", code], env=_env(), cwd="/", capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(args, site, versions, wall, imports):
    lines = []
    out = lines.append
    python, salt, pygit2, libgit2, origin = versions
    out("")
    out("envflow start-up benchmark: what envflow adds to a salt-run (issue 23, item 5)")
    out(f"python {python}, salt {salt}, pygit2 {pygit2} (libgit2 {libgit2}), {os.cpu_count()} CPUs")
    out(f"envflow imported from {origin} (by PYTHONPATH, in every salt-run)")
    out(f"{site.salt_run} -c <temporary>/etc/salt, no salt-master running")
    out(
        f"repository: {FILES} files (top.sls, {len(FOLDERS)} folders of states), develop, stage and master at one "
        "commit; test, stage and prod deployed before any timing, so the refresh is a no-op"
    )
    out(
        f"times in ms: wall time of the whole salt-run process, median and min of {args.repeat} round(s), the order "
        "of the commands rotated each round; CPU = its user + system time, median"
    )
    out("over = the command's median minus test.arg's, / = the command's median over test.arg's")
    _load_line(args, out)
    out("")
    header = f"{'command':<30} {'wall':>9} {'min':>9} {'over':>8} {'/':>6}   {'CPU':>9} {'min':>9} {'over':>8} {'/':>6}"
    out(header)
    out("-" * len(header))
    base = {kind: 1000 * _median(wall[COMMANDS[0]][kind]) for kind in ("wall", "cpu")}
    for command in COMMANDS:
        row = f"{shown(command):<30}"
        for kind in ("wall", "cpu"):
            median, least = 1000 * _median(wall[command][kind]), 1000 * min(wall[command][kind])
            versus = (
                f"{median - base[kind]:>+8,.1f} {median / base[kind]:>5.2f}x"
                if command != COMMANDS[0]
                else f"{'-':>8} {'-':>6}"
            )
            row += f"{'   ' if kind == 'cpu' else ''} {_ms(median):>9} {_ms(least):>9} {versus}"
        out(row)
    out("")
    for command in COMMANDS[1:]:
        overheads = []
        for kind in ("wall", "cpu"):
            median, least = 1000 * _median(wall[command][kind]), 1000 * min(wall[command][kind])
            base_min = 1000 * min(wall[COMMANDS[0]][kind])
            overheads.append(
                f"{kind.replace('cpu', 'CPU')} {median - base[kind]:+,.1f} ms median ({median / base[kind]:.2f}x), "
                f"{least - base_min:+,.1f} ms min ({least / base_min:.2f}x)"
            )
        out(f"overhead of {shown(command)} over salt-run test.arg: {'; '.join(overheads)}")
    out("")
    out(
        "imports, one run of each command under python -X importtime and this script's import timer "
        "(both slow the run a little):"
    )
    out(
        "  pygit2 = cumulative ms of the top-level pygit2 import, whoever made it; envflow = the sum of the envflow "
        "modules' own ms; all = every import of the process"
    )
    header = f"{'command':<30} {'pygit2 ms':>10} {'envflow ms':>11} {'modules':>8} {'all ms':>9} {'imports':>8}"
    out(header)
    out("-" * len(header))
    for command in COMMANDS:
        found = imports[command]
        pygit2 = "-" if found["pygit2_ms"] is None else _ms(found["pygit2_ms"])
        out(
            f"{shown(command):<30} {pygit2:>10} {_ms(found['envflow_ms']):>11} "
            f"{len(found['modules']):>8} {_ms(found['all_ms']):>9} {found['count']:>8}"
        )
    for command in COMMANDS:
        found = imports[command]
        held = found["pygit2_held_by"]
        out("")
        out(
            f"{shown(command)}: envflow imports: pygit2 {'yes' if held else 'no'}, "
            f"{len(found['modules'])} envflow modules"
        )
        if found["pygit2_ms"] is not None:
            # No importing module: a Salt loader module (which Salt executes, not imports) or a function imported it.
            first = f"first imported by {found['pygit2_by'] or 'a loader module or a function'}"
        else:
            first = "not imported"
        out(f"  pygit2 {first}; " + (f"held by {', '.join(held)}" if held else "no envflow module holds it"))
        out(f"  envflow modules imported: {', '.join(found['modules']) or '-'}")
        missed = found["missed_by_importtime"]
        why = " (loaded through importlib.import_module, which -X importtime does not log)"
        out(
            f"  python -X importtime logged {len(found['modules']) - len(missed)} of them"
            + (f"; not {', '.join(missed)}{why}" if missed else "")
        )
    print("\n".join(lines), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds of the three commands (default: 7)")
    parser.add_argument(
        "--venv",
        default=os.path.dirname(os.path.dirname(sys.executable)),
        help="the virtualenv whose salt-run and python to run (default: the one of this Python)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    args = parser.parse_args(argv)
    args.venv = os.path.abspath(args.venv)
    if args.repeat < 1:
        parser.error("give --repeat of at least 1")
    for tool in ("python", "salt-run"):
        if not os.access(os.path.join(args.venv, "bin", tool), os.X_OK):
            parser.error(f"{args.venv} has no bin/{tool}; give a virtualenv holding Salt with --venv")
    args.load_start = os.getloadavg()[0]
    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="envflow-startup-")
    try:
        site = Site(workdir, args.venv)
        versions = probe(site.python)
        # Compiled now, so that no measured run compiles a module of the checkout edited since the last run.
        folders = [os.path.join(CHECKOUT, folder) for folder in ("envflow", "_runners", "_output")]
        subprocess.run([site.python, "-m", "compileall", "-q", *folders], check=True)
        progress("deploying test, stage and prod (salt-run envflow.refresh) ...")
        site.deploy()
        imports = {}
        for command in COMMANDS:
            progress(f"{shown(command)} under python -X importtime ...")
            imports[command] = measure_imports(site, command)
        wall = measure_wall(site, args.repeat)
        report(args, site, versions, wall, imports)
        print(f"\n(total run time {time.perf_counter() - started:.0f} s)")
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
