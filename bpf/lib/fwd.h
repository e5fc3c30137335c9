/* A later packet of a connection whose NAT_FWD entry was hit: DNATed to the
 * backend the connection was given, both of its entries accounted. Shared by
 * the pod's (from_wep), the node's (to_hep) and the hairpin's connections,
 * which differ in who their NAT_REV's client is and where the packet goes
 * next. Returns 1 when p is DNATed, 0 when no NAT_REV is left (the caller
 * deletes the NAT_FWD and starts a new connection), -1 when a rewrite failed.
 */
#ifndef NP_FWD_H
#define NP_FWD_H

#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/conntrack.h"
#include "lib/events.h"

static __always_inline int fwd_dnat(struct __sk_buff *skb, struct pkt *p, struct run_state *st,
				    struct ct_value *fwd, int fwd_from_a, __be32 rev_client)
{
	__be32 be_addr = fwd->nat_addr;
	__be16 be_port = fwd->nat_port;
	struct ct_value *rev;
	struct ct_key rk;
	int rev_from_a;

	ct_key_make(&rk, rev_client, p->sport, be_addr, be_port, p->proto, &rev_from_a);
	rev = ct_lookup(&rk, p);
	if (!rev || rev->type != CT_NAT_REV)
		return 0;
	st->ct_flags = rev->flags;
	ct_account(skb, fwd, fwd_from_a, p);
	ct_account(skb, rev, rev_from_a, p);
	return rewrite_l3l4(skb, p, 0, be_addr, be_port) < 0 ? -1 : 1;
}

#endif /* NP_FWD_H */
