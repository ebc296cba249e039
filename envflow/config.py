"""The ``envflow`` configuration block: parsing and validation.

Each mistake is reported with the key it concerns, in Salt's colon notation
(``envflow:environments:1:path``), and what to do about it.
"""

import os
import re
from dataclasses import dataclass

import pygit2

from envflow.errors import ConfigError, UnknownEnvironment
from envflow.remote import is_local, redact
from envflow.text import echo

# Saltenv names end up in file names (Salt's caches) and in top files.
_SALTENV = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TOP_KEYS = {"repo", "environments", "master_config"}
_ENV_KEYS = {"name", "branch", "path"}
_OPTIONAL_ENV_KEYS = {"target", "gates"}
_GATE_KEYS = {"verified", "soak", "approvals"}
_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Gates:
    """What a commit must have passed before it is promoted into an environment."""

    verified: bool = False
    soak: int = 0
    approvals: int = 0

    def __bool__(self):
        return bool(self.verified or self.soak or self.approvals)


@dataclass(frozen=True)
class Environment:
    """One stage of the pipeline: a saltenv, the branch it serves and its directory."""

    name: str
    branch: str
    path: str
    target: str = None
    gates: Gates = Gates()


@dataclass(frozen=True)
class Config:
    """A validated ``envflow`` block."""

    repo: str
    environments: tuple
    master_config: str = None

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


def _environment(raw, index):
    key = f"envflow:environments:{index}"
    if not isinstance(raw, dict):
        _fail(key, "must be a mapping with name, branch and path")
    unknown = sorted(set(raw) - _ENV_KEYS - _OPTIONAL_ENV_KEYS, key=str)
    if unknown:
        _fail(
            key,
            f"unknown key {echo(unknown[0])}; an environment has name, branch, path, and optionally target and gates",
        )
    for field in sorted(_ENV_KEYS):
        if field not in raw:
            _fail(key, f"missing {field!r}; an environment has name, branch and path")
    name = _string(raw["name"], f"{key}:name", "stage")
    if not _SALTENV.match(name) or name == "__env__":
        _fail(f"{key}:name", f"{echo(name)} is not a valid saltenv name; use letters, digits, '_', '-' and '.'")
    target = raw.get("target")
    if target is not None:
        target = _string(target, f"{key}:target", "G@env:stage")
    return Environment(
        name=name,
        branch=_branch(raw["branch"], f"{key}:branch"),
        path=_path(raw["path"], f"{key}:path"),
        target=target,
        gates=_gates(raw.get("gates"), f"{key}:gates", first=index == 0, name=name),
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
        _fail(key, "must be a mapping with verified, soak and/or approvals")
    unknown = sorted(set(raw) - _GATE_KEYS, key=str)
    if unknown:
        _fail(key, f"unknown gate {echo(unknown[0])}; gates are verified, soak and approvals")
    verified = raw.get("verified", False)
    if not isinstance(verified, bool):
        _fail(f"{key}:verified", f"{echo(verified)} is not true or false")
    approvals = raw.get("approvals", 0)
    if isinstance(approvals, bool) or not isinstance(approvals, int) or approvals < 0:
        _fail(f"{key}:approvals", f"{echo(approvals)} is not a number of people; give 0 or more, such as 2")
    soak = _duration(raw["soak"], f"{key}:soak") if "soak" in raw else 0
    gates = Gates(verified=verified, soak=soak, approvals=approvals)
    if first and gates:
        _fail(key, f"{name} is the first environment: nothing is promoted into it, so it has no gates")
    return gates


def _inside(path, other):
    return os.path.commonpath([path, other]) == other


def parse(raw):
    """Validate the ``envflow`` configuration block ``raw`` and return a :class:`Config`.

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
    environments = tuple(_environment(item, index) for index, item in enumerate(raw["environments"]))
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
    for index, env in enumerate(environments):
        for other in environments:
            if other is not env and _inside(env.path, other.path):
                _fail(
                    f"envflow:environments:{index}:path",
                    f"{env.path} is inside {other.path}, the directory of environment {other.name!r}; "
                    "give each environment a separate directory",
                )
    master_config = raw.get("master_config")
    if master_config is not None:
        master_config = _path(master_config, "envflow:master_config", "/etc/salt/master")
    return Config(repo=repo, environments=environments, master_config=master_config)
