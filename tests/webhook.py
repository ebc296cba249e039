"""A chat's incoming webhook on loopback, for the tests of the shipped notification reactor."""

import http.server
import json
import secrets
import threading
import urllib.parse


class Webhook:
    """An HTTP server on 127.0.0.1 that records each POST's JSON payload, as Slack or Mattermost would take it.

    Its :attr:`url` carries a secret :attr:`token`, as a real webhook's does. The
    payload is read from a JSON body or from a form's ``payload`` field (what
    Salt's ``slack.call_hook`` sends). Use it as a context manager.
    """

    def __init__(self):
        self.token = secrets.token_hex(16)
        self.posts = []
        self._lock = threading.Lock()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # http.server calls it by this name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    payload = json.loads(body)
                else:
                    payload = json.loads(urllib.parse.parse_qs(body)["payload"][0])
                with hook._lock:  # pylint: disable=protected-access
                    hook.posts.append({"path": self.path, "payload": payload})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):  # quiet: the test asserts on what was posted
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/{self.token}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def texts(self):
        """The ``text`` of every payload posted so far, oldest first."""
        with self._lock:
            return [post["payload"].get("text") for post in self.posts]

    def posted(self, *parts):
        """The texts posted so far that hold every one of ``parts``."""
        return [text for text in self.texts() if text and all(part in text for part in parts)]
