"""Which symlinks of a tree envflow refuses to serve.

Salt's ``roots`` file server follows symlinks: ``leak -> /etc/passwd`` would
hand the master's file to every minion, and ``loop -> .`` (or ``a/l -> ../b``
with ``b/l -> ../a``) makes its file walk endless. A link is refused when its
target is absolute, when resolving it steps out of the tree at any point (even
to come back: ``../stage/x`` means something else in each place the tree is
put), when it leads to the tree's root, or when it leads into a directory
from which a walk following the other links comes back to it.
"""

import os

# As the kernel does (ELOOP): a resolution that expands this many links is a loop of links, which
# leads nowhere (Salt cannot read it either) and is served as it is, like a dangling link.
_MAX_EXPANSIONS = 40


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
        resolved = _resolve(root, path)
        if resolved is None or resolved == root:
            # Out of the tree, or to its root, which holds the link itself: refused whatever else is there.
            refused[path] = os.readlink(full)
        elif os.path.isdir(resolved) and not os.path.islink(resolved):
            into_dirs[path] = resolved
    # Among the others (the refused ones are not served, so no walk takes them), the cycles.
    for path in _walk_cycles(root, into_dirs):
        refused[path] = os.readlink(os.path.join(root, path))
    return [{"path": path, "target": refused[path]} for path in sorted(refused)]


def _resolve(root, path):
    """Where ``path`` leads, as a path under ``root`` with every link followed, or ``None`` if it leaves the tree.

    Resolution goes component by component, as the kernel's does, but the
    tree's root is a wall: ``..`` there, or an absolute target, leaves the
    tree. A link that does not lead anywhere (dangling) resolves to where it
    points, inside the tree; a loop of links (``x -> x``) to itself.
    """
    pending, resolved, expansions = path.split("/"), [], 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        full = os.path.join(root, *resolved, part)
        if os.path.islink(full):
            expansions += 1
            target = os.readlink(full)
            if os.path.isabs(target):
                return None
            if expansions > _MAX_EXPANSIONS:
                return os.path.join(root, path)
            pending = target.split("/") + pending
        else:
            resolved.append(part)
    return os.path.join(root, *resolved)


def _walk_cycles(root, into_dirs):
    """The directory symlinks that a walk following links (as Salt's) would go round and round through.

    ``into_dirs`` maps each link's path to the directory it resolves to.
    Following link A leads into its directory, where the walk meets every
    link below it; a link that can lead back to itself makes the walk endless.
    """
    below = {
        path: {other for other in into_dirs if (os.path.join(root, other) + os.sep).startswith(target + os.sep)}
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
