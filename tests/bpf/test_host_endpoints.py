"""Backends outside the pod blocks: a host-network endpoint at a node's own address.

The ingress node tunnels to the node whose address the backend is (nat.h remote_node_of),
which delivers to its own stack; the answer leaves that node's stack through eth0, where
to_hep sends it back in VXLAN (Tunnel), straight to the client as the frontend (DSR), or,
when the endpoint is the ingress node itself, puts the frontend back as source.
"""
from __future__ import annotations

import pytest

from ebpf_nodeport.sync import Backend, Service

from .expect import Decap, Encap, Nat
from .paths import hop
from .topo import CLIENT, CONTROL, NODE2, NODES, base_view, cport, reply, tcp, udp

NP_HOST = 30600


def view_with(backend: str, mode: str):
    """The base view plus a NodePort service whose one endpoint is a node address, port 9000."""
    view = base_view(mode=mode)
    view.services.append(Service("test/hostnet", "tcp", "198.19.32.60", 9000, NP_HOST, [Backend(backend, 9000)]))
    view.services.append(Service("test/hostnet", "udp", "198.19.32.60", 9000, NP_HOST, [Backend(backend, 9000)]))
    return view


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_tunnel_reply_from_another_node(cluster, proto):
    cluster.sync(view_with(NODE2, "tunnel"))
    w = "host endpoint, tunnel"
    pkt = tcp(CLIENT, cport(), CONTROL, NP_HOST, "S") if proto == "tcp" else udp(CLIENT, cport(), CONTROL, NP_HOST)
    r = hop(cluster, "control", "from_hep", bytes(pkt), "REDIRECT", "NAT_NEW",
            Encap(NODES["control"], NODES["node2"], Nat(dst=(NODE2, 9000), ttl_dec=1), dsr=False, fe_port=NP_HOST), w)
    r = hop(cluster, "node2", "from_hep", r.data, "OK", "DECAP", Decap(Nat()), w)
    r = hop(cluster, "node2", "to_hep", reply(r.data), "REDIRECT", "ENCAP",
            Encap(NODES["node2"], NODES["control"], Nat(), dsr=False, fe_port=0), w)
    hop(cluster, "control", "from_hep", r.data, "REDIRECT", "REV_NAT", Decap(Nat(src=(CONTROL, NP_HOST), ttl_dec=1)), w)


def test_dsr_reply_from_another_node(cluster):
    cluster.sync(view_with(NODE2, "dsr"))
    w = "host endpoint, dsr"
    r = hop(cluster, "control", "from_hep", bytes(tcp(CLIENT, cport(), CONTROL, NP_HOST, "S")), "REDIRECT", "NAT_NEW",
            Encap(NODES["control"], NODES["node2"], Nat(dst=(NODE2, 9000), ttl_dec=1), dsr=True, fe_port=NP_HOST), w)
    r = hop(cluster, "node2", "from_hep", r.data, "OK", "DECAP", Decap(Nat()), w)
    hop(cluster, "node2", "to_hep", reply(r.data, "SA"), "OK", "DSR_REPLY", Nat(src=(CONTROL, NP_HOST)), w)


def test_endpoint_on_the_ingress_node(cluster):
    cluster.sync(view_with(CONTROL, "tunnel"))
    w = "host endpoint, local"
    r = hop(cluster, "control", "from_hep", bytes(tcp(CLIENT, cport(), CONTROL, NP_HOST, "S")), "OK", "NAT_NEW",
            Nat(dst=(CONTROL, 9000)), w)
    hop(cluster, "control", "to_hep", reply(r.data, "SA"), "OK", "REV_NAT", Nat(src=(CONTROL, NP_HOST)), w)
