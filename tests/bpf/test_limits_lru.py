"""The LRU conntrack build (CT_MAP_TYPE "lru_hash", the default before issue 17) when full: the
LRU evicts, and a new connection still works end to end. The default plain hash's contract:
test_limits.py."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpf_nodeport import abi, libbpf

from .conftest import loaded_cluster, reset_cluster
from .expect import Encap, Nat, check_result
from .topo import CLIENT, CONTROL, CUSTOMER, NODE1, NP_CUSTOMER, cport, reply, tcp


@pytest.fixture(scope="module")
def _lru_cluster(netns):
    """The table's cluster built with an LRU conntrack map of 65,536 entries (its own pins)."""
    with loaded_cluster(netns, {"CT_MAP_TYPE": '"lru_hash"', "MAX_CT": 65536}) as cl:
        assert cl["control"].maps.ct.info.type == abi.BPF_MAP_TYPE_LRU_HASH
        yield cl


@pytest.fixture
def cluster(_lru_cluster, netns):
    """This module's cluster: the LRU build, reset to the base view with empty conntrack."""
    with reset_cluster(_lru_cluster, netns) as cl:
        yield cl


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
