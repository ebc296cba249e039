"""Small files in a master's cache directory that remember what it last did: read whole, replaced in one rename."""

import os


def read(path):
    """The text of the mark at ``path`` (stripped), or ``None`` when there is none."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None


def write(path, text):
    """Make the mark at ``path`` hold ``text``: a reader sees the old text or the new one, never a part."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
        handle.write(f"{text}\n")
    os.replace(f"{path}.tmp", path)
