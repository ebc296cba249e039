"""Branch environments: each branch matching ``envflow:branch_environments:branches`` served as a saltenv of its own.

Salt (3006 and later) serves a saltenv that ``file_roots`` does not list
through its ``__env__`` entry, with ``__env__`` in the root replaced by the
saltenv (``salt/fileserver/roots.py``); ``pillar_roots`` the same
(``salt/pillar/__init__.py``). So ``file_roots: {__env__:
[/srv/salt/branches/__env__]}`` serves saltenv ``feature_x`` from
``/srv/salt/branches/feature_x``, and envflow only keeps that directory exact,
switched atomically, and gone when the branch goes. For ``path``
``/srv/salt/branches``::

    /srv/salt/branches/feature_x -> ../.branches.envflow/feature_x/a   the served tree (a relative symlink)
    /srv/salt/.branches.envflow/feature_x/                             its two slots, as any environment's home
    /srv/salt/.branches.envflow/feature_x/branch                       the branch it serves
    /srv/salt/.branches.envflow/.lock                                  held while branch environments change
    /srv/salt/.branches.envflow/.aside/<saltenv>                       what stood at a new environment's place
    /srv/salt/.branches.envflow/.removed.<id>/                         a removed home, deleted after the lock

The bookkeeping lives beside ``path``, never inside it: Salt maps any saltenv
a minion names through ``__env__``, so a home inside ``path`` would be served
as a saltenv of its own (its pillar with it). ``path/__env__``, the empty
directory salt-master makes for the root, is never a branch environment.

A branch's saltenv is its name with each ``/`` made ``_``
(:func:`saltenv_of`). A name Salt would not take, one that equals a pipeline
environment's saltenv or another branch's (letter case aside), or one over
:data:`MAX_NAME` characters is refused in one line and the others are
served. At most ``max`` are served: those served keep their place, new ones
take the free places in name order.
"""

import contextlib
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field

from envflow import holds, pipeline, submodules
from envflow.config import PREVIEW_SUFFIX, Environment
from envflow.errors import EnvflowError
from envflow.locking import held
from envflow.served import ServedDir
from envflow.text import echo

# Longest saltenv served: it becomes a directory name, and a part of Salt's cache paths.
MAX_NAME = 100
_SALTENV = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_BRANCH_FILE = "branch"
# Homes of removed branch environments, renamed to be deleted once the lock is let go (no saltenv starts with a dot).
_REMOVED = ".removed."


def saltenv_of(branch):
    """The saltenv ``branch`` is served as: its name with each ``/`` made ``_`` (``feature/x`` -> ``feature_x``)."""
    return branch.replace("/", "_")


def home_of(settings, saltenv):
    """envflow's directory for the branch environment ``saltenv``: its slots, lock and ``branch`` file."""
    return os.path.join(settings.home, saltenv)


def environment(settings, saltenv, branch):
    """The branch environment ``saltenv`` as an :class:`~envflow.config.Environment` at ``<path>/<saltenv>``."""
    return Environment(
        name=saltenv,
        branch=branch,
        path=os.path.join(settings.path, saltenv),
        states=settings.states,
        pillar=settings.pillar,
    )


def served_dir(settings, saltenv):
    """The :class:`~envflow.served.ServedDir` of the branch environment ``saltenv``.

    What stood at its path before envflow is moved aside to
    ``<home>/.aside/<saltenv>``: beside ``path`` it would be served as a saltenv of its own.
    """
    aside = os.path.join(settings.home, ".aside", saltenv)
    return ServedDir(os.path.join(settings.path, saltenv), home_of(settings, saltenv), aside)


def reserved_saltenvs(config, opts=None):
    """Saltenvs no branch may take: the pipeline's (and previews'), and those the master's roots list by name."""
    names = set()
    for env in config.environments:
        names.add(env.name)
        if env.preview_path is not None:
            names.add(f"{env.name}{PREVIEW_SUFFIX}")
    for key in ("file_roots", "pillar_roots"):
        roots = (opts or {}).get(key)
        if isinstance(roots, dict):
            names.update(str(name) for name in roots if name != "__env__")
    return names


def _name_problem(branch, saltenv):
    """Why ``saltenv`` (made from ``branch``) cannot be served, in one line; ``None`` when it can."""
    shown = echo(branch, limit=60)
    if len(saltenv) > MAX_NAME:
        return f"branch {shown}: its saltenv would be {len(saltenv)} characters, over {MAX_NAME}; use a shorter name"
    if saltenv == "__env__":
        return f"branch {shown}: __env__ is the placeholder of Salt's roots, not a saltenv; rename the branch"
    if not _SALTENV.fullmatch(saltenv) or ".." in saltenv:
        return (
            f"branch {shown}: its saltenv {echo(saltenv, limit=60)} is not a name Salt takes as a saltenv (letters, "
            "digits, '_', '-' and '.', not first '.' or '-', no '..' and no control character); rename the branch"
        )
    return None


@dataclass
class Plan:
    """What the branch environments should be, given the remote's branches and what is served.

    ``serve`` maps each saltenv to serve to its branch; ``refused`` each
    branch whose name cannot be served to why (one line); ``capped`` the
    branches not served for the cap, to the line saying so; ``remove`` the
    saltenvs served now that go, to their branch.
    """

    serve: dict = field(default_factory=dict)
    refused: dict = field(default_factory=dict)
    capped: dict = field(default_factory=dict)
    remove: dict = field(default_factory=dict)


def served(settings):
    """The branch environments on disk: ``{saltenv: branch}`` for each home holding the branch it serves."""
    found = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for saltenv in sorted(os.listdir(settings.home)):
            try:
                with open(os.path.join(settings.home, saltenv, _BRANCH_FILE), encoding="utf-8") as handle:
                    found[saltenv] = handle.read().strip()
            except (FileNotFoundError, NotADirectoryError):
                continue
    return found


def plan(settings, branches, on_disk, reserved=()):
    """The :class:`Plan` for the remote's ``branches`` (all of them), ``on_disk`` (:func:`served`) and ``reserved``.

    A saltenv served keeps its branch: a new branch whose saltenv is the same
    (letter case aside) is refused. New branches whose saltenvs clash among
    themselves are all refused, so which one is served never depends on order.
    """
    found = Plan()
    taken = {name.lower(): name for name in reserved}
    held_by = {saltenv.lower(): (saltenv, branch) for saltenv, branch in on_disk.items()}
    wanted = {}  # lowered saltenv -> [(saltenv, branch)]
    for branch in sorted(branches):
        if not settings.matches(branch):
            continue
        saltenv = saltenv_of(branch)
        problem = _name_problem(branch, saltenv)
        if problem is None and saltenv.lower() in taken:
            problem = (
                f"branch {echo(branch, limit=60)}: its saltenv {saltenv} is {taken[saltenv.lower()]}, a saltenv the "
                "pipeline or the master's roots already serve (letter case aside); rename the branch"
            )
        if problem:
            found.refused[branch] = problem
            continue
        wanted.setdefault(saltenv.lower(), []).append((saltenv, branch))
    chosen = {}
    for key, group in wanted.items():
        holder = held_by.get(key)
        if holder is not None and holder in group:
            chosen[holder[0]] = holder[1]
            for saltenv, branch in group:
                if (saltenv, branch) != holder:
                    found.refused[branch] = (
                        f"branch {echo(branch, limit=60)}: its saltenv {saltenv} is (letter case aside) {holder[0]}, "
                        f"served for branch {echo(holder[1], limit=60)}; rename the branch"
                    )
        elif len(group) == 1:
            saltenv, branch = group[0]
            chosen[saltenv] = branch
        else:
            names = " and ".join(echo(branch, limit=60) for _saltenv, branch in group)
            every, fix = ("both", "rename one") if len(group) == 2 else ("all", "rename all but one")
            for saltenv, branch in group:
                found.refused[branch] = (
                    f"branch {echo(branch, limit=60)}: {names} {every} make saltenv {saltenv} "
                    f"(letter case aside); {fix}"
                )
    # Both in branch-name order: lowering max keeps the first branches, as a first plan would serve them.
    kept = sorted((saltenv for saltenv, branch in chosen.items() if on_disk.get(saltenv) == branch), key=chosen.get)
    new = sorted((saltenv for saltenv in chosen if saltenv not in kept), key=chosen.get)
    for index, saltenv in enumerate(kept + new):
        if index < settings.max:
            found.serve[saltenv] = chosen[saltenv]
        else:
            found.capped[chosen[saltenv]] = (
                f"branch {echo(chosen[saltenv], limit=60)}: waits for a place: {settings.max} branch environments "
                "are served, the most envflow:branch_environments:max allows; delete a branch or raise max"
            )
    found.remove = {saltenv: branch for saltenv, branch in on_disk.items() if found.serve.get(saltenv) != branch}
    return found


def _next_tick(directory):
    """Wait until the file system stamps a file later than any this process wrote before.

    Salt keeps one hash cache for every saltenv served through ``__env__``
    (``roots/hash/__env__/<path>``, ``hash:mtime``): the same path of two
    branch environments written within one clock tick would share an mtime,
    and a minion of one could be told the other's hash. Each deploy's files
    are written a tick after the previous deploy's (deploys are serialized by
    the branch environments' lock), so their mtimes always differ.
    """
    probe = os.path.join(directory, ".tick")  # no saltenv starts with a dot: never a branch environment's home
    with open(probe, "w", encoding="utf-8"):
        pass
    first = os.stat(probe).st_mtime_ns
    for _attempt in range(1000):
        time.sleep(0.001)
        os.utime(probe)
        if os.stat(probe).st_mtime_ns != first:
            return


def _note_branch(home, branch):
    """Write the ``branch`` file of a branch environment's home (before its first deploy: then it is listed)."""
    path = os.path.join(home, _BRANCH_FILE)
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as handle:
        if handle.read().strip() == branch:
            return
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(branch + "\n")
    os.replace(path + ".tmp", path)


def _deploy(config, mirror, settings, env, force, by):
    """Deploy the tip of ``env``'s branch into its directory, by the engine every environment uses; its result."""
    served = served_dir(settings, env.name)
    home = served.layout.home
    commit = mirror.commit(str(mirror.tip(env.branch)))
    with served.deploying(mirror.objects, commit, submodules.Composer(mirror, config.submodules)) as deployment:
        _note_branch(home, env.branch)
        before = deployment.served_id()
        result = deployment.switch(deployment.prepare(force=force))
        if result["changed"]:
            result["changes"] = pipeline.tree_changes(mirror, before, commit.id, deployment.switched)
            entry = {"action": "deployed", "env": env.name, "branch": env.branch, "by": by, "from": before}
            entry["to"] = str(commit.id)
            warning = holds.record_after(mirror, entry)
            if warning:
                result["warning"] = warning
    return result


def _remove(mirror, settings, saltenv, branch, by):
    """Stop serving ``saltenv``: its symlink goes in one unlink (a reader sees the tree or nothing), then its home.

    Returns ``{"branch", "commit"}`` (the commit it served) and ``warning`` when the history was not written.
    """
    served = served_dir(settings, saltenv)
    home = served.layout.home
    with served.locked():
        commit = pipeline.served_id(served)
        if served.layout.served_slot() is not None:
            os.unlink(served.path)
            parent = os.open(settings.path, os.O_RDONLY)
            try:
                os.fsync(parent)
            finally:
                os.close(parent)
        # The branch file first: an interrupted removal leaves a home no longer listed, never half of one.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(home, _BRANCH_FILE))
        # Out of the way in one rename; deleting its two trees (about 100 ms at 200 files) waits for the lock's end.
        os.rename(home, os.path.join(settings.home, f"{_REMOVED}{uuid.uuid4().hex}"))
    done = {"branch": branch, "commit": commit}
    entry = {"action": "removed", "env": saltenv, "branch": branch, "by": by, "from": commit}
    warning = holds.record_after(mirror, entry)
    if warning:
        done["warning"] = warning
    return done


def sync(config, mirror, reserved=(), only=None, fill=False, force=False, by=None, deployed=None, removed=None):
    """Bring the branch environments in line with the remote's branches, as one transaction under their lock.

    ``mirror`` must have been fetched by the caller just before, and that
    fetch must have succeeded (it raises otherwise): its branches are then
    the remote's, and only then does a branch found gone remove its
    environment. ``only(saltenv, branch)`` limits the work to the branch
    environments it accepts (those of a push, or the one named), with
    ``fill`` also to those not served yet (a place a removal freed, a first
    deploy that failed); the plan (names, the cap) is made from every branch
    all the same. ``deployed(env, result)`` runs after each deploy, ``removed(env, done)``
    after each removal (the caller clears the master's caches and fires
    events there). Returns ``{"environments": {saltenv: result or
    {"error"}}, "removed": {saltenv: {"branch", "commit"}}, "refused":
    {branch: line}, "capped": {branch: line}}``; a deploy that fails never
    stops the others.
    """
    settings = config.branch_environments
    report = {"environments": {}, "removed": {}, "refused": {}, "capped": {}}
    os.makedirs(settings.home, exist_ok=True)
    os.makedirs(settings.path, exist_ok=True)
    try:
        with held(os.path.join(settings.home, ".lock"), "the branch environments"):
            found = plan(settings, mirror.branches(), served(settings), reserved)
            report["refused"], report["capped"] = found.refused, found.capped
            for saltenv, branch in found.remove.items():
                if only is not None and not only(saltenv, branch):
                    continue
                done = _remove(mirror, settings, saltenv, branch, by)
                if removed is not None:
                    done = removed(environment(settings, saltenv, branch), done)
                report["removed"][saltenv] = done
            on_disk = served(settings)
            for saltenv, branch in found.serve.items():
                if only is not None and not only(saltenv, branch) and not (fill and on_disk.get(saltenv) != branch):
                    continue
                env = environment(settings, saltenv, branch)
                try:
                    result = _deploy(config, mirror, settings, env, force, by)
                except EnvflowError as exc:
                    report["environments"][saltenv] = {"branch": branch, "error": str(exc)}
                    continue
                if result["changed"]:
                    _next_tick(settings.home)
                if deployed is not None:
                    result = deployed(env, result)
                report["environments"][saltenv] = {"branch": branch, **result}
    finally:
        _empty_trash(settings)
    return report


def _empty_trash(settings):
    """Delete the homes :func:`_remove` renamed aside: this run's, and any a killed run left."""
    for name in os.listdir(settings.home):
        if name.startswith(_REMOVED):
            shutil.rmtree(os.path.join(settings.home, name), ignore_errors=True)


def dry_run(config, mirror, reserved=()):
    """What :func:`sync` would do, changing nothing: per saltenv its ``branch``, ``action`` (``create``,
    ``update``, ``none`` or ``remove``), ``old`` and ``new`` commits (and the branch it ``replaces`` when
    another branch's environment of that name goes); and the ``refused`` and ``capped`` branches."""
    settings = config.branch_environments
    on_disk = served(settings)
    found = plan(settings, mirror.branches(), on_disk, reserved)
    report = {saltenv: {"branch": branch, "action": "remove"} for saltenv, branch in found.remove.items()}
    for saltenv, branch in found.serve.items():
        new = str(mirror.tip(branch))
        # A saltenv whose branch changes (one went, another took its name) is removed, then created.
        replaces = {"replaces": report[saltenv]["branch"]} if saltenv in report else {}
        try:
            info = None if replaces else served_dir(settings, saltenv).deployed()
        except EnvflowError as exc:
            report[saltenv] = {"branch": branch, "error": str(exc)}
            continue
        old = info["id"] if info else None
        action = "create" if on_disk.get(saltenv) != branch else ("none" if old == new else "update")
        report[saltenv] = {"branch": branch, "action": action, "old": old, "new": new, **replaces}
    return {"environments": report, "refused": found.refused, "capped": found.capped}


def status(config, mirror, reserved=()):
    """The branch environments for ``envflow.status``: each served one, and the branches refused or over the cap.

    ``{"environments": {saltenv: {branch, deployed, summary, since, remote,
    in_sync}}, "refused": {branch: line}, "capped": {branch: line}}``; the
    mirror must be fetched. A saltenv whose directory cannot be read says
    why in ``problem``.
    """
    settings = config.branch_environments
    on_disk = served(settings)
    found = plan(settings, mirror.branches(), on_disk, reserved)
    report = {}
    for saltenv, branch in sorted(on_disk.items()):
        tip = mirror.tip(branch)
        entry = report[saltenv] = {"branch": branch, "remote": str(tip) if tip is not None else None}
        try:
            info = served_dir(settings, saltenv).deployed()
        except EnvflowError as exc:
            entry.update(deployed=None, in_sync=False, problem=str(exc))
            continue
        entry.update(
            deployed=info["id"] if info else None,
            summary=info["summary"] if info else None,
            since=info["deployed_at"] if info else None,
            in_sync=bool(info) and info["id"] == entry["remote"],
        )
        if saltenv in found.remove:
            entry["goes"] = "its branch is gone or no longer served: the next refresh removes it"
    return {"path": settings.path, "environments": report, "refused": found.refused, "capped": found.capped}
