"""How envflow reaches a private remote: credentials, ssh host keys, TLS trust and timeouts.

pygit2 (libgit2 with libssh2) does the transport; this module gives it the
credentials of the ``envflow:credentials`` block through
:class:`Callbacks`, trying each one once, and checks the server's ssh host
key against a known_hosts file itself, so that which file is read, and
what an unknown or changed key says, is envflow's to decide.

No secret (key passphrase, password, token) is ever put into a message:
messages name the configuration key that holds it instead.
"""

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
import re
import stat
import sys
import urllib.parse

import pygit2
from pygit2.enums import CredentialType, Option

from envflow.errors import ConfigError, RemoteError

_SCP_LIKE = re.compile(r"^(?P<user>[^/@:]+)@(?P<host>[^/:]+):(?P<path>.*)$")
_SSH_PORT = 22
DEFAULT_TIMEOUT = 30  # seconds without an answer from the server


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a remote URL leads: ``scheme`` is ``ssh``, ``https``, ``http``, ``git`` or ``local``."""

    scheme: str
    user: str = None
    password: str = dataclasses.field(default=None, repr=False)
    host: str = None
    port: int = None

    @property
    def host_port(self):
        """The host as OpenSSH names it in known_hosts: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port in (None, _SSH_PORT) else f"[{self.host}]:{self.port}"


def endpoint(url):
    """Parse ``url``: an ``ssh://``, ``https://``, ``http://`` or ``git://`` URL, ``user@host:path``, or a path."""
    scp = _SCP_LIKE.match(url)
    if "://" not in url and scp:
        return Endpoint("ssh", user=scp.group("user"), host=scp.group("host"), port=_SSH_PORT)
    if "://" not in url or url.startswith("file://"):
        return Endpoint("local")
    parts = urllib.parse.urlsplit(url)
    scheme = {"ssh+git": "ssh", "git+ssh": "ssh"}.get(parts.scheme.lower(), parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        port = None
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    return Endpoint(scheme, user=user, password=password, host=parts.hostname, port=port)


@dataclasses.dataclass(frozen=True)
class Credentials:
    """The validated ``envflow:credentials`` block (see :func:`envflow.config.parse`).

    ``ssh_passphrase`` and ``password`` may still be ``sdb://`` URIs:
    :meth:`resolved` reads them, once a network operation needs them.
    Their values never show in a ``repr``.
    """

    ssh_key: str = None
    ssh_passphrase: str = dataclasses.field(default=None, repr=False)
    ssh_agent: bool = False
    known_hosts: str = None
    accept_unknown_host_key: bool = False
    username: str = None
    password: str = dataclasses.field(default=None, repr=False)
    ca_bundle: str = None
    allow_http: bool = False
    resolve: object = dataclasses.field(default=None, repr=False, compare=False)

    def secrets(self):
        """The secret values held (resolved ones only), for scrubbing texts that might echo them."""
        return [value for value in (self.ssh_passphrase, self.password) if value and not value.startswith("sdb://")]

    def resolved(self):
        """Return the credentials with their ``sdb://`` values read; raise :class:`ConfigError` naming the key."""
        changes = {}
        for name in ("ssh_passphrase", "password"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value.startswith("sdb://")):
                continue
            key = f"envflow:credentials:{name}"
            if self.resolve is None:
                raise ConfigError(f"{key}: {value} cannot be read here: no Salt sdb; give the value itself")
            found = self.resolve(value, key)
            if found is None or found == value:
                raise ConfigError(f"{key}: {value} gave no value; check the sdb profile and key it names")
            if not isinstance(found, str):
                raise ConfigError(f"{key}: {value} gave {type(found).__name__}, not text")
            changes[name] = found
        resolved = dataclasses.replace(self, **changes) if changes else self
        _HELD.update(resolved.secrets())
        return resolved

    @property
    def known_hosts_file(self):
        """The known_hosts file to check ssh host keys against: configured, or the Salt user's own."""
        return self.known_hosts or os.path.expanduser("~/.ssh/known_hosts")


# Every secret value this process has held: a text about to leave it (a runner's unexpected error) is scrubbed of them.
_HELD = set()


def hold(secret):
    """Remember ``secret`` (a webhook secret, say), so that :func:`scrub_held` hides it; return it."""
    if secret:
        _HELD.add(secret)
    return secret


def scrub_held(text):
    """``text`` with every passphrase and password this process has read replaced by ``***``."""
    for secret in sorted(_HELD, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def check_key_file(path):
    """Refuse a private key file that is missing, unreadable, or readable by its group or others."""
    key = "envflow:credentials:ssh_key"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist; give the path of the private key file") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{key}: {path} is not a file; give the path of the private key file")
    if mode & 0o077:
        raise ConfigError(
            f"{key}: {path} can be read by users other than its owner (mode {stat.S_IMODE(mode):04o}); "
            f"make it private: chmod 600 {path}"
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key}: {path} is not readable by the user running Salt; chown it to that user")


def key_is_encrypted(path):
    """Whether the private key file at ``path`` is protected by a passphrase (``None``: cannot tell)."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read(64 * 1024)
    except OSError:
        return None
    if "BEGIN ENCRYPTED PRIVATE KEY" in text or "Proc-Type: 4,ENCRYPTED" in text:
        return True
    match = re.search(r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END", text, re.S)
    if not match:
        return False if "PRIVATE KEY-----" in text else None
    try:
        blob = base64.b64decode("".join(match.group(1).split()))
    except (binascii.Error, ValueError):
        return None
    magic = b"openssh-key-v1\0"
    if not blob.startswith(magic) or len(blob) < len(magic) + 4:
        return None
    size = int.from_bytes(blob[len(magic) : len(magic) + 4], "big")
    return blob[len(magic) + 4 : len(magic) + 4 + size] != b"none"


def fingerprint(digest):
    """OpenSSH's form of a SHA-256 key fingerprint: ``SHA256:`` and unpadded base64."""
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _key_type(blob):
    """The algorithm name an ssh public key blob starts with, such as ``ssh-ed25519``."""
    size = int.from_bytes(blob[:4], "big")
    name = blob[4 : 4 + size]
    return name.decode("ascii", "replace") if 0 < size < 64 and len(name) == size else "ssh"


def _wildcard(pattern, name):
    """OpenSSH's host pattern match: ``*`` and ``?`` are wildcards, everything else (``[``, ``]`` too) is literal."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.fullmatch(regex, name.lower()) is not None


def _host_matches(patterns, name):
    """Whether known_hosts ``patterns`` (one line's first field) name host ``name`` (``host`` or ``[host]:port``)."""
    if patterns.startswith("|1|"):
        try:
            _, _, salt, hashed = patterns.split("|", 3)
            digest = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(digest, base64.b64decode(hashed))
        except (ValueError, binascii.Error):
            return False
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _wildcard(pattern.lstrip("!"), name):
            if negated:
                return False
            matched = True
    return matched


def known_keys(path, name):
    """The SHA-256 digests of the keys ``path`` lists for host ``name``, as ``(usable, revoked)`` sets.

    A missing file lists none. Certificate authorities (``@cert-authority``)
    are skipped: envflow checks plain host keys only.
    """
    usable, revoked = set(), set()
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return usable, revoked
    except OSError as exc:
        raise ConfigError(f"envflow:credentials:known_hosts: cannot read {path}: {exc.strerror}") from None
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else None
        if len(fields) < 3 or marker == "@cert-authority" or not _host_matches(fields[0], name):
            continue
        try:
            digest = hashlib.sha256(base64.b64decode(fields[2], validate=True)).digest()
        except (binascii.Error, ValueError):
            continue
        (revoked if marker == "@revoked" else usable).add(digest)
    return usable, revoked


def check_host_key(credentials, where, digest, key_type):
    """Refuse the ssh host key of ``where`` (an :class:`Endpoint`) unless the known_hosts file lists it.

    ``digest`` is the key's SHA-256 digest. An unknown key is let through
    only with ``accept_unknown_host_key``; a changed or revoked key never is.
    Returns a warning (a line) when an unknown key was let through.
    """
    path = credentials.known_hosts_file
    name = where.host_port
    usable, revoked = known_keys(path, name)
    shown = f"{key_type} {fingerprint(digest)}"
    if digest in revoked:
        raise RemoteError(f"envflow: the ssh host key of {name} ({shown}) is marked revoked in {path}; refusing it")
    if digest in usable:
        return None
    if usable:
        raise RemoteError(
            f"envflow: the ssh host key of {name} has changed: it is now {shown}, which {path} does not list "
            "for it; someone may be intercepting the connection; if the server's key was replaced, "
            f"check the new fingerprint with its administrator and update {path} (ssh-keygen -R '{name}' -f {path})"
        )
    if credentials.accept_unknown_host_key:
        return f"envflow: accepted the unknown ssh host key of {name} ({shown}): accept_unknown_host_key is true"
    scan = f"ssh-keyscan{'' if where.port in (None, _SSH_PORT) else f' -p {where.port}'} {where.host} >> {path}"
    missing = "" if os.path.exists(path) else " (the file does not exist)"
    raise RemoteError(
        f"envflow: the ssh host key of {name} ({shown}) is not in {path}{missing}; "
        f"check the fingerprint with the server's administrator and add the key ({scan}), "
        "or set envflow:credentials:known_hosts, or accept_unknown_host_key: true to skip the check"
    )


# libgit2's git_cert_hostkey (libgit2 >= 1.2), which pygit2 declares only in part and passes
# on as ``None``; read through a declaration of its own (cffi is a dependency of pygit2).
_CERT_HOSTKEY = """
typedef struct { int cert_type; } envflow_git_cert;
typedef struct {
    envflow_git_cert parent;
    int type;
    unsigned char hash_md5[16];
    unsigned char hash_sha1[20];
    unsigned char hash_sha256[32];
    int raw_type;
    const char *hostkey;
    size_t hostkey_len;
} envflow_git_cert_hostkey;
"""
_CERT_HOSTKEY_LIBSSH2 = 2  # git_cert_t
_SSH_SHA256 = 1 << 2  # git_cert_ssh_t
_SSH_RAW = 1 << 3
_ffi = None


def _hostkey(cert):
    """``(sha256 digest, key type)`` from the ``git_cert *`` libgit2 gave, or ``None`` if it is no ssh host key."""
    global _ffi  # noqa: PLW0603 - one declaration for the process, made on first use
    if _ffi is None:
        import cffi  # pylint: disable=import-outside-toplevel

        _ffi = cffi.FFI()
        _ffi.cdef(_CERT_HOSTKEY)
    address = int(pygit2.ffi.cast("uintptr_t", cert))
    if _ffi.cast("envflow_git_cert *", address).cert_type != _CERT_HOSTKEY_LIBSSH2:
        return None
    hostkey = _ffi.cast("envflow_git_cert_hostkey *", address)
    if not hostkey.type & _SSH_SHA256:
        raise RemoteError("envflow: libgit2 gave no SHA-256 fingerprint of the ssh host key; cannot check it")
    digest = bytes(_ffi.buffer(hostkey.hash_sha256))
    key_type = "ssh"
    if hostkey.type & _SSH_RAW and hostkey.hostkey != _ffi.NULL:
        key_type = _key_type(bytes(_ffi.buffer(hostkey.hostkey, hostkey.hostkey_len)))
    return digest, key_type


def _libgit2_cert():
    """The ``git_cert *`` of the certificate check pygit2 is running (it hands Python ``None`` in its place).

    pygit2's ``_certificate_check_cb`` holds it as ``cert_i``, one frame up
    from :meth:`Callbacks.certificate_check`. If a pygit2 release changes
    that, the check fails closed (every ssh host key is refused) and the
    tests that connect to a real sshd fail.
    """
    caller = sys._getframe(2)  # pylint: disable=protected-access
    cert = caller.f_locals.get("cert_i")
    if cert is None or not isinstance(cert, pygit2.ffi.CData):
        raise RemoteError(
            f"envflow: cannot read the ssh host key from pygit2 {pygit2.__version__}; "
            "install a pygit2 release envflow supports (see docs/supported-versions)"
        )
    return cert


class Callbacks(pygit2.RemoteCallbacks):
    """Credentials and certificate checks for one network operation on ``url``.

    Each configured credential is offered once: when libgit2 asks again, the
    server refused it, and the operation stops with a message saying which.
    """

    def __init__(self, url, credentials=None):
        super().__init__()
        self.url = url
        self.where = endpoint(url)
        self.config = credentials or Credentials()
        self.offered = None
        self.warnings = []

    def credentials(self, url, username_from_url, allowed_types):
        config, where = self.config, self.where
        if self.offered is not None:
            raise RemoteError(self._refused())
        if url.startswith("http://") and not config.allow_http:
            raise RemoteError(
                f"envflow: {where.host} asks for credentials over plain http, which would send them unencrypted; "
                "use https, or set envflow:credentials:allow_http: true"
            )
        if allowed_types & CredentialType.SSH_KEY:
            user = username_from_url or config.username
            if config.ssh_key:
                self.offered = "key"
                # No public key file: libssh2 then derives it from the private key, so a wrong passphrase
                # fails there, with its own error, rather than as a key the server refused.
                return pygit2.Keypair(user, None, config.ssh_key, config.ssh_passphrase or "")
            if config.ssh_agent:
                self.offered = "agent"
                return pygit2.KeypairFromAgent(user)
            raise RemoteError(
                f"envflow: {where.host} asks for an ssh key; set envflow:credentials:ssh_key (a private key file) "
                "or ssh_agent: true"
            )
        if allowed_types & CredentialType.USERPASS_PLAINTEXT:
            user = config.username or where.user or username_from_url
            password = config.password if config.password is not None else where.password
            if user is None or password is None:
                raise RemoteError(
                    f"envflow: {where.host} asks for a username and password; set envflow:credentials:username "
                    "and password (a password or token)"
                )
            self.offered = "password"
            return pygit2.UserPass(user, password)
        if allowed_types & CredentialType.USERNAME:
            self.offered = "username"
            return pygit2.Username(username_from_url or config.username)
        raise RemoteError(
            f"envflow: {where.host} asks for credentials of a kind envflow cannot give ({allowed_types!r})"
        )

    def _refused(self):
        where, config = self.where, self.config
        user = (where.user or config.username) if where.scheme == "ssh" else (config.username or where.user)
        if self.offered == "key":
            return (
                f"envflow: {where.host} refused the ssh key {config.ssh_key} for user {user}; "
                "add its public key to that user's authorized keys on the server, or fix envflow:credentials:ssh_key"
            )
        if self.offered == "agent":
            return (
                f"envflow: {where.host} refused every key of the ssh agent (SSH_AUTH_SOCK) for user {user}; "
                "add one to the agent (ssh-add), or set envflow:credentials:ssh_key"
            )
        if self.offered == "password":
            return (
                f"envflow: {where.host} refused the username {user} and its password; "
                "check envflow:credentials:username and password"
            )
        return f"envflow: {where.host} refused the user {user}; check envflow:credentials:username"

    def certificate_check(self, certificate, valid, host):
        hostkey = _hostkey(_libgit2_cert())
        if hostkey is None:
            if not valid:
                host = host.decode("utf-8", "replace") if isinstance(host, bytes) else host
                raise RemoteError(
                    f"envflow: the TLS certificate of {host} is not trusted; if an internal CA signed it, "
                    "give that CA as envflow:credentials:ca_bundle"
                )
            return True
        warning = check_host_key(self.config, self.where, *hostkey)
        if warning:
            self.warnings.append(warning)
        return True


def prepare(url, credentials, timeout):
    """Check the credentials that a network operation on ``url`` needs, set libgit2's timeouts, and return callbacks.

    Raises :class:`ConfigError` for a key file others can read, a missing
    CA bundle or ssh agent, or an ``sdb://`` value that gives nothing.
    """
    credentials = (credentials or Credentials()).resolved()
    if credentials.ssh_key and endpoint(url).scheme == "ssh":
        check_key_file(credentials.ssh_key)
        if key_is_encrypted(credentials.ssh_key) and not credentials.ssh_passphrase:
            raise ConfigError(
                f"envflow:credentials:ssh_key: {credentials.ssh_key} is protected by a passphrase; "
                "set envflow:credentials:ssh_passphrase"
            )
    if credentials.ssh_agent and not os.environ.get("SSH_AUTH_SOCK"):
        raise ConfigError(
            "envflow:credentials:ssh_agent: SSH_AUTH_SOCK is not set for the user running Salt; "
            "start Salt with an ssh agent, or give ssh_key"
        )
    if credentials.ca_bundle:
        if not os.path.isfile(credentials.ca_bundle):
            raise ConfigError(f"envflow:credentials:ca_bundle: {credentials.ca_bundle} is not a file")
        _trust(credentials.ca_bundle)
    milliseconds = int((timeout or DEFAULT_TIMEOUT) * 1000)
    # libgit2's timeouts are per process: each operation sets its own before it starts.
    pygit2.option(Option.SET_SERVER_CONNECT_TIMEOUT, milliseconds)
    pygit2.option(Option.SET_SERVER_TIMEOUT, milliseconds)
    return credentials


_trusted = set()


def _trust(ca_bundle):
    """Add ``ca_bundle`` to the certificate authorities libgit2 trusts (for the process: OpenSSL keeps one store)."""
    if ca_bundle not in _trusted:
        pygit2.settings.set_ssl_cert_locations(ca_bundle, None)
        _trusted.add(ca_bundle)


def is_timeout(message):
    """Whether libgit2's error ``message`` says the server did not answer in time."""
    return "timed out" in message.lower()


def describe_failure(message, url, credentials, timeout):
    """A one-line hint for libgit2's error ``message`` about the remote ``url``, or ``None``."""
    where = endpoint(url)
    if is_timeout(message):
        return (
            f"{where.host or url} did not answer within {timeout or DEFAULT_TIMEOUT}s (envflow:timeout); "
            "check that the server is up and reachable, or raise envflow:timeout"
        )
    if credentials and credentials.ssh_key and ("passphrase" in message.lower() or "private key" in message.lower()):
        encrypted = key_is_encrypted(credentials.ssh_key)
        if encrypted and credentials.ssh_passphrase:
            hint = "check envflow:credentials:ssh_passphrase"
            return f"the passphrase of the ssh key {credentials.ssh_key} is wrong; {hint}"
        return f"libssh2 cannot read the ssh key {credentials.ssh_key}; check envflow:credentials:ssh_key"
    return None
