"""Shared plumbing of the yaobank apps: argument parsing, HTTP servers, UDP echo, the access log.

The access log is BaseHTTPRequestHandler's own format, which is what the lesson shows
(the yaobank pods are Python web apps): `198.19.15.254 - - [05/Oct/2020 10:04:37] "GET / HTTP/1.1" 200 -`.
It goes to stderr, which the launcher points at the pod's log file, flushed line by line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from netns_lab.apps import HEALTH_PATH

UPSTREAM_TIMEOUT = 5.0
# listen() backlog: the stdlib's default of 5 overflows when 100 clients connect at once
LISTEN_BACKLOG = 256
# an idle kept-alive connection frees its thread after this long
IDLE_TIMEOUT = 600.0


class AppHandler(BaseHTTPRequestHandler):
    """Request handler base: health endpoint, JSON/HTML replies, lesson-format access log."""

    server_version = "yaobank/1.0"
    # HTTP/1.1: a client may keep its connection open for more requests (every reply has a
    # Content-Length), which is what lets a long-lived connection outlive a mode switch
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    pod = "?"
    upstream: str | None = None
    routes: dict[str, Callable[["AppHandler"], tuple[int, str, bytes]]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        """Dispatch GET to the app's route table; unknown paths get a 404 like the lesson's /logout."""
        if self.path == HEALTH_PATH:
            self.reply(200, "text/plain", b"ok\n")
            return
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self.reply(404, "text/plain", b"not found\n")
            return
        try:
            code, ctype, body = route(self)
        except UpstreamError as exc:
            code, ctype, body = 502, "text/plain", f"upstream error: {exc}\n".encode()
        self.reply(code, ctype, body)

    def reply(self, code: int, ctype: str, body: bytes) -> None:
        """Send a complete response (send_response logs the request line in the lesson's format)."""
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pod", self.pod)
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log like BaseHTTPRequestHandler, except health probes (they would drown the lesson's lines)."""
        if self.path == HEALTH_PATH:
            return
        super().log_request(code, size)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        """The stdlib line, flushed at once so `netns-lab logs --follow` sees it immediately."""
        super().log_message(format, *args)
        sys.stderr.flush()

    def fetch_json(self) -> dict[str, Any]:
        """GET the upstream service's / through its cluster IP and decode the JSON body."""
        assert self.upstream is not None
        url = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise UpstreamError(f"{self.upstream} answered {resp.status}")
            return json.loads(body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise UpstreamError(f"{self.upstream}: {exc}") from None
        finally:
            conn.close()


class AppServer(ThreadingHTTPServer):
    """Threaded HTTP server that stays quiet when a client hangs up mid-reply (no traceback in the access log)."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore connection resets; report anything else the stdlib way."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class UpstreamError(Exception):
    """The upstream service did not answer properly."""


def json_body(data: dict[str, Any]) -> tuple[int, str, bytes]:
    """A 200 JSON reply."""
    return 200, "application/json", (json.dumps(data, indent=2) + "\n").encode()


def udp_echo(port: int) -> None:
    """Echo every UDP datagram back to its sender (the service's UDP port, for UDP NodePort tests)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


def main(app: str, handler: type[AppHandler], argv: list[str] | None = None) -> None:
    """Parse the launcher's arguments, start the HTTP servers and UDP echoes, serve until killed."""
    parser = argparse.ArgumentParser(prog=f"netns_lab.apps.{app}")
    parser.add_argument("--lab", required=True, help="lab name (lets clean-up find this process)")
    parser.add_argument("--pod", required=True, help="pod name, reported in replies")
    parser.add_argument("--http", type=int, action="append", default=[], help="TCP port to serve HTTP on")
    parser.add_argument("--udp-echo", type=int, action="append", default=[], help="UDP port to echo on")
    parser.add_argument("--upstream", help="base URL of the service this app calls")
    args = parser.parse_args(argv)

    handler.pod = args.pod
    handler.upstream = args.upstream
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    servers = []
    for port in args.http:
        servers.append(AppServer(("0.0.0.0", port), handler))
    for port in args.udp_echo:
        threading.Thread(target=udp_echo, args=(port,), daemon=True).start()
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    ports = ", ".join([f"TCP {p}" for p in args.http] + [f"UDP {p} (echo)" for p in args.udp_echo])
    upstream = f", upstream {args.upstream}" if args.upstream else ""
    print(f" * {app} (pod {args.pod}) serving on {ports}{upstream}", file=sys.stderr, flush=True)
    try:
        if servers:
            servers[0].serve_forever()
        else:
            threading.Event().wait()  # UDP only, or no port at all: the echo threads (if any) serve
    except KeyboardInterrupt:
        pass
