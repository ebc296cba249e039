"""Branch environments without a deploy: ``envflow:branch_environments`` validated, branch names made saltenvs or
refused in one line, the pushes that concern them, and their rows in the status table."""

import copy
import datetime
import subprocess

import hypothesis
import pytest
from hypothesis import strategies as st

from envflow import branchenvs, hooks, tables
from envflow.config import BranchEnvironments, parse
from envflow.errors import ConfigError
from envflow.hooks import Push, Update

BLOCK = {"branches": ["feature/*"], "path": "/srv/salt/branches"}
VALID = {
    "repo": "/srv/git/automation.git",
    "environments": [
        {"name": "test", "branch": "develop", "path": "/srv/salt/test"},
        {"name": "stage", "branch": "stage", "path": "/srv/salt/stage"},
        {"name": "prod", "branch": "master", "path": "/srv/salt/prod", "preview_path": "/srv/salt/prod_preview"},
    ],
    "branch_environments": BLOCK,
}
KEY = "envflow:branch_environments"
# The line every name Salt would not take as a saltenv ends with.
NOT_A_SALTENV = (
    "is not a name Salt takes as a saltenv (letters, digits, '_', '-' and '.', not first '.' or '-', no '..' and "
    "no control character); rename the branch"
)
NOW = datetime.datetime(2026, 1, 5, 16, 13, 30, tzinfo=datetime.timezone.utc)
A, B = "a" * 40, "b" * 40


def with_block(block, **top):
    """VALID with ``envflow:branch_environments`` set to ``block`` and top-level keys ``top``."""
    raw = copy.deepcopy(VALID)
    raw["branch_environments"] = block
    raw.update(top)
    return raw


def block(**changes):
    """BLOCK with keys replaced (``None`` deletes)."""
    found = dict(BLOCK, **changes)
    return {key: value for key, value in found.items() if value is not None}


def settings_of(branches=("*",), limit=30):
    return BranchEnvironments(branches=tuple(branches), path="/srv/salt/branches", max=limit)


def git_accepts(branch):
    """Whether git itself takes ``branch`` as a branch name (``git check-ref-format``)."""
    return subprocess.run(["git", "check-ref-format", f"refs/heads/{branch}"], check=False).returncode == 0


# Configuration


def test_a_valid_block_is_parsed_with_its_defaults():
    config = parse(with_block(block(path="/srv/salt/branches/")))
    assert config.branch_environments == BranchEnvironments(
        branches=("feature/*",), path="/srv/salt/branches", max=30, states=".", pillar=None
    )
    settings = config.branch_environments
    assert settings.home == "/srv/salt/.branches.envflow"
    assert (settings.states_root, settings.pillar_root) == ("/srv/salt/branches/__env__", None)


def test_without_the_block_no_branch_is_served():
    raw = copy.deepcopy(VALID)
    del raw["branch_environments"]
    assert parse(raw).branch_environments is None


def test_one_pattern_may_be_given_as_a_string_and_max_is_kept():
    settings = parse(with_block(block(branches="hotfix/*", max=3))).branch_environments
    assert (settings.branches, settings.max) == (("hotfix/*",), 3)


def test_states_and_pillar_are_the_blocks_own_layout():
    config = parse(with_block(block(branches=["feature/*", "bug-*"]), states="salt/", pillar="./pillar"))
    settings = config.branch_environments
    assert (settings.states, settings.pillar) == ("salt", "pillar")
    assert settings.states_root == "/srv/salt/branches/__env__/salt"
    assert settings.pillar_root == "/srv/salt/branches/__env__/pillar"
    env = branchenvs.environment(settings, "feature_x", "feature/x")
    assert (env.name, env.branch, env.path) == ("feature_x", "feature/x", "/srv/salt/branches/feature_x")
    assert (env.states_dir, env.pillar_dir) == (
        "/srv/salt/branches/feature_x/salt",
        "/srv/salt/branches/feature_x/pillar",
    )
    assert branchenvs.home_of(settings, "feature_x") == "/srv/salt/.branches.envflow/feature_x"
    assert branchenvs.served_dir(settings, "feature_x").layout.link_text("a") == "../.branches.envflow/feature_x/a"


def test_patterns_are_fnmatch_where_a_star_crosses_slashes_and_case_counts():
    settings = settings_of(["feature/*", "release-?"])
    assert settings.matches("feature/x")
    assert settings.matches("feature/team/x")
    assert settings.matches("release-1")
    assert not settings.matches("Feature/x")
    assert not settings.matches("release-10")
    assert not settings.matches("develop")


EXAMPLE = "{branches: ['feature/*'], path: /srv/salt/branches, max: 30}"
OVERLAP = "give branch environments a directory of their own, such as /srv/salt/branches"


@pytest.mark.parametrize(
    "raw, message",
    [
        (with_block("feature/*"), f"{KEY}: must be a mapping, such as {EXAMPLE}"),
        (with_block(["feature/*"]), f"{KEY}: must be a mapping, such as {EXAMPLE}"),
        (with_block(block(paths="/x")), f"{KEY}: unknown key 'paths'; known keys: branches, path, max"),
        (with_block(block(branches=None)), f"{KEY}: missing 'branches'; give branches and path, such as {EXAMPLE}"),
        (with_block(block(path=None)), f"{KEY}: missing 'path'; give branches and path, such as {EXAMPLE}"),
        (
            with_block(block(branches=[])),
            f"{KEY}:branches: must be a list of branch name patterns, such as ['feature/*']",
        ),
        (with_block(block(branches={"feature/*": 1})), f"{KEY}:branches: must be a list of branch name patterns"),
        (
            with_block(block(branches=["feature/*", ""])),
            f"{KEY}:branches: must be a non-empty string, for example 'feature/*'",
        ),
        (with_block(block(branches=[3])), f"{KEY}:branches: must be a non-empty string"),
        (
            with_block(block(path="srv/branches")),
            f"{KEY}:path: 'srv/branches' is a relative path; use an absolute path such as /srv/salt/branches",
        ),
        (with_block(block(path="/")), f"{KEY}:path: '/' cannot be used here; use a path such as /srv/salt/branches"),
        (with_block(block(path="")), f"{KEY}:path: must be a non-empty string, for example /srv/salt/branches"),
        (with_block(block(max=0)), f"{KEY}:max: 0 is not a number of environments; give 1 or more, such as 30"),
        (with_block(block(max=-1)), f"{KEY}:max: -1 is not a number of environments; give 1 or more, such as 30"),
        (with_block(block(max=True)), f"{KEY}:max: True is not a number of environments"),
        (with_block(block(max="x")), f"{KEY}:max: 'x' is not a number of environments"),
        (with_block(block(max="30")), f"{KEY}:max: '30' is not a number of environments"),
        (with_block(block(max=2.5)), f"{KEY}:max: 2.5 is not a number of environments"),
        (
            with_block(block(path="/srv/salt/stage")),
            f"{KEY}:path: /srv/salt/stage and /srv/salt/stage, the directory of environment 'stage', "
            f"overlap; {OVERLAP}",
        ),
        (
            with_block(block(path="/srv/salt/stage/branches")),
            f"{KEY}:path: /srv/salt/stage/branches and /srv/salt/stage, the directory of environment 'stage', "
            f"overlap; {OVERLAP}",
        ),
        (
            with_block(block(path="/srv/salt")),
            f"{KEY}:path: /srv/salt and /srv/salt/test, the directory of environment 'test', overlap; {OVERLAP}",
        ),
        (
            with_block(block(path="/srv/salt/prod_preview")),
            f"{KEY}:path: /srv/salt/prod_preview and /srv/salt/prod_preview, the preview directory of environment "
            f"'prod', overlap; {OVERLAP}",
        ),
        (
            with_block(block(path="/srv/salt/prod_preview/branches")),
            f"{KEY}:path: /srv/salt/prod_preview/branches and /srv/salt/prod_preview, the preview directory of "
            f"environment 'prod', overlap; {OVERLAP}",
        ),
        (
            with_block(block(path="/srv/salt/.stage.envflow/branches")),
            f"{KEY}:path: /srv/salt/.stage.envflow/branches is inside /srv/salt/.stage.envflow, envflow's own "
            "directory beside /srv/salt/stage; use a directory outside it",
        ),
        (
            with_block(block(path="/srv/salt/.prod_preview.envflow")),
            f"{KEY}:path: /srv/salt/.prod_preview.envflow is inside /srv/salt/.prod_preview.envflow, envflow's own "
            "directory beside /srv/salt/prod_preview; use a directory outside it",
        ),
        (
            with_block(block(), states="salt", pillar="salt/pillar"),
            "envflow:pillar: 'salt/pillar' is inside the states directory 'salt'",
        ),
    ],
)
def test_each_mistake_names_its_key_in_one_line(raw, message):
    with pytest.raises(ConfigError) as error:
        parse(raw)
    text = str(error.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_an_environment_inside_the_branch_environments_own_directory_is_refused():
    """Their homes would be made inside that environment's served tree, where every minion reads them."""
    raw = with_block(block())
    raw["environments"][2]["path"] = "/srv/salt/.branches.envflow"
    with pytest.raises(ConfigError) as error:
        parse(raw)
    assert str(error.value).startswith(KEY)
    assert "/srv/salt/.branches.envflow" in str(error.value)


# Naming


def test_a_branch_is_served_as_its_name_with_each_slash_made_an_underscore():
    assert branchenvs.saltenv_of("feature/new-nginx") == "feature_new-nginx"
    assert branchenvs.saltenv_of("team/a/b.c") == "team_a_b.c"
    assert branchenvs.saltenv_of("hotfix-1") == "hotfix-1"
    found = branchenvs.plan(settings_of(), ["feature/new-nginx", "a" * 100], {})
    assert found.serve == {"feature_new-nginx": "feature/new-nginx", "a" * 100: "a" * 100}
    assert (found.refused, found.capped, found.remove) == ({}, {}, {})


LONG = "feature/" + "x" * 100


@pytest.mark.parametrize(
    "branch, git_takes, line",
    [
        (
            LONG,
            True,
            "branch 'feature/" + "x" * 48 + "... (108 characters): its saltenv would be 108 characters, over 100; "
            "use a shorter name",
        ),
        (
            "__env__",
            True,
            "branch '__env__': __env__ is the placeholder of Salt's roots, not a saltenv; rename the branch",
        ),
        ("feature/a+b", True, f"branch 'feature/a+b': its saltenv 'feature_a+b' {NOT_A_SALTENV}"),
        ("-feature", True, f"branch '-feature': its saltenv '-feature' {NOT_A_SALTENV}"),
        ("feature/café", True, f"branch 'feature/café': its saltenv 'feature_café' {NOT_A_SALTENV}"),
        ("feature/x,y", True, f"branch 'feature/x,y': its saltenv 'feature_x,y' {NOT_A_SALTENV}"),
        # git refuses these itself, so no mirror lists them; the plan refuses them all the same.
        (".feature", False, f"branch '.feature': its saltenv '.feature' {NOT_A_SALTENV}"),
        ("feature..x", False, f"branch 'feature..x': its saltenv 'feature..x' {NOT_A_SALTENV}"),
        ("feature/x y", False, f"branch 'feature/x y': its saltenv 'feature_x y' {NOT_A_SALTENV}"),
        ("feature/x\n", False, f"branch 'feature/x\\n': its saltenv 'feature_x\\n' {NOT_A_SALTENV}"),
    ],
)
def test_a_name_salt_would_not_take_is_refused_in_one_line_and_the_others_are_served(branch, git_takes, line):
    assert git_accepts(branch) is git_takes
    found = branchenvs.plan(settings_of(), [branch, "feature/ok"], {})
    assert found.refused == {branch: line}
    assert found.serve == {"feature_ok": "feature/ok"}
    assert "\n" not in line
    assert branch not in found.capped


def test_a_long_name_is_echoed_cut_short():
    line = branchenvs.plan(settings_of(), ["feature/" + "y" * 5000], {}).refused["feature/" + "y" * 5000]
    assert len(line) < 160
    assert "(5008 characters)" in line


def test_a_branch_of_exactly_the_longest_name_is_served():
    branch = "f/" + "x" * (branchenvs.MAX_NAME - 2)
    assert branchenvs.plan(settings_of(), [branch], {}).serve == {branchenvs.saltenv_of(branch): branch}


def reserved_config(opts=None):
    config = parse(with_block(block(branches=["*"])))
    return config, branchenvs.reserved_saltenvs(config, opts)


def test_reserved_saltenvs_are_the_pipelines_its_previews_and_those_the_roots_name():
    config = parse(VALID)
    assert branchenvs.reserved_saltenvs(config) == {"test", "stage", "prod", "prod_preview"}
    opts = {
        "file_roots": {"base": ["/srv/salt/base"], "__env__": ["/srv/salt/branches/__env__"], "dev": ["/srv/dev"]},
        "pillar_roots": {"qa": ["/srv/pillar/qa"], "__env__": ["/srv/salt/branches/__env__/pillar"]},
    }
    assert branchenvs.reserved_saltenvs(config, opts) == {"test", "stage", "prod", "prod_preview", "base", "dev", "qa"}
    assert branchenvs.reserved_saltenvs(config, {"file_roots": ["/srv/salt"]}) == {
        "test",
        "stage",
        "prod",
        "prod_preview",
    }


@pytest.mark.parametrize(
    "branch, taken",
    [
        ("stage", "stage"),
        ("Stage", "stage"),
        ("PROD", "prod"),
        ("prod_preview", "prod_preview"),
        ("prod/preview", "prod_preview"),
        ("base", "base"),
        ("Base", "base"),
        ("QA", "qa"),
    ],
)
def test_a_saltenv_the_pipeline_or_the_roots_serve_is_refused_case_aside(branch, taken):
    _config, reserved = reserved_config({"file_roots": {"base": ["/srv/salt/base"]}, "pillar_roots": {"qa": ["/p"]}})
    found = branchenvs.plan(settings_of(), [branch, "feature/ok"], {}, reserved)
    assert found.refused == {
        branch: f"branch {branch!r}: its saltenv {branchenvs.saltenv_of(branch)} is {taken}, a saltenv the pipeline or "
        "the master's roots already serve (letter case aside); rename the branch"
    }
    assert found.serve == {"feature_ok": "feature/ok"}


def test_two_new_branches_making_one_saltenv_are_both_refused():
    found = branchenvs.plan(settings_of(), ["feature/a_b", "feature_a/b", "feature/c"], {})
    assert found.refused == {
        "feature/a_b": "branch 'feature/a_b': 'feature/a_b' and 'feature_a/b' both make saltenv feature_a_b "
        "(letter case aside); rename one",
        "feature_a/b": "branch 'feature_a/b': 'feature/a_b' and 'feature_a/b' both make saltenv feature_a_b "
        "(letter case aside); rename one",
    }
    assert found.serve == {"feature_c": "feature/c"}


def test_three_new_branches_making_one_saltenv_case_aside_are_all_refused():
    found = branchenvs.plan(settings_of(), ["feature_a/b", "Feature/A_b", "feature/a_b"], {})
    names = "'Feature/A_b' and 'feature/a_b' and 'feature_a/b'"
    assert found.refused == {
        "Feature/A_b": f"branch 'Feature/A_b': {names} all make saltenv Feature_A_b (letter case aside); "
        "rename all but one",
        "feature/a_b": f"branch 'feature/a_b': {names} all make saltenv feature_a_b (letter case aside); "
        "rename all but one",
        "feature_a/b": f"branch 'feature_a/b': {names} all make saltenv feature_a_b (letter case aside); "
        "rename all but one",
    }
    assert found.serve == {}


@pytest.mark.parametrize("newcomer", ["feature_a/b", "Feature/A_B", "FEATURE_A_B"])
def test_a_new_branch_clashing_with_one_served_is_refused_and_the_served_one_keeps_its_place(newcomer):
    on_disk = {"feature_a_b": "feature/a_b"}
    found = branchenvs.plan(settings_of(), ["feature/a_b", newcomer], on_disk)
    assert found.serve == {"feature_a_b": "feature/a_b"}
    assert found.refused == {
        newcomer: f"branch {newcomer!r}: its saltenv {branchenvs.saltenv_of(newcomer)} is (letter case aside) "
        "feature_a_b, served for branch 'feature/a_b'; rename the branch"
    }
    assert found.remove == {}


def test_a_served_saltenv_the_pipeline_or_the_roots_take_later_goes():
    found = branchenvs.plan(settings_of(), ["qa", "feature/a"], {"qa": "qa", "feature_a": "feature/a"}, {"QA"})
    assert found.remove == {"qa": "qa"}
    assert list(found.refused) == ["qa"]
    assert found.serve == {"feature_a": "feature/a"}


def test_refused_names_take_no_place_under_the_cap():
    found = branchenvs.plan(settings_of(limit=1), ["__env__", "a+b", "stage", "zz"], {}, {"stage"})
    assert found.serve == {"zz": "zz"}
    assert sorted(found.refused) == ["__env__", "a+b", "stage"]
    assert found.capped == {}


def test_branches_the_patterns_do_not_match_are_neither_served_nor_refused():
    found = branchenvs.plan(settings_of(["feature/*"]), ["develop", "hotfix/a+b", "feature/x"], {})
    assert (found.serve, found.refused, found.capped) == ({"feature_x": "feature/x"}, {}, {})


# Branch names as git makes them: letters of both cases, the characters that clash ('/' and '_'), others Salt refuses.
NAMES = st.text(alphabet="abAB/_-.+", min_size=1, max_size=5)


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True, database=None)
@hypothesis.given(
    before=st.sets(NAMES, max_size=8),
    after=st.sets(NAMES, max_size=8),
    limit=st.integers(min_value=1, max_value=5),
    reserved=st.sets(st.sampled_from(["a", "B", "a_b", "stage"]), max_size=2),
)
def test_the_plan_never_serves_a_clash_a_refused_name_or_more_than_max(before, after, limit, reserved):
    settings = settings_of(limit=limit)
    on_disk = branchenvs.plan(settings, sorted(before), {}, reserved).serve
    found = branchenvs.plan(settings, sorted(after), on_disk, reserved)
    served = found.serve
    assert len(served) <= limit
    assert all(saltenv == branchenvs.saltenv_of(branch) for saltenv, branch in served.items())
    lowered = [saltenv.lower() for saltenv in served]
    assert len(set(lowered)) == len(lowered)
    assert not set(lowered) & {name.lower() for name in reserved}
    assert all(branchenvs.plan(settings, [branch], {}).refused == {} for branch in served.values())
    # Each branch is served, refused or capped: exactly one of them.
    placed = [*served.values(), *found.refused, *found.capped]
    assert sorted(placed) == sorted(after)
    # What is served and its branch still there keeps its place; what is not served any more goes.
    assert all(served.get(saltenv) == branch for saltenv, branch in on_disk.items() if branch in after)
    assert found.remove == {saltenv: branch for saltenv, branch in on_disk.items() if served.get(saltenv) != branch}
    # Which one is served never depends on the order the branches come in.
    assert branchenvs.plan(settings, sorted(after, reverse=True), on_disk, reserved) == found


# Pushes


def test_pushed_and_deleted_branches_of_branch_environments_follow_the_pipelines_own():
    config = parse(with_block(block(branches=["feature/*", "master"])))
    push = Push(
        "envflow",
        "push",
        (
            Update("refs/heads/master", A, False),
            Update("refs/heads/feature/x", A, False),
            Update("refs/tags/feature/t", A, False),
            Update("refs/heads/feature/gone", "0" * 40, True),
            Update("refs/heads/hotfix/z", A, False),
            Update("refs/heads/develop", B, False),
            Update("refs/heads/feature/x", B, False),
        ),
    )
    assert push.branches == ["master", "feature/x", "hotfix/z", "develop"]
    assert push.touched == ["master", "feature/x", "feature/gone", "hotfix/z", "develop"]
    assert hooks.served_branches(config, push) == ["master", "develop", "feature/x", "feature/gone"]
    raw = copy.deepcopy(VALID)
    del raw["branch_environments"]
    assert hooks.served_branches(parse(raw), push) == ["master", "develop"]


# The status table

ENV_ROW = {
    "branch": "develop",
    "remote": A,
    "deployed": A,
    "in_sync": True,
    "waiting": 0,
    "drift": 0,
    "served": {"id": A, "summary": "web v2", "since": "2026-01-05T14:03:00+00:00"},
    "ahead": 0,
    "pin": None,
    "freeze": None,
    "gates": [],
}


def test_the_status_table_has_a_row_per_branch_environment_and_a_line_per_branch_not_served():
    report = {
        "environments": {"test": ENV_ROW},
        "branch_environments": {
            "path": "/srv/salt/branches",
            "environments": {
                "feature_a": {
                    "branch": "feature/a",
                    "remote": A,
                    "deployed": A,
                    "summary": "nginx upstream",
                    "since": "2026-01-05T16:00:00+00:00",
                    "in_sync": True,
                },
                "feature_gone": {
                    "branch": "feature/gone",
                    "remote": None,
                    "deployed": B,
                    "summary": "old work",
                    "since": "2026-01-05T14:03:00+00:00",
                    "in_sync": False,
                    "goes": "its branch is gone or no longer served: the next refresh removes it",
                },
            },
            "refused": {"feature/a+b": "branch 'feature/a+b': its saltenv 'feature_a+b' is not a name"},
            "capped": {"feature/z": "branch 'feature/z': not served: 2 branch environments are served"},
        },
    }
    assert tables.status_table(report, now=NOW).splitlines() == [
        "ENV   BRANCH   SERVES             SINCE  IN SYNC  WAITING  DRIFT  HOLDS  GATES",
        "test  develop  aaaaaaaaaa web v2  2h10m  yes      0        0      -      none",
        "",
        "branch environments in /srv/salt/branches: 2 served",
        "SALTENV       BRANCH        SERVES                     SINCE   IN SYNC",
        "feature_a     feature/a     aaaaaaaaaa nginx upstream  13m30s  yes",
        "feature_gone  feature/gone  bbbbbbbbbb old work        2h10m   no",
        "feature_gone: its branch is gone or no longer served: the next refresh removes it",
        "not served: branch 'feature/a+b': its saltenv 'feature_a+b' is not a name",
        "not served: branch 'feature/z': not served: 2 branch environments are served",
    ]


def test_control_characters_in_branch_names_never_break_a_row():
    report = {
        "environments": {},
        "branch_environments": {
            "path": "/srv/salt/branches",
            "environments": {
                "feature_x": {
                    "branch": "feature/x\n\x1b[31mred\r",
                    "deployed": None,
                    "in_sync": False,
                    "problem": "envflow: cannot read\nthis",
                }
            },
            "refused": {"a\nb": "branch 'a\\nb': one\nline"},
            "capped": {},
        },
    }
    lines = tables.status_table(report, now=NOW).splitlines()
    assert lines[-5:] == [
        "branch environments in /srv/salt/branches: 1 served",
        "SALTENV    BRANCH             SERVES  SINCE  IN SYNC",
        "feature_x  feature/x [31mred  -       -      ?",
        "feature_x: envflow: cannot read this",
        "not served: branch 'a\\nb': one line",
    ]
    assert not any("\x1b" in line or "\r" in line for line in lines)


def test_no_branch_section_without_branch_environments():
    text = tables.status_table({"environments": {"test": ENV_ROW}}, now=NOW)
    assert "branch environments" not in text
