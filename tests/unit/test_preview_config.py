"""``preview_path``: the directory a promotion is previewed from, served as saltenv ``<env>_preview``."""

import pytest

from envflow.config import parse
from envflow.errors import ConfigError
from tests.unit.test_config import changed


def test_preview_path_is_optional_and_names_the_preview_saltenv():
    config = parse(changed(env2_preview_path="/srv/salt/prod_preview/"))
    prod = config.environment("prod")
    assert prod.preview_path == "/srv/salt/prod_preview"
    assert prod.preview_saltenv == "prod_preview"
    assert config.environment("stage").preview_path is None
    assert config.environment("stage").preview is None


def test_the_preview_is_laid_out_like_the_environment():
    config = parse(changed(states="salt", pillar="pillar", env2_preview_path="/srv/salt/prod_preview"))
    preview = config.environment("prod").preview
    assert (preview.name, preview.path) == ("prod_preview", "/srv/salt/prod_preview")
    assert preview.states_dir == "/srv/salt/prod_preview/salt"
    assert preview.pillar_dir == "/srv/salt/prod_preview/pillar"
    assert not preview.gates and preview.preview is None and preview.sync_minions is False


def test_environments_without_a_preview_parse_as_before():
    config = parse(changed())
    assert all(env.preview_path is None for env in config.environments)


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            changed(env2_preview_path="srv/salt/prod_preview"),
            "envflow:environments:2:preview_path: 'srv/salt/prod_preview' is a relative path; "
            "use an absolute path such as /srv/salt/prod_preview",
        ),
        (
            changed(env2_preview_path="/"),
            "envflow:environments:2:preview_path: '/' cannot be used here; use a path such as /srv/salt/prod_preview",
        ),
        (
            changed(env2_preview_path=""),
            "envflow:environments:2:preview_path: must be a non-empty string, for example /srv/salt/prod_preview",
        ),
        (
            changed(env2_preview_path=["/srv/salt/prod_preview"]),
            "envflow:environments:2:preview_path: must be a non-empty string",
        ),
        (
            changed(env2_preview_path="/srv/salt/stage"),
            "envflow:environments:2:preview_path: /srv/salt/stage is already the directory of environment 'stage'; "
            "give the preview a directory of its own",
        ),
        (
            changed(env2_preview_path="/srv/salt/prod"),
            "envflow:environments:2:preview_path: /srv/salt/prod is already the directory of environment 'prod'",
        ),
        (
            changed(env1_preview_path="/srv/salt/preview", env2_preview_path="/srv/salt/preview"),
            "envflow:environments:1:preview_path: /srv/salt/preview is already the preview directory of "
            "environment 'prod'",
        ),
        (
            # Inside its own environment's directory: the preview would be served in prod's saltenv too.
            changed(env2_preview_path="/srv/salt/prod/preview"),
            "envflow:environments:2:preview_path: /srv/salt/prod/preview is inside /srv/salt/prod, the directory "
            "of environment 'prod'; give each environment a separate directory",
        ),
        (
            changed(env2_preview_path="/srv/salt/stage/preview"),
            "envflow:environments:2:preview_path: /srv/salt/stage/preview is inside /srv/salt/stage, the directory "
            "of environment 'stage'",
        ),
        (
            changed(env1_preview_path="/srv/preview", env2_preview_path="/srv/preview/prod"),
            "envflow:environments:2:preview_path: /srv/preview/prod is inside /srv/preview, the preview directory "
            "of environment 'stage'",
        ),
        (
            # An environment's directory inside a preview directory is refused under the environment's key.
            changed(env2_preview_path="/srv"),
            "envflow:environments:0:path: /srv/salt/test is inside /srv, the preview directory of environment 'prod'",
        ),
        (
            changed(env2_preview_path="/srv/salt/.prod.envflow/preview"),
            "envflow:environments:2:preview_path: /srv/salt/.prod.envflow/preview is inside "
            "/srv/salt/.prod.envflow, envflow's own directory beside /srv/salt/prod; use a directory outside it",
        ),
        (
            changed(env1_preview_path="/srv/salt/stage_preview", env2_name="stage_preview"),
            "envflow:environments:1:preview_path: the preview of stage is served as saltenv stage_preview, which is "
            "the name of environment 2; rename that environment",
        ),
        (changed(env2_preview="/srv/salt/prod_preview"), "envflow:environments:2: unknown key 'preview'"),
    ],
)
def test_each_preview_path_mistake_names_its_key_in_one_line(raw, message):
    with pytest.raises(ConfigError) as error:
        parse(raw)
    text = str(error.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_an_environment_directory_inside_envflows_own_directory_is_refused_too():
    with pytest.raises(ConfigError) as error:
        parse(changed(env0_path="/srv/salt/.prod.envflow/test"))
    assert str(error.value) == (
        "envflow:environments:0:path: /srv/salt/.prod.envflow/test is inside /srv/salt/.prod.envflow, "
        "envflow's own directory beside /srv/salt/prod; use a directory outside it"
    )
