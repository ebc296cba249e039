"""Deploy on push: the runner ``envflow.pushed`` as the master loads it, and the reactor's answer to a hook event.

No daemon runs. The reactor's answer (:func:`envflow.hooks.reactor_chunks`,
what the shipped ``#!py`` reactor SLS returns) is computed from the
functional master's options and event data shaped as salt-api's ``/hook``
fires it; its reaction is then run through the runner loader with the
arguments Salt's reactor would give it. Events and salt-api itself are
tested in tests/integration.
"""

import json
import logging
import os

import pytest
import salt.utils.data
import salt.utils.user

from envflow import hooks
from tests import hooksign
from tests.functional.conftest import env_path, served_file
from tests.gitrepo import git, tree_files

WEB = "web/init.sls"
SECRET = "functional-hook-s3cret"
ADDRESS = "198.51.100.7"


def everything(block):
    return {env["name"]: tree_files(env["path"]) for env in block["environments"]}


def branches(remote):
    return {ref: commit for ref, commit in remote.refs().items() if ref.startswith("refs/heads/")}


def last_entry(remote):
    """The newest entry of the remote's history, read with plain git."""
    text = git("log", "-1", "--format=%B", "refs/envflow/history", cwd=remote.path)
    return json.loads(text.strip().partition("\n\n")[2])


def deployed(old, new, env):
    """What ``envflow.pushed`` reports for a deploy of ``env`` that changed the tree."""
    return {
        "old": old,
        "new": new,
        "changed": True,
        "moved_aside": None,
        "refused_links": [],
        "refreshed": [env],
        "pillar_refreshed": [],
        "discarded": None,
    }


def test_a_push_of_develop_deploys_test_only(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    v1 = remote.tip("develop")
    v2 = remote.commit("develop", {WEB: "# web v2\n"}, message="web v2")
    remote.commit("stage", {WEB: "# on stage, not pushed\n"})
    others = {name: tree for name, tree in everything(envflow_block).items() if name != "test"}
    refs = branches(remote)
    result = runners["envflow.pushed"](
        ["develop"], source="github", sender="192.0.2.10", pusher="octocat", delivery="72d3162e"
    )
    assert result == {
        "branches": ["develop"],
        "sender": "192.0.2.10",
        "delivery": "72d3162e",
        "environments": {"test": {"deploys": [deployed(v1, v2, "test")], "handed_off": False}},
    }
    assert "retcode" not in runners.context
    assert served_file(envflow_block, "test", WEB) == "# web v2\n"
    assert {name: tree for name, tree in everything(envflow_block).items() if name != "test"} == others
    assert branches(remote) == refs  # a push moves no branch
    entry = last_entry(remote)
    assert {key: entry[key] for key in ("action", "env", "from", "to", "by")} == {
        "action": "deployed",
        "env": "test",
        "from": v1,
        "to": v2,
        "by": "octocat (push from github)",
    }
    # The same push again (a redelivery) finds the tip served: nothing changes. One name is a list of one.
    again = runners["envflow.pushed"]("develop")
    assert again["branches"] == ["develop"] and "retcode" not in again
    [unchanged] = again["environments"]["test"]["deploys"]
    assert (unchanged["old"], unchanged["new"], unchanged["changed"]) == (v2, v2, False)
    assert last_entry(remote) == entry


def test_the_first_push_deploys_an_environment_never_deployed(runners, envflow_block, remote):
    # salt-master creates every file_roots directory when it starts: an empty one is in the way.
    os.makedirs(env_path(envflow_block, "stage"))
    result = runners["envflow.pushed"]("stage")
    [first] = result["environments"]["stage"]["deploys"]
    assert (first["old"], first["new"], first["changed"]) == (None, remote.tip("stage"), True)
    assert "retcode" not in result
    assert served_file(envflow_block, "stage", WEB) == "# web v1\n"
    assert not os.path.exists(env_path(envflow_block, "test"))


def test_a_push_of_several_branches_deploys_each_environment_serving_one(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    old = {branch: remote.tip(branch) for branch in ("develop", "stage", "master")}
    new = {branch: remote.commit(branch, {WEB: f"# web on {branch}\n"}) for branch in ("develop", "master")}
    result = runners["envflow.pushed"](["master", "feature/x", "develop"], source="envflow", sender="192.0.2.10")
    assert result["branches"] == ["master", "feature/x", "develop"]
    assert list(result["environments"]) == ["test", "prod"]  # pipeline order
    assert result["environments"]["test"]["deploys"] == [deployed(old["develop"], new["develop"], "test")]
    assert result["environments"]["prod"]["deploys"] == [deployed(old["master"], new["master"], "prod")]
    assert served_file(envflow_block, "stage", WEB) == "# web v1\n"
    assert "retcode" not in runners.context
    assert last_entry(remote)["by"] == f"{salt.utils.user.get_specific_user()} (push from envflow)"


def test_a_push_of_a_branch_no_environment_serves_deploys_nothing(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    remote.commit("develop", {WEB: "# web v2\n"})
    before = remote.refs(), everything(envflow_block)
    for pushed in ("feature/x", ["feature/x", "refs/heads/develop"], []):
        result = runners["envflow.pushed"](pushed, source="gitlab", sender="192.0.2.10", delivery="d-1")
        names = [pushed] if isinstance(pushed, str) else pushed
        assert result == {"branches": names, "sender": "192.0.2.10", "delivery": "d-1", "environments": {}}
    assert "retcode" not in runners.context
    assert (remote.refs(), everything(envflow_block)) == before


def test_a_frozen_environment_refuses_the_push_and_changes_nothing(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    who = salt.utils.user.get_specific_user()
    freeze = runners["envflow.freeze"]("stage", reason="load test running", until="1h")["freeze"]
    v1 = remote.tip("develop")
    v2 = remote.commit("develop", {WEB: "# web v2\n"})
    remote.commit("stage", {WEB: "# web v2 on stage\n"})
    line = f"envflow: stage is frozen by {who} since {freeze['at']} until {freeze['until']}: load test running"
    refusal = f"{line}; thaw it with salt-run envflow.thaw stage, or deploy with force=True reason='<why>'"
    before = remote.refs(), everything(envflow_block)
    runners.context.clear()
    result = runners["envflow.pushed"]("stage", source="gitea", sender="192.0.2.10", pusher="gitea_admin")
    assert result == {
        "branches": ["stage"],
        "sender": "192.0.2.10",
        "delivery": None,
        "environments": {"stage": {"deploys": [], "handed_off": False, "error": refusal}},
        "retcode": 1,
        "error": f"stage: {refusal}",
    }
    assert "\n" not in result["error"] and "data" not in result and "Error" not in result
    assert runners.context["retcode"] == 1
    assert (remote.refs(), everything(envflow_block)) == before
    # The environments not frozen are served all the same.
    runners.context.clear()
    both = runners["envflow.pushed"](["develop", "stage"])
    assert both["environments"] == {
        "test": {"deploys": [deployed(v1, v2, "test")], "handed_off": False},
        "stage": {"deploys": [], "handed_off": False, "error": refusal},
    }
    assert (both["retcode"], both["error"], runners.context["retcode"]) == (1, f"stage: {refusal}", 1)
    assert everything(envflow_block)["stage"] == before[1]["stage"]
    # Thawed, the next push serves it.
    runners["envflow.thaw"]("stage")
    runners.context.clear()
    served = runners["envflow.pushed"]("stage")
    assert served["environments"]["stage"]["deploys"][0]["changed"] is True and "retcode" not in served
    assert served_file(envflow_block, "stage", WEB) == "# web v2 on stage\n"


def test_a_pinned_environment_keeps_its_pin(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    who = salt.utils.user.get_specific_user()
    v1 = remote.tip("master")
    pin = runners["envflow.pin"]("prod", reason="demo tomorrow")["pin"]
    remote.commit("master", {WEB: "# web v2\n"})
    before = remote.refs(), everything(envflow_block)
    result = runners["envflow.pushed"]("master", source="github", pusher="octocat")
    assert result == {
        "branches": ["master"],
        "sender": None,
        "delivery": None,
        "environments": {
            "prod": {
                "deploys": [
                    {
                        "old": v1,
                        "new": v1,
                        "changed": False,
                        "moved_aside": None,
                        "refused_links": [],
                        "refreshed": [],
                        "pillar_refreshed": [],
                        "discarded": None,
                        "pinned": pin,
                        "comment": f"envflow: prod is pinned to {v1[:10]} by {who} since {pin['at']}: demo tomorrow; "
                        "it serves that commit until salt-run envflow.unpin prod, or a promotion with force=True "
                        "reason='<why>'",
                    }
                ],
                "handed_off": False,
            }
        },
    }
    assert "retcode" not in runners.context
    assert (remote.refs(), everything(envflow_block)) == before
    assert served_file(envflow_block, "prod", WEB) == "# web v1\n"


def test_hand_edits_refuse_the_push_and_are_kept(runners, envflow_block, remote):
    runners["envflow.refresh"]()
    test = env_path(envflow_block, "test")
    with open(f"{test}/top.sls", "a", encoding="utf-8") as handle:
        handle.write("# edited on the master\n")
    remote.commit("develop", {WEB: "# web v2\n"})
    before = remote.refs(), everything(envflow_block)
    runners.context.clear()
    result = runners["envflow.pushed"]("develop", source="github")
    drift = (
        f"envflow: {test} was edited by hand (modified: top.sls); commit those changes to the repository, "
        "or deploy with force=True to discard them"
    )
    assert result == {
        "branches": ["develop"],
        "sender": None,
        "delivery": None,
        "environments": {"test": {"deploys": [], "handed_off": False, "error": drift}},
        "retcode": 1,
        "error": f"test: {drift}",
    }
    assert runners.context["retcode"] == 1
    assert (remote.refs(), everything(envflow_block)) == before
    assert served_file(envflow_block, "test", "top.sls").endswith("# edited on the master\n")


# The reactor's answer to salt/netapi/hook/envflow.


def hook_opts(master_base_opts, envflow_block, webhook=None, **more):
    """The functional master's options with ``envflow:webhook`` (none when ``webhook`` is ``None``)."""
    block = dict(envflow_block, webhook=webhook) if webhook is not None else envflow_block
    return dict(master_base_opts, envflow=block, **more)


def hook_event(headers, body):
    """The data salt-api's ``/hook/envflow`` fires: CherryPy's header names and Remote-Addr, the body as text."""
    return {
        "headers": {
            **{name.title(): value for name, value in headers.items()},
            "Remote-Addr": ADDRESS,
            "Host": "salt.example.org:8000",
            "Content-Length": str(len(body)),
        },
        "body": body.decode("utf-8"),
        "post": json.loads(body),
        "_stamp": "2026-12-06T19:44:57.000000",
    }


def reaction_kwargs(chunks):
    """The keyword arguments Salt's reactor gives the runner of the one ``runner.envflow.pushed`` chunk."""
    [(name, chunk)] = chunks.items()
    assert name == "envflow_pushed"
    [(function, [options])] = chunk.items()
    assert function == "runner.envflow.pushed" and list(options) == ["args"]
    return salt.utils.data.repack_dictlist(options["args"])


def shown(headers, body):
    """What must never reach a reaction, a log or an event: the secret, the signatures, the body."""
    found = [SECRET, body.decode("utf-8")]
    for name, value in headers.items():
        if "signature" in name.lower() or name.lower() == "x-gitlab-token":
            found.append(value.partition("=")[2] if value.startswith(("sha1=", "sha256=")) else value)
    return found


def logged(caplog, level):
    """The lines envflow logged at ``level`` or above."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("envflow") and record.levelno >= level
    ]


@pytest.mark.parametrize("sender", ["github", "gitlab"])
def test_a_genuine_push_becomes_one_runner_reaction_that_deploys(
    runners, master_base_opts, envflow_block, remote, sender, caplog
):
    caplog.set_level(logging.INFO, logger="envflow")
    runners["envflow.refresh"]()
    v1 = remote.tip("develop")
    v2 = remote.commit("develop", {WEB: "# web v2\n"})
    if sender == "github":
        headers, body = hooksign.github(SECRET, "refs/heads/develop", v2, before=v1, pusher="octocat")
        pusher, delivery = "octocat", headers["X-GitHub-Delivery"]
    else:
        headers, body = hooksign.gitlab(SECRET, "refs/heads/develop", v2, before=v1, user="root")
        pusher, delivery = "root", headers["X-Gitlab-Event-UUID"]
    chunks = hooks.reactor_chunks(
        hook_opts(master_base_opts, envflow_block, {"secret": SECRET}), hook_event(headers, body)
    )
    assert chunks == {
        "envflow_pushed": {
            "runner.envflow.pushed": [
                {
                    "args": [
                        {"branches": ["develop"]},
                        {"source": sender},
                        {"sender": ADDRESS},
                        {"pusher": pusher},
                        {"delivery": delivery},
                    ]
                }
            ]
        }
    }
    text = repr(chunks) + caplog.text
    assert not [secret for secret in shown(headers, body) if secret in text]
    assert f"envflow: {sender} push from {ADDRESS} to develop" in caplog.messages
    assert logged(caplog, logging.WARNING) == []
    result = runners["envflow.pushed"](**reaction_kwargs(chunks))
    assert result["environments"] == {"test": {"deploys": [deployed(v1, v2, "test")], "handed_off": False}}
    assert (result["sender"], result["delivery"]) == (ADDRESS, delivery)
    assert last_entry(remote)["by"] == f"{pusher} (push from {sender})"
    assert served_file(envflow_block, "test", WEB) == "# web v2\n"


def test_a_secret_read_through_salts_sdb(master_base_opts, envflow_block, remote, monkeypatch, caplog):
    opts = hook_opts(
        master_base_opts,
        envflow_block,
        {"secret": "sdb://envflow_env/ENVFLOW_FUNCTIONAL_HOOK_SECRET"},
        envflow_env={"driver": "env"},
    )
    headers, body = hooksign.github(SECRET, "refs/heads/stage", remote.tip("stage"))
    monkeypatch.setenv("ENVFLOW_FUNCTIONAL_HOOK_SECRET", SECRET)
    assert reaction_kwargs(hooks.reactor_chunks(opts, hook_event(headers, body)))["branches"] == ["stage"]
    monkeypatch.delenv("ENVFLOW_FUNCTIONAL_HOOK_SECRET")
    caplog.clear()
    assert hooks.reactor_chunks(opts, hook_event(headers, body)) == {}
    assert logged(caplog, logging.WARNING) == [
        f"envflow: refused a push hook from {ADDRESS}: envflow:webhook:secret: "
        "sdb://envflow_env/ENVFLOW_FUNCTIONAL_HOOK_SECRET gave no text; check the sdb profile and key"
    ]


WRONG = (
    "wrong X-Hub-Signature-256: the request was not signed with envflow:webhook:secret; give the git server's "
    "webhook the same secret"
)


@pytest.mark.parametrize(
    "webhook, signed_with, reason",
    [
        ({"secret": SECRET}, "another-secret", WRONG),
        (
            None,
            SECRET,
            "no secret is configured, so no push can be verified; set envflow:webhook:secret (a string or an sdb:// "
            "URI) and give the git server's webhook the same secret",
        ),
        (
            {"secret": ""},
            SECRET,
            "envflow:webhook:secret: must be a non-empty string (quote it in YAML), or an sdb:// URI such as "
            "sdb://envflow_secrets/secret",
        ),
        (
            {"secret": "sdb://nowhere/hook"},
            SECRET,
            "envflow:webhook:secret: sdb://nowhere/hook cannot be read: ",
        ),
    ],
    ids=["wrong-secret", "no-secret", "empty-secret", "unknown-sdb-profile"],
)
def test_a_refused_request_gets_no_reaction_and_one_warning_line(
    runners, master_base_opts, envflow_block, remote, webhook, signed_with, reason, caplog
):
    caplog.set_level(logging.DEBUG, logger="envflow")
    runners["envflow.refresh"]()
    before = remote.refs(), everything(envflow_block)
    headers, body = hooksign.github(signed_with, "refs/heads/develop", remote.tip("develop"))
    assert hooks.reactor_chunks(hook_opts(master_base_opts, envflow_block, webhook), hook_event(headers, body)) == {}
    warnings = logged(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"envflow: refused a push hook from {ADDRESS}: {reason}")
    assert "\n" not in warnings[0]
    assert not [secret for secret in shown(headers, body) if secret in caplog.text]
    # The refusal event is fired on the master's bus; no master runs here, so it says it was not sent.
    assert hooks.REFUSED_TAG in caplog.text
    assert (remote.refs(), everything(envflow_block)) == before


def test_an_event_without_headers_is_refused_as_an_unknown_sender(master_base_opts, envflow_block, caplog):
    caplog.set_level(logging.WARNING, logger="envflow")
    opts = hook_opts(master_base_opts, envflow_block, {"secret": SECRET})
    for data in ({"body": "{}"}, {"headers": "x", "body": None}, None):
        caplog.clear()
        assert hooks.reactor_chunks(opts, data) == {}
        assert logged(caplog, logging.WARNING) == [
            "envflow: refused a push hook from an unknown address: unknown sender: the request has none of the "
            "headers GitHub, GitLab, Gitea, Forgejo or envflow's post-receive hook send; point only those at "
            "/hook/envflow"
        ]


def test_a_genuine_push_no_environment_serves_gets_no_reaction(master_base_opts, envflow_block, remote, caplog):
    caplog.set_level(logging.INFO, logger="envflow")
    opts = hook_opts(master_base_opts, envflow_block, {"secret": SECRET})
    headers, body = hooksign.github(SECRET, "refs/tags/v1.0", remote.tip("master"))
    assert hooks.reactor_chunks(opts, hook_event(headers, body)) == {}
    [line] = logged(caplog, logging.INFO)
    assert line.startswith(f"envflow: github push from {ADDRESS}") and line.endswith("; nothing deployed")
    assert "refs/tags/v1.0" in line and "\n" not in line


def test_a_push_of_the_history_refreshes_every_environment_only_when_the_holds_are_new_here(
    runners, envflow_block, remote
):
    """The records of deploys made on other masters change no hold: one fetch, nothing deployed."""
    runners["envflow.refresh"]()
    first = runners["envflow.pushed"]([], history=True)
    assert first["holds"] == "served" and set(first["environments"]) == {"test", "stage", "prod"}
    assert all(not entry["deploys"][0]["changed"] for entry in first["environments"].values())
    newer = remote.commit("develop", {WEB: "# web v2\n"}, message="web v2")
    before = everything(envflow_block), remote.refs()
    unchanged = runners["envflow.pushed"]([], history=True)
    assert (unchanged["holds"], unchanged["environments"]) == ("unchanged", {})
    assert "retcode" not in unchanged
    assert (everything(envflow_block), remote.refs()) == before
    # A pin made elsewhere changes the holds: every environment is refreshed, so test serves the new tip too.
    assert runners["envflow.pin"]("prod", reason="release tomorrow")["changed"] is True
    served = runners["envflow.pushed"]([], history=True)
    assert served["holds"] == "served" and served["environments"]["test"]["deploys"][0]["new"] == newer
    assert served["environments"]["prod"]["deploys"][0]["pinned"]["reason"] == "release tomorrow"
    assert runners["envflow.pushed"]([], history=True)["environments"] == {}
    # A branch pushed with the history is served whatever the holds.
    newest = remote.commit("develop", {WEB: "# web v3\n"}, message="web v3")
    both = runners["envflow.pushed"](["develop"], history=True)
    assert both["holds"] == "unchanged" and both["environments"]["test"]["deploys"][0]["new"] == newest
