"""Real servers for the delivery tests (test_delivery.py): an HTTP(S)
webhook server in a thread of the test process, whose answers the test
scripts (200, 500 for a while, a hang, down and up again on the same port),
an SMTP server (aiosmtpd, STARTTLS and AUTH) and a self-signed certificate
made with openssl.  No mocks: libcurl in the notifier talks to these over
127.0.0.1."""

import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time


class Request:
    def __init__(self, path, headers, body, at):
        self.path = path
        self.headers = headers
        self.raw = body
        self.at = at
        try:
            self.json = json.loads(body)
        except ValueError:
            self.json = None

    @property
    def key(self):
        return self.headers.get("Idempotency-Key")


class WebhookServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records every POST.

    behaviour(request_number, path) -> (status, delay_seconds); the default
    answers 200 at once.
    """

    def __init__(self, port=0, tls_cert=None):
        self.requests = []
        self.lock = threading.Lock()
        self.behaviour = lambda n, path: (200, 0)
        self.tls_cert = tls_cert
        self.port = port or free_port()
        self.httpd = None

    def start(self):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(n).decode("utf-8", "replace")
                with outer.lock:
                    outer.requests.append(
                        Request(self.path, dict(self.headers), body, time.monotonic())
                    )
                    count = len(outer.requests)
                status, delay = outer.behaviour(count, self.path)
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        if self.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls_cert.cert, self.tls_cert.key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def url(self, path="/hook"):
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def received(self, path=None):
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class SelfSignedCert:
    """A certificate for 127.0.0.1/localhost, readable by the server's user."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="iotpipe-dlv-tls-")
        os.chmod(self.dir, 0o755)
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                "-keyout", self.key, "-out", self.cert, "-days", "2",
                "-subj", "/CN=localhost",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        os.chmod(self.cert, 0o644)
        os.chmod(self.key, 0o644)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class SmtpServer:
    """aiosmtpd with STARTTLS and AUTH (LOGIN/PLAIN) for user/password."""

    def __init__(self, cert, user, password):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.messages = []
        self.auth_failures = 0
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                outer.messages.append(envelope)
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                getattr(auth_data, "login", None) == user.encode()
                and getattr(auth_data, "password", None) == password.encode()
            )
            if not ok:
                outer.auth_failures += 1
            return AuthResult(success=ok, handled=False)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert, cert.key)
        self.port = free_port()
        self.controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=ctx,
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=True,
        )

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()
