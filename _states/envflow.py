"""
Declare which branch (or commit) each Salt environment serves.

.. code-block:: yaml

    prod:
      envflow.deployed:
        - branch: master

Runs on the master (``salt-call state.apply`` with the master's minion, or in
an orchestrate SLS) and deploys through :py:func:`envflow.deploy
<salt.modules.envflow.deploy>`.
"""

import contextlib

from salt.exceptions import CommandExecutionError, SaltInvocationError

# Without envflow the execution module is missing too, and __virtual__ says so.
with contextlib.suppress(ImportError):
    from envflow.loader import Deferred
    from envflow.text import short

    served = Deferred("envflow.served")  # imported when a comment needs it

__virtualname__ = "envflow"


def __virtual__():
    if "envflow.deploy" not in __salt__:
        return False, "envflow: the envflow execution module is not loaded"
    return __virtualname__


def _switch(old, new):
    if old is not None and old["id"] == new["id"]:
        return f"{_described(new)} again, without the hand edits"
    return f"{_described(new)} instead of {_described(old)}"


def _described(commit):
    return f"{short(commit['id'])} ({commit['summary']})" if commit else "nothing"


def deployed(name, branch=None, rev=None, force=False):
    """
    Make sure the environment ``name`` serves the tip of ``branch``, or the commit ``rev``.

    name
        The environment (saltenv) as named in the ``envflow`` configuration.

    branch
        The branch whose tip the environment serves; defaults to the
        environment's branch in the configuration.

    rev
        A fixed commit id or tag to serve instead of a branch tip.

    force : False
        Replace a served tree that was edited by hand, discarding the edits.

    Changes are ``{"revision": {"old": <commit>, "new": <commit>}}``.

    .. code-block:: yaml

        stage:
          envflow.deployed:
            - branch: stage
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        if __opts__["test"]:
            return _preview(ret, name, rev, branch, force)
        # One call: deploy refuses hand edits, and writes nothing when the commit is already served.
        done = __salt__["envflow.deploy"](name, rev=rev, branch=branch, force=force)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["comment"] = str(exc)
        return ret
    if not done["changed"]:
        comment = f"{name} already serves {_described(done['new'])}"
        ret.update(result=True, comment=f"{comment}; {done['comment']}" if done.get("pinned") else comment)
        return ret
    changes = {"revision": {"old": done["old"]["id"] if done["old"] else None, "new": done["new"]["id"]}}
    if done.get("discarded"):
        changes["discarded"] = done["discarded"]
    comment = f"{name} now serves {_switch(done['old'], done['new'])}"
    if done.get("pinned"):
        comment += f"; {done['comment']}"
    if done.get("warning"):
        comment += f"; {done['warning']}"
    if done.get("moved_aside"):
        comment += f"; what was in the way was moved to {done['moved_aside']}"
    if done.get("refused_links"):
        comment += "; refused symlinks leading out of the tree: " + ", ".join(
            f"{link['path']} -> {link['target']}" for link in done["refused_links"]
        )
    ret.update(result=True, changes=changes, comment=comment)
    return ret


def _preview(ret, name, rev, branch, force):
    """Test mode: what a run would change, or why it would fail, changing nothing."""
    plan = __salt__["envflow.deploy"](name, rev=rev, branch=branch, force=force, test=True)
    old, new, drift = plan["old"], plan["new"], plan["drift"]
    edited = any(drift.values())
    if edited and not force:
        ret["comment"] = served.drift_message(plan["path"], drift)
        return ret
    pinned = f"; {plan['comment']}" if plan.get("pinned") else ""
    if old is not None and old["id"] == new["id"] and not edited:
        ret.update(result=True, comment=f"{name} already serves {_described(new)}{pinned}")
        return ret
    if plan.get("refused"):
        ret["comment"] = plan["refused"]
        return ret
    changes = {"revision": {"old": old["id"] if old else None, "new": new["id"]}}
    if edited:
        changes["discarded"] = drift
    ret.update(result=None, changes=changes, comment=f"{name} would serve {_switch(old, new)}{pinned}")
    return ret


def promoted(name, rev=None, force=False, reason=None):
    """
    Make sure the environment ``name`` holds, and serves, the commit deployed in the environment before it.

    Promotes (see :py:func:`envflow.promote <salt.modules.envflow.promote>`)
    when the branch of ``name`` lacks that commit; does nothing when the
    branch already points at it and ``name`` serves it. In test mode, lists the
    commits a promotion would bring, or says which gate or hand edit would
    block it. Meant for orchestrate SLS files, which run on the master.

    name
        The environment to promote into.

    rev
        An older commit to promote, contained in the commit deployed upstream.

    force : False
        Discard hand edits in the environment's directory and, with ``reason``, bypass closed gates.

    reason
        Why the gates are bypassed; recorded with the promotion.

    Changes are ``{"revision": {"old": <branch commit>, "new": <commit>}, "commits": [...]}``.

    .. code-block:: yaml

        prod:
          envflow.promoted: []
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        if __opts__["test"]:
            plan = __salt__["envflow.promote"](name, rev=rev, dry_run=True)
            return _preview_promotion(ret, name, plan, force, reason)
        # One call: the promotion refuses hand edits and closed gates, and does nothing when all is in place.
        done = __salt__["envflow.promote"](name, rev=rev, force=force, reason=reason)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["comment"] = str(exc)
        return ret
    deployed = done.get("deployed") or {}
    if done["old"] == done["new"] and not deployed.get("changed"):
        ret.update(result=True, comment=f"{name} already holds and serves {short(done['new'])}")
        return ret
    ret["changes"] = {"revision": {"old": done["old"], "new": done["new"]}, "commits": done["commits"]}
    if done["old"] == done["new"]:
        ret["comment"] = f"{name} already held {short(done['new'])}, and now serves it"
    else:
        ret["comment"] = f"{name} promoted to {short(done['new'])} from {done['from']}"
    if deployed.get("discarded"):
        ret["changes"]["discarded"] = deployed["discarded"]
    if done.get("bypassed"):
        ret["changes"]["bypassed"] = done["bypassed"]
        ret["comment"] += f", bypassing: {'; '.join(done['bypassed'])}"
    ret["result"] = True
    return ret


def _preview_promotion(ret, name, plan, force, reason):
    """Test mode for :py:func:`promoted`: the commits a promotion would bring, or why it would be refused."""
    edited = any(plan["drift"].values())
    if edited and not force:
        ret["comment"] = served.drift_message(plan["path"], plan["drift"], "promote with force=True")
        return ret
    if plan["old"] == plan["new"] and plan["served"] == plan["new"] and not edited:
        ret.update(result=True, comment=f"{name} already holds and serves {short(plan['new'])}")
        return ret
    blockers = [*plan.get("holds", []), *plan["gates"]]
    if blockers and not (force and reason):
        ret["comment"] = f"promoting {short(plan['new'])} into {name} would be blocked by " + "; ".join(blockers)
        return ret
    ret.update(
        result=None,
        changes={"revision": {"old": plan["old"], "new": plan["new"]}, "commits": plan["commits"]},
        comment=(
            f"{name} would be promoted to {short(plan['new'])} from {plan['from']}, "
            f"bringing {len(plan['commits'])} commit(s)"
        ),
    )
    return ret
