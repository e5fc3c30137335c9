"""Packet paths across simulated nodes: one program's output fed to the next, every hop checked.

A path function runs one packet from where it enters the datapath to where it leaves
it (a pod, or the client), asserting each hop's verdict, counter reason and output
against the contract, and returns the frame as delivered. Between hops the kernel's
own forwarding is applied (testrun.kernel_route: TTL - 1 after TC_ACT_OK on a routed
hop); redirected packets travel unchanged.
"""
from __future__ import annotations

from ebpf_nodeport.testrun import TC_ACT_OK, RunResult, SimCluster, kernel_route

from .expect import Decap, Encap, Expect, Nat, Same, check_result
from .topo import NODES

Addr = tuple[str, int]


def hop(cluster: SimCluster, node: str, entry: str, frame: bytes, verdict: str | set[str],
        reason: str | set[str], out: Expect | None = None, where: str = "") -> RunResult:
    res = cluster.run(node, entry, frame)
    check_result(res, verdict, reason, out, where=f"{where}: {node}/{entry}")
    return res


def routed(res: RunResult) -> bytes:
    """The frame as the next hook sees it after the kernel forwarded it."""
    if res.retval == TC_ACT_OK and res.entry in ("from_hep", "from_wep"):
        return kernel_route(res.data)
    return res.data


def request_tunnel(cluster: SimCluster, frame: bytes, ingress: str, backend_node: str, be: Addr,
                   *, first: bool, dsr: bool, fe_port: int, where: str) -> bytes:
    """Client -> ingress from_hep (DNAT + VXLAN) -> backend node from_hep (decap) -> to_wep.
    Returns the frame delivered to the pod."""
    r1 = hop(cluster, ingress, "from_hep", frame, "REDIRECT", "NAT_NEW" if first else "ENCAP",
             Encap(NODES[ingress], NODES[backend_node], Nat(dst=be, ttl_dec=1), dsr=dsr, fe_port=fe_port),
             where)
    r2 = hop(cluster, backend_node, "from_hep", r1.data, "OK", "DECAP", Decap(Nat()), where)
    r3 = hop(cluster, backend_node, "to_wep", routed(r2), "OK", "CT_EST", Same(), where)
    return r3.data


def reply_tunnel(cluster: SimCluster, frame: bytes, ingress: str, backend_node: str, fe: Addr,
                 *, where: str) -> bytes:
    """Pod reply -> backend node from_wep (VXLAN back, port 0, no flags) -> ingress from_hep
    (decap + reverse NAT, redirect). Returns the frame leaving toward the client."""
    r1 = hop(cluster, backend_node, "from_wep", frame, "REDIRECT", "ENCAP",
             Encap(NODES[backend_node], NODES[ingress], Nat(ttl_dec=1), dsr=False, fe_port=0), where)
    r2 = hop(cluster, ingress, "from_hep", r1.data, "REDIRECT", "REV_NAT",
             Decap(Nat(src=fe, ttl_dec=1)), where)
    return r2.data


def reply_dsr(cluster: SimCluster, frame: bytes, backend_node: str, fe: Addr, *, where: str) -> bytes:
    """Pod reply -> backend node from_wep: source = frontend, straight out of eth0 (no tunnel)."""
    r = hop(cluster, backend_node, "from_wep", frame, "REDIRECT", "DSR_REPLY", Nat(src=fe, ttl_dec=1), where)
    return r.data


def request_local(cluster: SimCluster, frame: bytes, node: str, be: Addr, *, first: bool,
                  where: str) -> bytes:
    """Client -> from_hep (DNAT, TC_ACT_OK) -> to_wep of the local backend pod."""
    r1 = hop(cluster, node, "from_hep", frame, "OK", "NAT_NEW" if first else "NAT_EST", Nat(dst=be), where)
    r2 = hop(cluster, node, "to_wep", routed(r1), "OK", "CT_EST", Same(), where)
    return r2.data


def reply_local(cluster: SimCluster, frame: bytes, node: str, fe: Addr, *, where: str) -> bytes:
    """Local backend's reply -> from_wep: reverse NAT, redirect out of eth0."""
    r = hop(cluster, node, "from_wep", frame, "REDIRECT", "REV_NAT", Nat(src=fe, ttl_dec=1), where)
    return r.data
