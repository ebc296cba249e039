"""How envflow shows commit ids and what users typed, in its one-line messages."""

_ECHO_LIMIT = 80


def short(commit_id):
    """The short form of a commit id, as every message shows it: its first ten characters."""
    return str(commit_id)[:10]


def echo(value, quoted=True, limit=_ECHO_LIMIT):
    """User input for a message (its ``repr``, or ``str`` when not ``quoted``), cut to about ``limit`` characters.

    A 10,000-character ``rev`` shows as ``'3f2c9a1...' (10000 characters)``: the message stays one short line.
    """
    text = repr(value) if quoted else str(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 3]}... ({len(str(value))} characters)"


def capped(items, limit=50):
    """``items`` as a list of at most ``limit``, then ``... and N more``: long lists stay small in returns."""
    items = list(items)
    return items[:limit] + ([f"... and {len(items) - limit} more"] if len(items) > limit else [])


def span(seconds):
    """``5400`` -> ``1h30m``: a length of time in its two largest units."""
    seconds, parts = max(0, int(seconds)), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])
