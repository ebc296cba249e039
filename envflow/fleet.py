"""What each master serves, kept on the remote, so that every master sees the whole fleet.

Each master writes one reference of its own, ``refs/envflow/served/<master id>``:
one commit without parent (only the newest record matters) whose tree holds ``served.json``::

    {"master": "salt1", "host": "salt1.example.org", "seen": "2026-12-06T20:01:02+00:00",
     "environments": {"prod": {"commit": "8d1e0f2a...", "since": "2026-12-06T19:52:10+00:00",
                               "path": "/srv/salt/prod", "tree": "5f0c...",
                               "minions": ["web1", "web2"]}}}

``tree`` is the directory's identity (:meth:`envflow.layout.Layout.tree_id`):
masters deploying into one directory report the same. ``minions`` are those
the environment's ``target`` matches on that master, when it has a target:
what the ``verified`` gate counts.

``seen`` is when the master last wrote it: after each switch, and at most
every :data:`HEARTBEAT` seconds from a refresh round (the schedule's) that
changed nothing, so a master that stopped reporting shows as silent. Only
the master named writes its reference, so writes never race another
master's. Plain git reads them::

    git fetch origin 'refs/envflow/served/*:refs/envflow/served/*'
    git show refs/envflow/served/salt1:served.json
"""

import datetime
import hashlib
import json
import re
import socket

import pygit2

from envflow.errors import BranchMoved, EnvflowError
from envflow.remote import SERVED_PREFIX, signature
from envflow.served import ServedDir

_FILE = "served.json"
# A refresh round that changed nothing rewrites the record at most this often (seconds).
HEARTBEAT = 300
# A master whose record is older than this (seconds) is shown as silent, and its commits are not compared.
SILENT = 3 * HEARTBEAT
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def now():
    return datetime.datetime.now(tz=datetime.timezone.utc).replace(microsecond=0)


def ref_of(master):
    """The reference of master ``master``: its Salt id, or, when git would refuse that in a name, a digest of it."""
    name = str(master)
    if _SAFE.search(name) or not pygit2.reference_is_valid_name(f"{SERVED_PREFIX}{name}"):
        name = f"{_SAFE.sub('_', name).strip('.')[:40]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
        name = name.replace("..", "_").replace(".lock", "_lock")
    return f"{SERVED_PREFIX}{name}"


def _record_at(repo, target):
    try:
        blob = repo[target].peel(pygit2.Tree)[_FILE]
        data = json.loads(repo[blob.id].data)
    except (KeyError, ValueError, pygit2.GitError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("environments"), dict) else None


def read(mirror):
    """Every master's record, from the fetched mirror: ``{master: {"seen", "environments"}}``."""
    found = {}
    repo = mirror.repo
    for name in repo.references:
        if name.startswith(SERVED_PREFIX):
            data = _record_at(repo, repo.references[name].target)
            if data is not None:
                found[str(data.get("master") or name[len(SERVED_PREFIX) :])] = data
    return found


def serving(config, minions_of=None):
    """What this host's directories serve: ``{env: {"commit", "since", "path", "tree"[, "minions"]}}``, for those
    serving something; ``minions_of(env)`` gives an environment's minions on this master, or ``None``."""
    found = {}
    for env in config.environments:
        served = ServedDir(env.path)
        try:
            info = served.deployed()
            tree = served.layout.tree_id() if info else None
        except (EnvflowError, OSError):
            info = None
        if info:
            found[env.name] = {"commit": info["id"], "since": info.get("deployed_at"), "path": env.path, "tree": tree}
            minions = minions_of(env) if minions_of else None
            if minions is not None:
                found[env.name]["minions"] = sorted(minions)
    return found


def _age(seen, at):
    try:
        when = datetime.datetime.fromisoformat(str(seen))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return (at - when).total_seconds()


def report(mirror, config, master, heartbeat=False, at=None, minions_of=None):
    """Write on the remote what master ``master`` serves now, if that changed (or, with ``heartbeat``, if its
    record is older than :data:`HEARTBEAT`); return a one-line warning when it cannot, else ``None``.

    ``minions_of(env)`` gives the minions of ``env`` on this master (``None``: not known).

    The mirror need not be freshly fetched: a record that moved meanwhile
    (another process of this master wrote it) is fetched and written again.
    """
    at = at or now()
    environments = serving(config, minions_of)
    refname = ref_of(master)
    try:
        for _attempt in range(3):
            repo = mirror.repo
            with mirror.locked():
                held = repo.references.get(refname)
                old = held.target if held is not None else None
                current = _record_at(repo, old) if old is not None else None
                if current is not None and current.get("environments") == environments:
                    age = _age(current.get("seen"), at)
                    if not heartbeat or (age is not None and age < HEARTBEAT):
                        return None
                data = {
                    "master": str(master),
                    "host": socket.gethostname(),
                    "seen": at.isoformat(),
                    "environments": environments,
                }
                text = json.dumps(data, indent=1, sort_keys=True) + "\n"
                builder = repo.TreeBuilder()
                builder.insert(_FILE, repo.create_blob(text.encode()), pygit2.enums.FileMode.BLOB)
                who = signature(str(master), "envflow@localhost")
                summary = ", ".join(f"{env} {entry['commit'][:10]}" for env, entry in sorted(environments.items()))
                message = f"{master} serves {summary or 'nothing'}\n"
                # No parent: only the newest record matters, and a chain would grow with every heartbeat.
                new = repo.create_commit(None, who, who, message, builder.write(), [])
            try:
                mirror.update_ref(refname, old, new, rewind=True)  # a new record never descends from the old one
                return None
            except BranchMoved:
                mirror.fetch()
        raise EnvflowError(f"{refname} kept moving")
    except (EnvflowError, pygit2.GitError, OSError) as exc:
        text = " ".join(str(exc).split())
        return f"envflow: what {master} serves could not be recorded on the remote: {text}"


def view(records, config, tips, contains, master=None, at=None):
    """Per environment, each master's commit and since when, and who is behind: what status shows.

    ``records`` is :func:`read`'s result, ``tips`` maps each branch to its
    tip, ``contains(a, b)`` says whether commit ``a`` contains commit ``b``.
    Returns ``{env: {master: {"commit", "since", "seen", "silent", "this",
    "shared_with", "behind_branch", "behind_others", "behind_for"}}}``:
    ``shared_with`` names the masters that deploy into the same directory
    (one file system shared by several hosts, or one host and one path),
    which serve one tree with this one; ``behind_branch``
    when the master serves another commit than its branch's tip,
    ``behind_others`` when another master that still reports serves a newer
    commit, and ``behind_for`` the seconds since the first of those began
    serving it; ``silent`` (seconds since it last reported) once that is
    over :data:`SILENT`, and then it is compared with no one.
    """
    at = at or now()
    fleet = {}
    for env in config.environments:
        entries, trees = {}, {}
        for name, data in sorted(records.items()):
            served = data["environments"].get(env.name)
            if not isinstance(served, dict) or not served.get("commit"):
                continue
            age = _age(data.get("seen"), at)
            entries[name] = {
                "commit": served["commit"],
                "since": served.get("since"),
                "seen": data.get("seen"),
                "silent": round(age) if age is not None and age > SILENT else None,
                "this": name == master,
            }
            # Masters deploying into one directory report its identity; before it was recorded, one host and path.
            trees[name] = ("tree", served["tree"]) if served.get("tree") else (data.get("host"), served.get("path"))
        for name, entry in entries.items():
            entry["shared_with"] = [
                other for other in entries if other != name and None not in trees[name] and trees[other] == trees[name]
            ]
        reporting = [entry for entry in entries.values() if entry["silent"] is None]
        tip = tips.get(env.branch)
        for entry in entries.values():
            newer = [
                other for other in reporting if other["commit"] != entry["commit"] and _contains(contains, other, entry)
            ]
            ages = [_age(other["since"], at) for other in newer if other.get("since")]
            entry["behind_branch"] = tip is not None and entry["commit"] != tip
            entry["behind_others"] = bool(newer) and entry["silent"] is None
            known = [age for age in ages if age is not None]
            entry["behind_for"] = round(max(known)) if known and entry["behind_others"] else None
        if entries:
            fleet[env.name] = entries
    return fleet


def _contains(contains, newer, older):
    try:
        return contains(newer["commit"], older["commit"])
    except (KeyError, ValueError, pygit2.GitError):
        return False  # a commit this mirror does not hold: nothing to say


def disagreeing(records, env_name, master, at=None):
    """The masters (other than ``master``, still reporting) serving ``env_name`` another commit than ``master``:
    ``{master: commit}``; empty when they agree or no other master reports."""
    at = at or now()
    mine = records.get(master, {}).get("environments", {}).get(env_name, {}).get("commit")
    found = {}
    for name, data in records.items():
        served = data["environments"].get(env_name)
        age = _age(data.get("seen"), at)
        if name == master or not isinstance(served, dict) or (age is not None and age > SILENT):
            continue
        if served.get("commit") != mine:
            found[name] = served.get("commit")
    return found


def serves_tree(data, env_name, tree):
    """Whether the record ``data`` says its master serves ``env_name`` from the directory whose id is ``tree``."""
    served = data["environments"].get(env_name)
    return tree is not None and isinstance(served, dict) and served.get("tree") == tree


def minions(records, env_name, at=None):
    """Each master's minions of ``env_name``, for the masters still reporting that list them: ``{master: [...]}``."""
    at = at or now()
    found = {}
    for name, data in records.items():
        served = data["environments"].get(env_name)
        age = _age(data.get("seen"), at)
        if isinstance(served, dict) and isinstance(served.get("minions"), list) and not (age and age > SILENT):
            found[name] = [str(minion) for minion in served["minions"]]
    return found
