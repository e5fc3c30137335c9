"""The simulated cluster the datapath tests run against, and packet builders.

Addresses follow docs/conventions.md (yaobank). A few test-only services are
added: one with no backends, one whose backend sits on control (so a NodePort
on control has a local backend and node1 a remote one on control). base_view(lb=True)
adds LoadBalancer services (issue 14, docs/loadbalancer.md): their ingress addresses
from the pool 198.19.48.0/24, an external IP, source ranges, ClientIP affinity, Maglev.
"""
from __future__ import annotations

import itertools
import struct

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from ebpf_nodeport.abi import TUNNEL_PORT, TUNNEL_VNI
from ebpf_nodeport.sync import Backend, ClusterView, Service
from ebpf_nodeport.testrun import unique_name, vxlan_header
from netns_lab import naming

CLIENT = "198.19.15.254"          # host1, outside the cluster
CLIENT2 = "198.19.15.200"         # another external client (opt-out tests)
CONTROL, NODE1, NODE2 = "198.19.0.1", "198.19.0.2", "198.19.0.3"
NODES = {"control": CONTROL, "node1": NODE1, "node2": NODE2}
BLOCKS = {"198.19.16.0/26": CONTROL, "198.19.16.64/26": NODE1, "198.19.16.128/26": NODE2}

WEB = "198.19.16.1"               # pod on control (test-only service "test/web")
CUSTOMER = "198.19.16.65"         # node1
SUMMARY1 = "198.19.16.66"         # node1
SUMMARY2 = "198.19.16.129"        # node2
DATABASE = "198.19.16.130"        # node2
POD_NODE = {WEB: "control", CUSTOMER: "node1", SUMMARY1: "node1", SUMMARY2: "node2",
            DATABASE: "node2"}

CUSTOMER_CIP, SUMMARY_CIP, DATABASE_CIP = "198.19.32.10", "198.19.32.20", "198.19.32.30"
EMPTY_CIP, WEB_CIP = "198.19.32.40", "198.19.32.50"
NP_CUSTOMER, NP_ECHO, NP_EMPTY, NP_WEB = 30180, 30107, 30400, 30500

# LoadBalancer services (base_view(lb=True)), all on port 80
LB_PLAIN, EXT_IP = "198.19.48.1", "198.19.48.200"   # test/lbplain: backend customer (node1), + an external IP
LB_RANGED, EXT_RANGED = "198.19.48.2", "198.19.48.201"  # test/ranged: sources CLIENT/32 and 10.99.0.0/16 only
LB_STICKY = "198.19.48.3"         # test/sticky: ClientIP affinity, STICKY_S seconds, 3 backends on 2 nodes
LB_MAGLEV = "198.19.48.4"         # test/maglev: Maglev, backends summary-1 (node1), summary-2 (node2)
LB_EDGE = "198.19.48.5"           # test/edge: Maglev, both backends on node2
LB_MAGLEV1 = "198.19.48.6"        # test/maglev1: Maglev, the one backend customer (node1)
STICKY_S = 30
STICKY_BACKENDS = [(CUSTOMER, 80), (SUMMARY1, 80), (SUMMARY2, 80)]
EDGE_BACKENDS = [(SUMMARY2, 80), (DATABASE, 80)]

MAC_CLIENT = "02:00:00:00:00:fe"
MAC_NODE = {"control": "02:00:00:00:00:01", "node1": "02:00:00:00:00:02", "node2": "02:00:00:00:00:03"}
MAC_POD = "02:00:00:00:10:01"
MAC_CALI = "ee:ee:ee:ee:ee:ee"


def services() -> list[Service]:
    return [
        Service("yaobank/customer", "tcp", CUSTOMER_CIP, 80, NP_CUSTOMER, [Backend(CUSTOMER, 80)]),
        Service("yaobank/customer", "udp", CUSTOMER_CIP, 7, NP_ECHO, [Backend(CUSTOMER, 7)]),
        Service("yaobank/summary", "tcp", SUMMARY_CIP, 80, None,
                [Backend(SUMMARY1, 80), Backend(SUMMARY2, 80)]),
        Service("yaobank/database", "tcp", DATABASE_CIP, 2379, None, [Backend(DATABASE, 2379)]),
        Service("test/empty", "tcp", EMPTY_CIP, 80, NP_EMPTY, []),
        Service("test/web", "tcp", WEB_CIP, 8080, NP_WEB, [Backend(WEB, 8080)]),
    ]


def lb_services() -> list[Service]:
    """The LoadBalancer services of base_view(lb=True)."""
    def lb(name: str, cip: str, lb_ip: str, backends: list[tuple[str, int]], **kw) -> Service:
        return Service(f"test/{name}", "tcp", cip, 80, None, [Backend(a, p) for a, p in backends], lb_ip=lb_ip, **kw)

    return [
        lb("lbplain", "198.19.32.60", LB_PLAIN, [(CUSTOMER, 80)], external_ips=[EXT_IP]),
        lb("ranged", "198.19.32.61", LB_RANGED, [(CUSTOMER, 80)], external_ips=[EXT_RANGED],
           source_ranges=[f"{CLIENT}/32", "10.99.0.0/16"]),
        lb("sticky", "198.19.32.62", LB_STICKY, STICKY_BACKENDS, affinity_timeout=STICKY_S),
        lb("maglev", "198.19.32.63", LB_MAGLEV, [(SUMMARY1, 80), (SUMMARY2, 80)], maglev=True),
        lb("edge", "198.19.32.64", LB_EDGE, EDGE_BACKENDS, maglev=True),
        lb("maglev1", "198.19.32.65", LB_MAGLEV1, [(CUSTOMER, 80)], maglev=True),
    ]


def pin_root() -> str:
    """A unique pin root for a SimCluster, where the lab's pins live, so that
    `netns-lab down --all` finds what a crashed test run left."""
    return str(naming.bpf_dir(unique_name()))


def base_view(mode: str = "tunnel", dsr_optout: list[str] | None = None, lb: bool = False) -> ClusterView:
    return ClusterView(nodes=dict(NODES), pod_blocks=dict(BLOCKS),
                       services=services() + (lb_services() if lb else []), mode=mode,
                       dsr_optout=list(dsr_optout or []))


# --- packets -----------------------------------------------------------------------

_ports = itertools.count(40000)


def cport() -> int:
    """A fresh client port: every test flow gets its own 5-tuple."""
    return next(_ports)


def tcp(src: str, sport: int, dst: str, dport: int, flags: str = "S", payload: bytes = b"", *,
        seq: int = 1000, ack: int = 0, ttl: int = 64, tos: int = 0, ident: int = 1,
        ipflags: str = "DF", options: list | None = None, mac_src: str = MAC_CLIENT,
        mac_dst: str = MAC_NODE["control"]) -> Ether:
    ip = IP(src=src, dst=dst, ttl=ttl, tos=tos, id=ident, flags=ipflags)
    if options is not None:
        ip.options = options
    return (Ether(src=mac_src, dst=mac_dst) / ip /
            TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=64240) / Raw(payload))


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes = b"echo", *, ttl: int = 64,
        chksum: int | None = None, ipflags: str = "", mac_src: str = MAC_CLIENT,
        mac_dst: str = MAC_NODE["control"]) -> Ether:
    u = UDP(sport=sport, dport=dport)
    if chksum is not None:
        u.chksum = chksum
    return Ether(src=mac_src, dst=mac_dst) / IP(src=src, dst=dst, ttl=ttl, flags=ipflags) / u / Raw(payload)


def vxlan(outer_src: str, outer_dst: str, inner: Ether | bytes, *, vni: int = TUNNEL_VNI,
          dsr: bool = False, fe_port: int = 0, sport: int = 50000, flags: int = 0x08,
          outer_ttl: int = 64) -> Ether:
    """A VXLAN packet in our layout (docs/datapath.md): outer IPv4/UDP 4789, header, inner frame."""
    inner_b = bytes(inner)
    return (Ether(src=MAC_NODE["control"], dst=MAC_NODE["node1"]) /
            IP(src=outer_src, dst=outer_dst, ttl=outer_ttl, flags="DF", id=0) /
            UDP(sport=sport, dport=TUNNEL_PORT, chksum=0) /
            Raw(vxlan_header(vni, dsr=dsr, fe_port=fe_port, flags=flags) + inner_b))


def arp() -> Ether:
    return Ether(src=MAC_CLIENT, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=CLIENT, pdst=CONTROL)


def ipv6() -> Ether:
    return (Ether(src=MAC_CLIENT, dst=MAC_NODE["control"]) /
            IPv6(src="fd00::fe", dst="fd00::1") / TCP(sport=40000, dport=NP_CUSTOMER, flags="S"))


def icmp_echo(src: str, dst: str) -> Ether:
    return Ether(src=MAC_CLIENT, dst=MAC_NODE["control"]) / IP(src=src, dst=dst) / ICMP(id=7, seq=1) / Raw(b"ping")


def reply(frame: bytes, flags: str | None = None, payload: bytes = b"", *, ttl: int = 64) -> bytes:
    """What the peer sends back to `frame` (the packet as it was delivered): addresses and
    ports swapped, TCP seq/ack following the segment. Used for pods and clients alike."""
    p = Ether(frame)
    ip = p[IP]
    eth = Ether(src=p.dst, dst=p.src)
    if TCP in p:
        t = p[TCP]
        seglen = len(bytes(t.payload)) + (1 if t.flags.S or t.flags.F else 0)
        if flags is None:
            flags = "SA" if t.flags.S and not t.flags.A else "A"
        out = eth / IP(src=ip.dst, dst=ip.src, ttl=ttl, flags="DF") / TCP(
            sport=t.dport, dport=t.sport, flags=flags, seq=t.ack or 5000, ack=t.seq + seglen,
            window=64240) / Raw(payload)
    elif UDP in p:
        u = p[UDP]
        out = eth / IP(src=ip.dst, dst=ip.src, ttl=ttl) / UDP(sport=u.dport, dport=u.sport) / Raw(
            payload or bytes(u.payload))
    else:
        raise ValueError(f"cannot answer {p.summary()}")
    return bytes(out)


def follow(frame: bytes, flags: str = "A", payload: bytes = b"", *, ttl: int = 64) -> bytes:
    """The next segment from the same sender as `frame` (same 5-tuple), e.g. the client's ACK."""
    p = Ether(frame)
    ip, t = p[IP], p[TCP]
    seglen = len(bytes(t.payload)) + (1 if t.flags.S or t.flags.F else 0)
    return bytes(Ether(src=p.src, dst=p.dst) / IP(src=ip.src, dst=ip.dst, ttl=ttl, flags="DF") / TCP(
        sport=t.sport, dport=t.dport, flags=flags, seq=t.seq + seglen, ack=t.ack or 5001,
        window=64240) / Raw(payload))


def set_bytes(frame: bytes | Ether, offset: int, value: bytes) -> bytes:
    b = bytearray(bytes(frame))
    b[offset:offset + len(value)] = value
    return bytes(b)


def set_u16(frame: bytes | Ether, offset: int, value: int) -> bytes:
    return set_bytes(frame, offset, struct.pack("!H", value))
