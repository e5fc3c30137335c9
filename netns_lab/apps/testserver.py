"""The generic test server: what a pod of any image other than yaobank's runs.

It answers what Kubernetes conformance tests ask of their test image (agnhost's netexec):
`/clientip` the source ip:port it sees (where source-IP preservation shows), `/hostname` the
pod's name, `/echo?msg=...` the message; on every declared TCP port, and a UDP echo on every
declared UDP port. Access log in the lesson's format, like the yaobank apps.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from netns_lab.apps.common import AppHandler, main


def _text(body: str) -> tuple[int, str, bytes]:
    """A 200 text/plain reply."""
    return 200, "text/plain", body.encode()


class TestServerHandler(AppHandler):
    """GET /clientip, /hostname, /echo?msg=..., and / (the pod's name)."""

    server_version = "netns-lab-testserver/1.0"

    def clientip(self) -> tuple[int, str, bytes]:
        """The peer address as the pod sees it: after any NAT on the way."""
        ip, port = self.client_address[:2]
        return _text(f"{ip}:{port}")

    def hostname(self) -> tuple[int, str, bytes]:
        """The pod's name (a pod's hostname in Kubernetes)."""
        return _text(self.pod)

    def echo(self) -> tuple[int, str, bytes]:
        """The `msg` query parameter, unchanged."""
        return _text(parse_qs(urlsplit(self.path).query).get("msg", [""])[0])

    routes = {"/": hostname, "/clientip": clientip, "/hostname": hostname, "/echo": echo}


if __name__ == "__main__":
    main("testserver", TestServerHandler)
