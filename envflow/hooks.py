"""Push hooks from git servers: whether a request is genuine, and which branches it says were pushed.

salt-api's ``/hook/envflow`` fires ``salt/netapi/hook/envflow`` with the
request's headers and raw body; the shipped reactor SLS
(``docs/pipelines/reactor/envflow-push.sls``) hands that event's data to
:func:`reaction`. A request is genuine when it carries the signature (or, from
GitLab, the token) of ``envflow:webhook:secret``, compared in constant time:

* GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``;
* Gitea and Forgejo: ``X-Gitea-Signature`` / ``X-Forgejo-Signature: <hex HMAC-SHA256>``;
* GitLab: ``X-Gitlab-Token: <the secret itself>``;
* envflow's ``post-receive`` hook (a plain git server):
  ``X-Envflow-Signature: sha256=<hex HMAC-SHA256>`` over
  ``{"refs": [{"ref": ..., "before": ..., "after": ...}, ...]}``.

The payload's commit ids are only a trigger: what a push deploys is the
branch tip fetched from the remote afterwards (:mod:`envflow.pushes`), so a
replayed or delayed request can never rewind an environment. Nothing of the
secret, the signature or the body leaves this module: a refusal says why, and
where the request came from, in one line.
"""

import hashlib
import hmac
import json
import logging
import urllib.parse
from dataclasses import dataclass

from envflow.errors import ConfigError, EnvflowError
from envflow.remote import HISTORY
from envflow.text import echo

log = logging.getLogger(__name__)

# The event salt-api fires for a POST to /hook/envflow, and the one envflow fires for each refusal.
HOOK_TAG = "salt/netapi/hook/envflow"
REFUSED_TAG = "salt/envflow/hook/refused"
# Each sender's signature header (lower case, as looked up), the sender it names, and how it signs.
_SIGNATURES = (
    ("x-forgejo-signature", "forgejo", "hex"),
    ("x-gitea-signature", "gitea", "hex"),
    ("x-hub-signature-256", "github", "sha256="),
    ("x-envflow-signature", "envflow", "sha256="),
    ("x-gitlab-token", "gitlab", "token"),
)
# Headers that name a sender that signed nothing envflow can check.
_UNSIGNED = (
    ("x-forgejo-event", "forgejo", "X-Forgejo-Signature"),
    ("x-gitea-event", "gitea", "X-Gitea-Signature"),
    ("x-github-event", "github", "X-Hub-Signature-256"),
    ("x-gitlab-event", "gitlab", "X-Gitlab-Token"),
)
# The event header of each sender, and the value it gives a push.
_EVENTS = {
    "github": ("x-github-event", "push"),
    "gitea": ("x-gitea-event", "push"),
    "forgejo": ("x-forgejo-event", "push"),
    "gitlab": ("x-gitlab-event", "push hook"),
}
_DELIVERY = ("x-github-delivery", "x-gitea-delivery", "x-forgejo-delivery", "x-gitlab-event-uuid", "x-envflow-delivery")
_ZERO = frozenset("0")


class Refused(EnvflowError):
    """A hook request envflow does not act on: ``reason`` is one line, ``source`` the sender it claims to be."""

    def __init__(self, reason, source=None):
        super().__init__(reason)
        self.reason = reason
        self.source = source


@dataclass(frozen=True)
class Update:
    """One reference a push moved: its name, the commit it names now, and whether it was deleted."""

    ref: str
    after: str
    deleted: bool

    @property
    def branch(self):
        """The branch name of a ``refs/heads/`` reference that still exists, else ``None``."""
        if self.deleted or not self.ref.startswith("refs/heads/"):
            return None
        return self.ref[len("refs/heads/") :]


@dataclass(frozen=True)
class Push:
    """A verified hook request: who sent it, the event it reports and the references it moved."""

    source: str
    event: str
    updates: tuple
    pusher: str = None
    delivery: str = None

    @property
    def branches(self):
        """The branches the push moved and did not delete, in order, each once."""
        return list(dict.fromkeys(update.branch for update in self.updates if update.branch))

    @property
    def touched(self):
        """The branches the push moved or deleted, in order, each once."""
        names = (update.ref[len("refs/heads/") :] for update in self.updates if update.ref.startswith("refs/heads/"))
        return list(dict.fromkeys(names))


def _lower(headers):
    return {str(name).lower(): value for name, value in (headers or {}).items() if isinstance(value, str)}


def sender(headers):
    """The address the request came from, as salt-api's CherryPy recorded it (``Remote-Addr``)."""
    return _lower(headers).get("remote-addr") or "an unknown address"


def _body_bytes(body):
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    return b""


def _signed(headers):
    """``(source, header, scheme, given)`` for the first signature header present; refuse when there is none."""
    for header, source, scheme in _SIGNATURES:
        if header in headers:
            return source, header, scheme, headers[header]
    for header, source, wanted in _UNSIGNED:
        if header in headers:
            raise Refused(
                f"the request from {source} carries no {wanted}; set the webhook's secret on the git server "
                "to envflow:webhook:secret",
                source,
            )
    raise Refused(
        "unknown sender: the request has none of the headers GitHub, GitLab, Gitea, Forgejo or envflow's "
        "post-receive hook send; point only those at /hook/envflow"
    )


def _header_bytes(value):
    """The bytes a header value was sent as: CherryPy decodes them as ISO-8859-1, so a UTF-8 token comes back whole."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _check_signature(secret, body, source, header, scheme, given):
    """Refuse unless ``given`` is ``secret``'s signature of ``body`` (GitLab: the secret itself), in constant time."""
    name = header.title()
    if scheme == "token":
        genuine = hmac.compare_digest(_header_bytes(given), secret.encode("utf-8"))
    else:
        digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
        expected = f"sha256={digest}" if scheme == "sha256=" else digest
        genuine = hmac.compare_digest(given.strip().lower().encode("ascii", "replace"), expected.encode("ascii"))
    if not genuine:
        raise Refused(
            f"wrong {name}: the request was not signed with envflow:webhook:secret; give the git server's webhook "
            "the same secret",
            source,
        )


def _payload(body, headers, source):
    """The JSON document of a verified body (form-encoded ``payload=`` too, as GitHub may send)."""
    text = body.decode("utf-8", "replace")
    if headers.get("content-type", "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        text = urllib.parse.parse_qs(text).get("payload", [""])[0]
    try:
        document = json.loads(text)
    except ValueError:
        raise Refused("the body is not JSON; send the git server's push payload as application/json", source) from None
    if not isinstance(document, dict):
        raise Refused("the body is not a JSON object; send the git server's push payload", source)
    return document


def _is_zero(commit):
    return isinstance(commit, str) and commit != "" and set(commit) <= _ZERO


def _update(item, source):
    ref = item.get("ref") if isinstance(item, dict) else None
    if not isinstance(ref, str) or not ref:
        raise Refused("the body names no ref; send the git server's push payload, which names the pushed ref", source)
    after = item.get("after")
    return Update(
        ref=ref, after=after if isinstance(after, str) else "", deleted=bool(item.get("deleted")) or _is_zero(after)
    )


def _pusher(document):
    """Who pushed, as the sender names them: GitHub's ``pusher.name``, Gitea's ``pusher.login``, GitLab's
    ``user_username``, the post-receive hook's ``pusher``."""
    pusher = document.get("pusher")
    found = (pusher.get("name") or pusher.get("login")) if isinstance(pusher, dict) else pusher
    found = found or document.get("user_username")
    return echo(found, quoted=False, limit=60) if isinstance(found, str) and found else None


def verify(webhook, headers, body):
    """Check a hook request and return the :class:`Push` it reports; raise :class:`Refused` saying why not.

    ``webhook`` is the configuration's :class:`~envflow.config.Webhook`,
    ``headers`` and ``body`` what salt-api put in the hook event. In order:
    a secret must be configured, the body must fit ``max_body``, a sender
    envflow knows must have signed it with the secret, and only then is the
    body read: JSON naming the ref (GitHub, Gitea, Forgejo, GitLab) or refs
    (envflow's post-receive hook) pushed. Events other than a push (GitHub's
    ``ping``, say) are genuine but move nothing: ``updates`` is empty.
    """
    headers = _lower(headers)
    raw = _body_bytes(body)
    try:
        secret = webhook.secret_text()
    except ConfigError as exc:
        raise Refused(str(exc)) from None
    if not secret:
        raise Refused(
            "no secret is configured, so no push can be verified; set envflow:webhook:secret (a string or an sdb:// "
            "URI) and give the git server's webhook the same secret"
        )
    if len(raw) > webhook.max_body:
        raise Refused(
            f"the body is {len(raw)} bytes, over envflow:webhook:max_body ({webhook.max_body}); raise max_body "
            "if the git server's pushes are that large"
        )
    source, header, scheme, given = _signed(headers)
    _check_signature(secret, raw, source, header, scheme, given)
    document = _payload(raw, headers, source)
    delivery = next((headers[name] for name in _DELIVERY if headers.get(name)), None)
    delivery = echo(delivery, quoted=False, limit=60) if delivery else None
    if source == "envflow":
        refs = document.get("refs")
        if not isinstance(refs, list) or not refs:
            raise Refused('the body names no ref; send {"refs": [{"ref": ..., "after": ...}]}', source)
        updates = tuple(_update(item, source) for item in refs)
        return Push(source, "push", updates, _pusher(document), delivery)
    event_header, push_event = _EVENTS[source]
    event = headers.get(event_header, "").strip().lower()
    if event != push_event:
        return Push(source, event or "unknown", (), _pusher(document), delivery)
    return Push(source, "push", (_update(document, source),), _pusher(document), delivery)


def ignored(config, push):
    """Why a genuine ``push`` deploys nothing, in a few words per reference it names."""
    if push.event != "push":
        return "not a push"
    served = {env.branch for env in config.environments}
    reasons = []
    for update in push.updates:
        ref = echo(update.ref, quoted=False, limit=60)
        if update.deleted:
            reasons.append(f"{ref} deleted, which deletes nothing")
        elif not update.ref.startswith("refs/heads/"):
            reasons.append(f"{ref} is not a branch")
        elif update.branch not in served:
            reasons.append(f"no environment serves {ref}")
    return ", ".join(reasons)


def served_branches(config, push):
    """The branches of ``push`` that environments of ``config`` serve, in the push's order; then those that branch
    environments serve (``envflow:branch_environments:branches``), moved or deleted: a deleted one goes."""
    served = list(dict.fromkeys(env.branch for env in config.environments))
    found = [branch for branch in push.branches if branch in served]
    settings = config.branch_environments
    if settings is not None:
        found.extend(branch for branch in push.touched if settings.matches(branch) and branch not in found)
    return found


def moves_history(push):
    """Whether ``push`` moved envflow's history (``refs/envflow/history``): a pin, unpin, freeze, thaw or
    rollback made on another master, or the record of a deploy there; the runner then looks at the holds."""
    return any(update.ref == HISTORY and not update.deleted for update in push.updates)


def reaction(config_of, headers, body, refuse):
    """What the reactor does with one hook event: the keyword arguments of ``envflow.pushed``, or ``None``.

    ``config_of()`` parses the configuration; ``refuse(reason, source)`` is
    called once for a request that is not acted on (it logs the line and
    fires the refusal event). A genuine request that moves no served branch
    (a tag, a deleted branch, another branch, a ping) returns ``None`` and is
    logged at info level.
    """
    where = sender(headers)
    try:
        config = config_of()
        push = verify(config.webhook, headers, body)
    except Refused as exc:
        refuse(exc.reason, exc.source)
        return None
    except ConfigError as exc:
        refuse(str(exc), None)
        return None
    branches, history = served_branches(config, push), moves_history(push)
    if not branches and not history:
        log.info("envflow: %s %s from %s: %s; nothing deployed", push.source, push.event, where, ignored(config, push))
        return None
    log.info("envflow: %s push from %s to %s", push.source, where, ", ".join(branches + ["history"] * history))
    return {
        "branches": branches,
        **({"history": True} if history else {}),
        "source": push.source,
        "sender": where,
        "pusher": push.pusher,
        "delivery": push.delivery,
    }


def reactor_chunks(opts, data):
    """The reactor's answer to one ``salt/netapi/hook/envflow`` event on the master whose options are ``opts``.

    The shipped reactor SLS (``docs/pipelines/reactor/envflow-push.sls``)
    returns this: a genuine push that moves served branches becomes one
    ``runner.envflow.pushed`` reaction, given the branches and where the push
    came from, never the body, the signature or a token; anything else no
    reaction. A refusal is one warning line in the master's log and the
    event ``salt/envflow/hook/refused`` (``reason``, ``sender``, ``source``).
    """
    from envflow import config as envflow_config  # pylint: disable=import-outside-toplevel
    from envflow import saltbus  # pylint: disable=import-outside-toplevel

    data = data if isinstance(data, dict) else {}
    headers = data.get("headers") if isinstance(data.get("headers"), dict) else {}
    where = sender(headers)

    def refuse(reason, source):
        log.warning("envflow: refused a push hook from %s: %s", where, reason)
        saltbus.fire_kept(opts, REFUSED_TAG, {"reason": reason, "sender": where, "source": source})

    found = reaction(
        lambda: envflow_config.parse(opts.get("envflow"), resolve=saltbus.sdb_reader(opts)),
        headers,
        data.get("body"),
        refuse,
    )
    if found is None:
        return {}
    return {"envflow_pushed": {"runner.envflow.pushed": [{"args": [{key: value} for key, value in found.items()]}]}}
