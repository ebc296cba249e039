"""Mistakes in the master's configuration that envflow can see from its options: one line each, saying the fix.

Each check reads a master's ``opts`` (a dict, as Salt loads it) and a
:class:`~envflow.config.Config`; nothing on disk is read, so the same lines
come from ``salt-run envflow.check`` and ``envflow.status``.
"""

import fnmatch
import os

from envflow.layout import Layout


def _roots(opts, key):
    """``{saltenv: [normalized path, ...]}`` of ``file_roots`` or ``pillar_roots``."""
    found = {}
    for saltenv, roots in (opts.get(key) or {}).items():
        if isinstance(roots, list):
            found[str(saltenv)] = [os.path.normpath(root) for root in roots if isinstance(root, str)]
    return found


def _within(path, directory):
    """Whether ``path`` is ``directory`` or inside it."""
    return os.path.commonpath([path, directory]) == directory


def _deployed(config):
    """Every directory envflow deploys, as ``(environment, owner)``: each environment, then its preview.

    ``owner`` is the configured environment a preview belongs to, ``None`` for
    the environment itself.
    """
    for env in config.environments:
        yield env, None
        if env.preview is not None:
            yield env.preview, env


def _described(env, owner):
    """How a message names what ``env`` is: ``stage`` or ``prod's preview``."""
    return env.name if owner is None else f"{owner.name}'s preview"


def _serving(config, opts, key, attribute):
    """A deployed directory missing from its own saltenv's roots, one line each."""
    roots = _roots(opts, key)
    what = "states" if key == "file_roots" else "pillar"
    lines = []
    for env, owner in _deployed(config):
        wanted = getattr(env, attribute)
        if wanted is None or wanted in roots.get(env.name, []):
            continue
        fix = f"set {key}: {{{env.name}: [{wanted}]}}"
        if owner is None:
            which = "path" if wanted == env.path else f"{what} directory"
            lines.append(
                f"{key}:{env.name}: does not list {wanted} ({env.name}'s {which}), so Salt does not serve what "
                f"envflow deploys in {env.name}; {fix}"
            )
            continue
        which = "preview directory" if wanted == env.path else f"{what} directory of the preview directory"
        candidate = "the candidate" if key == "file_roots" else "the candidate's pillar"
        lines.append(
            f"{key}:{env.name}: does not list {wanted} (the {which} of {owner.name}), which salt-run "
            f"envflow.preview {owner.name} needs: without it the preview's test run reads nothing of {candidate}; "
            f"{fix}"
        )
    return lines


def _envflow_homes(config, opts):
    """Roots naming envflow's own directory (``.<name>.envflow``), or holding it."""
    lines = []
    for key in ("file_roots", "pillar_roots"):
        for saltenv, roots in _roots(opts, key).items():
            for root in roots:
                for env, owner in _deployed(config):
                    home = Layout(env.path).home
                    served = env.states_dir if key == "file_roots" else env.pillar_dir or env.path
                    if _within(root, home):
                        lines.append(
                            f"{key}:{saltenv}: {root} is inside {home}, envflow's own directory, whose trees "
                            f"are replaced at every deploy; list {served}, under the symlink envflow switches"
                        )
                    elif _within(home, root):
                        lines.append(
                            f"{key}:{saltenv}: {root} holds {home}, envflow's own directory (both trees of "
                            f"{_described(env, owner)} and their repositories); list only the environments' "
                            "directories"
                        )
    return lines


def _pillar_served_as_files(config, opts):
    """file_roots entries holding an environment's pillar directory: every minion could read it."""
    lines = []
    for saltenv, roots in _roots(opts, "file_roots").items():
        for root in roots:
            for env, owner in _deployed(config):
                if env.pillar_dir and _within(env.pillar_dir, root):
                    lines.append(
                        f"file_roots:{saltenv}: {root} holds {env.pillar_dir}, the pillar of {_described(env, owner)}, "
                        f"so every minion can read it through salt://; list {env.states_dir} instead"
                    )
    return lines


def _top_merging(config, opts):
    strategy = opts.get("top_file_merging_strategy", "merge")
    if strategy != "merge_all":
        return []
    names = ", ".join(env.name for env in config.environments)
    return [
        f"top_file_merging_strategy: merge_all merges the top files of every saltenv ({names}), so a minion gets "
        "what another environment's branch assigns it; set top_file_merging_strategy: same"
    ]


def _previews_highstated(config, opts):
    """Master settings that break previews, or make a minion that sets no saltenv apply a preview's top file.

    Minions take ``env_order`` and ``state_top_saltenv`` from the master
    (salt/master.py ``_master_opts``). A highstate finds states only in the
    saltenvs ``env_order`` lists, when it is set (salt/state.py ``_get_envs``):
    leaving a preview saltenv out breaks its preview; listing it makes a
    highstate that names no saltenv read its top file, whose section
    (``prod_preview: *prod``) then applies the candidate for real. So does
    ``state_top_saltenv`` set to a preview saltenv. With neither set, only the
    minions' own ``saltenv`` keeps previews out, which the master cannot see.
    """
    previews = {env.preview_saltenv: env for env in config.environments if env.preview is not None}
    order = [str(saltenv) for saltenv in opts.get("env_order") or []]
    top_saltenv = str(opts.get("state_top_saltenv") or "")
    fix = "remove env_order and have every minion set its saltenv"
    lines = []
    for saltenv, env in previews.items():
        if order and saltenv not in order:
            lines.append(
                f"env_order: leaves out {saltenv}, so salt-run envflow.preview {env.name} finds no states in it "
                f"(Salt serves a state run only the saltenvs env_order lists); {fix}"
            )
        elif order and not top_saltenv:
            lines.append(
                f"env_order: lists {saltenv}, so a minion that sets no saltenv reads its top file in a highstate "
                f"and applies for real the candidate salt-run envflow.preview {env.name} deploys there; {fix}"
            )
        if top_saltenv == saltenv:
            lines.append(
                f"state_top_saltenv: {saltenv} makes a minion that sets no saltenv read that top file alone in a "
                f"highstate, and so apply for real the candidate salt-run envflow.preview {env.name} deploys there; "
                "remove state_top_saltenv and have every minion set its saltenv"
            )
    return lines


def _followed_links(config, opts):
    """With ``fileserver_followsymlinks`` on, a root envflow does not deploy serves whatever its links lead to."""
    if not opts.get("fileserver_followsymlinks", True):
        return []
    # Inside an environment's path envflow refuses such links; its own directory is reported apart.
    managed = [directory for env, _owner in _deployed(config) for directory in (env.path, Layout(env.path).home)]
    if config.branch_environments is not None:
        managed += [config.branch_environments.path, config.branch_environments.home]
    return [
        f"fileserver_followsymlinks is on and file_roots:{saltenv} lists {root}, which envflow does not deploy: "
        "a symlink in it leading out of it is served to every minion; set fileserver_followsymlinks: False, "
        "or keep such links out of it"
        for saltenv, roots in _roots(opts, "file_roots").items()
        for root in roots
        if not any(_within(root, directory) for directory in managed)
    ]


def _targets(config):
    """Settings that act on an environment's minions, where the environment has no ``target``."""
    lines = []
    for env in config.environments:
        upstream = config.upstream(env.name)
        if env.gates.verified and upstream is not None and not upstream.target:
            lines.append(
                f"envflow:environments:{config.environments.index(upstream)}:target: not set, but {env.name} has "
                f"the verified gate: envflow.verify {upstream.name} jid=last and the release pipeline need "
                f"{upstream.name}'s minions; add a compound target such as G@env:{upstream.name}"
            )
        if env.preview is not None and not env.target:
            lines.append(
                f"envflow:environments:{config.environments.index(env)}:target: not set, but {env.name} has a "
                f"preview_path: salt-run envflow.preview {env.name} (without tgt=) and the release pipeline's "
                f"preview need {env.name}'s minions; add a compound target such as G@env:{env.name}"
            )
    return lines


def _pillarenv(config, opts):
    if not any(env.pillar for env in config.environments):
        return []
    if opts.get("pillarenv_from_saltenv") or opts.get("pillarenv"):
        return []
    return [
        "pillarenv_from_saltenv: off, so a minion that sets no pillarenv gets the pillar top files of every "
        "environment merged; set pillarenv_from_saltenv: True (and each minion's saltenv)"
    ]


def _pillar_cache_in_memory(config, opts):
    if not any(env.pillar for env in config.environments) or not opts.get("pillar_cache"):
        return []
    if opts.get("pillar_cache_backend", "disk") != "memory" and not opts.get("memcache_expire_seconds"):
        return []
    return [
        "pillar_cache: the master keeps pillars in its memory (pillar_cache_backend: memory or "
        "memcache_expire_seconds), which envflow cannot clear after a deploy; use pillar_cache_backend: disk "
        "and memcache_expire_seconds: 0, or sync_minions"
    ]


def _branch_roots(config, opts):
    """Branch environments configured, but no ``__env__`` root serving them (``file_roots``, ``pillar_roots``)."""
    settings = config.branch_environments
    lines = []
    for key, wanted in (("file_roots", settings.states_root), ("pillar_roots", settings.pillar_root)):
        if wanted is None or wanted in _roots(opts, key).get("__env__", []):
            continue
        lines.append(
            f"{key}:__env__: does not list {wanted}, so Salt serves no branch environment's "
            f"{'states' if key == 'file_roots' else 'pillar'}; set {key}: {{__env__: [{wanted}]}}"
        )
    return lines


def _taken(config, opts):
    """The saltenvs Salt serves other than through ``__env__``, lower case: listed by name, or a pipeline's."""
    listed = {str(name).lower() for name in opts.get("file_roots") or {}}
    return listed | {env.name.lower() for env in config.environments}


def _branches_shadowing(config, opts):
    """Pipeline branches the patterns of ``envflow:branch_environments:branches`` match, and what that does."""
    settings = config.branch_environments
    taken = _taken(config, opts)
    lines = []
    for env in config.environments:
        if not settings.matches(env.branch):
            continue
        saltenv = env.branch.replace("/", "_")
        if saltenv.lower() in taken:
            what = f"would shadow the saltenv {saltenv} that Salt serves already, so it is refused at every refresh"
        else:
            what = f"is served a second time, as branch environment {saltenv}"
        lines.append(
            f"envflow:branch_environments:branches: matches {env.branch}, the branch of environment {env.name}, "
            f"which {what}; narrow the patterns, such as feature/*"
        )
    return lines


def _branch_tops(config, opts):
    """``env_order`` or ``state_top_saltenv`` naming a branch environment: its top file applies to other minions."""
    settings = config.branch_environments
    patterns = [pattern.replace("/", "_") for pattern in settings.branches]
    pipeline = _taken(config, opts)

    def branch_saltenv(name):
        return name.lower() not in pipeline and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    lines = []
    for saltenv in (str(name) for name in opts.get("env_order") or []):
        if branch_saltenv(saltenv):
            lines.append(
                f"env_order: lists {saltenv}, a branch environment, so a minion that sets no saltenv reads its top "
                "file in a highstate and applies that branch's states for real; remove it from env_order"
            )
    top_saltenv = str(opts.get("state_top_saltenv") or "")
    if top_saltenv and branch_saltenv(top_saltenv):
        lines.append(
            f"state_top_saltenv: {top_saltenv} is a branch environment, so every minion that sets no saltenv applies "
            "that branch's top file for real; set state_top_saltenv to a pipeline environment, or remove it"
        )
    return lines


def problems(config, opts):
    """Every mistake visible in the master's ``opts`` for the environments of ``config``, one line each."""
    return [
        *_serving(config, opts, "file_roots", "states_dir"),
        *_serving(config, opts, "pillar_roots", "pillar_dir"),
        *_envflow_homes(config, opts),
        *_pillar_served_as_files(config, opts),
        *_top_merging(config, opts),
        *_previews_highstated(config, opts),
        *_followed_links(config, opts),
        *_targets(config),
        *_pillarenv(config, opts),
        *_pillar_cache_in_memory(config, opts),
        *(_branch_checks(config, opts) if config.branch_environments is not None else []),
    ]


def _branch_checks(config, opts):
    return [*_branch_roots(config, opts), *_branches_shadowing(config, opts), *_branch_tops(config, opts)]
