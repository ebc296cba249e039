"""Pins and freezes: what holds an environment back from automation, and the operations that set and lift them.

A **pin** keeps an environment on one commit. A rollback sets it: the
environment serves the commit it served before, and refreshes, the
``envflow.deployed`` state and the reactor keep serving the pinned commit (on
every master: the pin is in the remote's history) while promotions into it
refuse, until ``envflow.unpin`` or a promotion with ``force=True reason=...``.
The branch is not rewound: it stays the record of what was promoted.

A **freeze** refuses promotions and refreshes that would change the
environment, naming who froze it, why and until when, until ``envflow.thaw``
or its ``until`` passes; ``force=True reason=...`` overrides it, and the
override is recorded with the change.

Each operation holds the environment directory's lock while it reads the
holds, changes the environment and records the change, so on one master they
happen one after the other, and the history lists them in that order.
"""

import datetime
import re

from envflow import history, submodules
from envflow.errors import EnvflowError, Held, RevisionError
from envflow.served import ServedDir
from envflow.text import echo, short

_REASON_LIMIT = 500
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Actions that change what a directory serves: their entries' ``to`` is what it served afterwards.
SERVING = ("promoted", "deployed", "rolled_back")


def reason_text(reason, doing, required=True):
    """``reason`` as recorded (cut to 500 characters); refuse a missing one when ``required``."""
    text = " ".join(str(reason).split()) if reason is not None else ""
    if not text:
        if required:
            raise EnvflowError(f"envflow: {doing} needs a reason, which is recorded with it; add reason='<why>'")
        return None
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


def parse_until(value, at=None):
    """When a freeze ends: ``until`` as a duration (``90m``, ``2h``, ``1d``, seconds) or an ISO 8601 time (UTC if bare).

    Returns an aware datetime, or ``None`` for no end. A time already past is refused.
    """
    if value is None or value == "":
        return None
    at = at or history.now()
    text = str(value).strip()
    match = _DURATION.match(text) if not isinstance(value, bool) else None
    if match or (text.isdigit() and not isinstance(value, bool)):
        seconds = int(text) if text.isdigit() else int(match.group(1)) * _SECONDS[match.group(2)]
        if seconds <= 0:
            raise EnvflowError(f"envflow: until={echo(value)} is no time from now; give a duration such as 2h")
        return at + datetime.timedelta(seconds=seconds)
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EnvflowError(
            f"envflow: until={echo(value)} is neither a duration nor a time; give a duration such as 2h or 1d, "
            "or a time such as 2026-12-24T18:00:00+00:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    if when <= at:
        raise EnvflowError(f"envflow: until={echo(value)} is already past; give a later time, or a duration such as 2h")
    return when.astimezone(datetime.timezone.utc).replace(microsecond=0)


def _since(hold):
    return f" since {hold['at']}" if hold.get("at") else ""


def describe_pin(env, pin):
    """``prod is pinned to 3f2c9a1b2c by alice since ...: why``."""
    why = f": {pin['reason']}" if pin.get("reason") else ""
    return f"{env} is pinned to {short(pin['commit'])} by {pin.get('by')}{_since(pin)}{why}"


def pinned_comment(env, pin):
    """What a deploy of a pinned environment says: it keeps serving the pinned commit, and until when."""
    return (
        f"envflow: {describe_pin(env, pin)}; it serves that commit until salt-run envflow.unpin {env}, "
        "or a promotion with force=True reason='<why>'"
    )


def describe_freeze(env, freeze):
    """``prod is frozen by alice since ... until ...: why``."""
    until = f" until {freeze['until']}" if freeze.get("until") else " until thawed"
    return f"{env} is frozen by {freeze.get('by')}{_since(freeze)}{until}: {freeze.get('reason')}"


def in_the_way(found, env, pinned_too=False):
    """The holds of ``env`` (in ``found``) a change must override: ``(hold, line, how to lift it)`` each.

    A freeze holds back every change; a pin, with ``pinned_too``, a promotion.
    """
    held = []
    freeze = history.freeze_of(found, env)
    if freeze:
        held.append((freeze, f"freeze: {describe_freeze(env, freeze)}", f"thaw it with salt-run envflow.thaw {env}"))
    pin = history.pin_of(found, env) if pinned_too else None
    if pin:
        held.append((pin, f"pin: {describe_pin(env, pin)}", f"unpin it with salt-run envflow.unpin {env}"))
    return held


def overridden(found, env, doing, force=False, reason=None, pinned_too=False):
    """The lines of :func:`in_the_way` that ``doing`` overrides; :class:`Held` unless ``force`` has a ``reason``."""
    held = in_the_way(found, env, pinned_too)
    if not held:
        return []
    if not force:
        hold, line, lift = held[0]
        raise Held(f"envflow: {line.split(': ', 1)[1]}; {lift}, or {doing} with force=True reason='<why>'", hold)
    if not (reason and str(reason).strip()):
        raise Held(
            f"envflow: force=True overrides the {' and '.join(line.split(':')[0] for _h, line, _l in held)} "
            f"of {env} only with a reason, which is recorded; add reason='<why>'",
            held[0][0],
        )
    return [line for _hold, line, _lift in held]


def record_after(mirror, entry, change=None):
    """Record ``entry`` once its change is done; a failure is returned as a warning line (the change stays)."""
    try:
        history.record(mirror, entry, change)
    except EnvflowError as exc:
        return f"envflow: {entry['env']} changed, but its history could not be written: {exc}"
    return None


def _pinned(found, env, pin):
    found.setdefault(env, {})["pin"] = pin
    return found


def _served_commits(mirror, env_name, layout):
    """The commits the environment served, newest first: from its history, then the standby tree's record."""
    seen = []
    for entry in history.entries(mirror, env_name, limit=500):
        if entry.get("action") in SERVING:
            for key in ("to", "served_before", "from"):
                commit_id = entry.get(key)
                if commit_id and commit_id not in seen and (key != "from" or entry["action"] != "promoted"):
                    seen.append(commit_id)
    for slot in ("a", "b"):
        record = layout.record(slot)
        # A record with ``since`` was served; one without was prepared and never switched in.
        if record is not None and record.since and record.commit_id not in seen:
            seen.append(record.commit_id)
    return seen


def _previous(mirror, env_name, layout, served_id):
    """The commit the environment served before ``served_id``, or ``None`` when none is known."""
    for entry in history.entries(mirror, env_name, limit=500):
        if entry.get("action") in SERVING and entry.get("to") == served_id:
            before = entry.get("served_before", entry.get("from"))
            if before and before != served_id:
                return before
    standby = layout.record(layout.other(layout.served_slot()))
    if standby is not None and standby.since and standby.commit_id != served_id:
        return standby.commit_id
    return None


def rollback(config, mirror, name, to=None, reason=None, force=False, by=None, dry_run=False):
    """Serve the commit ``name`` served before (or ``to``, which it must have served), at once, and pin it there.

    Uses the tree still on disk when it holds that commit (the standby slot),
    with no fetch; the mirror need not be fresh. Refuses hand edits in the
    served tree unless ``force`` (which discards them). Freezes do not hold a
    rollback back. Returns a dict: ``env``, ``from``, ``to``, ``changed``,
    ``rolled_back`` (whether the directory changed), the ``pin``, the deploy's ``deployed``
    result, and a ``warning`` if the history could not be written. With
    ``dry_run`` it reports ``from``, ``to`` and the served tree's hand edits
    (``drift``), and changes nothing.
    """
    env = config.environment(name)
    reason = reason_text(reason, f"rolling back {env.name}")
    served = ServedDir(env.path)
    if dry_run:
        with served.locked():
            current, target_id = _rollback_target(mirror, env, served, to)
        report = {"env": env.name, "from": current["id"], "to": target_id, "changed": False, "dry_run": True}
        return {**report, "drift": served.drift(mirror.objects)}  # drift takes the lock itself
    with served.deploying(mirror.objects, compose=submodules.Composer(mirror, config.submodules)) as deployment:
        current, target_id = _rollback_target(mirror, env, served, to)
        pin = history.pin_of(history.holds(mirror), env.name)
        if pin and pin["commit"] == target_id == current["id"]:
            return {
                "env": env.name,
                "from": current["id"],
                "to": target_id,
                "changed": False,
                "rolled_back": False,
                "pin": pin,
                "comment": f"{describe_pin(env.name, pin)} already",
            }
        deployment.commit = mirror.commit(target_id)
        result = deployment.switch(deployment.prepare(force=force, remedy="roll back with force=True"))
        pin = {"commit": target_id, "by": by, "at": history.now().isoformat(), "reason": reason}
        action = "rolled_back" if result["changed"] else "pinned"
        entry = {"action": action, "env": env.name, "by": by, "from": current["id"], "to": target_id}
        warning = record_after(mirror, {**entry, "reason": reason}, lambda held: _pinned(held, env.name, pin))
    report = {"env": env.name, "from": current["id"], "to": target_id, "changed": True}
    report.update(rolled_back=result["changed"], pin=pin, deployed=result)
    return {**report, "warning": warning} if warning else report


def _rollback_target(mirror, env, served, to):
    """What ``env`` serves (its description) and the commit id a rollback serves instead; the lock must be held."""
    current = served.deployed()
    if current is None:
        raise EnvflowError(f"envflow: nothing is deployed in {env.name}, so there is nothing to roll back")
    if to is None:
        target_id = _previous(mirror, env.name, served.layout, current["id"])
        if target_id is None:
            raise EnvflowError(
                f"envflow: no commit {env.name} served before {short(current['id'])} is known; "
                "give to=<commit> it served before"
            )
        return current, target_id
    target_id = str(mirror.commit(to).id)
    if target_id != current["id"]:
        served_before = _served_commits(mirror, env.name, served.layout)
        if target_id not in served_before:
            known = ", ".join(short(commit_id) for commit_id in served_before[:5]) or "none"
            raise RevisionError(
                f"envflow: {echo(to, quoted=False)} was never served in {env.name}; a rollback serves only a "
                f"commit it served before (the latest: {known})"
            )
    return current, target_id


def pin(config, mirror, name, reason=None, by=None, dry_run=False):
    """Pin ``name`` to the commit it serves now (see :func:`rollback`); ``changed`` is false if it was already."""
    env = config.environment(name)
    reason = reason_text(reason, f"pinning {env.name}")
    served = ServedDir(env.path)
    with served.locked():
        current = served.deployed()
        if current is None:
            raise EnvflowError(f"envflow: nothing is deployed in {env.name}, so there is nothing to pin")
        held = {"commit": current["id"], "by": by, "at": history.now().isoformat(), "reason": reason}

        def change(found):
            old = history.pin_of(found, env.name)
            return None if old and old["commit"] == current["id"] else _pinned(found, env.name, held)

        entry = {"action": "pinned", "env": env.name, "by": by, "to": current["id"], "reason": reason}
        done = history.record(mirror, entry, change, dry_run=dry_run)
    hold = held if done else history.pin_of(history.holds(mirror), env.name)
    return _hold_report(env.name, "pin", hold, done, dry_run)


def unpin(config, mirror, name, reason=None, by=None, dry_run=False):
    """Lift the pin of ``name``: the next refresh serves its branch again. ``changed`` is false if it had none."""
    return _lift(config, mirror, name, "pin", reason, by, dry_run)


def freeze(config, mirror, name, reason=None, until=None, by=None, dry_run=False):
    """Freeze ``name`` until ``until`` (a time or duration; ``None``: until thawed); a freeze in force is replaced."""
    env = config.environment(name)
    reason = reason_text(reason, f"freezing {env.name}")
    ends = parse_until(until)
    held = {"by": by, "at": history.now().isoformat(), "reason": reason, "until": ends.isoformat() if ends else None}
    held = {key: value for key, value in held.items() if value is not None}

    def change(found):
        found.setdefault(env.name, {})["freeze"] = held
        return found

    with ServedDir(env.path).locked():
        entry = {"action": "frozen", "env": env.name, "by": by, "reason": reason, "until": held.get("until")}
        done = history.record(mirror, entry, change, dry_run=dry_run)
    return _hold_report(env.name, "freeze", held, done, dry_run)


def thaw(config, mirror, name, reason=None, by=None, dry_run=False):
    """End the freeze of ``name``; ``changed`` is false if it was not frozen (or its freeze had ended)."""
    return _lift(config, mirror, name, "freeze", reason, by, dry_run)


def _lift(config, mirror, name, kind, reason, by, dry_run):
    """End ``name``'s hold of ``kind`` (``pin`` or ``freeze``) if one is in force; the :func:`_hold_report`."""
    env = config.environment(name)
    doing, action = {"pin": ("unpinning", "unpinned"), "freeze": ("thawing", "thawed")}[kind]
    reason = reason_text(reason, f"{doing} {env.name}", required=False)
    in_force = history.pin_of if kind == "pin" else history.freeze_of

    def change(found):
        if not in_force(found, env.name):
            return None
        found[env.name].pop(kind)
        return found

    with ServedDir(env.path).locked():
        old = in_force(history.holds(mirror), env.name)
        entry = {"action": action, "env": env.name, "by": by, "reason": reason}
        if kind == "pin" and old:
            entry["from"] = old["commit"]  # the commit that was pinned
        done = history.record(mirror, entry, change, dry_run=dry_run)
    return _hold_report(env.name, kind, old, done, dry_run)


def _hold_report(env, kind, hold, entry, dry_run=False):
    """What a hold operation did (or, with ``dry_run``, would do): ``changed``, the hold, a ``comment`` if nothing."""
    report = {"env": env, "changed": entry is not None and not dry_run, kind: hold}
    if dry_run:
        report.update(dry_run=True, would_change=entry is not None)
    if entry is None:
        report["comment"] = {
            "pin": f"{env} is not pinned" if hold is None else f"{env} is pinned to that commit already",
            "freeze": f"{env} is not frozen",
        }[kind]
    return report
