import os
import shutil

import pytest
from saltfactories.utils.functional import Loaders

from tests.gitrepo import Remote, config


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """Fixed paths for the repository, the environment directories and the cache, reset before each test."""
    return tmp_path_factory.mktemp("envflow-functional")


@pytest.fixture(scope="session")
def minion_base_opts(salt_factories, workspace):
    factory = salt_factories.salt_minion_daemon("envflow-functional", defaults={"file_client": "local"})
    return dict(factory.config.copy(), cachedir=str(workspace / "minion-cache"))


@pytest.fixture(scope="session")
def envflow_block(workspace):
    return config(str(workspace / "remote" / "automation.git"), workspace / "srv")


@pytest.fixture(scope="session")
def session_loaders(minion_base_opts, envflow_block):
    # Loading Salt's loaders costs seconds: load once, and give each test a fresh repository and directories.
    return Loaders(dict(minion_base_opts, envflow=envflow_block))


@pytest.fixture
def remote(workspace, session_loaders):
    for stale in ("remote", "srv", "minion-cache"):
        shutil.rmtree(workspace / stale, ignore_errors=True)
    return Remote(workspace / "remote")


@pytest.fixture
def loaders(session_loaders, remote):
    try:
        yield session_loaders
    finally:
        session_loaders.reset_state()


@pytest.fixture
def envflow(loaders):
    """The envflow execution module, as Salt loads it."""
    return loaders.modules.envflow


def env_path(block, env):
    return next(item["path"] for item in block["environments"] if item["name"] == env)


def served_file(block, env, rel):
    with open(os.path.join(env_path(block, env), rel), encoding="utf-8") as handle:
        return handle.read()


@pytest.fixture(scope="session")
def master_base_opts(salt_factories, workspace, envflow_block):
    factory = salt_factories.salt_master_daemon(
        "envflow-functional-master",
        overrides={
            "envflow": envflow_block,
            "file_roots": {env["name"]: [env["path"]] for env in envflow_block["environments"]},
        },
    )
    return factory.config.copy()


@pytest.fixture
def runners(master_base_opts, remote):
    """The runner modules as the master loads them, with a fresh ``__context__`` per test."""
    import salt.loader  # pylint: disable=import-outside-toplevel

    context = {}
    functions = salt.loader.runner(master_base_opts, utils=salt.loader.utils(master_base_opts), context=context)
    functions.context = context
    return functions
