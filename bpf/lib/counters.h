/* Hooks and reasons: the vocabulary of the `counters` map and of events.
 *
 * Every program run ends in exactly one reason (see run_finish() in
 * events.h), so per hook the counters add up to the packets seen.
 * Mirrored in ebpf_nodeport/abi.py (REASONS, HOOKS): change both.
 */
#ifndef NP_COUNTERS_H
#define NP_COUNTERS_H

#define HOOK_FROM_HEP 0   /* node eth0 ingress */
#define HOOK_FROM_WEP 1   /* pod veth ingress: packets the pod sends */
#define HOOK_TO_WEP   2   /* pod veth egress: packets to the pod */
#define HOOK_TO_HEP   3   /* node eth0 egress: the node's own service connections */
#define N_HOOKS       4

#define REASON_PASS             0   /* not ours, passed untouched */
#define REASON_NAT_NEW          1   /* first packet of a new service connection (DNAT, maybe encap) */
#define REASON_NAT_EST          2   /* established service flow, DNAT done, delivered locally */
#define REASON_REV_NAT          3   /* reply, source rewritten to the frontend */
#define REASON_ENCAP            4   /* established flow encapsulated toward a node (request or reply) */
#define REASON_DECAP            5   /* decapsulated, delivered (no NAT on this node) */
#define REASON_DSR_REPLY        6   /* reply rewritten and sent straight to the client */
#define REASON_CT_EST           7   /* tracked flow, no rewrite needed here */
#define REASON_PSNAT            8   /* new connection whose 4-tuple was taken: client port replaced */

#define REASON_DROP_MALFORMED        16  /* truncated/invalid headers */
#define REASON_DROP_TUN_UNKNOWN_SRC  17  /* VXLAN from an address that is not a node */
#define REASON_DROP_TUN_BAD_VNI      18  /* VXLAN with another VNI (or the I flag clear) */
#define REASON_DROP_NO_BACKEND       19  /* no backend for it (none, or none local for a Local policy): ICMP port unreachable sent (a RST to a non-SYN TCP segment) */
#define REASON_DROP_FRAG_NEEDED      20  /* too big to encapsulate (ICMP frag-needed sent when DF) */
#define REASON_DROP_SPOOFED          21  /* source is a local pod address arriving from outside */
#define REASON_DROP_ENCAP_FAIL       22  /* a helper failed (adjust_room, store, csum, change_tail) */
#define REASON_DROP_TTL              23  /* TTL would reach 0 in a BPF-forwarded packet */
#define REASON_DROP_TUN_NO_FLOW      24  /* tunnelled reply for a flow this node does not track */
#define REASON_DROP_PSNAT_FAIL       25  /* 4-tuple taken and no free client port in PSNAT_RETRIES draws */
#define REASON_DROP_CT_FULL          26  /* new connection whose conntrack entries do not fit: none created */
#define REASON_DROP_SRC_RANGE        30  /* client outside the LoadBalancer's loadBalancerSourceRanges */
#define REASON_DROP_MID_FLOW         31  /* non-SYN TCP to an external frontend without Maglev, no conntrack: RST sent */

#endif /* NP_COUNTERS_H */
