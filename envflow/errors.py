"""The exceptions envflow raises.

Every exception carries a one-line message meant for the operator: what is
wrong and how to fix it. Loader modules turn them into Salt's own errors.
"""


class EnvflowError(Exception):
    """Base of every error envflow reports to a user."""


class ConfigError(EnvflowError):
    """The ``envflow`` configuration is missing or invalid."""


class UnknownEnvironment(ConfigError):
    """An environment name that the configuration does not define."""


class RevisionError(EnvflowError):
    """A revision that cannot be resolved, or is not allowed where it was asked for."""


class RemoteError(EnvflowError):
    """Fetching from or pushing to the remote repository failed."""


class BranchMoved(RemoteError):
    """The compare-and-swap of a branch lost a race: the branch moved since it was read."""


class Diverged(EnvflowError):
    """A branch holds commits that the commit to promote lacks.

    ``commits`` lists them, newest first, as ``(id, summary)`` pairs.
    """

    def __init__(self, message, commits):
        super().__init__(message)
        self.commits = commits


class Drift(EnvflowError):
    """The served tree was edited by hand; ``changes`` maps each kind to its paths."""

    def __init__(self, message, changes):
        super().__init__(message)
        self.changes = changes


class GateBlocked(EnvflowError):
    """A gate of the target environment is closed; ``gates`` lists why, one line per gate."""

    def __init__(self, message, gates):
        super().__init__(message)
        self.gates = gates


class Busy(EnvflowError):
    """Another envflow process holds the lock of an environment or repository."""


class Held(EnvflowError):
    """An environment's pin or freeze refuses the change asked for; ``hold`` is the pin or freeze."""

    def __init__(self, message, hold):
        super().__init__(message)
        self.hold = hold
