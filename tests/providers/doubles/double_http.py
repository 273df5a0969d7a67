"""What every provider double shares: a threaded HTTP(S) server on 127.0.0.1, JSON answers,
a log of the requests it served, and a life bound to its parent.

A double prints one JSON line on stdout once it listens (its addresses, and the CA's path when
it serves https), then serves until its standard input closes — so it never outlives the test
that started it — or until it is killed.

`GET /_double/log` (no authentication; not part of any vendor's API) answers the requests
served so far as `[[method, path-with-query], ...]`, for tests that check how berth called.
"""

import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    # Keep-alive for the SDKs' pooled connections; every answer carries Content-Length.
    protocol_version = "HTTP/1.1"
    # Set by serve(): the shared log.
    request_log = None
    log_lock = threading.Lock()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # quiet: the test output is the place for failures, not for every request

    # --- parsing ---------------------------------------------------------------------------

    def split(self):
        """(path, {name: last value}) of the request target."""
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        return parts.path, query

    def body_bytes(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def json_body(self):
        """The JSON object sent, or None when the body is absent or not a JSON object."""
        raw = self.body_bytes()
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def bearer(self):
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    # --- answering -------------------------------------------------------------------------

    def send_json(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def record(self):
        with self.log_lock:
            self.request_log.append([self.command, self.path])

    def dispatch(self):
        """Subclasses route here; answers 404 for what they do not know."""
        raise NotImplementedError

    def handle_any(self):
        path, _ = self.split()
        if path == "/_double/log" and self.command == "GET":
            with self.log_lock:
                self.send_json(200, list(self.request_log))
            return
        self.record()
        try:
            self.dispatch()
        except Exception as e:  # a bug in the double: say so loudly, keep serving
            sys.stderr.write(f"double: {self.command} {self.path}: {e!r}\n")
            self.send_json(500, {"double_error": repr(e)})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that refuses the throwaway CA (a test of exactly that) or hangs up is not a
        # failure of the double; anything else is printed as usual.
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return
        super().handle_error(request, client_address)


def listen(handler_class, tls_context=None):
    """A server for `handler_class` on 127.0.0.1 and a free port; its base URL."""
    server = Server(("127.0.0.1", 0), handler_class)
    scheme = "http"
    if tls_context is not None:
        # The handshake happens in the handler's thread, on its first read.
        server.socket = tls_context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        scheme = "https"
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


def serve(servers, info):
    """Prints `info` as one JSON line, serves until stdin closes."""
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    try:
        while sys.stdin.read(4096):
            pass
    except KeyboardInterrupt:
        pass
    for server in servers:
        server.shutdown()
