"""The history of what envflow changed, and the holds (pins, freezes) on environments, kept in the remote repository.

``refs/envflow/history`` is a chain of commits, one per change, newest on
top. Each commit's message is one readable line, then the entry as JSON; its
tree holds ``holds.json``, every environment's pin and freeze after that
change. So every master reads the same history and honours the same holds,
and plain git shows them::

    git fetch origin refs/envflow/history:refs/envflow/history
    git log --format=%B refs/envflow/history
    git show refs/envflow/history:holds.json

An entry has ``action`` (``promoted``, ``deployed``, ``rolled_back``,
``pinned``, ``unpinned``, ``frozen``, ``thawed``, ``backported``), ``env``,
``by``, ``at``, ``from``, ``to``, ``reason`` and ``master`` (the host that
made the change), and what the action adds (``bypassed``: the holds and gates
a forced action overrode). ``holds.json`` maps each environment to its
``pin`` (``commit``, ``by``, ``at``, ``reason``) and ``freeze`` (``by``,
``at``, ``reason``, ``until``); the entry that set one names its ``master``.

Writing is a compare-and-swap of the reference on the remote, retried after
a fetch when another master wrote first: the entry is then applied on top of
the other master's, so entries are merged, never lost.
"""

import datetime
import getpass
import json
import random
import socket
import time

import pygit2

from envflow.errors import BranchMoved, RemoteError
from envflow.remote import HISTORY, signature
from envflow.text import short

_HOLDS = "holds.json"
_ATTEMPTS = 30
_SIGNATURE_EMAIL = "envflow@localhost"

ACTIONS = ("promoted", "deployed", "rolled_back", "pinned", "unpinned", "frozen", "thawed", "backported")


def now():
    """The current time, UTC, to the second."""
    return datetime.datetime.now(tz=datetime.timezone.utc).replace(microsecond=0)


def _tip(mirror):
    ref = mirror.repo.references.get(HISTORY)
    return ref.target if ref is not None else None


def _holds_at(repo, commit_id):
    if commit_id is None:
        return {}
    tree = repo[commit_id].peel(pygit2.Tree)
    try:
        data = json.loads(repo[tree[_HOLDS].id].data)
    except (KeyError, ValueError):
        return {}
    return {env: held for env, held in data.items() if isinstance(env, str) and isinstance(held, dict)}


def holds_id(mirror):
    """The id of the holds (``holds.json``) at the history's tip in the fetched mirror: ``"none"`` without one."""
    tip = _tip(mirror)
    if tip is None:
        return "none"
    try:
        return str(mirror.repo[tip].peel(pygit2.Tree)[_HOLDS].id)
    except KeyError:
        return "none"


def holds(mirror):
    """Every environment's holds: ``{env: {"pin": {...}, "freeze": {...}}}`` (either may be missing)."""
    return _holds_at(mirror.repo, _tip(mirror))


def pin_of(found, env):
    """The pin of ``env`` in ``found`` (:func:`holds`), or ``None``."""
    return found.get(env, {}).get("pin")


def freeze_of(found, env, at=None):
    """The freeze of ``env`` in ``found`` still in force at ``at`` (default: now), or ``None``."""
    freeze = found.get(env, {}).get("freeze")
    if not freeze:
        return None
    until = freeze.get("until")
    if until:
        try:
            ends = datetime.datetime.fromisoformat(str(until))
        except ValueError:
            return freeze  # an end nobody can read (holds.json edited by hand): frozen until thawed
        if ends.tzinfo is None:
            ends = ends.replace(tzinfo=datetime.timezone.utc)
        if ends <= (at or now()):
            return None  # ended by itself
    return freeze


def _parse(message):
    """The entry a history commit's message holds, or ``None`` (a commit written by hand)."""
    _line, _blank, body = message.partition("\n\n")
    try:
        entry = json.loads(body)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("action"), str) else None


def entries(mirror, env=None, limit=20):
    """The entries of the history (of ``env`` only, if given), newest first, at most ``limit``."""
    found, current = [], _tip(mirror)
    repo = mirror.repo
    while current is not None and (limit is None or len(found) < limit):
        commit = repo[current]
        entry = _parse(commit.message)
        if entry is not None and (env is None or entry.get("env") == env):
            found.append(entry)
        current = commit.parent_ids[0] if commit.parent_ids else None
    return found


def _short_or_dash(commit_id):
    return short(commit_id) if commit_id else "-"


def headline(entry):
    """The entry as ``git log --oneline`` shows it: ``rolled_back prod 3f2c9a1b2c -> 1a2b3c4d5e by alice: why``.

    Holds read ``pinned prod to 1a2b3c4d5e``, ``unpinned prod (was 1a2b3c4d5e)`` and ``frozen prod until <time>``.
    """
    action, where = entry["action"], entry.get("env", "")
    if action == "pinned" and entry.get("to"):
        where += f" to {short(entry['to'])}"
    elif action == "unpinned" and entry.get("from"):
        where += f" (was {short(entry['from'])})"
    elif action == "frozen" and entry.get("until"):
        where += f" until {entry['until']}"
    elif entry.get("from") or entry.get("to"):
        where += f" {_short_or_dash(entry.get('from'))} -> {_short_or_dash(entry.get('to'))}"
    reason = f": {entry['reason']}" if entry.get("reason") else ""
    return " ".join(f"{action} {where} by {entry.get('by')}{reason}".split())


def _user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def record(mirror, entry, change=None, dry_run=False):
    """Add ``entry`` to the history on the remote, with ``change`` applied to the holds; return the entry.

    ``entry`` needs ``action`` and ``env``; ``by`` (default: this process's
    user), ``at`` and ``master`` are filled in. ``change(holds)`` returns the holds after the change (it may
    change the dict it is given), or ``None`` when, on the holds as they are
    now, there is nothing to do: then nothing is written and ``None`` is
    returned. On a race with another writer the history is fetched and
    ``change`` runs again on the newer holds. With ``dry_run`` the entry is
    returned (or ``None``) and nothing is written.
    """
    entry = {
        **entry,
        "by": entry.get("by") or _user(),
        "at": entry.get("at") or now().isoformat(),
        "master": entry.get("master") or socket.gethostname(),
    }
    entry = {key: value for key, value in entry.items() if value is not None}
    for _attempt in range(_ATTEMPTS):
        repo = mirror.repo
        with mirror.locked():
            old = _tip(mirror)
            current = _holds_at(repo, old)
            after = change(current) if change is not None else current
            if after is None or dry_run:
                return None if after is None else entry
            after = {env: held for env, held in after.items() if held}
            text = json.dumps(after, indent=1, sort_keys=True) + "\n"
            builder = repo.TreeBuilder()
            builder.insert(_HOLDS, repo.create_blob(text.encode()), pygit2.enums.FileMode.BLOB)
            who = signature(entry["by"], _SIGNATURE_EMAIL)
            message = f"{headline(entry)}\n\n{json.dumps(entry, indent=1, sort_keys=True)}\n"
            new = repo.create_commit(None, who, who, message, builder.write(), [old] if old is not None else [])
        try:
            mirror.update_ref(HISTORY, old, new)
            return entry
        except BranchMoved:
            time.sleep(random.uniform(0.0, 0.05))  # writers that lost a race must not collide again in step
            mirror.fetch()  # another master recorded meanwhile: apply this entry on top of theirs
    raise RemoteError(f"envflow: could not record in {mirror.shown}: {HISTORY} kept moving; run the command again")
