"""envflow.hooks on requests signed as GitHub, Gitea, Forgejo, GitLab and envflow's post-receive hook sign them.

Each request is checked as the git server sends it (bytes, its own header
case) and as salt-api hands it to the reactor: the body decoded to text and
the header names title-cased by CherryPy (``X-Github-Event``), with
``Remote-Addr``.
"""

import hashlib
import hmac
import json
import logging
import urllib.parse

import pytest

from envflow import access, hooks
from envflow.config import parse
from envflow.errors import ConfigError
from envflow.hooks import Push, Refused, Update
from tests import hooksign
from tests.gitrepo import config

SECRET = "hook-s3cret-7Fq2"
OTHER = "not-the-hook-secret"
AFTER = "3f2c9a1e" * 5
BEFORE = "9b1d0c44" * 5
ZERO = hooksign.ZERO
ADDRESS = "192.0.2.10"
# In every body the tests build, so that a message echoing the body shows.
MARKER = "body-marker-5d1e"

NO_SECRET = (
    "no secret is configured, so no push can be verified; set envflow:webhook:secret (a string or an sdb:// URI) "
    "and give the git server's webhook the same secret"
)
UNSIGNED = "the request from {} carries no {}; set the webhook's secret on the git server to envflow:webhook:secret"
UNKNOWN = (
    "unknown sender: the request has none of the headers GitHub, GitLab, Gitea, Forgejo or envflow's post-receive "
    "hook send; point only those at /hook/envflow"
)
WRONG = (
    "wrong {}: the request was not signed with envflow:webhook:secret; give the git server's webhook the same secret"
)
TOO_LARGE = (
    "the body is {} bytes, over envflow:webhook:max_body ({}); raise max_body if the git server's pushes are that large"
)
NOT_JSON = "the body is not JSON; send the git server's push payload as application/json"
NOT_OBJECT = "the body is not a JSON object; send the git server's push payload"
NO_REF = "the body names no ref; send the git server's push payload, which names the pushed ref"
NO_REFS = 'the body names no ref; send {"refs": [{"ref": ..., "after": ...}]}'


def block(**webhook):
    """The ``envflow`` block of three environments (develop, stage, master), with ``webhook`` if given."""
    raw = config("/srv/git/automation.git", "/srv/salt")
    if webhook:
        raw["webhook"] = webhook
    return raw


def hook(resolve=None, **webhook):
    """The parsed ``envflow:webhook`` of ``webhook``'s keys."""
    return parse(block(**webhook), resolve=resolve).webhook


def _hex(secret, body, digest=hashlib.sha256):
    return hmac.new(secret.encode("utf-8"), body, digest).hexdigest()


# How each signature header is computed, by its lower-case name.
_SIGNING = {
    "x-hub-signature-256": lambda secret, body: "sha256=" + _hex(secret, body),
    "x-hub-signature": lambda secret, body: "sha1=" + _hex(secret, body, hashlib.sha1),
    "x-gitea-signature": _hex,
    "x-forgejo-signature": _hex,
    "x-gogs-signature": _hex,
    "x-envflow-signature": lambda secret, body: "sha256=" + _hex(secret, body),
}


def resigned(headers, body, secret=SECRET):
    """``headers`` with each signature header present computed again for ``body``, as the sender would."""
    return {
        name: _SIGNING[name.lower()](secret, body) if name.lower() in _SIGNING else value
        for name, value in headers.items()
    }


def unsigned(headers):
    """``headers`` without any signature or token."""
    return {
        name: value
        for name, value in headers.items()
        if "signature" not in name.lower() and name.lower() != "x-gitlab-token"
    }


def as_sent(headers, body):
    return headers, body


def as_salt_api(headers, body):
    """What salt-api's ``/hook`` puts in the event: CherryPy's title-cased header names and the body as text."""
    return {**{name.title(): value for name, value in headers.items()}, "Remote-Addr": ADDRESS}, body.decode("utf-8")


FORMS = pytest.mark.parametrize("form", [as_sent, as_salt_api], ids=["as-sent", "as-salt-api"])


def request(sender, ref="refs/heads/develop", after=AFTER, secret=SECRET):
    """A push of ``ref`` to ``after`` as ``sender`` signs it: ``(headers, body)``."""
    if sender == "github":
        return hooksign.github(secret, ref, after, before=BEFORE)
    if sender in ("gitea", "forgejo"):
        return hooksign.gitea(secret, ref, after, before=BEFORE, forgejo=sender == "forgejo")
    if sender == "gitlab":
        return hooksign.gitlab(secret, ref, after, before=BEFORE)
    return hooksign.plain(secret, [(ref, BEFORE, after)])


SENDERS = ("github", "gitea", "forgejo", "gitlab", "envflow")
# Who each sender's builder says pushed, and the header holding its delivery id (envflow's hook sends none).
PUSHER = {"github": "octocat", "gitea": "gitea_admin", "forgejo": "gitea_admin", "gitlab": "root", "envflow": "git"}
DELIVERY = {
    "github": "X-GitHub-Delivery",
    "gitea": "X-Gitea-Delivery",
    "forgejo": "X-Forgejo-Delivery",
    "gitlab": "X-Gitlab-Event-UUID",
    "envflow": None,
}


@FORMS
@pytest.mark.parametrize("sender", SENDERS)
def test_a_genuine_push_from_each_sender(sender, form):
    headers, body = request(sender)
    push = hooks.verify(hook(secret=SECRET), *form(headers, body))
    delivery = headers[DELIVERY[sender]] if DELIVERY[sender] else None
    assert push == Push(sender, "push", (Update("refs/heads/develop", AFTER, False),), PUSHER[sender], delivery)
    assert push.branches == ["develop"]


@FORMS
def test_the_post_receive_hook_reports_every_ref_of_a_push(form):
    headers, body = hooksign.plain(
        SECRET,
        [
            ("refs/heads/develop", BEFORE, AFTER),
            ("refs/tags/v1.0", ZERO, AFTER),
            ("refs/heads/old-feature", BEFORE, ZERO),
            ("refs/heads/stage", ZERO, BEFORE),
            ("refs/heads/develop", BEFORE, AFTER),
        ],
        pusher="alice",
    )
    push = hooks.verify(hook(secret=SECRET), *form(headers, body))
    assert push.updates == (
        Update("refs/heads/develop", AFTER, False),
        Update("refs/tags/v1.0", AFTER, False),
        Update("refs/heads/old-feature", ZERO, True),
        Update("refs/heads/stage", BEFORE, False),
        Update("refs/heads/develop", AFTER, False),
    )
    assert (push.source, push.event, push.pusher, push.delivery) == ("envflow", "push", "alice", None)
    assert push.branches == ["develop", "stage"]
    headers["X-Envflow-Delivery"] = "push-42"
    assert hooks.verify(hook(secret=SECRET), *form(headers, body)).delivery == "push-42"


@FORMS
def test_a_github_ping_is_genuine_and_moves_nothing(form):
    headers, body = hooksign.github(SECRET, "refs/heads/develop", AFTER, event="ping")
    push = hooks.verify(hook(secret=SECRET), *form(headers, body))
    assert push == Push("github", "ping", (), None, headers["X-GitHub-Delivery"])
    assert push.branches == []


@FORMS
def test_a_form_encoded_github_push_is_signed_over_the_form_body(form):
    headers, document = hooksign.github(SECRET, "refs/heads/stage", AFTER)
    body = urllib.parse.urlencode({"payload": document.decode("utf-8")}).encode("ascii")
    headers = resigned({**headers, "Content-Type": "application/x-www-form-urlencoded"}, body)
    push = hooks.verify(hook(secret=SECRET), *form(headers, body))
    assert (push.source, push.branches, push.pusher) == ("github", ["stage"], "octocat")
    # A signature of the JSON document inside the form is not GitHub's: the raw body is what is signed.
    headers = resigned(headers, document)
    with pytest.raises(Refused) as refused:
        hooks.verify(hook(secret=SECRET), *form(headers, body))
    assert refused.value.reason == WRONG.format("X-Hub-Signature-256")


@FORMS
def test_a_body_that_is_not_ascii_is_verified_over_its_utf8_bytes(form):
    headers, document = hooksign.github(SECRET, "refs/heads/develop", AFTER, pusher="zoë")
    body = json.dumps(json.loads(document), ensure_ascii=False).replace("change", "änderung ✓").encode("utf-8")
    push = hooks.verify(hook(secret=SECRET), *form(resigned(headers, body), body))
    assert (push.branches, push.pusher) == (["develop"], "zoë")


@FORMS
@pytest.mark.parametrize(
    "headers_body, updates",
    [
        (
            hooksign.github(SECRET, "refs/tags/v1.0", AFTER),
            (Update("refs/tags/v1.0", AFTER, False),),
        ),
        (
            hooksign.github(SECRET, "refs/heads/develop", ZERO, before=BEFORE, deleted=True),
            (Update("refs/heads/develop", ZERO, True),),
        ),
        (
            hooksign.gitea(SECRET, "refs/tags/v1.0", AFTER),
            (Update("refs/tags/v1.0", AFTER, False),),
        ),
        (
            hooksign.gitea(SECRET, "refs/heads/develop", ZERO, before=BEFORE, forgejo=True),
            (Update("refs/heads/develop", ZERO, True),),
        ),
        (
            hooksign.gitlab(SECRET, "refs/heads/develop", ZERO, before=BEFORE),
            (Update("refs/heads/develop", ZERO, True),),
        ),
        (
            hooksign.plain(SECRET, [("refs/tags/v1.0", ZERO, AFTER), ("refs/heads/stage", BEFORE, ZERO)]),
            (Update("refs/tags/v1.0", AFTER, False), Update("refs/heads/stage", ZERO, True)),
        ),
    ],
    ids=[
        "github-tag",
        "github-deleted",
        "gitea-tag",
        "forgejo-all-zero-after",
        "gitlab-deleted",
        "envflow-tag-and-deleted",
    ],
)
def test_tags_and_deleted_branches_give_no_branch(headers_body, updates, form):
    push = hooks.verify(hook(secret=SECRET), *form(*headers_body))
    assert (push.event, push.updates, push.branches) == ("push", updates, [])


@FORMS
def test_deleted_true_is_a_deletion_whatever_after_says(form):
    headers, document = hooksign.github(SECRET, "refs/heads/develop", AFTER)
    body = json.dumps({**json.loads(document), "deleted": True}).encode("utf-8")
    push = hooks.verify(hook(secret=SECRET), *form(resigned(headers, body), body))
    assert (push.updates, push.branches) == ((Update("refs/heads/develop", AFTER, True),), [])


@FORMS
def test_a_gitlab_tag_push_moves_nothing(form):
    headers, body = hooksign.gitlab(SECRET, "refs/tags/v1.0", AFTER, event="Tag Push Hook")
    push = hooks.verify(hook(secret=SECRET), *form(headers, body))
    assert (push.source, push.event, push.updates, push.branches) == ("gitlab", "tag push hook", (), [])


def test_an_sdb_secret_is_read_when_a_request_arrives_and_held_for_scrubbing():
    asked = []

    def resolve(uri, key):
        asked.append((uri, key))
        return "sdb-hook-s3cret"

    webhook = hook(resolve=resolve, secret="sdb://envflow_secrets/webhook")
    assert asked == []  # parsing reads no secret
    push = hooks.verify(webhook, *request("github", secret="sdb-hook-s3cret"))
    assert push.branches == ["develop"]
    assert asked == [("sdb://envflow_secrets/webhook", "envflow:webhook:secret")]
    assert access.scrub_held("failed: sdb-hook-s3cret was wrong") == "failed: *** was wrong"


def _padded(size):
    """A post-receive request whose body is exactly ``size`` bytes."""
    updates = [("refs/heads/develop", BEFORE, AFTER)]
    base = len(hooksign.plain(SECRET, updates, pusher="")[1])
    return hooksign.plain(SECRET, updates, pusher="p" * (size - base))


@FORMS
def test_a_body_of_max_body_bytes_is_taken(form):
    headers, body = _padded(1024)
    assert len(body) == 1024
    assert hooks.verify(hook(secret=SECRET, max_body="1k"), *form(headers, body)).branches == ["develop"]


def _accented(count):
    """A post-receive request whose pusher is ``count`` two-byte characters, sent as UTF-8."""
    document = {"refs": [{"ref": "refs/heads/develop", "before": BEFORE, "after": AFTER}], "pusher": "é" * count}
    return _signed_body("envflow", json.dumps(document, ensure_ascii=False).encode("utf-8"))


def _signed_body(sender, body):
    """``sender``'s push request, its body replaced by ``body`` (bytes) and signed for it."""
    headers, _ = request(sender)
    return resigned(headers, body), body


def _refusals():
    """``(id, webhook, headers, body, reason, source)`` for each way a request is refused."""
    github = request("github")
    cases = [
        ("no-secret", hook(), *github, NO_SECRET, None),
        ("no-secret-empty-webhook", parse({**block(), "webhook": {}}).webhook, *github, NO_SECRET, None),
        (
            "sdb-gives-none",
            hook(resolve=lambda uri, key: None, secret="sdb://envflow_secrets/webhook"),
            *github,
            "envflow:webhook:secret: sdb://envflow_secrets/webhook gave no text; check the sdb profile and key",
            None,
        ),
        (
            "sdb-gives-empty",
            hook(resolve=lambda uri, key: "", secret="sdb://envflow_secrets/webhook"),
            *github,
            "envflow:webhook:secret: sdb://envflow_secrets/webhook gave no text; check the sdb profile and key",
            None,
        ),
        (
            "sdb-gives-a-number",
            hook(resolve=lambda uri, key: 1234, secret="sdb://envflow_secrets/webhook"),
            *github,
            "envflow:webhook:secret: sdb://envflow_secrets/webhook gave no text; check the sdb profile and key",
            None,
        ),
        (
            "no-sdb",
            hook(secret="sdb://envflow_secrets/webhook"),
            *github,
            "envflow:webhook:secret: sdb://envflow_secrets/webhook cannot be read here: no Salt sdb",
            None,
        ),
        ("over-max-body", hook(secret=SECRET, max_body="1k"), *_padded(1025), TOO_LARGE.format(1025, 1024), None),
        # 1,202 bytes in 682 characters: the limit counts the bytes sent, also when salt-api gives text.
        (
            "over-max-body-in-bytes",
            hook(secret=SECRET, max_body="1k"),
            *_accented(520),
            TOO_LARGE.format(1202, 1024),
            None,
        ),
        # The size is checked first: an unsigned oversized body costs no HMAC.
        (
            "over-max-body-unsigned",
            hook(secret=SECRET, max_body=2000),
            {},
            b"{" + b" " * 4000 + b"}",
            TOO_LARGE.format(4002, 2000),
            None,
        ),
        ("unknown-sender", hook(secret=SECRET), {"Content-Type": "application/json"}, github[1], UNKNOWN, None),
        (
            "envflow-unsigned",
            hook(secret=SECRET),
            unsigned(request("envflow")[0]),
            request("envflow")[1],
            UNKNOWN,
            None,
        ),
        ("no-headers", hook(secret=SECRET), {}, github[1], UNKNOWN, None),
    ]
    for sender, header in (
        ("github", "X-Hub-Signature-256"),
        ("gitea", "X-Gitea-Signature"),
        ("forgejo", "X-Forgejo-Signature"),
        ("gitlab", "X-Gitlab-Token"),
    ):
        headers, body = request(sender)
        cases.append(
            (
                f"{sender}-unsigned",
                hook(secret=SECRET),
                unsigned(headers),
                body,
                UNSIGNED.format(sender, header),
                sender,
            )
        )
    for sender, header in (
        ("github", "X-Hub-Signature-256"),
        ("gitea", "X-Gitea-Signature"),
        ("forgejo", "X-Forgejo-Signature"),
        ("gitlab", "X-Gitlab-Token"),
        ("envflow", "X-Envflow-Signature"),
    ):
        cases.append(
            (
                f"{sender}-wrong-secret",
                hook(secret=SECRET),
                *request(sender, secret=OTHER),
                WRONG.format(header),
                sender,
            )
        )
    # A genuine signature of another body.
    headers, body = request("github")
    tampered = body.replace(b"refs/heads/develop", b"refs/heads/master")
    cases.append(
        ("github-tampered", hook(secret=SECRET), headers, tampered, WRONG.format("X-Hub-Signature-256"), "github")
    )
    headers, body = request("envflow")
    tampered = body.replace(b"refs/heads/develop", b"refs/heads/master")
    cases.append(
        ("envflow-tampered", hook(secret=SECRET), headers, tampered, WRONG.format("X-Envflow-Signature"), "envflow")
    )
    # The secret of another hook that happens to share a prefix is still wrong.
    cases.append(
        (
            "gitlab-prefix-token",
            hook(secret=SECRET),
            *request("gitlab", secret=SECRET[:-1]),
            WRONG.format("X-Gitlab-Token"),
            "gitlab",
        )
    )
    not_json = f"ref=refs/heads/develop&{MARKER}".encode()
    for sender in SENDERS:
        cases.append((f"{sender}-not-json", hook(secret=SECRET), *_signed_body(sender, not_json), NOT_JSON, sender))
        array = json.dumps([{"ref": "refs/heads/develop", "note": MARKER}]).encode()
        cases.append((f"{sender}-not-an-object", hook(secret=SECRET), *_signed_body(sender, array), NOT_OBJECT, sender))
    for sender in ("github", "gitea", "forgejo", "gitlab"):
        for name, document in (
            ("no-ref", {"after": AFTER, "note": MARKER}),
            ("empty-ref", {"ref": "", "after": AFTER, "note": MARKER}),
            ("ref-not-text", {"ref": ["refs/heads/develop"], "note": MARKER}),
        ):
            body = json.dumps(document).encode()
            cases.append((f"{sender}-{name}", hook(secret=SECRET), *_signed_body(sender, body), NO_REF, sender))
    for name, document, reason in (
        ("no-refs", {"pusher": MARKER}, NO_REFS),
        ("empty-refs", {"refs": [], "pusher": MARKER}, NO_REFS),
        ("refs-not-a-list", {"refs": {"ref": "refs/heads/develop"}, "pusher": MARKER}, NO_REFS),
        ("ref-missing", {"refs": [{"ref": "refs/heads/develop"}, {"after": AFTER}], "pusher": MARKER}, NO_REF),
        ("ref-not-an-object", {"refs": ["refs/heads/develop"], "pusher": MARKER}, NO_REF),
    ):
        body = json.dumps(document).encode()
        cases.append((f"envflow-{name}", hook(secret=SECRET), *_signed_body("envflow", body), reason, "envflow"))
    return cases


REFUSALS = _refusals()


@FORMS
@pytest.mark.parametrize(
    "webhook, headers, body, reason, source", [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS]
)
def test_each_refusal_says_why_in_one_line_and_never_shows_a_secret(webhook, headers, body, reason, source, form):
    with pytest.raises(Refused) as refused:
        hooks.verify(webhook, *form(headers, body))
    assert (refused.value.reason, refused.value.source) == (reason, source)
    assert str(refused.value) == reason
    assert "\n" not in reason
    shown = [SECRET, OTHER, MARKER]
    for name, value in headers.items():
        if "signature" in name.lower() or name.lower() == "x-gitlab-token":
            shown.append(value.partition("=")[2] if value.startswith(("sha1=", "sha256=")) else value)
    if body:
        shown.append(body.decode("utf-8"))
    assert not [text for text in shown if text and text in reason]


def test_served_branches_are_those_of_the_configuration_in_push_order():
    configured = parse(block())
    headers, body = hooksign.plain(
        SECRET,
        [
            ("refs/heads/master", BEFORE, AFTER),
            ("refs/heads/feature/x", BEFORE, AFTER),
            ("refs/tags/develop", ZERO, AFTER),
            ("refs/heads/stage", BEFORE, ZERO),
            ("refs/heads/develop", BEFORE, AFTER),
        ],
    )
    push = hooks.verify(hook(secret=SECRET), headers, body)
    assert push.branches == ["master", "feature/x", "develop"]
    assert hooks.served_branches(configured, push) == ["master", "develop"]
    assert hooks.served_branches(configured, Push("github", "ping", ())) == []


class Refusals:
    """A ``refuse(reason, source)`` that records what it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, reason, source):
        self.calls.append((reason, source))


def test_a_genuine_push_of_served_branches_becomes_the_runners_arguments(caplog):
    caplog.set_level(logging.INFO, logger="envflow")
    refuse = Refusals()
    headers, body = hooksign.plain(
        SECRET, [("refs/heads/feature/x", BEFORE, AFTER), ("refs/heads/stage", BEFORE, AFTER)], pusher="alice"
    )
    headers["X-Envflow-Delivery"] = "push-7"
    found = hooks.reaction(lambda: parse(block(secret=SECRET)), *as_salt_api(headers, body), refuse)
    assert found == {
        "branches": ["stage"],
        "source": "envflow",
        "sender": ADDRESS,
        "pusher": "alice",
        "delivery": "push-7",
    }
    assert refuse.calls == []
    assert f"envflow: envflow push from {ADDRESS} to stage" in caplog.messages
    headers, body = request("gitlab", ref="refs/heads/master")
    found = hooks.reaction(lambda: parse(block(secret=SECRET)), headers, body, refuse)
    assert found == {
        "branches": ["master"],
        "source": "gitlab",
        "sender": "an unknown address",
        "pusher": "root",
        "delivery": headers["X-Gitlab-Event-UUID"],
    }
    assert refuse.calls == []


@pytest.mark.parametrize(
    "headers_body, moved",
    [
        (hooksign.github(SECRET, "refs/heads/feature/x", AFTER), "refs/heads/feature/x"),
        (hooksign.github(SECRET, "refs/tags/v1.0", AFTER), "refs/tags/v1.0"),
        (hooksign.github(SECRET, "refs/heads/develop", ZERO, before=BEFORE, deleted=True), "refs/heads/develop"),
        (hooksign.github(SECRET, "refs/heads/develop", AFTER, event="ping"), "no ref"),
    ],
    ids=["other-branch", "tag", "deleted", "ping"],
)
def test_a_genuine_request_that_moves_no_served_branch_is_logged_and_does_nothing(headers_body, moved, caplog):
    caplog.set_level(logging.INFO, logger="envflow")
    refuse = Refusals()
    headers, body = as_salt_api(*headers_body)
    assert hooks.reaction(lambda: parse(block(secret=SECRET)), headers, body, refuse) is None
    assert refuse.calls == []
    event = "ping" if moved == "no ref" else "push"
    [line] = caplog.messages
    assert line.startswith(f"envflow: github {event} from {ADDRESS}") and line.endswith("; nothing deployed")
    assert moved == "no ref" or moved in line
    assert "\n" not in line


def test_a_refused_request_is_reported_once_to_refuse():
    refuse = Refusals()
    headers, body = as_salt_api(*request("github", secret=OTHER))
    assert hooks.reaction(lambda: parse(block(secret=SECRET)), headers, body, refuse) is None
    assert refuse.calls == [(WRONG.format("X-Hub-Signature-256"), "github")]
    refuse = Refusals()
    assert hooks.reaction(lambda: parse(block()), headers, body, refuse) is None
    assert refuse.calls == [(NO_SECRET, None)]


@pytest.mark.parametrize(
    "raw, reason",
    [
        (block(secret=""), "envflow:webhook:secret: must be a non-empty string (quote it in YAML), or an sdb:// URI"),
        (
            {**block(), "webhook": SECRET},
            "envflow:webhook: must be a mapping, such as {secret: sdb://envflow_secrets/webhook}",
        ),
        ({**block(), "environments": []}, "envflow:environments: missing or empty"),
    ],
    ids=["empty-secret", "webhook-not-a-mapping", "no-environments"],
)
def test_a_configuration_error_is_a_refusal_that_names_the_key(raw, reason):
    refuse = Refusals()
    headers, body = as_salt_api(*request("github"))

    def config_of():
        return parse(raw)

    with pytest.raises(ConfigError):
        config_of()
    assert hooks.reaction(config_of, headers, body, refuse) is None
    [(said, source)] = refuse.calls
    assert said.startswith(reason) and "\n" not in said and SECRET not in said
    assert source is None


def test_the_sender_is_the_address_cherrypy_recorded():
    assert hooks.sender({"Remote-Addr": ADDRESS}) == ADDRESS
    assert hooks.sender({"remote-addr": ADDRESS}) == ADDRESS
    assert hooks.sender({}) == "an unknown address"
    assert hooks.sender(None) == "an unknown address"


def test_a_push_of_envflows_history_makes_the_runner_look_at_the_holds_and_a_masters_record_nothing(caplog):
    """A pin or freeze set on another master moves refs/envflow/history: the runner compares the holds."""
    caplog.set_level(logging.INFO, logger="envflow")
    config = parse(block(secret=SECRET))
    history = hooksign.plain(SECRET, [("refs/envflow/history", ZERO, "a" * 40)])
    push = hooks.verify(config.webhook, *history)
    assert hooks.served_branches(config, push) == [] and hooks.moves_history(push)
    found = hooks.reaction(lambda: config, *as_salt_api(*history), Refusals())
    assert (found["branches"], found["history"]) == ([], True)
    assert f"envflow: envflow push from {ADDRESS} to history" in caplog.messages
    both = hooksign.plain(SECRET, [("refs/heads/stage", BEFORE, AFTER), ("refs/envflow/history", ZERO, "a" * 40)])
    found = hooks.reaction(lambda: config, *as_salt_api(*both), Refusals())
    assert (found["branches"], found["history"]) == (["stage"], True)
    record = hooksign.plain(SECRET, [("refs/envflow/served/salt2", ZERO, "b" * 40)])
    assert hooks.served_branches(config, hooks.verify(config.webhook, *record)) == []
    assert not hooks.moves_history(hooks.verify(config.webhook, *record))
    assert hooks.reaction(lambda: config, *as_salt_api(*record), Refusals()) is None
    deleted = hooksign.plain(SECRET, [("refs/envflow/history", "a" * 40, ZERO)])
    assert not hooks.moves_history(hooks.verify(config.webhook, *deleted))
