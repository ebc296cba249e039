"""Gate records (verifications, approvals, forced promotions) kept in the remote repository.

Each commit's records are one JSON git note on ``refs/notes/envflow``, so every
master sees the same ones and plain git reads them::

    git fetch origin refs/notes/envflow:refs/notes/envflow
    git notes --ref=envflow show <commit>

The note maps each kind to environments and their entries::

    {"approved": {"prod": [{"by": "alice", "at": "2026-11-27T21:14:25+00:00"}]},
     "verified": {"stage": [{"by": "root", "at": "...", "jid": "20261127211425123456"}]},
     "forced":   {"prod": [{"by": "bob", "at": "...", "reason": "...", "gates": ["..."]}]}}

Writing is a compare-and-swap of the notes reference on the remote (see
:meth:`envflow.remote.Mirror.update_ref`), retried on a race after a fresh
fetch: records only ever grow, so a retry merges, never overwrites.
"""

import datetime
import json

from envflow.errors import BranchMoved, RemoteError
from envflow.remote import NOTES, signature

_ATTEMPTS = 5


def now_iso():
    """The current time, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(tz=datetime.timezone.utc).replace(microsecond=0).isoformat()


def read(mirror, commit_id):
    """The records of ``commit_id`` as a dict (empty when it has none). The mirror must be fetched."""
    try:
        note = mirror.repo.lookup_note(str(commit_id), NOTES)
    except KeyError:
        return {}
    try:
        records = json.loads(note.message)
    except ValueError:
        records = None
    # Keep only what has envflow's shape: a note written by hand counts as no record, and is replaced.
    if not isinstance(records, dict):
        return {}
    return {
        kind: {
            env: [entry for entry in listed if isinstance(entry, dict) and isinstance(entry.get("by"), str)]
            for env, listed in by_env.items()
            if isinstance(env, str) and isinstance(listed, list)
        }
        for kind, by_env in records.items()
        if isinstance(by_env, dict)
    }


def entries(records, kind, env):
    """The entries of ``kind`` recorded for ``env``."""
    return records.get(kind, {}).get(env, [])


def _same(old, new):
    """Whether record ``new`` replaces ``old``: the same person (and, for a verification, the same master)."""
    return old.get("by") == new["by"] and old.get("master") == new.get("master")


def add(mirror, commit_id, kind, env, entry):
    """Record ``entry`` (a dict with at least ``by``) of ``kind`` for ``env`` on ``commit_id``, on the remote.

    Returns the commit's records after the write. An approval by someone who
    already has one for that environment replaces theirs (one per person
    counts), and so does a verification by someone who has one from the same
    master (each master's counts for its minions); forced promotions are all
    kept, for the audit trail.
    """
    entry = {**entry, "at": entry.get("at") or now_iso()}
    for _attempt in range(_ATTEMPTS):
        repo = mirror.repo
        # Under the mirror's lock: a fetch in another process removes lock files it takes for stale.
        with mirror.locked():
            ref = repo.references.get(NOTES)
            old = ref.target if ref is not None else None
            records = read(mirror, commit_id)
            listed = [item for item in entries(records, kind, env) if kind == "forced" or not _same(item, entry)]
            records.setdefault(kind, {})[env] = [*listed, entry]
            who = signature(entry["by"], "envflow@localhost")
            text = json.dumps(records, indent=1, sort_keys=True) + "\n"
            repo.create_note(text, who, who, str(commit_id), NOTES, True)
            new = repo.references[NOTES].target
        try:
            mirror.update_ref(NOTES, old, new)
            return records
        except BranchMoved:
            mirror.fetch()  # another master recorded meanwhile: merge with its records
    raise RemoteError(f"envflow: could not record on {mirror.shown}: {NOTES} kept moving; run the command again")
