"""kube-proxy's service health server, one per node: `python -m netns_lab.apps.healthcheck --lab L --node N --table F`.

For every service with externalTrafficPolicy Local, its healthCheckNodePort answers any HTTP GET
as kube-proxy's healthcheck server does: 200 when the node has a ready local endpoint, else 503,
with the JSON body {"service": {...}, "localEndpoints": N, "serviceProxyHealthy": true}. The
table F (JSON: port -> namespace, name, localEndpoints) is written by the lab on every endpoint
change and re-read when it changes; ports are opened and closed to follow it. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
from typing import Any

REASONS = {200: "OK", 503: "Service Unavailable"}


def response(entry: dict[str, Any]) -> bytes:
    """The whole HTTP answer for one service's health check."""
    count = int(entry["localEndpoints"])
    code = 200 if count > 0 else 503
    body = json.dumps({"service": {"namespace": entry["namespace"], "name": entry["name"]},
                       "localEndpoints": count, "serviceProxyHealthy": True}, indent=1).encode() + b"\n"
    head = (f"HTTP/1.1 {code} {REASONS[code]}\r\nContent-Type: application/json\r\n"
            f"X-Content-Type-Options: nosniff\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def _read(path: str) -> dict[int, dict[str, Any]]:
    """The table as written by the lab ({} while it is missing or half written)."""
    try:
        with open(path) as f:
            return {int(k): v for k, v in json.load(f).items()}
    except (OSError, ValueError):
        return {}


def _listen(port: int) -> socket.socket | None:
    """A listening socket on every address of the node (None if the port is taken)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", port))
    except OSError:
        s.close()
        return None
    s.listen(64)
    s.setblocking(False)
    return s


def _answer(conn: socket.socket, entry: dict[str, Any] | None) -> None:
    """Read the request head (briefly), answer, close."""
    conn.settimeout(1.0)
    try:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        if entry is not None:
            conn.sendall(response(entry))
    except OSError:
        pass
    finally:
        conn.close()


def serve(table_path: str) -> None:
    """Follow the table forever: open its ports, answer each request from its current entry."""
    sel = selectors.DefaultSelector()
    socks: dict[int, socket.socket] = {}
    table: dict[int, dict[str, Any]] = {}
    seen: float | None = None
    while True:
        try:
            mtime = os.stat(table_path).st_mtime_ns
        except OSError:
            mtime = None
        if mtime != seen:
            seen, table = mtime, _read(table_path)
            for port in [p for p in socks if p not in table]:
                sel.unregister(socks[port])
                socks.pop(port).close()
            for port in table:
                if port not in socks and (s := _listen(port)) is not None:
                    socks[port] = s
                    sel.register(s, selectors.EVENT_READ, port)
        for key, _ in sel.select(timeout=0.1):
            try:
                conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
            except OSError:
                continue
            _answer(conn, table.get(key.data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lab", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--table", required=True)
    args = ap.parse_args()
    serve(args.table)


if __name__ == "__main__":
    main()
