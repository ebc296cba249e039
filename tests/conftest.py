import pathlib
import tempfile

import pytest

from tests.gitrepo import Remote


@pytest.fixture
def remote(tmp_path):
    """A bare automation repository with develop, stage and master at one commit."""
    return Remote(tmp_path / "remote")


@pytest.fixture(scope="session")
def salt_factories_config():
    """A root of this run's own for salt-factories.

    salt-factories reuses the CLI wrappers it finds in ``<root_dir>/scripts``,
    each pinned to the virtualenv that wrote it: a shared root would let a
    Salt 3006 run silently use 3008's wrappers. Short, for unix socket paths.
    """
    return {"root_dir": pathlib.Path(tempfile.mkdtemp(prefix="sf-"))}


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
    """Stop Salt's temporary log handler before pytest closes the stream it captured.

    Otherwise Salt flushes into the closed stream at exit and prints a
    "Logging error" traceback per buffered record.
    """
    import salt._logging.impl  # pylint: disable=import-outside-toplevel

    salt._logging.impl.shutdown_temp_handler()  # pylint: disable=protected-access
