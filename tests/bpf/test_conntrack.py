"""Conntrack state and timeouts, with time injected by rewriting the entries' timestamps.

The connection is a NodePort on node1 with the backend on node1, so the verdict of a
later client packet tells the state apart: NAT_EST (entry alive, same backend, same
entry) or NAT_NEW (entry expired: treated as absent, replaced by a fresh one).
bpf_ktime_get_ns() is CLOCK_MONOTONIC and starts at boot, so an entry cannot be made
older than the machine's uptime: the 1 h established timeout is checked on a build with
CT_TIMEOUT_TCP_EST overridden (the contract makes every timeout #ifndef-overridable),
and on the default build as far as uptime allows.
"""
from __future__ import annotations

import time
from typing import Callable

import pytest

from ebpf_nodeport import abi
from ebpf_nodeport.testrun import SimCluster

from .expect import check_result
from .paths import reply_local, request_local
from .topo import CLIENT, CUSTOMER, NODE1, NP_CUSTOMER, NP_ECHO, base_view, cport, reply, tcp, udp

FE, BE = (NODE1, NP_CUSTOMER), (CUSTOMER, 80)


def _uptime() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


MAX_CLOCK_WAIT_S = 150


def _clock_history(need: float) -> None:
    """Ageing an entry backdates its timestamps on the boot-time clock, so the clock must be
    past `need` seconds: on a freshly booted machine (a test VM) wait for it, up to
    MAX_CLOCK_WAIT_S; beyond that the idle time cannot be injected at all."""
    wait = need - _uptime()
    if wait > MAX_CLOCK_WAIT_S:
        pytest.skip(f"machine up {_uptime():.0f} s: cannot inject an idle time of {need:.0f} s")
    if wait > 0:
        time.sleep(wait)


class Conn:
    """A client connection to node1:30180 (local backend), driven packet by packet."""

    def __init__(self, cluster, proto: str = "tcp"):
        self.c, self.proto, self.port = cluster, proto, cport()
        self.to_client: bytes | None = None
        self.at_pod: bytes | None = None

    def client(self, flags: str = "S", payload: bytes = b"", first: bool = False) -> None:
        if self.proto == "udp":
            frame = bytes(udp(CLIENT, self.port, NODE1, NP_ECHO, payload or b"d"))
            be = (CUSTOMER, 7)
        elif self.to_client is None:
            frame, be = bytes(tcp(CLIENT, self.port, NODE1, NP_CUSTOMER, flags, payload)), BE
        else:
            frame, be = reply(self.to_client, flags, payload), BE
        self.at_pod = request_local(self.c, frame, "node1", be, first=first, where=f"client {flags}")

    def pod(self, flags: str = "SA", payload: bytes = b"") -> None:
        fe = (NODE1, NP_ECHO) if self.proto == "udp" else FE
        self.to_client = reply_local(self.c, reply(self.at_pod, None if self.proto == "udp" else flags, payload),
                                     "node1", fe, where=f"pod {flags}")

    def probe(self, flags: str = "A"):
        """The client's next packet; returns the from_hep result (not checked here)."""
        if self.proto == "udp":
            frame = bytes(udp(CLIENT, self.port, NODE1, NP_ECHO, b"probe"))
        else:
            frame = reply(self.to_client, flags) if self.to_client else bytes(
                tcp(CLIENT, self.port, NODE1, NP_CUSTOMER, "S"))
        return self.c.run("node1", "from_hep", frame)

    def rev(self):
        be = (CUSTOMER, 7) if self.proto == "udp" else BE
        k, _ = abi.ct_key(CLIENT, self.port, be[0], be[1], self.proto)
        return k, self.c["node1"].maps.ct.get(k)


def syn_sent(c: Conn) -> None:
    c.client("S", first=True)


def established(c: Conn) -> None:
    c.client("S", first=True)
    c.pod("SA")
    c.client("A")


def fin_both(c: Conn) -> None:
    established(c)
    c.client("FA")
    c.pod("FA")


def fin_client_only(c: Conn) -> None:
    established(c)
    c.client("FA")


def rst_client(c: Conn) -> None:
    established(c)
    c.client("RA")


def rst_server(c: Conn) -> None:
    established(c)
    c.pod("R")


def udp_pair(c: Conn) -> None:
    c.client(first=True)
    c.pod()


# (name, proto, set-up, idle seconds that must keep the entry, idle seconds that must expire it)
STATES: list[tuple[str, str, Callable[[Conn], None], float, float | None]] = [
    ("tcp_syn_sent_20s", "tcp", syn_sent, 19, 21),
    ("tcp_fin_both_30s", "tcp", fin_both, 29, 31),
    ("tcp_rst_client_40s", "tcp", rst_client, 39, 41),
    ("tcp_rst_server_40s", "tcp", rst_server, 39, 41),
    ("udp_60s", "udp", udp_pair, 59, 61),
    ("tcp_fin_one_side_is_still_established", "tcp", fin_client_only, 45, None),
    ("tcp_established_outlives_short_timeouts", "tcp", established, 70, None),
]


def _check_alive(c: Conn, idle: float) -> None:
    k, before = c.rev()
    assert before is not None
    c.c["node1"].age(idle)
    aged = c.c["node1"].maps.ct.get(k)
    res = c.probe()
    check_result(res, "OK", "NAT_EST", where=f"idle {idle}s, still alive")
    after = c.c["node1"].maps.ct.get(k)
    assert after.created_ns == aged.created_ns, "the entry was recreated although it had not expired"
    assert after.last_seen_ns > aged.last_seen_ns, "last_seen_ns not refreshed by the packet"


def _check_expired(c: Conn, idle: float) -> None:
    k, before = c.rev()
    c.c["node1"].age(idle)
    aged = c.c["node1"].maps.ct.get(k)
    t0 = abi.ktime_ns()
    res = c.probe()
    check_result(res, "OK", "NAT_NEW", where=f"idle {idle}s, expired: treated as new")
    after = c.c["node1"].maps.ct.get(k)
    assert after is not None and after.created_ns >= t0 > aged.created_ns, \
        "an expired entry must be replaced by a fresh one"
    client, server = (after.tcp_b, after.tcp_a) if after.flags & abi.CT_F_CLIENT_IS_B else (after.tcp_a, after.tcp_b)
    assert server == 0, f"fresh entry inherited the old state: server flags {server:#x}"


@pytest.mark.parametrize("name,proto,setup,alive,dead", STATES, ids=[s[0] for s in STATES])
def test_timeout(cluster, name, proto, setup, alive, dead):
    need = (dead or alive) + 5
    _clock_history(need)
    c = Conn(cluster, proto)
    setup(c)
    _check_alive(c, alive)
    if dead is not None:
        c2 = Conn(cluster, proto)
        setup(c2)
        _check_expired(c2, dead)


def test_timeout_established_default_build(cluster):
    """The default build keeps an established connection idle for as long as this machine
    allows us to pretend (up to 3599 s), and drops it after 3601 s when uptime permits."""
    c = Conn(cluster)
    established(c)
    _check_alive(c, min(3599, _uptime() - 5))
    if _uptime() > 3610:
        c2 = Conn(cluster)
        established(c2)
        _check_expired(c2, 3601)


@pytest.fixture(scope="module")
def short_est(netns):
    """node1 alone, built with CT_TIMEOUT_TCP_EST = 120 s."""
    cl = SimCluster(base_view(), nodes=["node1"], defines={"CT_TIMEOUT_TCP_EST": "(120ULL * 1000000000ULL)"})
    try:
        with netns.inside():
            cl.load()
        yield cl
    finally:
        cl.close()


def test_timeout_established_boundary(short_est, netns):
    """Established = SYN both ways + ACK: alive at timeout - 1 s, new at timeout + 1 s."""
    with netns.inside():
        short_est.clear_ct()
        _clock_history(130)
        c = Conn(short_est)
        established(c)
        _check_alive(c, 119)
        c2 = Conn(short_est)
        established(c2)
        _check_expired(c2, 121)


def test_tcp_flags_per_direction(cluster):
    """tcp_a/tcp_b accumulate SYN/ACK/FIN/RST per side as the connection progresses."""
    c = Conn(cluster)
    seen = []
    for step in (lambda: c.client("S", first=True), lambda: c.pod("SA"), lambda: c.client("A"),
                 lambda: c.client("FA"), lambda: c.pod("FA"), lambda: c.client("RA")):
        step()
        _, v = c.rev()
        seen.append((v.tcp_b, v.tcp_a) if v.flags & abi.CT_F_CLIENT_IS_B else (v.tcp_a, v.tcp_b))
    S, A, F, R = abi.TCPF_SYN, abi.TCPF_ACK, abi.TCPF_FIN, abi.TCPF_RST
    assert seen == [(S, 0), (S, S | A), (S | A, S | A), (S | A | F, S | A), (S | A | F, S | A | F),
                    (S | A | F | R, S | A | F)], seen
