"""Netfilter conntrack cleanup of gone UDP endpoints, as kube-proxy does it after an endpoint change.

A UDP "flow" has no end the kernel can see, so its conntrack entry keeps the DNAT chosen for
the first datagram while the client keeps sending: without a delete, datagrams keep going to
a removed endpoint until the entry idles out. kube-proxy therefore deletes, on every node, the
UDP entries whose reply source (the DNAT target) is an endpoint no longer in any service.
Done over ctnetlink (pyroute2), from a thread inside the node's namespace; no conntrack CLI.

A pod that goes takes its address with it: Calico's Felix then deletes every conntrack entry
with that address in any of its four places (orig/reply source/destination), so an open TCP
flow is not kept on a DNAT to nothing. Felix does it on the pod's own node (where its route
goes); the lab does it on every node (flush_addr), so that an ingress node's DNAT entry goes too.
"""
from __future__ import annotations

import socket
from typing import Iterable

from ebpf_nodeport.netns import Netns


def _delete_stale(live: frozenset[tuple[str, int]]) -> int:
    """In the current namespace: delete DNATed UDP entries whose reply source is not in `live`; the count."""
    from pyroute2 import Conntrack

    n = 0
    with Conntrack() as ct:
        stale = []
        for e in ct.dump_entries():
            o, r = e.tuple_orig, e.tuple_reply
            if o.proto != socket.IPPROTO_UDP or (o.daddr, o.dport) == (r.saddr, r.sport):
                continue  # not UDP, or not DNATed (no service in between)
            if (r.saddr, r.sport) not in live:
                stale.append(e)
        for e in stale:
            try:
                ct.delete(e)
                n += 1
            except Exception:  # already gone (expired, or deleted by a racing datagram's path)
                pass
    return n


def _delete_addr(addr: str) -> int:
    """In the current namespace: delete every entry with `addr` as an original or reply source or destination."""
    from pyroute2 import Conntrack

    n = 0
    with Conntrack() as ct:
        stale = [e for e in ct.dump_entries()
                 if addr in (e.tuple_orig.saddr, e.tuple_orig.daddr, e.tuple_reply.saddr, e.tuple_reply.daddr)]
        for e in stale:
            try:
                ct.delete(e)
                n += 1
            except Exception:  # already gone
                pass
    return n


def flush_addr(netns_path: str, addr: str) -> int:
    """Delete the node's conntrack entries of a gone pod address (Felix's cleanup when a workload route goes)."""
    return Netns(netns_path).run(_delete_addr, addr)


def flush_gone_udp(netns_path: str, live: Iterable[tuple[str, int]]) -> int:
    """Delete the node's UDP conntrack entries DNATed to an endpoint not in `live` (ip, port); how many."""
    return Netns(netns_path).run(_delete_stale, frozenset(live))
