#!/usr/bin/env python
"""Benchmark branch environments (issue 25): a refresh of N served branches against N no-op deploys.

A script, not a test (pytest does not collect it: no ``test_`` prefix). Run it with the
Python of a virtualenv holding pygit2 (and Salt, which envflow's package does not need)::

    .venvs/salt3008/bin/python tests/bench_branchenvs.py [--files 200] [--branches 30] [--rounds 7]
                                                         [--profile] [--keep]
    .venvs/salt3008/bin/python tests/bench_branchenvs.py --quick   # 12 files, 3 branches, 1 round

It imports envflow from this checkout (put first on ``sys.path``), not from an older
build a virtualenv may hold, and works at the package level, in this process: no Salt,
no master. In a temporary directory (removed at the end unless ``--keep``) it builds,
with ``git fast-import``, a bare repository of ``--files`` files laid out as the
``envflow`` block's ``states: salt`` and ``pillar: pillar`` say (``salt/top.sls`` and
``salt/states/...`` in the own layout of ``tests/bench_deploy.py``, ``pillar/top.sls`` and
a tenth of the files under ``pillar/data/``), with ``develop``, ``stage`` and ``master`` at
one commit and ``--branches`` feature branches (``feature/b00`` ...), each one commit on
``develop`` changing one file. Two configurations read it through one mirror:

* the block under test: the pipeline test/stage/prod (develop/stage/master) and
  ``branch_environments: {branches: [feature/*], path: <srv>/branches, max: N}``; the
  saltenvs reserved are those of the pipeline and of the master's roots as a master
  lists them (``file_roots`` and ``pillar_roots`` with an ``__env__`` entry);
* the baseline: N pipeline environments ``e00`` ... on the same N branches (the same
  trees, the same mirror), each with a path of its own.

After serving both once, it measures, ``--rounds`` rounds each, the kinds of a round in
an order rotated every round so that noise on the machine hits them alike:

* (a) a refresh of the N branch environments where nothing changed: ``Mirror.fetch()``
  and ``branchenvs.sync(config, mirror, reserved)``, the package-level work that
  ``salt-run envflow.refresh`` does for them (the runner's callbacks, which clear the
  master's caches after a change and fire events, do nothing for a no-op and are left out);
* (b) the baseline: N no-op deploys, ``pipeline.deploy(config, mirror, name)`` of each of
  the N pipeline environments, as ``envflow.refresh`` deploys each pipeline environment
  (without its fetch); also one pipeline environment deployed N times, one refresh of
  the N pipeline environments (one fetch, then N no-op deploys), and N separate
  refreshes (N times: open the mirror, fetch, one no-op deploy), to show what one fetch saves.

Wall time and this process's CPU time; the aim is judged on the wall-time medians.
Then, in rounds of their own with envflow's functions timed (``time.perf_counter``
around ``Mirror.fetch``, ``branchenvs.served``, ``Mirror.branches``, ``branchenvs.plan``,
each environment's deploy and its ``Deployment.prepare`` and ``switch``, the history entry,
``branchenvs._next_tick``), where (a)'s and (b)'s time goes; which files a no-op refresh
and a no-op deploy write (mtimes before and after); and, informational:

* (c) one update: a commit on one of the N branches (another each round), then the
  refresh (one environment changes, N-1 are no-ops); beside it the same change served
  to the N pipeline environments (one fetch, N deploys of which one changes);
* (d) the N branch environments created from nothing (the first sync, then after each
  removal) and removed (every feature branch deleted on the remote, then the refresh),
  beside the first deploys of the N pipeline environments.

Aim (issue 25): a refresh of N branch environments where nothing changed costs about
what N no-op deploys cost, measured at 200 files; "about" is taken as within 1.25x:
(a) / (b) <= 1.25, printed with PASS or MISS. When it is missed (or with ``--profile``),
cProfile runs around more rounds of (a) and (b) and the functions with the most
cumulative and own time are printed. The script never fails on the aim: speed is
measured here, not asserted by tests; it fails only when envflow does not do what a
round expects (a no-op that changes something, an update not served, a removal left
undone).
"""

import argparse
import contextlib
import cProfile
import functools
import os
import shutil
import sys
import tempfile
import time

from bench_deploy import (
    CHECKOUT,
    BenchRepo,
    _cprofile_functions,
    _data,
    _load_line,
    _median,
    _ms,
    _pygit2_version,
    _spread,
    git,
    own_path,
)

# What is measured is this checkout's envflow, not an older build the virtualenv may hold.
if sys.path[:1] != [CHECKOUT]:
    sys.path.insert(0, CHECKOUT)

import envflow
from envflow import branchenvs, history, holds, pipeline
from envflow.config import parse
from envflow.remote import Mirror
from envflow.served import Deployment

AIM_RATIO = 1.25  # "about": a no-op refresh of N branch environments within this of N no-op deploys
AIM_FILES = 200  # the size the issue names for the aim
PATTERN = "feature/*"
BY = "bench"
TOP = 15  # functions shown per cProfile ranking
KINDS = ("a", "b", "b1", "bf", "bn")


def progress(message):
    print(message, file=sys.stderr, flush=True)


# -- the repository -------------------------------------------------------------------------------


def _paths(files):
    """``files`` paths: ``salt/top.sls``, ``pillar/top.sls``, a tenth under ``pillar/data/``, the rest states."""
    pillar = max(1, files // 10)
    return [
        "salt/top.sls",
        "pillar/top.sls",
        *(f"pillar/data/p{number:03d}.sls" for number in range(pillar - 1)),
        *(f"salt/{own_path(number)}" for number in range(1, files - pillar)),
    ]


def _content(path, number):
    if path == "salt/top.sls":
        return b"base:\n  '*':\n    - states\n"
    if path == "pillar/top.sls":
        return b"base:\n  '*':\n    - data\n"
    if path.startswith("pillar/"):
        return b"# %s\nsetting_%d: %d\n" % (path.encode(), number, number * 7919 % 100003)
    return BenchRepo._content(path[len("salt/") :], number)  # pylint: disable=protected-access


class BranchesRepo:
    """A bare repository: develop, stage and master at one commit of ``files`` files, and ``count`` feature branches.

    Each feature branch is one commit on develop changing one file (a different one per branch).
    """

    def __init__(self, root, files, count):
        self.path = os.path.join(root, "automation.git")
        width = max(2, len(str(count - 1)))
        self.features = [f"feature/b{number:0{width}d}" for number in range(count)]
        self.contents = {path: _content(path, number) for number, path in enumerate(_paths(files))}
        self.states = sorted(path for path in self.contents if path.startswith("salt/states/"))
        self.commits = 0
        stamp = b"committer Bench Author <bench@example.com> %d +0000\n" % int(time.time())
        stream = [b"commit refs/heads/develop\nmark :1\n", stamp, _data(b"initial states")]
        for path, content in self.contents.items():
            stream.append(b"M 100644 inline %s\n" % path.encode())
            stream.append(_data(content))
        stream.append(b"reset refs/heads/stage\nfrom :1\n\nreset refs/heads/master\nfrom :1\n\n")
        for number, branch in enumerate(self.features):
            path = self.states[number % len(self.states)]
            stream += [b"commit refs/heads/%s\n" % branch.encode(), stamp, _data(b"work on %s" % branch.encode())]
            stream += [b"from :1\n", b"M 100644 inline %s\n" % path.encode()]
            stream.append(_data(self.contents[path] + b"# %s\n" % branch.encode()))
        git("init", "-q", "--bare", "-b", "develop", self.path)
        git("fast-import", "--quiet", cwd=self.path, input=b"".join(stream))
        self.tips = self._tips()

    def _tips(self):
        listed = git("for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/feature/", cwd=self.path)
        return {name[len("refs/heads/") :]: oid for name, oid in (line.split() for line in listed.splitlines())}

    def commit(self, branch):
        """Commit a one-line change to one file on ``branch`` (pushed, as far as the mirror can tell); its id."""
        self.commits += 1
        path = self.states[(self.commits * 7) % len(self.states)]
        stream = b"".join(
            [
                b"commit refs/heads/%s\n" % branch.encode(),
                b"committer Bench Author <bench@example.com> %d +0000\n" % int(time.time()),
                _data(b"change %d" % self.commits),
                b"from refs/heads/%s^0\n" % branch.encode(),
                b"M 100644 inline %s\n" % path.encode(),
                _data(self.contents[path] + b"# change %d\n" % self.commits),
            ]
        )
        git("fast-import", "--quiet", cwd=self.path, input=stream)
        self.tips = self._tips()
        return self.tips[branch]

    def delete_features(self):
        """Delete every feature branch on the remote (their tips are kept, to make them again)."""
        self.tips = self._tips()
        commands = "".join(f"delete refs/heads/{branch}\n" for branch in self.features)
        git("update-ref", "--stdin", cwd=self.path, input=commands.encode())

    def restore_features(self):
        commands = "".join(f"create refs/heads/{branch} {self.tips[branch]}\n" for branch in self.features)
        git("update-ref", "--stdin", cwd=self.path, input=commands.encode())


# -- the site -------------------------------------------------------------------------------------


class Site:
    """The block under test, the baseline's block, the master's roots as it lists them, and the mirror's cache."""

    def __init__(self, root, repo):
        self.repo = repo
        self.root = root
        self.cachedir = os.path.join(root, "cache")
        srv = os.path.join(root, "srv")
        shared = {"repo": repo.path, "states": "salt", "pillar": "pillar"}
        pipeline_envs = [
            {"name": name, "branch": branch, "path": os.path.join(srv, name)}
            for name, branch in (("test", "develop"), ("stage", "stage"), ("prod", "master"))
        ]
        self.block = {
            **shared,
            "environments": pipeline_envs,
            "branch_environments": {
                "branches": [PATTERN],
                "path": os.path.join(srv, "branches"),
                "max": len(repo.features),
            },
        }
        self.config = parse(self.block)
        self.settings = self.config.branch_environments
        self.saltenvs = [branchenvs.saltenv_of(branch) for branch in repo.features]
        # The roots a master serving them lists; salt-master makes each root directory when it starts.
        opts = {"file_roots": {}, "pillar_roots": {}}
        for env in self.config.environments:
            opts["file_roots"][env.name] = [os.path.join(env.path, "salt")]
            opts["pillar_roots"][env.name] = [os.path.join(env.path, "pillar")]
        opts["file_roots"]["__env__"] = [self.settings.states_root]
        opts["pillar_roots"]["__env__"] = [self.settings.pillar_root]
        for root_dir in (self.settings.states_root, self.settings.pillar_root):
            os.makedirs(root_dir)
        self.reserved = branchenvs.reserved_saltenvs(self.config, opts)
        names = ["e" + branch[len("feature/b") :] for branch in repo.features]
        self.baseline = parse(
            {
                **shared,
                "environments": [
                    {"name": name, "branch": branch, "path": os.path.join(srv, "pipeline", name)}
                    for name, branch in zip(names, repo.features, strict=True)
                ],
            }
        )
        self.names = self.baseline.names

    def mirror(self):
        return Mirror.of(self.config, self.cachedir)


# -- timing ---------------------------------------------------------------------------------------


class Spent:
    """Seconds spent in some of envflow's functions, and their calls, while :meth:`watching` (inclusive times)."""

    TARGETS = (
        ("fetch", Mirror, "fetch"),
        ("branches", Mirror, "branches"),
        ("sync", branchenvs, "sync"),
        ("served", branchenvs, "served"),
        ("plan", branchenvs, "plan"),
        ("branch deploy", branchenvs, "_deploy"),
        ("remove", branchenvs, "_remove"),
        ("tick", branchenvs, "_next_tick"),
        ("pipeline deploy", pipeline, "deploy"),
        ("holds", history, "holds"),
        ("prepare", Deployment, "prepare"),
        ("switch", Deployment, "switch"),
        ("history", holds, "record_after"),
        ("rmtree", shutil, "rmtree"),
    )

    def __init__(self):
        self.each = {key: [] for key, _owner, _name in self.TARGETS}  # the seconds of each call

    def _timed(self, key, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.each[key].append(time.perf_counter() - start)

        return wrapper

    def seconds(self, key):
        return sum(self.each[key])

    @contextlib.contextmanager
    def watching(self):
        saved = [(owner, name, getattr(owner, name)) for _key, owner, name in self.TARGETS]
        for (key, owner, name), (_owner, _name, function) in zip(self.TARGETS, saved, strict=True):
            setattr(owner, name, self._timed(key, function))
        try:
            yield self
        finally:
            for owner, name, function in saved:
                setattr(owner, name, function)


def timed(action):
    """Run ``action()``; ``(wall s, CPU s of this process, what it returned)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = action()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def watched(action):
    """Run ``action()`` with envflow's functions timed; ``(wall s, Spent, what it returned)``."""
    spent = Spent()
    with spent.watching():
        wall, _cpu, value = timed(action)
    return wall, spent, value


# -- what is measured -----------------------------------------------------------------------------


def refresh(site):
    """(a) and (c): one fetch, then the branch environments brought in line; the sync's report."""
    with site.mirror() as mirror:
        mirror.fetch()
        return branchenvs.sync(site.config, mirror, site.reserved, by=BY)


def deploy_each(site, fetch=False, names=None):
    """(b): a deploy of each pipeline environment of the baseline (``names``), after one fetch if ``fetch``."""
    with site.mirror() as mirror:
        if fetch:
            mirror.fetch()
        return [pipeline.deploy(site.baseline, mirror, name, by=BY) for name in names or site.names]


def separate_refreshes(site):
    """(b): N refreshes of one environment each: open the mirror, fetch, deploy."""
    done = []
    for name in site.names:
        with site.mirror() as mirror:
            mirror.fetch()
            done.append(pipeline.deploy(site.baseline, mirror, name, by=BY))
    return done


def run_kind(site, kind):
    if kind == "a":
        return refresh(site)
    if kind == "b":
        return deploy_each(site)
    if kind == "b1":
        return deploy_each(site, names=[site.names[0]] * len(site.names))
    if kind == "bf":
        return deploy_each(site, fetch=True)
    return separate_refreshes(site)


def check_noop(site, kind, done):
    """Stop the run when a round that should change nothing changed something."""
    if kind == "a":
        expect_sync(site, done, changed=set())
        return
    changed = [result["path"] for result in done if result["changed"]]
    if len(done) != len(site.names) or changed:
        raise RuntimeError(f"({kind}) no-op deploys: {len(done)} deploys, changed: {changed}")


def expect_sync(site, report, changed=(), removed=(), served=True):
    """Stop the run unless ``report`` (of ``branchenvs.sync``) deployed every environment, ``changed`` those only."""
    if report["refused"] or report["capped"]:
        raise RuntimeError(f"branch environments refused or capped: {report['refused']} {report['capped']}")
    envs = report["environments"]
    errors = {saltenv: entry["error"] for saltenv, entry in envs.items() if "error" in entry}
    if errors:
        raise RuntimeError(f"branch environments failed: {errors}")
    if sorted(envs) != (sorted(site.saltenvs) if served else []):
        raise RuntimeError(f"branch environments deployed: {sorted(envs)}, expected {sorted(site.saltenvs)}")
    found = {saltenv for saltenv, entry in envs.items() if entry["changed"]}
    if found != set(changed):
        raise RuntimeError(f"branch environments changed: {sorted(found)}, expected {sorted(changed)}")
    if set(report["removed"]) != set(removed):
        raise RuntimeError(f"branch environments removed: {sorted(report['removed'])}, expected {sorted(removed)}")


def serving(site, saltenv, commit):
    info = branchenvs.served_dir(site.settings, saltenv).deployed()
    if not info or info["id"] != commit:
        raise RuntimeError(f"{saltenv} serves {info and info['id']}, not {commit}")


def measure_noops(site, rounds):
    """(a) and (b) kinds, ``rounds`` rounds each, rotated: ``{kind: [(wall s, CPU s)]}``."""
    found = {kind: [] for kind in KINDS}
    for number in range(rounds):
        shift = number % len(KINDS)
        for kind in KINDS[shift:] + KINDS[:shift]:
            wall, cpu, done = timed(lambda kind=kind: run_kind(site, kind))
            check_noop(site, kind, done)
            found[kind].append((wall, cpu))
    return found


def measure_pieces(site, rounds):
    """(a) and (b) again, envflow's functions timed: ``{"a": [(wall s, Spent)], "b": [...]}``."""
    found = {"a": [], "b": []}
    for number in range(rounds):
        for kind in ("a", "b") if number % 2 == 0 else ("b", "a"):
            wall, spent, done = watched(lambda kind=kind: run_kind(site, kind))
            check_noop(site, kind, done)
            found[kind].append((wall, spent))
    return found


def _snapshot(root):
    """``{path: (mtime ns, inode)}`` of every file, directory and symlink under ``root``, no link followed."""
    found = {}
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(parent, name)
            stat = os.lstat(path)
            found[os.path.relpath(path, root)] = (stat.st_mtime_ns, stat.st_ino)
    return found


def _pattern(path, names):
    """``path`` with an environment's name made ``<env>``: the same write in every environment reads as one."""
    parts = path.split(os.sep)
    return os.sep.join("<env>" if part.strip(".").removesuffix(".envflow") in names else part for part in parts)


def measure_writes(site):
    """What one no-op (a) and one no-op (b) write: ``{kind: {pattern: count}}`` (new, changed or gone)."""
    srv = os.path.join(site.root, "srv")
    names = set(site.saltenvs) | set(site.names)
    found = {}
    for kind in ("a", "b"):
        before = _snapshot(srv)
        time.sleep(0.02)  # past the file system's clock tick: a rewrite gets another mtime
        check_noop(site, kind, run_kind(site, kind))
        after = _snapshot(srv)
        written = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
        counts = {}
        for path in written:
            key = _pattern(path, names)
            counts[key] = counts.get(key, 0) + 1
        found[kind] = counts
    return found


def measure_updates(site, rounds):
    """(c): a commit on one branch (another each round), then the refresh; and the same served by the baseline."""
    found = {"c": [], "c_base": []}
    for number in range(rounds):
        branch = site.repo.features[number % len(site.repo.features)]
        saltenv, name = branchenvs.saltenv_of(branch), site.names[number % len(site.names)]
        commit = site.repo.commit(branch)
        wall, spent, report = watched(lambda: refresh(site))
        expect_sync(site, report, changed={saltenv})
        serving(site, saltenv, commit)
        found["c"].append((wall, spent))
        wall, spent, done = watched(lambda: deploy_each(site, fetch=True))
        changed = [site.names[index] for index, result in enumerate(done) if result["changed"]]
        if changed != [name]:
            raise RuntimeError(f"(c) baseline: changed {changed}, expected {name}")
        found["c_base"].append((wall, spent))
    return found


def measure_churn(site, rounds):
    """(d): every feature branch deleted then the refresh (removal), made again then the refresh (creation)."""
    found = {"remove": [], "create": []}
    for _number in range(rounds):
        site.repo.delete_features()
        wall, spent, report = watched(lambda: refresh(site))
        expect_sync(site, report, removed=site.saltenvs, served=False)
        left = sorted(set(os.listdir(site.settings.path)) - {"__env__"})
        homes = sorted(set(os.listdir(site.settings.home)) & set(site.saltenvs))  # envflow's own files may stay
        if left or homes or branchenvs.served(site.settings):
            raise RuntimeError(f"(d) removal left {left} in {site.settings.path}, {homes} in {site.settings.home}")
        found["remove"].append((wall, spent))
        site.repo.restore_features()
        wall, spent, report = watched(lambda: refresh(site))
        expect_sync(site, report, changed=site.saltenvs)
        found["create"].append((wall, spent))
    return found


def measure_profile(site, rounds):
    """cProfile around ``rounds`` rounds of (a) and of (b): ``{kind: (rounds, [(function, calls, own, cum)])}``."""
    found = {}
    for kind in ("a", "b"):
        profiler = cProfile.Profile()
        for _number in range(rounds):
            profiler.enable()
            done = run_kind(site, kind)
            profiler.disable()
            check_noop(site, kind, done)
        found[kind] = (rounds, _cprofile_functions([profiler]))
    return found


def run(args, root):
    results = {"started": time.perf_counter()}
    progress(f"building a repository of {args.files} files with {args.branches} feature branches ...")
    start = time.perf_counter()
    repo = BranchesRepo(root, args.files, args.branches)
    results["built_s"] = time.perf_counter() - start
    site = Site(root, repo)
    results["site"] = site

    progress("serving them once (the first sync), and the baseline's environments ...")
    wall, spent, report = watched(lambda: refresh(site))
    expect_sync(site, report, changed=site.saltenvs)
    for saltenv, branch in zip(site.saltenvs, repo.features, strict=True):
        serving(site, saltenv, repo.tips[branch])
    results["first_create"] = (wall, spent)
    wall, spent, done = watched(lambda: deploy_each(site, fetch=True))
    if not all(result["changed"] for result in done):
        raise RuntimeError("the baseline's first deploys did not all deploy")
    results["first_baseline"] = (wall, spent)
    for kind in KINDS:  # warm-up, untimed: every file read once, every code path run once
        check_noop(site, kind, run_kind(site, kind))

    progress(f"(a) and (b): {args.rounds} rounds ...")
    results["noops"] = measure_noops(site, args.rounds)
    progress("where their time goes ...")
    results["pieces"] = measure_pieces(site, args.rounds)
    results["writes"] = measure_writes(site)
    results["ratio"] = _ratio(results["noops"], "a", "b")
    if args.profile or results["ratio"] > AIM_RATIO:
        progress("cProfile around (a) and (b) ...")
        results["profile"] = measure_profile(site, max(args.rounds, 3))
    progress(f"(c) one update: {args.rounds} rounds ...")
    results["updates"] = measure_updates(site, args.rounds)
    churn = max(1, min(args.rounds, 3))
    progress(f"(d) removal and creation: {churn} rounds ...")
    results["churn"] = measure_churn(site, churn)
    return results


# -- report ---------------------------------------------------------------------------------------


def _walls(rounds, index=0):
    return [1000 * entry[index] for entry in rounds]


def _ratio(noops, top, bottom, index=0):
    return _median(_walls(noops[top], index)) / _median(_walls(noops[bottom], index))


def _piece(rounds, key):
    """The median over ``rounds`` (``[(wall s, Spent)]``) of the ms spent in ``key``."""
    return _median([1000 * spent.seconds(key) for _wall, spent in rounds])


def _left(rounds, whole, *parts):
    """The median over ``rounds`` of the ms of ``whole`` (``None``: the round) not spent in ``parts``."""
    return _median(
        [
            1000 * ((wall if whole is None else spent.seconds(whole)) - sum(spent.seconds(part) for part in parts))
            for wall, spent in rounds
        ]
    )


def _calls(rounds, key):
    return _median([len(spent.each[key]) for _wall, spent in rounds])


def report(results, args):
    site = results["site"]
    count, files = len(site.repo.features), args.files
    lines = []
    out = lines.append
    row = lambda label, values, per=None: out(  # noqa: E731
        f"  {label:<84} {_ms(_median(values)):>9} {_spread(values):>13} {_ms(_median(values) / per) if per else '':>9}"
    )
    piece = lambda label, value, per=None: out(  # noqa: E731
        f"  {label:<84} {_ms(value):>9} {'':>13} {_ms(value / per) if per else '':>9}"
    )
    out("")
    out("envflow branch environments benchmark (issue 25)")
    out(
        f"python {sys.version.split()[0]}, pygit2 {_pygit2_version()}, {git('--version')}, {os.cpu_count()} CPUs; "
        f"envflow imported from {os.path.dirname(envflow.__file__)}"
    )
    out(f"checkout at the start: {args.checkout}")
    if _code_stamp() != args.code_stamp:
        out("WARNING: envflow's code changed in the work tree during the run; this run measured what it imported first")
    _load_line(args, out)
    out(f"temporary directory on {_filesystem(site.root)}")
    pillar = sum(path.startswith("pillar/") for path in site.repo.contents)
    out(
        f"a bare repository on local disk of {files} files ({files - pillar} under salt/, {pillar} under pillar/), "
        f"built in {results['built_s']:.1f} s:"
    )
    out(
        f"  develop, stage and master at one commit, and {count} feature branches "
        f"({site.repo.features[0]} .. {site.repo.features[-1]}), each one commit on develop changing one file"
    )
    out(
        f"envflow: states: salt, pillar: pillar; test/stage/prod on develop/stage/master; branch_environments: "
        f"{{branches: [{PATTERN}], path: <srv>/branches, max: {count}}}; reserved saltenvs: "
        f"{', '.join(sorted(site.reserved))}"
    )
    out(
        f"baseline: {count} pipeline environments {site.names[0]} .. {site.names[-1]} on the same {count} branches "
        "(the same trees, the same mirror), each at a path of its own:"
    )
    out(
        f"  {count} served trees, as the branch environments; each no-op deploy is pipeline.deploy(config, mirror, "
        "name), what envflow.refresh does per pipeline environment"
    )
    out("package level, in this process (no Salt): the runner's callbacks (master caches, events) are left out")
    out(f"times in ms (wall clock), median of {args.rounds} rounds (min-max); per env = the median / {count}")

    noops, pieces = results["noops"], results["pieces"]
    out("")
    out(f"  {'':<84} {'ms':>9} {'(min-max)':>13} {'per env':>9}")
    row(f"(a) refresh of {count} branch environments, nothing changed (fetch + sync)", _walls(noops["a"]), count)
    row(f"(b) {count} no-op deploys, one of each pipeline environment (the baseline)", _walls(noops["b"]), count)
    row(f"    one pipeline environment deployed {count} times", _walls(noops["b1"]), count)
    row(
        f"    one refresh of the {count} pipeline environments: fetch + {count} no-op deploys",
        _walls(noops["bf"]),
        count,
    )
    row(f"    {count} separate refreshes: {count} x (open the mirror, fetch, no-op deploy)", _walls(noops["bn"]), count)
    saved = _median(_walls(noops["bn"])) - _median(_walls(noops["a"]))
    out(
        f"  one fetch for all: (a) costs {_ms(saved)} ms less than {count} separate refreshes "
        f"({_ratio(noops, 'bn', 'a'):.2f}x (a))"
    )
    out(
        f"  CPU time of this process, medians: (a) {_ms(_median(_walls(noops['a'], 1)))} ms, (b) "
        f"{_ms(_median(_walls(noops['b'], 1)))} ms, (a)/(b) = {_ratio(noops, 'a', 'b', 1):.2f}x "
        "(less disturbed by other work on the machine)"
    )

    out("")
    out(f"where (a)'s time goes: {args.rounds} more rounds with envflow's functions timed (perf_counter), medians")
    a = pieces["a"]
    total = _median([1000 * wall for wall, _spent in a])
    sync = _piece(a, "sync")
    fetch = _piece(a, "fetch")
    listing = _piece(a, "served") + _piece(a, "branches")
    plan = _piece(a, "plan")
    deploys = _piece(a, "branch deploy")
    piece("(a), timed", total, count)
    piece("  Mirror.fetch()", fetch)
    piece("  open and close the mirror (the rest outside sync)", _left(a, None, "fetch", "sync"))
    piece("  branchenvs.sync", sync, count)
    piece(
        f"    listing: branchenvs.served ({_calls(a, 'served'):.0f} calls) + Mirror.branches "
        f"({_calls(a, 'branches'):.0f})",
        listing,
    )
    piece("    plan: branchenvs.plan (matching, naming, the cap)", plan)
    piece(f"    deploys: branchenvs._deploy ({_calls(a, 'branch deploy'):.0f} calls)", deploys, count)
    piece("      of which Deployment.prepare (the served tree checked for hand edits)", _piece(a, "prepare"), count)
    piece(
        "      of which the rest (lock, tidy, tip, branch file, Composer)", _left(a, "branch deploy", "prepare"), count
    )
    piece(
        "    the rest of sync (its lock, makedirs)",
        _left(a, "sync", "served", "branches", "plan", "branch deploy", "tick"),
    )
    b = pieces["b"]
    total_b = _median([1000 * wall for wall, _spent in b])
    deploys_b = _piece(b, "pipeline deploy")
    piece("(b), timed", total_b, count)
    piece(f"  pipeline.deploy ({_calls(b, 'pipeline deploy'):.0f} calls)", deploys_b, count)
    piece("    of which Deployment.prepare", _piece(b, "prepare"), count)
    piece("    of which history.holds (pins and freezes)", _piece(b, "holds"), count)
    piece(
        "    of which the rest (lock, tidy, target, Composer)",
        _left(b, "pipeline deploy", "prepare", "holds"),
        count,
    )
    piece("  open and close the mirror (the rest)", _left(b, None, "pipeline deploy"))
    out(
        f"  (a) - (b), of the timed medians = {_ms(total - total_b)} ms: fetch {_ms(fetch)}, listing and plan "
        f"{_ms(listing + plan)}, "
        f"deploys {_ms(deploys - deploys_b)} ({_ms((deploys - deploys_b) / count)} per env), other "
        f"{_ms(total - total_b - fetch - listing - plan - (deploys - deploys_b))}"
    )

    out("")
    out("what one no-op writes (mtime or inode changed, made or gone, under <srv>; <env> = every environment's name)")
    for kind, label in (("a", "(a) a no-op refresh of the branch environments"), ("b", "(b) the no-op deploys")):
        written = results["writes"][kind]
        listed = ", ".join(f"{path} x{n}" for path, n in sorted(written.items())) or "nothing"
        out(f"  {label}: {listed}")

    out("")
    out("informational (no aim); these rounds timed with envflow's functions, as above")
    c = results["updates"]
    row(f"(c) one update: a commit on one branch, then the refresh ({count - 1} no-ops)", _walls(c["c"]), count)
    piece(
        "      of which the changed environment's deploy (the slowest branchenvs._deploy)",
        _slowest(c["c"], "branch deploy"),
    )
    piece("      of which the history entry (holds.record_after: a push)", _piece(c["c"], "history"))
    piece("      of which waiting for the next clock tick (branchenvs._next_tick)", _piece(c["c"], "tick"))
    row(
        f"    the same change to the pipeline environments: fetch + {count} deploys (1 changes)",
        _walls(c["c_base"]),
        count,
    )
    churn = results["churn"]
    first, first_spent = results["first_create"]
    piece(f"(d) creation of {count} from nothing, the first sync (the mirror new)", 1000 * first, count)
    for label, key in (
        ("Mirror.fetch", "fetch"),
        ("Deployment.prepare (the whole tree written)", "prepare"),
        ("Deployment.switch (flushed to disk, the symlink)", "switch"),
        ("history entries (holds.record_after)", "history"),
        ("waiting for clock ticks (branchenvs._next_tick)", "tick"),
    ):
        piece(f"      of which {label}", 1000 * first_spent.seconds(key), None if key == "fetch" else count)
    row(f"    creation of {count} after their removal (branches made again, refresh)", _walls(churn["create"]), count)
    row(f"    removal of {count} (every branch deleted, refresh)", _walls(churn["remove"]), count)
    piece("      of which shutil.rmtree of the homes (two trees each)", _piece(churn["remove"], "rmtree"), count)
    piece("      of which history entries (holds.record_after)", _piece(churn["remove"], "history"), count)
    base, _spent = results["first_baseline"]
    piece(
        f"    beside them: the first deploys of the {count} pipeline environments (fetch + {count})", 1000 * base, count
    )

    out("")
    out("aim (PASS or MISS)")
    ratio = results["ratio"]
    verdict = "PASS" if ratio <= AIM_RATIO else "MISS"
    scope = "" if files == AIM_FILES else f" (measured at {files} files; the issue's aim is at {AIM_FILES})"
    out(
        f"aim: a refresh of {count} branch environments where nothing changed costs about {count} no-op deploys"
        f"{scope} (within {AIM_RATIO}x): (a)/(b) = {ratio:.2f}x: {verdict}"
    )
    out(
        f"  per environment: (a) {_ms(_median(_walls(noops['a'])) / count)} ms, "
        f"(b) {_ms(_median(_walls(noops['b'])) / count)} ms; "
        f"(a)'s fetch {_ms(fetch)} ms, plan (listing, naming) {_ms(listing + plan)} ms, deploys {_ms(deploys)} ms"
    )
    if "profile" in results:
        report_profile(results["profile"], count, out)
    out(f"\n(total run time {time.perf_counter() - results['started']:.0f} s)")
    print("\n".join(lines), flush=True)


def _filesystem(path):
    """The type and mount options of the file system holding ``path`` (``discard`` makes every unlink slower)."""
    best = ("", "?", "?")
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as handle:
        for line in handle:
            _device, point, kind, options = line.split()[:4]
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0]):
                best = (point, kind, options)
    return f"{best[1]} ({best[2]}) mounted at {best[0] or '?'}"


def _slowest(rounds, key):
    """The median over ``rounds`` of the ms of the slowest call to ``key``: in (c), the deploy that changed."""
    return _median([1000 * max(spent.each[key]) for _wall, spent in rounds])


def report_profile(found, count, out):
    for kind, title in (("a", "(a) refresh of the branch environments"), ("b", "(b) the baseline's no-op deploys")):
        rounds, functions = found[kind]
        out("")
        out(f"cProfile: {title}, {rounds} rounds; ms and calls per round (per environment: divide by {count})")
        for ranking, column in (("cumulative", 3), ("own", 2)):
            out(f"  top {TOP} by {ranking} time")
            out(f"  {'calls':>9} {'own ms':>9} {'cum ms':>9}  function")
            for name, calls, own, cumulative in sorted(functions, key=lambda entry, c=column: -entry[c])[:TOP]:
                own_ms, cumulative_ms = own * 1000 / rounds, cumulative * 1000 / rounds
                out(f"  {calls / rounds:>9,.0f} {own_ms:>9,.1f} {cumulative_ms:>9,.1f}  {name}")


def _checkout():
    """This checkout's commit, and the files of envflow's package changed in its work tree: what this run measures."""
    try:
        head = git("log", "-1", "--format=%h %s", cwd=CHECKOUT)[:70]
        changed = git("status", "--porcelain", "--", "envflow", cwd=CHECKOUT)
    except RuntimeError:
        return f"{CHECKOUT} (not a git work tree)"
    files = [line.split(maxsplit=1)[1] for line in changed.splitlines()]
    return f"{head}; " + (f"changed in the work tree: {', '.join(files)}" if files else "envflow's code as committed")


def _code_stamp():
    """The latest mtime (ns) of envflow's modules: it moves when the package is edited during a run."""
    folder = os.path.dirname(envflow.__file__)
    return max(os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder) if name.endswith(".py"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--files", type=int, default=AIM_FILES, help=f"files in the tree (default: {AIM_FILES})")
    parser.add_argument("--branches", type=int, default=30, help="feature branches served (default: 30)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each measurement (default: 7)")
    parser.add_argument("--quick", action="store_true", help="12 files, 3 branches, 1 round: checks the script")
    parser.add_argument("--profile", action="store_true", help="cProfile (a) and (b) even when the aim is met")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.branches, args.rounds = 12, 3, 1
    if args.files < 3 or args.branches < 1 or args.rounds < 1:
        parser.error("give --files of at least 3, --branches and --rounds of at least 1")
    args.load_start = os.getloadavg()[0]
    args.checkout, args.code_stamp = _checkout(), _code_stamp()
    workdir = tempfile.mkdtemp(prefix="envflow-bench-branchenvs-")
    try:
        results = run(args, workdir)
        report(results, args)
    finally:
        if args.keep:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
