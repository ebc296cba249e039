"""The preview runner's refusals, loaded by Salt's runner loader with master options.

No daemon runs here, so no minion is there to preview on: what a preview
shows on real minions is tested in tests/integration/test_preview.py. Every
refusal is one line with ``retcode: 1``, and nothing changes: the remote's
references, the environments' directories, the preview directory.
"""

import copy
import os

import pytest
import salt.loader

from envflow.served import ServedDir
from tests.gitrepo import tree_files


@pytest.fixture
def preview_runners(master_base_opts, envflow_block, remote):
    """The runners with prod given a preview directory (no target); stage and test have none."""
    block = copy.deepcopy(envflow_block)
    prod = block["environments"][2]
    prod["preview_path"] = prod["path"] + "_preview"
    opts = dict(master_base_opts, envflow=block)
    context = {}
    functions = salt.loader.runner(opts, utils=salt.loader.utils(opts), context=context)
    functions.context = context
    functions.block = block
    functions.opts = opts
    return functions


def everything(block):
    paths = [env["path"] for env in block["environments"]] + [block["environments"][2]["preview_path"]]
    return {path: tree_files(path) if os.path.exists(path) else None for path in paths}


def test_a_preview_that_cannot_run_says_why_in_one_line_and_changes_nothing(preview_runners, remote):
    assert "retcode" not in preview_runners["envflow.refresh"]()
    remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    assert "retcode" not in preview_runners["envflow.refresh"]("test")
    assert "retcode" not in preview_runners["envflow.promote"]("stage")
    stage_preview = os.path.join(os.path.dirname(preview_runners.block["environments"][1]["path"]), "stage_preview")
    cases = [
        (
            ("stage",),
            {},
            f"envflow: stage has no preview directory; add preview_path: {stage_preview} to "
            "envflow:environments:1 and list it in file_roots as the saltenv stage_preview",
        ),
        (("qa",), {}, "envflow: no environment named 'qa'; configured: test, stage, prod"),
        (
            ("prod",),
            {},
            "envflow: prod has no target, so the preview has no minions to run on; give tgt=<compound target> "
            "or set envflow:environments:2:target, such as G@env:prod",
        ),
        (("prod",), {"tgt": "  "}, "envflow: tgt '  ' is not a compound target; give one such as G@role:web"),
        (
            ("prod",),
            {"tgt": "G@role:web"},
            "envflow: tgt 'G@role:web' matches no minion; nothing was previewed",
        ),
        (
            ("prod",),
            {"tgt": "G@role:web", "timeout": "soon"},
            "envflow: timeout 'soon' is not a number of seconds; give one such as 30",
        ),
        (
            ("prod",),
            {"tgt": "G@role:web", "gather_job_timeout": -1},
            "envflow: gather_job_timeout -1 is not a number of seconds; give one such as 30",
        ),
    ]
    before = remote.refs(), everything(preview_runners.block)
    for args, kwargs, error in cases:
        preview_runners.context.clear()
        assert preview_runners["envflow.preview"](*args, **kwargs) == {"retcode": 1, "error": error}, (args, kwargs)
        assert preview_runners.context["retcode"] == 1 and "\n" not in error
        assert (remote.refs(), everything(preview_runners.block)) == before, (args, kwargs)


def test_a_preview_without_a_running_master_fails_in_one_line_and_records_nothing(preview_runners, remote):
    """The runner works without the daemons (salt-run reads the config); the minions' run needs the master."""
    assert "retcode" not in preview_runners["envflow.refresh"]()
    candidate = remote.commit("develop", {"web/init.sls": "# web v2\n"}, message="web v2")
    assert "retcode" not in preview_runners["envflow.refresh"]("test")
    assert "retcode" not in preview_runners["envflow.promote"]("stage")
    # An accepted minion key, so that the target matches: the master itself is not running.
    accepted = os.path.join(preview_runners.opts["pki_dir"], "minions")
    os.makedirs(accepted, exist_ok=True)
    with open(os.path.join(accepted, "web-01"), "w", encoding="utf-8") as handle:
        handle.write("not a real key\n")
    before = remote.refs()
    try:
        found = preview_runners["envflow.preview"]("prod", tgt="web-01")
    finally:
        os.unlink(os.path.join(accepted, "web-01"))
    assert found == {
        "retcode": 1,
        "error": "envflow: the salt-master is not running, so state.apply cannot run on web-01",
    }
    # Nothing recorded, no branch moved; the candidate went only into the preview directory.
    assert remote.refs() == before
    assert ServedDir(preview_runners.block["environments"][2]["preview_path"]).deployed()["id"] == candidate
    assert ServedDir(preview_runners.block["environments"][2]["path"]).deployed()["id"] != candidate
