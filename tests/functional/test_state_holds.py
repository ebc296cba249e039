"""The envflow states and the execution module's rollback with pins and freezes, run as Salt's loaders run them."""

import pytest
from salt.exceptions import CommandExecutionError

from envflow import history, holds
from envflow.config import parse
from envflow.remote import Mirror
from tests.functional.conftest import served_file


@pytest.fixture
def mirror(minion_base_opts, remote):
    """The execution module's own mirror (the same cache directory), fetched."""
    with Mirror(remote.path, minion_base_opts["cachedir"]) as mirror:
        mirror.fetch()
        yield mirror


@pytest.fixture
def two_versions(loaders, envflow_block, remote):
    """stage served v1, then serves v2."""
    loaders.modules.envflow.deploy("stage")
    v1 = remote.tip("stage")
    v2 = remote.commit("stage", {"web/init.sls": "# web v2\n"}, message="web v2")
    loaders.modules.envflow.deploy("stage")
    return v1, v2


def test_rollback_then_the_state_leaves_the_pinned_environment_alone(loaders, envflow_block, remote, two_versions):
    v1, v2 = two_versions
    done = loaders.modules.envflow.rollback("stage", reason="v2 breaks logins", by="alice")
    assert (done["from"], done["to"], done["rolled_back"]) == (v2, v1, True)
    assert done["deployed"]["new"] == v1 and done["deployed"]["changed"] is True
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v1\n"
    preview = loaders.states.envflow.deployed(name="stage", test=True)
    applied = loaders.states.envflow.deployed(name="stage")
    for ret in (preview, applied):
        assert ret.result is True and ret.changes == {}
        assert ret.comment.startswith(f"stage already serves {v1[:10]} (initial states); envflow: stage is pinned to")
        assert "v2 breaks logins" in ret.comment and "envflow.unpin stage" in ret.comment
    assert served_file(envflow_block, "stage", "web/init.sls") == "# web v1\n"
    assert remote.tip("stage") == v2


def test_a_refused_rollback_changes_nothing(loaders, remote, two_versions):
    _v1, v2 = two_versions
    refs = remote.refs()
    with pytest.raises(CommandExecutionError) as refused:
        loaders.modules.envflow.rollback("stage", by="alice")
    assert (
        str(refused.value)
        == "envflow: rolling back stage needs a reason, which is recorded with it; add reason='<why>'"
    )
    assert remote.refs() == refs and loaders.modules.envflow.deployed("stage")["id"] == v2


def test_a_frozen_environment_fails_the_state_and_its_test_mode_says_why(
    loaders, envflow_block, remote, mirror, two_versions
):
    _v1, v2 = two_versions
    freeze = holds.freeze(parse(envflow_block), mirror, "stage", reason="audit week", by="dave")["freeze"]
    v3 = remote.commit("stage", {"web/init.sls": "# web v3\n"})
    refs = remote.refs()
    expected = (
        f"envflow: stage is frozen by dave since {freeze['at']} until thawed: audit week; "
        "thaw it with salt-run envflow.thaw stage, or deploy with force=True reason='<why>'"
    )
    preview = loaders.states.envflow.deployed(name="stage", test=True)
    assert (preview.result, preview.changes, preview.comment) == (False, {}, expected)
    applied = loaders.states.envflow.deployed(name="stage")
    assert (applied.result, applied.changes, applied.comment) == (False, {}, expected)
    assert remote.refs() == refs and served_file(envflow_block, "stage", "web/init.sls") == "# web v2\n"
    forced = loaders.modules.envflow.deploy("stage", force=True, reason="fix for the auditors", by="erin")
    assert forced["new"]["id"] == v3
    assert "warning" not in forced, forced["warning"]  # the history entry below was written
    mirror.fetch()  # the history as the remote holds it, as every reader of it fetches first
    [entry, *_] = history.entries(mirror, "stage")
    assert (entry["action"], entry["by"], entry["reason"]) == ("deployed", "erin", "fix for the auditors")
    assert entry["bypassed"] == [expected.split("envflow: ", 1)[1].split("; thaw", 1)[0].join(("freeze: ", ""))]
    assert v2 != v3


def test_the_promoted_state_in_test_mode_names_the_freeze(loaders, envflow_block, remote, mirror):
    for env in ("test", "stage"):
        loaders.modules.envflow.deploy(env)
    tested = remote.commit("develop", {"web/init.sls": "# web v2\n"})
    loaders.modules.envflow.deploy("test")
    mirror.fetch()
    freeze = holds.freeze(parse(envflow_block), mirror, "stage", reason="audit week", until="2h", by="dave")["freeze"]
    preview = loaders.states.envflow.promoted(name="stage", test=True)
    assert preview.result is False
    assert preview.comment == (
        f"promoting {tested[:10]} into stage would be blocked by freeze: stage is frozen by dave since "
        f"{freeze['at']} until {freeze['until']}: audit week"
    )
