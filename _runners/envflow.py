"""
Promote tested Salt code from one environment to the next.

Reads the ``envflow`` key of the master config. Every function returns a small
dict; on failure it holds ``retcode: 1`` and a one-line ``error``, so
``salt-run`` exits non-zero and orchestrate marks the step failed.
"""

import contextlib
import functools
import importlib.util
import os

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    from envflow.errors import EnvflowError
    from envflow.loader import Deferred

    # Imported when a function first uses them: a call imports only what it runs (pygit2 alone costs ~60 ms).
    access = Deferred("envflow.access")
    branchenvs = Deferred("envflow.branchenvs")
    checks = Deferred("envflow.checks")
    diffs = Deferred("envflow.diffs")
    fleet = Deferred("envflow.fleet")
    holds = Deferred("envflow.holds")
    jobs = Deferred("envflow.jobs")
    pipeline = Deferred("envflow.pipeline")
    pushes = Deferred("envflow.pushes")
    records = Deferred("envflow.records")
    remote = Deferred("envflow.remote")
    saltbus = Deferred("envflow.saltbus")
    served = Deferred("envflow.served")
    text = Deferred("envflow.text")
    envflow_config = Deferred("envflow.config")
    envflow_history = Deferred("envflow.history")
    envflow_preview = Deferred("envflow.preview")
    HAS_ENVFLOW = importlib.util.find_spec("pygit2") is not None
except ImportError:
    HAS_ENVFLOW = False

__virtualname__ = "envflow"
# salt-run prints a return with this key through the named outputter (envflow's tables) unless --out is given.
_TABLE = {"outputter": "envflow"}


def __virtual__():
    if not HAS_ENVFLOW:
        return False, "envflow: the envflow package or pygit2 (>= 1.14) is not installed"
    return __virtualname__


def _config():
    return envflow_config.parse(
        __opts__.get("envflow"), resolve=saltbus.sdb_reader(__opts__, globals().get("__utils__"))
    )


@contextlib.contextmanager
def _mirror(config):
    """envflow's mirror of the configured repository, fetched."""
    with remote.Mirror.of(config, __opts__["cachedir"]) as mirror:
        mirror.fetch()
        yield mirror


def _failure(message):
    __context__["retcode"] = 1
    return {"retcode": 1, "error": message}


def _reported(function):
    """Turn an unexpected exception into a failure return (retcode 1, one line), credentials hidden.

    Without it Salt prints a traceback and ``salt-run`` exits 0.
    """

    @functools.wraps(function)
    def reporting(*args, **kwargs):
        # The reactor's runner client keeps one __context__ for every job it runs: a failure's retcode must not
        # make the next job report success False.
        __context__.pop("retcode", None)
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # pylint: disable=broad-except
            text = " ".join(str(exc).split())
            text = access.scrub_held(remote.redact(text))
            return _failure(f"envflow: {function.__name__} failed: {type(exc).__name__}: {text}")

    return reporting


def _fire(env, action, data):
    saltbus.fire_on_master(__opts__, f"salt/envflow/{env}/{action}", data)


def _deploy(config, mirror, env, force=False, reason=None, by=None):
    """Deploy ``env``'s branch tip from the fetched ``mirror`` on this master, as ``envflow.deploy`` does; its summary.

    Called in the runner's own process (no ``salt.cmd``: loading every
    execution module and the grains would cost more than the deploy, and the
    reactor runs pushes in threads, where loading grains is not safe).
    """
    done = pipeline.deploy(config, mirror, env, force=force, reason=reason, by=by)
    return pipeline.deploy_summary(saltbus.after_deploy(config, env, done, lambda: __opts__, _fire, catch_up=True))


def _branches(config, mirror, only=None, fill=False, force=False, by=None):
    """Bring the branch environments in line with the fetched ``mirror`` (see ``envflow.branchenvs.sync``).

    Each change clears this master's caches of its saltenv and fires
    ``salt/envflow/<saltenv>/deployed`` or ``.../removed``; each deploy is
    summarized as ``refresh`` returns it.
    """

    def deployed(env, result):
        return pipeline.deploy_summary(saltbus.after_branch_change(__opts__, env, result, _fire))

    def removed(env, done):
        return saltbus.after_branch_change(__opts__, env, done, _fire, action="removed")

    reserved = branchenvs.reserved_saltenvs(config, __opts__)
    return branchenvs.sync(
        config, mirror, reserved, only=only, fill=fill, force=force, by=by, deployed=deployed, removed=removed
    )


def _branch_errors(report):
    return [f"{saltenv}: {entry['error']}" for saltenv, entry in report["environments"].items() if "error" in entry]


@_reported
def promote(env, rev=None, dry_run=False, force=False, reason=None):
    """
    Promote what was tested in the previous environment into ``env``, then deploy ``env``.

    Runs :py:func:`envflow.promote <salt.modules.envflow.promote>` on the
    master, which says what a promotion checks and refuses; a refusal returns
    ``retcode: 1`` and a one-line ``error``, and changes nothing. Bypasses of
    gates are recorded under the Salt user running this runner.

    env
        The environment to promote into; not the first of the pipeline.

    rev
        An older commit to promote, contained in the commit deployed upstream.

    dry_run : False
        Report the commits, files, closed gates and hand edits the promotion would meet; change nothing.

    force : False
        Discard hand edits in ``env``'s directory and, with ``reason``, bypass
        closed gates; the bypass is recorded with the commit on the remote.

    reason
        Why the gates are bypassed; required when ``force`` bypasses a closed gate.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.promote stage
        salt-run envflow.promote prod dry_run=True
        salt-run envflow.promote prod rev=3f2c9a1
        salt-run envflow.promote prod force=True reason="CVE fix, approved on the phone"
    """
    try:
        return __salt__["salt.cmd"](
            "envflow.promote", env, rev=rev, dry_run=dry_run, force=force, reason=reason, by=_user()
        )
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _failure(str(exc))


def _user():
    """The Salt user running this runner (eauth name, or ``sudo_<name>``), else the operating-system user."""
    user = globals().get("__user__")
    if not user or user == "UNKNOWN":
        import salt.utils.user  # pylint: disable=import-outside-toplevel

        user = salt.utils.user.get_specific_user()
    return user


@_reported
def status(env=None):
    """
    Show each environment (or ``env``) in one table row: its branch, the
    commit it serves and since when, whether that is the branch's tip, how
    many commits wait in the environment before it, how many files were
    changed by hand, its pin and freeze, and the closed gates of the next
    promotion into it; then what :py:func:`check` finds wrong in the master's
    configuration.

    ``--out=json`` (and orchestrate) gets the structured form: per
    environment ``branch``, ``remote`` (the branch tip), ``deployed``,
    ``in_sync``, ``waiting``, ``drift``, ``served`` (``id``, ``summary``,
    ``since``), ``ahead`` (commits on the branch beyond the one served),
    ``pin``, ``freeze``, ``gates`` and, for a directory that cannot be read,
    ``problem``; ``warnings`` when there are any; ``fleet`` once masters
    record what they serve on the remote (see :mod:`envflow.fleet`): per
    environment, per master, its ``commit``, ``since``, ``seen`` (when it last
    reported), ``silent``, ``this`` (the master asked), ``shared_with``
    (the masters deploying into the same directory), ``behind_branch``,
    ``behind_others`` and ``behind_for``; with ``envflow:branch_environments``,
    ``branch_environments``: its ``path``, per saltenv served its ``branch``,
    ``remote``, ``deployed``, ``summary``, ``since``, ``in_sync`` (and
    ``problem`` or ``goes`` when it cannot be read or is to be removed),
    and the branches ``refused`` or ``capped``, one line each (listed
    without ``env`` only); and ``outputter: envflow``, which makes ``salt-run`` print
    the tables.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.status
        salt-run envflow.status prod
        salt-run envflow.status --out=json
    """
    try:
        config = _config()
        with _mirror(config) as mirror:
            report = {"environments": pipeline.status(config, mirror, env)}
            found = fleet.view(
                fleet.read(mirror),
                config,
                pipeline.branch_tips(config, mirror),
                mirror.contains,
                master=__opts__["id"],
            )
            if config.branch_environments is not None and env is None:
                reserved = branchenvs.reserved_saltenvs(config, __opts__)
                report["branch_environments"] = branchenvs.status(config, mirror, reserved)
    except EnvflowError as exc:
        return _failure(str(exc))
    if found:
        report["fleet"] = {name: entries for name, entries in found.items() if env is None or name == env}
    warnings = checks.problems(config, __opts__)
    return {**report, **({"warnings": warnings} if warnings else {}), **_TABLE}


@_reported
def check():
    """
    List the mistakes envflow can see in the master's configuration, one line each, with the fix.

    Checks that each environment's saltenv serves its states directory
    (``file_roots``) and pillar directory (``pillar_roots``) and nothing of
    envflow's own directories, that no top file merges other environments'
    (``top_file_merging_strategy``), that no ``file_roots`` directory outside
    envflow's control serves symlinks (``fileserver_followsymlinks``), that
    environments have the ``target`` their gates need, that pillar
    settings let each environment's minions get their own environment's
    pillar, and that each preview saltenv (``<env>_preview``) serves its
    preview directory and is kept out of highstates that name no saltenv
    (``env_order``, ``state_top_saltenv``); with branch environments, that
    ``file_roots`` and ``pillar_roots`` serve them through ``__env__``, that
    no pattern matches a pipeline environment's branch, and that no
    ``env_order`` or ``state_top_saltenv`` names a branch saltenv. Any problem returns
    ``retcode: 1``; ``envflow.status`` shows the same lines under ``warnings``.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.check
    """
    try:
        found = checks.problems(_config(), __opts__)
    except EnvflowError as exc:
        return _failure(str(exc))
    if not found:
        return {"problems": []}
    return {
        **_failure(f"envflow: {len(found)} problem(s) in the master configuration, listed in problems"),
        "problems": found,
    }


@_reported
def refresh(env=None, force=False, dry_run=False, reason=None):
    """
    Fetch the remote and deploy the tip of each environment's branch (or only ``env``'s).

    With ``envflow:branch_environments`` set, the same fetch also brings the
    branch environments in line with the remote's branches (see
    :doc:`/workflows/branch-environments`): each matching branch's saltenv
    created or updated, each whose branch is gone removed, and the branches
    refused or over the cap named one line each (``branch_environments``:
    ``environments``, ``removed``, ``refused``, ``capped``). ``env`` may name
    a branch environment's saltenv: only that one is refreshed.

    A pinned environment (see :py:func:`rollback`) keeps serving its pinned
    commit, and its entry says so (``pinned``, ``comment``); a frozen one is
    refused (see :py:func:`freeze`).

    force : False
        Deploy even where a directory was edited by hand, discarding the
        edits; with ``reason``, deploy into a frozen environment too (recorded).

    reason
        Why ``force`` overrides a freeze.

    dry_run : False
        Report, per environment, the commit served, the commit a refresh
        would serve (the branch tip, or the pin with ``pinned`` and
        ``comment``), the hand edits that would block it and, for a frozen
        environment it would change, why it would be ``refused``; change nothing.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.refresh
        salt-run envflow.refresh test
        salt-run envflow.refresh feature_new-nginx
        salt-run envflow.refresh prod force=True
        salt-run envflow.refresh prod force=True reason="config fix during the freeze, ok'd by ops"
        salt-run envflow.refresh dry_run=True
    """
    try:
        config = _config()
        branch_env = env is not None and config.branch_environments is not None and env not in config.names
        environments = () if branch_env else config.select(env)
        with _mirror(config) as mirror:
            report, errors, branches = {}, [], None
            for environment in environments:
                try:
                    if dry_run:
                        plan = pipeline.deploy_preview(config, mirror, environment.name, force=force)
                        report[environment.name] = pipeline.preview_summary(plan)
                    else:
                        report[environment.name] = _deploy(
                            config, mirror, environment.name, force=force, reason=reason, by=_user()
                        )
                except EnvflowError as exc:
                    report[environment.name] = {"error": str(exc)}
                    errors.append(f"{environment.name}: {exc}")
            if config.branch_environments is not None and (env is None or branch_env):
                try:
                    branches = _refresh_branches(config, mirror, env, force, dry_run)
                    errors.extend(branches.pop("errors"))
                except EnvflowError as exc:
                    errors.append(f"branch environments: {exc}")
    except EnvflowError as exc:
        return _failure(str(exc))
    # A round of the schedule that changed nothing still says, now and then, that this master is there.
    warning = None if dry_run else saltbus.report_served(__opts__, config, heartbeat=True)
    noted = {"warning": warning} if warning else {}
    if branches is not None:
        noted["branch_environments"] = branches
    if errors:
        return {**_failure("; ".join(errors)), "environments": report, **noted}
    return {"dry_run": True, "environments": report, **noted} if dry_run else {"environments": report, **noted}


def _refresh_branches(config, mirror, env, force, dry_run):
    """``refresh``'s work on the branch environments (all, or the saltenv ``env``): the report, with ``errors``."""
    if dry_run:
        found = branchenvs.dry_run(config, mirror, branchenvs.reserved_saltenvs(config, __opts__))
        if env is not None:
            found["environments"] = {name: entry for name, entry in found["environments"].items() if name == env}
    else:
        only = None if env is None else (lambda saltenv, _branch: saltenv == env)
        found = _branches(config, mirror, only=only, force=force, by=_user())
    errors = _branch_errors(found)
    if env is not None and env not in found["environments"] and env not in found.get("removed", {}):
        errors.append(
            f"envflow: no environment or branch environment named {text.echo(env)}; configured: "
            f"{', '.join(config.names)}; salt-run envflow.status lists the branch environments"
        )
    return {**found, "errors": errors}


@_reported
def pushed(branches, source=None, sender=None, pusher=None, delivery=None, history=False):
    """
    Serve a push: fetch, and deploy the branch tip in each environment whose
    branch is one of ``branches``, exactly as :py:func:`refresh` does (pins,
    freezes and hand edits respected and reported, events fired, history
    recorded).

    With ``history`` (the push moved ``refs/envflow/history``), every
    environment is refreshed too when the holds (pins and freezes) at the
    history's tip are not the ones this master last served: a pin, freeze or
    rollback made on another master reaches this one, and the record of a
    deploy made elsewhere costs one fetch (``holds: unchanged``).

    The shipped reactor (``docs/pipelines/push.conf``) calls it for each
    verified push hook; the push's own commit ids are not used, so a replayed
    hook never rewinds an environment. Pushes that arrive while one is being
    served are handed to it (``handed_off``): it deploys again, once, with
    the newest tip, instead of this call waiting for its lock.

    Branches matching ``envflow:branch_environments:branches`` (the reactor
    passes those pushed and those deleted) have their branch environments
    created, updated or removed after one fetch, and any not served yet
    (a place a deletion freed) are served too: ``branch_environments`` as
    ``refresh`` returns it.

    Returns, per environment, the ``deploys`` made (each as ``refresh``
    returns it) and ``handed_off``, or its ``error``; ``retcode: 1`` when
    one failed.

    branches
        The branches pushed (a list, or one name).

    source, sender, pusher, delivery
        Where the push came from (the git server's kind and address, who
        pushed, the delivery id), for the log and the history.

    history : False
        Whether the push moved envflow's history.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.pushed develop
        salt-run envflow.pushed '[develop, stage]' source=github sender=192.0.2.10
        salt-run envflow.pushed feature/new-nginx
        salt-run envflow.pushed '[]' history=True
    """
    names = [branches] if isinstance(branches, str) else list(branches or [])
    by = pusher or _user()
    if source:
        by = f"{by} (push from {source})"
    mark, holds = os.path.join(__opts__["cachedir"], "envflow", "holds.served"), None
    try:
        config = _config()
        if history:
            with _mirror(config) as mirror:
                holds = pushes.holds_unserved(mirror, mark)
            if holds is not None:
                names = list(dict.fromkeys(names + [env.branch for env in config.environments]))
    except EnvflowError as exc:
        return _failure(str(exc))

    def deploy(env):
        with _mirror(config) as mirror:
            return _deploy(config, mirror, env.name, by=by)

    report = pushes.serve(config, names, deploy)
    errors = [f"{env}: {entry['error']}" for env, entry in report.items() if "error" in entry]
    done = {"branches": names, "sender": sender, "delivery": delivery, "environments": report}
    settings = config.branch_environments
    wanted = [name for name in names if settings is not None and settings.matches(name)]
    if wanted:
        try:
            with _mirror(config) as mirror:
                done["branch_environments"] = _branches(
                    config, mirror, only=lambda _saltenv, branch: branch in wanted, fill=True, by=by
                )
            errors.extend(_branch_errors(done["branch_environments"]))
        except EnvflowError as exc:
            errors.append(f"branch environments: {exc}")
    if history:
        done["holds"] = "unchanged" if holds is None else "served"
        if holds is not None and not errors:
            pushes.holds_served(mark, holds)
    return {**done, **_failure("; ".join(errors))} if errors else done


@_reported
def rollback(env, to=None, reason=None, force=False, dry_run=False):
    """
    Serve the commit ``env`` served before, at once, and pin it there.

    Runs :py:func:`envflow.rollback <salt.modules.envflow.rollback>` on the
    master: it switches back to the tree still on disk (no fetch, no
    checkout), and pins ``env`` so that refreshes, the ``envflow.deployed``
    state and the reactor leave it alone and promotions into it refuse, until
    :py:func:`unpin` or ``envflow.promote <env> force=True reason=...``. The
    branch on the remote is not rewound; :py:func:`status` shows the pin and
    that the branch is ahead of what is served.

    to
        A commit ``env`` served before, to roll back further.

    reason
        Why; required, and recorded with the pin in the history.

    force : False
        Discard hand edits in ``env``'s served tree.

    dry_run : False
        Report the commit served, the one a rollback would serve and the hand edits in the way; change nothing.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.rollback prod reason="500s on checkout after the release"
        salt-run envflow.rollback prod to=3f2c9a1 reason="back to last week's"
        salt-run envflow.rollback prod reason="checking" dry_run=True
    """
    try:
        return __salt__["salt.cmd"](
            "envflow.rollback", env, to=to, reason=reason, force=force, by=_user(), dry_run=dry_run
        )
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _failure(str(exc))


def _hold(operation, env, event, **kwargs):
    """Run the :mod:`envflow.holds` ``operation`` on ``env`` as this runner's user; fire ``event`` on a change.

    The event's ``reason`` is the one given to this call (``None`` for an unpin
    or thaw without one), not that of the hold it lifts; ``commit`` is the
    pinned commit (set or lifted), ``until`` the end of the freeze set.
    """
    try:
        config = _config()
        with _mirror(config) as mirror:
            done = operation(config, mirror, env, by=_user(), **kwargs)
    except EnvflowError as exc:
        return _failure(str(exc))
    if done["changed"]:
        held = done.get("pin") or done.get("freeze")
        lifted = event in ("unpinned", "thawed")
        reason = holds.reason_text(kwargs.get("reason"), event, required=False) if lifted else held["reason"]
        data = {"env": env, "by": _user(), "reason": reason}
        if done.get("pin"):
            data["commit"] = held["commit"]
        if event == "frozen":
            data["until"] = held.get("until")
        saltbus.fire_on_master(__opts__, f"salt/envflow/{env}/{event}", data)
    return done


@_reported
def pin(env, reason=None, dry_run=False):
    """
    Pin ``env`` to the commit it serves now, as :py:func:`rollback` does, without changing what it serves.

    reason
        Why; required, and recorded in the history.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.pin prod reason="quarterly audit: hold prod as it is"
    """
    return _hold(holds.pin, env, "pinned", dry_run=dry_run, reason=reason)


@_reported
def unpin(env, reason=None, dry_run=False):
    """
    Lift the pin of ``env``: the next refresh (or reactor run) serves its branch again.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.unpin prod
        salt-run envflow.unpin prod reason="fix promoted as 8d1e0f2"
    """
    return _hold(holds.unpin, env, "unpinned", dry_run=dry_run, reason=reason)


@_reported
def freeze(env, reason=None, until=None, dry_run=False):
    """
    Freeze ``env``: promotions into it and refreshes of it refuse, naming the reason, who froze it and until when.

    ``force=True reason=...`` on the promotion or refresh overrides the
    freeze, and the override is recorded. Freezing a frozen environment
    replaces its freeze. Rollbacks are not held back.

    reason
        Why; required, and shown in every refusal.

    until
        When the freeze ends by itself: a duration (``90m``, ``2h``, ``3d``)
        or a time (``2026-12-27T08:00:00+00:00``; UTC when no offset is
        given). Without it, the freeze lasts until :py:func:`thaw`.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.freeze prod reason="end-of-year freeze" until=2027-01-04T08:00:00
        salt-run envflow.freeze stage reason="load test running" until=3h
    """
    return _hold(holds.freeze, env, "frozen", dry_run=dry_run, reason=reason, until=until)


@_reported
def thaw(env, reason=None, dry_run=False):
    """
    End the freeze of ``env``.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.thaw prod
    """
    return _hold(holds.thaw, env, "thawed", dry_run=dry_run, reason=reason)


@_reported
def preview(env, rev=None, tgt=None, force=False, autoload=True, timeout=None, gather_job_timeout=None):
    """
    Show what promoting into ``env`` would do on its minions, before it happens: each minion runs the
    candidate's states in test mode, and nothing changes on any minion, branch or in ``env``'s directory.

    Deploys the commit :py:func:`promote` would bring (deployed in the
    environment before ``env``, or ``rev``) into ``env``'s ``preview_path``,
    served as the saltenv ``<env>_preview``, then runs ``state.apply
    test=True saltenv=<env>_preview`` with the candidate's pillar on
    ``env``'s ``target`` (or ``tgt``). Prints one line per minion (``web-01:
    3 to change, 0 failing``), the states that would change or fail below;
    ``--out=json`` gets ``env``, ``commit``, ``jid``, ``minions`` (per
    minion ``changes``, ``failed`` and ``states``), ``no_answer``,
    ``passed`` and ``outcome``. A failing state or a minion that does not
    answer makes it ``retcode: 1``. The result is recorded on the commit for
    the ``previewed`` gate and fires ``salt/envflow/<env>/previewed``.

    The candidate's top files need a ``<env>_preview`` section equal to their
    ``<env>`` one (``prod_preview: *prod``), and the minions must name their
    saltenv: see the docs' "Previewing a promotion".

    rev
        An older commit to preview, contained in the commit deployed upstream.

    tgt
        A compound target to run on instead of ``env``'s ``target``.

    force : False
        Discard hand edits in the preview directory.

    autoload : True
        Set to False when ``env``'s minions set ``autoload_dynamic_modules: False``: only then is a
        commit that changes custom modules (``_modules``, ``_states``, ...) previewed, since a test run
        would otherwise copy them to the minions.

    timeout, gather_job_timeout
        How long to wait for the minions, as for the ``salt`` command (the master's values by default).

    CLI Example:

    .. code-block:: bash

        salt-run envflow.preview prod
        salt-run envflow.preview prod rev=3f2c9a1 tgt='G@role:web'
        salt-run envflow.preview prod --out=json
    """
    waits = {
        key: value
        for key, value in (("timeout", timeout), ("gather_job_timeout", gather_job_timeout))
        if value is not None
    }
    try:
        config = _config()
        with _mirror(config) as mirror:
            found = envflow_preview.run(
                config,
                mirror,
                env,
                __opts__,
                by=_user(),
                rev=rev,
                target=tgt,
                force=force,
                autoload=autoload,
                waits=waits,
            )
    except EnvflowError as exc:
        return _failure(str(exc))
    data = {key: found[key] for key in ("env", "commit", "jid", "passed", "outcome", "no_answer")}
    counts = envflow_preview.counts(found)
    saltbus.fire_on_master(__opts__, f"salt/envflow/{env}/previewed", {**data, "minions": counts, "by": _user()})
    if not found["passed"]:
        found = {
            **found,
            **_failure(f"envflow: the preview of {text.short(found['commit'])} in {env} {found['outcome']}"),
        }
    return {**found, **_TABLE}


def _target_minions(environment):
    """The minions ``environment``'s compound ``target`` matches, or ``None`` when it has no target."""
    return saltbus.matched_minions(__opts__, environment.target) if environment.target else None


@_reported
def minions(env):
    """
    List the minions an environment serves: those its ``target`` (a compound target) matches.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.minions stage
    """
    try:
        config = _config()
        environment = config.environment(env)
    except EnvflowError as exc:
        return _failure(str(exc))
    if not environment.target:
        index = config.environments.index(environment)
        return _failure(
            f"envflow:environments:{index}:target: not set for {env}; add a compound target such as G@env:{env}"
        )
    return {"env": env, "target": environment.target, "minions": _target_minions(environment)}


@_reported
def verify(env, jid=None, dry_run=False):
    """
    Record that the commit ``env`` serves passed there, for the ``verified`` gate of the next environment.

    With ``jid``, first checks that job's returns in the job cache: it must
    be a highstate (``state.highstate``, or ``state.apply`` without mods, not
    in test mode) started after ``env`` began serving the commit, every
    targeted minion (and every minion of ``env``'s ``target``) must have
    answered, and no state may have failed; otherwise nothing is recorded and
    the failed minions and states are named. ``jid=last`` takes the newest
    such highstate since the commit was deployed that every targeted minion
    has answered. The record goes to the remote
    repository, as a git note on the commit (``refs/notes/envflow``), with
    this master's id and the minions the job passed on. With several masters,
    the gate opens once the verifications of the commit cover the minions of
    ``env`` on every master (see the fleet status): run ``verify`` on each
    master whose minions returned their job to it alone. Without ``jid``,
    the record is your word for every minion of every master.

    dry_run : False
        Run every check and report what would be recorded; record nothing.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.verify stage jid=20261127211425123456
        salt-run envflow.verify stage jid=last
        salt-run envflow.verify stage jid=last dry_run=True
        salt-run envflow.verify stage
    """
    try:
        config = _config()
        environment = config.environment(env)
        current = served.ServedDir(environment.path).deployed()
        if current is None:
            return _failure(f"envflow: nothing is deployed in {env}, so there is nothing to verify")
        entry = {"by": _user(), "master": str(__opts__["id"])}
        if jid is not None:
            jid = entry["jid"] = jobs.verified_job(
                env,
                current,
                jid,
                jids=lambda: __salt__["jobs.list_jobs"](search_function=list(jobs.STATE_FUNCTIONS)),
                job_of=__salt__["jobs.list_job"],
                minions=_target_minions(environment) or (),
                utc=__opts__.get("utc_jid", False),
            )
            # The minions it passed on: the verified gate counts them against every master's.
            entry["minions"] = sorted(__salt__["jobs.list_job"](jid).get("Result") or {})
        report = {"env": env, "commit": current["id"], "verified_by": entry["by"], "jid": jid}
        report.update((key, entry[key]) for key in ("master", "minions") if key in entry)
        if dry_run:
            return {"dry_run": True, **report}
        with _mirror(config) as mirror:
            records.add(mirror, current["id"], "verified", env, entry)
        return report
    except EnvflowError as exc:
        return _failure(str(exc))


@_reported
def approve(env, rev=None, dry_run=False):
    """
    Approve a commit for promotion into ``env``, for its ``approvals`` gate.

    The commit is ``rev``, or the one deployed in the environment before
    ``env`` (what the next promotion would bring). The approver is the Salt
    user running the command (the eauth name, or ``sudo_<name>`` under sudo),
    else the operating-system user; one approval per person counts. The record
    goes to the remote repository, as a git note on the commit.

    dry_run : False
        Report the commit, who would approve it and the approvals it has; record nothing.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.approve prod
        salt-run envflow.approve prod rev=3f2c9a1
        salt-run envflow.approve prod dry_run=True
    """
    try:
        config = _config()
        environment = config.environment(env)
        upstream = config.upstream(env)
        if upstream is None:
            return _failure(f"envflow: {env} is the first environment of the pipeline; nothing is promoted into it")
        with _mirror(config) as mirror:
            if rev is None:
                tested = pipeline.deployed_id(upstream)
                if tested is None:
                    return _failure(f"envflow: nothing is deployed in {upstream.name}; give rev=<commit> to approve")
                rev = tested
            commit = str(mirror.commit(rev).id)
            if dry_run:
                found = records.read(mirror, commit)
            else:
                found = records.add(mirror, commit, "approved", env, {"by": _user()})
        people = sorted({entry["by"] for entry in records.entries(found, "approved", env)})
        report = {"env": env, "commit": commit, "approvals": people, "needed": environment.gates.approvals}
        return {"dry_run": True, "approver": _user(), **report} if dry_run else report
    except EnvflowError as exc:
        return _failure(str(exc))


@_reported
def backport(env, dry_run=False):
    """
    Bring the commits that only ``env``'s branch holds (a hotfix committed on
    ``master``) into the first environment's branch (``develop``), so that
    they can be promoted through the pipeline from there.

    A fast-forward where ``develop`` has not moved since, else a merge commit
    made on the remote (without any working tree), authored and committed by
    the Salt user running this runner; then ``develop`` holds ``env``'s
    branch tip itself, so that ``envflow.refresh`` of the first environment
    and each ``envflow.promote`` after it fast-forward. The back-merge is
    recorded in the history and fires ``salt/envflow/<env>/backported``.
    A conflict changes nothing and returns ``retcode: 1`` with the files
    under ``conflicts``; so does a race with another change of ``develop``.

    env
        The environment whose branch holds the commits; not the first of the pipeline.

    dry_run : False
        Report the commits, whether it would fast-forward or merge, and any conflicts; change nothing.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.backport prod
        salt-run envflow.backport prod dry_run=True
    """
    from envflow import backport as backmerge  # imported here: the module has this function's name

    user = _user()
    try:
        config = _config()
        with _mirror(config) as mirror:
            done = backmerge.backport(config, mirror, env, by=user, dry_run=dry_run)
    except backmerge.Conflicted as exc:
        return {**_failure(str(exc)), "conflicts": exc.conflicts, "commits": exc.commits}
    except EnvflowError as exc:
        return _failure(str(exc))
    report = done.report
    if report["kind"] and not dry_run:
        data = {key: report[key] for key in ("env", "into", "branch", "old", "new", "kind")}
        saltbus.fire_on_master(
            __opts__, f"salt/envflow/{env}/backported", {**data, "commits": done.commits, "by": user}
        )
    return report


@_reported
def diff(env, other=None, patch=False):
    """
    Show what ``salt-run envflow.promote <env>`` would bring, or, with
    ``other``, how what ``other`` serves differs from what ``env`` serves.

    For a promotion, the commit compared is the one the promotion would take
    (deployed in the environment before ``env``), against the tip of
    ``env``'s branch. When the promotion would be refused because the branch
    diverged, the comparison is still shown, ``dropped`` lists the commits only
    the branch has and ``blocked`` says why; the diff itself succeeds.

    Returns ``from`` and ``to`` (commit ids), ``commits`` (those ``to`` brings),
    ``dropped`` (those only ``from`` has), ``files`` (``<status> <path> (+added
    -removed)``, or ``(binary)``) and ``totals``; long lists end with ``... and
    N more``.

    other
        A second environment: compare the commits the two environments serve,
        from ``env``'s to ``other``'s.

    patch : False
        Add the unified diff as ``patch``, cut after 500 lines or 64 KiB (it
        then says how much was cut).

    CLI Example:

    .. code-block:: bash

        salt-run envflow.diff prod
        salt-run envflow.diff prod patch=True
        salt-run envflow.diff stage prod
        salt-run envflow.diff stage prod --out=json
    """
    try:
        config = _config()
        for name in (env, other) if other is not None else (env,):
            config.environment(name)
        with _mirror(config) as mirror:
            if other is None:
                report = diffs.promotion(config, mirror, env, patch=bool(patch))
            else:
                report = diffs.served(config, mirror, env, other, patch=bool(patch))
    except EnvflowError as exc:
        return _failure(str(exc))
    return {**report, **_TABLE}


@_reported
def history(env=None, limit=20):
    """
    List what envflow changed (in ``env`` only, if given), newest first, one
    table row per change: when, what, where, the commits it moved between,
    who, why and on which master.

    The history lives in the automation repository (``refs/envflow/history``,
    see :doc:`/workflows/history`), so every master shows the same.
    ``--out=json`` (and orchestrate) gets ``history``, the list of entries,
    each with ``action``, ``env``, ``by``, ``at``, ``from``, ``to``,
    ``reason``, ``master`` and what the action adds.

    limit : 20
        How many entries to list at most.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.history
        salt-run envflow.history prod
        salt-run envflow.history feature_new-nginx
        salt-run envflow.history prod limit=100
        salt-run envflow.history --out=json
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return _failure(f"envflow: limit must be a positive whole number, not {text.echo(limit)}; for example limit=50")
    try:
        config = _config()
        if env is not None and (config.branch_environments is None or env in config.names):
            config.environment(env)  # a branch environment's saltenv is not configured by name
        with _mirror(config) as mirror:
            found = envflow_history.entries(mirror, env, limit)
    except EnvflowError as exc:
        return _failure(str(exc))
    return {"history": found, **_TABLE}
