"""Source-port collisions (docs/datapath.md, "Source-port collisions"): two live connections
that would be one 4-tuple at the backend pod, e.g. one client port through two nodes'
NodePorts to the same pod. The second gets a client port from the PSNAT range; both keep
working, and every packet the client sees carries its own port.

Each test walks the first connection, then the colliding one, hop by hop across the
simulated nodes, then traffic of both again (the first must not have been hijacked).
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from ebpf_nodeport import abi
from ebpf_nodeport.datapath import gc_conntrack
from ebpf_nodeport.abi import PSNAT_LEN, PSNAT_START
from ebpf_nodeport.testrun import parse_vxlan

from .expect import Decap, Encap, Nat, Same
from .paths import (hop, reply_dsr, reply_local, reply_tunnel, request_local, request_tunnel, routed)
from .test_flows import _entry
from .test_icmp import check_error, icmp_err, ip_of
from .topo import (CLIENT, CONTROL, CUSTOMER, NODE1, NODE2, NODES, NP_CUSTOMER, NP_ECHO, base_view, cport,
                   reply, tcp, udp)

BE = (CUSTOMER, 80)


def _l4(frame: bytes):
    p = Ether(frame)
    return p[TCP] if TCP in p else p[UDP]


def _psnat_port(frame: bytes) -> int:
    """The client port the pod sees; it must come from the PSNAT range."""
    port = _l4(frame).sport
    assert PSNAT_START <= port < PSNAT_START + PSNAT_LEN, f"client port {port} is not from the PSNAT range"
    return port


def request_tunnel_psnat(cluster, frame: bytes, ingress: str, *, first: bool, dsr: bool, fe_port: int,
                         new_port: int | None, be=BE, where: str) -> tuple[bytes, int]:
    """Client -> ingress (DNAT + VXLAN, client port untouched) -> node1 decap with the client
    port replaced (PSNAT on the first packet, DECAP after). Returns (frame at the pod, port)."""
    r1 = hop(cluster, ingress, "from_hep", frame, "REDIRECT", "NAT_NEW" if first else "ENCAP",
             Encap(NODES[ingress], NODE1, Nat(dst=be, ttl_dec=1), dsr=dsr, fe_port=fe_port), where)
    r2 = hop(cluster, "node1", "from_hep", r1.data, "OK", "PSNAT" if first else "DECAP", None, where)
    port = _psnat_port(r2.data) if new_port is None else new_port
    Decap(Nat(src=(CLIENT, port))).check(r2)
    r3 = hop(cluster, "node1", "to_wep", routed(r2), "OK", "CT_EST", Same(), where)
    return r3.data, port


def reply_tunnel_psnat(cluster, frame: bytes, ingress: str, client_port: int, fe, *, where: str) -> bytes:
    """Pod reply to the replaced port -> node1 restores the client's port, VXLAN back ->
    ingress reverse NAT. Returns the frame toward the client."""
    r1 = hop(cluster, "node1", "from_wep", frame, "REDIRECT", "ENCAP",
             Encap(NODE1, NODES[ingress], Nat(dst=(CLIENT, client_port), ttl_dec=1), fe_port=0), where)
    r2 = hop(cluster, ingress, "from_hep", r1.data, "REDIRECT", "REV_NAT", Decap(Nat(src=fe, ttl_dec=1)), where)
    return r2.data


@pytest.mark.parametrize("first_via", ["control", "node2"])
def test_same_client_port_through_two_nodes(cluster, first_via):
    """Tunnel mode: client:p via one node, then client:p via the other, both to the customer
    pod on node1. node1 gives the second a PSNAT port; replies go back each through its own
    ingress node with the client's own port; the first connection is untouched."""
    second_via = "node2" if first_via == "control" else "control"
    p = cport()
    fe1, fe2 = (NODES[first_via], NP_CUSTOMER), (NODES[second_via], NP_CUSTOMER)
    kw = dict(dsr=False, fe_port=NP_CUSTOMER)
    a_pod = request_tunnel(cluster, bytes(tcp(CLIENT, p, fe1[0], NP_CUSTOMER, "S")), first_via, "node1", BE,
                           first=True, where="A", **kw)
    a_cli = reply_tunnel(cluster, reply(a_pod, "SA"), first_via, "node1", fe1, where="A")

    b_pod, q = request_tunnel_psnat(cluster, bytes(tcp(CLIENT, p, fe2[0], NP_CUSTOMER, "S")), second_via,
                                    first=True, new_port=None, where="B", **kw)
    b_cli = reply_tunnel_psnat(cluster, reply(b_pod, "SA"), second_via, p, fe2, where="B")
    got = Ether(b_cli)
    assert (got[IP].src, got[TCP].sport, got[IP].dst, got[TCP].dport) == (fe2[0], NP_CUSTOMER, CLIENT, p)

    # Both go on: A still through its own ingress with its own port, B through the PSNAT port.
    a_pod = request_tunnel(cluster, reply(a_cli, "PA", b"GET /a"), first_via, "node1", BE, first=False,
                           where="A later", **kw)
    assert _l4(a_pod).sport == p
    reply_tunnel(cluster, reply(a_pod, "PA", b"page a"), first_via, "node1", fe1, where="A later")
    b_pod, _ = request_tunnel_psnat(cluster, reply(b_cli, "PA", b"GET /b"), second_via, first=False,
                                    new_port=q, where="B later", **kw)
    reply_tunnel_psnat(cluster, reply(b_pod, "PA", b"page b"), second_via, p, fe2, where="B later")

    norm = _entry(cluster, "node1", (CLIENT, q), BE)
    assert norm.type == abi.CT_NORMAL and norm.flags & abi.CT_F_PSNAT
    assert norm.cl_port == p and norm.tun_peer == abi.ip2int(NODES[second_via])
    fwd = _entry(cluster, "node1", (CLIENT, p), fe2)
    assert fwd.type == abi.CT_NAT_FWD and fwd.cl_port == q
    first = _entry(cluster, "node1", (CLIENT, p), BE)
    assert first.tun_peer == abi.ip2int(NODES[first_via]) and not first.cl_port


def test_dsr_collision_at_the_backend_node(cluster):
    """DSR: the backend node replaces the port and gives the client its own back in the DSR reply."""
    cluster.sync(base_view(mode="dsr"))
    p = cport()
    kw = dict(dsr=True, fe_port=NP_CUSTOMER)
    a_pod = request_tunnel(cluster, bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), "control", "node1", BE,
                           first=True, where="A", **kw)
    b_pod, q = request_tunnel_psnat(cluster, bytes(tcp(CLIENT, p, NODE2, NP_CUSTOMER, "S")), "node2", first=True,
                                    new_port=None, where="B", **kw)
    r = hop(cluster, "node1", "from_wep", reply(b_pod, "SA"), "REDIRECT", "DSR_REPLY",
            Nat(src=(NODE2, NP_CUSTOMER), dst=(CLIENT, p), ttl_dec=1), "B reply")
    assert parse_vxlan(r.data) is None
    reply_dsr(cluster, reply(a_pod, "SA"), "node1", (CONTROL, NP_CUSTOMER), where="A reply")


@pytest.mark.parametrize("order", ["tunnelled first", "local first"])
def test_local_ingress_and_tunnelled_collide(cluster, order):
    """node1 is both the ingress (client:p -> node1:NodePort, local backend) and the backend node
    of client:p tunnelled from control: whichever comes second gets the PSNAT port."""
    p = cport()
    fe_c, fe_l = (CONTROL, NP_CUSTOMER), (NODE1, NP_CUSTOMER)
    kw = dict(dsr=False, fe_port=NP_CUSTOMER)
    local_syn = bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER, "S"))
    tun_syn = bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S"))
    if order == "tunnelled first":
        t_pod = request_tunnel(cluster, tun_syn, "control", "node1", BE, first=True, where="tunnelled", **kw)
        r = hop(cluster, "node1", "from_hep", local_syn, "OK", "PSNAT", None, "local")
        q = _psnat_port(r.data)
        Nat(src=(CLIENT, q), dst=BE).check(r)
        l_pod = hop(cluster, "node1", "to_wep", routed(r), "OK", "CT_EST", Same(), "local").data
        out = hop(cluster, "node1", "from_wep", reply(l_pod, "SA"), "REDIRECT", "REV_NAT",
                  Nat(src=fe_l, dst=(CLIENT, p), ttl_dec=1), "local reply").data
        # later packet: the FWD entry carries the replaced port
        hop(cluster, "node1", "from_hep", reply(out, "A"), "OK", "NAT_EST", Nat(src=(CLIENT, q), dst=BE),
            "local later")
        reply_tunnel(cluster, reply(t_pod, "SA"), "control", "node1", fe_c, where="tunnelled reply")
    else:
        l_pod = request_local(cluster, local_syn, "node1", BE, first=True, where="local")
        t_pod, _ = request_tunnel_psnat(cluster, tun_syn, "control", first=True, new_port=None,
                                        where="tunnelled", **kw)
        reply_tunnel_psnat(cluster, reply(t_pod, "SA"), "control", p, fe_c, where="tunnelled reply")
        reply_local(cluster, reply(l_pod, "SA"), "node1", fe_l, where="local reply")


def test_collision_at_the_ingress_node_turns_dsr_off(cluster):
    """The ingress node finds (client, backend) taken: it replaces the port itself, and the flow
    is not DSR (only the ingress node can give replies the client's port back)."""
    cluster.sync(base_view(mode="dsr"))
    p = cport()
    k, _ = abi.ct_key(CLIENT, p, CUSTOMER, 80, "tcp")
    squatter = abi.CtValue(created_ns=abi.ktime_ns(), last_seen_ns=abi.ktime_ns(), type=abi.CT_NAT_REV,
                           flags=abi.CT_F_NODEPORT, nat_addr=abi.ip2int(CONTROL), nat_port=NP_CUSTOMER + 1)
    cluster["control"].maps.ct.put(k, squatter)
    r1 = hop(cluster, "control", "from_hep", bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), "REDIRECT",
             "PSNAT", None, "ingress")
    inner = parse_vxlan(r1.data)
    assert inner is not None and not inner.dsr_flags, "a PSNATed flow must not be DSR"
    q = _psnat_port(inner.inner)
    Encap(CONTROL, NODE1, Nat(src=(CLIENT, q), dst=BE, ttl_dec=1), dsr=False, fe_port=NP_CUSTOMER).check(r1)
    r2 = hop(cluster, "node1", "from_hep", r1.data, "OK", "DECAP", Decap(Nat()), "backend")
    pod = hop(cluster, "node1", "to_wep", routed(r2), "OK", "CT_EST", Same(), "backend").data
    r3 = hop(cluster, "node1", "from_wep", reply(pod, "SA"), "REDIRECT", "ENCAP",
             Encap(NODE1, CONTROL, Nat(ttl_dec=1), fe_port=0), "reply")
    hop(cluster, "control", "from_hep", r3.data, "REDIRECT", "REV_NAT",
        Decap(Nat(src=(CONTROL, NP_CUSTOMER), dst=(CLIENT, p), ttl_dec=1)), "reply at ingress")
    assert cluster["control"].maps.ct.get(k).nat_port == NP_CUSTOMER + 1, "the other connection's entry changed"


def test_udp_collision_and_port_unreachable_quote(cluster):
    """UDP collides the same way; an ICMP error the pod sends about the PSNATed flow reaches the
    client quoting the client's own packet (its port, its checksum) as sent."""
    p = cport()
    kw = dict(dsr=False, fe_port=NP_ECHO)
    request_tunnel(cluster, bytes(udp(CLIENT, p, CONTROL, NP_ECHO, b"one")), "control", "node1", (CUSTOMER, 7),
                   first=True, where="A", **kw)
    sent = bytes(udp(CLIENT, p, NODE2, NP_ECHO, b"two"))
    b_pod, q = request_tunnel_psnat(cluster, sent, "node2", first=True, new_port=None, be=(CUSTOMER, 7),
                                    where="B", **kw)
    back = reply_tunnel_psnat(cluster, reply(b_pod), "node2", p, (NODE2, NP_ECHO), where="B echo")
    assert bytes(Ether(back)[UDP].payload) == b"two"

    err = icmp_err(CUSTOMER, CLIENT, ip_of(b_pod), pod=True)
    r1 = hop(cluster, "node1", "from_wep", err, "REDIRECT", "ENCAP", None, "error at the backend node")
    r2 = hop(cluster, "node2", "from_hep", r1.data, "REDIRECT", "REV_NAT", None, "error at the ingress node")
    check_error(r2.data, src=NODE2, dst=CLIENT, q_src=(CLIENT, p), q_dst=(NODE2, NP_ECHO),
                q_l4=ip_of(sent)[20:28])


def test_error_toward_a_psnated_backend_flow(cluster):
    """An error from the client's side about a reply (here: frag-needed sent to the ingress node)
    reaches the pod quoting the reply as the pod sent it, i.e. to the PSNAT port."""
    p = cport()
    kw = dict(dsr=False, fe_port=NP_ECHO)
    request_tunnel(cluster, bytes(udp(CLIENT, p, CONTROL, NP_ECHO, b"one")), "control", "node1", (CUSTOMER, 7),
                   first=True, where="A", **kw)
    b_pod, q = request_tunnel_psnat(cluster, bytes(udp(CLIENT, p, NODE2, NP_ECHO, b"two")), "node2", first=True,
                                    new_port=None, be=(CUSTOMER, 7), where="B", **kw)
    pod_reply = reply(b_pod)
    to_client = reply_tunnel_psnat(cluster, pod_reply, "node2", p, (NODE2, NP_ECHO), where="B echo")
    err = icmp_err("198.19.15.1", NODE2, ip_of(to_client), type_=3, code=4, mtu=1400)
    r1 = hop(cluster, "node2", "from_hep", err, "REDIRECT", "ENCAP", None, "error at the ingress node")
    r2 = hop(cluster, "node1", "from_hep", r1.data, "OK", "DECAP", None, "error at the backend node")
    check_error(r2.data, src="198.19.15.1", dst=CUSTOMER, q_src=(CUSTOMER, 7), q_dst=(CLIENT, q),
                q_l4=ip_of(pod_reply)[20:28], code=4, mtu=1400)


def test_no_free_psnat_port_drops_and_creates_nothing(cluster):
    """Every PSNAT port of (client, backend) taken: the SYN is dropped and counted, and the
    connections holding those ports are left alone."""
    p = cport()
    ct = cluster["node1"].maps.ct
    now = abi.ktime_ns()
    for port in [p, *range(PSNAT_START, PSNAT_START + PSNAT_LEN)]:
        k, a = abi.ct_key(CLIENT, port, CUSTOMER, 80, "tcp")
        ct.put(k, abi.CtValue(created_ns=now, last_seen_ns=now, type=abi.CT_NORMAL,
                              flags=abi.CT_F_FROM_TUNNEL | abi.CT_F_TUNNEL | (0 if a else abi.CT_F_CLIENT_IS_B),
                              nat_addr=abi.ip2int(CONTROL), nat_port=NP_CUSTOMER, tun_peer=abi.ip2int(CONTROL)))
    before = len(ct)
    r = hop(cluster, "node1", "from_hep", bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER, "S")), "SHOT",
            "DROP_PSNAT_FAIL", None, "no port left")
    assert not r.ct.added and len(ct) == before


def test_closed_connection_is_reused_without_psnat(cluster):
    """A tuple whose connection has closed (FIN both ways) is free for a new SYN through another
    node: no PSNAT then (the pod's TIME-WAIT handles the reuse, as it would without NAT)."""
    p = cport()
    kw = dict(dsr=False, fe_port=NP_CUSTOMER)
    fe = (CONTROL, NP_CUSTOMER)
    a_pod = request_tunnel(cluster, bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), "control", "node1", BE,
                           first=True, where="A", **kw)
    a_cli = reply_tunnel(cluster, reply(a_pod, "SA"), "control", "node1", fe, where="A")
    a_pod = request_tunnel(cluster, reply(a_cli, "FA"), "control", "node1", BE, first=False, where="A", **kw)
    reply_tunnel(cluster, reply(a_pod, "FA"), "control", "node1", fe, where="A")
    request_tunnel(cluster, bytes(tcp(CLIENT, p, NODE2, NP_CUSTOMER, "S", seq=9000)), "node2", "node1", BE,
                   first=True, where="B reuses the tuple", **kw)


def test_gc_keeps_the_backend_fwd_entry_while_its_flow_lives(cluster):
    """The backend node's NAT_FWD (client, ingress node:NodePort) follows its NORMAL entry: the GC
    keeps it while that lives and deletes it with it (datapath.gc_conntrack, the C's rule)."""
    p = cport()
    kw = dict(dsr=False, fe_port=NP_CUSTOMER)
    request_tunnel(cluster, bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), "control", "node1", BE, first=True,
                   where="A", **kw)
    _, q = request_tunnel_psnat(cluster, bytes(tcp(CLIENT, p, NODE2, NP_CUSTOMER, "S")), "node2", first=True,
                                new_port=None, where="B", **kw)
    ct = cluster["node1"].maps.ct
    fwd_k, _ = abi.ct_key(CLIENT, p, NODE2, NP_CUSTOMER, "tcp")
    norm_k, _ = abi.ct_key(CLIENT, q, CUSTOMER, 80, "tcp")
    assert gc_conntrack(ct) == 0 and ct.get(fwd_k) is not None
    ct.delete(norm_k)
    assert gc_conntrack(ct) == 1 and ct.get(fwd_k) is None
