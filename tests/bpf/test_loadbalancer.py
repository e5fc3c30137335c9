"""LoadBalancer paths that take more than one packet (issue 14, docs/loadbalancer.md): ClientIP affinity
over several connections and its expiry, Maglev picking the same backend on every node, and a
connection whose route moves onto the node of its own backend. Single-packet rows are in cases.py.

Time is injected as in test_conntrack: the affinity entry's timestamp is backdated on the
datapath's own clock (abi.ktime_ns).
"""
from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, TCP

from ebpf_nodeport import abi
from ebpf_nodeport.testrun import RunResult

from .expect import CtEntry, Decap, Encap, Nat, Same, check_result
from .paths import hop, routed
from .topo import (CLIENT, CLIENT2, CONTROL, EDGE_BACKENDS, LB_EDGE, LB_MAGLEV, LB_STICKY, MAC_NODE, NODE2, NODES,
                   POD_NODE, STICKY_BACKENDS, STICKY_S, SUMMARY1, SUMMARY2, base_view, cport, reply, tcp)

FLOWS = 16   # flows per spread check: all on one of 3 backends by chance: 3 * 3**-16


def _backend(res: RunResult) -> tuple[str, int]:
    """Where a from_hep run sent the client's packet: the inner destination if tunnelled, else the outer one."""
    p = res.inner if res.inner is not None else res.pkt
    return p[IP].dst, p[TCP].dport


def _open(cluster, node: str, client: str, fe: str, flags: str = "S") -> tuple[str, int]:
    """A new connection's first packet through `node`: NATed (to the kernel or tunnelled); its backend."""
    res = cluster.run(node, "from_hep", tcp(client, cport(), fe, 80, flags, mac_dst=MAC_NODE[node]))
    check_result(res, {"OK", "REDIRECT"}, "NAT_NEW", where=f"{node} {client}->{fe} {flags}")
    return _backend(res)


def _affinity(cluster, node: str) -> dict[tuple[str, str], tuple[str, int]]:
    """A node's affinity map: (frontend, client) -> backend."""
    out = {}
    for k, v in cluster[node].maps.affinity.items():
        key, val = k.to_dict(), v.to_dict()
        out[(f"{key['fe_addr']}:{k.fe_port}", key["client"])] = (val["be_addr"], v.be_port)
    return out


def _backdate_affinity(cluster, node: str, seconds: float) -> None:
    """Make every affinity entry of `node` look last used `seconds` ago."""
    now = abi.ktime_ns()
    if now <= seconds * 1e9:
        pytest.skip(f"machine up {now / 1e9:.0f} s: cannot backdate an affinity entry by {seconds} s")
    m = cluster[node].maps.affinity
    for k, v in list(m.items()):
        v.last_ns = now - int(seconds * 1e9)
        m.put(k, v)


@pytest.mark.parametrize("node", ["control", "node1"])
def test_affinity_holds_then_expires(cluster, node: str) -> None:
    """sessionAffinity ClientIP: every new connection of a client within timeoutSeconds goes to the first one's
    backend (one affinity entry per client); one idle longer than the timeout is picked afresh."""
    cluster.sync(base_view(lb=True))
    first = _open(cluster, node, CLIENT, LB_STICKY)
    assert first in STICKY_BACKENDS
    picks = {_open(cluster, node, CLIENT, LB_STICKY) for _ in range(FLOWS)}
    assert picks == {first}, f"new connections of one client within the timeout spread: {picks}"
    other = _open(cluster, node, CLIENT2, LB_STICKY)
    assert _affinity(cluster, node) == {(f"{LB_STICKY}:80", CLIENT): first, (f"{LB_STICKY}:80", CLIENT2): other}
    _backdate_affinity(cluster, node, STICKY_S - 5)   # idle, but within the timeout: still held
    assert _open(cluster, node, CLIENT, LB_STICKY) == first
    fresh = set()
    for _ in range(FLOWS):   # each connection after an idle time over the timeout is a fresh pick
        _backdate_affinity(cluster, node, STICKY_S + 1)
        fresh.add(_open(cluster, node, CLIENT, LB_STICKY))
    assert len(fresh) > 1 and fresh <= set(STICKY_BACKENDS), f"picks after the timeout: {fresh}"


def test_no_affinity_spreads(cluster) -> None:
    """Control of the above: the same service without affinity spreads one client's connections."""
    view = base_view(lb=True)
    for s in view.services:
        if s.lb_ip == LB_STICKY:
            s.affinity_timeout = None
    cluster.sync(view)
    assert len({_open(cluster, "control", CLIENT, LB_STICKY) for _ in range(FLOWS)}) > 1
    assert _affinity(cluster, "control") == {}


def test_maglev_same_pick_on_every_node(cluster) -> None:
    """A Maglev frontend: a connection opened through control and its mid-flow packets arriving at node1 or node2
    (no conntrack entry there) all go to the one backend; across flows both backends are used."""
    cluster.sync(base_view(lb=True))
    picked = set()
    for _ in range(FLOWS):
        p = cport()
        syn = cluster.run("control", "from_hep", tcp(CLIENT, p, LB_MAGLEV, 80))
        check_result(syn, "REDIRECT", "NAT_NEW", where="SYN via control")
        be = _backend(syn)
        for node in ("node1", "node2"):
            ack = cluster.run(node, "from_hep", tcp(CLIENT, p, LB_MAGLEV, 80, "A", seq=1001, ack=7001,
                                                      mac_dst=MAC_NODE[node]))
            check_result(ack, {"OK", "REDIRECT"}, "NAT_NEW", where=f"mid-flow ACK via {node}")
            assert _backend(ack) == be, f"flow {p}: control picked {be}, {node} {_backend(ack)}"
        picked.add(be)
    assert picked == {(SUMMARY1, 80), (SUMMARY2, 80)}, picked


@pytest.mark.parametrize("mode", ["tunnel", "dsr"])
def test_maglev_route_moves_onto_the_backends_node(cluster, mode: str) -> None:
    """The route to a Maglev frontend moves mid-connection from control to node2, the node of the connection's
    backend: node2's mid-flow pick is its own pod, and it takes the connection over from the entry control's
    tunnel left: the pod sees the same client port, its replies are reverse-NATed on node2, and a request
    control tunnelled before the move (arriving late) is still delivered to the same socket."""
    cluster.sync(base_view(lb=True, mode=mode))
    dsr, fe, p = mode == "dsr", (LB_EDGE, 80), cport()
    syn = tcp(CLIENT, p, LB_EDGE, 80)
    r = cluster.run("control", "from_hep", syn)
    be = _backend(r)
    assert be in EDGE_BACKENDS and POD_NODE[be[0]] == "node2"
    check_result(r, "REDIRECT", "NAT_NEW", Encap(CONTROL, NODE2, Nat(dst=be, ttl_dec=1), dsr=dsr, fe_port=80,
                                                 fe_addr=LB_EDGE), where="SYN via control")
    d = hop(cluster, "node2", "from_hep", r.data, "OK", "DECAP", Decap(Nat()), "SYN decap")
    at_pod = hop(cluster, "node2", "to_wep", routed(d), "OK", "CT_EST", Same(), "SYN to pod").data
    synack = reply(at_pod)
    if dsr:
        to_client = hop(cluster, "node2", "from_wep", synack, "REDIRECT", "DSR_REPLY", Nat(src=fe, ttl_dec=1),
                        "SYN-ACK").data
    else:
        enc = hop(cluster, "node2", "from_wep", synack, "REDIRECT", "ENCAP", None, "SYN-ACK out")
        to_client = hop(cluster, "control", "from_hep", enc.data, "REDIRECT", "REV_NAT", Decap(Nat(src=fe, ttl_dec=1)),
                        "SYN-ACK rev-NAT").data
    ack = reply(to_client, "A")
    late = cluster.run("control", "from_hep", ack)   # tunnelled before the move, delivered after it
    check_result(late, "REDIRECT", "ENCAP", where="ACK via control")

    # The route moved: the client's next segment arrives at node2 itself.
    data = reply(to_client, "PA", b"GET / HTTP/1.1\r\n\r\n")
    moved = cluster.run("node2", "from_hep", data)
    check_result(moved, "OK", "NAT_NEW", Nat(dst=be), where="first segment via node2")
    rev = CtEntry("NAT_REV", (CLIENT, p), be, nat=fe, not_=("FROM_TUNNEL", "TUNNEL", "PSNAT", "DSR"))
    rev.check_in({k: after for k, (_, after) in moved.ct.changed.items()}, "node2 took the tunnelled entry over")
    assert not moved.ct.removed, moved.ct.removed
    CtEntry("NAT_FWD", (CLIENT, p), fe, nat=be).check_in(moved.ct.added, "node2's own NAT_FWD")
    at_pod = hop(cluster, "node2", "to_wep", routed(moved), "OK", "CT_EST", Same(), "segment to pod").data
    hop(cluster, "node2", "from_wep", reply(at_pod, "A", b"HTTP/1.1 200 OK\r\n"), "REDIRECT", "REV_NAT",
        Nat(src=fe, ttl_dec=1), "reply via node2")
    hop(cluster, "node2", "from_hep", late.data, "OK", "DECAP", Decap(Nat()), "late tunnelled ACK")
    hop(cluster, "node2", "from_hep", data, "OK", "NAT_EST", Nat(dst=be), "the segment retransmitted via node2")


@pytest.mark.parametrize("mode", ["tunnel", "dsr"])
def test_maglev_route_moves_off_the_backends_node(cluster, mode: str) -> None:
    """The other way: a connection opened through node2 to its own pod, then the route moves to control. control's
    mid-flow Maglev pick is that pod, tunnelled to node2, which delivers it to the same socket (its local entry
    is that connection) and keeps reverse-NATing the replies itself, straight to the client."""
    cluster.sync(base_view(lb=True, mode=mode))
    fe, p = (LB_EDGE, 80), cport()
    r = cluster.run("node2", "from_hep", tcp(CLIENT, p, LB_EDGE, 80, mac_dst=MAC_NODE["node2"]))
    be = _backend(r)
    check_result(r, "OK", "NAT_NEW", Nat(dst=be), where="SYN via node2")
    at_pod = hop(cluster, "node2", "to_wep", routed(r), "OK", "CT_EST", Same(), "SYN to pod").data
    to_client = hop(cluster, "node2", "from_wep", reply(at_pod), "REDIRECT", "REV_NAT", Nat(src=fe, ttl_dec=1),
                    "SYN-ACK").data
    moved = cluster.run("control", "from_hep", reply(to_client, "PA", b"GET / HTTP/1.1\r\n\r\n"))
    check_result(moved, "REDIRECT", "NAT_NEW", Encap(CONTROL, NODE2, Nat(dst=be, ttl_dec=1), dsr=mode == "dsr",
                                                     fe_port=80, fe_addr=LB_EDGE), where="segment via control")
    d = hop(cluster, "node2", "from_hep", moved.data, "OK", "DECAP", Decap(Nat()), "decap on node2")
    at_pod = hop(cluster, "node2", "to_wep", routed(d), "OK", "CT_EST", Same(), "segment to pod").data
    hop(cluster, "node2", "from_wep", reply(at_pod, "A", b"HTTP/1.1 200 OK\r\n"), "REDIRECT", "REV_NAT",
        Nat(src=fe, ttl_dec=1), "reply from node2")
