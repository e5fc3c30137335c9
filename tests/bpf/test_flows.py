"""Whole connections walked across simulated nodes (no lab): each hop's output is the next
hop's input, each node with its own maps, every hop checked against the contract."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from ebpf_nodeport import abi
from ebpf_nodeport.testrun import parse_vxlan

from .expect import Nat, Same, check_result
from .paths import (hop, reply_dsr, reply_local, reply_tunnel, request_local, request_tunnel, routed)
from .topo import (CLIENT, CLIENT2, CONTROL, CUSTOMER, CUSTOMER_CIP, DATABASE, DATABASE_CIP, MAC_CALI,
                   MAC_POD, NODE1, NODE2, NODES, NP_CUSTOMER, NP_ECHO, NP_WEB, SUMMARY1, SUMMARY2,
                   SUMMARY_CIP, WEB, base_view, cport, reply, tcp, udp)


def _entry(cluster, node: str, client, server, proto: str = "tcp"):
    k, _ = abi.ct_key(client[0], client[1], server[0], server[1], proto)
    v = cluster[node].maps.ct.get(k)
    assert v is not None, f"{node}: no conntrack entry {client}<->{server}"
    return v


def _sides(v):
    """(client flags, server flags) of an entry."""
    return (v.tcp_b, v.tcp_a) if v.flags & abi.CT_F_CLIENT_IS_B else (v.tcp_a, v.tcp_b)


def _pkts(v):
    """(packets from the client, packets from the server)."""
    return (v.packets_ba, v.packets_ab) if v.flags & abi.CT_F_CLIENT_IS_B else (v.packets_ab, v.packets_ba)


SYN, ACK, FIN, RST = abi.TCPF_SYN, abi.TCPF_ACK, abi.TCPF_FIN, abi.TCPF_RST


# ---- Tunnel mode -----------------------------------------------------------------------------

@pytest.mark.parametrize("ingress", ["control", "node2"])
def test_tunnel_tcp_connection(cluster, ingress):
    """Handshake, data both ways, FIN both ways through ingress -> node1 and back; conntrack
    on both nodes records TCP flags per direction and packet counts."""
    p, fe, be = cport(), (NODES[ingress], NP_CUSTOMER), (CUSTOMER, 80)
    w = f"tunnel tcp via {ingress}"
    kw = dict(dsr=False, fe_port=NP_CUSTOMER, where=w)
    syn = bytes(tcp(CLIENT, p, fe[0], fe[1], "S"))
    at_pod = request_tunnel(cluster, syn, ingress, "node1", be, first=True, **kw)
    assert Ether(at_pod)[IP].src == CLIENT, "the pod must see the client's own address"
    to_client = reply_tunnel(cluster, reply(at_pod, "SA"), ingress, "node1", fe, where=w)
    assert Ether(to_client)[TCP].flags == "SA"
    at_pod = request_tunnel(cluster, reply(to_client, "A"), ingress, "node1", be, first=False, **kw)
    at_pod = request_tunnel(cluster, reply(to_client, "PA", b"GET / HTTP/1.0\r\n\r\n"), ingress, "node1", be,
                            first=False, **kw)
    to_client = reply_tunnel(cluster, reply(at_pod, "PA", b"HTTP/1.0 200 OK\r\n\r\nhello"), ingress, "node1",
                             fe, where=w)
    at_pod = request_tunnel(cluster, reply(to_client, "FA"), ingress, "node1", be, first=False, **kw)
    to_client = reply_tunnel(cluster, reply(at_pod, "FA"), ingress, "node1", fe, where=w)
    request_tunnel(cluster, reply(to_client, "A"), ingress, "node1", be, first=False, **kw)

    rev = _entry(cluster, ingress, (CLIENT, p), be)
    assert _sides(rev) == (SYN | ACK | FIN, SYN | ACK | FIN), f"{ingress} NAT_REV tcp flags {_sides(rev)}"
    assert _pkts(rev) == (5, 3), f"{ingress} NAT_REV packets (client, server) = {_pkts(rev)}"
    norm = _entry(cluster, "node1", (CLIENT, p), be)
    assert norm.type == abi.CT_NORMAL and _sides(norm) == (SYN | ACK | FIN, SYN | ACK | FIN)
    assert _pkts(norm) == (5, 3), f"node1 NORMAL packets (client, server) = {_pkts(norm)}"


def test_tunnel_udp_roundtrip(cluster):
    p, fe, be = cport(), (CONTROL, NP_ECHO), (CUSTOMER, 7)
    kw = dict(dsr=False, fe_port=NP_ECHO, where="tunnel udp")
    at_pod = request_tunnel(cluster, bytes(udp(CLIENT, p, CONTROL, NP_ECHO, b"ping")), "control", "node1", be,
                            first=True, **kw)
    to_client = reply_tunnel(cluster, reply(at_pod), "control", "node1", fe, where="tunnel udp")
    got = Ether(to_client)
    assert (got[IP].src, got[UDP].sport, got[IP].dst, got[UDP].dport) == (CONTROL, NP_ECHO, CLIENT, p)
    assert bytes(got[UDP].payload) == b"ping"
    request_tunnel(cluster, reply(to_client), "control", "node1", be, first=False, **kw)


def test_local_backend_tcp_connection(cluster):
    """NodePort on node1 with the backend on node1: DNAT in from_hep, reverse NAT in from_wep."""
    p, fe, be = cport(), (NODE1, NP_CUSTOMER), (CUSTOMER, 80)
    w = "local backend"
    at_pod = request_local(cluster, bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER, "S")), "node1", be, first=True,
                           where=w)
    to_client = reply_local(cluster, reply(at_pod, "SA"), "node1", fe, where=w)
    at_pod = request_local(cluster, reply(to_client, "A"), "node1", be, first=False, where=w)
    to_client = reply_local(cluster, reply(at_pod, "PA", b"data"), "node1", fe, where=w)
    at_pod = request_local(cluster, reply(to_client, "FA"), "node1", be, first=False, where=w)
    reply_local(cluster, reply(at_pod, "FA"), "node1", fe, where=w)
    rev = _entry(cluster, "node1", (CLIENT, p), be)
    assert _sides(rev) == (SYN | ACK | FIN, SYN | ACK | FIN)


def test_local_backend_udp_roundtrip(cluster):
    p, fe, be = cport(), (NODE1, NP_ECHO), (CUSTOMER, 7)
    at_pod = request_local(cluster, bytes(udp(CLIENT, p, NODE1, NP_ECHO)), "node1", be, first=True, where="udp")
    reply_local(cluster, reply(at_pod), "node1", fe, where="udp")


# ---- DSR ---------------------------------------------------------------------------------------

def test_dsr_tcp_connection(cluster):
    """DSR: request tunnelled with the DSR flag; the backend node answers the client directly
    with source = ingress node : NodePort; the ingress node never sees a reply."""
    cluster.sync(base_view(mode="dsr"))
    p, fe, be = cport(), (CONTROL, NP_CUSTOMER), (CUSTOMER, 80)
    kw = dict(dsr=True, fe_port=NP_CUSTOMER, where="dsr")
    at_pod = request_tunnel(cluster, bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), "control", "node1", be,
                            first=True, **kw)
    to_client = reply_dsr(cluster, reply(at_pod, "SA"), "node1", fe, where="dsr")
    got = Ether(to_client)
    assert (got[IP].src, got[TCP].sport, got[IP].dst, got[TCP].dport) == (CONTROL, NP_CUSTOMER, CLIENT, p)
    assert parse_vxlan(to_client) is None, "a DSR reply is not encapsulated"
    at_pod = request_tunnel(cluster, reply(to_client, "A"), "control", "node1", be, first=False, **kw)
    to_client = reply_dsr(cluster, reply(at_pod, "PA", b"hello"), "node1", fe, where="dsr")
    at_pod = request_tunnel(cluster, reply(to_client, "FA"), "control", "node1", be, first=False, **kw)
    reply_dsr(cluster, reply(at_pod, "FA"), "node1", fe, where="dsr")
    assert _entry(cluster, "control", (CLIENT, p), be).flags & abi.CT_F_DSR
    assert _entry(cluster, "node1", (CLIENT, p), be).flags & abi.CT_F_DSR


def test_dsr_udp_roundtrip(cluster):
    cluster.sync(base_view(mode="dsr"))
    p, fe, be = cport(), (CONTROL, NP_ECHO), (CUSTOMER, 7)
    at_pod = request_tunnel(cluster, bytes(udp(CLIENT, p, CONTROL, NP_ECHO)), "control", "node1", be, first=True,
                            dsr=True, fe_port=NP_ECHO, where="dsr udp")
    reply_dsr(cluster, reply(at_pod), "node1", fe, where="dsr udp")


def test_dsr_optout_client_keeps_tunnel(cluster):
    cluster.sync(base_view(mode="dsr", dsr_optout=["198.19.15.192/27"]))
    p, fe, be = cport(), (CONTROL, NP_CUSTOMER), (CUSTOMER, 80)
    at_pod = request_tunnel(cluster, bytes(tcp(CLIENT2, p, CONTROL, NP_CUSTOMER, "S")), "control", "node1", be,
                            first=True, dsr=False, fe_port=NP_CUSTOMER, where="opt-out")
    reply_tunnel(cluster, reply(at_pod, "SA"), "control", "node1", fe, where="opt-out")


@pytest.mark.parametrize("before,after", [("tunnel", "dsr"), ("dsr", "tunnel")])
def test_mode_switch_keeps_existing_flow(cluster, before, after):
    """A connection keeps the mode it was created with; only new connections take the new one."""
    cluster.sync(base_view(mode=before))
    p, fe, be = cport(), (CONTROL, NP_CUSTOMER), (CUSTOMER, 80)
    dsr_old = before == "dsr"
    w = f"{before}->{after} old flow"
    at_pod = request_tunnel(cluster, bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), "control", "node1", be,
                            first=True, dsr=dsr_old, fe_port=NP_CUSTOMER, where=w)
    back = reply_dsr if dsr_old else (lambda c, f, n, fe_, where: reply_tunnel(c, f, "control", n, fe_,
                                                                                where=where))
    to_client = back(cluster, reply(at_pod, "SA"), "node1", fe, where=w)

    cluster.sync(base_view(mode=after))
    at_pod = request_tunnel(cluster, reply(to_client, "A"), "control", "node1", be, first=False, dsr=dsr_old,
                            fe_port=NP_CUSTOMER, where=w)
    back(cluster, reply(at_pod, "PA", b"still the old mode"), "node1", fe, where=w)

    q = cport()
    dsr_new = after == "dsr"
    w = f"{before}->{after} new flow"
    at_pod = request_tunnel(cluster, bytes(tcp(CLIENT, q, CONTROL, NP_CUSTOMER, "S")), "control", "node1", be,
                            first=True, dsr=dsr_new, fe_port=NP_CUSTOMER, where=w)
    if dsr_new:
        reply_dsr(cluster, reply(at_pod, "SA"), "node1", fe, where=w)
    else:
        reply_tunnel(cluster, reply(at_pod, "SA"), "control", "node1", fe, where=w)


# ---- ClusterIP and pod-originated NodePort -----------------------------------------------------

def _pod_frame(frame: bytes) -> bytes:
    """A frame as a pod sends it (pod MAC -> the cali veth)."""
    p = Ether(frame)
    p.src, p.dst = MAC_POD, MAC_CALI
    return bytes(p)


def test_clusterip_remote_backend_roundtrip(cluster):
    """customer (node1) -> database ClusterIP (backend on node2) and back; reverse NAT in to_wep."""
    p = cport()
    w = "clusterip remote"
    syn = _pod_frame(bytes(tcp(CUSTOMER, p, DATABASE_CIP, 2379, "S")))
    r = hop(cluster, "node1", "from_wep", syn, "OK", "NAT_NEW", Nat(dst=(DATABASE, 2379)), w)
    r = hop(cluster, "node2", "from_hep", routed(r), "OK", "PASS", Same(), w)
    r = hop(cluster, "node2", "to_wep", routed(r), "OK", "PASS", Same(), w)
    r = hop(cluster, "node2", "from_wep", reply(r.data, "SA"), "OK", "PASS", Same(), w)
    r = hop(cluster, "node1", "from_hep", routed(r), "OK", "CT_EST", Same(), w)
    r = hop(cluster, "node1", "to_wep", routed(r), "OK", "REV_NAT", Nat(src=(DATABASE_CIP, 2379)), w)
    ack = _pod_frame(reply(r.data, "A"))
    hop(cluster, "node1", "from_wep", ack, "OK", "NAT_EST", Nat(dst=(DATABASE, 2379)), w)


def test_clusterip_local_backend_roundtrip(cluster):
    """summary-1 -> customer UDP ClusterIP, both on node1."""
    p = cport()
    w = "clusterip local"
    r = hop(cluster, "node1", "from_wep", _pod_frame(bytes(udp(SUMMARY1, p, CUSTOMER_CIP, 7, b"x"))), "OK",
            "NAT_NEW", Nat(dst=(CUSTOMER, 7)), w)
    r = hop(cluster, "node1", "to_wep", routed(r), "OK", "CT_EST", Same(), w)
    r = hop(cluster, "node1", "from_wep", _pod_frame(reply(r.data)), "OK", "CT_EST", Same(), w)
    r = hop(cluster, "node1", "to_wep", routed(r), "OK", "REV_NAT", Nat(src=(CUSTOMER_CIP, 7)), w)


def test_pod_to_nodeport_roundtrip(cluster):
    """customer (node1) -> node2's address:30500 (backend web on control): DNAT at the client pod,
    routed (no tunnel, no DSR), reverse NAT back to node2:30500 at the client pod."""
    cluster.sync(base_view(mode="dsr"))
    p = cport()
    w = "pod -> nodeport"
    r = hop(cluster, "node1", "from_wep", _pod_frame(bytes(tcp(CUSTOMER, p, NODE2, NP_WEB, "S"))), "OK",
            "NAT_NEW", Nat(dst=(WEB, 8080)), w)
    r = hop(cluster, "control", "from_hep", routed(r), "OK", "PASS", Same(), w)
    r = hop(cluster, "control", "to_wep", routed(r), "OK", "PASS", Same(), w)
    r = hop(cluster, "control", "from_wep", reply(r.data, "SA"), "OK", "PASS", Same(), w)
    r = hop(cluster, "node1", "from_hep", routed(r), "OK", "CT_EST", Same(), w)
    hop(cluster, "node1", "to_wep", routed(r), "OK", "REV_NAT", Nat(src=(NODE2, NP_WEB)), w)


def test_clusterip_backend_sticky_and_spread(cluster):
    """Every packet of one connection goes to the backend its first packet got; different
    connections use both backends."""
    chosen = set()
    for _ in range(16):
        p = cport()
        r = cluster.run("node1", "from_wep", _pod_frame(bytes(tcp(CUSTOMER, p, SUMMARY_CIP, 80, "S"))))
        check_result(r, "OK", "NAT_NEW")
        be = (r.pkt[IP].dst, r.pkt[TCP].dport)
        assert be in {(SUMMARY1, 80), (SUMMARY2, 80)}, be
        chosen.add(be)
        Nat(dst=be).check(r)
        for flags in ("A", "PA", "FA"):
            r2 = cluster.run("node1", "from_wep",
                             _pod_frame(bytes(tcp(CUSTOMER, p, SUMMARY_CIP, 80, flags, b"x", seq=2000))))
            check_result(r2, "OK", "NAT_EST", Nat(dst=be))
    assert chosen == {(SUMMARY1, 80), (SUMMARY2, 80)}, f"16 connections all went to {chosen}"


# ---- TTL on paths the program forwards itself ---------------------------------------------

def test_ttl1_reply_local_backend_dropped(cluster):
    p = cport()
    at_pod = request_local(cluster, bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER, "S")), "node1", (CUSTOMER, 80),
                           first=True, where="ttl")
    r = cluster.run("node1", "from_wep", reply(at_pod, "SA", ttl=1))
    check_result(r, "SHOT", "DROP_TTL")


def test_ttl1_reply_tunnel_dropped(cluster):
    p = cport()
    at_pod = request_tunnel(cluster, bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), "control", "node1",
                            (CUSTOMER, 80), first=True, dsr=False, fe_port=NP_CUSTOMER, where="ttl")
    r = cluster.run("node1", "from_wep", reply(at_pod, "SA", ttl=1))
    check_result(r, "SHOT", "DROP_TTL")


def test_ttl1_reply_dsr_dropped(cluster):
    cluster.sync(base_view(mode="dsr"))
    p = cport()
    at_pod = request_tunnel(cluster, bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S")), "control", "node1",
                            (CUSTOMER, 80), first=True, dsr=True, fe_port=NP_CUSTOMER, where="ttl")
    r = cluster.run("node1", "from_wep", reply(at_pod, "SA", ttl=1))
    check_result(r, "SHOT", "DROP_TTL")


def test_walk_whole_connection_in_flow_order(cluster):
    """SimCluster.walk: client -> control from_hep -> node1 from_hep -> node1 to_wep -> [pod] ->
    node1 from_wep -> control from_hep -> client, each output fed to the next hop; the client
    sees TTL 62 (pod 64, backend node 63, ingress node 62, docs/datapath.md)."""
    p = cport()
    res = cluster.walk(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S"),
                       [("control", "from_hep"), ("node1", "from_hep"), ("node1", "to_wep"),
                        lambda frame: reply(frame, "SA"),
                        ("node1", "from_wep"), ("control", "from_hep")])
    assert [(r.verdict, r.reason) for r in res] == [("REDIRECT", "NAT_NEW"), ("OK", "DECAP"), ("OK", "CT_EST"),
                                                    ("REDIRECT", "ENCAP"), ("REDIRECT", "REV_NAT")]
    at_pod = res[2].pkt
    assert (at_pod[IP].src, at_pod[IP].dst, at_pod[TCP].dport) == (CLIENT, CUSTOMER, 80)
    final = res[-1].pkt
    assert (final[IP].src, final[TCP].sport, final[IP].dst, final[TCP].dport) == (CONTROL, NP_CUSTOMER, CLIENT, p)
    assert final[TCP].flags == "SA" and final[IP].ttl == 62
