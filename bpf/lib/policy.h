/* The refusal of a flow no backend may take (which backends a flow may
 * use under the traffic policies is lib/tpolicy.h, shared with the cgroup
 * programs, which refuse nothing).
 */
#ifndef NP_POLICY_H
#define NP_POLICY_H

#include "lib/maps.h"
#include "lib/tpolicy.h"
#include "lib/icmp.h"
#include "lib/reset.h"
#include "lib/events.h"

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
