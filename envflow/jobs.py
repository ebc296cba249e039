"""Judging a Salt job from the master's job cache: did every targeted minion answer, and did every state pass?

Works on the dict ``salt-run jobs.list_job <jid>`` returns (``Function``,
``Minions``, ``StartTime``, ``Result``: minion -> ``{"return": ..., "retcode": ...}``).
"""

import datetime

# A verification needs the environment's whole state run: a highstate, or state.apply without mods.
STATE_FUNCTIONS = ("state.highstate", "state.apply")


def jid_time(jid, utc=False):
    """When job ``jid`` started, as an aware UTC datetime (Salt writes local time unless ``utc_jid``)."""
    started = datetime.datetime.strptime(str(jid)[:20], "%Y%m%d%H%M%S%f")
    started = started.replace(tzinfo=datetime.timezone.utc) if utc else started.astimezone()
    return started.astimezone(datetime.timezone.utc)


def _arguments(job):
    """The mods and the keyword arguments a job was called with."""
    arguments, keywords = job.get("Arguments") or [], {}
    for argument in arguments:
        if isinstance(argument, dict) and argument.get("__kwarg__"):
            keywords.update(argument)
    mods = [argument for argument in arguments if not (isinstance(argument, dict) and argument.get("__kwarg__"))]
    if keywords.get("mods"):
        mods.append(keywords["mods"])
    return mods, keywords


def is_highstate(job):
    """Whether ``job`` applied whole highstates for real: no mods, not in test mode."""
    mods, keywords = _arguments(job)
    return job.get("Function") in STATE_FUNCTIONS and not mods and str(keywords.get("test")).lower() != "true"


def _state_id(key):
    parts = key.split("_|-")
    return parts[1] if len(parts) > 1 else key


def failures(job, expected=()):
    """Why ``job`` does not show a passing state run: one line per problem, empty when it passed.

    ``expected`` names minions that must be among those that answered (the
    environment's minions), on top of the job's own targets.
    """
    if not job or (not job.get("Function") and not job.get("Result")):
        return ["it is not in the master's job cache"]
    if job.get("Function") not in STATE_FUNCTIONS:
        return [f"it ran {job.get('Function')}, not a highstate ({' or '.join(STATE_FUNCTIONS)} without mods)"]
    mods, keywords = _arguments(job)
    if mods:
        return [f"it applied {', '.join(map(str, mods))} only, not the highstate"]
    if str(keywords.get("test")).lower() == "true":
        return ["it ran in test mode, so no state was applied"]
    results = job.get("Result") or {}
    problems = [
        f"{minion} did not answer"
        for minion in sorted(set(job.get("Minions") or []) | set(expected))
        if minion not in results
    ]
    for minion in sorted(results):
        answer = results[minion]
        states = answer.get("return")
        if (
            isinstance(states, dict)
            and states
            and all(isinstance(state, dict) and "result" in state for state in states.values())
        ):
            ordered = sorted(states.items(), key=lambda item: item[1].get("__run_num__", 0))
            for key, state in ordered:
                if state.get("result") is None:
                    problems.append(f"{minion}: state {_state_id(key)} did not run (result None)")
                if state.get("result") is False:
                    comment = str(state.get("comment") or "").strip().splitlines()
                    problems.append(
                        f"{minion}: state {_state_id(key)} failed" + (f" ({comment[0]})" if comment else "")
                    )
        elif isinstance(states, list):
            problems.append(
                f"{minion}: " + " ".join(str(item).strip().splitlines()[0] for item in states if str(item).strip())
            )
        elif not states:
            problems.append(f"{minion}: ran no state")
        elif answer.get("retcode") not in (None, 0):
            problems.append(f"{minion}: returned retcode {answer.get('retcode')}")
    return problems
