"""The lesson's "Direct Server Return" on a real lab (issue 4, lab side): its tcpdump observation as assertions.

One lab brought up directly with `up --mode dsr` is shared by this module; every node and
host1 run with strict reverse-path filtering (rp_filter=1), so the module also shows that
DSR needs no relaxed RPF in this fabric. Tests that switch modes put DSR back at the end.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from netns_lab import capture
from netns_lab.nsexec import sysctl

from .conftest import Lab, cli, counter, running_lab, same_port_twice, unique_lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

HOST1 = "198.19.15.254"
CONTROL = "198.19.0.1"
NODEPORT = 30180
STRICT_RPF = {"net/ipv4/conf/all/rp_filter": "1", "net/ipv4/conf/default/rp_filter": "1", "net/ipv4/conf/eth0/rp_filter": "1"}


@pytest.fixture(scope="module")
def dsr_lab() -> Iterator[Lab]:
    """A default lab brought up straight into DSR mode (`up --mode dsr`), strict rp_filter everywhere."""
    with running_lab("d", "dsr") as lab:
        for member in ("control", "node1", "node2", "host1"):
            sysctl(lab.netns(member), STRICT_RPF)
        yield lab


def directions(cap: capture.Capture, client_port: int | None = None) -> tuple[int, int]:
    """(packets host1 -> node port, packets node port -> host1) in a capture, optionally for one client port."""
    to_np = [p for p in cap.between(HOST1, CONTROL) if p.dport == NODEPORT and client_port in (None, p.sport)]
    from_np = [p for p in cap.between(CONTROL, HOST1) if p.sport == NODEPORT and client_port in (None, p.dport)]
    return len(to_np), len(from_np)


def curl_on_control(lab: Lab) -> tuple[capture.Capture, str]:
    """The lesson's snoop: tcpdump in control's namespace on the node port while host1 curls it once."""
    with capture.tcpdump(lab.netns("control"), f"tcp port {NODEPORT}") as cap:
        page = lab.curl(f"{CONTROL}:{NODEPORT}")
    return cap, page


def last_client(lab: Lab, before: int) -> list[str]:
    """Clients of the customer pod's access-log entries after the first `before`."""
    box: list[str] = []

    def grown() -> bool:
        box[:] = [e["client"] for e in lab.log_entries("customer")[before:]]
        return bool(box)

    wait_for(grown, timeout=5, interval=0.05)
    return box


def full_page(page: str) -> bool:
    """The whole bank page arrived (account data from the database, closing tag)."""
    return "Welcome to YAO Bank" in page and "2389.45 USD" in page and page.rstrip().endswith("</html>")


@contextmanager
def keepalive_client(lab: Lab) -> Iterator["KeepAlive"]:
    """A kept-alive HTTP connection from host1 to control's node port, driven line by line."""
    script = r"""
import http.client, sys
c = http.client.HTTPConnection("198.19.0.1", 30180, timeout=10)
c.auto_open = 0          # never reconnect behind our back: the same socket or an error
c.connect()
port = c.sock.getsockname()[1]
print(port, flush=True)
for _ in sys.stdin:
    try:
        c.request("GET", "/")
        r = c.getresponse()
        body = r.read()
        ok = r.status == 200 and body.rstrip().endswith(b"</html>") and b"2389.45 USD" in body
        print(c.sock.getsockname()[1], "ok" if ok else f"bad-{r.status}", flush=True)
    except Exception as exc:
        print(port, "error", repr(exc).replace(" ", "_"), flush=True)
"""
    proc = subprocess.Popen(["ip", "netns", "exec", lab.netns("host1"), sys.executable, "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield KeepAlive(proc, int(proc.stdout.readline()))
    finally:
        proc.kill()
        proc.wait()


class KeepAlive:
    """One long-lived client connection."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port

    def get(self) -> list[str]:
        """One request on the same socket: [local port, 'ok' | 'bad-<status>' | 'error', ...]."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().split()


# --------------------------------------------------------------------------- tests


def test_up_mode_dsr(dsr_lab: Lab) -> None:
    st = dsr_lab.status()
    assert st["mode"] == "dsr" and st["felix"]["bpfExternalServiceMode"] == "DSR" and st["felix"]["bpfEnabled"]
    for node, n in st["dataplane"]["nodes"].items():
        assert n["datapath_loaded"] and ("eth0", "ingress", "from_hep") in {
            (p["interface"], p["hook"], p["program"]) for p in n["programs"]}, node


def test_dsr_shows_one_direction_on_control(dsr_lab: Lab) -> None:
    """The lesson's observation: in DSR mode control sees only host1 -> 198.19.0.1:30180; node1 answers host1 itself."""
    before = len(dsr_lab.log_entries("customer"))
    with capture.tcpdump(dsr_lab.netns("node1"), f"tcp port {NODEPORT}") as on_node1:
        cap, page = curl_on_control(dsr_lab)
    assert full_page(page)
    to_np, from_np = directions(cap)
    assert to_np >= 5 and from_np == 0, cap.lines  # SYN, ACK, request, ACKs, FIN: all one way
    # the replies leave node1 with the ingress node's address and node port as source
    assert directions(on_node1)[1] >= 3, on_node1.lines
    assert last_client(dsr_lab, before) == [HOST1]


def test_tunnel_shows_both_directions_then_dsr_one_again(dsr_lab: Lab) -> None:
    try:
        dsr_lab.run("mode", "tunnel")
        before = len(dsr_lab.log_entries("customer"))
        cap, page = curl_on_control(dsr_lab)
        assert full_page(page)
        to_np, from_np = directions(cap)
        assert to_np >= 5 and from_np >= 3, cap.lines  # SYN-ACK, data and FIN come back through control
        assert last_client(dsr_lab, before) == [HOST1]
    finally:
        dsr_lab.run("mode", "dsr")
    cap, page = curl_on_control(dsr_lab)
    assert full_page(page) and directions(cap)[1] == 0


def test_long_lived_connection_keeps_its_mode_across_switches(dsr_lab: Lab) -> None:
    """A connection keeps the mode it was opened with (its conntrack entries say so); new ones use the new mode."""
    try:
        dsr_lab.run("mode", "tunnel")
        with keepalive_client(dsr_lab) as tunnelled:
            assert tunnelled.get() == [str(tunnelled.port), "ok"]
            dsr_lab.run("mode", "dsr")
            with capture.tcpdump(dsr_lab.netns("control"), f"tcp port {NODEPORT}") as cap:
                assert tunnelled.get() == [str(tunnelled.port), "ok"]
                fresh = dsr_lab.curl(f"{CONTROL}:{NODEPORT}")
            assert full_page(fresh)
            # the old connection still returns through control (Tunnel); the new one does not (DSR)
            assert directions(cap, tunnelled.port)[1] >= 1, cap.lines
            fresh_ports = {p.sport for p in cap.between(HOST1, CONTROL)} - {tunnelled.port}
            assert len(fresh_ports) == 1
            assert directions(cap, fresh_ports.pop())[1] == 0, cap.lines

            with keepalive_client(dsr_lab) as direct:
                assert direct.get() == [str(direct.port), "ok"]
                dsr_lab.run("mode", "tunnel")
                with capture.tcpdump(dsr_lab.netns("control"), f"tcp port {NODEPORT}") as cap:
                    assert direct.get() == [str(direct.port), "ok"]
                    assert tunnelled.get() == [str(tunnelled.port), "ok"]
                assert directions(cap, direct.port) [1] == 0, cap.lines  # opened in DSR: still DSR
                assert directions(cap, tunnelled.port)[1] >= 1, cap.lines
                dsr_lab.run("mode", "dsr")
                for _ in range(3):
                    assert direct.get() == [str(direct.port), "ok"]
                    assert tunnelled.get() == [str(tunnelled.port), "ok"]
    finally:
        dsr_lab.run("mode", "dsr")


@pytest.mark.parametrize("cidr", ["198.19.15.254/32", "198.19.15.0/24"])
def test_opt_out_client_gets_tunnel_behaviour(dsr_lab: Lab, cidr: str) -> None:
    try:
        dsr_lab.run("patch", "felixconfiguration", "default", "--patch", f'{{"spec": {{"bpfDSROptoutCIDRs": ["{cidr}"]}}}}')
        st = dsr_lab.status()
        assert st["mode"] == "dsr" and st["felix"]["bpfDSROptoutCIDRs"] == [cidr]
        before = len(dsr_lab.log_entries("customer"))
        cap, page = curl_on_control(dsr_lab)
        assert full_page(page)
        to_np, from_np = directions(cap)
        assert to_np >= 5 and from_np >= 3, cap.lines
        assert last_client(dsr_lab, before) == [HOST1]
    finally:
        dsr_lab.run("patch", "felixconfiguration", "default", "--patch", '{"spec": {"bpfDSROptoutCIDRs": []}}')
    cap, page = curl_on_control(dsr_lab)
    assert full_page(page) and directions(cap)[1] == 0


def test_lesson_walkthrough() -> None:
    """`netns-lab lesson` on a fresh lab: every observation as in the lesson, the lab gone afterwards."""
    name = unique_lab("w")
    try:
        proc = cli("lesson", "--name", name, check=False, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
        assert f"$ netns-lab patch --name {name} felixconfiguration default --patch='{{\"spec\": {{\"bpfEnabled\": true}}}}'" in out
        assert '198.19.0.1 - - [' in out and '198.19.15.254 - - [' in out
        assert "node port -> host1: 0 packets" in out
        assert "Every observation matched the lesson's." in out
        assert cli("status", "--name", name, check=False).returncode != 0  # it brought the lab up, so it took it down
    finally:
        cli("down", "--name", name, check=False)


def test_same_client_port_through_two_nodes_at_once(dsr_lab: Lab) -> None:
    """DSR: one client port through control and node2 at once to the customer pod on node1. node1
    gives the second a PSNAT port and its DSR replies carry the client's own port back."""
    psnat_before = counter(dsr_lab, "node1", "from_hep", "PSNAT")
    dsr_before = counter(dsr_lab, "node1", "from_wep", "DSR_REPLY")
    assert same_port_twice(dsr_lab, CONTROL, "198.19.0.3", 41004) == ["ok", "ok", "ok", "ok"]
    assert counter(dsr_lab, "node1", "from_hep", "PSNAT") == psnat_before + 1
    assert counter(dsr_lab, "node1", "from_wep", "DSR_REPLY") > dsr_before  # replies still went straight back
