"""Judging a Salt job from the master's job cache: did every targeted minion answer, and did every state pass?

Works on the dict ``salt-run jobs.list_job <jid>`` returns (``Function``,
``Minions``, ``StartTime``, ``Result``: minion -> ``{"return": ..., "retcode": ...}``).
"""

import datetime
import re

from envflow.errors import EnvflowError
from envflow.text import echo, short

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


def newest_highstate(jids, job_of, since, minions, utc=False):
    """The newest finished highstate among ``jids`` started after ``since`` (``None``: any time), or ``None``.

    Finished: every targeted minion answered, so a run still going is passed
    over rather than judged half done. With ``minions`` (the environment's),
    only runs that targeted all of them count. ``job_of(jid)`` reads a job
    from the job cache.
    """
    for jid in sorted((jid for jid in jids if since is None or jid_time(jid, utc) >= since), reverse=True):
        job = job_of(jid)
        targeted = set(job.get("Minions") or [])
        if is_highstate(job) and targeted <= set(job.get("Result") or {}) and set(minions or ()) <= targeted:
            return jid
    return None


def verified_job(env, served, jid, jids, job_of, minions=(), utc=False):
    """The job that verifies ``served`` (the commit ``env`` serves, with ``deployed_at``) in ``env``.

    ``jid`` is a job id or ``last`` (the newest finished highstate of
    ``env``'s ``minions`` since ``env`` began serving the commit, among
    ``jids()``). Raises :class:`EnvflowError` saying why the job does not
    verify it; nothing is recorded then.
    """
    if not re.fullmatch(r"\d{20}|last", str(jid)):
        raise EnvflowError(
            f"envflow: jid {echo(jid)} is not a job id; give one such as 20261127211425123456, or jid=last"
        )
    # Trees deployed by envflow before it recorded deployed_at have no start to compare with.
    since = datetime.datetime.fromisoformat(served["deployed_at"]) if served.get("deployed_at") else None
    if str(jid) == "last":
        jid = newest_highstate(jids(), job_of, since, minions, utc)
        if jid is None:
            raise EnvflowError(
                f"envflow: no finished state run of {env}'s minions in the job cache since {env} began "
                f"serving {short(served['id'])}; apply their states first"
            )
    jid = str(jid)
    problems = failures(job_of(jid), minions)
    if not problems and since and jid_time(jid, utc) < since:
        problems = [f"it started before {env} began serving {short(served['id'])}"]
    if problems:
        raise EnvflowError(
            f"envflow: job {jid} does not verify {short(served['id'])} in {env}: "
            + "; ".join(problems)
            + "; nothing was recorded"
        )
    return jid
