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

from envflow import pipeline
from envflow.errors import Drift, EnvflowError
from envflow.layout import Layout
from envflow.locking import held
from envflow.served import ServedDir, drift_message
from envflow.text import short

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
            deployed = served.deploy(mirror.objects, commit, force=force)
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
