import pytest

from envflow.config import parse
from envflow.remote import Mirror
from tests.gitrepo import config


@pytest.fixture
def mirror(remote, tmp_path):
    """envflow's mirror of ``remote``, fetched."""
    with Mirror(remote.path, str(tmp_path / "cache")) as mirror:
        mirror.fetch()
        yield mirror


@pytest.fixture
def pipeline_config(remote, tmp_path):
    """A validated configuration: test, stage and prod under tmp_path/srv."""
    return parse(config(remote.path, tmp_path / "srv"))
