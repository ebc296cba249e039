"""envflow.checks on master opts dicts: each mistake one line, and a correct configuration none."""

import copy

import pytest

from envflow.checks import problems
from envflow.config import parse

BLOCK = {
    "repo": "/srv/git/automation.git",
    "states": "salt",
    "pillar": "pillar",
    "environments": [
        {"name": "test", "branch": "develop", "path": "/srv/salt/test", "target": "G@env:test"},
        {"name": "stage", "branch": "stage", "path": "/srv/salt/stage", "target": "G@env:stage"},
        {"name": "prod", "branch": "master", "path": "/srv/salt/prod", "target": "G@env:prod"},
    ],
}
# The master configuration docs/workflows/pillar.rst recommends.
GOOD = {
    "file_roots": {env: [f"/srv/salt/{env}/salt"] for env in ("test", "stage", "prod")},
    "pillar_roots": {env: [f"/srv/salt/{env}/pillar/"] for env in ("test", "stage", "prod")},
    "top_file_merging_strategy": "same",
    "pillarenv_from_saltenv": True,
    "fileserver_followsymlinks": True,
}


def opts(**changes):
    found = copy.deepcopy(GOOD)
    found.update(changes)
    return found


def roots(**changes):
    """GOOD's file_roots with saltenvs replaced."""
    return {**GOOD["file_roots"], **changes}


def test_the_recommended_configuration_has_no_problem():
    assert problems(parse(BLOCK), GOOD) == []


def test_without_states_and_pillar_the_path_itself_is_served():
    block = {key: value for key, value in BLOCK.items() if key not in ("states", "pillar")}
    found = opts(file_roots={env: [f"/srv/salt/{env}"] for env in ("test", "stage", "prod")}, pillar_roots={})
    del found["pillarenv_from_saltenv"]
    assert problems(parse(block), found) == []
    found["file_roots"]["stage"] = ["/srv/salt/stage/salt"]
    assert problems(parse(block), found) == [
        "file_roots:stage: does not list /srv/salt/stage (stage's path), so Salt does not serve what envflow "
        "deploys in stage; set file_roots: {stage: [/srv/salt/stage]}"
    ]


@pytest.mark.parametrize(
    "master, line",
    [
        (
            opts(file_roots=roots(stage=["/srv/salt/stage/states"])),
            "file_roots:stage: does not list /srv/salt/stage/salt (stage's states directory), so Salt does not "
            "serve what envflow deploys in stage; set file_roots: {stage: [/srv/salt/stage/salt]}",
        ),
        (
            opts(pillar_roots={"test": ["/srv/salt/test/pillar"], "stage": ["/srv/salt/stage/pillar"]}),
            "pillar_roots:prod: does not list /srv/salt/prod/pillar (prod's pillar directory), so Salt does not "
            "serve what envflow deploys in prod; set pillar_roots: {prod: [/srv/salt/prod/pillar]}",
        ),
        (
            opts(file_roots=roots(prod=["/srv/salt/prod/salt", "/srv/salt/.prod.envflow/a/salt"])),
            "file_roots:prod: /srv/salt/.prod.envflow/a/salt is inside /srv/salt/.prod.envflow, envflow's own "
            "directory, whose trees are replaced at every deploy; list /srv/salt/prod/salt, under the symlink "
            "envflow switches",
        ),
        (
            opts(file_roots=roots(stage=["/srv/salt/stage/salt", "/srv/salt/stage"])),
            "file_roots:stage: /srv/salt/stage holds /srv/salt/stage/pillar, the pillar of stage, so every minion "
            "can read it through salt://; list /srv/salt/stage/salt instead",
        ),
        (
            opts(top_file_merging_strategy="merge_all"),
            "top_file_merging_strategy: merge_all merges the top files of every saltenv (test, stage, prod), so a "
            "minion gets what another environment's branch assigns it; set top_file_merging_strategy: same",
        ),
        (
            opts(file_roots=roots(base=["/srv/salt/base"])),
            "fileserver_followsymlinks is on and file_roots:base lists /srv/salt/base, which envflow does not "
            "deploy: a symlink in it leading out of it is served to every minion; set fileserver_followsymlinks: "
            "False, or keep such links out of it",
        ),
        (
            opts(pillarenv_from_saltenv=False),
            "pillarenv_from_saltenv: off, so a minion that sets no pillarenv gets the pillar top files of every "
            "environment merged; set pillarenv_from_saltenv: True (and each minion's saltenv)",
        ),
        (
            opts(pillar_cache=True, pillar_cache_backend="memory"),
            "pillar_cache: the master keeps pillars in its memory (pillar_cache_backend: memory or "
            "memcache_expire_seconds), which envflow cannot clear after a deploy; use pillar_cache_backend: disk "
            "and memcache_expire_seconds: 0, or sync_minions",
        ),
    ],
)
def test_each_mistake_is_one_line(master, line):
    assert problems(parse(BLOCK), master) == [line]


def test_a_root_holding_envflows_own_directory():
    found = problems(parse(BLOCK), opts(file_roots=roots(base=["/srv/salt"]), fileserver_followsymlinks=False))
    assert (
        "file_roots:base: /srv/salt holds /srv/salt/.stage.envflow, envflow's own directory (both trees of stage "
        "and their repositories); list only the environments' directories"
    ) in found
    assert all("\n" not in line for line in found)


def test_a_verified_gate_needs_the_upstream_target():
    block = copy.deepcopy(BLOCK)
    del block["environments"][1]["target"]
    block["environments"][2]["gates"] = {"verified": True}
    assert problems(parse(block), GOOD) == [
        "envflow:environments:1:target: not set, but prod has the verified gate: envflow.verify stage jid=last "
        "and the release pipeline need stage's minions; add a compound target such as G@env:stage"
    ]


# Previews of stage and prod, served as saltenvs stage_preview and prod_preview; no env_order (it would either hide
# them from their own test runs or show their top files to highstates that name no saltenv).
PREVIEW_BLOCK = copy.deepcopy(BLOCK)
PREVIEW_BLOCK["environments"][1]["preview_path"] = "/srv/salt/stage_preview"
PREVIEW_BLOCK["environments"][2]["preview_path"] = "/srv/salt/prod_preview"
PREVIEW_GOOD = {
    **GOOD,
    "file_roots": {
        **GOOD["file_roots"],
        **{f"{env}_preview": [f"/srv/salt/{env}_preview/salt"] for env in ("stage", "prod")},
    },
    "pillar_roots": {
        **GOOD["pillar_roots"],
        **{f"{env}_preview": [f"/srv/salt/{env}_preview/pillar"] for env in ("stage", "prod")},
    },
}


def preview_opts(**changes):
    found = copy.deepcopy(PREVIEW_GOOD)
    found.update(changes)
    return found


def test_a_configuration_with_previews_served_has_no_problem():
    assert problems(parse(PREVIEW_BLOCK), PREVIEW_GOOD) == []


def test_without_states_and_pillar_the_preview_directory_itself_is_served():
    block = {key: value for key, value in PREVIEW_BLOCK.items() if key not in ("states", "pillar")}
    saltenvs = ("test", "stage", "prod", "stage_preview", "prod_preview")
    found = preview_opts(file_roots={env: [f"/srv/salt/{env}"] for env in saltenvs}, pillar_roots={})
    del found["pillarenv_from_saltenv"]
    assert problems(parse(block), found) == []
    del found["file_roots"]["prod_preview"]
    assert problems(parse(block), found) == [
        "file_roots:prod_preview: does not list /srv/salt/prod_preview (the preview directory of prod), which "
        "salt-run envflow.preview prod needs: without it the preview's test run reads nothing of the candidate; "
        "set file_roots: {prod_preview: [/srv/salt/prod_preview]}"
    ]


@pytest.mark.parametrize(
    "master, line",
    [
        (
            preview_opts(file_roots={**PREVIEW_GOOD["file_roots"], "prod_preview": ["/srv/salt/prod/salt"]}),
            "file_roots:prod_preview: does not list /srv/salt/prod_preview/salt (the states directory of the preview "
            "directory of prod), which salt-run envflow.preview prod needs: without it the preview's test run reads "
            "nothing of the candidate; set file_roots: {prod_preview: [/srv/salt/prod_preview/salt]}",
        ),
        (
            preview_opts(pillar_roots={k: v for k, v in PREVIEW_GOOD["pillar_roots"].items() if k != "stage_preview"}),
            "pillar_roots:stage_preview: does not list /srv/salt/stage_preview/pillar (the pillar directory of the "
            "preview directory of stage), which salt-run envflow.preview stage needs: without it the preview's test "
            "run reads nothing of the candidate's pillar; set pillar_roots: {stage_preview: "
            "[/srv/salt/stage_preview/pillar]}",
        ),
        (
            preview_opts(
                file_roots={
                    **PREVIEW_GOOD["file_roots"],
                    "prod_preview": ["/srv/salt/prod_preview/salt", "/srv/salt/.prod_preview.envflow/b/salt"],
                }
            ),
            "file_roots:prod_preview: /srv/salt/.prod_preview.envflow/b/salt is inside "
            "/srv/salt/.prod_preview.envflow, envflow's own directory, whose trees are replaced at every deploy; "
            "list /srv/salt/prod_preview/salt, under the symlink envflow switches",
        ),
        (
            preview_opts(
                file_roots={
                    **PREVIEW_GOOD["file_roots"],
                    "stage_preview": ["/srv/salt/stage_preview/salt", "/srv/salt/stage_preview"],
                }
            ),
            "file_roots:stage_preview: /srv/salt/stage_preview holds /srv/salt/stage_preview/pillar, the pillar of "
            "stage's preview, so every minion can read it through salt://; list /srv/salt/stage_preview/salt instead",
        ),
    ],
)
def test_each_preview_mistake_is_one_line(master, line):
    assert problems(parse(PREVIEW_BLOCK), master) == [line]


def test_a_root_holding_a_previews_own_directory():
    master = preview_opts(
        file_roots={**PREVIEW_GOOD["file_roots"], "base": ["/srv/salt"]}, fileserver_followsymlinks=False
    )
    found = problems(parse(PREVIEW_BLOCK), master)
    assert (
        "file_roots:base: /srv/salt holds /srv/salt/.prod_preview.envflow, envflow's own directory (both trees of "
        "prod's preview and their repositories); list only the environments' directories"
    ) in found
    assert all("\n" not in line for line in found)


def test_links_in_a_preview_directory_are_envflows_to_refuse():
    # The preview directory and its own directory are deployed by envflow, which refuses links leaving the tree.
    master = preview_opts(
        file_roots={**PREVIEW_GOOD["file_roots"], "prod_preview": ["/srv/salt/prod_preview/salt"]},
        fileserver_followsymlinks=True,
    )
    assert problems(parse(PREVIEW_BLOCK), master) == []
    master["file_roots"]["base"] = ["/srv/salt/prod_preview_formulas"]
    assert problems(parse(PREVIEW_BLOCK), master) == [
        "fileserver_followsymlinks is on and file_roots:base lists /srv/salt/prod_preview_formulas, which envflow "
        "does not deploy: a symlink in it leading out of it is served to every minion; set "
        "fileserver_followsymlinks: False, or keep such links out of it"
    ]


@pytest.mark.parametrize(
    "changes, lines",
    [
        (
            {"env_order": ["base", "test", "stage", "prod"]},
            [
                f"env_order: leaves out {env}_preview, so salt-run envflow.preview {env} finds no states in it (Salt "
                "serves a state run only the saltenvs env_order lists); remove env_order and have every minion set "
                "its saltenv"
                for env in ("stage", "prod")
            ],
        ),
        (
            {"env_order": ["base", "test", "stage", "prod", "prod_preview"]},
            [
                "env_order: leaves out stage_preview, so salt-run envflow.preview stage finds no states in it (Salt "
                "serves a state run only the saltenvs env_order lists); remove env_order and have every minion set "
                "its saltenv",
                "env_order: lists prod_preview, so a minion that sets no saltenv reads its top file in a highstate and "
                "applies for real the candidate salt-run envflow.preview prod deploys there; remove env_order and "
                "have every minion set its saltenv",
            ],
        ),
        (
            {"state_top_saltenv": "stage_preview"},
            [
                "state_top_saltenv: stage_preview makes a minion that sets no saltenv read that top file alone in a "
                "highstate, and so apply for real the candidate salt-run envflow.preview stage deploys there; remove "
                "state_top_saltenv and have every minion set its saltenv"
            ],
        ),
    ],
)
def test_master_settings_that_break_previews_or_apply_them_for_real(changes, lines):
    assert problems(parse(PREVIEW_BLOCK), preview_opts(**changes)) == lines


def test_previews_need_neither_env_order_nor_state_top_saltenv():
    assert problems(parse(PREVIEW_BLOCK), preview_opts()) == []
    assert problems(parse(PREVIEW_BLOCK), preview_opts(state_top_saltenv="prod")) == []
    # state_top_saltenv keeps highstates that name no saltenv to its own top file, whatever env_order lists.
    listed = ["base", "test", "stage", "prod", "stage_preview", "prod_preview"]
    assert problems(parse(PREVIEW_BLOCK), preview_opts(env_order=listed, state_top_saltenv="prod")) == []
    # Without previews there is nothing to keep out.
    assert problems(parse(BLOCK), opts(env_order=[])) == []


def test_a_preview_needs_the_environments_target():
    block = copy.deepcopy(PREVIEW_BLOCK)
    del block["environments"][2]["target"]
    assert problems(parse(block), preview_opts()) == [
        "envflow:environments:2:target: not set, but prod has a preview_path: salt-run envflow.preview prod "
        "(without tgt=) and the release pipeline's preview need prod's minions; add a compound target such as "
        "G@env:prod"
    ]
