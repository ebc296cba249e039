"""Real git servers on loopback for the tests: OpenSSH's sshd, git's smart HTTP, and a server that never answers.

Each is started by a fixture (tests/conftest.py) and stopped after the test or module; none needs root, and
each also runs as root (sshd then lets the current user, root, in with a key only).
"""

import base64
import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None)


def _http_backend():
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=False).stdout.strip()
    path = os.path.join(exec_path, "git-http-backend")
    return path if os.path.exists(path) else None


HTTP_BACKEND = _http_backend()
_WAIT = 30.0  # seconds a server may take to come up on a busy machine


def wait_for(condition, what, timeout=_WAIT):
    """Poll ``condition`` until it returns something true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def free_port():
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port, host="127.0.0.1"):
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


def keygen(path, passphrase="", comment="envflow-test"):
    """Make an ed25519 key pair at ``path`` (``path.pub`` beside it), mode 0600; return ``path`` as a string."""
    path = str(path)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", path],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


def public_key(path):
    with open(f"{path}.pub", encoding="utf-8") as handle:
        return handle.read().strip()


def fingerprint(public_line):
    """OpenSSH's SHA256 fingerprint of a public key line (``ssh-ed25519 AAAA... comment``)."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class SshServer:
    """OpenSSH's sshd on 127.0.0.1 and a free port, letting the current user in with the keys in ``authorize``.

    The session runs ``git-shell``, so a client can only run git's
    upload-pack and receive-pack on repositories given by absolute path.
    """

    def __init__(self, root, authorize=(), port=None, host="127.0.0.1"):
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)
        self.host = host
        self.port = port
        self.user = _current_user()
        self.host_key = keygen(os.path.join(self.root, "host_key"), comment="host")
        self.authorized = os.path.join(self.root, "authorized_keys")
        with open(self.authorized, "w", encoding="utf-8") as handle:
            handle.writelines(public_key(key) + "\n" for key in authorize)
        os.chmod(self.authorized, 0o600)
        self.log = os.path.join(self.root, "sshd.log")
        self._log_from = 0
        self.process = None

    @property
    def host_public_key(self):
        return public_key(self.host_key)

    def known_hosts_line(self):
        """The line ``ssh`` would write into known_hosts for this server."""
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {' '.join(self.host_public_key.split()[:2])}\n"

    def url(self, path):
        return f"ssh://{self.user}@{self.host}:{self.port}{path}"

    def _config(self):
        config = os.path.join(self.root, "sshd_config")
        git_shell = shutil.which("git-shell") or "/usr/bin/git-shell"
        lines = [
            f"ListenAddress {self.host}:{self.port}",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.authorized}",
            f"PidFile {os.path.join(self.root, 'sshd.pid')}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            f"AllowUsers {self.user}",
            f'ForceCommand {git_shell} -c "$SSH_ORIGINAL_COMMAND"',
            "MaxStartups 50",
        ]
        with open(config, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return config

    def start(self):
        if os.geteuid() == 0:
            # sshd running as root insists on its privilege separation directory.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for _attempt in range(5):
            fixed = self.port is not None
            if not fixed:
                self.port = free_port()
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", self._config()], stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
            try:
                wait_for(lambda: self.process.poll() is not None or _accepts(self.port, self.host), "sshd to listen")
            except AssertionError:
                self.stop()
                raise
            if self.process.poll() is None:
                return self
            if fixed:
                break
            self.port = None  # someone took the port meanwhile: try another
        with open(self.log, encoding="utf-8", errors="replace") as handle:
            raise RuntimeError(f"sshd did not start: {handle.read()[-2000:]}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def mark_log(self):
        """Make :meth:`read_log` start from what the server logs from now on (a shared server, a new test)."""
        self._log_from = os.path.getsize(self.log) if os.path.exists(self.log) else 0

    def read_log(self):
        """What the server logged since it started, or since the last :meth:`mark_log`."""
        with open(self.log, "rb") as handle:
            handle.seek(self._log_from)
            return handle.read().decode("utf-8", errors="replace")


def _current_user():
    import pwd  # pylint: disable=import-outside-toplevel

    return pwd.getpwuid(os.geteuid()).pw_name


class _GitHttpHandler(BaseHTTPRequestHandler):
    """Runs ``git http-backend`` as a CGI program for each request, behind basic authentication."""

    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        self.server.requests.append(format % args)

    def do_GET(self):
        self._cgi()

    def do_POST(self):
        self._cgi()

    def _authorized(self):
        expected = "Basic " + base64.b64encode(f"{self.server.username}:{self.server.password}".encode()).decode()
        return self.headers.get("Authorization") == expected

    def _cgi(self):
        if not self._authorized():
            self.server.refused += 1
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.server.project_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "REMOTE_USER": self.server.username,
            "REMOTE_ADDR": self.client_address[0],
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        body = b""
        if self.headers.get("Content-Length"):
            env["CONTENT_LENGTH"] = self.headers["Content-Length"]
            body = self.rfile.read(int(self.headers["Content-Length"]))
        elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
            env["CONTENT_LENGTH"] = str(len(body))
        done = subprocess.run([HTTP_BACKEND], input=body, env=env, capture_output=True, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_chunked(self):
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                self.rfile.readline()
                return body
            body += self.rfile.read(size)
            self.rfile.readline()


class GitHttpServer:
    """git's smart HTTP (``git http-backend``) for the repositories under ``project_root``, on 127.0.0.1."""

    def __init__(self, project_root, username, password):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _GitHttpHandler)
        self.server.daemon_threads = True
        self.server.project_root = str(project_root)
        self.server.username, self.server.password = username, password
        self.server.requests, self.server.refused = [], 0
        self.port = self.server.server_address[1]
        self.scheme = "http"
        self.thread = None

    def url(self, path):
        return f"{self.scheme}://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def use_tls(self, certificate, key):
        """Serve https with ``certificate`` (a PEM file) and its ``key``, from the next connection on."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https"
        return self

    @property
    def requests(self):
        return self.server.requests

    def start(self):
        # A short poll interval: shutdown() waits for the serving loop's next poll (0.5 s by default).
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        wait_for(lambda: _accepts(self.port), "the git http server to listen")
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def make_ca_and_certificate(root, host="127.0.0.1"):
    """A certificate authority and a certificate for ``host`` it signed, with the openssl CLI.

    Returns ``(ca, certificate, key)``, paths of PEM files.
    """
    root = str(root)
    os.makedirs(root, exist_ok=True)
    ca, ca_key = os.path.join(root, "ca.pem"), os.path.join(root, "ca.key")
    cert, key, csr = (
        os.path.join(root, "server.pem"),
        os.path.join(root, "server.key"),
        os.path.join(root, "server.csr"),
    )
    ext = os.path.join(root, "ext.cnf")
    with open(ext, "w", encoding="utf-8") as handle:
        handle.write(f"subjectAltName=IP:{host}\nbasicConstraints=CA:FALSE\n")

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, stdin=subprocess.DEVNULL)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=envflow test CA",
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={host}")
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        ext,
    )
    return ca, cert, key


class SilentServer:
    """Accepts connections on 127.0.0.1 and never says anything (a hung git server)."""

    def __init__(self, port=0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port a server just left
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                conn, _addr = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(conn)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stopping.set()
        self.thread.join(10)
        for conn in self.accepted:
            conn.close()
        self.sock.close()
