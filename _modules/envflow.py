"""
Serve commits of the automation repository in Salt environment directories.

An environment's directory (its ``path`` in the ``envflow`` configuration,
the directory ``file_roots`` maps to its saltenv) is a symlink to a tree that
holds exactly one commit. A deploy prepares the new tree beside it and
switches the symlink in one rename, so minions see the old tree or the new
one, never a mix.

The configuration is the ``envflow`` key of the minion config or pillar (on
the master, through ``salt-run salt.cmd`` or the runner, the master config):

.. code-block:: yaml

    envflow:
      repo: /srv/git/automation.git
      environments:
        - {name: test, branch: develop, path: /srv/salt/test}
        - {name: stage, branch: stage, path: /srv/salt/stage, target: "G@env:stage"}
        - name: prod
          branch: master
          path: /srv/salt/prod
          target: "G@env:prod"
          gates: {verified: true, soak: 2h, approvals: 2}
"""

import contextlib
import importlib.util
import logging
import os

from salt.exceptions import CommandExecutionError

try:
    from envflow.errors import EnvflowError
    from envflow.loader import Deferred

    # Imported when a function first uses them: a call imports only what it runs (pygit2 alone costs ~60 ms).
    envflow_config = Deferred("envflow.config")
    holds = Deferred("envflow.holds")
    pipeline = Deferred("envflow.pipeline")
    remote = Deferred("envflow.remote")
    saltbus = Deferred("envflow.saltbus")
    served = Deferred("envflow.served")
    HAS_PYGIT2 = importlib.util.find_spec("pygit2") is not None
except ImportError:
    HAS_PYGIT2 = False

log = logging.getLogger(__name__)

__virtualname__ = "envflow"


def __virtual__():
    if not HAS_PYGIT2:
        return False, "envflow: the pygit2 library (>= 1.14) is not installed"
    return __virtualname__


def _config():
    raw = __opts__.get("envflow") or __pillar__.get("envflow")  # pylint: disable=undefined-variable
    return envflow_config.parse(raw, resolve=saltbus.sdb_reader(__opts__, globals().get("__utils__")))


@contextlib.contextmanager
def _mirror(config, fetch=True):
    """envflow's mirror of the configured repository, fetched first unless ``fetch`` is false."""
    with remote.Mirror.of(config, __opts__["cachedir"]) as mirror:
        if fetch:
            mirror.fetch()
        yield mirror


def _salt_error(exc):
    # Not SaltInvocationError: salt-call would print the whole docstring after the one-line message.
    return CommandExecutionError(str(exc))


def _is_master():
    return __opts__.get("__role") == "master"


def _fileserver_opts(config):
    """The options of the file server that serves this host's directories, or ``None``.

    On the master (runner, ``salt.cmd``, orchestrate) and on a masterless
    minion that is ``__opts__``; a minion on the master's host reads the
    master's config (``envflow:master_config``, or ``master`` beside its own).
    """
    if _is_master() or __opts__.get("file_client") == "local":
        return __opts__
    path = config.master_config or os.path.join(
        os.path.dirname(__opts__.get("conf_file") or "/etc/salt/minion"), "master"
    )
    if not os.path.isfile(path):
        return None
    import salt.config  # pylint: disable=import-outside-toplevel

    return salt.config.master_config(path)


def _fire(env, action, data):
    """Fire ``salt/envflow/<env>/<action>`` on the master's event bus, from the master or a minion."""
    tag = f"salt/envflow/{env}/{action}"
    if _is_master():
        saltbus.fire_on_master(__opts__, tag, data)
    elif __opts__.get("file_client") != "local":
        try:
            __salt__["event.fire_master"](data, tag)
        except Exception as exc:  # pylint: disable=broad-except
            # An event that cannot be sent must not undo a deploy that is done.
            log.warning("envflow: could not fire %s: %s", tag, exc)


def _after_deploy(config, env, served):
    """Once the new tree is served: refresh the master's caches (and minions), fire ``deployed``; return the result."""
    return saltbus.after_deploy(config, env, served, lambda: _fileserver_opts(config), _fire)


def deploy(env, rev=None, force=False, branch=None, test=False, reason=None, by=None):
    """
    Make an environment's directory serve exactly one commit's tree.

    By default the commit is the tip of the environment's branch on the
    remote. The new tree is prepared beside the served one and switched in
    one rename; deploying the commit already served writes nothing.

    env
        The environment (saltenv) to deploy, as named in the ``envflow`` configuration.

    rev
        A commit id, tag or branch to deploy instead of the branch tip.

    branch
        Deploy the tip of this branch instead of the environment's own.

    force : False
        Deploy even though files in the served tree were edited by hand,
        discarding those edits (see :py:func:`drift`); with ``reason``, deploy
        into a frozen environment (recorded in the history).

    reason
        Why ``force`` overrides a freeze.

    by
        Who deploys, for the history (default: the operating-system user).

    test : False
        Report the commit served now, the one a deploy would serve and the
        hand edits that would block it; change nothing.

    Returns the old and new commits, whether anything changed, the number of
    files added, modified and deleted, the directory moved aside on a first
    deploy, the symlinks refused because they lead out of the tree, and the
    saltenvs whose file server caches were refreshed (``refreshed``; empty
    when no ``file_roots`` on this host lists the environment's states
    directory), the pillarenvs whose cached pillars the master forgot
    (``pillar_refreshed``, with ``envflow:pillar``), with ``sync_minions``
    what the environment's minions answered to ``saltutil.refresh_pillar``
    and ``saltutil.sync_all`` (``minions``: ``answered``, ``failed``,
    ``missing``), and a ``warning`` when clearing the caches failed after the
    switch. A pinned environment (see :py:func:`rollback`) keeps serving its
    pinned commit: the result says so under ``pinned`` and ``comment``. A
    frozen one refuses a deploy that would change it. A deploy that changed
    something is recorded in the history (``refs/envflow/history``).

    CLI Example:

    .. code-block:: bash

        salt-call envflow.deploy stage
        salt-call envflow.deploy stage rev=3f2c9a1
        salt-call envflow.deploy stage force=True
    """
    if rev is not None and branch is not None:
        raise CommandExecutionError("envflow: give rev or branch, not both")
    try:
        config = _config()
        with _mirror(config) as mirror:
            if test:
                return pipeline.deploy_preview(config, mirror, env, rev=rev, branch=branch, force=force)
            done = pipeline.deploy(
                config, mirror, env, rev=rev, branch=branch, force=force, reason=reason, by=by or _operator()
            )
    except EnvflowError as exc:
        raise _salt_error(exc) from None
    return _after_deploy(config, env, done)


def _operator():
    """Who runs this: the operating-system user, as Salt names it (``sudo_alice`` under sudo)."""
    import salt.utils.user  # pylint: disable=import-outside-toplevel

    return salt.utils.user.get_specific_user()


def promote(env, rev=None, dry_run=False, force=False, reason=None, by=None):
    """
    Promote what was tested in the previous environment into ``env``, then deploy ``env``.

    Moves ``env``'s branch on the remote to the commit deployed in the
    environment before it (not that branch's moving tip), fast-forward only,
    as a compare-and-swap: if the branch moved since envflow read it, nothing
    changes. Refuses, changing nothing, when ``env``'s branch holds commits
    the promoted commit lacks (listing them), when ``env``'s directory was
    edited by hand, and when a gate of ``env`` is closed (naming it and what
    opens it). Fires ``salt/envflow/<env>/promoted`` once ``env`` serves the
    promoted commit. The runner :py:func:`envflow.promote
    <salt.runners.envflow.promote>` calls this on the master.

    env
        The environment to promote into; not the first of the pipeline.

    rev
        An older commit to promote, contained in the commit deployed upstream.

    dry_run : False
        Report the commits, files, closed gates and hand edits in ``env``'s
        directory that the promotion would meet, and the commit it serves
        (``served``); change nothing.

    force : False
        Discard hand edits in ``env``'s directory and, with ``reason``, bypass
        closed gates; the bypass is recorded with the commit on the remote.

    reason
        Why gates are bypassed; required when ``force`` bypasses a closed gate.

    by
        Who promotes, for the record of a bypass (default: the operating-system user).

    CLI Example:

    .. code-block:: bash

        salt-call envflow.promote stage
        salt-call envflow.promote prod dry_run=True
        salt-call envflow.promote prod force=True reason="security fix, approved by phone"
    """
    by = by or _operator()
    try:
        config = _config()
        with _mirror(config) as mirror:
            done = pipeline.promote(
                config,
                mirror,
                env,
                rev=rev,
                force=force,
                reason=reason,
                by=by,
                dry_run=dry_run,
                master=__opts__["id"] if _is_master() else None,
            )
    except EnvflowError as exc:
        raise _salt_error(exc) from None
    report = done.report
    if done.deployed is not None:
        report["deployed"] = pipeline.deploy_summary(_after_deploy(config, env, done.deployed))
    if done.moved:
        data = {"env": env, "branch": report["branch"], "old": report["old"], "new": report["new"], "by": by}
        if report.get("bypassed"):
            # A forced promotion says what it overrode, and why, as its history entry does.
            data.update(bypassed=report["bypassed"], reason=holds.reason_text(reason, "a forced promotion"))
        _fire(env, "promoted", data)
    return report


def deployed(env):
    """
    Describe the commit an environment's directory serves now.

    Returns its id, summary, author and time, or ``None`` when envflow has not
    deployed anything there yet. Reads only the local directory: no fetch.

    CLI Example:

    .. code-block:: bash

        salt-call envflow.deployed prod
    """
    try:
        return served.ServedDir(_config().environment(env).path).deployed()
    except EnvflowError as exc:
        raise _salt_error(exc) from None


def drift(env):
    """
    List the files of an environment's served tree that were changed by hand.

    Returns ``added``, ``modified`` and ``deleted`` lists of paths relative to
    the environment's directory. A deploy refuses to run while there is drift,
    unless called with ``force=True``.

    CLI Example:

    .. code-block:: bash

        salt-call envflow.drift stage
    """
    try:
        config = _config()
        environment = config.environment(env)
        with _mirror(config, fetch=False) as mirror:
            return served.ServedDir(environment.path).drift(mirror.objects)
    except EnvflowError as exc:
        raise _salt_error(exc) from None


def rollback(env, to=None, reason=None, force=False, by=None, dry_run=False):
    """
    Serve the commit an environment served before, at once, and pin it there.

    Uses the tree still on disk when it holds that commit, with no fetch and
    no checkout. ``to`` picks an older commit, which the environment must
    have served before (its history, in ``refs/envflow/history``, says which).
    The pin (in the remote repository, so every master honours it) keeps
    refreshes, the ``envflow.deployed`` state and the reactor serving that
    commit, and refuses promotions into the environment, until
    ``salt-run envflow.unpin <env>`` or ``salt-run envflow.promote <env>
    force=True reason=...``. The branch is not rewound. Freezes do not hold a
    rollback back. Fires ``salt/envflow/<env>/rolled_back`` (or ``pinned``,
    when the environment served that commit already). The runner
    :py:func:`envflow.rollback <salt.runners.envflow.rollback>` calls this
    on the master.

    reason
        Why; required, and recorded with the pin.

    force : False
        Discard hand edits in the served tree.

    by
        Who rolls back (default: the operating-system user).

    dry_run : False
        Report the commit served, the one a rollback would serve and the hand
        edits in the way; change nothing.

    CLI Example:

    .. code-block:: bash

        salt-call envflow.rollback prod reason="500s after the release"
        salt-call envflow.rollback prod to=3f2c9a1 reason="back to last week's"
    """
    try:
        config = _config()
        with _mirror(config, fetch=False) as mirror:
            done = holds.rollback(
                config, mirror, env, to=to, reason=reason, force=force, by=by or _operator(), dry_run=dry_run
            )
    except EnvflowError as exc:
        raise _salt_error(exc) from None
    deployed = done.pop("deployed", None)
    if deployed is not None and deployed["changed"]:
        done["deployed"] = pipeline.deploy_summary(_after_deploy(config, env, deployed))
    if done["changed"]:
        pin = done["pin"]
        data = {"env": env, "old": done["from"], "new": done["to"], "by": pin["by"], "reason": pin["reason"]}
        data["commit"] = pin["commit"]  # as in every pinned event, the runner's envflow.pin's too
        _fire(env, "rolled_back" if done["rolled_back"] else "pinned", data)
    return done
