"""Hotfix back-merge: bring the commits only an environment's branch holds into the first environment's branch.

A hotfix committed straight on ``master`` (prod) blocks every later
promotion into prod, which is fast-forward only (:func:`envflow.pipeline.plan`).
Copying the hotfix into ``develop`` (a cherry-pick) would not help: prod's
branch would still hold a commit the promoted one lacks. So the back-merge
makes ``develop`` contain the tip of prod's branch itself: a fast-forward
when ``develop`` has not moved since, else a merge commit whose second
parent is that tip. The branches in between (``stage``) only ever moved
along ``develop``, so they are its ancestors still; after ``refresh test``,
``promote stage`` and ``promote prod`` all fast-forward, and every branch
of the pipeline holds the hotfix. A branch in between that holds commits
of its own is named in the report's ``warnings``: it needs a back-merge too.

The merge is computed in memory on envflow's bare mirror (no working tree),
``develop`` moves on the remote as a compare-and-swap, and the back-merge is
recorded in the history (:mod:`envflow.history`).
"""

from dataclasses import dataclass, field

import pygit2

from envflow import history
from envflow.errors import BranchMoved, EnvflowError
from envflow.remote import signature
from envflow.text import capped, echo, short

FAST_FORWARD = "fast-forward"
MERGE = "merge"
_LISTED = 5  # conflicting files named in the one-line message
_RECORDED = 20  # commits listed in the history entry and the merge commit's message


class Conflicted(EnvflowError):
    """The back-merge conflicts; ``conflicts`` lists the files, ``commits`` the commits that were to be merged."""

    def __init__(self, message, conflicts, commits):
        super().__init__(message)
        self.conflicts = conflicts
        self.commits = commits


@dataclass
class BackMerge:
    """What a back-merge of ``env``'s branch into ``first``'s branch would do, computed on the mirror.

    ``kind`` is :data:`FAST_FORWARD`, :data:`MERGE` or ``None`` (nothing to
    do); ``old`` is the first branch's tip, ``theirs`` ``env``'s; ``tree``
    the merged tree (a merge only); ``commits`` the ``(id, summary)`` pairs
    ``env``'s branch holds and the first branch lacks, newest first.
    """

    env: object
    first: object
    old: pygit2.Oid
    theirs: pygit2.Oid
    kind: str
    commits: list
    tree: pygit2.Oid = None
    conflicts: list = field(default_factory=list)


@dataclass
class Backported:
    """What :func:`backport` did: the ``report`` runners return and the full ids of the ``commits`` brought in."""

    report: dict
    commits: list


def _lines(commits):
    return [f"{short(cid)} {summary}" for cid, summary in commits]


def plan(config, mirror, name):
    """Compute the back-merge of environment ``name``'s branch into the first environment's, changing no branch.

    Raises :class:`EnvflowError` for the first environment and for a branch
    missing on the remote. Conflicts are not raised here: they are listed in
    the plan's ``conflicts``. The mirror must be freshly fetched.
    """
    env = config.environment(name)
    first = config.environments[0]
    if env == first:
        others = " or ".join(other.name for other in config.environments[1:]) or "another environment"
        raise EnvflowError(
            f"envflow: {env.name} is the first environment of the pipeline: envflow.backport brings the commits "
            f"of a later environment's branch into {first.branch}; give {others}"
        )
    theirs = mirror.tip(env.branch)
    if theirs is None:
        raise EnvflowError(
            f"envflow: branch {echo(env.branch)} of {env.name} does not exist in {mirror.shown}, so there is "
            f"nothing to back-merge; push it, or fix the branch of {env.name}"
        )
    old = mirror.tip(first.branch)
    if old is None:
        raise EnvflowError(
            f"envflow: branch {echo(first.branch)} of {first.name} does not exist in {mirror.shown}, so there is "
            f"nothing to back-merge into; push it, or fix the branch of {first.name}"
        )
    commits = mirror.commits(theirs, old, limit=1000)
    if mirror.contains(old, theirs):
        return BackMerge(env, first, old, theirs, None, [])
    if mirror.contains(theirs, old):
        return BackMerge(env, first, old, theirs, FAST_FORWARD, commits)
    repo = mirror.repo
    try:
        index = repo.merge_commits(old, theirs)
    except pygit2.GitError as exc:
        raise EnvflowError(
            f"envflow: cannot merge {env.branch} into {first.branch}: {' '.join(str(exc).split())}; "
            f"merge them by hand and push {first.branch}"
        ) from None
    if index.conflicts is not None:
        paths = sorted({(ours or their or ancestor).path for ancestor, ours, their in index.conflicts})
        return BackMerge(env, first, old, theirs, MERGE, commits, conflicts=paths)
    return BackMerge(env, first, old, theirs, MERGE, commits, tree=index.write_tree(repo))


def _conflicted(merge):
    env, first, paths = merge.env, merge.first, merge.conflicts
    listed = ", ".join(echo(path) for path in paths[:_LISTED])
    more = f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
    return Conflicted(
        f"envflow: back-merging {len(merge.commits)} commit(s) of {env.branch} ({env.name}) into {first.branch} "
        f"conflicts in {len(paths)} file(s): {listed}{more}; nothing changed: merge {env.branch} into "
        f"{first.branch} by hand, resolve them, push {first.branch} and promote it through the pipeline from "
        f"{first.name}",
        capped(paths),
        capped(_lines(merge.commits)),
    )


def _merge_commit(mirror, merge, by):
    """Write the merge commit of ``merge`` (planned, without conflicts) into the mirror; return its id."""
    env, first = merge.env, merge.first
    listed = "\n".join(f"- {line}" for line in capped(_lines(merge.commits), _RECORDED))
    message = (
        f"Back-merge {len(merge.commits)} commit(s) of {env.branch} ({env.name}) into {first.branch}\n\n"
        f"{listed}\n\nMade by salt-run envflow.backport {env.name}, so that promotions from {first.name} "
        f"fast-forward {env.branch} again.\n"
    )
    who = signature(by)
    return mirror.repo.create_commit(None, who, who, message, merge.tree, [merge.old, merge.theirs])


def _still_diverged(config, mirror, merge, new):
    """One line per environment (but the first) whose branch holds commits ``new`` lacks: they block its promotion.

    ``new`` is ``None`` for a merge not made (a dry run): it would hold what both its parents hold.
    """
    found = []
    for other in config.environments[1:]:
        tip = mirror.tip(other.branch)
        held = [new] if new is not None else [merge.old, merge.theirs]
        if tip is None or any(mirror.contains(commit, tip) for commit in held):
            continue
        found.append(
            f"{other.branch} ({other.name}) still holds commits {merge.first.branch} lacks, which block promoting "
            f"into {other.name}: run salt-run envflow.backport {other.name} too"
        )
    return found


def backport(config, mirror, name, by=None, dry_run=False):
    """Back-merge environment ``name``'s branch into the first environment's, as one transaction; a :class:`Backported`.

    In order: the plan (refused for the first environment and missing
    branches; :class:`Conflicted`, changing nothing, on a conflict), the
    merge commit written in the mirror (authored and committed by ``by``),
    the first branch moved on the remote as a compare-and-swap (on a race,
    :class:`BranchMoved` and nothing changed), then the entry ``backported``
    in the history. With ``dry_run`` the report says what would happen and
    nothing changes. The mirror must be freshly fetched.
    """
    merge = plan(config, mirror, name)
    env, first = merge.env, merge.first
    if merge.conflicts:
        raise _conflicted(merge)
    old = str(merge.old)
    report = {
        "env": env.name,
        "into": first.name,
        "branch": first.branch,
        "old": old,
        "new": old,
        "kind": merge.kind,
        "commits": capped(_lines(merge.commits)),
        "files": [],
    }
    ids = [cid for cid, _summary in merge.commits][:50]  # enough for an event; the count is in the comment
    if merge.kind is None:
        report["comment"] = f"nothing to do: {first.branch} already holds every commit of {env.branch} ({env.name})"
        return Backported({**report, "dry_run": True} if dry_run else report, [])
    count = len(merge.commits)
    if merge.kind == FAST_FORWARD:
        new, tree = merge.theirs, merge.theirs
        done = f"fast-forward{'' if dry_run else 'ed'} {first.branch} to {env.branch} ({env.name}): {count} commit(s)"
    else:
        new, tree = None if dry_run else _merge_commit(mirror, merge, by), merge.tree
        done = f"merge{'' if dry_run else 'd'} {count} commit(s) of {env.branch} ({env.name}) into {first.branch}"
    report["files"] = capped([f"{status} {path}" for status, path in mirror.changed_files(merge.old, tree)])
    warnings = _still_diverged(config, mirror, merge, new)
    report["comment"] = (
        f"would {done}" if dry_run else f"{done}; now promote them through the pipeline from {first.name}"
    )
    report["new"] = str(new) if new is not None else None
    if warnings:
        report["warnings"] = warnings
    if dry_run:
        return Backported({**report, "dry_run": True}, ids)
    try:
        mirror.update_branch(first.branch, merge.old, new)
    except BranchMoved:
        raise BranchMoved(
            f"envflow: {first.branch} moved on {mirror.shown} while {env.branch} was being back-merged into it; "
            f"nothing changed: run salt-run envflow.backport {env.name} again"
        ) from None
    entry = {
        "action": "backported",
        "env": env.name,
        "by": by,
        "from": old,
        "to": str(new),
        "into": first.name,
        "branch": first.branch,
        "commits": capped(_lines(merge.commits), _RECORDED),
        "merge": merge.kind == MERGE,
    }
    try:
        history.record(mirror, entry)
    except EnvflowError as exc:
        raise EnvflowError(
            f"envflow: {first.branch} now holds {env.branch} at {short(new)}, but recording the back-merge in "
            f"the history failed: {exc}"
        ) from None
    return Backported(report, ids)
