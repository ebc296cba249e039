"""envflow.saltbus on plain opts dicts: which caches a deploy clears, and how minions' answers are reported."""

import os

import pytest
import salt.cache
import salt.config
import salt.pillar
import salt.utils.cache

from envflow import saltbus

NEW_PILLAR_CACHE = hasattr(salt.pillar.PillarCache, "pillar_key")  # Salt 3008


@pytest.fixture
def master_opts(tmp_path):
    opts = dict(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(
        cachedir=str(tmp_path / "cache"),
        pillar_roots={"base": ["/srv/pillar"], "stage": ["/srv/salt/stage/pillar/"], "prod": ["/srv/salt/prod/pillar"]},
        pillar_cache=True,
    )
    os.makedirs(opts["cachedir"])
    return opts


def _store(opts, minion, pillarenv, data):
    """Cache a compiled pillar as the master's PillarCache does."""
    if NEW_PILLAR_CACHE:
        key = minion if pillarenv is None else f"{minion}:{pillarenv}"
        salt.cache.factory(opts, driver=opts.get("pillar.cache_driver")).store("pillar", key, data)
    else:
        folder = os.path.join(opts["cachedir"], "pillar_cache")
        os.makedirs(folder, exist_ok=True)
        cache = salt.utils.cache.CacheDisk(opts["pillar_cache_ttl"], os.path.join(folder, minion))
        cache[minion] = {**cache._dict.get(minion, {}), pillarenv: data}  # pylint: disable=protected-access


def _cached(opts):
    """Every cached pillar as ``{(minion, pillarenv): data}``."""
    found = {}
    if NEW_PILLAR_CACHE:
        cache = salt.cache.factory(opts, driver=opts.get("pillar.cache_driver"))
        for key in cache.list("pillar"):
            minion, _, pillarenv = key.partition(":")
            found[minion, pillarenv or None] = cache.fetch("pillar", key)
        return found
    folder = os.path.join(opts["cachedir"], "pillar_cache")
    for minion in os.listdir(folder):
        cache = salt.utils.cache.CacheDisk(opts["pillar_cache_ttl"], os.path.join(folder, minion))
        for pillarenv, data in cache[minion].items():
            found[minion, pillarenv] = data
    return found


@pytest.mark.parametrize("pillar_cache", [True, False])
def test_a_deploy_forgets_the_cached_pillars_of_its_pillarenv_only(master_opts, pillar_cache):
    # With pillar_cache off the master still writes the cache (minion_data_cache), so it is cleared all the same.
    opts = dict(master_opts, pillar_cache=pillar_cache)
    for minion in ("web1", "web2"):
        for pillarenv in ("stage", "prod", None):
            _store(opts, minion, pillarenv, {"app": f"{minion}-{pillarenv}"})
    assert saltbus.forget_pillar_cache(opts, "/srv/salt/stage/pillar") == ["stage"]
    # A pillar compiled without a pillarenv merged every pillarenv's, stage's too: it goes as well.
    assert _cached(opts) == {("web1", "prod"): {"app": "web1-prod"}, ("web2", "prod"): {"app": "web2-prod"}}


def test_a_directory_no_pillar_roots_lists_clears_nothing(master_opts):
    _store(master_opts, "web1", "stage", {"app": 1})
    assert saltbus.forget_pillar_cache(master_opts, "/srv/salt/stage/salt") == []
    assert saltbus.forget_pillar_cache(dict(master_opts, pillar_roots={}), "/srv/salt/stage/pillar") == []
    assert _cached(master_opts) == {("web1", "stage"): {"app": 1}}


def test_an_empty_cache_is_fine(master_opts):
    assert saltbus.forget_pillar_cache(master_opts, "/srv/salt/prod/pillar") == ["prod"]


def test_minions_answers_are_split_into_answered_failed_and_missing():
    returns = {"a": True, "b": "'saltutil.sync_all' is not available.", "c": False}
    assert saltbus._answers(returns, ["a", "b", "c", "d"]) == (  # pylint: disable=protected-access
        ["a"],
        {"b": "'saltutil.sync_all' is not available.", "c": "False"},
        ["d"],
    )


def test_syncing_without_a_master_reports_it_and_raises_nothing(master_opts, tmp_path):
    opts = dict(master_opts, sock_dir=str(tmp_path / "sock"), pki_dir=str(tmp_path / "pki"), timeout=1)
    report = saltbus.sync_minions(opts, "G@env:stage", "stage")
    assert report == {
        "target": "G@env:stage",
        "answered": [],
        "failed": {},
        "missing": [],
        "error": "envflow: the minions of G@env:stage were not synced: the salt-master is not running",
    }
