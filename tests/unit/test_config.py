import copy
import os
import re

import pytest

from envflow.config import parse
from envflow.errors import ConfigError, UnknownEnvironment

VALID = {
    "repo": "/srv/git/automation.git",
    "environments": [
        {"name": "test", "branch": "develop", "path": "/srv/salt/test"},
        {"name": "stage", "branch": "stage", "path": "/srv/salt/stage"},
        {"name": "prod", "branch": "master", "path": "/srv/salt/prod"},
    ],
}


def changed(**changes):
    """VALID with top-level keys replaced, or ``env<N>_<field>`` set (``None`` deletes)."""
    raw = copy.deepcopy(VALID)
    for key, value in changes.items():
        match = re.match(r"^env(\d)_(\w+)$", key)
        if match:
            target, field = raw["environments"][int(match.group(1))], match.group(2)
        else:
            target, field = raw, key
        if value is None:
            target.pop(field, None)
        else:
            target[field] = value
    return raw


def test_valid_configuration_is_parsed_in_pipeline_order():
    config = parse(VALID)
    assert [env.name for env in config.environments] == ["test", "stage", "prod"]
    assert config.environment("stage").branch == "stage"
    assert config.upstream("stage").name == "test"
    assert config.upstream("test") is None
    assert [env.name for env in config.select()] == ["test", "stage", "prod"]
    assert [env.name for env in config.select("prod")] == ["prod"]


def test_paths_are_normalized():
    config = parse(changed(env0_path="/srv/salt/test/"))
    assert config.environment("test").path == "/srv/salt/test"


@pytest.mark.parametrize(
    "raw, message",
    [
        (None, "envflow: no configuration found; add an 'envflow' block"),
        ({}, "envflow: no configuration found"),
        ("repo", "envflow: must be a mapping with 'repo' and 'environments'"),
        (changed(branches=[]), "envflow: unknown key 'branches'; known keys:"),
        (changed(repo=None), "envflow:repo: missing; set it to the path or URL of the automation repository"),
        (changed(repo=""), "envflow:repo: missing"),
        (changed(repo=["x"]), "envflow:repo: must be a non-empty string"),
        (changed(repo="git/automation.git"), "envflow:repo: 'git/automation.git' is a relative path"),
        (changed(environments=None), "envflow:environments: missing or empty"),
        (changed(environments=[]), "envflow:environments: missing or empty"),
        (changed(environments={"test": {}}), "envflow:environments: must be a list"),
        (changed(environments=["test"]), "envflow:environments:0: must be a mapping with name, branch and path"),
        (changed(env1_paths="/x"), "envflow:environments:1: unknown key 'paths'"),
        (changed(env1_branch=None), "envflow:environments:1: missing 'branch'"),
        (changed(env1_name="stage/1"), "envflow:environments:1:name: 'stage/1' is not a valid saltenv name"),
        (changed(env1_name="__env__"), "envflow:environments:1:name: '__env__' is not a valid saltenv name"),
        (changed(env1_name=""), "envflow:environments:1:name: must be a non-empty string"),
        (
            changed(env1_branch="bad..name"),
            "envflow:environments:1:branch: 'bad..name' is not a branch name git accepts",
        ),
        (changed(env1_branch="with space"), "envflow:environments:1:branch: 'with space' is not a branch name"),
        (changed(env1_branch="refs/heads/stage"), "envflow:environments:1:branch: 'refs/heads/stage' is a reference"),
        (changed(env1_path="srv/salt/stage"), "envflow:environments:1:path: 'srv/salt/stage' is a relative path"),
        (
            changed(env1_path="/"),
            "envflow:environments:1:path: '/' cannot be used here; use a path such as /srv/salt/stage",
        ),
        (
            changed(master_config="/"),
            "envflow:master_config: '/' cannot be used here; use a path such as /etc/salt/master",
        ),
        (changed(env1_name="test"), "envflow:environments:1:name: 'test' is already used by environment 0"),
        (changed(env2_branch="develop"), "envflow:environments:2:branch: 'develop' is already used by environment 0"),
        (changed(env2_path="/srv/salt/stage"), "envflow:environments:2:path: '/srv/salt/stage' is already used"),
        (
            changed(env2_path="/srv/salt/stage/prod"),
            "envflow:environments:2:path: /srv/salt/stage/prod is inside /srv/salt/stage",
        ),
        (changed(master_config="etc/salt/master"), "envflow:master_config: 'etc/salt/master' is a relative path"),
    ],
)
def test_each_mistake_names_its_key_in_one_line(raw, message):
    with pytest.raises(ConfigError) as error:
        parse(raw)
    text = str(error.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_unknown_environment_lists_the_configured_ones():
    with pytest.raises(UnknownEnvironment) as error:
        parse(VALID).environment("stg")
    assert str(error.value) == "envflow: no environment named 'stg'; configured: test, stage, prod"


def test_urls_are_accepted_as_repo():
    for url in ("file:///srv/git/a.git", "https://git.example.com/a.git", "git@git.example.com:ops/a.git"):
        assert parse(changed(repo=url)).repo == url


def test_targets_and_gates():
    raw = copy.deepcopy(VALID)
    raw["environments"][1]["target"] = "G@env:stage"
    raw["environments"][2]["gates"] = {"verified": True, "soak": "2h", "approvals": 2}
    config = parse(raw)
    assert config.environment("stage").target == "G@env:stage"
    assert config.environment("test").target is None
    gates = config.environment("prod").gates
    assert (gates.verified, gates.soak, gates.approvals) == (True, 7200, 2)
    assert not config.environment("stage").gates
    for soak, seconds in ((90, 90), ("90s", 90), ("30m", 1800), ("1d", 86400)):
        raw["environments"][2]["gates"] = {"soak": soak}
        assert parse(raw).environment("prod").gates.soak == seconds


@pytest.mark.parametrize(
    "gates, message",
    [
        (
            {"verify": True},
            "envflow:environments:2:gates: unknown gate 'verify'; gates are verified, soak, approvals and previewed",
        ),
        (
            "verified",
            "envflow:environments:2:gates: must be a mapping with verified, soak, approvals and/or previewed",
        ),
        ({"verified": "yes"}, "envflow:environments:2:gates:verified: 'yes' is not true or false"),
        ({"previewed": 1}, "envflow:environments:2:gates:previewed: 1 is not true or false"),
        (
            {"soak": "2 weeks"},
            "envflow:environments:2:gates:soak: '2 weeks' is not a duration; give seconds or a number",
        ),
        ({"soak": True}, "envflow:environments:2:gates:soak: True is not a duration"),
        ({"approvals": -1}, "envflow:environments:2:gates:approvals: -1 is not a number of people"),
        ({"approvals": "two"}, "envflow:environments:2:gates:approvals: 'two' is not a number of people"),
    ],
)
def test_each_gate_mistake_names_its_key(gates, message):
    with pytest.raises(ConfigError) as error:
        parse(changed(env2_gates=gates))
    assert str(error.value).startswith(message)


def test_the_first_environment_takes_no_gates():
    with pytest.raises(ConfigError) as error:
        parse(changed(env0_gates={"verified": True}))
    assert str(error.value) == (
        "envflow:environments:0:gates: test is the first environment: nothing is promoted into it, so it has no gates"
    )


def test_an_empty_target_is_refused():
    with pytest.raises(ConfigError) as error:
        parse(changed(env1_target=""))
    assert str(error.value).startswith(
        "envflow:environments:1:target: must be a non-empty string, for example G@env:stage"
    )


def test_the_previewed_gate_needs_a_preview_directory_and_a_target():
    with pytest.raises(ConfigError) as error:
        parse(changed(env2_gates={"previewed": True}))
    prod = VALID["environments"][2]["path"]
    assert str(error.value) == (
        "envflow:environments:2:gates:previewed: prod has no preview directory to preview in; add preview_path: "
        f"{os.path.join(os.path.dirname(prod), 'prod_preview')} to envflow:environments:2"
    )
    raw = copy.deepcopy(VALID)
    raw["environments"][2].update(gates={"previewed": True}, preview_path=prod + "_preview")
    with pytest.raises(ConfigError) as error:
        parse(raw)
    assert str(error.value) == (
        "envflow:environments:2:gates:previewed: prod has no target, the minions its previews must run on; add "
        "target: G@env:prod to envflow:environments:2"
    )
    raw["environments"][2]["target"] = "G@env:prod"
    gates = parse(raw).environment("prod").gates
    assert gates.previewed and gates and not gates.verified


def test_the_first_environment_may_spell_out_closed_gates():
    assert not parse(changed(env0_gates={"verified": False, "approvals": 0})).environment("test").gates


def test_a_mistyped_url_with_credentials_is_reported_without_them():
    with pytest.raises(ConfigError) as error:
        parse(changed(repo="https//alice:T0KEN@git.example.com/ops/automation.git"))
    assert str(error.value) == (
        "envflow:repo: 'https//***@git.example.com/ops/automation.git' is a relative path; "
        "use an absolute path or a URL"
    )


SSH = "ssh://git@git.example.org:2222/ops/automation.git"
HTTPS = "https://git.example.org/ops/automation.git"


def test_credentials_and_timeout():
    config = parse(changed(repo=SSH, credentials={"ssh_key": "/etc/salt/envflow/id_ed25519", "ssh_passphrase": "pa55"}))
    assert config.credentials.ssh_key == "/etc/salt/envflow/id_ed25519"
    assert config.timeout == 30
    assert "pa55" not in repr(config)
    config = parse(
        changed(repo="git@git.example.org:ops/automation.git", credentials={"ssh_agent": True}, timeout="2m")
    )
    assert config.credentials.ssh_agent is True
    assert config.timeout == 120
    config = parse(
        changed(repo=HTTPS, credentials={"username": "envflow", "password": "t0ken", "ca_bundle": "/ca.pem"})
    )
    assert (config.credentials.username, config.credentials.password) == ("envflow", "t0ken")
    assert "t0ken" not in repr(config)
    http = parse(changed(repo="http://ci@git.example.org/a.git", credentials={"password": "x", "allow_http": True}))
    assert http.credentials.allow_http is True
    assert parse(changed(repo=SSH, credentials={"username": "deploy"})).credentials.username == "deploy"


@pytest.mark.parametrize(
    "repo, credentials, message",
    [
        (SSH, "id_ed25519", "envflow:credentials: must be a mapping, such as {ssh_key: /etc/salt/envflow/id_ed25519}"),
        (SSH, {"sshkey": "/k"}, "envflow:credentials: unknown key 'sshkey'; known keys: ssh_key, ssh_passphrase,"),
        (SSH, {"ssh_key": "id_ed25519"}, "envflow:credentials:ssh_key: 'id_ed25519' is a relative path"),
        (SSH, {"ssh_key": "/k", "ssh_agent": True}, "envflow:credentials:ssh_agent: give either ssh_key or ssh_agent"),
        (SSH, {"ssh_agent": "yes"}, "envflow:credentials:ssh_agent: 'yes' is not true or false"),
        (
            SSH,
            {"ssh_passphrase": "p"},
            "envflow:credentials:ssh_passphrase: is the passphrase of ssh_key, which is not",
        ),
        (
            SSH,
            {"ssh_key": "/k", "ssh_passphrase": 1234},
            "envflow:credentials:ssh_passphrase: must be a non-empty string (quote it in YAML), or an sdb:// URI",
        ),
        (SSH, {"known_hosts": "known_hosts"}, "envflow:credentials:known_hosts: 'known_hosts' is a relative path"),
        (SSH, {"accept_unknown_host_key": "no"}, "envflow:credentials:accept_unknown_host_key: 'no' is not true or"),
        (
            SSH,
            {"password": "x"},
            "envflow:credentials:password: is for https:// and http:// remotes, and envflow:repo is ssh",
        ),
        (HTTPS, {"ssh_key": "/k"}, "envflow:credentials:ssh_key: is for ssh:// and user@host:path remotes, and"),
        (
            HTTPS,
            {"password": "t0ken"},
            "envflow:credentials:password: needs a username: set envflow:credentials:username",
        ),
        (HTTPS, {"username": ""}, "envflow:credentials:username: must be a non-empty string"),
        (HTTPS, {"ca_bundle": "ca.pem"}, "envflow:credentials:ca_bundle: 'ca.pem' is a relative path"),
        (HTTPS, {"allow_http": 1}, "envflow:credentials:allow_http: 1 is not true or false"),
        (
            "http://git.example.org/a.git",
            {"username": "u", "password": "t0ken"},
            "envflow:repo: http:// would send the password unencrypted; use https://, or set "
            "envflow:credentials:allow_http: true",
        ),
        ("http://u:t0ken@git.example.org/a.git", None, "envflow:repo: http:// would send the password unencrypted"),
        ("/srv/git/a.git", {"ssh_key": "/k"}, "envflow:credentials:ssh_key: envflow:repo is a repository on this"),
        (
            "ssh://git.example.org/a.git",
            None,
            "envflow:repo: 'ssh://git.example.org/a.git' names no ssh user; write it",
        ),
    ],
)
def test_each_credentials_mistake_names_its_key_and_never_a_secret(repo, credentials, message):
    raw = changed(repo=repo)
    if credentials is not None:
        raw["credentials"] = credentials
    with pytest.raises(ConfigError) as error:
        parse(raw)
    text = str(error.value)
    assert text.startswith(message)
    assert "\n" not in text
    assert "t0ken" not in text and "1234" not in text


@pytest.mark.parametrize("timeout", [0, "0s", -5, "soon", True, "30 minutes"])
def test_a_bad_timeout_is_refused(timeout):
    with pytest.raises(ConfigError) as error:
        parse(changed(timeout=timeout))
    assert str(error.value).startswith(f"envflow:timeout: {timeout!r} is not a number of seconds; give 1 or more")


def test_sdb_values_are_read_only_when_needed_and_failures_name_the_key():
    asked = []

    def resolve(uri, key):
        asked.append((uri, key))
        return {"sdb://envflow/token": "t0ken-from-sdb"}.get(uri)

    raw = changed(repo=HTTPS, credentials={"username": "envflow", "password": "sdb://envflow/token"})
    credentials = parse(raw, resolve=resolve).credentials
    assert asked == []  # parsing reads no secret
    assert credentials.resolved().password == "t0ken-from-sdb"
    assert asked == [("sdb://envflow/token", "envflow:credentials:password")]
    raw["credentials"]["password"] = "sdb://envflow/missing"
    with pytest.raises(ConfigError) as error:
        parse(raw, resolve=resolve).credentials.resolved()
    assert str(error.value) == (
        "envflow:credentials:password: sdb://envflow/missing gave no value; check the sdb profile and key it names"
    )
    with pytest.raises(ConfigError) as error:
        parse(raw).credentials.resolved()
    assert str(error.value).startswith("envflow:credentials:password: sdb://envflow/missing cannot be read here")


def test_states_and_pillar_directories_default_to_the_root_and_no_pillar():
    stage = parse(VALID).environment("stage")
    assert (stage.states, stage.pillar, stage.sync_minions) == (".", None, False)
    assert (stage.states_dir, stage.pillar_dir) == ("/srv/salt/stage", None)


def test_states_and_pillar_are_served_under_the_path_that_switches():
    config = parse(changed(states="salt/", pillar="./pillar", env2_states="states", env2_pillar="data/pillar"))
    stage, prod = config.environment("stage"), config.environment("prod")
    assert (stage.states_dir, stage.pillar_dir) == ("/srv/salt/stage/salt", "/srv/salt/stage/pillar")
    assert (prod.states_dir, prod.pillar_dir) == ("/srv/salt/prod/states", "/srv/salt/prod/data/pillar")


def test_sync_minions_applies_to_environments_with_a_target():
    config = parse(changed(sync_minions=True, env1_target="G@env:stage"))
    assert [env.sync_minions for env in config.environments] == [False, True, False]
    config = parse(changed(env2_target="G@env:prod", env2_sync_minions=True))
    assert [env.sync_minions for env in config.environments] == [False, False, True]


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            changed(pillar="pillar"),
            "envflow:pillar: 'pillar' is inside the repository root, where the states are, so every minion "
            "could read the pillar through salt://; set states to a directory beside it, such as salt",
        ),
        (
            changed(states="salt", env1_pillar="salt/pillar"),
            "envflow:environments:1:pillar: 'salt/pillar' is inside the states directory 'salt', so every minion "
            "could read the pillar through salt://; move the pillar out of 'salt'",
        ),
        (
            changed(states="pillar/salt", pillar="pillar"),
            "envflow:states: 'pillar/salt' is inside the pillar directory 'pillar'; give them separate directories",
        ),
        (changed(states="salt", pillar="salt"), "envflow:pillar: 'salt' is inside the states directory 'salt'"),
        (
            changed(states="/srv/salt"),
            "envflow:states: '/srv/salt' is an absolute path; give a directory of the repository, such as salt",
        ),
        (
            changed(states="salt", env0_pillar="../pillar"),
            "envflow:environments:0:pillar: '../pillar' leads out of the repository; give a directory inside it, "
            "such as pillar",
        ),
        (
            changed(states="salt", pillar="."),
            "envflow:pillar: the repository root cannot be the pillar directory; give a directory such as pillar",
        ),
        (changed(states=""), "envflow:states: must be a non-empty string, for example salt"),
        (changed(pillar=["pillar"]), "envflow:pillar: must be a non-empty string, for example pillar"),
        (changed(sync_minions="yes"), "envflow:sync_minions: 'yes' is not true or false"),
        (
            changed(env1_sync_minions=True),
            "envflow:environments:1:sync_minions: needs the environment's minions: add target, "
            "a compound target such as G@env:stage",
        ),
        (changed(env1_pillars="p"), "envflow:environments:1: unknown key 'pillars'"),
    ],
)
def test_each_layout_mistake_names_its_key_in_one_line(raw, message):
    with pytest.raises(ConfigError) as error:
        parse(raw)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_the_webhook_block_is_optional_and_takes_a_secret_or_an_sdb_uri():
    config = parse(VALID)
    assert (config.webhook.secret, config.webhook.max_body) == (None, 1024 * 1024)
    assert config.webhook.secret_text() is None
    assert parse(changed(webhook={})).webhook.secret is None
    config = parse(changed(webhook={"secret": "wh-s3cret"}))
    assert (config.webhook.secret, config.webhook.max_body) == ("wh-s3cret", 1024 * 1024)
    assert config.webhook.secret_text() == "wh-s3cret"
    asked = []

    def resolve(uri, key):
        asked.append((uri, key))
        return "wh-s3cret-from-sdb"

    webhook = parse(
        changed(webhook={"secret": "sdb://envflow_secrets/webhook", "max_body": "64k"}), resolve=resolve
    ).webhook
    assert asked == []  # parsing reads no secret
    assert (webhook.secret, webhook.max_body) == ("sdb://envflow_secrets/webhook", 64 * 1024)
    assert webhook.secret_text() == "wh-s3cret-from-sdb"
    assert asked == [("sdb://envflow_secrets/webhook", "envflow:webhook:secret")]


def test_the_webhook_secret_never_shows_in_the_configurations_repr():
    config = parse(changed(webhook={"secret": "wh-s3cret"}))
    assert "wh-s3cret" not in repr(config)
    assert "wh-s3cret" not in repr(config.webhook)


@pytest.mark.parametrize(
    "max_body, size",
    [
        (1, 1),
        (4096, 4096),
        ("4096", 4096),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("64kb", 64 * 1024),
        ("64KiB", 64 * 1024),
        ("2m", 2 * 1024 * 1024),
        ("2M", 2 * 1024 * 1024),
        ("10MB", 10 * 1024 * 1024),
        (" 1 m ", 1024 * 1024),
    ],
)
def test_max_body_is_bytes_or_a_number_with_k_or_m(max_body, size):
    assert parse(changed(webhook={"secret": "x", "max_body": max_body})).webhook.max_body == size


@pytest.mark.parametrize("max_body", [0, "0", "0k", -1, "-1", "big", True, False, 1.5, "1.5m", "2g", "k", "", []])
def test_a_bad_max_body_is_refused(max_body):
    with pytest.raises(ConfigError) as error:
        parse(changed(webhook={"secret": "x", "max_body": max_body}))
    assert str(error.value) == (
        f"envflow:webhook:max_body: {max_body!r} is not a size; give bytes, or a number with k or m, such as 1m"
    )


@pytest.mark.parametrize(
    "webhook, message",
    [
        ("wh-s3cret", "envflow:webhook: must be a mapping, such as {secret: sdb://envflow_secrets/webhook}"),
        (["wh-s3cret"], "envflow:webhook: must be a mapping, such as {secret: sdb://envflow_secrets/webhook}"),
        (
            {"secret": "wh-s3cret", "max_size": "1m"},
            "envflow:webhook: unknown key 'max_size'; known keys: secret, max_body",
        ),
        ({"token": "wh-s3cret"}, "envflow:webhook: unknown key 'token'; known keys: secret, max_body"),
        (
            {"secret": ""},
            "envflow:webhook:secret: must be a non-empty string (quote it in YAML), or an sdb:// URI such as "
            "sdb://envflow_secrets/secret",
        ),
        (
            {"secret": 1234},
            "envflow:webhook:secret: must be a non-empty string (quote it in YAML), or an sdb:// URI such as "
            "sdb://envflow_secrets/secret",
        ),
        (
            {"secret": ["wh-s3cret"]},
            "envflow:webhook:secret: must be a non-empty string (quote it in YAML), or an sdb:// URI such as "
            "sdb://envflow_secrets/secret",
        ),
        (
            {"secret": True},
            "envflow:webhook:secret: must be a non-empty string (quote it in YAML), or an sdb:// URI such as "
            "sdb://envflow_secrets/secret",
        ),
    ],
)
def test_each_webhook_mistake_names_its_key_and_never_the_secret(webhook, message):
    with pytest.raises(ConfigError) as error:
        parse(changed(webhook=webhook))
    assert str(error.value) == message
    assert "1234" not in str(error.value)
