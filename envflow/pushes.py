"""Serving pushes: each environment whose branch was pushed deploys its branch tip, bursts coalesced.

A push hook only says "look again": what is deployed is the tip fetched from
the remote afterwards. A push of envflow's history (a pin, a freeze, or the
record of a deploy made on another master) refreshes every environment only
when the holds it carries are not the ones this master last served
(:func:`holds_unserved`): the records of the deploys that every master
writes after each change would otherwise make each master refresh every
environment once per master, for nothing. Twenty pushes within a second must not make twenty
deploys, nor keep twenty reactor threads waiting for one environment's lock.
So each push marks the environment (``push.pending``) and tries its push
lock once: the one that gets it deploys, and deploys again while new marks
arrive; the others return at once, handed off to it. A mark left just after
the holder's last look, while it still held the lock, is seen when it lets
go: it takes the lock again and serves it.
"""

import os

from envflow import history, marks
from envflow.errors import EnvflowError
from envflow.layout import Layout
from envflow.locking import attempted


def _mark(layout):
    os.makedirs(layout.home, exist_ok=True)
    with open(layout.push_pending, "a", encoding="utf-8"):
        pass


def _take_mark(layout):
    """Remove the mark; whether there was one."""
    try:
        os.unlink(layout.push_pending)
    except FileNotFoundError:
        return False
    return True


def coalesced(env, deploy):
    """Serve a push to environment ``env`` (an :class:`~envflow.config.Environment`) with ``deploy()``.

    ``deploy()`` fetches and deploys the branch tip, returning what the
    deploy returns. Returns ``{"deploys": [each result], "handed_off": bool}``
    and ``error`` (one line) when a deploy was refused or failed: then no
    other round runs, and the next push tries again.
    """
    layout = Layout(env.path)
    _mark(layout)
    done = {"deploys": [], "handed_off": False}
    while True:
        with attempted(layout.push_lock) as holding:
            if not holding:
                done["handed_off"] = not done["deploys"]
                return done
            while _take_mark(layout):
                try:
                    done["deploys"].append(deploy())
                except EnvflowError as exc:
                    done["error"] = str(exc)
                    return done
        if not os.path.exists(layout.push_pending):
            return done


def serve(config, branches, deploy):
    """Serve a push of ``branches``: :func:`coalesced` ``deploy(env)`` for each environment serving one of them.

    Returns ``{env name: what coalesced returned}``, in pipeline order;
    empty when no environment serves any of them.
    """
    return {
        env.name: coalesced(env, lambda env=env: deploy(env)) for env in config.environments if env.branch in branches
    }


def holds_unserved(mirror, mark):
    """The id of the holds at the fetched history's tip when this master has not served them yet, else ``None``.

    ``mark`` is the file in this master's cache directory where
    :func:`holds_served` noted the holds it last served.
    """
    now = history.holds_id(mirror)
    return None if marks.read(mark) == now else now


def holds_served(mark, holds):
    """Note that every environment was refreshed with the holds whose id is ``holds``."""
    marks.write(mark, holds)
