"""Push hook requests as real git servers send them, for the tests and the benchmark.

Each builder returns ``(headers, body)``: the body is the push payload in the
sender's documented format (fields envflow does not read included, so the
documents look like the real ones), and the headers carry the sender's event,
delivery id and signature exactly as it computes them:

* GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` (and the old SHA-1 one);
* Gitea and Forgejo: ``X-Gitea-Signature`` / ``X-Forgejo-Signature: <hex HMAC-SHA256>``, plus the
  GitHub-compatible headers both also send;
* GitLab: ``X-Gitlab-Token: <the secret>``;
* envflow's post-receive hook: ``X-Envflow-Signature: sha256=<hex HMAC-SHA256>``.
"""

import hashlib
import hmac
import json
import ssl
import urllib.error
import urllib.request
import uuid

ZERO = "0" * 40


def _hmac(secret, body, digest=hashlib.sha256):
    return hmac.new(secret.encode("utf-8"), body, digest).hexdigest()


def _json(document):
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def github(secret, ref, after, before=ZERO, deleted=False, event="push", pusher="octocat"):
    """A GitHub push (or ``ping``) delivery."""
    document = {
        "ref": ref,
        "before": before,
        "after": after,
        "created": before == ZERO,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.example.com/ops/automation/compare/{before[:12]}...{after[:12]}",
        "commits": [] if deleted else [{"id": after, "message": "change", "distinct": True}],
        "head_commit": None if deleted else {"id": after, "message": "change"},
        "repository": {"id": 1, "name": "automation", "full_name": "ops/automation"},
        "pusher": {"name": pusher, "email": f"{pusher}@example.com"},
        "sender": {"login": pusher, "id": 1},
    }
    if event == "ping":
        document = {"zen": "Keep it logically awesome.", "hook_id": 1, "hook": {"type": "Repository"}}
    body = _json(document)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "1",
        "X-Hub-Signature": "sha1=" + _hmac(secret, body, hashlib.sha1),
        "X-Hub-Signature-256": "sha256=" + _hmac(secret, body),
    }
    return headers, body


def gitea(secret, ref, after, before=ZERO, forgejo=False, pusher="gitea_admin"):
    """A Gitea (or Forgejo) push delivery."""
    document = {
        "ref": ref,
        "before": before,
        "after": after,
        "compare_url": "",
        "commits": [{"id": after, "message": "change\n"}],
        "total_commits": 1,
        "head_commit": {"id": after, "message": "change\n"},
        "repository": {"id": 1, "name": "automation", "full_name": "ops/automation"},
        "pusher": {"id": 1, "login": pusher, "username": pusher},
        "sender": {"id": 1, "login": pusher, "username": pusher},
    }
    body = _json(document)
    signature = _hmac(secret, body)
    delivery = str(uuid.uuid4())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Go-http-client/1.1",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Gogs-Event": "push",
        "X-Gogs-Delivery": delivery,
        "X-Gogs-Signature": signature,
        "X-Gitea-Event": "push",
        "X-Gitea-Delivery": delivery,
        "X-Gitea-Signature": signature,
        "X-Hub-Signature": "sha1=" + _hmac(secret, body, hashlib.sha1),
        "X-Hub-Signature-256": "sha256=" + signature,
    }
    if forgejo:
        headers.update({"X-Forgejo-Event": "push", "X-Forgejo-Delivery": delivery, "X-Forgejo-Signature": signature})
    return headers, body


def gitlab(token, ref, after, before=ZERO, event="Push Hook", user="root"):
    """A GitLab push delivery: the token travels as it is."""
    document = {
        "object_kind": "push",
        "event_name": "push",
        "before": before,
        "after": after,
        "ref": ref,
        "ref_protected": True,
        "checkout_sha": None if after == ZERO else after,
        "user_id": 1,
        "user_name": "Administrator",
        "user_username": user,
        "project_id": 1,
        "project": {"id": 1, "name": "automation", "path_with_namespace": "ops/automation"},
        "commits": [] if after == ZERO else [{"id": after, "message": "change\n"}],
        "total_commits_count": 0 if after == ZERO else 1,
        "repository": {"name": "automation"},
    }
    body = _json(document)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.5.0",
        "X-Gitlab-Event": event,
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "X-Gitlab-Instance": "https://gitlab.example.com",
        "X-Gitlab-Token": token,
    }
    return headers, body


def plain(secret, updates, pusher="git"):
    """What envflow's post-receive hook sends: ``updates`` is a list of ``(ref, before, after)``."""
    refs = [{"ref": ref, "before": before, "after": after} for ref, before, after in updates]
    body = _json({"refs": refs, "pusher": pusher})
    return {"Content-Type": "application/json", "X-Envflow-Signature": "sha256=" + _hmac(secret, body)}, body


def post(url, headers, body, cafile=None, timeout=30):
    """POST ``body`` with ``headers`` to ``url``; the HTTP status and the answer's text."""
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
