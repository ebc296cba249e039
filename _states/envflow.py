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

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    from envflow.served import drift_message
except ImportError:  # the execution module is then missing too, and __virtual__ says so
    pass

__virtualname__ = "envflow"


def __virtual__():
    if "envflow.deploy" not in __salt__:
        return False, "envflow: the envflow execution module is not loaded"
    return __virtualname__


def _switch(old, new):
    if old is not None and old["id"] == new["id"]:
        return f"{_short(new)} again, without the hand edits"
    return f"{_short(new)} instead of {_short(old)}"


def _short(commit):
    return f"{commit['id'][:10]} ({commit['summary']})" if commit else "nothing"


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
        ret.update(result=True, comment=f"{name} already serves {_short(done['new'])}")
        return ret
    changes = {"revision": {"old": done["old"]["id"] if done["old"] else None, "new": done["new"]["id"]}}
    if done.get("discarded"):
        changes["discarded"] = done["discarded"]
    comment = f"{name} now serves {_switch(done['old'], done['new'])}"
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
        ret["comment"] = drift_message(plan["path"], drift)
        return ret
    if old is not None and old["id"] == new["id"] and not edited:
        ret.update(result=True, comment=f"{name} already serves {_short(new)}")
        return ret
    changes = {"revision": {"old": old["id"] if old else None, "new": new["id"]}}
    if edited:
        changes["discarded"] = drift
    ret.update(result=None, changes=changes, comment=f"{name} would serve {_switch(old, new)}")
    return ret
