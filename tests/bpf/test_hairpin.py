"""Hairpin: a pod reaching its own service and given itself as the backend (lib/hairpin.h).

The request is DNATed to the pod and SNATed to its node's address, and sent back out of
the pod's veth; the pod's answer to the node gets the ClusterIP as source and the pod as
destination, back out of the same veth. Calico does the SNAT with iptables MASQUERADE.
"""
from __future__ import annotations

from ebpf_nodeport import abi

from .expect import Nat, Same
from .paths import hop
from .test_flows import _pod_frame
from .topo import NODE1, SUMMARY1, SUMMARY_CIP, cport, reply, tcp


def self_port() -> int:
    """A client port whose connection to the summary ClusterIP node1 sends to summary-1 itself
    (node1 lists its local backend first: ordinal 0 of 2)."""
    while True:
        p = cport()
        if abi.backend_ordinal(2, SUMMARY1, p, SUMMARY_CIP, 80, "tcp") == 0:
            return p


def test_pod_reaches_itself_through_its_service(cluster):
    w = "hairpin"
    p = self_port()
    syn = _pod_frame(bytes(tcp(SUMMARY1, p, SUMMARY_CIP, 80, "S")))
    r = hop(cluster, "node1", "from_wep", syn, "REDIRECT", "NAT_NEW",
            Nat(src=(NODE1, p), dst=(SUMMARY1, 80), swap_mac=True), w)
    r = hop(cluster, "node1", "to_wep", r.data, "OK", "CT_EST", Same(), w)
    synack = _pod_frame(reply(r.data, "SA"))
    r = hop(cluster, "node1", "from_wep", synack, "REDIRECT", "REV_NAT",
            Nat(src=(SUMMARY_CIP, 80), dst=(SUMMARY1, p), swap_mac=True), w)
    r = hop(cluster, "node1", "to_wep", r.data, "OK", "CT_EST", Same(), w)
    ack = _pod_frame(reply(r.data, "A"))
    hop(cluster, "node1", "from_wep", ack, "REDIRECT", "NAT_EST",
        Nat(src=(NODE1, p), dst=(SUMMARY1, 80), swap_mac=True), w)
    key, _ = abi.ct_key(NODE1, p, SUMMARY1, 80, "tcp")   # the NAT_REV is keyed after the SNAT
    rev = cluster["node1"].maps.ct.get(key)
    assert rev is not None and rev.type == abi.CT_NAT_REV and rev.nat_addr == abi.ip2int(SUMMARY_CIP)
