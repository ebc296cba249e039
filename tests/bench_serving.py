#!/usr/bin/env python
"""Benchmark the master's serving cost after a deploy: the first highstate after it, against warm caches.

A script, not a test (pytest does not collect it: no ``test_`` prefix). Run it with the
Python of a virtualenv holding Salt, salt-factories, pygit2 and envflow::

    .venvs/salt3008/bin/python tests/bench_serving.py [--sizes 200,20000] [--repeat 5]

After each deploy envflow clears the Salt file server's caches of the saltenv, so that
the next minion is served the new tree (:func:`envflow.saltbus.after_deploy`). Whatever
it clears, the master rebuilds for the next minion that asks: the ``roots`` file list
of the saltenv (a walk of the whole tree, ``<cachedir>/file_lists/roots/<saltenv>.p``)
and the hash of each file a minion asks for (``<cachedir>/roots/hash/<saltenv>/``).
This measures what that costs, as issue 23 item 4 asks: deploy plus the first
``state.apply test=True`` of a 50-state highstate after a one-file change, against the
same with warm caches.

For each size, in a child process importing this checkout (one per size, so that one
size's loaders and caches do not weigh on the next): the preview section's repository
of ``tests/bench_deploy.py`` (``PreviewRepo``: that many files, whose top file applies,
in saltenv ``prod``, 50 ``file.managed`` states each sourcing a ``salt://`` file of the
tree; the other files are data), served the way a master serves it: a masterless
minion (``file_client: local``) in this process through salt-factories' ``Loaders``,
with ``file_roots: {prod: [<prod's directory>]}``, so that Salt's own ``roots`` file
server and its caches are used as on a master. Deploys go through the execution module
``envflow.deploy prod`` as the loader loads it, which clears the caches as a deploy on
the master does (on a masterless minion its file server's options are ``__opts__``).
Untimed: the first deploy and two highstates to warm Salt and the caches up. Then
``--repeat`` rounds of four kinds each:

* ``sourced``: a one-line change to a file one of the 50 states sources, committed on
  prod's branch; timed: ``envflow.deploy prod``, then the first ``state.apply test=True``
  (which shows that one file changing), then the same again (caches warm);
* ``other``: the same with a change to a file no state uses (the test run shows nothing);
* ``sourced, all forgotten`` and ``other, all forgotten``: the same, with
  :func:`envflow.saltbus.refresh_caches` called without changes right after the deploy
  (timed with it): every cache of the saltenv forgotten, what envflow did before
  deploys knew their changes.

Salt keeps a file list for ``fileserver_list_cache_time`` (20 s by default) whatever
envflow keeps, then rebuilds it: a list kept by a deploy saves its rebuild only if it
is younger than that. So each round runs each kind that forgets only what changed
right after one that forgot everything (whose first test run rebuilt the list), the
sourced pair first in even rounds and the other pair first in odd ones; the list's age
at each first test run is reported, and every run in which Salt's expiry, not envflow,
rebuilt it.

After a deploy, the cost is the deploy plus the first test run (and the forgetting,
for the ``all forgotten`` kinds); the baseline is the same deploy plus the second test
run, with the caches warm. Medians over the rounds; the ratio is of the medians, in
wall-clock time (the aim's) and in this process's CPU time, which other work on the
machine disturbs less (the deploy and the test runs start no process). Also
reported per kind: what the deploy told the caches it changed (the ``changes`` it gave
:func:`envflow.saltbus.refresh_caches`: the paths, and whether the list of paths
changed; "unknown" when it gave none and everything was forgotten), the milliseconds of it spent clearing the caches
(:func:`envflow.saltbus.refresh_caches` inside the deploy), the master's share of each
test run (its time in Salt's file server, which the minion calls in process:
``salt.fileserver.FSChan.send``), whether the first test run rebuilt the file list,
and how many files' hashes it recomputed. The minion's test runs do not update the
file server (the ``roots`` update walks the whole tree; ``__fs_update`` is set in the
options, which a masterless minion sets after its first update, but each state run
here starts from the loaders' options again): a master updates it in a process of its
own, every minute, not while it serves.

Every test run is checked: none fails, and its changes are the one sourced file changed
(``sourced``) or none (``other``), so a cache kept stale would stop the run.

Aim (issue 23, item 4): after a one-file change, deploy plus the first test run within
10 % of deploy plus a test run with warm caches, at 200 and 20,000 files. The script
prints PASS or MISS for each size and kind and never fails on them: speed is measured
here, not asserted by tests.
"""

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time

from bench_deploy import (
    BRANCH,
    MANAGED,
    PreviewRepo,
    _child,
    _envflow_imported,
    _median,
    _ms,
    _pygit2_version,
    _salt_version,
    _spread,
)

AIM_FIRST_VS_WARM = 1.10
KINDS = ("sourced", "other", "sourced, all forgotten", "other, all forgotten")
# Each round's order: each kind that forgets only what changed right after one that forgot everything, whose
# first test run rebuilt the file list, so that the list is as young as it can be (see the module's docstring).
ORDERS = (
    ("sourced, all forgotten", "sourced", "other, all forgotten", "other"),
    ("other, all forgotten", "other", "sourced, all forgotten", "sourced"),
)


class ServingRepo(PreviewRepo):
    """``tests/bench_deploy.py``'s preview repository, whose one-file changes change a sourced file or another one."""

    sourced_change = True

    def change(self, sourced):
        """Commit a one-line change to a file a state sources (``sourced``) or to one no state uses; return its id."""
        self.sourced_change = sourced
        return self.change_one_file()

    def _changeable(self):
        if self.sourced_change:
            return self.sourced
        return sorted(set(self.contents) - set(self.sourced) - {"top.sls", "preview.sls"})


def _hashes(folder):
    """The hash cache files under ``folder`` and when each was last written (ns)."""
    found = {}
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            found[path] = os.stat(path).st_mtime_ns
    return found


def _mtime_ns(path):
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


class Clock:
    """Wall and CPU time (this process's, all threads) since it started, in ms: ``wall`` and ``cpu``.

    It starts after a full garbage collection (untimed), so that one of the
    loaders' heap, which can come at any allocation, falls in no timed step.
    """

    def __init__(self):
        gc.collect()
        self.start = time.perf_counter(), time.process_time()

    def read(self):
        wall, cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]
        return {"wall": wall * 1000, "cpu": cpu * 1000}


def _shown(ran):
    """What a test run shows: the names of the states it would change, and how many failed."""
    states = getattr(ran, "raw", ran)
    if not isinstance(states, dict):
        raise RuntimeError(f"the test run failed: {states}")
    changing = sorted(state["name"] for state in states.values() if state["changes"] or state["result"] is None)
    return changing, sum(1 for state in states.values() if state["result"] is False), len(states)


def serving_child(root, size, repeat):
    """In a child process importing this checkout: time deploys and the test runs after them; print them as JSON."""
    import salt.config
    import salt.fileserver
    from saltfactories.utils.functional import Loaders

    from envflow import saltbus
    from envflow.config import parse

    size, repeat = int(size), int(repeat)
    out = os.path.join(root, "out")
    os.makedirs(out)
    repo = ServingRepo(root, size, out)
    prod_path = os.path.join(root, "srv", "prod")
    conf = os.path.join(root, "minion")
    with open(conf, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "id": "web-01",
                "root_dir": os.path.join(root, "salt"),
                "file_client": "local",
                "file_roots": {"prod": [prod_path]},
                "pillar_roots": {},
                "top_file_merging_strategy": "same",
                "saltenv": "prod",
                "log_level_logfile": "warning",
                "envflow": {
                    "repo": repo.path,
                    "environments": [{"name": "prod", "branch": BRANCH, "path": prod_path}],
                },
            },
            handle,
        )
    # As salt-call --local sets it: without it every highstate's module refresh fires an event at a minion
    # daemon's bus that is not there and waits a second for it (salt/state.py State.module_refresh).
    opts = dict(salt.config.minion_config(conf), local=True)
    # A master updates its file server (the roots backend walks every file_roots directory) in a process of its
    # own, every minute; here each state run would, from a copy of these options without it (salt.fileserver.FSChan).
    opts["__fs_update"] = True
    loaders = Loaders(opts)
    cachedir = loaders.opts["cachedir"]
    file_list = os.path.join(cachedir, "file_lists", "roots", "prod.p")
    hash_dir = os.path.join(cachedir, "roots", "hash", "prod")
    prod = parse(loaders.opts["envflow"]).environment("prod")

    # What the deploy tells the caches it changed, and the time it spends clearing them: after_deploy calls
    # refresh_caches through saltbus's globals (its result does not return the changes: they may list every path).
    clearing = []
    refresh_caches = saltbus.refresh_caches

    def timed_refresh(master_opts, env, changes=None):
        clock = Clock()
        try:
            return refresh_caches(master_opts, env, changes)
        finally:
            clearing.append((clock.read()["wall"], changes))

    saltbus.refresh_caches = timed_refresh

    # The master's share of a test run: the time in the file server, which a masterless minion calls in process.
    serving = []
    send = salt.fileserver.FSChan.send

    def timed_send(self, load, *args, **kwargs):
        start = time.perf_counter()
        try:
            return send(self, load, *args, **kwargs)
        finally:
            serving.append((time.perf_counter() - start) * 1000)

    salt.fileserver.FSChan.send = timed_send

    def converge():
        # What the last highstate wrote: each test run then shows the one sourced file changed since, if any.
        for source in repo.sourced:
            with open(repo.managed(source), "wb") as handle:
                handle.write(repo.contents[source])

    def test_run():
        clock = Clock()
        serving.clear()
        ran = loaders.modules.state.apply(test=True, saltenv="prod")
        return dict(clock.read(), serve=sum(serving)), _shown(ran)

    def deploy():
        clock = Clock()
        done = loaders.modules.envflow.deploy("prod")
        elapsed = clock.read()
        if not isinstance(done, dict) or not done.get("changed") or done["new"]["id"] != repo.tip:
            raise RuntimeError(f"the deploy of {repo.tip} did not serve it: {done}")
        if done.get("warning") or done.get("refreshed") != ["prod"]:
            raise RuntimeError(f"the deploy did not clear prod's caches: {done}")
        return elapsed, done

    converge()
    clearing.clear()
    found = {"first_deploy": deploy()[0]["wall"], "rounds": []}
    found["warm_up"] = [test_run()[0]["wall"] for _ in range(2)]

    def measure(kind):
        sourced = kind.startswith("sourced")
        repo.change(sourced)
        clearing.clear()
        timing = {"kind": kind}
        timing["deploy"], done = deploy()
        if len(clearing) != 1:
            raise RuntimeError(f"the deploy cleared the caches {len(clearing)} times, not once: {done}")
        timing["clear"], changes = clearing[0]
        timing["changes"] = None if changes is None else {"paths": changes["paths"], "listing": changes["listing"]}
        if changes is not None and (changes["paths"], changes["listing"]) != ([repo.changed], False):
            raise RuntimeError(f"the deploy of a one-line change to {repo.changed} told the caches {changes}")
        timing["forget"] = {"wall": 0.0, "cpu": 0.0}
        if kind.endswith("all forgotten"):
            clock = Clock()
            saltbus.refresh_caches(loaders.opts, prod)
            timing["forget"] = clock.read()
        list_before, hashes_before = _mtime_ns(file_list), _hashes(hash_dir)
        timing["list_age"] = None if list_before is None else time.time() - list_before / 1e9
        timing["first"], first_shown = test_run()
        list_after, hashes_after = _mtime_ns(file_list), _hashes(hash_dir)
        timing["list_rebuilt"] = list_after != list_before
        timing["rehashed"] = sum(1 for path, ns in hashes_after.items() if hashes_before.get(path) != ns)
        timing["warm"], warm_shown = test_run()
        timing["warm_list_rebuilt"] = _mtime_ns(file_list) != list_after
        timing["warm_rehashed"] = sum(1 for path, ns in _hashes(hash_dir).items() if hashes_after.get(path) != ns)
        wanted = ([repo.managed(repo.changed)] if sourced else [], 0, MANAGED)
        for what, shown in (("first", first_shown), ("warm", warm_shown)):
            if shown != wanted:
                raise RuntimeError(
                    f"{kind}: the {what} test run after changing {repo.changed} showed (changes, failed, states) "
                    f"{shown}, not {wanted}"
                )
        converge()
        return timing

    for number in range(repeat):
        found["rounds"].append([measure(kind) for kind in ORDERS[number % len(ORDERS)]])
    loaders.reset_state()
    print(json.dumps(found))


def measure_size(size, repeat, workdir):
    """Run :func:`serving_child` for ``size`` files in a child process; return its timings."""
    root = os.path.join(workdir, str(size))
    os.makedirs(root)
    return _child([os.path.abspath(__file__), "--child", root, str(size), str(repeat)], "serving")


# -- report -----------------------------------------------------------------


def _by_kind(found):
    kinds = {kind: [] for kind in KINDS}
    for timings in found["rounds"]:
        for timing in timings:
            kinds[timing["kind"]].append(timing)
    return kinds


def _changes_text(timings):
    seen = set()
    for timing in timings:
        changes = timing["changes"]
        seen.add(
            "unknown (everything forgotten)"
            if changes is None
            else f"{len(changes['paths'])} path{'s' * (len(changes['paths']) != 1)}, "
            f"listing {'changed' if changes['listing'] else 'kept'}"
        )
    return "; ".join(sorted(seen))


def _after(timing, clock="wall"):
    """Deploy plus the first test run after it (and the forgetting, for the all forgotten kinds)."""
    return timing["deploy"][clock] + timing["forget"][clock] + timing["first"][clock]


def _baseline(timing, clock="wall"):
    """The same deploy plus a test run with warm caches."""
    return timing["deploy"][clock] + timing["warm"][clock]


def _ratio(timings, clock="wall"):
    return _median([_after(timing, clock) for timing in timings]) / _median(
        [_baseline(timing, clock) for timing in timings]
    )


def report(results, args):
    out = print
    load = os.getloadavg()[0]
    out(f"envflow serving cost after a deploy (issue 23, item 4), {args.repeat} rounds per size")
    out(
        f"Salt {_salt_version()}, pygit2 {_pygit2_version()}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load {args.load_start:.2f} at start and {load:.2f} at end"
    )
    out(f"envflow imported from {_envflow_imported()}")
    out(
        f"highstate: {MANAGED} file.managed states sourcing salt:// files of the tree (tests/bench_deploy.py's "
        "PreviewRepo), saltenv prod,"
    )
    out("  state.apply test=True on a masterless minion in process (salt-factories Loaders, file_client local,")
    out("  file_roots {prod: [<prod's directory>]}: Salt's roots file server and its caches, as on a master)")
    out("deploy = envflow.deploy prod through the loader (fetch, switch, history, clearing the caches);")
    out("  clear = of which refresh_caches inside the deploy; forget = refresh_caches(opts, env) without changes")
    out("  right after it (all forgotten kinds only: what envflow did before deploys knew their changes)")
    out("first = the first test run after it; warm = the same again right after (caches warm)")
    out("after = deploy + forget + first; baseline = deploy + warm; wall-clock medians in ms;")
    out("  ratio = after / baseline (of medians); cpu = the same ratio in this process's CPU time (load matters less)")
    out("file server = the master's share of a test run: its time in Salt's file server (FSChan.send), median ms")
    for size, found in results.items():
        out("")
        out(
            f"{size} files: first deploy {_ms(found['first_deploy'])} ms, warm-up test runs "
            f"{', '.join(_ms(value) for value in found['warm_up'])} ms"
        )
        out(
            f"  {'kind':<24}{'deploy':>8}{'clear':>7}{'forget':>8}{'first':>9}{'warm':>9}"
            f"{'after':>9}{'baseline':>10}{'ratio':>7}{'cpu':>7}"
        )
        for kind, timings in _by_kind(found).items():
            wall = {key: _median([timing[key]["wall"] for timing in timings]) for key in ("deploy", "forget")}
            first = [timing["first"]["wall"] for timing in timings]
            warm = [timing["warm"]["wall"] for timing in timings]
            out(
                f"  {kind:<24}{_ms(wall['deploy']):>8}{_ms(_median([t['clear'] for t in timings])):>7}"
                f"{_ms(wall['forget']):>8}{_ms(_median(first)):>9}{_ms(_median(warm)):>9}"
                f"{_ms(_median([_after(t) for t in timings])):>9}{_ms(_median([_baseline(t) for t in timings])):>10}"
                f"{_ratio(timings):>7.2f}{_ratio(timings, 'cpu'):>7.2f}"
            )
            ages = [timing["list_age"] for timing in timings if timing["list_age"] is not None]
            rebuilt = sum(timing["list_rebuilt"] for timing in timings)
            out(f"  {'':<24}first {_spread(first)}, warm {_spread(warm)}; deploy's changes: {_changes_text(timings)}")
            serve = {run: _median([timing[run]["serve"] for timing in timings]) for run in ("first", "warm")}
            out(
                f"  {'':<24}file server: first {_ms(serve['first'])}, warm {_ms(serve['warm'])}; first run: "
                f"list rebuilt {rebuilt}/{len(timings)}"
                + (f" (its age {min(ages):.1f}-{max(ages):.1f} s)" if ages else " (forgotten)")
                + f", files rehashed {_median([timing['rehashed'] for timing in timings]):.0f}"
            )
            warm_rebuilt = sum(timing["warm_list_rebuilt"] for timing in timings)
            warm_rehashed = sum(timing["warm_rehashed"] for timing in timings)
            if warm_rebuilt or warm_rehashed:
                out(f"  {'':<24}(the warm runs rebuilt the list {warm_rebuilt} times, rehashed {warm_rehashed} files)")
    out("")
    out(
        f"aim: deploy + first test run within {AIM_FIRST_VS_WARM - 1:.0%} of deploy + a warm test run "
        "(wall-clock ratio of medians; the CPU-time ratio beside it)"
    )
    met = missed = 0
    for size, found in results.items():
        for kind, timings in _by_kind(found).items():
            ratio, cpu = _ratio(timings), _ratio(timings, "cpu")
            verdict = "PASS" if ratio <= AIM_FIRST_VS_WARM else "MISS"
            if kind.endswith("all forgotten"):
                out(f"  {size} files, {kind}: {ratio:.2f} (cpu {cpu:.2f}; before, for comparison: no aim)")
                continue
            met, missed = met + (verdict == "PASS"), missed + (verdict == "MISS")
            expired = sum(timing["list_rebuilt"] + timing["warm_list_rebuilt"] for timing in timings)
            note = f" ({expired} of its test runs rebuilt the list after Salt's own expiry)" if expired else ""
            out(f"  {size} files, one {kind} file changed: {ratio:.2f} (cpu {cpu:.2f}) {verdict}{note}")
    out(f"  {met} aims met, {missed} missed")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--sizes", default="200,20000", help="comma-separated file counts (default: 200,20000)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per size, each of every kind (default: 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        serving_child(*args.child)
        return 0
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    if not sizes or min(sizes) < MANAGED + 3 or args.repeat < 1:
        parser.error(f"give sizes of at least {MANAGED + 3} files (some no state uses) and --repeat of at least 1")
    args.load_start = os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="envflow-bench-serving-")
    started = time.perf_counter()
    try:
        results = {}
        for size in sizes:
            print(f"size {size}: measuring ...", file=sys.stderr, flush=True)
            results[size] = measure_size(size, args.repeat, workdir)
        report(results, args)
        print(f"\n(total run time {time.perf_counter() - started:.0f} s)")
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
