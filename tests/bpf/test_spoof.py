"""Spoofing check on established flows: from_hep skips its LPM lookup only when the conntrack
entry proves the source passed it at creation (an external client's NAT_FWD); a packet with a
local pod's address arriving from outside still never uses, nor changes, an established entry."""
from __future__ import annotations

import dataclasses

from ebpf_nodeport import abi

from .expect import Nat, check_result
from .paths import hop, reply_local, request_local
from .topo import (CLIENT, CUSTOMER, CUSTOMER_CIP, MAC_CALI, MAC_POD, NODE1, NP_CUSTOMER, SUMMARY1, cport,
                   reply, tcp)


def _entry_bytes(cluster, node: str, a: tuple[str, int], b: tuple[str, int]) -> bytes:
    k, _ = abi.ct_key(a[0], a[1], b[0], b[1], "tcp")
    v = cluster[node].maps.ct.get(k)
    assert v is not None, f"{node}: no entry {a}<->{b}"
    return bytes(v)


def test_spoofed_reply_of_local_backend_flow_dropped(cluster):
    """A NodePort flow to node1's local pod is established; a packet from that pod's address
    (its 4-tuple exactly the flow's reply) arriving on node1's eth0 is DROP_SPOOFED, and the
    flow's NAT_REV entry is left exactly as it was."""
    p, fe, be = cport(), (NODE1, NP_CUSTOMER), (CUSTOMER, 80)
    at_pod = request_local(cluster, bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER, "S")), "node1", be, first=True,
                           where="spoof")
    to_client = reply_local(cluster, reply(at_pod, "SA"), "node1", fe, where="spoof")
    at_pod = request_local(cluster, reply(to_client, "A"), "node1", be, first=False, where="spoof")
    before = _entry_bytes(cluster, "node1", (CLIENT, p), be)
    for flags in ("PA", "S", "R"):
        r = cluster["node1"].run("from_hep", reply(at_pod, flags, b"x" if flags == "PA" else b""))
        check_result(r, "SHOT", "DROP_SPOOFED", where=f"spoofed {flags} from the local backend")
    assert _entry_bytes(cluster, "node1", (CLIENT, p), be) == before, "a spoofed packet changed the entry"
    # the real flow still works
    request_local(cluster, reply(to_client, "PA", b"more"), "node1", be, first=False, where="spoof after")


def test_spoofed_pod_client_request_dropped(cluster):
    """summary-1 (node1) has a ClusterIP connection open; its next packet, arriving on node1's
    eth0 instead of its veth, is DROP_SPOOFED (the NAT_FWD entry is a pod client's, which
    proves nothing about a packet from outside) and the entry is unchanged."""
    p = cport()
    syn = bytes(tcp(SUMMARY1, p, CUSTOMER_CIP, 80, "S", mac_src=MAC_POD, mac_dst=MAC_CALI))
    hop(cluster, "node1", "from_wep", syn, "OK", "NAT_NEW", Nat(dst=(CUSTOMER, 80)), "pod client")
    before = _entry_bytes(cluster, "node1", (SUMMARY1, p), (CUSTOMER_CIP, 80))
    r = cluster["node1"].run("from_hep", bytes(tcp(SUMMARY1, p, CUSTOMER_CIP, 80, "A")))
    check_result(r, "SHOT", "DROP_SPOOFED", where="spoofed pod-client request from outside")
    assert _entry_bytes(cluster, "node1", (SUMMARY1, p), (CUSTOMER_CIP, 80)) == before


def test_external_client_established_request_not_checked_twice(cluster):
    """The request of an established external connection is DNATed (NAT_EST) whatever the
    client's address is, as long as the entry says it passed the check when it was created:
    the same packet of a client whose address has since become node1's pod block is still
    NATed, because the entry (not a fresh LPM lookup) decides. A new connection from it is
    dropped."""
    p, be = cport(), (CUSTOMER, 80)
    request_local(cluster, bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER, "S")), "node1", be, first=True, where="est")
    view = cluster.view
    blocks = dict(view.pod_blocks)
    blocks[f"{CLIENT}/32"] = NODE1
    try:
        cluster.sync(dataclasses.replace(view, pod_blocks=blocks))
        r = cluster["node1"].run("from_hep", bytes(tcp(CLIENT, p, NODE1, NP_CUSTOMER, "A")))
        check_result(r, "OK", "NAT_EST", Nat(dst=be), where="established request, entry proves the check")
        r = cluster["node1"].run("from_hep", bytes(tcp(CLIENT, cport(), NODE1, NP_CUSTOMER, "S")))
        check_result(r, "SHOT", "DROP_SPOOFED", where="new connection from what is now a local pod address")
    finally:
        cluster.sync(view)
