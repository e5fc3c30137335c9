"""Map limits: conntrack full (the LRU evicts, new connections still work end to end) and
10,000 services in the frontend map (every one still resolves)."""
from __future__ import annotations

import dataclasses
import ipaddress

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpf_nodeport import abi, libbpf
from ebpf_nodeport.sync import Backend, Service

from .expect import Encap, Nat, check_result
from .paths import request_tunnel
from .topo import (CLIENT, CONTROL, CUSTOMER, MAC_CALI, MAC_POD, NODE1, NODE2, NP_CUSTOMER, WEB, base_view,
                   cport, reply, tcp)


def _fill_ct(node, n: int) -> None:
    """n NAT_REV entries for made-up external clients, all fresh (so none is expired)."""
    now = abi.ktime_ns()
    base = int(ipaddress.IPv4Address("203.0.113.0"))
    ct = node.maps.ct
    for i in range(n):
        k, _ = abi.ct_key(base + (i >> 8), 1024 + (i & 0xFF), CUSTOMER, 80, "tcp")
        v = abi.CtValue(created_ns=now, last_seen_ns=now, type=abi.CT_NAT_REV, flags=abi.CT_F_NODEPORT,
                        tcp_a=abi.TCPF_SYN | abi.TCPF_ACK, tcp_b=abi.TCPF_SYN | abi.TCPF_ACK,
                        nat_addr=int(ipaddress.IPv4Address(CONTROL)), nat_port=NP_CUSTOMER)
        ct.put(k, v)


def test_conntrack_full_lru_still_works(cluster):
    """control's and node1's conntrack hold MAX_CT (65536) live entries; a new NodePort
    connection through both is still created, NATed and answered (the LRU makes room)."""
    for name in ("control", "node1"):
        node = cluster[name]
        cap = node.maps.ct.info.max_entries
        assert cap == 65536
        _fill_ct(node, cap)
        # The kernel's LRU keeps up to LRU_LOCAL_FREE_TARGET (128) free nodes cached per CPU,
        # so a map "full" from user space can sit that many entries short per CPU.
        slack = 128 * libbpf.num_possible_cpus()
        assert len(node.maps.ct) >= cap - slack, f"{name}: could not fill conntrack"
    p = cport()
    be = (CUSTOMER, 80)
    syn = bytes(tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S"))
    r = cluster["control"].run("from_hep", syn, track_ct=False)
    check_result(r, "REDIRECT", "NAT_NEW", Encap(CONTROL, NODE1, Nat(dst=be, ttl_dec=1), fe_port=NP_CUSTOMER))
    for name, key in (("control", abi.ct_key(CLIENT, p, CONTROL, NP_CUSTOMER, "tcp")[0]),
                      ("control", abi.ct_key(CLIENT, p, CUSTOMER, 80, "tcp")[0])):
        assert cluster[name].maps.ct.get(key) is not None, f"{name}: new entry {key} missing with a full map"
    r2 = cluster["node1"].run("from_hep", r.data, track_ct=False)
    check_result(r2, "OK", "DECAP")
    assert cluster["node1"].maps.ct.get(abi.ct_key(CLIENT, p, CUSTOMER, 80, "tcp")[0]) is not None
    r3 = cluster["node1"].run("from_wep", reply(r2.data, "SA"), track_ct=False)
    check_result(r3, "REDIRECT", "ENCAP")
    r4 = cluster["control"].run("from_hep", r3.data, track_ct=False)
    check_result(r4, "REDIRECT", "REV_NAT")
    got = r4.pkt
    assert (got[IP].src, got[TCP].sport, got[IP].dst, got[TCP].dport) == (CONTROL, NP_CUSTOMER, CLIENT, p)
    for name in ("control", "node1"):
        assert len(cluster[name].maps.ct) <= cluster[name].maps.ct.info.max_entries


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
