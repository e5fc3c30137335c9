/* Traffic policies (externalTrafficPolicy / internalTrafficPolicy Local)
 * and the refusal of a connection no backend may take.
 *
 * Local backends sit at ordinals 0..local_count-1 of nat_be (the syncer
 * writes them first), so a Local policy is a smaller modulus, nothing more.
 * Kept apart from nat.h: which backends a flow may use is policy, how one is
 * looked up is NAT.
 */
#ifndef NP_POLICY_H
#define NP_POLICY_H

#include "lib/maps.h"
#include "lib/icmp.h"
#include "lib/reset.h"
#include "lib/events.h"

#define TRAFFIC_EXTERNAL 0    /* from outside the node's pods: from_hep */
#define TRAFFIC_POD      1    /* from a local pod: from_wep */

/* Backends a new flow of this kind may use: all of them, or only this
 * node's when the frontend's policy is Local for it. A pod reaching a
 * NodePort is not external traffic (kube-proxy's "pod traffic for ...
 * external destinations" rule sends it cluster-wide), so for pods only
 * the internal policy counts. */
static __always_inline __u32 be_count_for(const struct fe_value *fe, int traffic)
{
	__u32 local = traffic == TRAFFIC_POD ? FE_F_ITP_LOCAL : (FE_F_ETP_LOCAL | FE_F_ITP_LOCAL);

	return (fe->flags & local) ? fe->local_count : fe->count;
}

/* be_pick under the frontend's traffic policy (NULL: nobody may take it). */
static __always_inline struct be_value *be_pick_policy(const struct fe_value *fe, __u32 hash,
							int traffic)
{
	__u32 n = be_count_for(fe, traffic);
	struct be_key k;

	if (n == 0)
		return NULL;
	k.svc_id = fe->svc_id;
	k.ordinal = hash % n;
	return nat_be.lookup(&k);
}

/* A flow no backend may take is refused back out of ifindex (eth0 toward
 * the client, or the pod's veth toward the pod), counted `reason` either
 * way: a new flow (UDP, a SYN) with ICMP port unreachable from the
 * frontend, as kube-proxy's REJECT does; a TCP segment of a connection
 * already open (its backend went, lib/reset.h) with a RST, which ends it
 * where the ICMP error would leave it retransmitting. Dropped silently
 * only when no answer can be built (IP options, a RST, a fragment). */
static __always_inline int reject_flow(struct __sk_buff *skb, const struct pkt *p,
				       struct run_state *st, __u32 ifindex, __u8 reason)
{
	int mid = tcp_mid_flow(p);

	if ((mid ? tcp_reset_reply(skb, p) : icmp_port_unreach(skb, p)) == 0) {
		st->nat_saddr = p->daddr;
		st->nat_daddr = p->saddr;
		st->nat_sport = mid ? p->dport : 0;
		st->nat_dport = mid ? p->sport : 0;
		return verdict(st, reason, bpf_redirect(ifindex, 0));
	}
	return verdict(st, reason, TC_ACT_SHOT);
}

/* No backend for this flow (none, or none local for a Local policy). */
static __always_inline int reject_no_backend(struct __sk_buff *skb, const struct pkt *p,
					     struct run_state *st, __u32 ifindex)
{
	return reject_flow(skb, p, st, ifindex, REASON_DROP_NO_BACKEND);
}

#endif /* NP_POLICY_H */
