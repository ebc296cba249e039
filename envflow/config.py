"""The ``envflow`` configuration block: parsing and validation.

Each mistake is reported with the key it concerns, in Salt's colon notation
(``envflow:environments:1:path``), and what to do about it.
"""

import dataclasses
import fnmatch
import os
import posixpath
import re
from dataclasses import dataclass

import pygit2

from envflow.access import DEFAULT_TIMEOUT, Credentials, endpoint, hold
from envflow.errors import ConfigError, UnknownEnvironment
from envflow.layout import Layout
from envflow.remote import is_local, redact
from envflow.text import echo

# Saltenv names end up in file names (Salt's caches) and in top files.
_SALTENV = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Settings given for the whole block that an environment may override.
_SHARED_KEYS = {"states", "pillar", "sync_minions"}
_TOP_KEYS = {
    "repo",
    "environments",
    "master_config",
    "credentials",
    "timeout",
    "webhook",
    "submodules",
    "submodule_credentials",
    "branch_environments",
    *_SHARED_KEYS,
}
_BRANCH_ENV_KEYS = ("branches", "path", "max")
# How many branch environments are served when envflow:branch_environments:max is not set.
DEFAULT_BRANCH_ENVS = 30
_ENV_KEYS = {"name", "branch", "path"}
_OPTIONAL_ENV_KEYS = {"target", "gates", "preview_path", *_SHARED_KEYS}
# The saltenv of an environment's preview directory is its name with this suffix.
PREVIEW_SUFFIX = "_preview"
_GATE_KEYS = {"verified", "soak", "approvals", "previewed"}
_SSH_KEYS = ("ssh_key", "ssh_passphrase", "ssh_agent", "known_hosts", "accept_unknown_host_key")
_HTTP_KEYS = ("password", "ca_bundle", "allow_http")
_CREDENTIAL_KEYS = (*_SSH_KEYS, "username", *_HTTP_KEYS)
_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_WEBHOOK_KEYS = ("secret", "max_body")
_SIZE = re.compile(r"^(\d+)\s*([kKmM]?)i?[bB]?$")
_BYTES = {"": 1, "k": 1024, "m": 1024 * 1024}
# What salt-api's rest_cherrypy accepts by default (its max_request_body_size).
DEFAULT_MAX_BODY = 1024 * 1024
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Gates:
    """What a commit must have passed before it is promoted into an environment."""

    verified: bool = False
    soak: int = 0
    approvals: int = 0
    previewed: bool = False

    def __bool__(self):
        return bool(self.verified or self.soak or self.approvals or self.previewed)


@dataclass(frozen=True)
class Environment:
    """One stage of the pipeline: a saltenv, the branch it serves and its directory."""

    name: str
    branch: str
    path: str
    target: str = None
    gates: Gates = Gates()
    states: str = "."
    pillar: str = None
    sync_minions: bool = False
    preview_path: str = None

    @property
    def preview_saltenv(self):
        """The saltenv of the environment's preview directory: ``<name>_preview``."""
        return f"{self.name}{PREVIEW_SUFFIX}"

    @property
    def preview(self):
        """The preview directory as an environment of its own (saltenv ``<name>_preview``); ``None`` without one.

        It has the same ``states`` and ``pillar`` layout, so ``states_dir`` and
        ``pillar_dir`` name what ``file_roots`` and ``pillar_roots`` list for
        the preview saltenv; it has no branch of its own, target or gates.
        """
        if self.preview_path is None:
            return None
        return dataclasses.replace(
            self,
            name=self.preview_saltenv,
            path=self.preview_path,
            preview_path=None,
            gates=Gates(),
            sync_minions=False,
        )

    @property
    def states_dir(self):
        """The directory ``file_roots`` lists for this saltenv: ``<path>/<states>``, or ``path`` itself."""
        return self.path if self.states == "." else os.path.join(self.path, self.states)

    @property
    def pillar_dir(self):
        """The directory ``pillar_roots`` lists for this pillarenv, ``<path>/<pillar>``; ``None`` without pillar."""
        return os.path.join(self.path, self.pillar) if self.pillar else None


@dataclass(frozen=True)
class Webhook:
    """``envflow:webhook``: the secret git servers sign push hooks with, and the largest body taken.

    ``secret`` is the text, or an ``sdb://`` URI that :meth:`secret_text` reads
    through ``resolve`` when a hook arrives; ``None`` when none is configured.
    """

    secret: str = dataclasses.field(default=None, repr=False)
    max_body: int = DEFAULT_MAX_BODY
    resolve: object = dataclasses.field(default=None, repr=False, compare=False)

    def secret_text(self):
        """The secret itself (read from sdb when it is an ``sdb://`` URI), or ``None``."""
        if self.secret is None or not self.secret.startswith("sdb://"):
            return hold(self.secret)
        if self.resolve is None:
            raise ConfigError(f"envflow:webhook:secret: {self.secret} cannot be read here: no Salt sdb")
        value = self.resolve(self.secret, "envflow:webhook:secret")
        if not isinstance(value, str) or value == "":
            raise ConfigError(f"envflow:webhook:secret: {self.secret} gave no text; check the sdb profile and key")
        return hold(value)


@dataclass(frozen=True)
class BranchEnvironments:
    """``envflow:branch_environments``: the branches served as saltenvs of their own, where, and how many at most.

    ``branches`` are fnmatch patterns of branch names (``*`` matches ``/`` too);
    each matching branch is served at ``<path>/<saltenv>`` (see
    :func:`envflow.branchenvs.saltenv_of`), with the block's ``states`` and
    ``pillar`` layout; envflow's bookkeeping for them lives beside ``path``,
    in :attr:`home`, out of every saltenv's reach.
    """

    branches: tuple
    path: str
    max: int = DEFAULT_BRANCH_ENVS
    states: str = "."
    pillar: str = None

    def matches(self, branch):
        """Whether ``branch`` matches a pattern of ``branches`` (fnmatch: ``*`` matches ``/`` too; case counts)."""
        return any(fnmatch.fnmatchcase(branch, pattern) for pattern in self.branches)

    @property
    def home(self):
        """envflow's directory for the branch environments: ``.<name>.envflow`` beside ``path``."""
        return Layout(self.path).home

    @property
    def states_root(self):
        """What ``file_roots: {__env__: [...]}`` lists: ``<path>/__env__`` (and the states directory below)."""
        root = os.path.join(self.path, "__env__")
        return root if self.states == "." else os.path.join(root, self.states)

    @property
    def pillar_root(self):
        """What ``pillar_roots: {__env__: [...]}`` lists, or ``None`` without pillar."""
        return os.path.join(self.path, "__env__", self.pillar) if self.pillar else None


@dataclass(frozen=True)
class Config:
    """A validated ``envflow`` block."""

    repo: str
    environments: tuple
    master_config: str = None
    credentials: Credentials = dataclasses.field(default_factory=Credentials)
    timeout: int = DEFAULT_TIMEOUT
    webhook: Webhook = dataclasses.field(default_factory=Webhook)
    submodules: bool = True
    # ``(url prefix, Credentials)``, longest prefix first: a submodule remote under one uses those credentials.
    submodule_credentials: tuple = ()
    branch_environments: BranchEnvironments = None

    @property
    def names(self):
        """The names of the pipeline's environments, in order."""
        return tuple(env.name for env in self.environments)

    def environment(self, name):
        """Return the environment called ``name``, or raise :class:`UnknownEnvironment`."""
        for env in self.environments:
            if env.name == name:
                return env
        known = ", ".join(env.name for env in self.environments)
        raise UnknownEnvironment(f"envflow: no environment named {echo(name)}; configured: {known}")

    def upstream(self, name):
        """Return the environment that ``name`` is promoted from, or ``None`` for the first."""
        env = self.environment(name)
        index = self.environments.index(env)
        return self.environments[index - 1] if index else None

    def select(self, name=None):
        """Return all environments, or the one called ``name``, as a tuple."""
        return self.environments if name is None else (self.environment(name),)


def _fail(key, problem):
    raise ConfigError(f"{key}: {problem}")


def _string(value, key, example):
    if not isinstance(value, str) or not value.strip():
        _fail(key, f"must be a non-empty string, for example {example}")
    return value.strip()


def _path(value, key, example="/srv/salt/stage"):
    path = _string(value, key, example)
    if not os.path.isabs(path):
        _fail(key, f"{echo(path)} is a relative path; use an absolute path such as {example}")
    path = os.path.normpath(path)
    if path == os.sep:
        _fail(key, f"'/' cannot be used here; use a path such as {example}")
    return path


def _branch(value, key):
    branch = _string(value, key, "develop")
    if branch.startswith("refs/"):
        _fail(key, f"{echo(branch)} is a reference; give the branch name alone, such as {echo(branch.split('/')[-1])}")
    if not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
        _fail(key, f"{echo(branch)} is not a branch name git accepts (see git check-ref-format)")
    return branch


def _subdir(value, key, example, root_ok):
    """A directory of the repository, such as ``salt``: relative, inside it, in git's ``/`` notation."""
    text = _string(value, key, example)
    path = posixpath.normpath(text.replace(os.sep, "/"))
    if path.startswith("/"):
        _fail(key, f"{echo(text)} is an absolute path; give a directory of the repository, such as {example}")
    if path == ".." or path.startswith("../"):
        _fail(key, f"{echo(text)} leads out of the repository; give a directory inside it, such as {example}")
    if path == "." and not root_ok:
        _fail(key, f"the repository root cannot be the pillar directory; give a directory such as {example}")
    return path


def _inside_dir(path, other):
    """Whether repository directory ``path`` is ``other`` or inside it (``.`` is the root)."""
    return other in (".", path) or path.startswith(f"{other}/")


def _layout(raw, shared, key):
    """The environment's ``states``, ``pillar`` and ``sync_minions``, its own or the block's (``shared``)."""

    def setting(name):
        return (raw[name], f"{key}:{name}") if raw.get(name) is not None else shared[name]

    states, states_key = setting("states")
    pillar, pillar_key = setting("pillar")
    sync, sync_key = setting("sync_minions")
    states = _subdir(states, states_key, "salt", root_ok=True) if states is not None else "."
    pillar = _subdir(pillar, pillar_key, "pillar", root_ok=False) if pillar is not None else None
    if pillar is not None and _inside_dir(pillar, states):
        if states == ".":
            where = "the repository root, where the states are"
            fix = "set states to a directory beside it, such as salt"
        else:
            where, fix = f"the states directory {echo(states)}", f"move the pillar out of {echo(states)}"
        _fail(
            pillar_key,
            f"{echo(pillar)} is inside {where}, so every minion could read the pillar through salt://; {fix}",
        )
    if pillar is not None and _inside_dir(states, pillar):
        _fail(
            states_key, f"{echo(states)} is inside the pillar directory {echo(pillar)}; give them separate directories"
        )
    if sync is not None and not isinstance(sync, bool):
        _fail(sync_key, f"{echo(sync)} is not true or false")
    if sync and not raw.get("target") and sync_key.startswith(f"{key}:"):
        _fail(sync_key, f"needs the environment's minions: add target, a compound target such as G@env:{raw['name']}")
    return {"states": states, "pillar": pillar, "sync_minions": bool(sync and raw.get("target"))}


def _environment(raw, index, shared):
    key = f"envflow:environments:{index}"
    if not isinstance(raw, dict):
        _fail(key, "must be a mapping with name, branch and path")
    unknown = sorted(set(raw) - _ENV_KEYS - _OPTIONAL_ENV_KEYS, key=str)
    if unknown:
        _fail(
            key,
            f"unknown key {echo(unknown[0])}; an environment has name, branch, path, and optionally "
            "target, gates, states, pillar, sync_minions and preview_path",
        )
    for field in sorted(_ENV_KEYS):
        if field not in raw:
            _fail(key, f"missing {field!r}; an environment has name, branch and path")
    name = _string(raw["name"], f"{key}:name", "stage")
    if not _SALTENV.fullmatch(name) or name == "__env__":
        _fail(f"{key}:name", f"{echo(name)} is not a valid saltenv name; use letters, digits, '_', '-' and '.'")
    target = raw.get("target")
    if target is not None:
        target = _string(target, f"{key}:target", "G@env:stage")
    path = _path(raw["path"], f"{key}:path")
    preview_path = raw.get("preview_path")
    if preview_path is not None:
        example = os.path.join(os.path.dirname(path), f"{name}{PREVIEW_SUFFIX}")
        preview_path = _path(preview_path, f"{key}:preview_path", example)
    gates = _gates(raw.get("gates"), f"{key}:gates", first=index == 0, name=name)
    if gates.previewed and preview_path is None:
        example = os.path.join(os.path.dirname(path), f"{name}{PREVIEW_SUFFIX}")
        _fail(
            f"{key}:gates:previewed",
            f"{name} has no preview directory to preview in; add preview_path: {example} to {key}",
        )
    if gates.previewed and target is None:
        _fail(
            f"{key}:gates:previewed",
            f"{name} has no target, the minions its previews must run on; add target: G@env:{name} to {key}",
        )
    return Environment(
        name=name,
        branch=_branch(raw["branch"], f"{key}:branch"),
        path=path,
        preview_path=preview_path,
        target=target,
        gates=gates,
        **_layout({**raw, "name": name, "target": target}, shared, key),
    )


def _duration(value, key):
    """Seconds from ``3600``, ``"90s"``, ``"30m"``, ``"2h"`` or ``"1d"``."""
    match = _DURATION.match(str(value).strip()) if not isinstance(value, bool) else None
    if not match:
        _fail(key, f"{echo(value)} is not a duration; give seconds or a number with s, m, h or d, such as 2h")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _gates(raw, key, first, name):
    if raw is None:
        return Gates()
    if not isinstance(raw, dict):
        _fail(key, "must be a mapping with verified, soak, approvals and/or previewed")
    unknown = sorted(set(raw) - _GATE_KEYS, key=str)
    if unknown:
        _fail(key, f"unknown gate {echo(unknown[0])}; gates are verified, soak, approvals and previewed")
    verified, previewed = raw.get("verified", False), raw.get("previewed", False)
    for gate, value in (("verified", verified), ("previewed", previewed)):
        if not isinstance(value, bool):
            _fail(f"{key}:{gate}", f"{echo(value)} is not true or false")
    approvals = raw.get("approvals", 0)
    if isinstance(approvals, bool) or not isinstance(approvals, int) or approvals < 0:
        _fail(f"{key}:approvals", f"{echo(approvals)} is not a number of people; give 0 or more, such as 2")
    soak = _duration(raw["soak"], f"{key}:soak") if "soak" in raw else 0
    gates = Gates(verified=verified, soak=soak, approvals=approvals, previewed=previewed)
    if first and gates:
        _fail(key, f"{name} is the first environment: nothing is promoted into it, so it has no gates")
    return gates


def _flag(raw, name, key):
    value = raw.get(name, False)
    if not isinstance(value, bool):
        _fail(f"{key}:{name}", f"{echo(value)} is not true or false")
    return value


def _secret(raw, name, key):
    """A passphrase, password or token: text, or an ``sdb://`` URI; never echoed in a message."""
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value == "":
        _fail(
            f"{key}:{name}",
            f"must be a non-empty string (quote it in YAML), or an sdb:// URI such as sdb://envflow_secrets/{name}",
        )
    return value


def _credentials(raw, repo, resolve, key="envflow:credentials", repo_key="envflow:repo"):
    """Validate ``envflow:credentials`` (or the block at ``key``) for the remote ``repo`` (set at ``repo_key``)."""
    where = endpoint(repo)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        _fail(key, "must be a mapping, such as {ssh_key: /etc/salt/envflow/id_ed25519}")
    unknown = sorted(set(raw) - set(_CREDENTIAL_KEYS), key=str)
    if unknown:
        _fail(key, f"unknown key {echo(unknown[0])}; known keys: {', '.join(_CREDENTIAL_KEYS)}")
    given = [name for name in _CREDENTIAL_KEYS if raw.get(name) not in (None, False)]
    if given and where.scheme == "local":
        _fail(f"{key}:{given[0]}", f"{repo_key} is a repository on this machine, which needs no credentials")
    for names, scheme in ((_SSH_KEYS, "ssh"), (_HTTP_KEYS, "http")):
        wrong = [name for name in given if name in names and not where.scheme.startswith(scheme)]
        if wrong and where.scheme != "local":
            kind = "ssh:// and user@host:path" if scheme == "ssh" else "https:// and http://"
            _fail(f"{key}:{wrong[0]}", f"is for {kind} remotes, and {repo_key} is {where.scheme}")
    ssh_key = _path(raw["ssh_key"], f"{key}:ssh_key", "/etc/salt/envflow/id_ed25519") if raw.get("ssh_key") else None
    ssh_agent = _flag(raw, "ssh_agent", key)
    if ssh_key and ssh_agent:
        _fail(f"{key}:ssh_agent", "give either ssh_key or ssh_agent: true, not both")
    passphrase = _secret(raw, "ssh_passphrase", key)
    if passphrase is not None and not ssh_key:
        _fail(f"{key}:ssh_passphrase", "is the passphrase of ssh_key, which is not set")
    known_hosts = raw.get("known_hosts")
    if known_hosts is not None:
        known_hosts = _path(known_hosts, f"{key}:known_hosts", "/etc/salt/envflow/known_hosts")
    username = raw.get("username")
    if username is not None:
        username = _string(username, f"{key}:username", "envflow")
    password = _secret(raw, "password", key)
    if password is not None and username is None and where.user is None:
        _fail(f"{key}:password", f"needs a username: set {key}:username")
    if where.scheme == "ssh" and where.user is None and username is None:
        _fail(
            repo_key,
            f"{echo(redact(repo))} names no ssh user; write it as ssh://git@host/path, or set {key}:username",
        )
    ca_bundle = raw.get("ca_bundle")
    if ca_bundle is not None:
        ca_bundle = _path(ca_bundle, f"{key}:ca_bundle", "/etc/ssl/certs/internal-ca.pem")
    allow_http = _flag(raw, "allow_http", key)
    if where.scheme == "http" and (password is not None or where.password is not None) and not allow_http:
        _fail(repo_key, f"http:// would send the password unencrypted; use https://, or set {key}:allow_http: true")
    return Credentials(
        ssh_key=ssh_key,
        ssh_passphrase=passphrase,
        ssh_agent=ssh_agent,
        known_hosts=known_hosts,
        accept_unknown_host_key=_flag(raw, "accept_unknown_host_key", key),
        username=username,
        password=password,
        ca_bundle=ca_bundle,
        allow_http=allow_http,
        resolve=resolve,
    )


def _timeout(value):
    if value is None:
        return DEFAULT_TIMEOUT
    match = _DURATION.match(str(value).strip()) if not isinstance(value, bool) else None
    if not match or int(match.group(1)) == 0:
        _fail("envflow:timeout", f"{echo(value)} is not a number of seconds; give 1 or more, such as 30 (or 2m)")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _webhook(raw, resolve):
    """Validate ``envflow:webhook``."""
    key = "envflow:webhook"
    if raw is None:
        return Webhook(resolve=resolve)
    if not isinstance(raw, dict):
        _fail(key, "must be a mapping, such as {secret: sdb://envflow_secrets/webhook}")
    unknown = sorted(set(raw) - set(_WEBHOOK_KEYS), key=str)
    if unknown:
        _fail(key, f"unknown key {echo(unknown[0])}; known keys: {', '.join(_WEBHOOK_KEYS)}")
    max_body = raw.get("max_body", DEFAULT_MAX_BODY)
    match = _SIZE.match(str(max_body).strip()) if not isinstance(max_body, bool) else None
    if not match or int(match.group(1)) == 0:
        _fail(f"{key}:max_body", f"{echo(max_body)} is not a size; give bytes, or a number with k or m, such as 1m")
    return Webhook(
        secret=_secret(raw, "secret", key),
        max_body=int(match.group(1)) * _BYTES[match.group(2).lower()],
        resolve=resolve,
    )


def _inside(path, other):
    return os.path.commonpath([path, other]) == other


def _directories(environments):
    """Every directory envflow deploys: ``(key, path, what it is)`` for each path and preview path."""
    for index, env in enumerate(environments):
        key = f"envflow:environments:{index}"
        yield f"{key}:path", env.path, f"the directory of environment {env.name!r}"
        if env.preview_path is not None:
            yield f"{key}:preview_path", env.preview_path, f"the preview directory of environment {env.name!r}"


def _check_directories(environments):
    """No directory envflow deploys may be another, lie inside another, or inside another's own bookkeeping."""
    directories = list(_directories(environments))
    for key, path, _what in directories:
        for other_key, other, what in directories:
            if other_key == key:
                continue
            if path == other and key.endswith(":preview_path"):
                _fail(key, f"{path} is already {what}; give the preview a directory of its own")
            if path != other and _inside(path, other):
                _fail(key, f"{path} is inside {other}, {what}; give each environment a separate directory")
            home = Layout(other).home
            if _inside(path, home):
                _fail(
                    key, f"{path} is inside {home}, envflow's own directory beside {other}; use a directory outside it"
                )


def _check_preview_saltenvs(environments):
    """A preview's saltenv (``<name>_preview``) must not be the name of an environment."""
    names = {env.name: index for index, env in enumerate(environments)}
    for index, env in enumerate(environments):
        if env.preview_path is not None and env.preview_saltenv in names:
            _fail(
                f"envflow:environments:{index}:preview_path",
                f"the preview of {env.name} is served as saltenv {env.preview_saltenv}, which is the name of "
                f"environment {names[env.preview_saltenv]}; rename that environment",
            )


def _submodule_credentials(raw, resolve):
    """Validate ``envflow:submodule_credentials``: ``{url prefix: credentials block}``, longest prefix first."""
    key = "envflow:submodule_credentials"
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not all(isinstance(prefix, str) and prefix for prefix in raw):
        _fail(key, "must map URL prefixes to credentials, such as {'https://github.com/acme/': {username: ...}}")
    found = []
    for prefix, block in raw.items():
        shown = echo(redact(prefix))
        found.append((prefix, _credentials(block, prefix, resolve, key=f"{key}:{shown}", repo_key=f"{key}:{shown}")))
    return tuple(sorted(found, key=lambda pair: -len(pair[0])))


def _submodules(value):
    if not isinstance(value, bool):
        _fail("envflow:submodules", f"{echo(value)} is not true or false; submodules are served unless set to false")
    return value


def _branch_environments(raw, shared, environments):
    """Validate ``envflow:branch_environments`` (``None`` when not set: no branch is served as its own saltenv)."""
    key = "envflow:branch_environments"
    if raw is None:
        return None
    example = "{branches: ['feature/*'], path: /srv/salt/branches, max: 30}"
    if not isinstance(raw, dict):
        _fail(key, f"must be a mapping, such as {example}")
    unknown = sorted(set(raw) - set(_BRANCH_ENV_KEYS), key=str)
    if unknown:
        _fail(key, f"unknown key {echo(unknown[0])}; known keys: {', '.join(_BRANCH_ENV_KEYS)}")
    for needed in ("branches", "path"):
        if needed not in raw:
            _fail(key, f"missing {needed!r}; give branches and path, such as {example}")
    branches = raw["branches"]
    if isinstance(branches, str):
        branches = [branches]
    if not isinstance(branches, list) or not branches:
        _fail(f"{key}:branches", "must be a list of branch name patterns, such as ['feature/*']")
    patterns = tuple(_string(pattern, f"{key}:branches", "'feature/*'") for pattern in branches)
    path = _path(raw["path"], f"{key}:path", "/srv/salt/branches")
    limit = raw.get("max", DEFAULT_BRANCH_ENVS)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        _fail(f"{key}:max", f"{echo(limit)} is not a number of environments; give 1 or more, such as 30")
    for _key, other, what in _directories(environments):
        home = Layout(other).home
        if path == other or _inside(path, other) or _inside(other, path):
            _fail(
                f"{key}:path",
                f"{path} and {other}, {what}, overlap; give branch environments a directory of "
                "their own, such as /srv/salt/branches",
            )
        if _inside(path, home):
            _fail(
                f"{key}:path",
                f"{path} is inside {home}, envflow's own directory beside {other}; use a directory outside it",
            )
    home = Layout(path).home
    for _key, other, what in _directories(environments):
        if other == home or _inside(other, home):
            _fail(
                f"{key}:path",
                f"{other}, {what}, is inside {home}, envflow's own directory for the branch "
                "environments; give branch environments another path",
            )
    layout = _layout({"name": "branch_environments"}, shared, key)
    return BranchEnvironments(branches=patterns, path=path, max=limit, states=layout["states"], pillar=layout["pillar"])


def parse(raw, resolve=None):
    """Validate the ``envflow`` configuration block ``raw`` and return a :class:`Config`.

    ``resolve(uri, key)`` reads an ``sdb://`` value of the credentials when a
    network operation needs it (the loader modules pass Salt's sdb).
    Raises :class:`~envflow.errors.ConfigError` naming the first key that is wrong.
    """
    if raw is None or raw in ({}, ""):
        raise ConfigError(
            "envflow: no configuration found; add an 'envflow' block with 'repo' and "
            "'environments' to the master config (or the minion config or pillar)"
        )
    if not isinstance(raw, dict):
        _fail("envflow", "must be a mapping with 'repo' and 'environments'")
    unknown = sorted(set(raw) - _TOP_KEYS, key=str)
    if unknown:
        _fail("envflow", f"unknown key {echo(unknown[0])}; known keys: {', '.join(sorted(_TOP_KEYS))}")
    if "repo" not in raw or raw["repo"] in (None, ""):
        _fail("envflow:repo", "missing; set it to the path or URL of the automation repository")
    repo = _string(raw["repo"], "envflow:repo", "/srv/git/automation.git")
    if is_local(repo) and not repo.startswith("file://") and not os.path.isabs(repo):
        _fail("envflow:repo", f"{echo(redact(repo))} is a relative path; use an absolute path or a URL")
    if "environments" not in raw or not raw["environments"]:
        _fail("envflow:environments", "missing or empty; list the environments in pipeline order")
    if not isinstance(raw["environments"], list):
        _fail("envflow:environments", "must be a list of environments in pipeline order")
    shared = {name: (raw.get(name), f"envflow:{name}") for name in _SHARED_KEYS}
    environments = tuple(_environment(item, index, shared) for index, item in enumerate(raw["environments"]))
    for field in ("name", "branch", "path"):
        seen = {}
        for index, env in enumerate(environments):
            value = getattr(env, field)
            if value in seen:
                _fail(
                    f"envflow:environments:{index}:{field}",
                    f"{echo(value)} is already used by environment {seen[value]}; "
                    f"each environment needs its own {field}",
                )
            seen[value] = index
    _check_directories(environments)
    _check_preview_saltenvs(environments)
    master_config = raw.get("master_config")
    if master_config is not None:
        master_config = _path(master_config, "envflow:master_config", "/etc/salt/master")
    return Config(
        repo=repo,
        environments=environments,
        master_config=master_config,
        credentials=_credentials(raw.get("credentials"), repo, resolve),
        timeout=_timeout(raw.get("timeout")),
        webhook=_webhook(raw.get("webhook"), resolve),
        submodules=_submodules(raw.get("submodules", True)),
        submodule_credentials=_submodule_credentials(raw.get("submodule_credentials"), resolve),
        branch_environments=_branch_environments(raw.get("branch_environments"), shared, environments),
    )
