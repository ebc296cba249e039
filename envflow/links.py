"""Which symlinks of a tree envflow refuses to serve.

Salt's ``roots`` file server follows symlinks: ``leak -> /etc/passwd`` would
hand the master's file to every minion, and ``loop -> .`` (or ``a/l -> ../b``
with ``b/l -> ../a``) makes its file walk endless. A link is refused when its
target is absolute, when it resolves outside the tree, or when it leads into a
directory from which a walk following links comes back to it.
"""

import os


def unsafe_links(root, paths):
    """The symlinks among ``paths`` (relative to ``root``, all present on disk) that are refused.

    Returns ``[{"path", "target"}]`` sorted by path. Links are judged together,
    as they stand on disk: ``a -> b`` with ``b -> /etc`` leads out of the tree too.
    """
    root = os.path.realpath(root)
    refused, into_dirs = {}, {}
    for path in sorted(paths):
        full = os.path.join(root, path)
        if not os.path.islink(full):
            continue
        target = os.readlink(full)
        resolved = os.path.realpath(full)
        if os.path.isabs(target) or not resolved.startswith(root + os.sep):
            refused[path] = target
        elif os.path.isdir(resolved):
            into_dirs[path] = resolved
    for path in _walk_cycles(root, into_dirs):
        refused[path] = os.readlink(os.path.join(root, path))
    return [{"path": path, "target": refused[path]} for path in sorted(refused)]


def _walk_cycles(root, into_dirs):
    """The directory symlinks that a walk following links (as Salt's) would go round and round through.

    ``into_dirs`` maps each link's path to the directory it resolves to.
    Following link A leads into its directory, where the walk meets every
    link below it; a link that can lead back to itself makes the walk endless.
    """
    below = {
        path: {other for other in into_dirs if os.path.join(root, other).startswith(target + os.sep)}
        for path, target in into_dirs.items()
    }
    cycling = set()
    for start in into_dirs:
        seen, stack = set(), list(below[start])
        while stack:
            current = stack.pop()
            if current == start:
                cycling.add(start)
                break
            if current not in seen:
                seen.add(current)
                stack.extend(below[current])
    return cycling
