"""
Promote tested Salt code from one environment to the next.

Reads the ``envflow`` key of the master config. Every function returns a small
dict; on failure it holds ``retcode: 1`` and a one-line ``error``, so
``salt-run`` exits non-zero and orchestrate marks the step failed.
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    from envflow import config as envflow_config
    from envflow import pipeline, saltbus
    from envflow.errors import EnvflowError
    from envflow.remote import Mirror

    HAS_ENVFLOW = True
except ImportError:
    HAS_ENVFLOW = False

__virtualname__ = "envflow"

_LISTED = 50


def __virtual__():
    if not HAS_ENVFLOW:
        return False, "envflow: the envflow package or pygit2 (>= 1.14) is not installed"
    return __virtualname__


def _failure(message):
    __context__["retcode"] = 1
    return {"retcode": 1, "error": message}


def _capped(items):
    return items[:_LISTED] + ([f"... and {len(items) - _LISTED} more"] if len(items) > _LISTED else [])


def _deploy(env, **kwargs):
    """Deploy through the execution module, as the master's own ``salt.cmd`` would."""
    result = __salt__["salt.cmd"]("envflow.deploy", env, **kwargs)
    return {
        "old": result["old"]["id"] if result["old"] else None,
        "new": result["new"]["id"],
        "changed": result["changed"],
        "moved_aside": result["moved_aside"],
        "refused_links": [f"{link['path']} -> {link['target']}" for link in result["refused_links"]],
        "refreshed": result["refreshed"],
        "discarded": result["discarded"],
    }


def promote(env, rev=None, dry_run=False, force=False):
    """
    Promote what was tested in the previous environment into ``env``, then deploy ``env``.

    Moves ``env``'s branch on the remote to the commit deployed in the
    environment before it (not that branch's moving tip), fast-forward only,
    as a compare-and-swap: if the branch moved since envflow read it, nothing
    changes. Refuses, listing them, when ``env``'s branch holds commits the
    promoted commit lacks, and when ``env``'s directory was edited by hand
    (unless ``force``). Fires ``salt/envflow/<env>/promoted`` once ``env``
    serves the promoted commit.

    env
        The environment to promote into; not the first of the pipeline.

    rev
        An older commit to promote, contained in the commit deployed upstream.

    dry_run : False
        Report the commits and files the promotion would bring; change nothing.

    force : False
        Promote even though ``env``'s directory was edited by hand, discarding the edits.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.promote stage
        salt-run envflow.promote prod dry_run=True
        salt-run envflow.promote prod rev=3f2c9a1
    """
    try:
        config = envflow_config.parse(__opts__.get("envflow"))
        with Mirror(config.repo, __opts__["cachedir"]) as mirror:
            mirror.fetch()
            promotion = pipeline.plan(config, mirror, env, rev=rev)
            report = promotion.as_dict()
            report["commits"], report["files"] = _capped(report["commits"]), _capped(report["files"])
            if not force:
                # Refuse before the branch moves, not after: the deploy would refuse anyway.
                pipeline.check_untouched(promotion.env, mirror)
            if dry_run:
                return {"dry_run": True, **report}
            pipeline.promote(mirror, promotion)
    except EnvflowError as exc:
        return _failure(str(exc))
    try:
        report["deployed"] = _deploy(env, rev=promotion.new, force=force)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _failure(
            f"envflow: {promotion.env.branch} now points at {promotion.new[:10]}, but deploying it to {env} "
            f"failed: {exc}; fix that, then run envflow.refresh {env}"
        )
    if promotion.old != promotion.new:
        saltbus.fire_on_master(
            __opts__,
            f"salt/envflow/{env}/promoted",
            {"env": env, "branch": promotion.env.branch, "old": promotion.old, "new": promotion.new},
        )
    return report


def status(env=None):
    """
    Show, for each environment (or ``env``): its branch, the branch tip on the
    remote, the commit deployed, whether they match, how many commits wait in
    the environment before it, and how many files were changed by hand.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.status
        salt-run envflow.status prod
    """
    try:
        config = envflow_config.parse(__opts__.get("envflow"))
        with Mirror(config.repo, __opts__["cachedir"]) as mirror:
            mirror.fetch()
            return {"environments": pipeline.status(config, mirror, env)}
    except EnvflowError as exc:
        return _failure(str(exc))


def refresh(env=None, force=False):
    """
    Fetch the remote and deploy the tip of each environment's branch (or only ``env``'s).

    force : False
        Deploy even where a directory was edited by hand, discarding the edits.

    CLI Example:

    .. code-block:: bash

        salt-run envflow.refresh
        salt-run envflow.refresh test
        salt-run envflow.refresh prod force=True
    """
    try:
        config = envflow_config.parse(__opts__.get("envflow"))
        environments = config.select(env)
    except EnvflowError as exc:
        return _failure(str(exc))
    report, errors = {}, []
    for environment in environments:
        try:
            report[environment.name] = _deploy(environment.name, force=force)
        except (CommandExecutionError, SaltInvocationError) as exc:
            report[environment.name] = {"error": str(exc)}
            errors.append(f"{environment.name}: {exc}")
    if errors:
        return {**_failure("; ".join(errors)), "environments": report}
    return {"environments": report}
