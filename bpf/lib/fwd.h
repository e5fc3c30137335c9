/* Service connections NATed where their client sends (the pod's in from_wep,
 * the node's own in to_hep, the hairpin's): a NAT_FWD entry keyed by what the
 * client sends, a NAT_REV keyed by what the backend answers.
 */
#ifndef NP_FWD_H
#define NP_FWD_H

#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/conntrack.h"
#include "lib/events.h"

/* The first packet (client p->saddr:p->sport to frontend p->daddr:p->dport):
 * both entries, then p DNATed to the backend. 0, or the reason to drop p:
 * REASON_DROP_CT_FULL (the map has no room for both entries: none is left),
 * REASON_DROP_ENCAP_FAIL (the rewrite failed). */
static __always_inline int fwd_new(struct __sk_buff *skb, struct pkt *p, struct run_state *st,
				   __be32 be_addr, __be16 be_port, __u8 flags)
{
	struct ct_new fwd = { .type = CT_NAT_FWD, .flags = flags, .sport = p->sport, .daddr = p->daddr,
			      .dport = p->dport, .nat_addr = be_addr, .nat_port = be_port };
	struct ct_new rev = { .type = CT_NAT_REV, .flags = flags, .sport = p->sport, .daddr = be_addr,
			      .dport = be_port, .nat_addr = p->daddr, .nat_port = p->dport };

	if (ct_create(skb, p, &fwd, CT_REPLACE) < 0)
		return REASON_DROP_CT_FULL;
	if (ct_create(skb, p, &rev, CT_REPLACE) < 0) {
		ct_uncreate(p, &fwd, p->sport);
		return REASON_DROP_CT_FULL;
	}
	st->ct_flags = flags;
	if (rewrite_l3l4(skb, p, 0, be_addr, be_port) < 0)
		return REASON_DROP_ENCAP_FAIL;
	st_left(st, p);
	return 0;
}

/* A later packet, its NAT_FWD entry hit: DNATed to the backend the connection
 * was given, both of its entries accounted. The callers differ in who their
 * NAT_REV's client is (rev_client) and where the packet goes next. Returns 1
 * when p is DNATed, 0 when no NAT_REV is left (the caller deletes the NAT_FWD
 * and starts a new connection), -1 when a rewrite failed. */
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
