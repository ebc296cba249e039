"""Readable text for what the runner returns: one table row per environment or history entry.

Pure functions from the structured dicts of ``envflow.status``,
``envflow.history``, ``envflow.diff`` and ``envflow.preview`` to text; the ``envflow`` outputter
prints them, and ``--out=json`` (or orchestrate) gets the dicts themselves.
Every cell is one short line: what users typed (reasons, summaries) is cut
and stripped of control characters, so no entry can break the table or the
terminal.
"""

import datetime
import re

from envflow.text import short, span

SUMMARY_WIDTH = 30
HOLD_WIDTH = 40
REASON_WIDTH = 40
MASTER_WIDTH = 20
_CUT = "..."


def cell(value, width=None):
    """``value`` as one table cell: ``-`` for nothing, control characters as spaces, cut to ``width``."""
    if value is None or value == "":
        return "-"
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(value)).split())
    if width is not None and len(text) > width:
        text = text[: width - len(_CUT)].rstrip() + _CUT
    return text


def table(headers, rows):
    """Align ``rows`` (lists of cells) under ``headers`` in columns two spaces apart."""
    lines = [list(headers), *([cell(value) for value in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _parse(iso):
    try:
        when = datetime.datetime.fromisoformat(str(iso))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def age(iso, now):
    """How long ago ``iso`` (an ISO 8601 time) was, as ``2h10m``; ``-`` when unknown."""
    when = _parse(iso) if iso else None
    return span((now - when).total_seconds()) if when else "-"


def when(iso):
    """``iso`` as ``2026-01-05 14:03`` in UTC; ``-`` when unknown."""
    moment = _parse(iso) if iso else None
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M") if moment else "-"


def _holds(entry):
    held = []
    pin = entry.get("pin")
    if pin:
        reason = f": {pin['reason']}" if pin.get("reason") else ""
        held.append(f"pinned by {pin.get('by')}{reason}")
    freeze = entry.get("freeze")
    if freeze:
        until = f" until {when(freeze['until'])}" if freeze.get("until") else ""
        reason = f": {freeze['reason']}" if freeze.get("reason") else ""
        held.append(f"frozen by {freeze.get('by')}{until}{reason}")
    return "; ".join(held)


def _sync(entry):
    if entry.get("problem"):
        return "?"
    if entry.get("in_sync"):
        return "yes"
    ahead = entry.get("ahead")
    return f"no, branch +{ahead}" if ahead else "no"


def _gates(entry):
    gates = entry.get("gates")
    if gates is None:
        return "-"
    return ", ".join(line.split(":", 1)[0] for line in gates) if gates else "none"


def status_table(report, now=None):
    """``envflow.status``'s return as a table, then each environment's problem and the configuration warnings."""
    now = now or datetime.datetime.now(tz=datetime.timezone.utc)
    environments = report.get("environments") or {}
    headers = ["ENV", "BRANCH", "SERVES", "SINCE", "IN SYNC", "WAITING", "DRIFT", "HOLDS", "GATES"]
    rows, notes = [], []
    for name, entry in environments.items():
        served = entry.get("served")
        serves = f"{short(served['id'])} {cell(served.get('summary'), SUMMARY_WIDTH)}" if served else None
        rows.append(
            [
                name,
                entry.get("branch"),
                "?" if entry.get("problem") else serves,
                age(served.get("since"), now) if served else None,
                _sync(entry),
                entry.get("waiting"),
                entry.get("drift"),
                cell(_holds(entry), HOLD_WIDTH),
                _gates(entry),
            ]
        )
        if entry.get("problem"):
            notes.append(f"{name}: {cell(entry['problem'])}")
    notes.extend(f"warning: {cell(line)}" for line in report.get("warnings") or [])
    fleet = _fleet_table(report.get("fleet"), now)
    branches = _branch_table(report.get("branch_environments"), now)
    return "\n".join(
        [table(headers, rows), *notes, *([("\n" + fleet)] if fleet else []), *([("\n" + branches)] if branches else [])]
    )


def _branch_table(report, now):
    """The branch environments, one row each (saltenv, branch, commit, since, in sync); then those not served."""
    if not report:
        return ""
    rows, notes = [], []
    for saltenv, entry in (report.get("environments") or {}).items():
        serves = None
        if entry.get("deployed"):
            serves = f"{short(entry['deployed'])} {cell(entry.get('summary'), SUMMARY_WIDTH)}"
        sync = "?" if entry.get("problem") else ("yes" if entry.get("in_sync") else "no")
        rows.append([saltenv, cell(entry.get("branch"), 40), serves, age(entry.get("since"), now), sync])
        for key in ("problem", "goes"):
            if entry.get(key):
                notes.append(f"{saltenv}: {cell(entry[key])}")
    notes.extend(f"not served: {cell(line)}" for line in (report.get("refused") or {}).values())
    notes.extend(f"not served: {cell(line)}" for line in (report.get("capped") or {}).values())
    title = f"branch environments in {report.get('path')}: {len(rows)} served"
    return "\n".join([title, table(["SALTENV", "BRANCH", "SERVES", "SINCE", "IN SYNC"], rows), *notes])


def _fleet_state(entry, now):
    if entry.get("silent") is not None:
        return f"silent for {span(entry['silent'])}"
    behind = []
    if entry.get("behind_others"):
        behind.append(
            f"behind the others for {span(entry['behind_for'])}" if entry.get("behind_for") is not None else "behind"
        )
    if entry.get("behind_branch"):
        behind.append("behind its branch")
    shared = [f"one tree with {', '.join(entry['shared_with'])}"] if entry.get("shared_with") else []
    return ", ".join([*shared, *(behind or ["ok"])])


def _fleet_table(fleet, now):
    """Each master's row per environment: what it serves, since when, when it last reported, and who is behind."""
    # A master alone has no one to be behind: its own row would only repeat the table above.
    if not fleet or len({master for masters in fleet.values() for master in masters}) < 2:
        return ""
    rows = [
        [
            name,
            cell(f"{master} (this one)" if entry.get("this") else master, MASTER_WIDTH + len(" (this one)")),
            short(entry["commit"]),
            age(entry.get("since"), now),
            age(entry.get("seen"), now),
            _fleet_state(entry, now),
        ]
        for name, masters in fleet.items()
        for master, entry in masters.items()
    ]
    return table(["ENV", "MASTER", "SERVES", "SINCE", "REPORTED", "STATE"], rows)


def _moved(entry):
    old, new = entry.get("from"), entry.get("to")
    if not (old or new):
        return "-"
    return f"{short(old) if old else '-'} -> {short(new) if new else '-'}"


def history_table(report):
    """``envflow.history``'s return as a table, newest first as it comes."""
    entries = report.get("history") or []
    if not entries:
        return "no history recorded yet"
    headers = ["WHEN (UTC)", "ACTION", "ENV", "FROM -> TO", "BY", "REASON", "MASTER"]
    rows = [
        [
            when(entry.get("at")),
            entry.get("action"),
            entry.get("env"),
            _moved(entry),
            entry.get("by"),
            cell(entry.get("reason"), REASON_WIDTH),
            cell(entry.get("master"), MASTER_WIDTH),
        ]
        for entry in entries
    ]
    lines = table(headers, rows).split("\n")
    # Each submodule a promotion or deploy moved, on a line of its own under the entry's row.
    shown = [lines[0]]
    for line, entry in zip(lines[1:], entries, strict=True):
        shown.append(line)
        shown.extend(f"    {cell(moved)}" for moved in entry.get("submodules") or [])
    return "\n".join(shown)


def diff_text(report):
    """``envflow.diff``'s return as ``git show --stat`` would print it: what is compared, commits, files, patch."""
    old, new = report.get("from"), report.get("to")
    if "env" in report:
        head = f"promote {report['env']} ({report.get('branch')}): {report.get('upstream')} serves {short(new)}"
        head += f", {report.get('branch')} is at {short(old) if old else '-'}"
    else:
        head = f"{report.get('from_env')} serves {short(old)}, {report.get('to_env')} serves {short(new)}"
    lines = [head]
    if report.get("blocked"):
        lines.append(f"blocked: {cell(report['blocked'])}")
    lines.extend(f"held back: {cell(line.partition(': ')[2] or line)}" for line in report.get("holds") or [])
    totals = report.get("totals") or {}
    sections = (
        ("commits", f"commits ({totals.get('commits', 0)}):"),
        ("dropped", f"dropped, not in {short(new)} ({totals.get('dropped', 0)}):"),
        ("files", f"files ({totals.get('files', 0)}, +{totals.get('added', 0)} -{totals.get('removed', 0)}):"),
        ("submodules", f"submodules ({len(report.get('submodules') or [])}):"),
    )
    for key, title in sections:
        if report.get(key):
            lines.append(title)
            lines.extend(f"  {cell(item)}" for item in report[key])
    if not report.get("commits") and not report.get("dropped") and not report.get("files"):
        lines.append("no difference")
    if report.get("patch"):
        lines.append(report["patch"].rstrip("\n"))
    return "\n".join(lines)


# What Salt's file states add to every comment in test mode; the text leaves it out (--out=json keeps it).
_TEST_NOTE = re.compile(r"\s*Note: No changes made, actual changes may\s+be different due to other states\.")
PREVIEW_STATES = 20  # states shown per minion; --out=json has them all (up to the report's own cap)
COMMENT_SHOWN = 2  # lines of a state's comment shown
DIFF_SHOWN = 12  # lines of a state's diff (or changes) shown


def _preview_state(state):
    """One state that would change or fail: its outcome, function, id and name, then its comment and diff."""
    what = "fails" if state.get("result") is False else "changes"
    name = state.get("name")
    named = f" ({cell(name, SUMMARY_WIDTH * 2)})" if name and name != state.get("id") else ""
    lines = [f"  {what}: {cell(state.get('function'))} {cell(state.get('id'))}{named}"]
    comment = [line for line in _TEST_NOTE.sub("", str(state.get("comment") or "")).splitlines() if line.strip()]
    lines.extend(f"      {cell(line, 200)}" for line in comment[:COMMENT_SHOWN])
    changes = state.get("changes") or {}
    diff = changes.get("diff") if isinstance(changes, dict) else None
    detail = diff.splitlines() if isinstance(diff, str) else ([f"changes: {cell(changes)}"] if changes else [])
    lines.extend(f"      {cell(line, 200)}" for line in detail[:DIFF_SHOWN])
    if len(detail) > DIFF_SHOWN:
        lines.append(f"      ... {len(detail) - DIFF_SHOWN} more lines (--out=json)")
    return lines


def preview_text(report):
    """``envflow.preview``'s return: one line per minion, then the states that would change or fail on each."""
    head = f"preview of {report.get('env')}: {short(report.get('commit'))}"
    if report.get("upstream"):
        head += f" from {report['upstream']}"
    head += f" in saltenv {report.get('saltenv')}, job {report.get('jid')}"
    lines = [head]
    for minion, entry in report["minions"].items():
        lines.append(f"{minion}: {entry.get('changes', 0)} to change, {entry.get('failed', 0)} failing")
    lines.extend(f"{minion}: did not answer" for minion in report.get("no_answer") or [])
    for minion, entry in report["minions"].items():
        states = entry.get("states") or []
        if not states and not entry.get("error"):
            continue
        lines.append("")
        lines.append(f"{minion}:")
        if entry.get("error"):
            lines.extend(f"  error: {cell(line, 200)}" for line in str(entry["error"]).splitlines()[:DIFF_SHOWN])
        for state in states[:PREVIEW_STATES]:
            lines.extend(_preview_state(state))
        more = len(states) - PREVIEW_STATES + (entry.get("more") or 0)
        if more > 0:
            lines.append(f"  ... and {more} more states (--out=json)")
    lines.extend(["", str(report["error"])] if report.get("error") else [])
    lines.extend(["", *map(str, report["warnings"])] if report.get("warnings") else [])
    return "\n".join(lines)


def render(data):
    """The text for a runner's return, by its shape; ``None`` for a shape this module does not know."""
    if isinstance(data, dict) and isinstance(data.get("minions"), dict) and "no_answer" in data and "jid" in data:
        return preview_text(data)
    if not isinstance(data, dict) or "retcode" in data:
        return None
    if isinstance(data.get("history"), list):
        return history_table(data)
    if isinstance(data.get("environments"), dict) and all(
        isinstance(entry, dict) and "branch" in entry for entry in data["environments"].values()
    ):
        return status_table(data)
    if "files" in data and "totals" in data:
        return diff_text(data)
    return None
