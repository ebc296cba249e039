"""Previewing a promotion: the commit ``promote <env>`` would bring, served from the environment's preview directory.

A preview deploys that commit into the environment's ``preview_path`` (the
saltenv ``<env>_preview``) with the same engine as every deploy, and nothing
else: the branches, ``<env>``'s directory and the history stay as they are.
The caller then runs ``state.apply`` with :meth:`Preview.state_kwargs`
on the environment's minions while :func:`previewing` still holds the
preview's lock, so a second preview of the same environment cannot switch
the tree under the first one's run.

Salt takes a top file's section by the run's saltenv (a run in
``prod_preview`` reads that saltenv's top file alone and applies only its
``prod_preview`` section; the pillar likewise by the pillarenv), so the
candidate's top files need a ``<env>_preview`` section equal to their
``<env>`` one, such as ``prod_preview: *prod``; envflow rewrites nothing.
"""

import contextlib
import os
import posixpath
import re
from dataclasses import dataclass

from envflow import pipeline, records, saltbus, submodules
from envflow.errors import Drift, EnvflowError, RemoteError
from envflow.layout import Layout
from envflow.locking import held
from envflow.served import ServedDir, drift_message
from envflow.text import echo, short

# How long a preview waits for another preview of the same environment to end, in seconds.
WAIT = 120.0
# The minion's cache of the compiled highstate the preview writes, beside (never over) the highstate's own.
CACHE_NAME = "envflow_preview"
# The directories of a saltenv that every highstate, test=True too, copies to the minion it runs on
# (salt/state.py HighState.load_dynamic calls saltutil.sync_all for the run's saltenv unless the minion sets
# autoload_dynamic_modules: False; Salt 3006 and 3008), and the files it copies (salt/utils/extmods.py).
SYNCED_DIRS = frozenset(
    f"_{form}"
    for form in [
        "beacons",
        "clouds",
        "engines",
        "executors",
        "grains",
        "log_handlers",
        "matchers",
        "modules",
        "output",
        "pillar",
        "proxy",
        "renderers",
        "resources",
        "returners",
        "sdb",
        "serializers",
        "states",
        "thorium",
        "tops",
        "utils",
        "wrapper",
    ]
)
_SYNCED_FILE = re.compile(r"\.(pyx?|so|zip)$")


@dataclass
class Preview:
    """A promotion into ``env`` deployed into its preview directory (``path``, saltenv ``saltenv``).

    ``commit`` is the commit the promotion would bring, from ``upstream``;
    ``deployed`` is the result of the deploy (see :meth:`ServedDir.deploy`).
    """

    env: str
    saltenv: str
    has_pillar: bool
    path: str
    commit: str
    upstream: str
    deployed: dict

    def pillarenv(self, pillar_roots):
        """The pillarenv the preview compiles the minions' pillar from, given the master's ``pillar_roots``.

        The preview's own when the repository holds the environment's pillar
        (the candidate's pillar); else the environment's, as its minions
        compile it (Salt reads no pillar top file for a pillarenv that
        ``pillar_roots`` lacks); else ``None``: every pillarenv merged, as for a
        minion that names none. Always given: with ``pillarenv_from_saltenv``,
        a run without one would compile the pillar of the preview's saltenv.
        """
        if self.has_pillar:
            return self.saltenv
        return self.env if self.env in (pillar_roots or {}) else None

    def state_kwargs(self, pillar_roots):
        """The keyword arguments of the preview's ``state.apply``: test mode, the preview's saltenv and pillarenv."""
        return {
            "test": True,
            "saltenv": self.saltenv,
            "pillarenv": self.pillarenv(pillar_roots),
            "cache_name": CACHE_NAME,
        }


def preview_of(config, name):
    """The preview directory of environment ``name`` (an :class:`~envflow.config.Environment`), or a one-line error."""
    env = config.environment(name)
    if env.preview is None:
        index = config.environments.index(env)
        example = os.path.join(os.path.dirname(env.path), env.preview_saltenv)
        raise EnvflowError(
            f"envflow: {env.name} has no preview directory; add preview_path: {example} to "
            f"envflow:environments:{index} and list it in file_roots as the saltenv {env.preview_saltenv}"
        )
    return env.preview


def synced_changes(mirror, env, commit):
    """The custom module files that differ between what ``env`` serves and ``commit``, sorted.

    Those are the files a highstate of ``commit`` copies to a minion whose
    modules came from ``env`` (:data:`SYNCED_DIRS` of the states directory),
    and leaves there.
    """
    served = pipeline.deployed_id(env)
    states = "" if env.states == "." else f"{env.states}/"
    changed = set()
    for _status, path in mirror.changed_files(served if served in mirror.repo else None, commit):
        if not path.startswith(states):
            continue
        top = path[len(states) :].split("/", 1)[0]
        if top in SYNCED_DIRS and "/" in path[len(states) :] and _SYNCED_FILE.search(posixpath.basename(path)):
            changed.add(path)
    return sorted(changed)


@contextlib.contextmanager
def previewing(config, mirror, name, rev=None, force=False, autoload=True, wait=WAIT):
    """Deploy into ``name``'s preview directory the commit ``promote name`` would bring; yield a :class:`Preview`.

    The commit is the one :func:`envflow.pipeline.plan` chooses (the commit
    deployed in the environment before ``name``, or ``rev``, which must be
    part of it); a promotion that would be refused (diverged branch, nothing
    deployed upstream) is refused here with the same message. The preview's
    lock is held until the block ends: run the minions' test in it. Hand edits
    in the preview directory refuse the deploy unless ``force``. Nothing of
    ``name``'s branch or directory changes. The mirror must be freshly fetched.

    A highstate copies the custom modules of its saltenv to the minion and
    leaves them there, in test mode too: unless ``autoload`` is false (the
    minions set ``autoload_dynamic_modules: False``), a commit that changes
    them is refused before anything is deployed.
    """
    preview = preview_of(config, name)
    promotion = pipeline.plan(config, mirror, name, rev=rev)
    if autoload:
        synced = synced_changes(mirror, promotion.env, promotion.new)
        if synced:
            more = f" and {len(synced) - 5} more" if len(synced) > 5 else ""
            raise EnvflowError(
                f"envflow: {short(promotion.new)} changes custom modules ({', '.join(synced[:5])}{more}), which "
                f"the preview's test run would copy to {name}'s minions and leave there before any promotion; "
                f"set autoload_dynamic_modules: False on them (sync_minions: true syncs modules after each "
                f"deploy) and preview with autoload=False"
            )
    commit = mirror.commit(promotion.new)
    served = ServedDir(preview.path)
    lock = os.path.join(Layout(preview.path).home, "preview.lock")
    with held(lock, f"the preview of {name}", timeout=wait):
        try:
            deployed = served.deploy(
                mirror.objects, commit, force=force, compose=submodules.Composer(mirror, config.submodules)
            )
        except Drift as exc:
            raise Drift(drift_message(preview.path, exc.changes, "preview with force=True"), exc.changes) from None
        yield Preview(
            env=name,
            saltenv=preview.name,
            has_pillar=preview.pillar_dir is not None,
            path=preview.path,
            commit=promotion.new,
            upstream=promotion.upstream.name,
            deployed=deployed,
        )


def deploy(config, mirror, name, rev=None, force=False, autoload=True, wait=WAIT):
    """Deploy the preview of a promotion into ``name`` (see :func:`previewing`) and return its :class:`Preview`."""
    with previewing(config, mirror, name, rev=rev, force=force, autoload=autoload, wait=wait) as preview:
        return preview


# -- the report ------------------------------------------------------------------

# Caps that keep a report small enough for a job return, an event and a terminal.
STATES_SHOWN = 100  # states listed per minion (those that would change or fail), in run order
COMMENT_LINES, COMMENT_CHARS = 10, 2000
DIFF_LINES, DIFF_CHARS = 100, 8000
ITEMS_SHOWN = 50  # keys of a changes mapping, items of a list
DEPTH = 4  # levels of a changes mapping shown as data; deeper ones as their text
# The one result a highstate gives a minion that no top file section matches (salt/state.py, call_highstate).
NO_STATES = "no_|-states_|-states_|-None"


def _text(value, lines, chars):
    """``value`` as text, cut to ``lines`` lines and ``chars`` characters, saying how much was left out."""
    text = "\n".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    kept = text.splitlines()
    if len(kept) > lines:
        text = "\n".join(kept[:lines]) + f"\n... and {len(kept) - lines} more lines"
    if len(text) > chars:
        text = text[:chars] + f"... ({len(text) - chars} more characters)"
    return text


def _shown(value, depth=0):
    """A state's ``changes`` made small: long texts (diffs) cut, long mappings and lists cut, deep ones as text."""
    if isinstance(value, str):
        return _text(value, DIFF_LINES, DIFF_CHARS)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth >= DEPTH:
        return _text(repr(value), DIFF_LINES, DIFF_CHARS)
    if isinstance(value, dict):
        keys = list(value)
        shown = {str(key): _shown(value[key], depth + 1) for key in keys[:ITEMS_SHOWN]}
        if len(keys) > ITEMS_SHOWN:
            shown["..."] = f"and {len(keys) - ITEMS_SHOWN} more"
        return shown
    if isinstance(value, (list, tuple, set)):
        items = list(value)
        shown = [_shown(item, depth + 1) for item in items[:ITEMS_SHOWN]]
        return shown + ([f"... and {len(items) - ITEMS_SHOWN} more"] if len(items) > ITEMS_SHOWN else [])
    return _text(repr(value), DIFF_LINES, DIFF_CHARS)


def _state(key, ret):
    """One state's entry: its id, function, name, sls, result, comment and changes (capped)."""
    parts = key.split("_|-")
    module, fun = (parts[0], parts[-1]) if len(parts) >= 4 else (key, "")
    return {
        "id": str(ret.get("__id__", parts[1] if len(parts) >= 4 else key)),
        "function": f"{module}.{fun}" if fun else module,
        "name": str(ret.get("name", "_|-".join(parts[2:-1]) if len(parts) >= 4 else "")),
        "sls": ret.get("__sls__"),
        "result": ret.get("result"),
        "comment": _text(ret.get("comment") or "", COMMENT_LINES, COMMENT_CHARS),
        "changes": _shown(ret.get("changes") or {}),
    }


def _outcome(ret):
    """``failed``, ``change`` or ``None`` (nothing to do) for one state of a ``test=True`` run."""
    result = ret.get("result")
    if result is False:
        return "failed"
    # In test mode a state that would act returns None (file.managed, cmd.run, service.running, ...);
    # a few report their changes with True.
    if result is None or ret.get("changes"):
        return "change"
    return None


def _minion(answer, env, saltenv):
    """One minion's part of the report, from what its ``state.apply test=True`` returned."""
    if isinstance(answer, dict) and answer and all(isinstance(ret, dict) for ret in answer.values()):
        if list(answer) == [NO_STATES]:
            comment = str(answer[NO_STATES].get("comment") or "").strip()
            return {
                "changes": 0,
                "failed": 1,
                "states": [],
                "error": _text(
                    f"{comment} (a run in saltenv {saltenv} takes the {saltenv} section of the top file, and "
                    f"Salt ignores its {env} section: give the top file a {saltenv} section equal to {env}'s, "
                    f"such as {saltenv}: *{env} with an anchor &{env})",
                    COMMENT_LINES,
                    COMMENT_CHARS,
                ),
            }
        ordered = sorted(answer.items(), key=lambda item: item[1].get("__run_num__", 0))
        outcomes = [(key, ret, _outcome(ret)) for key, ret in ordered]
        listed = [_state(key, ret) for key, ret, outcome in outcomes if outcome]
        report = {
            "changes": sum(outcome == "change" for _key, _ret, outcome in outcomes),
            "failed": sum(outcome == "failed" for _key, _ret, outcome in outcomes),
            "states": listed[:STATES_SHOWN],
        }
        if len(listed) > STATES_SHOWN:
            report["more"] = len(listed) - STATES_SHOWN
        return report
    # A list of strings: the run could not start (a render error, pillar errors, a conflicting run);
    # a string: the minion's function raised (lock_saltenv, a missing module).
    return {"changes": 0, "failed": 1, "states": [], "error": _text(answer, COMMENT_LINES, COMMENT_CHARS)}


def report(env, commit, saltenv, answers, expected=()):
    """The preview's report from the minions' ``answers`` to ``state.apply test=True`` (minion id -> what it returned).

    ``{"env", "commit", "minions": {id: {"changes", "failed", "states"}}, "no_answer"}``:
    per minion the number of states that would change and that would fail,
    and those states in run order (``id``, ``function``, ``name``, ``sls``,
    ``result``, ``comment``, ``changes``; comments and diffs capped, at most
    :data:`STATES_SHOWN`, ``more`` counting the rest). A run that could not
    start (a render error, a failed pillar, a run in the way) counts as one
    failure, explained in ``error``. ``no_answer`` lists the ``expected``
    minions that did not answer.
    """
    return {
        "env": env,
        "commit": commit,
        "minions": {str(minion): _minion(answers[minion], env, saltenv) for minion in sorted(answers, key=str)},
        "no_answer": sorted(set(map(str, expected)) - set(map(str, answers))),
    }


def failing(found):
    """Whether a :func:`report` fails the preview: a state would fail, or a minion did not answer."""
    return bool(found["no_answer"]) or any(minion["failed"] for minion in found["minions"].values())


def summary(found):
    """One line per minion, as a person reads the report: ``web-01: 3 to change, 0 failing``."""
    lines = [
        f"{minion}: {entry['changes']} to change, {entry['failed']} failing"
        for minion, entry in found["minions"].items()
    ]
    return lines + [f"{minion}: did not answer" for minion in found["no_answer"]]


def outcome(found):
    """What :func:`report` ``found``, in a few words: what fails it, else how much would change."""
    failed = {minion: entry["failed"] for minion, entry in found["minions"].items() if entry["failed"]}
    parts = []
    if failed:
        total = sum(failed.values())
        where = ", ".join(f"{minion}: {count}" for minion, count in failed.items())
        parts.append(f"shows {total} failing state{'s' if total != 1 else ''} ({where})")
    if found["no_answer"]:
        parts.append(f"got no answer from {', '.join(found['no_answer'])}")
    if parts:
        return " and ".join(parts)
    changing = [minion for minion, entry in found["minions"].items() if entry["changes"]]
    total = sum(entry["changes"] for entry in found["minions"].values())
    plural = "s" if total != 1 else ""
    return f"passed: {total} state{plural} to change on {len(changing)} of {len(found['minions'])} minions"


def counts(found):
    """Per minion of a :func:`report`, its ``changes`` and ``failed`` alone: what the record and the event keep."""
    return {minion: {"changes": got["changes"], "failed": got["failed"]} for minion, got in found["minions"].items()}


def _target(config, name, target):
    """The compound target the preview runs on: ``target``, else the environment's own."""
    if target is not None:
        if not isinstance(target, str) or not target.strip():
            raise EnvflowError(f"envflow: tgt {echo(target)} is not a compound target; give one such as G@role:web")
        return target
    env = config.environment(name)
    if not env.target:
        index = config.environments.index(env)
        raise EnvflowError(
            f"envflow: {name} has no target, so the preview has no minions to run on; give tgt=<compound target> "
            f"or set envflow:environments:{index}:target, such as G@env:{name}"
        )
    return env.target


def run(config, mirror, name, master_opts, by, rev=None, target=None, force=False, autoload=True, waits=None):
    """Preview the promotion into ``name`` on its minions; return the :func:`report` with what was run.

    Deploys the candidate into the preview directory (:func:`previewing`),
    clears the master's caches of the preview saltenv, runs ``state.apply``
    with :meth:`Preview.state_kwargs` on ``target`` (the environment's
    ``target`` by default) through the master whose options are
    ``master_opts`` (``waits``: ``timeout`` and ``gather_job_timeout`` for
    :func:`envflow.saltbus.run_on_minions`; the master's cached pillars of
    the minions are put back afterwards), and records the result on the
    commit for the ``previewed`` gate, as ``by``. The report adds
    ``upstream``, ``saltenv``, ``pillarenv``, ``target``, ``jid``,
    ``passed``, ``outcome``, ``refused_links`` (symlinks leading out of the
    tree, which the preview directory does not serve, as no deploy does) when
    there are any and, when the record could not be written, ``warnings``.
    A target that matches no minion is refused before anything is deployed.
    The mirror must be freshly fetched.
    """
    for key, value in (waits or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise EnvflowError(f"envflow: {key} {echo(value)} is not a number of seconds; give one such as 30")
    preview_of(config, name)
    target = _target(config, name, target)
    expected = saltbus.matched_minions(master_opts, target)
    if not expected:
        raise EnvflowError(f"envflow: tgt {echo(target)} matches no minion; nothing was previewed")
    with previewing(config, mirror, name, rev=rev, force=force, autoload=autoload) as preview:
        saltbus.refresh_caches(master_opts, config.environment(name).preview)
        kwargs = preview.state_kwargs(master_opts.get("pillar_roots"))
        with saltbus.cached_pillars_kept(master_opts, expected):
            jid, published, answers = saltbus.run_on_minions(
                master_opts,
                target,
                "state.apply",
                {key: value for key, value in kwargs.items() if value is not None},
                **(waits or {}),
            )
    found = report(name, preview.commit, preview.saltenv, answers, expected=sorted({*expected, *published}))
    found.update(
        upstream=preview.upstream,
        saltenv=preview.saltenv,
        pillarenv=kwargs["pillarenv"],
        target=target,
        jid=jid,
        passed=not failing(found),
        outcome=outcome(found),
    )
    if preview.deployed.get("refused_links"):
        found["refused_links"] = preview.deployed["refused_links"]
    entry = {
        "by": by,
        "jid": jid,
        "target": target,
        "passed": found["passed"],
        "outcome": found["outcome"],
        "minions": counts(found),
        "no_answer": found["no_answer"],
    }
    try:
        records.add(mirror, preview.commit, "previewed", name, entry)
    except RemoteError as exc:
        found["warnings"] = [f"envflow: the preview was not recorded, so the previewed gate does not see it: {exc}"]
    return found
