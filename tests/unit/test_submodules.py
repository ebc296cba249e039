"""What a commit's submodules say, and what envflow refuses to fetch for them (``envflow.submodules``)."""

import subprocess

import pytest

from envflow import submodules
from envflow.submodules import SubmoduleError


def test_gitmodules_is_read_as_git_reads_it():
    text = b"""# vendored formulas
[submodule "nginx"]
\tpath = formulas/nginx-formula
\turl = https://github.com/saltstack-formulas/nginx-formula
[submodule "users"]
    path = "formulas/users formula"   ; quoted, with a space
    url = ../users-formula.git
[submodule "no-path"]
    url = https://example.com/lost.git
"""
    assert submodules.parse_gitmodules(text) == {
        "formulas/nginx-formula": "https://github.com/saltstack-formulas/nginx-formula",
        "formulas/users formula": "../users-formula.git",
    }
    assert submodules.parse_gitmodules(b"") == {}


def test_a_gitmodules_that_does_not_parse_is_refused_in_one_line():
    with pytest.raises(SubmoduleError) as refused:
        submodules.parse_gitmodules(b'[submodule "nginx"\n\tpath = formulas/nginx\n')
    message = str(refused.value)
    assert message.startswith("envflow: .gitmodules does not parse (")
    assert message.endswith("fix the file in the commit and push it")
    assert "\n" not in message and "/proc/" not in message and "/tmp" not in message


def test_reading_gitmodules_writes_no_file_on_linux(monkeypatch):
    """A deploy killed while it reads .gitmodules leaves nothing behind: on Linux it is read from memory."""
    import tempfile  # pylint: disable=import-outside-toplevel

    def no_files(*args, **kwargs):
        raise AssertionError("a temporary directory was made")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_files)
    assert submodules.parse_gitmodules(b'[submodule "a"]\n\tpath = a\n\turl = ../a.git\n') == {"a": "../a.git"}


@pytest.mark.parametrize(
    ("url", "base", "resolved"),
    [
        (
            "../nginx-formula.git",
            "https://git.example.com/org/salt.git",
            "https://git.example.com/org/nginx-formula.git",
        ),
        (
            "../nginx-formula.git",
            "https://git.example.com/org/salt.git/",
            "https://git.example.com/org/nginx-formula.git",
        ),
        ("./sub", "https://git.example.com/org/salt", "https://git.example.com/org/salt/sub"),
        ("../../other/x.git", "ssh://git@host:2222/org/salt.git", "ssh://git@host:2222/other/x.git"),
        ("../x.git", "git@host:org/salt.git", "git@host:org/x.git"),
        ("../../x.git", "git@host:org/salt.git", "git@host:x.git"),
        ("../x.git", "/srv/git/salt.git", "/srv/git/x.git"),
        ("../x.git", "file:///srv/git/salt.git", "file:///srv/git/x.git"),
        ("https://elsewhere/y.git", "https://git.example.com/org/salt.git", "https://elsewhere/y.git"),
    ],
)
def test_relative_urls_resolve_as_git_resolves_them(url, base, resolved):
    assert submodules.resolve_url(url, base) == resolved


def test_relative_urls_resolve_as_git_itself_resolves_them(tmp_path):
    """git is the reference: ``git submodule init`` records the URL it resolved from the superproject's remote."""
    for base, url in [
        ("https://git.example.com/org/salt.git", "../nginx-formula.git"),
        ("git@host:org/salt.git", "../x.git"),
        ("ssh://git@host:2222/org/salt.git", "../../other/x.git"),
        ("https://git.example.com/org/salt", "./sub"),
    ]:
        work = tmp_path / f"w{abs(hash((base, url)))}"
        git = ["git", "-C", str(work), "-c", "protocol.file.allow=always"]
        subprocess.run(["git", "init", "-q", str(work)], check=True)
        subprocess.run([*git, "remote", "add", "origin", base], check=True)
        (work / ".gitmodules").write_text(f'[submodule "s"]\n\tpath = s\n\turl = {url}\n', encoding="utf-8")
        subprocess.run([*git, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},s"], check=True)
        subprocess.run([*git, "submodule", "init", "-q"], check=True, capture_output=True)
        found = subprocess.run([*git, "config", "submodule.s.url"], capture_output=True, text=True, check=True)
        assert submodules.resolve_url(url, base) == found.stdout.strip(), (base, url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ext::sh -c touch% /tmp/pwned", "uses a transport git runs as a command"),
        ("fd::17", "uses a transport git runs as a command"),
        ("FD::17/foo", "uses a transport git runs as a command"),
        ("myhelper::https://host/x.git", "uses a transport git runs as a command"),
        ("-uupload-pack=touch /tmp/pwned", "starts with '-', which git would read as an option"),
        ("ftp://host/x.git", "uses the scheme 'ftp'; use https, ssh or git"),
        ("/etc/salt/pki/master", "is on this master's disk"),
        ("file:///etc/salt/pki", "is on this master's disk"),
        ("./local-copy", "is on this master's disk"),
    ],
)
def test_urls_envflow_must_not_fetch_are_refused_naming_the_path_and_the_url(url, reason):
    with pytest.raises(SubmoduleError) as refused:
        submodules.check_url("formulas/nginx", url, "https://git.example.com/org/salt.git")
    message = str(refused.value)
    assert message.startswith("envflow: submodule 'formulas/nginx' url ")
    assert reason in message
    assert message.endswith("fix .gitmodules in the commit and push it")


def test_a_url_with_credentials_is_shown_redacted():
    with pytest.raises(SubmoduleError) as refused:
        submodules.check_url("f", "ftp://deploy:s3cret@host/x.git", "https://host/salt.git")
    assert "s3cret" not in str(refused.value) and "deploy" not in str(refused.value)
    assert "***@host" in str(refused.value)


def test_network_urls_are_fetched_and_local_ones_only_for_a_local_main_remote():
    for url in ("https://host/x.git", "http://host/x", "ssh://git@host/x.git", "git@host:x.git", "git://host/x"):
        submodules.check_url("f", url, "https://host/salt.git")
    for url in ("/srv/git/x.git", "file:///srv/git/x.git", "../x.git"):
        submodules.check_url("f", url, "/srv/git/salt.git")
        submodules.check_url("f", url, "file:///srv/git/salt.git")
    with pytest.raises(SubmoduleError, match=r"has no url in \.gitmodules"):
        submodules.check_url("f", None, "https://host/salt.git")


@pytest.mark.parametrize("path", ["../outside", "a/../../b", "/etc", "a/.git", ".GIT/x", "a//b", "a/./b", ""])
def test_paths_that_leave_the_tree_or_name_git_are_refused(path):
    with pytest.raises(SubmoduleError, match=r"leaves the tree or names \.git; move the submodule and push it"):
        submodules.check_path(path)


def test_ordinary_paths_pass():
    for path in ("formulas/nginx-formula", "nginx", "a b/c.d"):
        submodules.check_path(path)


def _block(**extra):
    return {
        "repo": "ssh://git@git.example.com/org/salt.git",
        "environments": [{"name": "test", "branch": "develop", "path": "/srv/salt/test"}],
        **extra,
    }


def test_each_submodule_remote_uses_the_credentials_of_its_longest_configured_prefix(tmp_path):
    from envflow.config import parse  # pylint: disable=import-outside-toplevel
    from envflow.remote import Mirror  # pylint: disable=import-outside-toplevel

    config = parse(
        _block(
            credentials={"ssh_agent": False, "username": "git"},
            submodule_credentials={
                "https://github.com/": {"username": "reader", "password": "general-token"},
                "https://github.com/acme/": {"username": "acme-bot", "password": "acme-token"},
            },
        )
    )
    mirror = Mirror.of(config, str(tmp_path))
    assert mirror.of_submodule("https://github.com/acme/nginx-formula.git").credentials.username == "acme-bot"
    assert mirror.of_submodule("https://github.com/saltstack-formulas/x.git").credentials.username == "reader"
    assert mirror.of_submodule("ssh://git@git.example.com/org/f.git").credentials == config.credentials
    assert "acme-token" not in repr(config) and "general-token" not in repr(config)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://github.com/", "envflow:submodule_credentials: must map URL prefixes to credentials"),
        (
            {"https://github.com/": {"ssh_key": "/etc/salt/key"}},
            "envflow:submodule_credentials:'https://github.com/':ssh_key: is for ssh:// and user@host:path remotes",
        ),
        (
            {"https://github.com/": {"password": "x"}},
            "envflow:submodule_credentials:'https://github.com/':password: needs a username",
        ),
    ],
)
def test_bad_submodule_credentials_are_refused_in_one_line(value, message):
    from envflow.config import parse  # pylint: disable=import-outside-toplevel
    from envflow.errors import ConfigError  # pylint: disable=import-outside-toplevel

    with pytest.raises(ConfigError) as refused:
        parse(_block(submodule_credentials=value))
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_submodules_is_true_or_false():
    from envflow.config import parse  # pylint: disable=import-outside-toplevel
    from envflow.errors import ConfigError  # pylint: disable=import-outside-toplevel

    assert parse(_block()).submodules is True
    assert parse(_block(submodules=False)).submodules is False
    with pytest.raises(ConfigError, match="envflow:submodules: 'no' is not true or false"):
        parse(_block(submodules="no"))


def test_a_path_refusal_names_the_url_redacted():
    with pytest.raises(SubmoduleError) as refused:
        submodules.check_path("../x", "https://bot:t0ken@host/x.git")
    assert "submodule path '../x' (url 'https://***@host/x.git') leaves the tree" in str(refused.value)
    assert "t0ken" not in str(refused.value)
