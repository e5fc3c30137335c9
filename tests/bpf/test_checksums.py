"""Checksums beyond "valid after rewrite" (which every table row and flow hop already asserts
with scapy): the checksum offload state, and incremental (never recomputed) updates.

BPF_PROG_TEST_RUN cannot make a CHECKSUM_PARTIAL skb (struct __sk_buff has no ip_summed),
so two properties stand in for it:
- BPF_F_TEST_SKB_CHECKSUM_COMPLETE (kernel >= 6.11): the skb arrives CHECKSUM_COMPLETE and
  the kernel fails the run (EBADMSG) when the program leaves skb->csum inconsistent with the
  bytes. The helpers that keep COMPLETE right (l3/l4_csum_replace with BPF_F_PSEUDO_HDR on
  address changes) are the ones that keep CHECKSUM_PARTIAL right. Checked on every path that
  hands the packet to the local stack (TC_ACT_OK), where skb->csum is used to validate L4.
- Incremental updates: a packet whose L4 checksum is off by some amount (as a partial
  checksum is, relative to a full one) leaves off by exactly the same amount. A program that
  recomputed the checksum from the payload would break CHECKSUM_PARTIAL packets (and hide
  corruption); this catches it.
"""
from __future__ import annotations

import os
import struct
from typing import Callable

import pytest
from scapy.layers.l2 import Ether

from ebpf_nodeport import kernel
from ebpf_nodeport.testrun import (BPF_F_TEST_SKB_CHECKSUM_COMPLETE, csum16, parse_ip4,
                                   parse_vxlan)

from .expect import check_result
from .paths import request_local, routed
from .topo import (CLIENT, CONTROL, CUSTOMER, CUSTOMER_CIP, DATABASE_CIP, MAC_CALI, MAC_POD, NODE1,
                   NP_CUSTOMER, NP_ECHO, SUMMARY1, cport, reply, tcp, udp, vxlan)


def _pod(frame) -> bytes:
    p = Ether(bytes(frame))
    p.src, p.dst = MAC_POD, MAC_CALI
    return bytes(p)


def _residual(frame: bytes) -> int:
    """One's-complement sum over pseudo-header + L4 segment: 0xffff when the checksum is right;
    otherwise how far off it is."""
    ip = parse_ip4(frame)
    pseudo = ip.saddr + ip.daddr + struct.pack("!BBH", 0, ip.proto, len(ip.seg))
    return csum16(ip.seg, csum16(pseudo))


def _skew(frame: bytes, by: int = 0x0101) -> bytes:
    """The same frame with its L4 checksum off by `by`."""
    ip = parse_ip4(frame)
    off = ip.l4_off + (16 if ip.proto == 6 else 6)
    b = bytearray(frame)
    v = (struct.unpack_from("!H", b, off)[0] + by) & 0xFFFF
    struct.pack_into("!H", b, off, v or 0x0101)
    return bytes(b)


# (name, setup(cluster) -> (node, entry, frame), expected verdict, expected reason)
OK_PATHS: list[tuple[str, Callable, str, str]] = [
    ("nodeport_local_dnat_tcp",
     lambda c: ("node1", "from_hep", bytes(tcp(CLIENT, cport(), NODE1, NP_CUSTOMER, "PA", b"payload" * 20))),
     "OK", "NAT_NEW"),
    ("nodeport_local_dnat_udp",
     lambda c: ("node1", "from_hep", bytes(udp(CLIENT, cport(), NODE1, NP_ECHO, b"payload" * 20))), "OK", "NAT_NEW"),
    ("decap_tcp",
     lambda c: ("node1", "from_hep", bytes(vxlan(CONTROL, NODE1, bytes(tcp(CLIENT, cport(), CUSTOMER, 80, "PA",
                                                                         b"z" * 100, ttl=63)),
                                                 fe_port=NP_CUSTOMER))), "OK", "DECAP"),
    ("clusterip_dnat_tcp",
     lambda c: ("node1", "from_wep", _pod(tcp(CUSTOMER, cport(), DATABASE_CIP, 2379, "PA", b"q" * 64))),
     "OK", "NAT_NEW"),
    ("clusterip_dnat_udp",
     lambda c: ("node1", "from_wep", _pod(udp(SUMMARY1, cport(), CUSTOMER_CIP, 7, b"q" * 64))), "OK", "NAT_NEW"),
    ("clusterip_reverse_nat_to_wep", lambda c: _cip_reply(c), "OK", "REV_NAT"),
    ("nodeport_local_established", lambda c: _np_local_second(c), "OK", "NAT_EST"),
]


def _cip_reply(cluster):
    p = cport()
    r = cluster.run("node1", "from_wep", _pod(tcp(CUSTOMER, p, DATABASE_CIP, 2379, "S")))
    check_result(r, "OK", "NAT_NEW")
    return "node1", "to_wep", reply(routed(r), "SA", b"r" * 80)


def _np_local_second(cluster):
    p = cport()
    request_local(cluster, bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER, "S")), "node1", (CUSTOMER, 80), first=True,
                  where="setup")
    return "node1", "from_hep", bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER, "PA", b"w" * 90, seq=1001))


@pytest.mark.parametrize("name,setup,verdict,reason", OK_PATHS, ids=[p[0] for p in OK_PATHS])
def test_checksum_complete_kept(cluster, name, setup, verdict, reason):
    """Delivered to the local stack as CHECKSUM_COMPLETE: skb->csum must still match the bytes
    (else the kernel's test-run fails with EBADMSG), and the packet's checksums are valid."""
    if not kernel.test_run_checksum_complete():
        pytest.skip(f"kernel {os.uname().release} lacks the test-run flag BPF_F_TEST_SKB_CHECKSUM_COMPLETE "
                    "(6.11+, some stable backports): the kernel refuses it")
    node, entry, frame = setup(cluster)
    res = cluster.run(node, entry, frame, flags=BPF_F_TEST_SKB_CHECKSUM_COMPLETE)
    check_result(res, verdict, reason, where=f"{name} (CHECKSUM_COMPLETE)")


# Paths that rewrite and forward (name, setup -> (node, entry, frame), verdict, reason)
SKEW_PATHS: list[tuple[str, Callable, str, str]] = OK_PATHS[:2] + OK_PATHS[3:] + [
    ("nodeport_remote_encap_tcp",
     lambda c: ("control", "from_hep", bytes(tcp(CLIENT, cport(), CONTROL, NP_CUSTOMER, "PA", b"e" * 50))),
     "REDIRECT", "NAT_NEW"),
    ("nodeport_remote_encap_udp",
     lambda c: ("control", "from_hep", bytes(udp(CLIENT, cport(), CONTROL, NP_ECHO, b"e" * 50))),
     "REDIRECT", "NAT_NEW"),
    ("nodeport_local_reply_rev_nat", lambda c: _np_local_reply(c), "REDIRECT", "REV_NAT"),
]


def _np_local_reply(cluster):
    p = cport()
    at_pod = request_local(cluster, bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER, "S")), "node1", (CUSTOMER, 80),
                           first=True, where="setup")
    return "node1", "from_wep", reply(at_pod, "SA", b"s" * 70)


@pytest.mark.parametrize("name,setup,verdict,reason", SKEW_PATHS, ids=[p[0] for p in SKEW_PATHS])
def test_checksum_updated_incrementally(cluster, name, setup, verdict, reason):
    """An L4 checksum that was off by 0x0101 before the rewrite is off by exactly that after."""
    node, entry, frame = setup(cluster)
    skewed = _skew(frame)
    before = _residual(skewed)
    assert before != 0xFFFF
    res = cluster.run(node, entry, skewed)
    assert res.verdict == verdict and res.reason == reason, res.describe()
    vx = parse_vxlan(res.data)
    out = vx.inner if vx is not None else res.data
    assert out != skewed, "the path under test did not rewrite anything"
    assert _residual(out) == before, (
        f"{name}: checksum error changed from {before:#06x} to {_residual(out):#06x}: "
        "the checksum was recomputed, not updated")
