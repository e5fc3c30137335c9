"""Single-packet cases, table-driven (one row = one program run).

Each row: name, what it exercises, the node and entry program, the input frame, the
expected verdict, the expected counter reason (exactly one increment), the expected
output (an expect.* object: exact bytes with the contract's open fields masked) and
the conntrack entries the run must create. Expectations come from docs/datapath.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from scapy.layers.inet import IP, IPOption_NOP, IPOption_RR, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from .expect import CtEntry, Decap, Encap, Expect, IcmpPortUnreach, Nat, Same
from .topo import (CLIENT, CLIENT2, CONTROL, CUSTOMER, CUSTOMER_CIP, DATABASE, DATABASE_CIP,
                   EMPTY_CIP, EXT_IP, EXT_RANGED, LB_MAGLEV1, LB_PLAIN, LB_RANGED, MAC_CALI, MAC_CLIENT, MAC_NODE, MAC_POD, NODE1, NODE2, NP_CUSTOMER, NP_ECHO, NP_EMPTY,
                   NP_WEB, SUMMARY1, SUMMARY2, WEB, arp, cport, icmp_echo, ipv6,
                   set_bytes, set_u16, tcp, udp, vxlan)

E = 14          # Ethernet header
I = E + 20      # start of L4 in an option-less packet


@dataclass
class Case:
    name: str
    exercises: str
    node: str
    entry: str
    pkt: Callable[[], bytes | Ether]
    verdict: str | set[str]
    reason: str | set[str]
    out: Expect | None = None
    ct: tuple[CtEntry, ...] = ()
    no_ct: bool = False                       # the run must create no conntrack entry
    view: dict[str, Any] = field(default_factory=dict)   # base_view() overrides (mode, dsr_optout)
    group: str = ""

    def __str__(self) -> str:
        return self.name


CASES: list[Case] = []


def case(group: str, *rows: Case) -> None:
    for r in rows:
        r.group = group
        CASES.append(r)


def pod_tcp(src: str, sport: int, dst: str, dport: int, flags: str = "S", payload: bytes = b"", **kw):
    return tcp(src, sport, dst, dport, flags, payload, mac_src=MAC_POD, mac_dst=MAC_CALI, **kw)


def pod_udp(src: str, sport: int, dst: str, dport: int, payload: bytes = b"hi", **kw):
    return udp(src, sport, dst, dport, payload, mac_src=MAC_POD, mac_dst=MAC_CALI, **kw)


# ---- NodePort (Tunnel mode) --------------------------------------------------------

def _np_rows() -> list[Case]:
    rows = []
    p = cport()
    rows.append(Case(
        "np_tcp_remote_syn", "NodePort on control, backend on node1: DNAT + VXLAN to node1 (exact bytes)",
        "control", "from_hep", lambda p=p: tcp(CLIENT, p, CONTROL, NP_CUSTOMER), "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER),
        ct=(CtEntry("NAT_FWD", (CLIENT, p), (CONTROL, NP_CUSTOMER), nat=(CUSTOMER, 80), tun_peer=NODE1,
                    has=("TUNNEL", "NODEPORT"), not_=("DSR", "FROM_TUNNEL", "CLUSTERIP")),
            CtEntry("NAT_REV", (CLIENT, p), (CUSTOMER, 80), nat=(CONTROL, NP_CUSTOMER), tun_peer=NODE1,
                    has=("TUNNEL", "NODEPORT"), not_=("DSR", "FROM_TUNNEL")))))
    p = cport()
    rows.append(Case(
        "np_tcp_remote_data_payload", "first packet carrying payload: DNAT + VXLAN, payload intact",
        "control", "from_hep",
        lambda p=p: tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "PA", b"GET / HTTP/1.1\r\n\r\n" * 3),
        "REDIRECT", "NAT_NEW", Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER)))
    p = cport()
    rows.append(Case(
        "np_tcp_remote_via_node2", "NodePort on node2's address: node2 tunnels to node1",
        "node2", "from_hep", lambda p=p: tcp(CLIENT, p, NODE2, NP_CUSTOMER), "REDIRECT", "NAT_NEW",
        Encap(NODE2, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER),
        ct=(CtEntry("NAT_REV", (CLIENT, p), (CUSTOMER, 80), nat=(NODE2, NP_CUSTOMER), tun_peer=NODE1,
                    has=("TUNNEL", "NODEPORT")),)))
    p = cport()
    rows.append(Case(
        "np_tcp_remote_to_control", "NodePort on node1 whose backend is on control: tunnel node1 -> control",
        "node1", "from_hep", lambda p=p: tcp(CLIENT, p, NODE1, NP_WEB), "REDIRECT", "NAT_NEW",
        Encap(NODE1, CONTROL, Nat(dst=(WEB, 8080), ttl_dec=1), fe_port=NP_WEB)))
    p = cport()
    rows.append(Case(
        "np_tcp_local", "NodePort on node1, backend on node1: DNAT, TC_ACT_OK to the kernel (no TTL change)",
        "node1", "from_hep", lambda p=p: tcp(CLIENT, p, NODE1, NP_CUSTOMER), "OK", "NAT_NEW",
        Nat(dst=(CUSTOMER, 80)),
        ct=(CtEntry("NAT_FWD", (CLIENT, p), (NODE1, NP_CUSTOMER), nat=(CUSTOMER, 80),
                    has=("NODEPORT",), not_=("TUNNEL", "DSR")),
            CtEntry("NAT_REV", (CLIENT, p), (CUSTOMER, 80), nat=(NODE1, NP_CUSTOMER),
                    has=("NODEPORT",), not_=("TUNNEL", "DSR")))))
    p = cport()
    rows.append(Case(
        "np_tcp_local_control", "NodePort on control, backend on control",
        "control", "from_hep", lambda p=p: tcp(CLIENT, p, CONTROL, NP_WEB), "OK", "NAT_NEW",
        Nat(dst=(WEB, 8080))))
    p = cport()
    rows.append(Case(
        "np_udp_remote", "UDP NodePort, remote backend: DNAT + VXLAN",
        "control", "from_hep", lambda p=p: udp(CLIENT, p, CONTROL, NP_ECHO, b"hello"), "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 7), ttl_dec=1), fe_port=NP_ECHO),
        ct=(CtEntry("NAT_REV", (CLIENT, p), (CUSTOMER, 7), proto="udp", nat=(CONTROL, NP_ECHO),
                    tun_peer=NODE1, has=("TUNNEL", "NODEPORT")),)))
    p = cport()
    rows.append(Case(
        "np_udp_local", "UDP NodePort, local backend",
        "node1", "from_hep", lambda p=p: udp(CLIENT, p, NODE1, NP_ECHO, b"hello"), "OK", "NAT_NEW",
        Nat(dst=(CUSTOMER, 7))))
    p = cport()
    rows.append(Case(
        "np_udp_csum0_local", "UDP without checksum (0): stays 0 after DNAT, never a bogus value",
        "node1", "from_hep", lambda p=p: udp(CLIENT, p, NODE1, NP_ECHO, b"hello", chksum=0), "OK", "NAT_NEW",
        Nat(dst=(CUSTOMER, 7))))
    p = cport()
    rows.append(Case(
        "np_udp_csum0_remote", "UDP checksum 0 through DNAT + encap",
        "control", "from_hep", lambda p=p: udp(CLIENT, p, CONTROL, NP_ECHO, b"hello", chksum=0), "REDIRECT",
        "NAT_NEW", Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 7), ttl_dec=1), fe_port=NP_ECHO)))
    p = cport()
    rows.append(Case(
        "np_padded_frame", "60-byte frame with Ethernet padding (tot_len < frame): a valid packet, DNATed",
        "node1", "from_hep", lambda p=p: Ether(bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER)) + b"\0" * 6),
        "OK", "NAT_NEW", Nat(dst=(CUSTOMER, 80))))
    rows += [
        Case("np_unknown_port", "a port with no service on the node address: untouched",
             "control", "from_hep", lambda: tcp(CLIENT, cport(), CONTROL, 30999), "OK", "PASS", Same(), no_ct=True),
        Case("np_other_nodes_address", "NodePort port to another node's address (routed through us): untouched",
             "control", "from_hep", lambda: tcp(CLIENT, cport(), NODE2, NP_CUSTOMER), "OK", "PASS", Same(),
             no_ct=True),
        Case("np_dst_zero_address", "packet to 0.0.0.0:30180 (not this node's address, a martian): untouched",
             "control", "from_hep", lambda: tcp(CLIENT, cport(), "0.0.0.0", NP_CUSTOMER), "OK", "PASS", Same(),
             no_ct=True),
        Case("np_zero_backends", "NodePort of a service with zero backends: refused with ICMP port unreachable "
             "back out of eth0, counted, no state", "control", "from_hep",
             lambda: tcp(CLIENT, cport(), CONTROL, NP_EMPTY), "REDIRECT", "DROP_NO_BACKEND",
             IcmpPortUnreach(CONTROL, CLIENT), no_ct=True),
        Case("np_zero_backends_udp_port_tcp", "the UDP NodePort number over TCP is no service: untouched",
             "control", "from_hep", lambda: tcp(CLIENT, cport(), CONTROL, NP_ECHO), "OK", "PASS", Same(),
             no_ct=True),
        Case("node_to_node", "node-to-node traffic (ssh to control): untouched",
             "control", "from_hep", lambda: tcp(NODE1, 5000, CONTROL, 22), "OK", "PASS", Same(), no_ct=True),
        Case("icmp_echo_to_node", "ping to the node address: untouched",
             "control", "from_hep", lambda: icmp_echo(CLIENT, CONTROL), "OK", "PASS", Same(), no_ct=True),
    ]
    return rows


case("nodeport", *_np_rows())


# ---- VXLAN decap on the backend node ------------------------------------------------

def _inner(p: int, proto: str = "tcp", dst: str = CUSTOMER, dport: int = 80, ttl: int = 63) -> bytes:
    if proto == "udp":
        return bytes(udp(CLIENT, p, dst, dport, b"hello", ttl=ttl))
    return bytes(tcp(CLIENT, p, dst, dport, ttl=ttl))


def _tun_rows() -> list[Case]:
    rows = []
    p = cport()
    rows.append(Case(
        "decap_known_node", "VXLAN from control (known node, right VNI): decap, client source intact, NORMAL entry",
        "node1", "from_hep", lambda p=p: vxlan(CONTROL, NODE1, _inner(p), fe_port=NP_CUSTOMER), "OK", "DECAP",
        Decap(Nat()),
        ct=(CtEntry("NORMAL", (CLIENT, p), (CUSTOMER, 80), nat=(CONTROL, NP_CUSTOMER), tun_peer=CONTROL,
                    has=("FROM_TUNNEL",), not_=("DSR",)),)))
    p = cport()
    rows.append(Case(
        "decap_known_node_dsr", "VXLAN with the DSR flag: entry records DSR",
        "node1", "from_hep", lambda p=p: vxlan(CONTROL, NODE1, _inner(p), fe_port=NP_CUSTOMER, dsr=True), "OK",
        "DECAP", Decap(Nat()),
        ct=(CtEntry("NORMAL", (CLIENT, p), (CUSTOMER, 80), nat=(CONTROL, NP_CUSTOMER), tun_peer=CONTROL,
                    has=("FROM_TUNNEL", "DSR")),)))
    p = cport()
    rows.append(Case(
        "decap_udp", "UDP inside VXLAN from node2", "node1", "from_hep",
        lambda p=p: vxlan(NODE2, NODE1, _inner(p, "udp", dport=7), fe_port=NP_ECHO), "OK", "DECAP", Decap(Nat()),
        ct=(CtEntry("NORMAL", (CLIENT, p), (CUSTOMER, 7), proto="udp", nat=(NODE2, NP_ECHO), tun_peer=NODE2,
                    has=("FROM_TUNNEL",)),)))
    rows += [
        Case("tun_unknown_source", "VXLAN from host1 (not a node) carrying a packet for the customer pod",
             "node1", "from_hep", lambda: vxlan(CLIENT, NODE1, _inner(cport()), fe_port=NP_CUSTOMER), "SHOT",
             "DROP_TUN_UNKNOWN_SRC", no_ct=True),
        Case("tun_unknown_source_pod_addr", "VXLAN whose outer source is a pod address",
             "node1", "from_hep", lambda: vxlan(WEB, NODE1, _inner(cport()), fe_port=NP_CUSTOMER), "SHOT",
             "DROP_TUN_UNKNOWN_SRC", no_ct=True),
        Case("tun_bad_vni", "VXLAN from a node with VNI 4097", "node1", "from_hep",
             lambda: vxlan(CONTROL, NODE1, _inner(cport()), vni=4097, fe_port=NP_CUSTOMER), "SHOT",
             "DROP_TUN_BAD_VNI", no_ct=True),
        Case("tun_vni_zero", "VXLAN from a node with VNI 0", "node1", "from_hep",
             lambda: vxlan(CONTROL, NODE1, _inner(cport()), vni=0, fe_port=NP_CUSTOMER), "SHOT",
             "DROP_TUN_BAD_VNI", no_ct=True),
        Case("tun_vni_flag_clear", "VXLAN with the I flag clear (no valid VNI)", "node1", "from_hep",
             lambda: vxlan(CONTROL, NODE1, _inner(cport()), flags=0, fe_port=NP_CUSTOMER), "SHOT",
             {"DROP_TUN_BAD_VNI", "DROP_MALFORMED"}, no_ct=True),
        Case("tun_truncated_vxlan_header", "UDP 4789 from a node with 4 bytes of VXLAN header", "node1", "from_hep",
             lambda: _fix_ip_len(bytes(vxlan(CONTROL, NODE1, b""))[:E + 20 + 8 + 4]),
             "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_truncated_inner_ethernet", "VXLAN header then 10 bytes", "node1", "from_hep",
             lambda: _fix_ip_len(bytes(vxlan(CONTROL, NODE1, _inner(cport())))[:E + 36 + 10]),
             "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_inner_arp", "VXLAN carrying ARP (we only tunnel IPv4)", "node1", "from_hep",
             lambda: vxlan(CONTROL, NODE1, arp(), fe_port=NP_CUSTOMER), "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_inner_ip_truncated", "inner IPv4 header cut at 12 bytes", "node1", "from_hep",
             lambda: _fix_ip_len(bytes(vxlan(CONTROL, NODE1, _inner(cport()), fe_port=NP_CUSTOMER))[:E + 50 + 12]),
             "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_inner_bad_ihl", "inner IHL 4", "node1", "from_hep",
             lambda: vxlan(CONTROL, NODE1, set_bytes(_inner(cport()), E, b"\x44"), fe_port=NP_CUSTOMER),
             "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_inner_totlen_too_big", "inner tot_len beyond the frame", "node1", "from_hep",
             lambda: vxlan(CONTROL, NODE1, set_u16(_inner(cport()), E + 2, 200), fe_port=NP_CUSTOMER),
             "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_inner_tcp_truncated", "inner TCP header cut at 10 bytes", "node1", "from_hep",
             lambda: vxlan(CONTROL, NODE1, set_u16(_inner(cport())[:I + 10], E + 2, 30), fe_port=NP_CUSTOMER),
             "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_inner_tcp_doff_3", "inner TCP data offset 3", "node1", "from_hep",
             lambda: vxlan(CONTROL, NODE1, set_bytes(_inner(cport()), I + 12, b"\x30"), fe_port=NP_CUSTOMER),
             "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_vxlan_cut_by_outer_totlen", "outer tot_len 32 (UDP length 12): VXLAN header cut; the rest of "
             "the frame is padding, not a tunnelled packet", "node1", "from_hep",
             lambda: _outer_len(vxlan(CONTROL, NODE1, _inner(cport()), fe_port=NP_CUSTOMER), 32),
             "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_inner_beyond_outer_totlen", "outer tot_len ends 20 bytes into the inner IPv4 packet, "
             "the inner packet continues in the padding", "node1", "from_hep",
             lambda: _outer_len(vxlan(CONTROL, NODE1, _inner(cport()), fe_port=NP_CUSTOMER), 36 + 14 + 20),
             "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_outer_ip_options", "outer IPv4 header with options from a known node", "node1", "from_hep",
             lambda: _vxlan_outer_opts(), "SHOT", "DROP_MALFORMED", no_ct=True),
        Case("tun_reply_for_unknown_flow", "tunnelled reply (port 0) for a flow node1 does not track: not delivered",
             "node1", "from_hep",
             lambda: vxlan(CONTROL, NODE1, bytes(tcp(CLIENT, cport(), CUSTOMER, 80, "SA", ttl=63))), "SHOT",
             {"DROP_TUN_NO_FLOW"}, no_ct=True),
        Case("vxlan_to_other_port", "UDP 4790 (not our tunnel port) from a node: untouched", "node1", "from_hep",
             lambda: _retarget_udp(vxlan(CONTROL, NODE1, _inner(cport()), fe_port=NP_CUSTOMER), 4790),
             "OK", "PASS", Same(), no_ct=True),
        Case("vxlan_to_other_address", "VXLAN addressed to node2 seen by node1: not ours, untouched",
             "node1", "from_hep", lambda: vxlan(CONTROL, NODE2, _inner(cport()), fe_port=NP_CUSTOMER),
             "OK", "PASS", Same(), no_ct=True),
    ]
    return rows


def _fix_ip_len(frame: bytes) -> bytes:
    """Outer tot_len/UDP length/IP checksum consistent with a (cut) frame."""
    p = Ether(frame)
    p[IP].len = None
    p[IP].chksum = None
    if UDP in p:
        p[UDP].len = None
    return bytes(p)


def _outer_len(frame: Ether, tot_len: int) -> bytes:
    """The same frame with the outer IP total length (and UDP length) shrunk to tot_len:
    what follows becomes Ethernet padding."""
    p = Ether(bytes(frame))
    p[IP].len = tot_len
    p[IP].chksum = None
    p[UDP].len = tot_len - 20
    return bytes(p)


def _vxlan_outer_opts() -> bytes:
    p = Ether(bytes(vxlan(CONTROL, NODE1, _inner(cport()), fe_port=NP_CUSTOMER)))
    p[IP].options = [IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()]
    p[IP].ihl = None
    p[IP].len = None
    p[IP].chksum = None
    return bytes(p)


def _retarget_udp(frame: Ether, dport: int) -> bytes:
    p = Ether(bytes(frame))
    p[UDP].dport = dport
    return bytes(p)


case("tunnel", *_tun_rows())


# ---- LoadBalancer ingress and external IPs (issue 14, docs/loadbalancer.md) -----------------

LB = {"lb": True}   # base_view(lb=True): the LoadBalancer services of topo.lb_services()


def _lb_ct(p: int, fe: tuple[str, int], be: tuple[str, int], peer: str = "0.0.0.0") -> tuple[CtEntry, ...]:
    """The two entries of an external client's connection to an external frontend on its ingress node."""
    tun = ("TUNNEL",) if peer != "0.0.0.0" else ()
    return (CtEntry("NAT_FWD", (CLIENT, p), fe, nat=be, tun_peer=peer, has=tun, not_=("FROM_TUNNEL", "POD_CLIENT")),
            CtEntry("NAT_REV", (CLIENT, p), be, nat=fe, tun_peer=peer, has=tun, not_=("FROM_TUNNEL", "POD_CLIENT")))


def _lb_rows() -> list[Case]:
    rows = []
    for addr, what in ((LB_PLAIN, "LoadBalancer ingress"), (EXT_IP, "external IP")):
        tag = "lb_ip" if addr == LB_PLAIN else "external_ip"
        p = cport()
        rows.append(Case(
            f"{tag}_remote", f"{what} on control, backend on node1: DNAT + VXLAN tagged with the frontend address",
            "control", "from_hep", lambda p=p, a=addr: tcp(CLIENT, p, a, 80), "REDIRECT", "NAT_NEW",
            Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=80, fe_addr=addr),
            ct=_lb_ct(p, (addr, 80), (CUSTOMER, 80), NODE1), view=LB))
        p = cport()
        rows.append(Case(
            f"{tag}_local", f"{what} on node1, backend on node1: DNAT, to the kernel",
            "node1", "from_hep", lambda p=p, a=addr: tcp(CLIENT, p, a, 80, mac_dst=MAC_NODE["node1"]), "OK", "NAT_NEW",
            Nat(dst=(CUSTOMER, 80)), ct=_lb_ct(p, (addr, 80), (CUSTOMER, 80)), view=LB))
        p = cport()
        rows.append(Case(
            f"{tag}_dsr", f"{what}, DSR mode: VXLAN with the DSR flag and the frontend address",
            "control", "from_hep", lambda p=p, a=addr: tcp(CLIENT, p, a, 80), "REDIRECT", "NAT_NEW",
            Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), dsr=True, fe_port=80, fe_addr=addr),
            view={**LB, "mode": "dsr"}))
    p = cport()
    rows.append(Case(
        "lb_ip_other_port_passes", "LoadBalancer ingress, a port the service does not have: untouched",
        "control", "from_hep", lambda p=p: tcp(CLIENT, p, LB_PLAIN, 81), "OK", "PASS", Same(), no_ct=True, view=LB))
    # loadBalancerSourceRanges: CLIENT/32 and 10.99.0.0/16 admitted, CLIENT2 not
    rows.append(Case(
        "src_range_outside_dropped", "LoadBalancer ingress with source ranges, client outside them: dropped, counted",
        "control", "from_hep", lambda: tcp(CLIENT2, cport(), LB_RANGED, 80), "SHOT", "DROP_SRC_RANGE",
        no_ct=True, view=LB))
    rows.append(Case(
        "src_range_outside_mid_flow_dropped", "same for a mid-flow TCP segment (the range check comes first)",
        "control", "from_hep", lambda: tcp(CLIENT2, cport(), LB_RANGED, 80, "A"), "SHOT", "DROP_SRC_RANGE",
        no_ct=True, view=LB))
    p = cport()
    rows.append(Case(
        "src_range_inside_passes", "LoadBalancer ingress with source ranges, client inside one: NATed as usual",
        "control", "from_hep", lambda p=p: tcp(CLIENT, p, LB_RANGED, 80), "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=80, fe_addr=LB_RANGED),
        ct=_lb_ct(p, (LB_RANGED, 80), (CUSTOMER, 80), NODE1), view=LB))
    rows.append(Case(
        "src_range_external_ip_not_ranged", "the ranges cover the LoadBalancer ingress only, not the external IP "
        "(as kube-proxy: loadBalancerSourceRanges is a LoadBalancer field)",
        "control", "from_hep", lambda: tcp(CLIENT2, cport(), EXT_RANGED, 80), "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=80, fe_addr=EXT_RANGED), view=LB))
    # a TCP segment without SYN and no conntrack entry (the connection opened elsewhere)
    p = cport()
    rows.append(Case(
        "maglev_mid_flow_picked", "Maglev frontend, mid-flow ACK with a conntrack miss: Maglev pick, state created",
        "control", "from_hep", lambda p=p: tcp(CLIENT, p, LB_MAGLEV1, 80, "A", seq=5000, ack=9000),
        "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=80, fe_addr=LB_MAGLEV1),
        ct=_lb_ct(p, (LB_MAGLEV1, 80), (CUSTOMER, 80), NODE1), view=LB))
    p = cport()
    rows.append(Case(
        "maglev_mid_flow_picked_local", "the same on node1, whose own pod is the pick: DNAT to the kernel",
        "node1", "from_hep", lambda p=p: tcp(CLIENT, p, LB_MAGLEV1, 80, "PA", b"GET /", mac_dst=MAC_NODE["node1"]),
        "OK", "NAT_NEW", Nat(dst=(CUSTOMER, 80)), ct=_lb_ct(p, (LB_MAGLEV1, 80), (CUSTOMER, 80)), view=LB))
    rows.append(Case(
        "plain_lb_mid_flow_dropped", "non-Maglev LoadBalancer ingress, mid-flow ACK with a conntrack miss: dropped "
        "(this node's pick need not be the backend the connection has)",
        "control", "from_hep", lambda: tcp(CLIENT, cport(), LB_PLAIN, 80, "A", seq=5000, ack=9000),
        "SHOT", "DROP_MID_FLOW", no_ct=True, view=LB))
    rows.append(Case(
        "plain_external_ip_mid_flow_dropped", "non-Maglev external IP, mid-flow FIN with a conntrack miss: dropped",
        "control", "from_hep", lambda: tcp(CLIENT, cport(), EXT_IP, 80, "FA", seq=5000, ack=9000),
        "SHOT", "DROP_MID_FLOW", no_ct=True, view=LB))
    p = cport()
    rows.append(Case(
        "nodeport_mid_flow_picked", "a NodePort's mid-flow ACK with a conntrack miss (its entries expired): picked "
        "again as before issue 14; its address cannot move to another node",
        "control", "from_hep", lambda p=p: tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "A", seq=5000, ack=9000),
        "REDIRECT", "NAT_NEW", Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER),
        view=LB))
    return rows


case("loadbalancer", *_lb_rows())


# ---- spoofing --------------------------------------------------------------------------

case("spoof",
     Case("spoof_local_pod_source_to_nodeport", "a packet claiming node1's pod address arriving on node1's eth0",
          "node1", "from_hep", lambda: tcp(CUSTOMER, cport(), NODE1, NP_CUSTOMER), "SHOT", "DROP_SPOOFED",
          no_ct=True),
     Case("spoof_local_pod_source_to_pod", "local pod source from outside, to another local pod",
          "node1", "from_hep", lambda: tcp(SUMMARY1, cport(), CUSTOMER, 80), "SHOT", "DROP_SPOOFED", no_ct=True),
     Case("remote_pod_source_routed", "pod on node1 to pod on control (routed pod-to-pod): untouched",
          "control", "from_hep", lambda: tcp(CUSTOMER, cport(), WEB, 8080), "OK", "PASS", Same(), no_ct=True),
     )


# ---- ClusterIP and pod-originated NodePort (from_wep / to_wep) ------------------------------

def _cip_rows() -> list[Case]:
    rows = []
    p = cport()
    rows.append(Case(
        "cip_tcp_remote_backend", "pod -> ClusterIP whose backend is on node2: DNAT, TC_ACT_OK (kernel routes)",
        "node1", "from_wep", lambda p=p: pod_tcp(CUSTOMER, p, DATABASE_CIP, 2379), "OK", "NAT_NEW",
        Nat(dst=(DATABASE, 2379)),
        ct=(CtEntry("NAT_FWD", (CUSTOMER, p), (DATABASE_CIP, 2379), nat=(DATABASE, 2379),
                    has=("CLUSTERIP",), not_=("TUNNEL", "DSR", "NODEPORT")),
            CtEntry("NAT_REV", (CUSTOMER, p), (DATABASE, 2379), nat=(DATABASE_CIP, 2379),
                    has=("CLUSTERIP",), not_=("TUNNEL", "DSR")))))
    p = cport()
    rows.append(Case(
        "cip_udp_local_backend", "pod -> UDP ClusterIP with the backend on the same node",
        "node1", "from_wep", lambda p=p: pod_udp(SUMMARY1, p, CUSTOMER_CIP, 7), "OK", "NAT_NEW",
        Nat(dst=(CUSTOMER, 7))))
    p = cport()
    rows.append(Case(
        "pod_to_nodeport_other_node", "pod -> NodePort on node2's address (backend on control): DNAT, no tunnel",
        "node1", "from_wep", lambda p=p: pod_tcp(CUSTOMER, p, NODE2, NP_WEB), "OK", "NAT_NEW",
        Nat(dst=(WEB, 8080)),
        ct=(CtEntry("NAT_REV", (CUSTOMER, p), (WEB, 8080), nat=(NODE2, NP_WEB), has=("NODEPORT",),
                    not_=("TUNNEL", "DSR")),)))
    p = cport()
    rows.append(Case(
        "pod_to_nodeport_dsr_mode", "pod-originated NodePort traffic never uses DSR, even in DSR mode",
        "node1", "from_wep", lambda p=p: pod_tcp(CUSTOMER, p, CONTROL, NP_WEB), "OK", "NAT_NEW",
        Nat(dst=(WEB, 8080)),
        ct=(CtEntry("NAT_REV", (CUSTOMER, p), (WEB, 8080), nat=(CONTROL, NP_WEB), has=("NODEPORT",),
                    not_=("TUNNEL", "DSR")),), view={"mode": "dsr"}))
    rows += [
        Case("cip_zero_backends", "pod -> ClusterIP of a service with zero backends: ICMP port unreachable "
             "back to the pod, counted", "node1", "from_wep",
             lambda: pod_tcp(CUSTOMER, cport(), EMPTY_CIP, 80), "REDIRECT", "DROP_NO_BACKEND",
             IcmpPortUnreach(EMPTY_CIP, CUSTOMER), no_ct=True),
        Case("cip_unknown_port", "pod -> ClusterIP on a port that is not a service port: untouched",
             "node1", "from_wep", lambda: pod_tcp(CUSTOMER, cport(), CUSTOMER_CIP, 81), "OK", "PASS", Same(),
             no_ct=True),
        Case("pod_to_zero_address_nodeport", "pod -> 0.0.0.0:30500: not a node address, no NodePort",
             "node1", "from_wep", lambda: pod_tcp(CUSTOMER, cport(), "0.0.0.0", NP_WEB), "OK", "PASS", Same(),
             no_ct=True),
        Case("pod_to_pod_direct", "pod -> pod address: untouched", "node1", "from_wep",
             lambda: pod_tcp(CUSTOMER, cport(), SUMMARY2, 80), "OK", "PASS", Same(), no_ct=True),
        Case("pod_to_external", "pod -> outside address: untouched", "node1", "from_wep",
             lambda: pod_tcp(CUSTOMER, cport(), CLIENT, 443), "OK", "PASS", Same(), no_ct=True),
        Case("pod_icmp", "pod pings: untouched", "node1", "from_wep",
             lambda: Ether(bytes(icmp_echo(CUSTOMER, SUMMARY2))), "OK", "PASS", Same(), no_ct=True),
        Case("to_wep_untracked", "packet to a pod with no conntrack entry: untouched", "node1", "to_wep",
             lambda: tcp(DATABASE, 2379, CUSTOMER, cport(), "SA"), "OK", "PASS", Same(), no_ct=True),
    ]
    return rows


case("clusterip", *_cip_rows())


# ---- DSR mode (new connections) ------------------------------------------------------------

def _dsr_rows() -> list[Case]:
    rows = []
    p = cport()
    rows.append(Case(
        "dsr_external_client", "DSR mode, external client: VXLAN carries the DSR flag and the NodePort",
        "control", "from_hep", lambda p=p: tcp(CLIENT, p, CONTROL, NP_CUSTOMER), "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), dsr=True, fe_port=NP_CUSTOMER),
        ct=(CtEntry("NAT_REV", (CLIENT, p), (CUSTOMER, 80), nat=(CONTROL, NP_CUSTOMER), tun_peer=NODE1,
                    has=("TUNNEL", "DSR", "NODEPORT")),
            CtEntry("NAT_FWD", (CLIENT, p), (CONTROL, NP_CUSTOMER), nat=(CUSTOMER, 80), tun_peer=NODE1,
                    has=("TUNNEL", "DSR"))),
        view={"mode": "dsr"}))
    p = cport()
    rows.append(Case(
        "dsr_udp_external_client", "DSR mode, UDP NodePort", "control", "from_hep",
        lambda p=p: udp(CLIENT, p, CONTROL, NP_ECHO), "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 7), ttl_dec=1), dsr=True, fe_port=NP_ECHO),
        view={"mode": "dsr"}))
    p = cport()
    rows.append(Case(
        "dsr_optout_client", "DSR mode, client in dsr_optout: Tunnel behaviour (no DSR flag)",
        "control", "from_hep", lambda p=p: tcp(CLIENT2, p, CONTROL, NP_CUSTOMER), "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), dsr=False, fe_port=NP_CUSTOMER),
        ct=(CtEntry("NAT_REV", (CLIENT2, p), (CUSTOMER, 80), nat=(CONTROL, NP_CUSTOMER), tun_peer=NODE1,
                    has=("TUNNEL",), not_=("DSR",)),),
        view={"mode": "dsr", "dsr_optout": ["198.19.15.192/27"]}))
    p = cport()
    rows.append(Case(
        "dsr_optout_other_client_still_dsr", "DSR mode with an opt-out CIDR that does not cover this client",
        "control", "from_hep", lambda p=p: tcp(CLIENT, p, CONTROL, NP_CUSTOMER), "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), dsr=True, fe_port=NP_CUSTOMER),
        view={"mode": "dsr", "dsr_optout": ["198.19.15.192/27"]}))
    p = cport()
    rows.append(Case(
        "dsr_node_client", "DSR mode, client is a node address: not DSR (only clients outside the cluster)",
        "control", "from_hep", lambda p=p: tcp(NODE2, p, CONTROL, NP_CUSTOMER), "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), dsr=False, fe_port=NP_CUSTOMER),
        view={"mode": "dsr"}))
    p = cport()
    rows.append(Case(
        "dsr_local_backend", "DSR mode, backend on the ingress node: plain local DNAT",
        "node1", "from_hep", lambda p=p: tcp(CLIENT, p, NODE1, NP_CUSTOMER), "OK", "NAT_NEW",
        Nat(dst=(CUSTOMER, 80)), view={"mode": "dsr"}))
    return rows


case("dsr", *_dsr_rows())


# ---- non-IP, fragments, options, TTL ------------------------------------------------------

def _misc_rows() -> list[Case]:
    rows = []
    for entry, node in (("from_hep", "control"), ("from_wep", "node1"), ("to_wep", "node1")):
        rows += [
            Case(f"arp_{entry}", "ARP: not ours, untouched", node, entry, arp, "OK", "PASS", Same(), no_ct=True),
            Case(f"ipv6_{entry}", "IPv6 (even to a NodePort number): untouched", node, entry, ipv6, "OK", "PASS",
                 Same(), no_ct=True),
            Case(f"vlan_tagged_{entry}", "802.1Q-tagged frame: not ours, untouched", node, entry,
                 lambda: bytes(Ether(src=MAC_CLIENT, dst=MAC_NODE["control"], type=0x8100)) + b"\x00\x05\x08\x00" + bytes(tcp(CLIENT, 40000, CONTROL,
                                                                                    NP_CUSTOMER))[E:],
                 "OK", "PASS", Same(), no_ct=True),
        ]
    rows += [
        Case("frag_later_to_nodeport", "non-first IP fragment to the NodePort address, its first one unseen: untouched", "control",
             "from_hep", lambda: _frag(CLIENT, CONTROL, offset=185, mf=False), "OK", "PASS", Same(), no_ct=True),
        Case("frag_later_mf_to_nodeport", "middle fragment (offset > 0, MF): untouched", "control", "from_hep",
             lambda: _frag(CLIENT, CONTROL, offset=185, mf=True), "OK", "PASS", Same(), no_ct=True),
        Case("frag_later_from_pod", "non-first fragment from a pod to a ClusterIP: untouched", "node1",
             "from_wep", lambda: _frag(CUSTOMER, DATABASE_CIP, offset=10, mf=False), "OK", "PASS", Same(),
             no_ct=True),
        Case("frag_later_to_pod", "non-first fragment to a pod: untouched", "node1", "to_wep",
             lambda: _frag(DATABASE, CUSTOMER, offset=10, mf=False), "OK", "PASS", Same(), no_ct=True),
    ]
    p = cport()
    rows.append(Case(
        "ip_options_remote", "IPv4 options (IHL 8, record-route): L4 found after them, DNAT + encap keep them",
        "control", "from_hep",
        lambda p=p: tcp(CLIENT, p, CONTROL, NP_CUSTOMER, options=[IPOption_RR(routers=["0.0.0.0"] * 2),
                                                                    IPOption_NOP(), IPOption_NOP(),
                                                                    IPOption_NOP(), IPOption_NOP()]),
        "REDIRECT", "NAT_NEW", Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER)))
    p = cport()
    rows.append(Case(
        "ip_options_local", "IPv4 options on a local-backend NodePort packet", "node1", "from_hep",
        lambda p=p: tcp(CLIENT, p, NODE1, NP_CUSTOMER, options=[IPOption_NOP()] * 4),
        "OK", "NAT_NEW", Nat(dst=(CUSTOMER, 80))))
    p = cport()
    rows.append(Case(
        "ip_options_clusterip", "IPv4 options on a pod's ClusterIP packet", "node1", "from_wep",
        lambda p=p: pod_tcp(CUSTOMER, p, DATABASE_CIP, 2379, options=[IPOption_NOP()] * 8),
        "OK", "NAT_NEW", Nat(dst=(DATABASE, 2379))))
    rows += [
        Case("ttl1_remote_backend", "TTL 1 to a NodePort whose backend is remote: we would forward it, so drop",
             "control", "from_hep", lambda: tcp(CLIENT, cport(), CONTROL, NP_CUSTOMER, ttl=1), "SHOT", "DROP_TTL",
             no_ct=True),
        Case("ttl0_remote_backend", "TTL 0 to a NodePort whose backend is remote", "control", "from_hep",
             lambda: tcp(CLIENT, cport(), CONTROL, NP_CUSTOMER, ttl=0), "SHOT", "DROP_TTL", no_ct=True),
    ]
    p = cport()
    rows.append(Case(
        "ttl2_remote_backend", "TTL 2: forwarded with inner TTL 1", "control", "from_hep",
        lambda p=p: tcp(CLIENT, p, CONTROL, NP_CUSTOMER, ttl=2), "REDIRECT", "NAT_NEW",
        Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER)))
    p = cport()
    rows.append(Case(
        "ttl1_local_backend", "TTL 1 to a local backend: DNAT, the kernel's forwarding handles the TTL",
        "node1", "from_hep", lambda p=p: tcp(CLIENT, p, NODE1, NP_CUSTOMER, ttl=1), "OK", "NAT_NEW",
        Nat(dst=(CUSTOMER, 80))))
    return rows


def _frag(src: str, dst: str, offset: int, mf: bool) -> bytes:
    return bytes(Ether(src=MAC_CLIENT, dst=MAC_NODE["control"]) / IP(src=src, dst=dst, proto=6, frag=offset, flags="MF" if mf else 0) /
                 Raw(b"\x75\x30\x00\x50" + b"x" * 36))


case("misc", *_misc_rows())


# ---- malformed -------------------------------------------------------------------------------

def _tcp_base(src: str, dst: str, dport: int) -> bytes:
    return bytes(tcp(src, 40001, dst, dport, "S"))


def _udp_base(src: str, dst: str, dport: int) -> bytes:
    return bytes(udp(src, 40001, dst, dport, b"abcd"))


MALFORMED_MUTATIONS: list[tuple[str, str, Callable[[bytes], bytes], str]] = [
    # (name, what, mutate(base frame), base kind)
    # (The kernel's test-run refuses IPv4 frames with < 20 bytes after Ethernet, EINVAL,
    # so a header cut short is made with IHL > what the frame holds.)
    ("ip_header_cut", "IHL 8 (32-byte header), frame and tot_len end after 24",
     lambda b: set_u16(set_bytes(b[:E + 24], E, b"\x48"), E + 2, 24), "tcp"),
    ("ip_header_cut_by_frame", "IHL 15, frame ends 30 bytes into the header, tot_len 60",
     lambda b: set_u16(set_bytes(b[:E + 30], E, b"\x4f"), E + 2, 60), "tcp"),
    ("ip_version_6", "version nibble 6 under the IPv4 ethertype", lambda b: set_bytes(b, E, b"\x65"), "tcp"),
    ("ip_ihl_4", "IHL 4 (< 5)", lambda b: set_bytes(b, E, b"\x44"), "tcp"),
    ("ip_ihl_0", "IHL 0", lambda b: set_bytes(b, E, b"\x40"), "tcp"),
    ("ip_ihl_beyond_totlen", "IHL 15 (60 bytes) but tot_len 40", lambda b: set_bytes(b, E, b"\x4f"), "tcp"),
    ("ip_totlen_gt_frame", "tot_len 1 byte larger than the frame", lambda b: set_u16(b, E + 2, len(b) - E + 1), "tcp"),
    ("ip_totlen_65535", "tot_len 65535", lambda b: set_u16(b, E + 2, 65535), "tcp"),
    ("ip_totlen_lt_header", "tot_len 19 (< IHL*4)", lambda b: set_u16(b, E + 2, 19), "tcp"),
    ("ip_totlen_zero", "tot_len 0", lambda b: set_u16(b, E + 2, 0), "tcp"),
    ("ip_totlen_cuts_tcp", "tot_len leaves 10 bytes of TCP header", lambda b: set_u16(b, E + 2, 30), "tcp"),
    ("tcp_truncated", "frame ends 10 bytes into the TCP header", lambda b: set_u16(b[:I + 10], E + 2, 30), "tcp"),
    ("tcp_doff_4", "TCP data offset 4", lambda b: set_bytes(b, I + 12, b"\x40"), "tcp"),
    ("tcp_doff_0", "TCP data offset 0", lambda b: set_bytes(b, I + 12, b"\x00"), "tcp"),
    ("tcp_doff_15", "TCP data offset 15 (60 bytes) in a 20-byte segment", lambda b: set_bytes(b, I + 12, b"\xf0"), "tcp"),
    ("udp_truncated", "UDP header of 4 bytes", lambda b: set_u16(b[:I + 4], E + 2, 24), "udp"),
    ("udp_len_gt", "UDP length beyond the IP payload", lambda b: set_u16(b, I + 4, 100), "udp"),
    ("udp_len_lt_8", "UDP length 4", lambda b: set_u16(b, I + 4, 4), "udp"),
]

# (entry, node, src, dst, dport): a destination each program would rewrite if it accepted the packet
MALFORMED_TARGETS = [
    ("from_hep", "control", CLIENT, CONTROL, NP_CUSTOMER, NP_ECHO),
    ("from_hep", "control", CLIENT, "198.19.0.9", 22, 53),          # not a service: still malformed
    ("from_wep", "node1", CUSTOMER, DATABASE_CIP, 2379, 7),
    ("to_wep", "node1", DATABASE, CUSTOMER, 40001, 40001),
]


def _malformed_rows() -> list[Case]:
    rows = []
    for entry, node, src, dst, tport, uport in MALFORMED_TARGETS:
        tag = "" if dst != "198.19.0.9" else "_nonservice"
        for name, what, mutate, kind in MALFORMED_MUTATIONS:
            if kind == "udp":
                dst_port = NP_ECHO if entry == "from_hep" and not tag else uport
                if entry == "from_wep":
                    base = lambda s=src: _udp_base(s, CUSTOMER_CIP, 7)
                else:
                    base = lambda s=src, d=dst, dp=dst_port: _udp_base(s, d, dp)
            else:
                base = lambda s=src, d=dst, dp=tport: _tcp_base(s, d, dp)
            rows.append(Case(f"{name}_{entry}{tag}", f"{what} ({entry}{', no service' if tag else ''})", node,
                             entry, lambda m=mutate, b=base: m(b()), "SHOT", "DROP_MALFORMED", no_ct=True))
    return rows


case("malformed", *_malformed_rows())


def by_group() -> dict[str, int]:
    out: dict[str, int] = {}
    for c in CASES:
        out[c.group] = out.get(c.group, 0) + 1
    return out
