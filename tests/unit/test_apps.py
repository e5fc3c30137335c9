"""The yaobank apps, served on loopback: the call chain, the page, and the lesson's access-log format."""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterator

import pytest

from netns_lab.apps.common import AppHandler, AppServer
from netns_lab.apps.customer import CustomerHandler
from netns_lab.apps.database import DatabaseHandler
from netns_lab.apps.summary import SummaryHandler

# The lesson's line: 198.19.15.254 - - [05/Oct/2020 10:04:37] "GET / HTTP/1.1" 200 -
LESSON_LINE = re.compile(r'^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4} \d\d:\d\d:\d\d\] "(GET [^"]+ HTTP/1\.1)" (\d{3}) -$')


def _serve(handler: type[AppHandler], pod: str, upstream: str | None) -> AppServer:
    cls = type(f"{handler.__name__}_{pod}", (handler,), {"pod": pod, "upstream": upstream})
    srv = AppServer(("127.0.0.1", 0), cls)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return srv


@pytest.fixture
def chain() -> Iterator[dict[str, AppServer]]:
    db = _serve(DatabaseHandler, "database", None)
    summary = _serve(SummaryHandler, "summary-9", f"http://127.0.0.1:{db.server_address[1]}")
    customer = _serve(CustomerHandler, "customer", f"http://127.0.0.1:{summary.server_address[1]}")
    servers = {"database": db, "summary": summary, "customer": customer}
    yield servers
    for s in servers.values():
        s.shutdown()
        s.server_close()


def _get(srv: AppServer, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, body


def _log_lines(err: str) -> list[tuple[str, str]]:
    out = []
    for line in err.splitlines():
        m = LESSON_LINE.match(line)
        assert m, f"not in the lesson's format: {line!r}"
        out.append((m.group(1), m.group(2)))
    return out


def test_customer_page_carries_data_from_summary_and_database(chain, capsys) -> None:
    status, body = _get(chain["customer"], "/")
    assert status == 200
    assert "Spike Curtis" in body and "2389.45 USD" in body
    assert "customer pod: customer; summary pod: summary-9; database pod: database" in body


def test_summary_returns_json_naming_its_pod(chain) -> None:
    status, body = _get(chain["summary"], "/")
    data = json.loads(body)
    assert status == 200
    assert data["summary_pod"] == "summary-9"
    assert data["database_pod"] == "database"
    assert data["balance"] == "2389.45"


def test_access_log_is_the_lessons_format_and_skips_probes(chain, capsys) -> None:
    capsys.readouterr()
    assert _get(chain["customer"], "/healthz")[0] == 200
    assert _get(chain["customer"], "/")[0] == 200
    assert _get(chain["customer"], "/logout")[0] == 404
    lines = _log_lines(capsys.readouterr().err)
    # each server logs its own request; the customer's two, in order, and no health probe
    assert ("GET / HTTP/1.1", "200") in lines
    assert ("GET /logout HTTP/1.1", "404") in lines
    assert not any("/healthz" in req for req, _ in lines)


def test_upstream_failure_is_a_502(capsys) -> None:
    customer = _serve(CustomerHandler, "customer", "http://127.0.0.1:1")
    try:
        status, body = _get(customer, "/")
    finally:
        customer.shutdown()
        customer.server_close()
    assert status == 502
    assert "upstream error" in body


@pytest.fixture
def testserver() -> Iterator[AppServer]:
    from netns_lab.apps.testserver import TestServerHandler

    srv = _serve(TestServerHandler, "web-7d4b9c6f5d-x2k9p", None)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/hostname", "web-7d4b9c6f5d-x2k9p"),
        ("/", "web-7d4b9c6f5d-x2k9p"),
        ("/echo?msg=hello%20there", "hello there"),
        ("/echo", ""),
    ],
)
def test_testserver_answers_conformance_paths(testserver: AppServer, path: str, expected: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", testserver.server_address[1], timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert (resp.status, resp.read().decode()) == (200, expected)


def test_testserver_clientip_is_the_peer_it_sees(testserver: AppServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", testserver.server_address[1], timeout=5)
    conn.connect()
    local = conn.sock.getsockname()
    conn.request("GET", "/clientip")
    assert conn.getresponse().read().decode() == f"{local[0]}:{local[1]}"


@pytest.mark.parametrize(
    "image,app",
    [
        ("calico/yaobank-customer", "customer"),
        ("calico/yaobank-summary:certification", "summary"),
        ("docker.io/calico/yaobank-database@sha256:00", "database"),
        ("nginx:1.25", "testserver"),
        ("calico/yaobank-frontend", "testserver"),
    ],
)
def test_app_for_image(image: str, app: str) -> None:
    from netns_lab.apps import app_for_image

    assert app_for_image(image) == app
