"""The node's own connections to services, NATed per packet (to_hep; replies in from_hep/from_wep).

What Calico calls host-networked NAT without connect-time LB: UDP under the default
bpfConnectTimeLoadBalancing TCP, everything when it is Disabled. The node's address is
the client; the frame from the node's stack leaves through eth0's egress (to_hep).
"""
from __future__ import annotations

import pytest

from ebpf_nodeport.testrun import TC_ACT_OK

from .expect import Nat, Same
from .paths import hop, routed
from .topo import (CLIENT, CONTROL, CUSTOMER, CUSTOMER_CIP, DATABASE, NODE1, NODE2,
                   NP_CUSTOMER, NP_ECHO, SUMMARY1, SUMMARY_CIP, base_view, cport, reply, tcp, udp)


def test_remote_backend_roundtrip(cluster):
    """node2 -> customer ClusterIP (backend on node1): DNAT at node2's eth0 egress, plain routing,
    the reply's source put back to the ClusterIP at node2's eth0 ingress."""
    w = "host -> clusterip remote"
    r = hop(cluster, "node2", "to_hep", bytes(tcp(NODE2, cport(), CUSTOMER_CIP, 80, "S")), "REDIRECT", "NAT_NEW",
            Nat(dst=(CUSTOMER, 80)), w)
    r = hop(cluster, "node1", "from_hep", r.data, "OK", "PASS", Same(), w)
    r = hop(cluster, "node1", "from_wep", reply(routed(r), "SA"), "OK", "PASS", Same(), w)
    r = hop(cluster, "node2", "from_hep", routed(r), "OK", "REV_NAT", Nat(src=(CUSTOMER_CIP, 80)), w)
    ack = reply(r.data, "A")
    hop(cluster, "node2", "to_hep", ack, "REDIRECT", "NAT_EST", Nat(dst=(CUSTOMER, 80)), w)


def test_local_backend_roundtrip(cluster):
    """node1 -> customer UDP ClusterIP (a pod of node1): DNAT at eth0 egress, redirected to the pod;
    the pod's answer gets the ClusterIP back in from_wep and goes up node1's own stack."""
    w = "host -> clusterip local"
    r = hop(cluster, "node1", "to_hep", bytes(udp(NODE1, cport(), CUSTOMER_CIP, 7, b"x")), "REDIRECT", "NAT_NEW",
            Nat(dst=(CUSTOMER, 7)), w)
    r = hop(cluster, "node1", "to_wep", r.data, "OK", "CT_EST", Same(), w)
    hop(cluster, "node1", "from_wep", reply(r.data), "OK", "REV_NAT", Nat(src=(CUSTOMER_CIP, 7)), w)


@pytest.mark.parametrize("node, dst, dport, be", [
    ("node1", CONTROL, NP_CUSTOMER, (CUSTOMER, 80)),     # another node's NodePort
    ("node2", NODE1, NP_ECHO, (CUSTOMER, 7)),
])
def test_nodeport_of_any_node(cluster, node, dst, dport, be):
    """A node's own packet to a NodePort on any node address is DNATed where it leaves."""
    frame = udp if be[1] == 7 else tcp
    pkt = frame(dict(node1=NODE1, node2=NODE2)[node], cport(), dst, dport, *(() if frame is udp else ("S",)))
    hop(cluster, node, "to_hep", bytes(pkt), "REDIRECT", "NAT_NEW", Nat(dst=be), "host -> nodeport")


@pytest.mark.parametrize("what, node, pkt", [
    ("routed pod traffic", "node1", lambda: tcp(CUSTOMER, cport(), DATABASE, 2379, "S")),
    ("node to a plain address", "node2", lambda: tcp(NODE2, cport(), CLIENT, 22, "S")),
    ("our own VXLAN", "node2", lambda: udp(NODE2, 50000, NODE1, 4789, b"v" * 60)),
    ("a NodePort reply we send as the frontend", "control",
     lambda: tcp(CONTROL, NP_CUSTOMER, CLIENT, cport(), "SA")),
    ("node to a pod directly", "node2", lambda: tcp(NODE2, cport(), DATABASE, 2379, "S")),
])
def test_everything_else_passes(cluster, what, node, pkt):
    res = hop(cluster, node, "to_hep", bytes(pkt()), "OK", "PASS", Same(), what)
    assert res.retval == TC_ACT_OK


def test_itp_local_holds_for_the_node_own_connections(cluster):
    """summary with internalTrafficPolicy Local: node1's own connections to its ClusterIP all go to node1's
    summary pod (kube-proxy's OUTPUT chain sends the node's sockets to KUBE-SVL too); control, with no
    summary pod, has none to give: dropped and counted, as kube-proxy's "has no local endpoints" DROP."""
    cluster.sync(base_view(summary_itp_local=True))
    for _ in range(8):   # 8 client ports: by hash over both backends, about half would go to node2's pod
        hop(cluster, "node1", "to_hep", bytes(tcp(NODE1, cport(), SUMMARY_CIP, 80, "S")), "REDIRECT", "NAT_NEW",
            Nat(dst=(SUMMARY1, 80)), "host -> iTP Local clusterip, a local backend")
    hop(cluster, "control", "to_hep", bytes(tcp(CONTROL, cport(), SUMMARY_CIP, 80, "S")), "SHOT", "DROP_NO_BACKEND",
        None, "host -> iTP Local clusterip, no local backend")
