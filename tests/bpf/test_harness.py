"""The harness itself: its checkers reject what they must (so a green run means something),
and pins are removed even when loading fails."""
from __future__ import annotations

import ipaddress
import os

import pytest

from ebpf_nodeport.testrun import SimCluster, kernel_route, parse_ip4, scapy_checksum_errors, ip_hdr_csum_ok

from .expect import Encap, Nat, Same, check_result
from .fuzz import Judge, malformed, nat_of
from .topo import CLIENT, CONTROL, CUSTOMER, NODE1, NODES, NP_CUSTOMER, base_view, cport, pin_root, tcp, udp


def _flip(frame: bytes, offset: int) -> bytes:
    b = bytearray(frame)
    b[offset] ^= 0x01
    return bytes(b)


def test_checksum_checker_catches_errors():
    good = bytes(tcp(CLIENT, 1234, CONTROL, 80, "PA", b"payload"))
    assert scapy_checksum_errors(good) == []
    assert any("TCP" in e for e in scapy_checksum_errors(_flip(good, len(good) - 1)))
    assert any("IP" in e for e in scapy_checksum_errors(_flip(good, 14 + 8)))


def test_kernel_route_decrements_ttl_keeps_checksum():
    f = kernel_route(bytes(tcp(CLIENT, 1, CONTROL, 2, ttl=64)))
    ip = parse_ip4(f)
    assert ip.ttl == 63 and ip_hdr_csum_ok(ip.hdr)


def test_judge_accepts_rewrites_rejects_corruption(cluster):
    """The fuzz judge on real program outputs: the genuine rewrite passes, a one-byte
    corruption of it does not."""
    judge = Judge(ipaddress.IPv4Address(CONTROL).packed, {ipaddress.IPv4Address(a).packed for a in NODES.values()})
    syn = bytes(tcp(CLIENT, cport(), CONTROL, NP_CUSTOMER, "PA", b"abcdef"))
    res = cluster.run("control", "from_hep", syn)
    assert res.verdict == "REDIRECT"
    assert judge(syn, res.data) is None
    # outer proto, outer source, UDP dport, VXLAN flags, VNI, inner TTL, inner destination, payload
    for off in (23, 26, 36, 42, 46, 64 + 8, 64 + 16, len(res.data) - 1):
        assert judge(syn, _flip(res.data, off)) is not None, f"corruption at byte {off} accepted"
    local = bytes(tcp(CLIENT, cport(), NODE1, NP_CUSTOMER, "PA", b"abc"))
    res = cluster.run("node1", "from_hep", local)
    assert nat_of(local, res.data) is None
    assert nat_of(local, _flip(res.data, len(res.data) - 1)) is not None
    assert nat_of(local, _flip(res.data, 14 + 1)) is not None          # TOS


def test_expectations_fail_on_wrong_output(cluster):
    syn = bytes(tcp(CLIENT, cport(), CONTROL, NP_CUSTOMER, "S"))
    res = cluster.run("control", "from_hep", syn)
    check_result(res, "REDIRECT", "NAT_NEW",
                 Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER))
    for wrong in (Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER + 1),
                  Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER, dsr=True),
                  Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 81), ttl_dec=1), fe_port=NP_CUSTOMER),
                  Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=0), fe_port=NP_CUSTOMER),
                  Same()):
        with pytest.raises(AssertionError):
            check_result(res, "REDIRECT", "NAT_NEW", wrong)
    with pytest.raises(AssertionError):
        check_result(res, "REDIRECT", "ENCAP")
    with pytest.raises(AssertionError):
        check_result(res, "OK", "NAT_NEW")


def test_malformed_matches_contract_examples():
    good = bytes(tcp(CLIENT, 1, CONTROL, 2))
    assert not malformed(good)
    assert malformed(good[:14] + b"\x44" + good[15:])
    assert not malformed(bytes(udp(CLIENT, 1, CONTROL, 2)) + b"\0" * 10)     # Ethernet padding is fine


def test_pins_removed_when_load_fails(netns):
    root = pin_root()
    cl = SimCluster(base_view(), pin_root=root, nodes=["control"], defines={"MAX_NODES": "(no such thing"})
    with netns.inside(), pytest.raises(Exception):
        cl.load()
    assert not os.path.exists(root), "a failed load left pins behind"
