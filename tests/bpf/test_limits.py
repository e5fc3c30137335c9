"""Map limits of the default conntrack build, a plain hash (Calico's map kind: a new connection
that does not fit is dropped with DROP_CT_FULL and leaves nothing, established ones are never
evicted, a SYN flood larger than the table does not touch them, and the GC makes room again),
and 10,000 services in the frontend map (every one still resolves). The map is built at 65,536
entries instead of MAX_CT's 512,000 so that filling it stays quick; the contract is the same.
The LRU build's full map: test_limits_lru.py."""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Callable

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpf_nodeport import abi
from ebpf_nodeport.sync import Backend, Service
from ebpf_nodeport.testrun import run_prog
from netns_lab.bench.bpfcost import with_client, with_sport

from .conftest import loaded_cluster, reset_cluster
from .expect import Encap, Nat, check_result
from .paths import hop, reply_local, reply_tunnel, request_local, request_tunnel, routed
from .test_flows import _pod_frame
from .topo import (CLIENT, CONTROL, CUSTOMER, CUSTOMER_CIP, MAC_CALI, MAC_POD, NODE1, NODE2, NP_CUSTOMER, NP_WEB,
                   WEB, WEB_CIP, base_view, cport, reply, tcp, vxlan)

FILLER = int(ipaddress.IPv4Address("203.0.113.0"))   # made-up external clients of the filler entries


@pytest.fixture(scope="module")
def _hash_cluster(netns):
    """The table's cluster, the default (plain-hash) conntrack map at 65,536 entries (its own pins)."""
    with loaded_cluster(netns, {"MAX_CT": 65536}) as cl:
        assert cl["control"].maps.ct.info.type == abi.BPF_MAP_TYPE_HASH
        yield cl


@pytest.fixture
def cluster(_hash_cluster, netns):
    """This module's cluster: the plain-hash build, reset to the base view with empty conntrack."""
    with reset_cluster(_hash_cluster, netns) as cl:
        yield cl


def _filler(i: int) -> abi.CtKey:
    return abi.ct_key(FILLER + (i >> 8), 1024 + (i & 0xFF), CUSTOMER, 80, "tcp")[0]


def _live(now: int, **kw) -> abi.CtValue:
    """An established TCP entry seen now (so neither the lookup nor the GC takes it for expired)."""
    return abi.CtValue(created_ns=now, last_seen_ns=now, tcp_a=abi.TCPF_SYN | abi.TCPF_ACK,
                       tcp_b=abi.TCPF_SYN | abi.TCPF_ACK, **kw)


def _fill_ct(node, n: int, start: int = 0) -> None:
    """Entries start..n-1: NAT_REV entries of made-up external clients, all live."""
    v = _live(abi.ktime_ns(), type=abi.CT_NAT_REV, flags=abi.CT_F_NODEPORT, nat_addr=abi.ip2int(CONTROL),
              nat_port=NP_CUSTOMER)
    ct = node.maps.ct
    for i in range(start, n):
        ct.put(_filler(i), v)


@dataclass(frozen=True)
class FullCase:
    """A new connection's first packet on a node whose conntrack is full (or one entry short of it)."""
    name: str
    node: str
    entry: str
    frame: Callable[[int], bytes]          # client port -> the frame
    entries: int                           # entries the connection needs on that node
    holder: Callable[[int], tuple[abi.CtKey, abi.CtValue]] | None = None   # a live entry its 4-tuple meets


def _tunnelled(p: int) -> bytes:
    """A client's SYN to control's NodePort as control tunnels it to node1 (backend customer)."""
    inner = Ether(bytes(tcp(CLIENT, p, CUSTOMER, 80, "S", ttl=63, mac_src="00:00:00:00:00:00",
                            mac_dst="00:00:00:00:00:00")))
    return bytes(vxlan(CONTROL, NODE1, inner, fe_port=NP_CUSTOMER))


def _held_rev(p: int) -> tuple[abi.CtKey, abi.CtValue]:
    """control: (client:p, customer:80) already a live connection's (through node2's NodePort, say)."""
    return (abi.ct_key(CLIENT, p, CUSTOMER, 80, "tcp")[0],
            _live(abi.ktime_ns(), type=abi.CT_NAT_REV, flags=abi.CT_F_NODEPORT | abi.CT_F_TUNNEL,
                  nat_addr=abi.ip2int(NODE2), nat_port=NP_CUSTOMER, tun_peer=abi.ip2int(NODE1)))


def _held_tunnelled(p: int) -> tuple[abi.CtKey, abi.CtValue]:
    """node1: (client:p, customer:80) already the 4-tuple of a flow node2 tunnels."""
    return (abi.ct_key(CLIENT, p, CUSTOMER, 80, "tcp")[0],
            _live(abi.ktime_ns(), type=abi.CT_NORMAL, flags=abi.CT_F_FROM_TUNNEL | abi.CT_F_TUNNEL,
                  nat_addr=abi.ip2int(NODE2), nat_port=NP_CUSTOMER, tun_peer=abi.ip2int(NODE2)))


FULL_CASES = [
    FullCase("NodePort, remote backend (NAT_REV, then NAT_FWD)", "control", "from_hep",
             lambda p: bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), 2),
    FullCase("NodePort, local backend", "control", "from_hep",
             lambda p: bytes(tcp(CLIENT, p, CONTROL, NP_WEB, "S")), 2),
    FullCase("NodePort, 4-tuple taken: a replaced client port (PSNAT entry, then NAT_FWD)", "control", "from_hep",
             lambda p: bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), 2, _held_rev),
    FullCase("ClusterIP from a pod (NAT_FWD, then NAT_REV)", "control", "from_wep",
             lambda p: _pod_frame(bytes(tcp(WEB, p, CUSTOMER_CIP, 80, "S"))), 2),
    FullCase("hairpin: a pod to its own service", "control", "from_wep",
             lambda p: _pod_frame(bytes(tcp(WEB, p, WEB_CIP, 8080, "S"))), 2),
    FullCase("the node's own connection to a ClusterIP", "control", "to_hep",
             lambda p: bytes(tcp(CONTROL, p, CUSTOMER_CIP, 80, "S")), 2),
    FullCase("backend node: a tunnelled SYN", "node1", "from_hep", _tunnelled, 1),
    FullCase("backend node: a tunnelled SYN, 4-tuple taken (PSNAT entry, then NAT_FWD)", "node1", "from_hep",
             _tunnelled, 2, _held_tunnelled),
]


@pytest.fixture
def full_node(cluster):
    """Fill one node's conntrack with live entries (cleared again by the cluster fixture)."""
    def fill(name: str, n: int):
        node = cluster[name]
        _fill_ct(node, n)
        assert len(node.maps.ct) == n, f"{name}: could not fill conntrack to {n}"
        return node
    return fill


@pytest.mark.parametrize("case", FULL_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("free", [0, 1], ids=["full", "one entry free"])
def test_conntrack_full_drops_the_new_connection_and_creates_nothing(cluster, full_node, case, free):
    """A map with no room for a new connection's entries (none free, or one free for a connection
    that needs two: the first is created, the second refused, the first removed again): the packet
    is dropped, counted DROP_CT_FULL, and the map holds exactly what it held before. A connection
    of one entry with one free fits: it is created, and the map is full."""
    cap = cluster[case.node].maps.ct.info.max_entries
    assert cap == 65536
    node = full_node(case.node, cap - free - (1 if case.holder else 0))
    p = cport()
    if case.holder:
        k, v = case.holder(p)
        node.maps.ct.put(k, v)
    before = node.maps.ct.raw_items()
    assert len(before) == cap - free
    r = node.run(case.entry, case.frame(p), track_ct=False)
    if case.entries <= free:
        check_result(r, "OK", "DECAP", where=f"{case.name}, {free} free")
        assert len(node.maps.ct) == cap
        return
    check_result(r, "SHOT", "DROP_CT_FULL", where=f"{case.name}, {free} free")
    after = node.maps.ct.raw_items()
    assert after.keys() == before.keys(), (
        f"{case.name}: conntrack changed: added {len(after.keys() - before.keys())}, "
        f"removed {len(before.keys() - after.keys())}")
    assert after == before, f"{case.name}: an entry changed"


def _flood(node, n: int) -> dict[str, int]:
    """n SYNs to control's NodePort of a local backend, each another client's (a SYN flood): reasons counted."""
    syn = bytes(tcp(CLIENT, 1, CONTROL, NP_WEB, "S"))
    fd = node.prog_fds["from_hep"]
    hook = abi.HOOK_IDS["from_hep"]
    before = {r: node.maps.counter(hook, r) for r in ("NAT_NEW", "DROP_CT_FULL")}
    sent = 0
    for octet in range(1, 255):
        frame = with_client(syn, octet)
        for port in range(1024, 65024):
            if sent == n:
                return {r: node.maps.counter(hook, r) - c for r, c in before.items()}
            run_prog(fd, with_sport(frame, port))
            sent += 1
    raise AssertionError("ran out of client addresses")


def test_established_connections_survive_a_syn_flood_larger_than_the_table(cluster):
    """Three established connections through control (a NodePort with a local and one with a remote
    backend, a pod's ClusterIP connection), then more SYNs from other clients than the table has
    room for: the SYNs that fit are NATed, the rest dropped as DROP_CT_FULL; the established
    connections go on both ways, a new connection is refused; once the GC has removed the flood's
    expired half-open entries, new connections are admitted again."""
    control = cluster["control"]
    cap = control.maps.ct.info.max_entries
    w = "before the flood"
    # NodePort, remote backend (customer on node1), tunnelled: handshake done
    p1 = cport()
    at_pod = request_tunnel(cluster, bytes(tcp(CLIENT, p1, CONTROL, NP_CUSTOMER, "S")), "control", "node1",
                            (CUSTOMER, 80), first=True, dsr=False, fe_port=NP_CUSTOMER, where=w)
    out = reply_tunnel(cluster, reply(at_pod, "SA"), "control", "node1", (CONTROL, NP_CUSTOMER), where=w)
    remote_ack = reply(out, "A")
    request_tunnel(cluster, remote_ack, "control", "node1", (CUSTOMER, 80), first=False, dsr=False,
                   fe_port=NP_CUSTOMER, where=w)
    # NodePort, local backend (web on control)
    p2 = cport()
    at_pod = request_local(cluster, bytes(tcp(CLIENT, p2, CONTROL, NP_WEB, "S")), "control", (WEB, 8080),
                           first=True, where=w)
    out = reply_local(cluster, reply(at_pod, "SA"), "control", (CONTROL, NP_WEB), where=w)
    local_ack = reply(out, "A")
    request_local(cluster, local_ack, "control", (WEB, 8080), first=False, where=w)
    # a pod's connection to a ClusterIP (customer on node1)
    p3 = cport()
    r = hop(cluster, "control", "from_wep", _pod_frame(bytes(tcp(WEB, p3, CUSTOMER_CIP, 80, "S"))), "OK",
            "NAT_NEW", Nat(dst=(CUSTOMER, 80)), w)
    synack = reply(routed(r), "SA")
    r = hop(cluster, "control", "from_hep", synack, "OK", "CT_EST", None, w)
    r = hop(cluster, "control", "to_wep", routed(r), "OK", "REV_NAT", Nat(src=(CUSTOMER_CIP, 80)), w)
    pod_ack = _pod_frame(reply(r.data, "A"))
    hop(cluster, "control", "from_wep", pod_ack, "OK", "NAT_EST", Nat(dst=(CUSTOMER, 80)), w)
    held = len(control.maps.ct)
    assert held == 6, f"control: {held} entries for 3 connections"

    n = cap // 2 + 4096   # connections of two entries each: more than the table has room for
    got = _flood(control, n)
    assert got["NAT_NEW"] + got["DROP_CT_FULL"] == n, got
    assert got["NAT_NEW"] == (cap - held) // 2, f"SYNs admitted until the table was full: {got}"
    assert len(control.maps.ct) == held + 2 * got["NAT_NEW"] <= cap

    def established(w: str) -> None:
        request_tunnel(cluster, remote_ack, "control", "node1", (CUSTOMER, 80), first=False, dsr=False,
                       fe_port=NP_CUSTOMER, where=w)
        reply_tunnel(cluster, reply(at_pod_remote, "A"), "control", "node1", (CONTROL, NP_CUSTOMER), where=w)
        request_local(cluster, local_ack, "control", (WEB, 8080), first=False, where=w)
        reply_local(cluster, reply(at_pod_local, "A"), "control", (CONTROL, NP_WEB), where=w)
        hop(cluster, "control", "from_wep", pod_ack, "OK", "NAT_EST", Nat(dst=(CUSTOMER, 80)), w)
        r = hop(cluster, "control", "from_hep", synack, "OK", "CT_EST", None, w)
        hop(cluster, "control", "to_wep", routed(r), "OK", "REV_NAT", Nat(src=(CUSTOMER_CIP, 80)), w)

    at_pod_remote = request_tunnel(cluster, remote_ack, "control", "node1", (CUSTOMER, 80), first=False, dsr=False,
                                   fe_port=NP_CUSTOMER, where="after the flood")
    at_pod_local = request_local(cluster, local_ack, "control", (WEB, 8080), first=False, where="after the flood")
    established("after the flood")
    p4 = cport()
    fresh = bytes(tcp(CLIENT, p4, CONTROL, NP_CUSTOMER, "S"))
    r = control.run("from_hep", fresh, track_ct=False)
    check_result(r, "SHOT", "DROP_CT_FULL", where="a new connection, table full")

    # the GC at a time past the half-open timeout (20 s): the flood's entries go, the established stay
    gone = control.dp.gc(now_ns=abi.ktime_ns() + abi.CT_TIMEOUTS_NS["CT_TIMEOUT_TCP_SYN"] + abi.SEC_NS)
    assert gone == 2 * got["NAT_NEW"], f"GC removed {gone} entries, the flood left {2 * got['NAT_NEW']}"
    assert len(control.maps.ct) == held
    established("after the GC")
    r = control.run("from_hep", fresh, track_ct=False)
    check_result(r, "REDIRECT", "NAT_NEW", Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1),
                                                 fe_port=NP_CUSTOMER), where="a new connection after the GC")


N_SERVICES = 10_000


def _many_services() -> list[Service]:
    out = []
    for i in range(N_SERVICES):
        cip = str(ipaddress.IPv4Address("198.19.48.0") + i)              # 198.19.48.0 .. 198.19.87.15
        node_port = 30600 + i if i < 2000 else None                       # 30600 .. 32599
        be_ip = str(ipaddress.IPv4Address("198.19.16.70") + (i % 50)) if i % 2 else \
            str(ipaddress.IPv4Address("198.19.16.131") + (i % 50))         # node1 / node2 blocks
        out.append(Service(f"scale/svc{i}", "tcp", cip, 8000 + (i % 1000), node_port,
                           [Backend(be_ip, 1000 + i % 60000)]))
    return out


def test_ten_thousand_services_resolve(cluster):
    """10,000 services (+ the base ones) in control's nat_fe: first, middle and last resolve to
    their own backend, by ClusterIP from a pod and by NodePort from outside; yaobank still works."""
    extra = _many_services()
    view = dataclasses.replace(base_view(), services=base_view().services + extra)
    node = cluster["control"]
    node.dp.sync(view)
    assert len(node.maps.nat_fe) >= N_SERVICES + 2000
    for i in (0, 1, 1999, 5000, N_SERVICES - 1):
        s = extra[i]
        be = (s.backends[0].addr, s.backends[0].port)
        frame = Ether(bytes(tcp(WEB, cport(), s.cluster_ip, s.port, "S")))
        frame.src, frame.dst = MAC_POD, MAC_CALI
        r = node.run("from_wep", bytes(frame), track_ct=False)
        check_result(r, "OK", "NAT_NEW", Nat(dst=be), where=f"ClusterIP of service {i}")
        if s.node_port:
            peer = NODE1 if be[0].startswith("198.19.16.") and int(be[0].split(".")[3]) < 128 else NODE2
            r = node.run("from_hep", tcp(CLIENT, cport(), CONTROL, s.node_port, "S"), track_ct=False)
            check_result(r, "REDIRECT", "NAT_NEW",
                         Encap(CONTROL, peer, Nat(dst=be, ttl_dec=1), fe_port=s.node_port),
                         where=f"NodePort of service {i}")
    p = cport()
    request_tunnel(cluster, bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), "control", "node1", (CUSTOMER, 80),
                   first=True, dsr=False, fe_port=NP_CUSTOMER, where="yaobank with 10k services")
