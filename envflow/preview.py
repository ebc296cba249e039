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
from dataclasses import dataclass

from envflow import pipeline
from envflow.errors import Drift, EnvflowError
from envflow.layout import Layout
from envflow.locking import held
from envflow.served import ServedDir, drift_message

# How long a preview waits for another preview of the same environment to end, in seconds.
WAIT = 120.0
# The minion's cache of the compiled highstate the preview writes, beside (never over) the highstate's own.
CACHE_NAME = "envflow_preview"


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


@contextlib.contextmanager
def previewing(config, mirror, name, rev=None, force=False, wait=WAIT):
    """Deploy into ``name``'s preview directory the commit ``promote name`` would bring; yield a :class:`Preview`.

    The commit is the one :func:`envflow.pipeline.plan` chooses (the commit
    deployed in the environment before ``name``, or ``rev``, which must be
    part of it); a promotion that would be refused (diverged branch, nothing
    deployed upstream) is refused here with the same message. The preview's
    lock is held until the block ends: run the minions' test in it. Hand edits
    in the preview directory refuse the deploy unless ``force``. Nothing of
    ``name``'s branch or directory changes. The mirror must be freshly fetched.
    """
    preview = preview_of(config, name)
    promotion = pipeline.plan(config, mirror, name, rev=rev)
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


def deploy(config, mirror, name, rev=None, force=False, wait=WAIT):
    """Deploy the preview of a promotion into ``name`` (see :func:`previewing`) and return its :class:`Preview`."""
    with previewing(config, mirror, name, rev=rev, force=force, wait=wait) as preview:
        return preview
