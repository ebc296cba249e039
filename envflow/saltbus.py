"""Where envflow touches Salt: the master's event bus, its file server and pillar caches, its minions, and sdb secrets.

Salt is imported lazily, inside the functions, so the rest of the package
needs nothing but pygit2.
"""

import contextlib
import logging
import os
import shutil

from envflow import marks
from envflow.errors import ConfigError, EnvflowError
from envflow.served import ServedDir

log = logging.getLogger(__name__)


def sdb_reader(opts, utils=None):
    """A ``resolve(uri, key)`` for :func:`envflow.config.parse`: reads ``sdb://`` values through Salt's sdb.

    Salt already reads the ``sdb://`` values of its config files when it
    loads them; this also serves values from pillar, and says which key
    failed when a profile is missing.
    """

    def resolve(uri, key):
        import salt.utils.sdb  # pylint: disable=import-outside-toplevel
        from salt.exceptions import SaltException  # pylint: disable=import-outside-toplevel

        try:
            return salt.utils.sdb.sdb_get(uri, opts, utils, strict=True)
        except SaltException as exc:
            raise ConfigError(f"{key}: {uri} cannot be read: {' '.join(str(exc).split())}") from None

    return resolve


def _master_listens(opts):
    """Whether the master whose options are ``opts`` runs (its event bus socket exists; always true over TCP)."""
    return opts.get("ipc_mode", "ipc") != "ipc" or os.path.exists(
        os.path.join(opts["sock_dir"], "master_event_pull.ipc")
    )


def fire_on_master(opts, tag, data):
    """Fire ``tag`` on the event bus of the master whose options are ``opts``; ``False`` if it is not running.

    An event that cannot be sent must not undo work that is done: failures are logged, not raised.
    """
    if not _master_listens(opts):
        # No master is listening: firing would only wait for a connect timeout.
        log.debug("envflow: no master event bus under %s; %s not fired", opts["sock_dir"], tag)
        return False
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    try:
        with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False) as bus:
            return bool(bus.fire_event(data, tag))
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("envflow: could not fire %s: %s", tag, exc)
        return False


# One connection to the master's event bus per process, for fire_kept.
_KEPT = {}


def fire_kept(opts, tag, data):
    """Fire ``tag`` as :func:`fire_on_master` does, through a connection this process keeps for the next event.

    For the reactor's render loop, where a refusal after each of a flood of
    forged requests would otherwise pay a new connection (about 20 ms, 20
    times the check itself); that loop runs in one thread. A failure drops
    the connection, is logged, and is not raised.
    """
    if not _master_listens(opts):
        log.debug("envflow: no master event bus under %s; %s not fired", opts["sock_dir"], tag)
        return False
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    key = (opts["sock_dir"], opts.get("ipc_mode"))
    problem = "the event bus did not take it"
    try:
        if key not in _KEPT:
            _KEPT[key] = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False)
        if _KEPT[key].fire_event(data, tag):
            return True
    except Exception as exc:  # pylint: disable=broad-except
        problem = exc
    bus = _KEPT.pop(key, None)
    if bus is not None:
        with contextlib.suppress(Exception):
            bus.destroy()
    log.warning("envflow: could not fire %s: %s", tag, problem)
    return False


def saltenvs_serving(file_roots, path):
    """The saltenvs whose ``file_roots`` (or the pillarenvs whose ``pillar_roots``) list ``path``."""
    path = os.path.normpath(path)
    return sorted(
        saltenv
        for saltenv, roots in (file_roots or {}).items()
        if isinstance(roots, list) and any(isinstance(root, str) and os.path.normpath(root) == path for root in roots)
    )


def forget_roots_cache(cachedir, saltenv):
    """Drop the ``roots`` hash cache and file list cache of ``saltenv`` under the master's ``cachedir``.

    Salt caches each file's hash keyed by the file's mtime, and file lists for
    a while. Two trees written within one clock tick can share mtimes: without
    this the master would keep serving the old hash, and minions the old file.
    """
    shutil.rmtree(os.path.join(cachedir, "roots", "hash", saltenv), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(cachedir, "file_lists", "roots", f"{saltenv}.p"))


# Past this many changed paths, forgetting the saltenv's whole hash cache costs less than one unlink per path.
FORGET_ALL_PAST = 1000


def forget_changed(cachedir, saltenv, changes, prefix="", hash_type="sha256", hashes_of=None):
    """Drop what the ``roots`` caches of ``saltenv`` hold of the paths a switch changed, and keep the rest.

    ``changes`` is :func:`envflow.pipeline.tree_changes`'s; ``prefix`` the
    saltenv's root inside the tree (``states/``, or empty); ``hash_type`` the
    master's. The hash of each changed path is dropped (the roots cache trap:
    a file of the same size rewritten within one clock tick keeps its mtime);
    the file list only when paths came, went or changed type. Every other
    hash stays: the master rehashes a file only when its mtime moved, so a
    deploy costs the master what it changed, not a walk and a hash of the
    whole tree. Past :data:`FORGET_ALL_PAST` changed paths, every hash goes.
    ``hashes_of`` names the hash cache's directory when it is not the
    saltenv's own (``__env__`` for a saltenv served through it).
    """
    paths = [path[len(prefix) :] for path in changes["paths"] if path.startswith(prefix)]
    hashes = os.path.join(cachedir, "roots", "hash", hashes_of or saltenv)
    if len(paths) > FORGET_ALL_PAST:
        shutil.rmtree(hashes, ignore_errors=True)
    else:
        for path in paths:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(os.path.join(hashes, f"{path}.hash.{hash_type}"))
    if paths and changes["listing"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(cachedir, "file_lists", "roots", f"{saltenv}.p"))


def refresh_fileserver(master_opts, path, changes=None, prefix=""):
    """Make the master serve what is now at ``path`` at once; return the saltenvs refreshed.

    With ``changes`` (see :func:`forget_changed`) only the changed paths are
    forgotten; without, every cache of the saltenvs.
    """
    saltenvs = saltenvs_serving(master_opts.get("file_roots"), path)
    if not saltenvs:
        return []
    for saltenv in saltenvs:
        if changes is None:
            forget_roots_cache(master_opts["cachedir"], saltenv)
        else:
            forget_changed(master_opts["cachedir"], saltenv, changes, prefix, master_opts.get("hash_type") or "sha256")
    if master_opts.get("fileserver_events"):
        # The roots update walks every file_roots directory (0.3 s at 20,000 files);
        # forgetting the caches is enough to serve the new tree, and the update's
        # only other effect is the salt/fileserver/roots/update event.
        import salt.fileserver  # pylint: disable=import-outside-toplevel

        salt.fileserver.Fileserver(master_opts).update(back=["roots"])
    return saltenvs


def _forget_pillar_bank(master_opts, pillarenvs):
    """Salt 3008: ``salt.cache``'s ``pillar`` bank, keyed ``<minion>`` or ``<minion>:<pillarenv>``."""
    import salt.cache  # pylint: disable=import-outside-toplevel

    cache = salt.cache.factory(
        master_opts, driver=master_opts.get("pillar.cache_driver"), expires=master_opts.get("pillar_cache_ttl", 3600)
    )
    for key in cache.list("pillar") or []:
        # A key without a pillarenv holds a pillar merged from every pillarenv, ours too.
        if ":" not in key or key.rsplit(":", 1)[1] in pillarenvs:
            cache.flush("pillar", key)


def _forget_pillar_files(master_opts, pillarenvs):
    """Salt 3006: one file per minion under ``<cachedir>/pillar_cache``, ``{minion: {pillarenv: pillar}}``."""
    import salt.utils.cache  # pylint: disable=import-outside-toplevel

    folder = os.path.join(master_opts["cachedir"], "pillar_cache")
    with contextlib.suppress(FileNotFoundError):
        for minion in os.listdir(folder):
            cache = salt.utils.cache.CacheDisk(master_opts.get("pillar_cache_ttl", 3600), os.path.join(folder, minion))
            for key in list(cache._dict):  # pylint: disable=protected-access
                envs = cache._dict[key]  # pylint: disable=protected-access
                if isinstance(envs, dict) and any(env is None or env in pillarenvs for env in envs):
                    # None: the pillar merged from every pillarenv, ours too.
                    cache[key] = {env: data for env, data in envs.items() if env is not None and env not in pillarenvs}


def forget_pillar_cache(master_opts, path):
    """Drop the master's cached pillar of every minion for the pillarenvs whose ``pillar_roots`` list ``path``.

    Return those pillarenvs. The master keeps compiled pillars (``pillar_cache``,
    and with ``minion_data_cache`` it writes them even when ``pillar_cache`` is off)
    for ``pillar_cache_ttl``: without this it would keep rendering the pillar of
    the tree just switched out. Salt 3006 keeps them in files per minion, Salt
    3008 (whose ``PillarCache`` has ``pillar_key``) in ``salt.cache``'s ``pillar``
    bank; a cache held in the master's memory
    (``pillar_cache_backend: memory``, ``memcache_expire_seconds``) cannot be
    reached from here, which ``envflow.check`` reports.
    """
    pillarenvs = saltenvs_serving(master_opts.get("pillar_roots"), path)
    if pillarenvs:
        forget_pillarenvs(master_opts, pillarenvs)
    return pillarenvs


def forget_pillarenvs(master_opts, pillarenvs):
    """Drop the master's cached pillar of every minion for ``pillarenvs`` (see :func:`forget_pillar_cache`)."""
    import salt.pillar  # pylint: disable=import-outside-toplevel

    if hasattr(salt.pillar.PillarCache, "pillar_key"):
        _forget_pillar_bank(master_opts, set(pillarenvs))
    else:
        _forget_pillar_files(master_opts, set(pillarenvs))


def _through_env(roots, saltenv):
    """Whether Salt serves ``saltenv`` through the ``__env__`` entry of ``roots`` (it is not listed by name)."""
    return isinstance(roots, dict) and "__env__" in roots and saltenv not in roots


def refresh_branch_caches(master_opts, env, changes=None):
    """After the branch environment ``env`` switched (or went): clear the master's caches of its saltenv.

    Salt keeps the hashes of every saltenv it serves through ``__env__`` in
    one directory (``roots/hash/__env__``) and each one's file list under its
    own name. With ``changes`` (:func:`envflow.pipeline.tree_changes`) only
    the changed paths' hashes go; without, every ``__env__`` hash goes (the
    master rehashes what minions ask for next). Returns ``refreshed`` and
    ``pillar_refreshed`` as :func:`refresh_caches` does.
    """
    done = {"refreshed": [], "pillar_refreshed": []}
    cachedir = master_opts["cachedir"]
    if _through_env(master_opts.get("file_roots"), env.name):
        prefix = "" if env.states_dir == env.path else os.path.relpath(env.states_dir, env.path) + "/"
        if changes is None:
            shutil.rmtree(os.path.join(cachedir, "roots", "hash", "__env__"), ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(cachedir, "file_lists", "roots", f"{env.name}.p"))
        else:
            hash_type = master_opts.get("hash_type") or "sha256"
            forget_changed(cachedir, env.name, changes, prefix, hash_type, hashes_of="__env__")
        done["refreshed"] = [env.name]
    if env.pillar_dir and _through_env(master_opts.get("pillar_roots"), env.name):
        forget_pillarenvs(master_opts, [env.name])
        done["pillar_refreshed"] = [env.name]
    return done


def after_branch_change(master_opts, env, result, fire, action="deployed"):
    """Once the branch environment ``env`` switched (``deployed``) or went (``removed``): clear the master's caches
    of its saltenv and fire ``salt/envflow/<saltenv>/<action>``; return ``result`` with what was cleared.

    ``result`` is the deploy's (a removal's: ``{"branch", "commit"}``). A
    failure to clear the caches is returned as ``warning``, never raised.
    """
    result = {**result, "refreshed": [], "pillar_refreshed": []}
    changes = result.pop("changes", None)
    if action == "deployed" and not result["changed"]:
        return result
    try:
        result.update(refresh_branch_caches(master_opts, env, changes))
    except Exception as exc:  # pylint: disable=broad-except
        _warn(result, f"envflow: the master's caches for saltenv {env.name} were not cleared: {exc}")
        log.warning("%s", result["warning"])
    # ``branch_environment``: the shipped release reactor leaves these deploys alone (no highstate of a branch).
    data = {"env": env.name, "branch": env.branch, "path": env.path, "branch_environment": True}
    if action == "deployed":
        data.update(old=result["old"]["id"] if result["old"] else None, new=result["new"]["id"])
    else:
        data["commit"] = result.get("commit")
    data.update(refreshed=result["refreshed"], pillar_refreshed=result["pillar_refreshed"])
    fire(env.name, action, data)
    return result


def refresh_caches(master_opts, env, changes=None):
    """After ``env`` (an :class:`~envflow.config.Environment`) switched: clear the master's caches of it.

    Returns ``refreshed`` (the saltenvs whose file-server caches were
    cleared: those listing ``env``'s states directory, the path itself unless
    ``envflow:states`` says otherwise) and ``pillar_refreshed`` (the
    pillarenvs whose cached pillars were forgotten). With ``changes`` (what
    the switch changed, :func:`envflow.pipeline.tree_changes`), the file
    server forgets only those paths.
    """
    prefix = "" if env.states_dir == env.path else os.path.relpath(env.states_dir, env.path) + "/"
    return {
        "refreshed": refresh_fileserver(master_opts, env.states_dir, changes, prefix),
        "pillar_refreshed": forget_pillar_cache(master_opts, env.pillar_dir) if env.pillar_dir else [],
    }


def after_deploy(config, name, served, fileserver_opts, fire, catch_up=False):
    """Once environment ``name``'s new tree is served: clear the master's caches of it (and sync its minions), and
    fire ``salt/envflow/<name>/deployed``; return the deploy's result with what was done.

    ``served`` is what :func:`envflow.pipeline.deploy` returned;
    ``fileserver_opts()`` gives the options of the file server that serves
    this host's directories, or ``None``; ``fire(env, action, data)`` fires
    the event. The new tree is served already, so a failure to clear the
    caches is returned as ``warning`` (and logged), never raised.

    With ``catch_up``, a deploy that changed nothing still clears the caches
    when the tree was switched since this master last cleared them: by
    another master deploying into the same directory (see :func:`_caught_up`).
    """
    result = {"env": name, **served, "refreshed": [], "pillar_refreshed": []}
    changes = result.pop("changes", None)  # for the caches only: it may list every path of the tree
    if not result["changed"]:
        if catch_up:
            _caught_up(result, config.environment(name), fileserver_opts)
        return result
    environment, opts = config.environment(name), None
    try:
        opts = fileserver_opts()
        if opts:
            result.update(refresh_caches(opts, environment, changes))
            _mark_cleared(opts, environment)
    except (Exception, SystemExit) as exc:  # pylint: disable=broad-except
        # salt.config exits on a broken master config.
        result["warning"] = f"envflow: the master's caches for {result['path']} were not cleared: {exc}"
        log.warning("%s", result["warning"])
    if environment.sync_minions and opts and opts.get("__role") == "master":
        result["minions"] = sync_minions(opts, environment.target, name)
    if opts and opts.get("__role") == "master":
        _warn(result, report_served(opts, config))
    old = result["old"]["id"] if result["old"] else None
    data = {"env": name, "path": result["path"], "old": old, "new": result["new"]["id"]}
    data.update((key, result[key]) for key in ("refreshed", "pillar_refreshed", "minions") if key in result)
    fire(name, "deployed", data)
    return result


def _cleared_mark(opts, env):
    return os.path.join(opts["cachedir"], "envflow", "cleared", env.name)


def _switch_of(env):
    """What tells one switch of ``env``'s directory from another: the commit served and since when."""
    try:
        info = ServedDir(env.path).deployed()
    except EnvflowError:
        return None
    return f"{info['id']} {info['deployed_at']}" if info else None


def _mark_cleared(opts, env):
    """Note, in this master's cache directory, the switch of ``env`` whose caches it cleared."""
    switched = _switch_of(env)
    if switched:
        marks.write(_cleared_mark(opts, env), switched)


def _caught_up(result, env, fileserver_opts):
    """Clear this master's caches of ``env`` if its directory switched since they were last cleared here.

    Masters deploying into one directory (a shared file system) each keep
    caches of their own: the one that switched clears its own, and the
    others, finding the tree already served, clear theirs here.
    """
    try:
        opts = fileserver_opts()
        if not opts or opts.get("__role") != "master":
            return
        switched = _switch_of(env)
        if switched and marks.read(_cleared_mark(opts, env)) != switched:
            result.update(refresh_caches(opts, env))
            _mark_cleared(opts, env)
    except (Exception, SystemExit) as exc:  # pylint: disable=broad-except
        result["warning"] = f"envflow: the master's caches for {result['path']} were not cleared: {exc}"
        log.warning("%s", result["warning"])


def _warn(result, warning):
    if warning:
        result["warning"] = f"{result['warning']}; {warning}" if result.get("warning") else warning


def report_served(master_opts, config, heartbeat=False):
    """Record on the remote what the master whose options are ``master_opts`` serves (see :mod:`envflow.fleet`).

    Returns a one-line warning, also logged, when it cannot; the master serves all the same.
    """
    from envflow import fleet  # pylint: disable=import-outside-toplevel
    from envflow.remote import Mirror  # pylint: disable=import-outside-toplevel

    def minions_of(env):
        if not env.target:
            return None
        try:
            return matched_minions(master_opts, env.target)
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("envflow: the minions of %s are not recorded for the fleet: %s", env.name, exc)
            return None

    with Mirror.of(config, master_opts["cachedir"]) as mirror:
        warning = fleet.report(mirror, config, master_opts["id"], heartbeat=heartbeat, minions_of=minions_of)
    if warning:
        log.warning("%s", warning)
    return warning


def _answers(returns, expected):
    """Split ``expected`` by the answers to a job: ``answered``, ``failed`` (with why), ``missing``."""
    failed = {
        minion: " ".join(str(ret).split())
        for minion, ret in returns.items()
        if ret is False or (isinstance(ret, str) and ret)  # Salt returns an error as a string
    }
    answered = sorted(set(returns) - set(failed))
    return answered, failed, sorted(set(expected) - set(returns))


def matched_minions(master_opts, target):
    """The minions the compound ``target`` matches on the master whose options are ``master_opts``, sorted."""
    import salt.utils.minions  # pylint: disable=import-outside-toplevel

    return sorted(salt.utils.minions.CkMinions(master_opts).check_minions(target, "compound")["minions"])


def sync_minions(master_opts, target, saltenv):
    """Refresh the pillar and sync custom modules (``saltutil.sync_all saltenv=<saltenv>``) on ``target``'s minions.

    Runs through Salt's ``LocalClient`` on the master, with the master's
    ``timeout`` and ``gather_job_timeout``. Returns which minions ``answered``
    both, which ``failed`` (and why) and which are ``missing`` (no answer);
    never raises, since the deploy is done: a failure to reach the master is
    reported under ``error``.
    """
    report = {"target": target, "answered": [], "failed": {}, "missing": []}
    if not _master_listens(master_opts):
        report["error"] = f"envflow: the minions of {target} were not synced: the salt-master is not running"
        log.warning("%s", report["error"])
        return report
    try:
        import salt.client  # pylint: disable=import-outside-toplevel

        expected = matched_minions(master_opts, target)
        with salt.client.LocalClient(mopts=master_opts) as client:
            pillar = client.cmd(target, "saltutil.refresh_pillar", kwarg={"wait": True}, tgt_type="compound")
            synced = client.cmd(target, "saltutil.sync_all", kwarg={"saltenv": saltenv}, tgt_type="compound")
    except Exception as exc:  # pylint: disable=broad-except
        report["error"] = f"envflow: the minions of {target} were not synced: {' '.join(str(exc).split())}"
        log.warning("%s", report["error"])
        return report
    answered, failed, missing = _answers(pillar, expected)
    synced_ok, sync_failed, sync_missing = _answers(synced, expected)
    report["failed"] = {**failed, **sync_failed}
    report["missing"] = sorted(set(missing) | set(sync_missing))
    report["answered"] = sorted(set(answered) & set(synced_ok) - set(report["failed"]))
    if report["failed"] or report["missing"]:
        log.warning("envflow: minions of %s not synced: %s", target, report["failed"] or report["missing"])
    return report


def run_on_minions(master_opts, target, function, kwargs, timeout=None, gather_job_timeout=None):
    """Run ``function`` with ``kwargs`` on ``target``'s minions through the master; wait for their answers.

    Returns ``(jid, minions, answers)``: the job id, the minions the job
    was published to, and what each minion that answered returned. Waits as
    Salt's CLI does: ``timeout`` (the master's by default) for a first answer,
    then as long as the minions say they still run the job, each asked with
    ``gather_job_timeout``. Raises :class:`ConfigError` when the master
    does not run or takes no job.
    """
    if not _master_listens(master_opts):
        raise ConfigError(f"envflow: the salt-master is not running, so {function} cannot run on {target}")
    import salt.client  # pylint: disable=import-outside-toplevel

    waits = {"gather_job_timeout": gather_job_timeout} if gather_job_timeout else {}
    jid, published, answers = None, [], {}
    with salt.client.LocalClient(mopts=master_opts) as client:
        returns = client.cmd_iter(
            target, function, kwarg=kwargs, tgt_type="compound", timeout=timeout, yield_pub_data=True, **waits
        )
        for item in returns:
            if not item:
                continue
            if "jid" in item and "minions" in item:
                jid, published = str(item["jid"]), sorted(item["minions"])
                continue
            for minion, answer in item.items():
                answers[str(minion)] = answer.get("ret") if isinstance(answer, dict) else answer
    if jid is None:
        raise ConfigError(f"envflow: the salt-master took no job for {target}; see the master's log")
    return jid, published, answers


@contextlib.contextmanager
def cached_pillars_kept(master_opts, minions):
    """Put the master's cached data of ``minions`` back as it was before the block.

    Salt 3006 (``minion_data_cache``) stores the pillar a minion last
    compiled as that minion's, whatever pillarenv it was compiled for
    (``minions/<id>``, key ``data``): a preview's run, compiled from the
    candidate's pillar, would leave it there for pillar targeting and
    ``cache.pillar`` until the minion's next refresh. Salt 3008 stores no
    pillar there, and nothing is kept back then.
    """
    if not master_opts.get("minion_data_cache", True):
        yield
        return
    import salt.cache  # pylint: disable=import-outside-toplevel

    cache = salt.cache.factory(master_opts)
    saved = {minion: cache.fetch(f"minions/{minion}", "data") for minion in minions}
    try:
        yield
    finally:
        for minion, data in saved.items():
            if isinstance(data, dict) and "pillar" in data:
                try:
                    cache.store(f"minions/{minion}", "data", data)
                except Exception as exc:  # pylint: disable=broad-except
                    log.warning("envflow: the master's cached pillar of %s was not put back: %s", minion, exc)
