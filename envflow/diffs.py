"""What a promotion would bring, and how the trees two environments serve differ.

Both are one comparison of two commits of the mirror (:func:`compare`): the
commits the newer one brings, those it drops (a branch that diverged), the
files that change with their added and removed line counts, and, if asked,
the unified diff, capped so a return stays small.
"""

import sys

import pygit2

from envflow import history, holds, pipeline, submodules
from envflow.errors import Diverged, EnvflowError
from envflow.served import ServedDir
from envflow.text import capped, short

COMMITS_SHOWN = 50
FILES_SHOWN = 200
PATCH_LINES = 500
PATCH_BYTES = 64 * 1024
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # what git compares with when there is no old commit


def _file_line(patch):
    """``M web/init.sls (+3 -1)``, or ``A logo.png (binary)``; and the ``(added, removed)`` counts."""
    delta = patch.delta
    path = delta.new_file.path or delta.old_file.path
    if delta.is_binary:
        return f"{delta.status_char()} {path} (binary)", (0, 0)
    _context, added, removed = patch.line_stats
    return f"{delta.status_char()} {path} (+{added} -{removed})", (added, removed)


class _Capped:
    """The unified diff, up to :data:`PATCH_LINES` lines and :data:`PATCH_BYTES` bytes; counts what it cut."""

    def __init__(self, private=()):
        self.lines, self.size, self.cut_lines, self.cut_bytes = [], 0, 0, 0
        self.private = tuple(f"{directory.rstrip('/')}/" for directory in private)

    def add(self, patch):
        path = patch.delta.new_file.path or patch.delta.old_file.path
        if path.startswith(self.private):
            # Pillar often holds secrets, and a runner's return lands in the job cache and on the event bus.
            text = f"--- {path}: pillar, not shown here (it may hold secrets); git diff shows it\n"
        else:
            text = patch.data.decode("utf-8", "replace")
        for line in text.splitlines(keepends=True):
            size = len(line.encode("utf-8"))
            if not self.cut_lines and len(self.lines) < PATCH_LINES and self.size + size <= PATCH_BYTES:
                self.lines.append(line)
                self.size += size
            else:
                self.cut_lines += 1
                self.cut_bytes += size

    def text(self, old, new):
        text = "".join(self.lines)
        if self.cut_lines:
            text += (
                f"... {self.cut_lines} more lines ({self.cut_bytes} bytes) cut: the patch is capped at "
                f"{PATCH_LINES} lines and {PATCH_BYTES // 1024} KiB; git diff {old or _EMPTY_TREE} {new} shows it all\n"
            )
        return text


def compare(mirror, old, new, patch=False, private=()):
    """Compare commit ``old`` (``None``: nothing) with ``new``, both commit ids of the mirror.

    Returns ``from`` and ``to`` (the ids), ``commits`` (``<short id> <summary>``
    of those in ``new`` and not in ``old``, newest first), ``dropped`` (those
    in ``old`` and not in ``new``), ``files`` (``<status> <path> (+added
    -removed)``, or ``(binary)``), ``totals`` (whole counts: the lists stop at
    :data:`COMMITS_SHOWN` and :data:`FILES_SHOWN` entries, and then end with
    ``... and N more``) and, with ``patch``, the unified diff as ``patch``,
    where the files under the ``private`` directories (the pillar) are named
    but not shown.
    """
    repo = mirror.repo
    everything = sys.maxsize
    commits = mirror.commits(new, old, limit=everything)
    dropped = mirror.commits(old, new, limit=everything) if old is not None else []
    new_tree = repo[new].peel(pygit2.Tree)
    diff = new_tree.diff_to_tree(swap=True) if old is None else repo.diff(repo[old].peel(pygit2.Tree), new_tree)
    files, added, removed, shown = [], 0, 0, _Capped(private)
    for changed in diff:
        line, (plus, minus) = _file_line(changed)
        files.append(line)
        added, removed = added + plus, removed + minus
        if patch:
            shown.add(changed)
    report = {
        "from": old,
        "to": new,
        "commits": capped([f"{short(cid)} {summary}" for cid, summary in commits], COMMITS_SHOWN),
        "dropped": capped([f"{short(cid)} {summary}" for cid, summary in dropped], COMMITS_SHOWN),
        "files": capped(files, FILES_SHOWN),
        "totals": {
            "commits": len(commits),
            "dropped": len(dropped),
            "files": len(files),
            "added": added,
            "removed": removed,
        },
    }
    moved = submodules.bumps(mirror, old, new)
    if moved:
        report["submodules"] = moved
    if patch:
        report["patch"] = shown.text(old and short(old), short(new))
    return report


def promotion(config, mirror, name, patch=False):
    """What ``envflow.promote <name>`` would bring: :func:`compare` of ``name``'s branch tip and the commit to promote.

    The commit is chosen as :func:`envflow.pipeline.plan` chooses it (the one
    deployed in the environment before ``name``). A promotion that
    :func:`~envflow.pipeline.plan` refuses because the branch diverged is
    still compared: ``dropped`` lists the commits only the branch has, and
    ``blocked`` holds the refusal's one-line reason. ``holds`` lists the pin
    and freeze that would hold the promotion back (as ``promote ...
    dry_run=True`` does), when there are any. Its other refusals (the first
    environment, nothing deployed upstream) are raised. The mirror must be
    freshly fetched.
    """
    blocked = None
    try:
        planned = pipeline.plan(config, mirror, name)
        env, upstream, old, new = planned.env, planned.upstream, planned.old, planned.new
    except Diverged as exc:
        env, upstream = config.environment(name), config.upstream(name)
        old, new, blocked = str(mirror.tip(env.branch)), pipeline.deployed_id(upstream), str(exc)
    compared = compare(mirror, old, new, patch, private=_pillar_dirs(env))
    report = {"env": env.name, "branch": env.branch, "upstream": upstream.name, **compared}
    if blocked:
        report["blocked"] = blocked
    held = [line for _hold, line, _lift in holds.in_the_way(history.holds(mirror), env.name, pinned_too=True)]
    if held:
        report["holds"] = held
    return report


def _served_commit(mirror, env):
    served = ServedDir(env.path).deployed()
    if served is None:
        raise EnvflowError(
            f"envflow: nothing is deployed in {env.name}, so there is nothing to compare; "
            f"run envflow.refresh {env.name} first"
        )
    if served["id"] not in mirror.repo:
        raise EnvflowError(
            f"envflow: {short(served['id'])}, which {env.name} serves, is no longer in {mirror.shown} "
            "(its branch was rewritten), so it cannot be compared"
        )
    return served["id"]


def served(config, mirror, first, second, patch=False):
    """How what ``second`` serves differs from what ``first`` serves: :func:`compare` of their deployed commits.

    ``from_env`` and ``to_env`` name them. Raises :class:`EnvflowError` when
    either serves nothing.
    """
    envs = config.environment(first), config.environment(second)
    old, new = (_served_commit(mirror, env) for env in envs)
    compared = compare(mirror, old, new, patch, private=_pillar_dirs(*envs))
    return {"from_env": envs[0].name, "to_env": envs[1].name, **compared}


def _pillar_dirs(*envs):
    """The pillar directories of ``envs`` in the repository, whose patches are never shown."""
    return sorted({env.pillar for env in envs if env.pillar})
