import pathlib
import tempfile

import pytest
from hypothesis import Phase, settings

from tests.gitrepo import Remote

# The deploy engine's model (tests/unit/test_engine_model.py) runs engine-ci unless
# --hypothesis-profile=engine-long is given; registered here, before pytest reads that option.
# engine-ci does not shrink a failure: on these steps shrinking takes minutes, and the
# unshrunk steps are printed whole; engine-long shrinks.
settings.register_profile(
    "engine-ci",
    max_examples=30,
    stateful_step_count=15,
    derandomize=True,
    database=None,
    deadline=None,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.generate],
)
settings.register_profile(
    "engine-long", max_examples=300, stateful_step_count=40, database=None, deadline=None, print_blob=True
)


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
